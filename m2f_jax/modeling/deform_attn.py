"""Multi-scale deformable attention (Deformable DETR), as Mask2Former's pixel decoder uses it.

Each query looks at `n_points` locations per head and per level, placed around its reference
point by learned offsets, and mixes the bilinearly sampled values with softmax weights.

`deformable_sampling` is the fast vectorised version used by the model: per level it packs each
pixel's 2x2 neighbourhood into one vector, so a single gather fetches all four bilinear corners,
and corners outside the map get zero weight (PyTorch's `grid_sample(align_corners=False,
padding_mode="zeros")`). `deformable_sampling_reference` is a plain per-corner version kept to
test the fast one against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from m2f_jax.modeling.precision import wide_dtype, widen


def _bilinear_corners(locations: jnp.ndarray, height: int, width: int):
    """Top-left corner indices and the four corner weights (zero outside the map).

    locations (..., 2) as (x, y) in [0, 1] over the map (align_corners=False convention).
    Returns x0, y0 (int32, may lie outside) and weights (..., 4) ordered (y0x0, y0x1, y1x0, y1x1).
    """
    locations = widen(locations)
    x = locations[..., 0] * width - 0.5
    y = locations[..., 1] * height - 0.5
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
) -> jnp.ndarray:
    """Fast multi-scale deformable sampling.

    value (B, S, heads, hd) with S = sum(h*w); sampling_locations (B, Q, heads, L, P, 2) as (x, y)
    in [0, 1]; attention_weights (B, Q, heads, L, P). Returns (B, Q, heads*hd).
    """
    b, _, n_heads, hd = value.shape
    q = sampling_locations.shape[1]
    n_points = sampling_locations.shape[4]
    wide = wide_dtype(value.dtype)
    out = jnp.zeros((b, n_heads, q, hd), wide)
    start = 0
    for level, (h, w) in enumerate(spatial_shapes):
        v = value[:, start : start + h * w].reshape(b, h, w, n_heads, hd)
        start += h * w
        # Pad one zero row/column on each side, then pack each pixel with its right, lower and
        # lower-right neighbours: entry (i, j) of `packed` holds the 2x2 block whose top-left is
        # padded pixel (i, j), i.e. original pixel (i - 1, j - 1).
        v = jnp.pad(v, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0)))
        packed = jnp.concatenate([v[:, :-1, :-1], v[:, :-1, 1:], v[:, 1:, :-1], v[:, 1:, 1:]], axis=-1)
        packed = packed.reshape(b, (h + 1) * (w + 1), n_heads, 4 * hd).transpose(0, 2, 1, 3)

        x0, y0, corner_w = _bilinear_corners(sampling_locations[:, :, :, level], h, w)  # (B,Q,H,P)
        # Corners outside the map have zero weight, so any in-range index will do for them.
        index = (jnp.clip(y0, -1, h - 1) + 1) * (w + 1) + (jnp.clip(x0, -1, w - 1) + 1)
        index = index.transpose(0, 2, 1, 3).reshape(b, n_heads, q * n_points, 1)
        gathered = jnp.take_along_axis(packed, index, axis=2).reshape(b, n_heads, q, n_points, 4, hd)
        weights = corner_w * widen(attention_weights[:, :, :, level, :, None])  # (B,Q,H,P,4)
        out = out + jnp.einsum("bhqpcd,bqhpc->bhqd", gathered.astype(wide), weights)
    return out.transpose(0, 2, 1, 3).reshape(b, q, n_heads * hd).astype(value.dtype)


def deformable_sampling_reference(
    value: jnp.ndarray,
    spatial_shapes: tuple[tuple[int, int], ...],
    sampling_locations: jnp.ndarray,
    attention_weights: jnp.ndarray,
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
        x0, y0, corner_w = _bilinear_corners(sampling_locations[:, :, :, level], h, w)
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
        self.sampling_offsets = nnx.Linear(embed_dim, num_heads * n_levels * n_points * 2, rngs=rngs)
        self.attention_weights = nnx.Linear(embed_dim, num_heads * n_levels * n_points, rngs=rngs)
        self.value_proj = nnx.Linear(embed_dim, embed_dim, rngs=rngs)
        self.output_proj = nnx.Linear(embed_dim, embed_dim, rngs=rngs)

    def __call__(
        self,
        hidden_states: jnp.ndarray,
        position_embeddings: jnp.ndarray,
        reference_points: jnp.ndarray,
        spatial_shapes: tuple[tuple[int, int], ...],
        padding_mask: jnp.ndarray | None = None,
    ) -> jnp.ndarray:
        """hidden_states (B, S, D); reference_points (B, S, L, 2) as (x, y) in [0, 1];
        padding_mask (B, S) True where a token is padding (its value is zeroed)."""
        b, s, d = hidden_states.shape
        queries = hidden_states + position_embeddings
        value = self.value_proj(hidden_states)
        if padding_mask is not None:
            value = jnp.where(padding_mask[..., None], 0.0, value)
        value = value.reshape(b, s, self.n_heads, d // self.n_heads)
        shape = (b, s, self.n_heads, self.n_levels, self.n_points)
        offsets = widen(self.sampling_offsets(queries).reshape(*shape, 2))
        weights = self.attention_weights(queries).reshape(b, s, self.n_heads, self.n_levels * self.n_points)
        weights = jax.nn.softmax(widen(weights), axis=-1).reshape(shape)
        normalizer = jnp.array([[w, h] for h, w in spatial_shapes], offsets.dtype)  # (L, 2) as (x, y)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        out = deformable_sampling(value, spatial_shapes, locations, weights)
        return self.output_proj(out)
