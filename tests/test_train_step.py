"""The jitted training step on awkward batches: an image without any object, a non-finite state
(the state must not change), and labels outside the label set (a clear error before the step);
the remat and bfloat16 switches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from m2f_jax.data.batch import model_inputs
from m2f_jax.modeling import Mask2FormerForUniversalSegmentation
from m2f_jax.processing.preprocess import ImageProcessor
from m2f_jax.training import experiment
from m2f_jax.training.mesh import global_batch, make_mesh
from m2f_jax.training.step import check_batch

from helpers import FAST_COMPILE
from tiny_experiment import get_config


@pytest.fixture(scope="module")
def setup():
    c = get_config()
    c.optimizer.eps = 1e-2  # updates proportional to the gradient, for the remat comparison (see train_worker.py)
    c.model.encoder_layers = 2  # two identical units, so the remat step below scans them
    mesh = make_mesh(1, devices=jax.devices()[:1])
    batches = experiment.train_batches(c, 0, 1)
    batches = [next(batches) for _ in range(2)]  # host batches 0 and 1
    for batch in batches:
        batch.pop("skipped")
    config = experiment.model_config(c, experiment.dataset(c, "train"))
    opt_config, _ = experiment.optimizer_config(c)
    graphdef, state = experiment.initial_state(c, config, opt_config, mesh)
    remat = c.copy_and_resolve_references()
    remat.remat = "full"  # the awkward batches go through the rematerialised, scanned step
    remat.scan_layers = True
    step = experiment.jitted_train_step(remat, config, graphdef, opt_config, state, mesh, FAST_COMPILE)
    return c, mesh, batches, config, state, step


def host_params(state):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]


def test_image_without_objects_and_non_finite_weights(setup):
    _, mesh, batches, config, state, step = setup
    batch = {k: v.copy() for k, v in batches[0].items()}
    batch["mask_valid"][0], batch["class_labels"][0], batch["target_map"][0] = False, -1, 0
    check_batch(batch, config.num_labels, 0)
    before = host_params(state)
    state, metrics = step(state, global_batch(batch, mesh))
    assert bool(metrics["finite"]) and np.isfinite(float(metrics["loss"])) and int(state.step) == 1
    after = host_params(state)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))

    # The images are uint8 (never NaN): a non-finite loss comes from the weights, e.g. after a diverged
    # update that a run resumed from; the step must leave such a state as it is.
    leaves, treedef = jax.tree.flatten(state.params)
    leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(jnp.nan)
    poisoned = state.replace(params=jax.tree.unflatten(treedef, leaves))
    before = host_params(poisoned)
    state, metrics = step(poisoned, global_batch(batches[1], mesh))
    assert not bool(metrics["finite"]) and int(state.step) == 1
    for a, b in zip(before, host_params(state), strict=True):
        np.testing.assert_array_equal(a, b)  # untouched (NaN where it was)


@pytest.mark.parametrize("label", [7, -2])
def test_labels_outside_the_label_set(setup, label):
    _, _, batches, config, _, _ = setup
    batch = {k: v.copy() for k, v in batches[0].items()}
    batch["class_labels"][1, 0] = label
    with pytest.raises(ValueError, match=rf"training batch 3: image 1: label {label} is outside \[0, 7\)"):
        check_batch(batch, config.num_labels, 3)


def test_loss_settings_travel_in_the_model_config(setup):
    """The experiment's loss settings are written into the model config (so config.json records them)
    and the step's loss reads them from there."""
    c, _, batches, _, _, _ = setup
    c = c.copy_and_resolve_references()
    c.loss.update(dice_weight=4.0, num_points=32, auxiliary=False)
    config = experiment.model_config(c, experiment.dataset(c, "train"))
    assert (config.dice_weight, config.train_num_points, config.use_auxiliary_loss) == (4.0, 32, False)
    loss = experiment.loss_config(c, config)
    assert (loss.dice_weight, loss.num_points, loss.auxiliary, loss.matcher) == (4.0, 32, False, c.loss.matcher)


def test_more_target_slots_than_queries(setup):
    c, _, _, config, *_ = setup
    c = c.copy_and_resolve_references()
    c.data.max_instances = config.num_queries + 1
    with pytest.raises(ValueError, match="every target needs its own query"):
        experiment.check_experiment(c, config)


@pytest.fixture(scope="module")
def fp32_step(setup):
    """Loss and parameters after one float32 step from a fresh initial state, on batch 0."""
    c, mesh, batches, config, _, _ = setup
    return one_step(c, mesh, batches, config)


def one_step(c, mesh, batches, config, **changes):
    c = c.copy_and_resolve_references()
    c.update(changes)
    opt_config, _ = experiment.optimizer_config(c)
    graphdef, state = experiment.initial_state(c, config, opt_config, mesh)
    step = experiment.jitted_train_step(c, config, graphdef, opt_config, state, mesh, FAST_COMPILE)
    state, metrics = step(state, global_batch(batches[0], mesh))
    return float(metrics["loss"]), host_params(state)


def test_remat_changes_nothing(setup, fp32_step):
    """The setup's step is rematerialised; one step of it from a fresh state equals the plain step."""
    c, mesh, batches, config, _, _ = setup
    opt_config, _ = experiment.optimizer_config(c)
    _, state = experiment.initial_state(c, config, opt_config, mesh)
    state, metrics = setup[5](state, global_batch(batches[0], mesh))
    assert float(metrics["loss"]) == pytest.approx(fp32_step[0], rel=1e-6)
    for a, b in zip(fp32_step[1], host_params(state), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_bfloat16_forward_follows_float32(setup):
    """compute_dtype=bfloat16 as the step applies it (the model's set_dtype): the layers compute in
    bf16, the outputs come back in float32 within a few percent of float32's on the same weights."""
    _, _, batches, config, _, _ = setup
    model = Mask2FormerForUniversalSegmentation(config, rngs=nnx.Rngs(0))
    pixels, _, _ = model_inputs(batches[0], ImageProcessor().normalize)

    def forward(model):
        graphdef, state = nnx.split(model)  # the dtype is part of the graph definition
        run = jax.jit(
            lambda s: nnx.merge(graphdef, s)(pixels, output_hidden_states=True), compiler_options=FAST_COMPILE
        )
        return run(state)

    full = forward(model)
    model.set_dtype(jnp.bfloat16)
    half = forward(model)
    assert all(h.dtype == jnp.bfloat16 for h in half.encoder_hidden_states + (half.mask_features,))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    for name in ("class_queries_logits", "masks_queries_logits"):
        a, b = np.asarray(getattr(full, name)), getattr(half, name)
        assert b.dtype == jnp.float32, name
        b = np.asarray(b)
        assert np.abs(a - b).max() > 0, name  # computed in bf16 indeed
        assert np.abs(a - b).mean() < 0.1 * np.abs(a).mean(), name
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99, name
