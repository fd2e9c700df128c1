"""Point sampling against torch's grid_sample, and the matcher against scipy's linear_sum_assignment."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from m2f_jax.losses import assign, match, matching_cost, point_sample, point_sample_shared
from m2f_jax.processing.targets import PaddedTargets

SOLVERS = ("hungarian", "scipy")


def test_point_sample_matches_grid_sample():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 7, 9)).astype(np.float32)
    coords = rng.uniform(size=(3, 50, 2)).astype(np.float32)
    coords[:, :4] = [[0, 0], [1, 1], [0, 1], [1, 0]]  # the borders, where the zero padding counts
    grid = torch.from_numpy(coords)[:, :, None] * 2.0 - 1.0
    expected = torch.nn.functional.grid_sample(torch.from_numpy(maps)[:, None], grid, align_corners=False)[:, 0, :, 0]
    np.testing.assert_allclose(point_sample(maps, coords), expected.numpy(), atol=1e-6)
    shared = point_sample_shared(maps, coords[0])
    expected_shared = torch.nn.functional.grid_sample(
        torch.from_numpy(maps)[:, None], grid[:1].expand(3, -1, -1, -1), align_corners=False
    )[:, 0, :, 0]
    np.testing.assert_allclose(shared, expected_shared.numpy(), atol=1e-6)
    binary = maps > 0  # bool masks are read as 0/1
    np.testing.assert_allclose(point_sample(binary, coords), point_sample(binary.astype(np.float32), coords), atol=0)


def scipy_query(cost: np.ndarray) -> np.ndarray:
    rows, cols = linear_sum_assignment(cost)
    query = np.full(cost.shape[1], -1)
    query[cols] = rows
    return query


def total(cost: np.ndarray, query: np.ndarray) -> float:
    return float(sum(cost[q, j] for j, q in enumerate(query) if q >= 0))


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("shape", [(8, 4), (6, 6), (10, 1), (5, 3), (12, 11)])
def test_assign_equals_scipy(solver, shape):
    cost = np.random.default_rng(sum(shape)).normal(size=(3, *shape)).astype(np.float32)
    query = np.asarray(jax.jit(assign, static_argnums=2)(cost, np.ones((3, shape[1]), bool), solver))
    for b in range(3):
        np.testing.assert_array_equal(query[b], scipy_query(cost[b]))


def degenerate_costs() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    row = rng.normal(size=(1, 4))
    col = rng.normal(size=(7, 1))
    ints = rng.integers(0, 3, size=(7, 4))
    dup_rows = rng.normal(size=(7, 4))
    dup_rows[3:] = dup_rows[0]
    dup_cols = rng.normal(size=(7, 4))
    dup_cols[:, 1:] = dup_cols[:, :1]
    return [np.zeros((7, 4)), np.repeat(row, 7, 0), np.repeat(col, 4, 1), ints, dup_rows, dup_cols]


@pytest.mark.parametrize("solver", SOLVERS)
def test_assign_degenerate_costs_reach_the_optimum(solver):
    costs = np.stack(degenerate_costs()).astype(np.float32)
    query = np.asarray(assign(costs, np.ones(costs.shape[::2], bool), solver))
    for b, cost in enumerate(costs):
        assert len(set(query[b].tolist())) == cost.shape[1] and query[b].min() >= 0  # one query per target
        rows, cols = linear_sum_assignment(cost)
        assert total(cost, query[b]) == pytest.approx(float(cost[rows, cols].sum()), abs=1e-5)


@pytest.mark.parametrize("solver", SOLVERS)
def test_padded_slots_are_never_matched(solver):
    rng = np.random.default_rng(2)
    cost = rng.normal(size=(4, 9, 6)).astype(np.float32)
    valid = np.array([[1, 1, 1, 0, 0, 0], [1, 0, 1, 0, 1, 1], [0] * 6, [1] * 6], bool)
    query = np.asarray(assign(cost, valid, solver))
    assert np.all(query[~valid] == -1)
    for b in range(4):
        np.testing.assert_array_equal(query[b][valid[b]], scipy_query(cost[b][:, valid[b]]))


def test_non_finite_costs_do_not_hang():
    cost = np.random.default_rng(3).normal(size=(1, 5, 3)).astype(np.float32)
    cost[0, 0] = np.nan
    cost[0, 1, 0] = np.inf
    query = np.asarray(assign(cost, np.ones((1, 3), bool)))
    assert 0 not in query[0] and sorted(set(query[0])) == sorted(query[0])  # the NaN row is avoided


def test_more_slots_than_queries_raise():
    with pytest.raises(ValueError, match="5 target slots .* only 4 queries"):
        assign(np.zeros((1, 4, 5), np.float32), np.ones((1, 5), bool))


def random_inputs(seed, batch=2, queries=8, labels=5, slots=4, size=32):
    rng = np.random.default_rng(seed)
    class_logits = rng.normal(size=(batch, queries, labels + 1)).astype(np.float32)
    mask_logits = rng.normal(size=(batch, queries, size // 4, size // 4)).astype(np.float32)
    masks = rng.uniform(size=(batch, slots, size, size)) > 0.6
    valid = np.ones((batch, slots), bool)
    valid[0, -1] = False
    labels = np.where(valid, rng.integers(0, labels, (batch, slots)), -1)
    targets = PaddedTargets(masks & valid[..., None, None], labels, valid)
    coords = rng.uniform(size=(batch, 64, 2)).astype(np.float32)
    return class_logits, mask_logits, targets, coords


def test_solvers_agree_and_match_the_cost_optimum():
    class_logits, mask_logits, targets, coords = random_inputs(4)
    weights = dict(class_weight=2.0, mask_weight=5.0, dice_weight=5.0)
    queries = [np.asarray(match(class_logits, mask_logits, targets, coords, solver=s, **weights)) for s in SOLVERS]
    np.testing.assert_array_equal(queries[0], queries[1])
    for b in range(2):
        image = (class_logits[b], mask_logits[b], targets.masks[b], targets.labels[b], coords[b])
        cost = np.asarray(matching_cost(*image, **weights))
        np.testing.assert_array_equal(queries[0][b][targets.valid[b]], scipy_query(cost[:, targets.valid[b]]))


def test_matcher_uses_the_configured_class_weight():
    """Two queries whose masks fit targets 0 and 1 but whose classes fit them the other way round:
    a small class weight follows the masks, a large one the classes (HF once ignored it: #38559)."""
    size = 16
    targets = np.zeros((1, 2, size, size), bool)
    targets[0, 0, :, : size // 2] = True
    targets[0, 1, :, size // 2 :] = True
    left = np.where(np.arange(size // 4) < size // 8, 0.5, -0.5)[None, :].repeat(size // 4, 0)
    mask_logits = np.stack([left, -left])[None].astype(np.float32)
    class_logits = np.array([[[-9.0, 9.0, 0.0], [9.0, -9.0, 0.0]]], np.float32)  # query 0 says class 1
    padded = PaddedTargets(targets, np.array([[0, 1]], np.int32), np.ones((1, 2), bool))
    coords = jnp.asarray(np.random.default_rng(5).uniform(size=(1, 256, 2)), jnp.float32)
    inputs = (class_logits, mask_logits, padded, coords)
    run = jax.jit(lambda w: match(*inputs, class_weight=w, mask_weight=1.0, dice_weight=1.0))
    np.testing.assert_array_equal(run(0.5), [[0, 1]])
    np.testing.assert_array_equal(run(2.0), [[1, 0]])


def test_target_points_read_the_valid_slots_alone():
    """The matcher reads the valid target masks, chunk by chunk, as point_sample_shared does; the padded
    slots' rows are zeros (their cost columns are replaced in `assign`)."""
    from m2f_jax.losses.matcher import target_points

    _, _, targets, coords = random_inputs(6, slots=9)
    valid = targets.valid.copy()
    valid[1, ::2] = False
    targets = PaddedTargets(targets.masks, targets.labels, valid)
    ours = np.asarray(jax.jit(lambda t, c: target_points(t, c, chunk=4))(targets, coords))
    for b in range(2):
        expected = np.asarray(point_sample_shared(targets.masks[b], coords[b]))
        np.testing.assert_allclose(ours[b][valid[b]], expected[valid[b]], atol=1e-6)
        assert np.all(ours[b][~valid[b]] == 0)


@pytest.mark.parametrize("shape", [(9, 6), (12, 12), (100, 100)])
def test_valid_column_search_reaches_the_optimum(shape):
    """The in-graph solver assigns only the valid columns: the same total cost as optax's Hungarian
    algorithm on every column and as scipy on the valid ones, one query per valid column."""
    from m2f_jax.losses.matcher import _hungarian_assign

    rng = np.random.default_rng(sum(shape))
    cost = rng.normal(size=(3, *shape)).astype(np.float32)
    valid = rng.uniform(size=(3, shape[1])) < 0.4
    valid[0] = True
    valid[1, :] = False
    valid[1, -1] = True  # one target, in the last slot
    query = np.asarray(jax.jit(assign)(cost, valid))
    masked = np.where(valid[:, None, :], cost, 0.0)
    optax_query = np.asarray(jax.vmap(_hungarian_assign)(jnp.asarray(masked)))
    for b in range(3):
        ours = query[b][valid[b]]
        assert len(set(ours.tolist())) == len(ours) and ours.min(initial=0) >= 0
        best = total(cost[b][:, valid[b]], scipy_query(cost[b][:, valid[b]]))
        assert total(cost[b][:, valid[b]], ours) == pytest.approx(best, abs=1e-4)
        assert total(cost[b][:, valid[b]], optax_query[b][valid[b]]) == pytest.approx(best, abs=1e-4)


def test_point_sampling_equals_the_references():
    from m2f_jax.losses.points import point_sample_reference, point_sample_shared_reference

    rng = np.random.default_rng(12)
    maps = rng.normal(size=(5, 9, 7)).astype(np.float32)
    coords = rng.uniform(-0.1, 1.1, size=(5, 40, 2)).astype(np.float32)
    np.testing.assert_allclose(point_sample(maps, coords), point_sample_reference(maps, coords), atol=1e-6)
    np.testing.assert_allclose(
        point_sample_shared(maps, coords[0]), point_sample_shared_reference(maps, coords[0]), atol=1e-6
    )
    binary = maps > 0
    np.testing.assert_array_equal(point_sample(binary, coords), point_sample_reference(binary, coords))
    grad = jax.grad(lambda m: jnp.sum(jnp.sin(point_sample(m, coords))))(maps)
    expected = jax.grad(lambda m: jnp.sum(jnp.sin(point_sample_reference(m, coords))))(maps)
    np.testing.assert_allclose(grad, expected, atol=1e-6)
