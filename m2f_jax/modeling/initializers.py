"""Parameter initialisers of the original Swin, Deformable DETR and Mask2Former code, in Flax layouts.

Flax kernels are (in, out) for Linear and (kh, kw, in, out) for Conv; `jax.nn.initializers`
reads fan-in from axis -2 and fan-out from axis -1, each times the receptive field, which are the
fans PyTorch computes from its (out, in) and (out, in, kh, kw) weights. So the torch schemes map
onto `variance_scaling` with its default axes. Biases are initialised from their shape alone,
so a bias that depends on the weight's fan-in takes that fan-in as an argument.

Which module uses which scheme (the original code's choice; `tests/test_init.py` checks it):
  ResNet (detectron2's): convs c2_msra_fill without bias; frozen BatchNorms the identity (weight 1,
    bias 0, mean 0, variance 1 - eps).
  Swin: Linear kernels trunc_normal(0.02) with zero bias, relative position tables
    trunc_normal(0.02), LayerNorms 1/0, the patch-embedding conv PyTorch's default.
  Deformable attention: sampling_offsets kernel 0 and bias the grid of directions, attention
    weights 0/0, value/output projections xavier_uniform with zero bias.
  Pixel decoder: input projections xavier_uniform (bias 0); level embedding normal(1); encoder
    FFN kernels xavier_uniform with PyTorch's default bias; lateral/output/mask convs
    c2_xavier_fill; GroupNorms and LayerNorms 1/0.
  Transformer decoder: xavier_uniform for the attention and FFN kernels of every layer (q/k/v as
    thirds of nn.MultiheadAttention's fused in_proj), zero attention biases, PyTorch's default
    FFN biases; queries and level embeddings normal(1); input projections c2_xavier_fill; the
    mask-embedding MLP and the class predictor PyTorch's default Linear.

Where Hugging Face transformers (5.x, `Mask2FormerPreTrainedModel._init_weights`, applied to every
submodule children first, and Swin's `_init_weights`) departs from that, we follow the original:
  - Linear / Conv layers that no branch claims get normal(std=init_std=0.02) and a zero bias:
    the Swin patch-embedding conv, the pixel decoder's input projections and lateral / output /
    mask convs, the pixel-decoder encoder's FFN, and the class predictor. (For Swin's Linear
    layers normal(0.02) is what the original's trunc_normal(0.02, bounds +-2) amounts to.)
  - The FFN biases of the decoder and pixel-decoder encoder layers are zero, not PyTorch's default.
  - The decoder self-attention's q/k/v are separate Linear layers there, each xavier_uniform over
    its own (d, d); the original's nn.MultiheadAttention draws them as one (3d, d) matrix.
  - The decoder's input projections get xavier_uniform instead of c2_xavier_fill.
  - Swin's relative position bias tables are zero.
(The original Mask2Former copy of Swin defines its Linear initialiser but never applies it, so its
Linear layers there keep PyTorch's default; we follow the Swin code's own scheme, as HF does.)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Initializer = jax.nn.initializers.Initializer

zeros = jax.nn.initializers.zeros
ones = jax.nn.initializers.ones


def normal(std: float = 1.0) -> Initializer:
    """N(0, std^2): nn.Embedding's default (std 1) and the pixel decoder's level embedding."""
    return jax.nn.initializers.normal(stddev=std)


def trunc_normal(std: float = 0.02, lower: float = -2.0, upper: float = 2.0) -> Initializer:
    """timm's trunc_normal_(std=std, a=lower, b=upper) as Swin uses it: N(0, std^2) cut at the
    absolute values `lower` and `upper` (at std 0.02 that is 100 standard deviations)."""
    return jax.nn.initializers.truncated_normal(stddev=std, lower=lower / std, upper=upper / std)


def xavier_uniform() -> Initializer:
    """torch.nn.init.xavier_uniform_ (gain 1): U(+-sqrt(6 / (fan_in + fan_out)))."""
    return jax.nn.initializers.glorot_uniform()


def fused_xavier_uniform(parts: int) -> Initializer:
    """xavier_uniform_ of a fused (parts * out, in) torch weight, for one of its `parts` blocks kept
    as a separate (in, out) kernel: the q, k or v third of nn.MultiheadAttention's in_proj_weight,
    whose fan-out counts all three. U(+-sqrt(6 / (fan_in + parts * fan_out)))."""

    def init(key, shape, dtype=jnp.float32):
        receptive = math.prod(shape[:-2])
        fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive * parts
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def c2_xavier_fill() -> Initializer:
    """detectron2's c2_xavier_fill (Caffe2's "XavierFill"): kaiming_uniform_(a=1), that is
    U(+-sqrt(3 / fan_in)); its bias is zero."""
    return jax.nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def c2_msra_fill() -> Initializer:
    """detectron2's c2_msra_fill: kaiming_normal_(mode="fan_out", nonlinearity="relu"), that is
    N(0, 2 / fan_out) untruncated; its bias (when there is one) is zero."""
    return jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_default_kernel() -> Initializer:
    """nn.Linear / nn.Conv2d's default weight: kaiming_uniform_(a=sqrt(5)) = U(+-1 / sqrt(fan_in))."""
    return jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias(fan_in: int) -> Initializer:
    """nn.Linear / nn.Conv2d's default bias: U(+-1 / sqrt(fan_in)), fan_in that of the layer's weight."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def feedforward_linear(in_features: int, out_features: int, *, rngs: nnx.Rngs) -> nnx.Linear:
    """A transformer FFN's fc1 / fc2 as the original builds them: xavier-uniform weights (its
    `_reset_parameters` covers every matrix) and nn.Linear's default bias."""
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=xavier_uniform(),
        bias_init=torch_default_bias(in_features),
        rngs=rngs,
    )


def sampling_offsets_grid(n_heads: int, n_levels: int, n_points: int) -> np.ndarray:
    """Deformable DETR's initial sampling offsets, flat in the order (head, level, point, xy): head h
    points along the angle 2*pi*h/n_heads, the direction scaled so its larger component is 1, and
    point p lies p+1 steps along it, the same at every level. Computed in float64 and rounded once
    (PyTorch's float32 cos/sin put some entries a few ulps away)."""
    thetas = np.arange(n_heads) * (2.0 * math.pi / n_heads)
    directions = np.stack([np.cos(thetas), np.sin(thetas)], axis=-1)
    directions /= np.abs(directions).max(axis=-1, keepdims=True)
    steps = np.arange(1, n_points + 1, dtype=np.float64)
    grid = directions[:, None, None, :] * steps[None, None, :, None]
    return np.broadcast_to(grid, (n_heads, n_levels, n_points, 2)).reshape(-1)


def sampling_offsets_bias(n_heads: int, n_levels: int, n_points: int) -> Initializer:
    """The bias initialiser of deformable attention's sampling_offsets: `sampling_offsets_grid`."""
    grid = sampling_offsets_grid(n_heads, n_levels, n_points)

    def init(key, shape, dtype=jnp.float32):
        del key
        if tuple(shape) != grid.shape:
            raise ValueError(f"sampling_offsets bias has shape {tuple(shape)}, the grid {grid.shape}")
        return jnp.asarray(grid, dtype)

    return init
