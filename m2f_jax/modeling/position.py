"""Sine position embeddings of DETR, normalised to each image's valid extent (`normalize=True`)."""

from __future__ import annotations

import math

import jax.numpy as jnp

from m2f_jax.modeling.precision import wide_dtype


def sine_position_embedding(
    sizes: jnp.ndarray,
    height: int,
    width: int,
    num_features: int,
    dtype=jnp.float32,
    temperature: float = 10000.0,
    scale: float = 2 * math.pi,
) -> jnp.ndarray:
    """(B, height, width, 2 * num_features) embedding: the y half first, then the x half.

    Row/column indices run 1..n and are divided by each image's valid size `sizes[b]` = (h, w)
    (+1e-6) and multiplied by `scale`, so an image padded inside a larger canvas gets the
    embedding it gets alone.
    """
    eps = 1e-6
    dtype = wide_dtype(dtype)
    sizes = sizes.astype(dtype)
    y = jnp.arange(1, height + 1, dtype=dtype)[None, :] / (sizes[:, 0:1] + eps) * scale  # (B, height)
    x = jnp.arange(1, width + 1, dtype=dtype)[None, :] / (sizes[:, 1:2] + eps) * scale  # (B, width)
    dim_t = jnp.arange(num_features, dtype=dtype)
    dim_t = temperature ** (2 * jnp.floor(dim_t / 2) / num_features)

    def encode(coords):  # (B, n) -> (B, n, num_features), sin/cos interleaved
        pos = coords[..., None] / dim_t
        return jnp.stack([jnp.sin(pos[..., 0::2]), jnp.cos(pos[..., 1::2])], axis=-1).reshape(*coords.shape, -1)

    b = sizes.shape[0]
    pos_y = jnp.broadcast_to(encode(y)[:, :, None, :], (b, height, width, num_features))
    pos_x = jnp.broadcast_to(encode(x)[:, None, :, :], (b, height, width, num_features))
    return jnp.concatenate([pos_y, pos_x], axis=-1)
