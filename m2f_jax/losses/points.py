"""Point sampling for the matcher and the mask losses (PointRend-style, as in Mask2Former).

Masks are compared on a few thousand points instead of every pixel, which is what lets the loss
run at 1024x1024 with 100+ queries. Coordinates are (x, y) in [0, 1] over the whole (padded) map,
so a stride-4 prediction and a full-resolution target are read at the same places without resizing.
Reading a map at a point is bilinear interpolation exactly as torch's `grid_sample` with
`align_corners=False` and zero padding (neighbours outside the map count as 0).

Random draws are kept apart from the computations: `select_uncertain_points` is a pure function of
pre-drawn uniform coordinates (tests feed it the same numbers as a reference implementation), and
`uncertainty_points` draws them from a JAX key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _corners(coords: jnp.ndarray, height: int, width: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Flat indices (..., P, 4) into a (height * width) map and bilinear weights (..., P, 4) of the
    four neighbours of each point; a neighbour outside the map gets weight 0 (grid_sample's zeros)."""
    coords = coords.astype(jnp.float32)
    # grid_sample's own arithmetic on the grid value g = 2c - 1, so results match it to the last bit.
    x = ((2.0 * coords[..., 0] - 1.0 + 1.0) * width - 1.0) / 2.0
    y = ((2.0 * coords[..., 1] - 1.0 + 1.0) * height - 1.0) / 2.0
    x0, y0 = jnp.floor(x), jnp.floor(y)
    fx, fy = x - x0, y - y0
    xs = jnp.stack([x0, x0 + 1, x0, x0 + 1], axis=-1)
    ys = jnp.stack([y0, y0, y0 + 1, y0 + 1], axis=-1)
    weights = jnp.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], axis=-1)
    inside = (xs >= 0) & (xs <= width - 1) & (ys >= 0) & (ys <= height - 1)
    index = jnp.clip(ys, 0, height - 1).astype(jnp.int32) * width + jnp.clip(xs, 0, width - 1).astype(jnp.int32)
    return index, jnp.where(inside, weights, 0.0)


def point_sample(maps: jnp.ndarray, coords: jnp.ndarray) -> jnp.ndarray:
    """Maps (N, H, W) (any dtype, bool included) read at their own points (N, P, 2) -> (N, P) float32.

    One gather from the maps as a flat vector (faster on a CPU than a gather with a batch dimension,
    most of all its backward: bench/micro.py --only points); `point_sample_reference` is the plain one."""
    maps = jnp.asarray(maps)
    n, height, width = maps.shape
    index, weights = _corners(coords, height, width)
    flat = index + (jnp.arange(n, dtype=index.dtype) * (height * width))[:, None, None]
    values = maps.reshape(-1)[flat.reshape(-1)].reshape(weights.shape)
    return jnp.sum(values.astype(jnp.float32) * weights, axis=-1)


def point_sample_reference(maps: jnp.ndarray, coords: jnp.ndarray) -> jnp.ndarray:
    """`point_sample` with `take_along_axis` per map."""
    n, height, width = maps.shape
    index, weights = _corners(coords, height, width)
    flat = maps.reshape(n, height * width)
    values = jnp.take_along_axis(flat, index.reshape(n, -1), axis=1).reshape(weights.shape)
    return jnp.sum(values.astype(jnp.float32) * weights, axis=-1)


def point_sample_shared(maps: jnp.ndarray, coords: jnp.ndarray) -> jnp.ndarray:
    """Maps (N, H, W) all read at the same points (P, 2) -> (N, P) float32: the maps as a (pixels, N)
    table, one row per corner of a point. Against gathering each map's pixels
    (`point_sample_shared_reference`) the CPU runs disagree: 26 vs 38 ms in one, 27 vs 17 ms in a
    quieter one (docs/benchmarks.md); kept until the GPU run settles it."""
    maps = jnp.asarray(maps)
    n, height, width = maps.shape
    index, weights = _corners(coords, height, width)
    table = maps.reshape(n, height * width).T
    values = table[index.reshape(-1)].reshape(*index.shape, n)
    return jnp.einsum("pcn,pc->np", values.astype(jnp.float32), weights, precision=jax.lax.Precision.HIGHEST)


def point_sample_shared_reference(maps: jnp.ndarray, coords: jnp.ndarray) -> jnp.ndarray:
    """`point_sample_shared` gathering each map's pixels."""
    n, height, width = maps.shape
    index, weights = _corners(coords, height, width)
    values = maps.reshape(n, height * width)[:, index]
    return jnp.sum(values.astype(jnp.float32) * weights, axis=-1)


def sampling_counts(num_points: int, oversample_ratio: float, importance_sample_ratio: float) -> tuple[int, int, int]:
    """(candidates drawn, points kept for their uncertainty, uniform points added); rounded down as
    the original. The kept and added points make `num_points`."""
    candidates = int(num_points * oversample_ratio)
    uncertain = int(importance_sample_ratio * num_points)
    if not 0 <= uncertain <= candidates:
        raise ValueError(
            f"importance_sample_ratio * num_points = {uncertain} points must be chosen among "
            f"oversample_ratio * num_points = {candidates} candidates"
        )
    return candidates, uncertain, num_points - uncertain


def smallest_k(values: jnp.ndarray, k: int) -> jnp.ndarray:
    """Indices (N, k) int32 of the k smallest of each row of non-negative `values` (N, C), the set
    `lax.top_k(-values, k)` gives (equal values: the lower indices), in increasing index order.

    The k-th smallest value is found by bisection on the float's bits (31 counting passes over the
    row), the indices are then packed by a running count: on a CPU this is several times faster than
    XLA's top-k for the loss's k = C / 4 (bench/micro.py --only points)."""
    rows, count = values.shape
    bits = jax.lax.bitcast_convert_type(values.astype(jnp.float32), jnp.int32)  # ordered as the values (>= 0)

    def halve(_, bounds):  # invariant: fewer than k values <= lo, at least k values <= hi
        lo, hi = bounds
        mid = lo + jax.lax.shift_right_logical(hi - lo, 1)  # hi - lo wraps past 2^31: as unsigned, halved
        enough = jnp.sum(bits <= mid[:, None], axis=1) >= k
        return jnp.where(enough, lo, mid), jnp.where(enough, mid, hi)

    # full_like: under shard_map the bounds vary over the mesh axes the values vary over
    start = (jnp.full_like(bits, -1, shape=(rows,)), jnp.full_like(bits, jnp.iinfo(jnp.int32).max, shape=(rows,)))
    _, kth = jax.lax.fori_loop(0, 32, halve, start)
    below = bits < kth[:, None]
    ties = bits == kth[:, None]
    tie_rank = jnp.cumsum(ties, axis=1) - 1
    chosen = below | (ties & (tie_rank < (k - jnp.sum(below, axis=1))[:, None]))
    position = jnp.where(chosen, jnp.cumsum(chosen, axis=1) - 1, k)  # k: dropped
    index = jnp.zeros((rows, k), jnp.int32)
    return index.at[jnp.arange(rows)[:, None], position].set(jnp.arange(count, dtype=jnp.int32), mode="drop")


def select_uncertain_points(
    logits: jnp.ndarray, candidates: jnp.ndarray, random_points: jnp.ndarray, num_uncertain: int
) -> jnp.ndarray:
    """The `num_uncertain` candidates (N, C, 2) where the logits (N, H, W) are closest to 0
    (uncertainty -|logit|; in candidate order), followed by the uniform `random_points` (N, R, 2)
    -> (N, num_uncertain + R, 2).

    No gradient flows into the choice: the points are data for the loss, not a function of the weights.
    """
    logits = jax.lax.stop_gradient(logits)
    best = smallest_k(jnp.abs(point_sample(logits, candidates)), num_uncertain)
    chosen = jnp.take_along_axis(candidates, best[..., None], axis=1)
    return jax.lax.stop_gradient(jnp.concatenate([chosen, random_points.astype(chosen.dtype)], axis=1))


def select_uncertain_points_reference(
    logits: jnp.ndarray, candidates: jnp.ndarray, random_points: jnp.ndarray, num_uncertain: int
) -> jnp.ndarray:
    """`select_uncertain_points` with XLA's top-k (the chosen points ordered by uncertainty)."""
    logits = jax.lax.stop_gradient(logits)
    uncertainty = -jnp.abs(point_sample(logits, candidates))
    _, best = jax.lax.top_k(uncertainty, num_uncertain)
    chosen = jnp.take_along_axis(candidates, best[..., None], axis=1)
    return jax.lax.stop_gradient(jnp.concatenate([chosen, random_points.astype(chosen.dtype)], axis=1))


def uncertainty_points(
    key: jax.Array, logits: jnp.ndarray, num_points: int, oversample_ratio: float, importance_sample_ratio: float
) -> jnp.ndarray:
    """`num_points` points (N, P, 2) per map of logits (N, H, W): the most uncertain of
    `oversample_ratio * num_points` uniform candidates, then uniform points for the rest."""
    num_candidates, num_uncertain, num_random = sampling_counts(num_points, oversample_ratio, importance_sample_ratio)
    candidate_key, random_key = jax.random.split(key)
    n = logits.shape[0]
    candidates = jax.random.uniform(candidate_key, (n, num_candidates, 2))
    random_points = jax.random.uniform(random_key, (n, num_random, 2))
    return select_uncertain_points(logits, candidates, random_points, num_uncertain)
