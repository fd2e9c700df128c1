"""ResNet backbone (NHWC) of Mask2Former's R50 / R101 baselines, returning the four stage outputs at
strides 4 to 32.

detectron2's ResNet as Mask2Former configures it (and HF's `ResNetBackbone`, whose module names
these follow): a stem (7x7 stride-2 conv without bias, frozen BatchNorm, ReLU, 3x3 stride-2 max
pool), then stages of bottleneck blocks (1x1, 3x3 carrying the stage's stride, 1x1, each with a
frozen BatchNorm; a projection shortcut, 1x1 conv + BatchNorm, on each stage's first block).

Inside a padded batch each image gets what it gets alone: features outside its valid rectangle are
zeroed before every conv with a spatial extent (the zeros the conv's own padding gives the image
alone) and before the max pool (its inputs follow a ReLU, so zeros act as the pool's -inf padding:
every window holds a valid input). The valid sizes go through each stride by ceil division, the
output size of these convs and of the pool.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from m2f_jax.config import ResNetConfig
from m2f_jax.modeling import initializers as init
from m2f_jax.modeling.frozen_batchnorm import FrozenBatchNorm
from m2f_jax.modeling.layers import UNROLLED, LayerExecution, run_units
from m2f_jax.modeling.valid_region import FeatureMap


def zero_outside(features: FeatureMap) -> jnp.ndarray:
    """The values with zeros outside each image's valid rectangle."""
    return jnp.where(features.valid[..., None], features.values, 0.0)


class ResNetConvLayer(nnx.Module):
    """Conv (no bias, 'same' padding k // 2) -> frozen BatchNorm -> optional ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, relu: bool = True, *, rngs):
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.convolution = nnx.Conv(
            in_channels,
            out_channels,
            kernel_size=(kernel, kernel),
            strides=(stride, stride),
            padding=((kernel // 2, kernel // 2),) * 2,
            use_bias=False,
            kernel_init=init.c2_msra_fill(),
            rngs=rngs,
        )
        self.normalization = FrozenBatchNorm(out_channels)

    def __call__(self, features: FeatureMap) -> FeatureMap:
        x = zero_outside(features) if self.kernel > 1 else features.values
        x = self.normalization(self.convolution(x))
        return FeatureMap(jax.nn.relu(x) if self.relu else x, -(-features.sizes // self.stride))


class ResNetBottleNeckLayer(nnx.Module):
    """relu(1x1 -> 3x3 (stride) -> 1x1, + the shortcut); the inner width is out_channels / 4. The
    shortcut is the identity, or a projection (1x1 conv with the stride, frozen BatchNorm) where the
    width or the stride changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, rngs):
        inner = out_channels // 4
        projected = in_channels != out_channels or stride != 1
        self.shortcut = (
            ResNetConvLayer(in_channels, out_channels, 1, stride, relu=False, rngs=rngs) if projected else None
        )
        self.layer = nnx.List(
            [
                ResNetConvLayer(in_channels, inner, 1, rngs=rngs),
                ResNetConvLayer(inner, inner, 3, stride, rngs=rngs),
                ResNetConvLayer(inner, out_channels, 1, relu=False, rngs=rngs),
            ]
        )

    def __call__(self, features: FeatureMap) -> FeatureMap:
        residual = features if self.shortcut is None else self.shortcut(features)
        out = features
        for conv in self.layer:
            out = conv(out)
        return out.replace(values=jax.nn.relu(out.values + residual.values))


class ResNetEmbeddings(nnx.Module):
    """The stem: 7x7 stride-2 conv, frozen BatchNorm, ReLU, then a 3x3 stride-2 max pool (stride 4)."""

    def __init__(self, config: ResNetConfig, *, rngs: nnx.Rngs):
        self.embedder = ResNetConvLayer(config.num_channels, config.embedding_size, 7, 2, rngs=rngs)

    def __call__(self, pixels: FeatureMap) -> FeatureMap:
        x = self.embedder(pixels)
        pooled = nnx.max_pool(zero_outside(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        return FeatureMap(pooled, -(-x.sizes // 2))


class ResNetStage(nnx.Module):
    """Bottleneck blocks; the first changes the width and carries the stage's stride."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, depth: int, execution, *, rngs):
        first = ResNetBottleNeckLayer(in_channels, out_channels, stride, rngs=rngs)
        rest = [ResNetBottleNeckLayer(out_channels, out_channels, 1, rngs=rngs) for _ in range(depth - 1)]
        self.layers = nnx.List([first, *rest])
        self.execution = execution

    def __call__(self, features: FeatureMap) -> FeatureMap:
        def apply(block, x, _):
            return block(x), None

        # The blocks after the first are identical in structure: scanned together under execution.scan.
        out, _ = run_units(list(self.layers), apply, features, self.execution)
        return out


class ResNetEncoder(nnx.Module):
    def __init__(self, config: ResNetConfig, execution: LayerExecution, *, rngs: nnx.Rngs):
        widths = (config.embedding_size,) + config.hidden_sizes
        self.stages = nnx.List(
            [
                ResNetStage(widths[i], widths[i + 1], 1 if i == 0 else 2, depth, execution, rngs=rngs)
                for i, depth in enumerate(config.depths)
            ]
        )

    def __call__(self, features: FeatureMap) -> list[FeatureMap]:
        """-> each stage's output, stride 4 first."""
        outputs = []
        for stage in self.stages:
            features = stage(features)
            outputs.append(features)
        return outputs


class ResNetBackbone(nnx.Module):
    """pixels (B, H, W, C) with their valid sizes -> the four stage outputs (after the blocks' ReLU),
    strides 4 to 32, each side ceil(previous / 2). Features outside each image's valid region are not
    meaningful."""

    def __init__(self, config: ResNetConfig, execution: LayerExecution = UNROLLED, *, rngs: nnx.Rngs):
        self.embedder = ResNetEmbeddings(config, rngs=rngs)
        self.encoder = ResNetEncoder(config, execution, rngs=rngs)

    def __call__(self, pixels: FeatureMap) -> tuple[FeatureMap, ...]:
        return tuple(self.encoder(self.embedder(pixels)))
