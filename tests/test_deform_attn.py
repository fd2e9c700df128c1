"""Deformable sampling: the flat single-gather version, the plain reference, and PyTorch's
grid_sample (through HF's own function) on the same values and locations, borders included."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2f_jax.modeling.deform_attn import deformable_sampling, deformable_sampling_reference

torch = pytest.importorskip("torch")
hf_mask2former = pytest.importorskip("transformers.models.mask2former.modeling_mask2former")

SHAPES = ((5, 7), (3, 4), (2, 2))


def random_inputs(seed, queries=23, heads=2, dim=4, points=3, low=-0.3, high=1.3):
    rng = np.random.RandomState(seed)
    total = sum(h * w for h, w in SHAPES)
    value = rng.randn(2, total, heads, dim).astype(np.float32)
    locations = rng.uniform(low, high, (2, queries, heads, len(SHAPES), points, 2)).astype(np.float32)
    weights = rng.rand(2, queries, heads, len(SHAPES), points).astype(np.float32)
    return value, locations, weights


def border_locations(heads=2, points=3):
    """Pixel centres, edges, the exact borders 0 and 1, and half a pixel to 2 pixels beyond them."""
    coords = []
    for _, w in SHAPES:
        for extra in (0.0, 0.5, 1.0, 2.0):
            for base in (0.0, 1.0):
                coords.append(base + (extra / w if base else -extra / w))
        coords += [0.5 / w, 1 - 0.5 / w, 1.0 / w]
    coords = np.array(coords, np.float32)
    xs, ys = np.meshgrid(coords, coords[::-1])
    grid = np.stack([xs.reshape(-1), ys.reshape(-1)], -1)  # (Q, 2)
    q = grid.shape[0]
    locations = np.broadcast_to(grid[None, :, None, None, None, :], (2, q, heads, len(SHAPES), points, 2))
    return np.ascontiguousarray(locations)


def torch_sampling(value, locations, weights):
    out = hf_mask2former.multi_scale_deformable_attention(
        torch.from_numpy(value), list(SHAPES), torch.from_numpy(locations), torch.from_numpy(weights)
    )
    return out.numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flat_reference_and_grid_sample_agree(seed):
    value, locations, weights = random_inputs(seed)
    flat = jax.jit(deformable_sampling, static_argnums=1)(value, SHAPES, locations, weights)
    reference = deformable_sampling_reference(value, SHAPES, locations, weights)
    expected = torch_sampling(value, locations, weights)
    np.testing.assert_allclose(flat, reference, atol=1e-5)
    np.testing.assert_allclose(flat, expected, atol=1e-5)


def test_at_and_beyond_borders():
    value, _, _ = random_inputs(3)
    locations = border_locations()
    weights = np.random.RandomState(4).rand(*locations.shape[:-1]).astype(np.float32)
    flat = deformable_sampling(value, SHAPES, locations, weights)
    reference = deformable_sampling_reference(value, SHAPES, locations, weights)
    expected = torch_sampling(value, locations, weights)
    np.testing.assert_allclose(flat, expected, atol=1e-5)
    np.testing.assert_allclose(reference, expected, atol=1e-5)


def test_far_outside_samples_zero():
    value, _, weights = random_inputs(5)
    locations = np.full((2, 23, 2, len(SHAPES), 3, 2), -5.0, np.float32)
    assert np.all(np.asarray(deformable_sampling(value, SHAPES, locations, weights)) == 0)


def test_gradients_agree():
    """Training differentiates through the sampling: both versions give the same gradients."""
    value, locations, weights = random_inputs(6, low=0.0, high=1.0)

    def loss(fn):
        return lambda v, loc, w: jnp.sum(jnp.sin(fn(v, SHAPES, loc, w)))

    flat = jax.grad(loss(deformable_sampling), argnums=(0, 1, 2))(value, locations, weights)
    reference = jax.grad(loss(deformable_sampling_reference), argnums=(0, 1, 2))(value, locations, weights)
    for a, b in zip(flat, reference, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_valid_shapes_sample_like_the_cropped_maps():
    """Padded maps + per-image valid shapes == sampling each image's cropped maps alone."""
    value, locations, weights = random_inputs(7)
    valid = np.array([[[5, 7], [3, 4], [2, 2]], [[3, 5], [2, 3], [1, 2]]], np.int32)  # (B, L, (h, w))
    flat = deformable_sampling(value, SHAPES, locations, weights, valid)
    reference = deformable_sampling_reference(value, SHAPES, locations, weights, valid)
    np.testing.assert_allclose(flat, reference, atol=1e-5)
    for b in range(2):
        crops, start = [], 0
        for (h, w), (vh, vw) in zip(SHAPES, valid[b], strict=True):
            level = value[b : b + 1, start : start + h * w].reshape(1, h, w, *value.shape[2:])
            crops.append(level[:, :vh, :vw].reshape(1, vh * vw, *value.shape[2:]))
            start += h * w
        cropped_shapes = [tuple(int(v) for v in s) for s in valid[b]]
        expected = hf_mask2former.multi_scale_deformable_attention(
            torch.from_numpy(np.concatenate(crops, axis=1)),
            cropped_shapes,
            torch.from_numpy(locations[b : b + 1]),
            torch.from_numpy(weights[b : b + 1]),
        ).numpy()
        np.testing.assert_allclose(flat[b : b + 1], expected, atol=1e-5)
