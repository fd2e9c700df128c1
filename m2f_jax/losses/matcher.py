"""Hungarian matching of queries to target masks, fixed-shape and jittable.

For each image, the cost of giving target slot j to query q is

    class_weight * -p_q(label_j) + mask_weight * BCE(q, j) + dice_weight * dice(q, j),

with BCE and dice between the query's mask logits and the target mask, both read at the same
uniform points for all masks of the image (the original's 12544), in float32. The configured class
weight is used (Hugging Face once hard-coded 1.0 here, transformers #38559).

Targets come padded to M slots (`PaddedTargets`). A padded slot's column gets a constant cost: with
Q >= M every column is assigned, so a constant column adds the same amount to every assignment and
the optimum of the real columns is unchanged; its query is then dropped (reported as -1).

Two solvers, both given only the valid columns: "hungarian", shortest augmenting paths inside the
compiled graph (default; runs on every backend; one search per valid target, so its time follows the
targets of an image, not the slots: 10-20 targets in the recipe's 100 slots), and "scipy",
`linear_sum_assignment` through a host callback (a round-trip per step; does not work on TPU).
optax's `hungarian_algorithm` (`_hungarian_assign`, every column) is the reference the first is tested
against. Only the valid targets are read at the points, chunk by chunk (`chunks`): the padded slots'
columns are replaced anyway.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from m2f_jax.losses.chunks import CHUNK, map_live_chunks, unchunk, valid_first
from m2f_jax.losses.points import point_sample, point_sample_shared
from m2f_jax.processing.targets import PaddedTargets

SOLVERS = ("hungarian", "scipy")
_COST_LIMIT = 1e8  # costs are clipped to +-this; NaN/inf become +this (only matched if nothing else can be)


def matching_cost(
    class_logits: jnp.ndarray,
    mask_logits: jnp.ndarray,
    target_masks: jnp.ndarray,
    labels: jnp.ndarray,
    coords: jnp.ndarray,
    *,
    class_weight: float,
    mask_weight: float,
    dice_weight: float,
) -> jnp.ndarray:
    """One image's (Q, M) cost: class logits (Q, K+1), mask logits (Q, h, w), target masks (M, H, W),
    labels (M,) (padded slots may hold anything), points (P, 2) shared by all masks."""
    logits = point_sample_shared(jax.lax.stop_gradient(mask_logits), coords)  # (Q, P)
    targets = point_sample_shared(target_masks, coords)  # (M, P)
    weights = dict(class_weight=class_weight, mask_weight=mask_weight, dice_weight=dice_weight)
    return cost_from_points(class_logits, logits, targets, labels, **weights)


def cost_from_points(
    class_logits: jnp.ndarray,
    logits: jnp.ndarray,
    targets: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    class_weight: float,
    mask_weight: float,
    dice_weight: float,
) -> jnp.ndarray:
    """`matching_cost` from the masks already read at the points: query logits (Q, P), targets (M, P)."""
    class_logits, logits = jax.lax.stop_gradient((class_logits, logits))
    probs = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)
    class_cost = -jnp.take(probs, jnp.clip(labels, 0, probs.shape[-1] - 1), axis=1)
    num_points = logits.shape[-1]
    dot = lambda a, b: jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)  # noqa: E731
    # mean_p BCE(x, t) = mean_p [softplus(x) - x t]
    bce_cost = jnp.mean(jax.nn.softplus(logits), axis=-1)[:, None] - dot(logits, targets) / num_points
    p = jax.nn.sigmoid(logits)
    dice_cost = 1.0 - (2.0 * dot(p, targets) + 1.0) / (p.sum(-1)[:, None] + targets.sum(-1)[None, :] + 1.0)
    return class_weight * class_cost + mask_weight * bce_cost + dice_weight * dice_cost


def target_points(targets: PaddedTargets, coords: jnp.ndarray, chunk: int = CHUNK) -> jnp.ndarray:
    """Every valid target mask read at its image's points: masks (B, M, H, W), coords (B, P, 2) ->
    (B, M, P) float32, zeros for the padded slots, which are not read (`chunks.valid_first`)."""
    batch, num_slots = targets.valid.shape
    n = batch * num_slots
    valid = jnp.asarray(targets.valid).reshape(n)
    masks = jnp.asarray(targets.masks).reshape(n, *targets.masks.shape[2:])
    coords = jnp.asarray(coords)
    pairs, live = valid_first(valid, chunk)

    def sample(_, pairs_c):
        return point_sample(masks[pairs_c], coords[pairs_c // num_slots])

    values = map_live_chunks(sample, live, pairs)  # (chunks, chunk, P)
    return unchunk(values, pairs, valid).reshape(batch, num_slots, -1)


def _check_slots(num_queries: int, num_slots: int) -> None:
    if num_slots > num_queries:
        raise ValueError(
            f"{num_slots} target slots (max_instances) but only {num_queries} queries: every target needs its own "
            "query; lower max_instances or raise num_queries"
        )


def _scipy_assign(cost: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Host side: (B, Q, M) costs -> (B, M) query of each valid column (0 for the others), solving for
    the valid columns alone."""
    from scipy.optimize import linear_sum_assignment

    cost, valid = np.asarray(cost), np.asarray(valid)
    query = np.zeros(cost.shape[::2], np.int32)
    for b, image_cost in enumerate(cost):
        columns = np.flatnonzero(valid[b])
        rows, cols = linear_sum_assignment(image_cost[:, columns])
        query[b, columns[cols]] = rows
    return query


def _hungarian_assign(cost: jnp.ndarray) -> jnp.ndarray:
    """optax's Hungarian algorithm, (Q, M) costs -> (M,) query of each column: every column, padded ones
    included (the plain version `_hungarian_valid` is tested against)."""
    rows, cols = optax.assignment.hungarian_algorithm(cost)
    return jnp.zeros(cost.shape[1], jnp.int32).at[cols].set(rows.astype(jnp.int32))


def _augmenting_paths(cost: jnp.ndarray, num_rows: jnp.ndarray) -> jnp.ndarray:
    """Minimum-cost assignment of the first `num_rows` rows of `cost` (n, m), n <= m, each to its own
    column, by shortest augmenting paths with row and column potentials (the Hungarian method in its
    O(n^2 m) form): one Dijkstra-like search per row, so the work grows with the rows assigned, not n.
    Returns (m,) int32: the row given each column, -1 for none."""
    n, m = cost.shape
    # Index 0 is the search's virtual start (column 0, row 0); rows and columns count from 1.
    a = jnp.pad(cost, ((1, 0), (1, 0)))
    columns = jnp.arange(m + 1)

    def add_row(i, state):
        u, v, owner, way = state
        owner = owner.at[0].set(i)  # the new row starts the search at the virtual column 0

        def unreached(search):  # the last column reached is still owned by a row: keep going
            return search[2][search[-1]] != 0

        def step(search):
            u, v, owner, way, slack, used, j0 = search
            used = used.at[j0].set(True)
            row = owner[j0]
            reduced = a[row] - u[row] - v
            free = (~used) & (columns > 0)
            closer = free & (reduced < slack)
            slack = jnp.where(closer, reduced, slack)
            way = jnp.where(closer, j0, way)
            candidates = jnp.where(free, slack, jnp.inf)
            j1 = jnp.argmin(candidates)
            delta = candidates[j1]
            u = u.at[owner].add(jnp.where(used, delta, 0.0))  # the rows of the reached columns
            v = jnp.where(used, v - delta, v)
            slack = jnp.where(free, slack - delta, slack)
            return u, v, owner, way, slack, used, j1

        slack = jnp.full_like(cost, jnp.inf, shape=(m + 1,))
        used = jnp.zeros_like(cost, bool, shape=(m + 1,))
        start = jnp.zeros_like(cost, jnp.int32, shape=())
        u, v, owner, way, _, _, j0 = jax.lax.while_loop(unreached, step, (u, v, owner, way, slack, used, start))

        def back(walk):  # flip the path: every column on it passes to the row before it
            owner, j0 = walk
            j1 = way[j0]
            return owner.at[j0].set(owner[j1]), j1

        owner, _ = jax.lax.while_loop(lambda walk: walk[1] != 0, back, (owner, j0))
        return u, v, owner, way

    # zeros_like: under shard_map the loop's state varies over the mesh axes the costs vary over
    state = (
        jnp.zeros_like(cost, shape=(n + 1,)),
        jnp.zeros_like(cost, shape=(m + 1,)),
        jnp.zeros_like(cost, jnp.int32, shape=(m + 1,)),
        jnp.zeros_like(cost, jnp.int32, shape=(m + 1,)),
    )
    _, _, owner, _ = jax.lax.fori_loop(1, num_rows + 1, add_row, state)
    return owner[1:] - 1


def _hungarian_valid(cost: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
    """In-graph: (Q, M) costs -> (M,) query of each valid column (0 for the others). Only the valid
    columns are assigned (ordered first, as the rows of the search), so an image with a few targets in
    many slots costs a few searches instead of one per query or slot."""
    num_queries, num_slots = cost.shape
    order = jnp.argsort(~valid, stable=True)
    row_of_query = _augmenting_paths(cost.T[order], jnp.sum(valid).astype(jnp.int32))  # (Q,)
    # each assigned row (a valid slot, in `order`) gets its query; unassigned queries write nowhere
    target = jnp.where(row_of_query >= 0, row_of_query, num_slots)
    query_of_row = jnp.zeros(num_slots, jnp.int32).at[target].set(jnp.arange(num_queries, dtype=jnp.int32), mode="drop")
    return jnp.zeros(num_slots, jnp.int32).at[order].set(query_of_row)


def assign(cost: jnp.ndarray, valid: jnp.ndarray, solver: str = "hungarian") -> jnp.ndarray:
    """Minimum-cost assignment of every valid column of `cost` (B, Q, M) to its own query.

    Returns (B, M) int32: the query given to each valid slot, -1 for the slots with valid False.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    batch, num_queries, num_slots = cost.shape
    _check_slots(num_queries, num_slots)
    cost = jnp.nan_to_num(cost.astype(jnp.float32), nan=_COST_LIMIT, posinf=_COST_LIMIT, neginf=_COST_LIMIT)
    cost = jnp.where(valid[:, None, :], jnp.clip(cost, -_COST_LIMIT, _COST_LIMIT), 0.0)
    cost = jax.lax.stop_gradient(cost)
    if num_slots == 0:
        return jnp.zeros((batch, 0), jnp.int32)
    if solver == "scipy":
        shape = jax.ShapeDtypeStruct((batch, num_slots), jnp.int32)
        query = jax.pure_callback(_scipy_assign, shape, cost, valid, vmap_method="sequential")
    else:
        query = jax.vmap(_hungarian_valid)(cost, jnp.asarray(valid, bool))
    return jnp.where(valid, query, -1)


def match(
    class_logits: jnp.ndarray,
    mask_logits: jnp.ndarray,
    targets: PaddedTargets,
    coords: jnp.ndarray,
    *,
    class_weight: float,
    mask_weight: float,
    dice_weight: float,
    solver: str = "hungarian",
) -> jnp.ndarray:
    """The query matched to each target slot, (B, M) int32, -1 for padded slots.

    class_logits (B, Q, K+1), mask_logits (B, Q, h, w), targets: masks (B, M, H, W), labels (B, M),
    valid (B, M); coords (B, P, 2): each image's uniform points in [0, 1], (x, y).
    """
    _check_slots(class_logits.shape[1], targets.labels.shape[1])
    weights = dict(class_weight=class_weight, mask_weight=mask_weight, dice_weight=dice_weight)
    logits = jax.vmap(point_sample_shared)(jax.lax.stop_gradient(mask_logits), coords)  # (B, Q, P)
    cost = jax.vmap(lambda c, x, t, lab: cost_from_points(c, x, t, lab, **weights))(
        class_logits, logits, target_points(targets, coords), targets.labels
    )  # padded slots' columns (zero targets) are replaced in `assign`
    return assign(cost, targets.valid, solver)
