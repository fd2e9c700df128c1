"""Swin Transformer backbone (NHWC), returning the four normalised stage outputs at strides 4-32.

Follows the original detectron2 backbone that Mask2Former was trained with (and HF's
`SwinBackbone`): every block pads its input with zeros to a multiple of the window, always
partitions (windows are never shrunk to small inputs), builds the shifted-window mask on the
padded grid, and crops afterwards. So any input size works, and the outputs match the reference.

Inside a padded batch each image gets what it gets alone: tokens outside its valid rectangle are
zeroed before every attention and merging (the zeros the image's own padding would hold), and
keys beyond its own window-padded extent are masked out (the tokens that do not exist alone).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m2f_jax.config import SwinConfig
from m2f_jax.modeling import initializers as init
from m2f_jax.modeling.layers import UNROLLED, LayerExecution, run_units
from m2f_jax.modeling.precision import widen
from m2f_jax.modeling.valid_region import FeatureMap, token_mask


def layer_norm(dim: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, rngs=rngs)


def window_partition(x: jnp.ndarray, window: int) -> jnp.ndarray:
    """(B, H, W, C) with H, W multiples of `window` -> (B, nH*nW, window*window, C)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // window) * (w // window), window * window, c)


def window_merge(windows: jnp.ndarray, window: int, height: int, width: int) -> jnp.ndarray:
    """Inverse of `window_partition`."""
    b, _, _, c = windows.shape
    x = windows.reshape(b, height // window, width // window, window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, height, width, c)


def relative_position_index(window: int) -> np.ndarray:
    """(window^2, window^2) index into the (2*window-1)^2 relative position bias table."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """(nW, window^2, window^2) additive mask (0 / -100) that keeps the cyclic shift's regions apart."""

    def regions(n):
        idx = np.arange(n)
        return (idx >= n - window).astype(np.int64) + (idx >= n - shift).astype(np.int64)

    labels = (regions(height)[:, None] * 3 + regions(width)[None, :]).astype(np.float32)
    windows = window_partition(labels[None, :, :, None], window)[0, :, :, 0]
    diff = windows[:, None, :] - windows[:, :, None]
    return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


class SwinPatchEmbeddings(nnx.Module):
    def __init__(self, config: SwinConfig, *, rngs: nnx.Rngs):
        p = config.patch_size
        self.patch_size = p
        self.projection = nnx.Conv(
            config.num_channels,
            config.embed_dim,
            kernel_size=(p, p),
            strides=(p, p),
            padding="VALID",
            kernel_init=init.torch_default_kernel(),
            bias_init=init.torch_default_bias(config.num_channels * p * p),
            rngs=rngs,
        )

    def __call__(self, pixels: FeatureMap) -> FeatureMap:
        _, h, w, _ = pixels.values.shape
        p = self.patch_size
        x = jnp.pad(pixels.values, ((0, 0), (0, -h % p), (0, -w % p), (0, 0)))
        return FeatureMap(self.projection(x), -(-pixels.sizes // p))


class SwinEmbeddings(nnx.Module):
    def __init__(self, config: SwinConfig, *, rngs: nnx.Rngs):
        self.patch_embeddings = SwinPatchEmbeddings(config, rngs=rngs)
        self.norm = layer_norm(config.embed_dim, 1e-5, rngs)
        self.dropout = nnx.Dropout(config.hidden_dropout_prob, deterministic=True, rngs=rngs)

    def __call__(self, pixels: FeatureMap) -> FeatureMap:
        tokens = self.patch_embeddings(pixels)
        return tokens.replace(values=self.dropout(self.norm(tokens.values)))


class SwinWindowAttention(nnx.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias."""

    no_weight_decay = ("relative_position_bias_table",)  # read by the optimizer's parameter groups

    def __init__(self, config: SwinConfig, dim: int, num_heads: int, *, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.window_size = config.window_size
        self.q_proj = nnx.Linear(dim, dim, use_bias=config.qkv_bias, kernel_init=init.trunc_normal(0.02), rngs=rngs)
        self.k_proj = nnx.Linear(dim, dim, use_bias=config.qkv_bias, kernel_init=init.trunc_normal(0.02), rngs=rngs)
        self.v_proj = nnx.Linear(dim, dim, use_bias=config.qkv_bias, kernel_init=init.trunc_normal(0.02), rngs=rngs)
        self.o_proj = nnx.Linear(dim, dim, kernel_init=init.trunc_normal(0.02), rngs=rngs)
        table_size = (2 * config.window_size - 1) ** 2
        self.relative_position_bias_table = nnx.Param(init.trunc_normal(0.02)(rngs.params(), (table_size, num_heads)))
        self.attn_dropout = nnx.Dropout(config.attention_probs_dropout_prob, deterministic=True, rngs=rngs)

    def __call__(self, windows: jnp.ndarray, shift_mask: np.ndarray | None, key_ok: jnp.ndarray) -> jnp.ndarray:
        """windows (B, nW, N, C) -> (B, nW, N, C); `shift_mask` (nW, N, N) additive or None;
        `key_ok` (B, nW, N) False for keys that must not be attended to."""
        b, nw, n, c = windows.shape
        hd = c // self.num_heads

        def heads(x):
            return x.reshape(b, nw, n, self.num_heads, hd)

        q = heads(self.q_proj(windows)) * hd**-0.5
        k = heads(self.k_proj(windows))
        v = heads(self.v_proj(windows))
        logits = jnp.einsum("bwqhd,bwkhd->bwhqk", q, k)
        index = relative_position_index(self.window_size).reshape(-1)
        bias = self.relative_position_bias_table[...][index].reshape(n, n, self.num_heads).transpose(2, 0, 1)
        logits = logits + bias
        if shift_mask is not None:
            logits = logits + jnp.asarray(shift_mask)[None, :, None]
        logits = jnp.where(key_ok[:, :, None, None, :], widen(logits), -1e9)
        probs = self.attn_dropout(jax.nn.softmax(logits, axis=-1).astype(v.dtype))
        out = jnp.einsum("bwhqk,bwkhd->bwqhd", probs, v).reshape(b, nw, n, c)
        return self.o_proj(out)


class SwinMLP(nnx.Module):
    def __init__(self, config: SwinConfig, dim: int, *, rngs: nnx.Rngs):
        hidden = int(config.mlp_ratio * dim)
        self.fc1 = nnx.Linear(dim, hidden, kernel_init=init.trunc_normal(0.02), rngs=rngs)
        self.fc2 = nnx.Linear(hidden, dim, kernel_init=init.trunc_normal(0.02), rngs=rngs)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class DropPath(nnx.Module):
    """Stochastic depth: in training mode, drops a residual branch for whole samples with
    probability `rate` and scales the kept ones by 1 / (1 - rate). The rate is an argument (the
    stage's schedule gives each block its own), so blocks stay identical in structure and can be
    scanned."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.deterministic = True
        self.rngs = rngs["dropout"].fork()

    def __call__(self, x: jnp.ndarray, rate) -> jnp.ndarray:
        if self.deterministic:
            return x
        keep = 1.0 - jnp.asarray(rate, jnp.float32)
        kept = jax.random.bernoulli(self.rngs(), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(kept, x / jnp.maximum(keep, 1e-6).astype(x.dtype), 0.0)


class SwinBlock(nnx.Module):
    """(Shifted-)window attention and MLP, each pre-normalised and residual, with stochastic depth."""

    def __init__(self, config: SwinConfig, dim: int, num_heads: int, shift: int, *, rngs):
        self.window_size = config.window_size
        self.shift_size = shift
        self.layernorm_before = layer_norm(dim, config.layer_norm_eps, rngs)
        self.attention = SwinWindowAttention(config, dim, num_heads, rngs=rngs)
        self.layernorm_after = layer_norm(dim, config.layer_norm_eps, rngs)
        self.mlp = SwinMLP(config, dim, rngs=rngs)
        self.dropout = nnx.Dropout(config.hidden_dropout_prob, deterministic=True, rngs=rngs)
        self.drop_path = DropPath(rngs=rngs)

    def __call__(self, tokens: FeatureMap, drop_path_rate) -> FeatureMap:
        x, sizes = tokens.values, tokens.sizes
        b, h, w, c = x.shape
        ws, shift = self.window_size, self.shift_size
        y = jnp.where(tokens.valid[..., None], self.layernorm_before(x), 0.0)
        y = jnp.pad(y, ((0, 0), (0, -h % ws), (0, -w % ws), (0, 0)))
        hp, wp = y.shape[1:3]
        key_ok = token_mask(-(-sizes // ws) * ws, hp, wp)  # each image's own window-padded extent
        if shift:
            y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
            key_ok = jnp.roll(key_ok, (-shift, -shift), axis=(1, 2))
        mask = shifted_window_mask(hp, wp, ws, shift) if shift else None
        key_ok = window_partition(key_ok[..., None], ws)[..., 0]
        y = self.attention(window_partition(y, ws), mask, key_ok)
        y = window_merge(y, ws, hp, wp)
        if shift:
            y = jnp.roll(y, (shift, shift), axis=(1, 2))
        x = x + self.drop_path(self.dropout(y[:, :h, :w]), drop_path_rate)
        x = x + self.drop_path(self.dropout(self.mlp(self.layernorm_after(x))), drop_path_rate)
        return tokens.replace(values=x)


class SwinPatchMerging(nnx.Module):
    """2x2 neighbourhood -> one token with twice the channels (pads odd sides with zeros)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.norm = layer_norm(4 * dim, 1e-5, rngs)
        self.reduction = nnx.Linear(4 * dim, 2 * dim, use_bias=False, kernel_init=init.trunc_normal(0.02), rngs=rngs)

    def __call__(self, tokens: FeatureMap) -> FeatureMap:
        _, h, w, _ = tokens.values.shape
        x = jnp.where(tokens.valid[..., None], tokens.values, 0.0)
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        return FeatureMap(self.reduction(self.norm(x)), (tokens.sizes + 1) // 2)


class SwinStage(nnx.Module):
    """Blocks alternating plain and shifted windows, then (except in the last stage) a patch
    merging. The blocks run in pairs (one plain, one shifted), the unit that repeats."""

    def __init__(
        self, config: SwinConfig, index: int, drop_path_rates: list[float], execution: LayerExecution, *, rngs
    ):
        dim = config.stage_channels[index]
        self.blocks = nnx.List(
            [
                SwinBlock(
                    config, dim, config.num_heads[index], shift=0 if i % 2 == 0 else config.window_size // 2, rngs=rngs
                )
                for i in range(config.depths[index])
            ]
        )
        self.drop_path_rates = tuple(drop_path_rates)  # stochastic depth rises linearly with depth
        last = index == len(config.depths) - 1
        self.downsample = None if last else SwinPatchMerging(dim, rngs=rngs)
        self.execution = execution

    def __call__(self, tokens: FeatureMap) -> tuple[FeatureMap, FeatureMap | None]:
        """-> (the stage's output, the merged tokens for the next stage or None after the last)."""
        blocks, rates = list(self.blocks), self.drop_path_rates
        units = [tuple(blocks[i : i + 2]) for i in range(0, len(blocks), 2)]
        unit_rates = [np.asarray(rates[i : i + 2], np.float32) for i in range(0, len(blocks), 2)]

        def apply(unit, x, unit_rate):
            for block, rate in zip(unit, unit_rate, strict=True):
                x = block(tokens.replace(values=x), rate).values
            return x, None

        x, _ = run_units(units, apply, tokens.values, self.execution, unit_rates)
        out = tokens.replace(values=x)
        return out, None if self.downsample is None else self.downsample(out)


class SwinEncoder(nnx.Module):
    def __init__(self, config: SwinConfig, execution: LayerExecution, *, rngs: nnx.Rngs):
        total = sum(config.depths)
        rates = [config.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        starts = np.cumsum((0,) + config.depths)
        self.layers = nnx.List(
            [
                SwinStage(config, i, rates[starts[i] : starts[i + 1]], execution, rngs=rngs)
                for i in range(len(config.depths))
            ]
        )

    def __call__(self, tokens: FeatureMap) -> list[FeatureMap]:
        """-> each stage's output, stride 4 first."""
        outputs = []
        for stage in self.layers:
            out, tokens = stage(tokens)
            outputs.append(out)
        return outputs


class SwinBackbone(nnx.Module):
    """pixels (B, H, W, C) with their valid sizes -> the four normalised stage outputs, strides 4 to 32.

    Odd sides are padded up (so a stage side is ceil(previous / 2)), as in the reference; the
    valid sizes are rounded the same way.
    """

    def __init__(self, config: SwinConfig, execution: LayerExecution = UNROLLED, *, rngs: nnx.Rngs):
        self.stage_names = tuple(config.out_features)
        self.embeddings = SwinEmbeddings(config, rngs=rngs)
        self.encoder = SwinEncoder(config, execution, rngs=rngs)
        self.hidden_states_norms = nnx.Dict(
            {
                name: layer_norm(ch, 1e-5, rngs)
                for name, ch in zip(config.out_features, config.stage_channels, strict=True)
            }
        )

    def __call__(self, pixels: FeatureMap) -> tuple[FeatureMap, ...]:
        """The features outside each image's valid region are not meaningful."""
        stages = self.encoder(self.embeddings(pixels))
        return tuple(
            out.replace(values=self.hidden_states_norms[name](out.values))
            for name, out in zip(self.stage_names, stages, strict=True)
        )
