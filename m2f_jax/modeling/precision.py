"""Numerics that stay in float32 (or wider) whatever the compute dtype: softmax, sigmoid
thresholds, sampling coordinates and bilinear weights. Under a bfloat16 compute dtype these lose
too much (a sampling location off by a pixel, a mask threshold flipped), so they are widened."""

from __future__ import annotations

import jax.numpy as jnp


def wide_dtype(dtype) -> jnp.dtype:
    """float32 for bf16/fp16/fp32, float64 when the input already is (x64 tests)."""
    return jnp.promote_types(dtype, jnp.float32)


def widen(x: jnp.ndarray) -> jnp.ndarray:
    return x.astype(wide_dtype(x.dtype))
