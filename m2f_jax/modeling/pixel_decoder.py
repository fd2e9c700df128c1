"""The multi-scale deformable-attention pixel decoder (MSDeformAttnPixelDecoder).

Backbone features at strides 8/16/32 are projected to `feature_size`, refined jointly by the
deformable-attention encoder, and the stride-4 level is added FPN-style. Outputs: `mask_features`
at stride 4 (for the mask dot products) and the three refined maps, coarsest first (the memories
the transformer decoder cycles over).

With per-image valid sizes (a padded batch), GroupNorm statistics, position embeddings,
reference points, deformable sampling and the FPN upsampling all use each image's own region,
and padded tokens are zeroed before the 3x3 convolution, so each image gets what it gets alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from m2f_jax.config import Mask2FormerConfig
from m2f_jax.modeling import initializers as init
from m2f_jax.modeling.deform_attn import MultiscaleDeformableAttention
from m2f_jax.modeling.layers import UNROLLED, LayerExecution, run_units
from m2f_jax.modeling.position import sine_position_embedding
from m2f_jax.modeling.precision import wide_dtype
from m2f_jax.modeling.valid_region import FeatureMap, resize_valid

NUM_LEVELS = 3  # deformable attention runs on strides 8, 16 and 32
NUM_POINTS = 4


def group_norm(dim: int, rngs: nnx.Rngs) -> nnx.GroupNorm:
    return nnx.GroupNorm(dim, num_groups=32, epsilon=1e-5, use_fast_variance=False, rngs=rngs)


class ConvNorm(nnx.Module):
    """Convolution followed by GroupNorm(32) (and ReLU when asked): the decoder's conv unit."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel: int,
        use_bias: bool,
        relu: bool,
        *,
        kernel_init: init.Initializer | None = None,
        rngs: nnx.Rngs,
    ):
        """`kernel_init`: detectron2's c2_xavier_fill (the FPN convs) unless given; the bias is zero."""
        kernel_init = kernel_init or init.c2_xavier_fill()
        self.conv = nnx.Conv(
            in_dim,
            out_dim,
            (kernel, kernel),
            padding=kernel // 2,
            use_bias=use_bias,
            kernel_init=kernel_init,
            rngs=rngs,
        )
        self.norm = group_norm(out_dim, rngs)
        self.relu = relu

    def __call__(self, x: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
        """x (B, h, w, C); valid (B, h, w): the positions that exist (the rest count as zero padding
        for the convolution and are left out of the normalisation statistics)."""
        x = self.conv(jnp.where(valid[..., None], x, 0.0))
        x = self.norm(x, mask=jnp.broadcast_to(valid[..., None], x.shape))
        return jax.nn.relu(x) if self.relu else x


@struct.dataclass
class EncoderLevels:
    """What every deformable encoder layer needs about the flattened levels besides the tokens."""

    position: jnp.ndarray  # (B, S, D) sine position + level embeddings
    reference_points: jnp.ndarray  # (B, S, L, 2) each token's centre, (x, y) relative to its image
    valid_shapes: jnp.ndarray  # (B, L, 2) each image's valid (h, w) per level
    valid_tokens: jnp.ndarray  # (B, S) bool
    spatial_shapes: tuple[tuple[int, int], ...] = struct.field(pytree_node=False)  # (h, w) per level


class PixelDecoderEncoderLayer(nnx.Module):
    """Deformable self-attention + FFN, post-norm."""

    def __init__(self, config: Mask2FormerConfig, *, rngs: nnx.Rngs):
        d = config.feature_size
        self.self_attn = MultiscaleDeformableAttention(d, config.num_attention_heads, NUM_LEVELS, NUM_POINTS, rngs=rngs)
        self.self_attn_layer_norm = nnx.LayerNorm(d, epsilon=1e-5, use_fast_variance=False, rngs=rngs)
        self.fc1 = init.feedforward_linear(d, config.encoder_feedforward_dim, rngs=rngs)
        self.fc2 = init.feedforward_linear(config.encoder_feedforward_dim, d, rngs=rngs)
        self.final_layer_norm = nnx.LayerNorm(d, epsilon=1e-5, use_fast_variance=False, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout, deterministic=True, rngs=rngs)

    def __call__(self, x, levels: EncoderLevels):
        y = self.self_attn(
            x, levels.position, levels.reference_points, levels.spatial_shapes, levels.valid_shapes, levels.valid_tokens
        )
        x = self.self_attn_layer_norm(x + self.dropout(y))
        y = self.dropout(jax.nn.relu(self.fc1(x)))
        return self.final_layer_norm(x + self.dropout(self.fc2(y)))


class PixelDecoderEncoder(nnx.Module):
    def __init__(self, config: Mask2FormerConfig, execution: LayerExecution, *, rngs: nnx.Rngs):
        self.layers = nnx.List([PixelDecoderEncoderLayer(config, rngs=rngs) for _ in range(config.encoder_layers)])
        self.execution = execution

    def __call__(self, x: jnp.ndarray, levels: EncoderLevels) -> jnp.ndarray:
        """x (B, S, D): the levels' tokens, flattened and concatenated -> refined, same shape."""
        x, _ = run_units(list(self.layers), lambda layer, x, _: (layer(x, levels), None), x, self.execution)
        return x


def reference_points(
    spatial_shapes: tuple[tuple[int, int], ...], valid_shapes: jnp.ndarray, dtype=jnp.float32
) -> jnp.ndarray:
    """(B, S, 2) pixel centres of every level as (x, y), relative to each image's valid region,
    in at least float32."""
    dtype = wide_dtype(dtype)
    points = []
    for level, (h, w) in enumerate(spatial_shapes):
        sizes = valid_shapes[:, level].astype(dtype)
        ys = (jnp.arange(h, dtype=dtype) + 0.5)[None, :] / sizes[:, 0:1]  # (B, h)
        xs = (jnp.arange(w, dtype=dtype) + 0.5)[None, :] / sizes[:, 1:2]  # (B, w)
        grid = jnp.stack(jnp.broadcast_arrays(xs[:, None, :], ys[:, :, None]), axis=-1)  # (B, h, w, 2)
        points.append(grid.reshape(sizes.shape[0], h * w, 2))
    return jnp.concatenate(points, axis=1)


@struct.dataclass
class PixelDecoderOutput:
    mask_features: FeatureMap  # (B, H/4, W/4, mask_feature_size)
    multi_scale_features: tuple[FeatureMap, ...]  # strides 32, 16, 8; (B, h, w, feature_size)


class PixelDecoder(nnx.Module):
    no_weight_decay = ("level_embed",)  # read by the optimizer's parameter groups

    def __init__(
        self,
        config: Mask2FormerConfig,
        feature_channels: tuple[int, ...],
        execution: LayerExecution = UNROLLED,
        *,
        rngs: nnx.Rngs,
    ):
        d = config.feature_size
        self.feature_size = d
        # Projections of strides 32, 16, 8 (coarsest first, as the encoder's levels are ordered).
        self.input_projections = nnx.List(
            [
                ConvNorm(c, d, 1, True, False, kernel_init=init.xavier_uniform(), rngs=rngs)
                for c in feature_channels[-NUM_LEVELS:][::-1]
            ]
        )
        self.level_embed = nnx.Param(jax.random.normal(rngs.params(), (NUM_LEVELS, d)))
        self.encoder = PixelDecoderEncoder(config, execution, rngs=rngs)
        # The stride-4 FPN level: lateral 1x1 conv and output 3x3 conv, both with GroupNorm.
        self.lateral_convs = nnx.List([ConvNorm(feature_channels[0], d, 1, False, False, rngs=rngs)])
        self.output_convs = nnx.List([ConvNorm(d, d, 3, False, True, rngs=rngs)])
        self.mask_projection = nnx.Conv(
            d, config.mask_feature_size, (1, 1), kernel_init=init.c2_xavier_fill(), rngs=rngs
        )

    def __call__(self, features: tuple[FeatureMap, ...]) -> PixelDecoderOutput:
        """features: the backbone's four maps, stride 4 first."""
        coarse_first = features[::-1][:NUM_LEVELS]
        levels = [
            FeatureMap(proj(f.values, f.valid), f.sizes)
            for proj, f in zip(self.input_projections, coarse_first, strict=True)
        ]
        b = levels[0].values.shape[0]
        dtype = levels[0].values.dtype
        spatial_shapes = tuple(level.shape for level in levels)
        valid_shapes = jnp.stack([level.sizes for level in levels], axis=1)  # (B, L, 2)
        level_embed = self.level_embed[...]
        position = jnp.concatenate(
            [
                sine_position_embedding(level.sizes, h, w, self.feature_size // 2, dtype).reshape(b, h * w, -1)
                + level_embed[i]
                for i, (level, (h, w)) in enumerate(zip(levels, spatial_shapes, strict=True))
            ],
            axis=1,
        ).astype(dtype)
        ref = reference_points(spatial_shapes, valid_shapes, dtype)
        encoder_levels = EncoderLevels(
            position=position,
            reference_points=jnp.broadcast_to(ref[:, :, None, :], (b, ref.shape[1], NUM_LEVELS, 2)),
            valid_shapes=valid_shapes,
            valid_tokens=jnp.concatenate([level.valid.reshape(b, -1) for level in levels], axis=1),
            spatial_shapes=spatial_shapes,
        )
        x = jnp.concatenate([level.values.reshape(b, -1, self.feature_size) for level in levels], axis=1)
        x = self.encoder(x, encoder_levels)

        outputs, start = [], 0
        for level, (h, w) in zip(levels, spatial_shapes, strict=True):
            outputs.append(level.replace(values=x[:, start : start + h * w].reshape(b, h, w, self.feature_size)))
            start += h * w
        fine = features[0]
        lateral = self.lateral_convs[0](fine.values, fine.valid)
        fpn = lateral + resize_valid(outputs[-1].values, outputs[-1].sizes, fine.sizes, lateral.shape[1:3])
        fpn = self.output_convs[0](fpn, fine.valid)
        return PixelDecoderOutput(
            mask_features=FeatureMap(self.mask_projection(fpn), fine.sizes), multi_scale_features=tuple(outputs)
        )
