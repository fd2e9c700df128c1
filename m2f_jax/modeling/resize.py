"""Bilinear resizing with PyTorch's `interpolate(mode="bilinear", align_corners=False)` semantics.

`jax.image.resize` anti-aliases when it shrinks, which the reference models do not; this module
builds the two separable interpolation matrices instead (half-pixel centres, source coordinates
clamped at 0, no anti-aliasing) and applies them with einsum, which is exact and fast on
accelerators.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) matrix whose rows hold the two linear-interpolation weights."""
    scale = in_size / out_size
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.maximum(src, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    matrix = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, lo), 1.0 - frac)
    np.add.at(matrix, (rows, hi), frac)
    return matrix


def resize_bilinear(x: jnp.ndarray, size: tuple[int, int], spatial_axes: tuple[int, int] = (1, 2)) -> jnp.ndarray:
    """Resizes the two `spatial_axes` of `x` to `size` (static), as torch's bilinear interpolate."""
    h_axis, w_axis = spatial_axes
    in_h, in_w = x.shape[h_axis], x.shape[w_axis]
    out_h, out_w = size
    if (in_h, in_w) == (out_h, out_w):
        return x
    rows = jnp.asarray(interpolation_matrix(in_h, out_h), x.dtype)
    cols = jnp.asarray(interpolation_matrix(in_w, out_w), x.dtype)
    x = jnp.moveaxis(x, (h_axis, w_axis), (-2, -1))
    x = jnp.einsum("oh,...hw,pw->...op", rows, x, cols, precision="highest")
    return jnp.moveaxis(x, (-2, -1), (h_axis, w_axis))
