"""The model's own behaviour: eager vs jit, dropout switches, bad input, any input size."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from m2f_jax import Mask2FormerForUniversalSegmentation
from m2f_jax.modeling.layers import LayerExecution

from helpers import FAST_COMPILE, max_diff, tiny_config


@pytest.fixture(scope="module")
def model():
    return Mask2FormerForUniversalSegmentation(tiny_config(), rngs=nnx.Rngs(0))


def test_eager_equals_jit(converted):
    """Eager and jitted calls agree. The model and shapes are those of the notebook-cell test in
    test_bad_inputs.py, so that the eager call's op-by-op compilations are shared within a session."""
    import m2f_jax

    model = m2f_jax.from_pretrained(converted)
    pixels = jnp.asarray(np.random.RandomState(0).randn(1, 64, 96, 3), jnp.float32)
    mask = jnp.ones((1, 64, 96), bool)
    eager = model(pixels, pixel_mask=mask)
    jitted = jax.jit(lambda m, x, pm: m(x, pixel_mask=pm))(model, pixels, mask)
    assert max_diff(eager.class_queries_logits, jitted.class_queries_logits) < 1e-4
    assert max_diff(eager.masks_queries_logits, jitted.masks_queries_logits) < 1e-4
    assert len(eager.auxiliary_logits) == tiny_config().decoder_layers - 1
    assert eager.encoder_hidden_states is None


@pytest.mark.parametrize("size", [(33, 33), (17, 121), (128, 8), (5, 3)])
def test_any_input_size(model, size):
    out = jax.jit(lambda m, x: m(x))(model, jnp.zeros((1, *size, 3)))
    assert out.masks_queries_logits.shape == (1, 12, -(-size[0] // 4), -(-size[1] // 4))
    assert np.isfinite(np.asarray(out.masks_queries_logits)).all()


def test_dropout_and_drop_path_only_in_training_mode():
    config = tiny_config(dropout=0.1)
    config = config.replace(backbone_config=dataclasses.replace(config.backbone_config, drop_path_rate=0.5))
    model = Mask2FormerForUniversalSegmentation(config, rngs=nnx.Rngs(params=0, dropout=1))
    pixels = jnp.asarray(np.random.RandomState(1).randn(2, 32, 32, 3), jnp.float32)
    forward = nnx.jit(lambda m, x: m(x))  # nnx.jit carries the RNG state out
    a, b = forward(model, pixels), forward(model, pixels)  # a new model is in evaluation mode
    assert max_diff(a.class_queries_logits, b.class_queries_logits) == 0
    model.train()
    c = forward(model, pixels)
    d = forward(model, pixels)
    assert max_diff(a.class_queries_logits, c.class_queries_logits) > 1e-3
    assert max_diff(c.class_queries_logits, d.class_queries_logits) > 1e-3  # the RNG stream advances
    model.eval()
    e = forward(model, pixels)
    assert max_diff(a.class_queries_logits, e.class_queries_logits) == 0


def test_drop_path_drops_whole_samples():
    from m2f_jax.modeling.swin import SwinBlock
    from m2f_jax.modeling.valid_region import FeatureMap

    config = tiny_config().backbone_config
    block = SwinBlock(config, 32, 1, shift=0, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.RandomState(2).randn(16, 8, 8, 32), jnp.float32)
    tokens = FeatureMap(x, jnp.full((16, 2), 8))
    kept = block(tokens, 0.5).values
    block.train()
    y = block(tokens, 0.5).values
    # A dropped sample passes through unchanged (both residual branches dropped).
    unchanged = [bool(jnp.allclose(y[i], x[i])) for i in range(16)]
    assert 0 < sum(unchanged) < 16
    assert not bool(jnp.allclose(kept, x))


@pytest.mark.parametrize(
    "pixels, message",
    [
        (np.zeros((1, 3, 32, 32), np.float32), "NHWC"),
        (np.zeros((32, 32, 3), np.float32), "NHWC"),
        (np.zeros((1, 0, 32, 3), np.float32), "empty"),
        (np.zeros((1, 32, 32, 3), np.uint8), "floating point"),
    ],
)
def test_bad_input_is_refused_before_work(model, pixels, message):
    with pytest.raises(ValueError, match=message):
        model(jnp.asarray(pixels))


def test_scan_and_remat_change_nothing():
    """Scanned units (Swin block pairs, encoder layers, decoder rounds) under a remat policy give the
    unrolled model's outputs in training mode: the same dropout and drop-path masks. (Gradients
    through the scanned, rematerialised layers: tests/test_train_step.py::test_remat_changes_nothing.)"""
    config = tiny_config(dropout=0.1, decoder_layers=7, encoder_layers=3)
    backbone = dataclasses.replace(config.backbone_config, depths=(2, 4, 2, 2), drop_path_rate=0.5)
    config = config.replace(backbone_config=backbone)
    pixels = jnp.asarray(np.random.RandomState(3).randn(2, 40, 48, 3), jnp.float32)
    pixel_mask = np.ones((2, 40, 48), bool)
    pixel_mask[1, 30:], pixel_mask[1, :, 20:] = False, False

    def run(execution):
        model = Mask2FormerForUniversalSegmentation(config, rngs=nnx.Rngs(params=0, dropout=1), execution=execution)
        model.train()
        graphdef, state = nnx.split(model)
        forward = jax.jit(
            lambda s: nnx.merge(graphdef, s, copy=True)(pixels, pixel_mask=jnp.asarray(pixel_mask)),
            compiler_options=FAST_COMPILE,
        )
        return forward(state)

    out = run(LayerExecution())
    scanned = run(LayerExecution(remat="full", scan=True))
    for name in ("class_queries_logits", "masks_queries_logits"):
        np.testing.assert_allclose(scanned[name], out[name], atol=1e-4, rtol=1e-4)
    for a, b in zip(out.auxiliary_logits, scanned.auxiliary_logits, strict=True):
        np.testing.assert_allclose(b["masks_queries_logits"], a["masks_queries_logits"], atol=1e-4, rtol=1e-4)
