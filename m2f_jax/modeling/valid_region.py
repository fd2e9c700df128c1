"""The valid (unpadded) region of each image in a padded batch, at every stride.

With a `pixel_mask`, each image's real pixels form a top-left rectangle of a larger canvas. The
model then computes, on that rectangle, exactly what it computes for the image alone: these
helpers give a feature map together with its per-image sizes, token masks, and bilinear
resizing between per-image sizes (PyTorch's align_corners=False rule applied to each image's own extent).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import struct

from m2f_jax.modeling.precision import wide_dtype, widen


@struct.dataclass
class FeatureMap:
    """A batch of maps with each image's valid extent: what the image alone would have there.

    values (B, h, w, C); sizes (B, 2) int32, each image's valid (h, w) in this map (a top-left
    rectangle). Computed once from the pixel mask, the sizes travel with the features through
    the backbone (which rounds them as its patch embedding and mergings do) and the decoders.
    """

    values: jnp.ndarray
    sizes: jnp.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape[1], self.values.shape[2]

    @property
    def valid(self) -> jnp.ndarray:
        """(B, h, w) bool: True on each image's own positions."""
        return token_mask(self.sizes, *self.shape)


def image_sizes(pixel_mask: jnp.ndarray | None, batch: int, height: int, width: int) -> jnp.ndarray:
    """(B, 2) int32 (h, w) of each image's valid rectangle; the whole canvas without a mask."""
    if pixel_mask is None:
        return jnp.tile(jnp.array([[height, width]], jnp.int32), (batch, 1))
    rows = jnp.sum(jnp.any(pixel_mask, axis=2), axis=1)
    cols = jnp.sum(jnp.any(pixel_mask, axis=1), axis=1)
    return jnp.stack([rows, cols], axis=-1).astype(jnp.int32)


def token_mask(sizes: jnp.ndarray, height: int, width: int) -> jnp.ndarray:
    """(B, height, width) bool: True inside each image's (h, w) rectangle."""
    rows = jnp.arange(height)[None, :, None] < sizes[:, 0, None, None]
    cols = jnp.arange(width)[None, None, :] < sizes[:, 1, None, None]
    return rows & cols


def _interpolation_matrices(
    in_sizes: jnp.ndarray, out_sizes: jnp.ndarray, in_len: int, out_len: int, dtype
) -> jnp.ndarray:
    """(B, out_len, in_len): bilinear weights from each image's first in_sizes[b] entries to its
    first out_sizes[b] (rows beyond out_sizes[b] are zero), computed in at least float32."""
    dtype = wide_dtype(dtype)
    in_f = in_sizes.astype(dtype)[:, None]
    out_f = out_sizes.astype(dtype)[:, None]
    dst = jnp.arange(out_len, dtype=dtype)[None, :]
    src = jnp.maximum((dst + 0.5) * (in_f / out_f) - 0.5, 0.0)
    last = in_sizes[:, None] - 1
    lo = jnp.minimum(jnp.floor(src).astype(jnp.int32), last)
    hi = jnp.minimum(lo + 1, last)
    frac = src - lo
    cols = jnp.arange(in_len)[None, None, :]
    matrix = (cols == lo[..., None]) * (1.0 - frac)[..., None] + (cols == hi[..., None]) * frac[..., None]
    return jnp.where((dst < out_f)[..., None], matrix, 0.0)


def resize_valid(
    x: jnp.ndarray,
    in_sizes: jnp.ndarray,
    out_sizes: jnp.ndarray,
    out_shape: tuple[int, int],
    spatial_axes: tuple[int, int] = (1, 2),
) -> jnp.ndarray:
    """Bilinearly resizes each image's valid (h, w) rectangle of `x` to its (h', w') rectangle in a
    canvas of `out_shape`; outside it the result is zero. Batch is axis 0. Computed in at least
    float32 (the interpolation weights), returned in x's dtype."""
    h_axis, w_axis = spatial_axes
    rows = _interpolation_matrices(in_sizes[:, 0], out_sizes[:, 0], x.shape[h_axis], out_shape[0], x.dtype)
    cols = _interpolation_matrices(in_sizes[:, 1], out_sizes[:, 1], x.shape[w_axis], out_shape[1], x.dtype)
    moved = jnp.moveaxis(widen(x), (h_axis, w_axis), (-2, -1))
    moved = jnp.einsum("boh,b...hw,bpw->b...op", rows, moved, cols, precision="highest")
    return jnp.moveaxis(moved, (-2, -1), (h_axis, w_axis)).astype(x.dtype)
