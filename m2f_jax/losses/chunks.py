"""Per-target work on the valid target slots only, with static shapes.

Targets come padded to M slots per image, usually far more than an image has (COCO's recipe: 100
slots, an image has 10-20 segments). The per-slot work of the loss (the matcher's target points, the
uncertainty points, their top-k and the mask losses) on a padded slot is thrown away afterwards. Here
the flattened (image, slot) pairs are ordered valid first and cut into chunks of a fixed size, and a
chunk without a valid pair is skipped at run time (`lax.cond` inside `lax.scan`): the work follows the
number of targets, rounded up to a chunk, instead of M. Shapes stay static; values are those of
computing every slot (a skipped slot's results are zeros, and only valid slots are ever read).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

CHUNK = 16  # pairs per chunk: the work of a batch is that of ceil(valid pairs / CHUNK) * CHUNK pairs


def valid_first(valid: jnp.ndarray, chunk: int = CHUNK) -> tuple[jnp.ndarray, jnp.ndarray]:
    """valid (N,) bool -> (pairs, live), both (ceil(N / chunk), chunk): the indices 0..N-1 with the valid
    ones first (each group in its own order), padded with index 0; live marks the valid entries."""
    valid = jnp.asarray(valid)
    n = valid.shape[0]
    num_chunks = max(-(-n // chunk), 1)
    order = jnp.argsort(~valid, stable=True).astype(jnp.int32)
    pad = num_chunks * chunk - n
    pairs = jnp.concatenate([order, jnp.zeros(pad, jnp.int32)])
    live = jnp.concatenate([valid[order], jnp.zeros(pad, bool)])
    return pairs.reshape(num_chunks, chunk), live.reshape(num_chunks, chunk)


def map_live_chunks(fn: Callable[[jnp.ndarray, Any], Any], live: jnp.ndarray, xs: Any) -> Any:
    """fn(live[c], xs[c]) stacked over the chunks c (xs: arrays with a leading chunk axis), zeros for the
    chunks without a live entry, which are not computed. Differentiable in xs."""
    first = jax.tree.map(lambda x: x[0], xs)
    shapes = jax.eval_shape(fn, live[0], first)

    def body(carry, inputs):
        live_c, xs_c = inputs

        def skipped(_):  # zeros_like: varying over the mesh axes live_c varies over (shard_map's cond checks)
            return jax.tree.map(lambda s: jnp.zeros_like(live_c, s.dtype, shape=s.shape), shapes)

        return carry, jax.lax.cond(jnp.any(live_c), lambda a: fn(live_c, a), skipped, xs_c)

    return jax.lax.scan(body, None, (live, xs))[1]


def unchunk(values: jnp.ndarray, pairs: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
    """Per-pair results in chunk order (num_chunks, chunk, ...) back to pair order (N, ...), zeros for the
    pairs that are not valid."""
    valid = jnp.asarray(valid)
    n = valid.shape[0]
    flat = values.reshape(-1, *values.shape[2:])
    position = jnp.zeros(n, jnp.int32).at[pairs.reshape(-1)[:n]].set(jnp.arange(n, dtype=jnp.int32))
    rows = flat[position]
    return jnp.where(valid.reshape((n,) + (1,) * (rows.ndim - 1)), rows, jnp.zeros((), rows.dtype))
