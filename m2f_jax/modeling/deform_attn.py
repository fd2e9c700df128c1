"""Multi-scale deformable attention (Deformable DETR), as Mask2Former's pixel decoder uses it.

Each query looks at `n_points` locations per head and per level, placed around its reference
point by learned offsets, and mixes the bilinearly sampled values with softmax weights.

`deformable_sampling` is the vectorised version the model uses: the values of all levels,
batch entries and heads form one table of rows, so a single gather fetches the four bilinear
corners of every sampling point at once, followed by one weighted sum; corners outside the map
get zero weight (PyTorch's `grid_sample(align_corners=False, padding_mode="zeros")`).
`deformable_sampling_reference` is a plain per-level, per-corner version kept to test the flat
one against. On the CPU the two run at about the same speed (docs/benchmarks.md); the flat one
is used because it is one gather whatever the number of levels. (Packing each 2x2 neighbourhood
into one row, as scenic does for TPUs, measured 2-3x slower on the CPU.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m2f_jax.modeling import initializers as init
from m2f_jax.modeling.precision import wide_dtype, widen

_CORNER_DY = np.array([0, 0, 1, 1], np.int32)  # numpy: importing must not start the XLA backend
_CORNER_DX = np.array([0, 1, 0, 1], np.int32)


def _bilinear_corners(locations: jnp.ndarray, height, width):
    """Top-left corner indices and the four corner weights (zero outside the map).

    locations (B, ..., 2) as (x, y) in [0, 1] over the map (align_corners=False convention);
    height and width are ints or per-image (B,) arrays (the valid part of a padded map).
    Returns x0, y0 (int32, may lie outside) and weights (..., 4) ordered (y0x0, y0x1, y1x0, y1x1).
    """
    locations = widen(locations)
    extra = (1,) * (locations.ndim - 2)
    height = jnp.reshape(jnp.asarray(height), (-1,) + extra)
    width = jnp.reshape(jnp.asarray(width), (-1,) + extra)
    x = locations[..., 0] * width.astype(locations.dtype) - 0.5
    y = locations[..., 1] * height.astype(locations.dtype) - 0.5
    x0f, y0f = jnp.floor(x), jnp.floor(y)
    fx, fy = x - x0f, y - y0f
    x0, y0 = x0f.astype(jnp.int32), y0f.astype(jnp.int32)

    def inside(idx, size):
        return ((idx >= 0) & (idx < size)).astype(x.dtype)

    wx0, wx1 = (1 - fx) * inside(x0, width), fx * inside(x0 + 1, width)
    wy0, wy1 = (1 - fy) * inside(y0, height), fy * inside(y0 + 1, height)
    weights = jnp.stack([wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1], axis=-1)
    return x0, y0, weights


def deformable_sampling(
    value: jnp.ndarray,
    spatial_shapes: tuple[tuple[int, int], ...],
    sampling_locations: jnp.ndarray,
    attention_weights: jnp.ndarray,
    valid_shapes: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Fast multi-scale deformable sampling: one flat row gather for every corner of every point.

    value (B, S, heads, hd) with S = sum(h*w); sampling_locations (B, Q, heads, L, P, 2) as (x, y)
    in [0, 1]; attention_weights (B, Q, heads, L, P). Returns (B, Q, heads*hd).
    `valid_shapes` (B, L, 2): each image's valid (h, w) at each level of the padded maps; locations
    are then relative to that region, and everything outside it samples as zero.
    """
    b, s, n_heads, hd = value.shape
    q = sampling_locations.shape[1]
    rows = value.transpose(0, 2, 1, 3).reshape(b * n_heads * s, hd)  # row = (batch, head, token)
    indices, weights = [], []
    start = 0
    for level, (h, w) in enumerate(spatial_shapes):
        vh, vw = (h, w) if valid_shapes is None else (valid_shapes[:, level, 0], valid_shapes[:, level, 1])
        x0, y0, corner_w = _bilinear_corners(sampling_locations[:, :, :, level], vh, vw)  # (B,Q,heads,P)
        # Corners outside the map have zero weight, so clipping their index changes nothing.
        ys = jnp.clip(y0[..., None] + _CORNER_DY, 0, h - 1)
        xs = jnp.clip(x0[..., None] + _CORNER_DX, 0, w - 1)
        indices.append(start + ys * w + xs)  # (B, Q, heads, P, 4)
        weights.append(corner_w * widen(attention_weights[:, :, :, level, :, None]))
        start += h * w
    base = (jnp.arange(b)[:, None, None] * n_heads + jnp.arange(n_heads)[None, None, :]) * s  # (B, 1, heads)
    index = jnp.stack(indices, axis=3) + base[..., None, None, None]  # (B, Q, heads, L, P, 4)
    gathered = jnp.take(rows, index.reshape(-1), axis=0, mode="clip").reshape(b, q, n_heads, -1, hd)
    weight = jnp.stack(weights, axis=3).reshape(b, q, n_heads, -1)
    out = jnp.einsum("bqhkd,bqhk->bqhd", widen(gathered), weight)
    return out.reshape(b, q, n_heads * hd).astype(value.dtype)


def deformable_sampling_reference(
    value: jnp.ndarray,
    spatial_shapes: tuple[tuple[int, int], ...],
    sampling_locations: jnp.ndarray,
    attention_weights: jnp.ndarray,
    valid_shapes: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Straightforward version of `deformable_sampling`: four separate gathers per level."""
    b, _, n_heads, hd = value.shape
    q = sampling_locations.shape[1]
    out = jnp.zeros((b, q, n_heads, hd), wide_dtype(value.dtype))
    start = 0
    batch_idx = jnp.arange(b)[:, None, None, None]
    head_idx = jnp.arange(n_heads)[None, None, :, None]
    for level, (h, w) in enumerate(spatial_shapes):
        v = widen(value[:, start : start + h * w].reshape(b, h, w, n_heads, hd))
        start += h * w
        vh, vw = (h, w) if valid_shapes is None else (valid_shapes[:, level, 0], valid_shapes[:, level, 1])
        x0, y0, corner_w = _bilinear_corners(sampling_locations[:, :, :, level], vh, vw)
        for c, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            yy = jnp.clip(y0 + dy, 0, h - 1)
            xx = jnp.clip(x0 + dx, 0, w - 1)
            sampled = v[batch_idx, yy, xx, head_idx]  # (B, Q, heads, P, hd)
            weight = corner_w[..., c] * attention_weights[:, :, :, level]
            out = out + jnp.sum(sampled * weight[..., None], axis=3)
    return out.reshape(b, q, n_heads * hd).astype(value.dtype)


class MultiscaleDeformableAttention(nnx.Module):
    """Deformable self-attention over the flattened multi-scale feature maps."""

    def __init__(self, embed_dim: int, num_heads: int, n_levels: int, n_points: int, *, rngs: nnx.Rngs):
        self.n_heads, self.n_levels, self.n_points = num_heads, n_levels, n_points
        self.sampling_offsets = nnx.Linear(
            embed_dim,
            num_heads * n_levels * n_points * 2,
            kernel_init=init.zeros,
            bias_init=init.sampling_offsets_bias(num_heads, n_levels, n_points),
            rngs=rngs,
        )
        self.attention_weights = nnx.Linear(
            embed_dim, num_heads * n_levels * n_points, kernel_init=init.zeros, bias_init=init.zeros, rngs=rngs
        )
        self.value_proj = nnx.Linear(embed_dim, embed_dim, kernel_init=init.xavier_uniform(), rngs=rngs)
        self.output_proj = nnx.Linear(embed_dim, embed_dim, kernel_init=init.xavier_uniform(), rngs=rngs)

    def __call__(
        self,
        hidden_states: jnp.ndarray,
        position_embeddings: jnp.ndarray,
        reference_points: jnp.ndarray,
        spatial_shapes: tuple[tuple[int, int], ...],
        valid_shapes: jnp.ndarray,
        valid_tokens: jnp.ndarray,
    ) -> jnp.ndarray:
        """hidden_states (B, S, D); reference_points (B, S, L, 2) as (x, y) in [0, 1] of each image's
        valid region; valid_shapes (B, L, 2) its (h, w) per level; valid_tokens (B, S)."""
        b, s, d = hidden_states.shape
        queries = hidden_states + position_embeddings
        value = jnp.where(valid_tokens[..., None], self.value_proj(hidden_states), 0.0)
        value = value.reshape(b, s, self.n_heads, d // self.n_heads)
        shape = (b, s, self.n_heads, self.n_levels, self.n_points)
        offsets = widen(self.sampling_offsets(queries).reshape(*shape, 2))
        weights = self.attention_weights(queries).reshape(b, s, self.n_heads, self.n_levels * self.n_points)
        weights = jax.nn.softmax(widen(weights), axis=-1).reshape(shape)
        normalizer = valid_shapes[:, :, ::-1].astype(offsets.dtype)  # (B, L, 2) as (x, y)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[:, None, None, :, None, :]
        out = deformable_sampling(value, spatial_shapes, locations, weights, valid_shapes)
        return self.output_proj(out)
