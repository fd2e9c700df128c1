"""The multi-scale deformable-attention pixel decoder (MSDeformAttnPixelDecoder).

Backbone features at strides 8/16/32 are projected to `feature_size`, refined jointly by the
deformable-attention encoder, and the stride-4 level is added FPN-style. Outputs: `mask_features`
at stride 4 (for the mask dot products) and the three refined maps, coarsest first (the memories
the transformer decoder cycles over).
"""

from __future__ import annotations



import jax
import jax.numpy as jnp
from flax import nnx, struct

from m2f_jax.config import Mask2FormerConfig
from m2f_jax.modeling.deform_attn import MultiscaleDeformableAttention
from m2f_jax.modeling.position import sine_position_embedding
from m2f_jax.modeling.resize import resize_bilinear

NUM_LEVELS = 3  # deformable attention runs on strides 8, 16 and 32
NUM_POINTS = 4


def group_norm(dim: int, rngs: nnx.Rngs) -> nnx.GroupNorm:
    return nnx.GroupNorm(dim, num_groups=32, epsilon=1e-5, use_fast_variance=False, rngs=rngs)


class ConvNorm(nnx.Module):
    """Convolution followed by GroupNorm(32) (and ReLU when asked): the decoder's conv unit."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int, use_bias: bool, relu: bool, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(in_dim, out_dim, (kernel, kernel), padding=kernel // 2, use_bias=use_bias, rngs=rngs)
        self.norm = group_norm(out_dim, rngs)
        self.relu = relu

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = self.norm(self.conv(x))
        return jax.nn.relu(x) if self.relu else x


class PixelDecoderEncoderLayer(nnx.Module):
    """Deformable self-attention + FFN, post-norm."""

    def __init__(self, config: Mask2FormerConfig, *, rngs: nnx.Rngs):
        d = config.feature_size
        self.self_attn = MultiscaleDeformableAttention(d, config.num_attention_heads, NUM_LEVELS, NUM_POINTS, rngs=rngs)
        self.self_attn_layer_norm = nnx.LayerNorm(d, epsilon=1e-5, use_fast_variance=False, rngs=rngs)
        self.fc1 = nnx.Linear(d, config.encoder_feedforward_dim, rngs=rngs)
        self.fc2 = nnx.Linear(config.encoder_feedforward_dim, d, rngs=rngs)
        self.final_layer_norm = nnx.LayerNorm(d, epsilon=1e-5, use_fast_variance=False, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout, rngs=rngs)

    def __call__(self, x, position_embeddings, reference_points, spatial_shapes, deterministic: bool):
        y = self.self_attn(x, position_embeddings, reference_points, spatial_shapes)
        x = self.self_attn_layer_norm(x + self.dropout(y, deterministic=deterministic))
        y = self.dropout(jax.nn.relu(self.fc1(x)), deterministic=deterministic)
        y = self.dropout(self.fc2(y), deterministic=deterministic)
        return self.final_layer_norm(x + y)


class PixelDecoderEncoder(nnx.Module):
    def __init__(self, config: Mask2FormerConfig, *, rngs: nnx.Rngs):
        self.layers = nnx.List([PixelDecoderEncoderLayer(config, rngs=rngs) for _ in range(config.encoder_layers)])


def reference_points(spatial_shapes: tuple[tuple[int, int], ...]) -> jnp.ndarray:
    """(S, 2) pixel centres of every level as (x, y) in [0, 1]."""
    points = []
    for h, w in spatial_shapes:
        ys, xs = jnp.meshgrid((jnp.arange(h) + 0.5) / h, (jnp.arange(w) + 0.5) / w, indexing="ij")
        points.append(jnp.stack([xs.reshape(-1), ys.reshape(-1)], axis=-1))
    return jnp.concatenate(points, axis=0)


@struct.dataclass
class PixelDecoderOutput:
    mask_features: jnp.ndarray  # (B, H/4, W/4, mask_feature_size)
    multi_scale_features: tuple[jnp.ndarray, ...]  # strides 32, 16, 8; (B, h, w, feature_size)


class PixelDecoder(nnx.Module):
    def __init__(self, config: Mask2FormerConfig, feature_channels: tuple[int, ...], *, rngs: nnx.Rngs):
        d = config.feature_size
        self.feature_size = d
        # Projections of strides 32, 16, 8 (coarsest first, as the encoder's levels are ordered).
        self.input_projections = nnx.List(
            [ConvNorm(c, d, 1, True, False, rngs=rngs) for c in feature_channels[-NUM_LEVELS:][::-1]]
        )
        self.level_embed = nnx.Param(jax.random.normal(rngs.params(), (NUM_LEVELS, d)))
        self.encoder = PixelDecoderEncoder(config, rngs=rngs)
        # The stride-4 FPN level: lateral 1x1 conv and output 3x3 conv, both with GroupNorm.
        self.lateral_convs = nnx.List([ConvNorm(feature_channels[0], d, 1, False, False, rngs=rngs)])
        self.output_convs = nnx.List([ConvNorm(d, d, 3, False, True, rngs=rngs)])
        self.mask_projection = nnx.Conv(d, config.mask_feature_size, (1, 1), rngs=rngs)
        self.dropout_rate = config.dropout

    def __call__(self, features: tuple[jnp.ndarray, ...], deterministic: bool = True) -> PixelDecoderOutput:
        """features: the backbone's four maps, stride 4 first, (B, h, w, C_i)."""
        levels = [proj(x) for proj, x in zip(self.input_projections, features[::-1][:NUM_LEVELS])]
        b = levels[0].shape[0]
        spatial_shapes = tuple((x.shape[1], x.shape[2]) for x in levels)
        level_embed = self.level_embed[...]
        pos = jnp.concatenate(
            [
                sine_position_embedding(h, w, self.feature_size // 2, levels[0].dtype).reshape(h * w, -1)
                + level_embed[i]
                for i, (h, w) in enumerate(spatial_shapes)
            ],
            axis=0,
        )
        pos = jnp.broadcast_to(pos[None], (b,) + pos.shape).astype(levels[0].dtype)
        x = jnp.concatenate([lvl.reshape(b, -1, self.feature_size) for lvl in levels], axis=1)
        ref = reference_points(spatial_shapes)
        ref = jnp.broadcast_to(ref[None, :, None, :], (b, ref.shape[0], NUM_LEVELS, 2))
        for layer in self.encoder.layers:
            x = layer(x, pos, ref, spatial_shapes, deterministic)

        outputs, start = [], 0
        for h, w in spatial_shapes:
            outputs.append(x[:, start : start + h * w].reshape(b, h, w, self.feature_size))
            start += h * w
        lateral = self.lateral_convs[0](features[0])
        fpn = lateral + resize_bilinear(outputs[-1], lateral.shape[1:3])
        fpn = self.output_convs[0](fpn)
        return PixelDecoderOutput(mask_features=self.mask_projection(fpn), multi_scale_features=tuple(outputs))
