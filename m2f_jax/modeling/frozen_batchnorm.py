"""Frozen BatchNorm, as detectron2 trains its ResNets: a fixed per-channel affine map.

Its weight, bias and running statistics come with the pretrained weights and are never trained,
so they are `Frozen` variables rather than `nnx.Param`s: the optimizer and the gradients see only
Params, while saving and loading (m2f_jax.weights) and training checkpoints keep both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from m2f_jax.modeling.precision import widen


class Frozen(nnx.Variable):
    """A weight that is part of the model (saved, loaded, converted) but not trained."""


class FrozenBatchNorm(nnx.Module):
    """y = x * scale / sqrt(var + eps) + bias - mean * scale / sqrt(var + eps), per channel (last axis):
    BatchNorm in eval mode. Initialised as detectron2's FrozenBatchNorm2d, the identity (variance
    1 - eps). The folded factors are computed in at least float32 and applied in x's dtype."""

    def __init__(self, channels: int, eps: float = 1e-5):
        self.eps = eps
        self.scale = Frozen(jnp.ones((channels,), jnp.float32))
        self.bias = Frozen(jnp.zeros((channels,), jnp.float32))
        self.running_mean = Frozen(jnp.zeros((channels,), jnp.float32))
        self.running_var = Frozen(jnp.full((channels,), 1.0 - eps, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        factor = widen(self.scale[...]) * jax.lax.rsqrt(widen(self.running_var[...]) + self.eps)
        shift = widen(self.bias[...]) - widen(self.running_mean[...]) * factor
        return x * factor.astype(x.dtype) + shift.astype(x.dtype)
