"""The training state and the jitted training step.

The model is split into its structure (graphdef, static), its parameters and its other state
(the RNG streams of dropout and stochastic depth, and frozen weights such as ResNet's BatchNorm,
which the step carries unchanged: they get no gradient). The state that moves through the step, and
into checkpoints, is a `TrainState` of arrays only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from m2f_jax.data.batch import model_inputs
from m2f_jax.losses import LossConfig, mask2former_loss
from m2f_jax.modeling import Mask2FormerForUniversalSegmentation
from m2f_jax.modeling.layers import UNROLLED, LayerExecution
from m2f_jax.processing.targets import PaddedTargets
from m2f_jax.training.mesh import BATCH_AXES


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: training steps taken (micro-batches when accumulating)
    params: nnx.State
    opt_state: Any
    rngs: nnx.State  # the model's other state: RNG streams (dropout, drop-path) and frozen weights
    loss_key: jax.Array  # typed PRNG key; the step folds in `step` for the loss's point sampling


def split_model(model: Mask2FormerForUniversalSegmentation) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(structure, parameters, everything else), the last being the RNG streams and frozen weights."""
    return nnx.split(model, nnx.Param, ...)


def init_state(
    model: Mask2FormerForUniversalSegmentation, optimizer: optax.GradientTransformation, seed: int
) -> tuple[nnx.GraphDef, TrainState]:
    graphdef, params, rngs = split_model(model)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rngs=rngs,
        loss_key=jax.random.key(seed),
    )
    return graphdef, state


def check_batch(batch: Mapping[str, Any], num_labels: int, step: int) -> None:
    """Host-side check of a batch before it reaches the step (where a traced label cannot be
    checked and an out-of-range one would silently index the wrong class): names the batch, the
    image (row) and the label."""
    labels, valid = np.asarray(batch["class_labels"]), np.asarray(batch["mask_valid"])
    bad = valid & ((labels < 0) | (labels >= num_labels))
    if bad.any():
        row, slot = (int(i[0]) for i in np.nonzero(bad))
        raise ValueError(
            f"training batch {step}: image {row}: label {int(labels[row, slot])} is outside [0, {num_labels}) "
            f"(num_labels={num_labels})"
        )


def all_finite(loss: jax.Array, grad_norm: jax.Array, params: Any) -> jax.Array:
    """Whether the loss, the gradient norm and every updated parameter are finite: a huge learning
    rate can overflow the weights while the loss and gradient that led there were finite."""
    weights = [jnp.isfinite(x).all() for x in jax.tree.leaves(params)]
    return jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.all(jnp.stack(weights))


def non_finite_message(step: int, loss: float, grad_norm: float, last_checkpoint: int | None) -> str:
    """What train.py says when step `step` was not finite: only what is known about the last checkpoint."""
    head = (
        f"non-finite loss, gradient or weights at step {step} (loss {loss}, grad norm {grad_norm}): the step was "
        "not applied and training stopped without saving. "
    )
    if last_checkpoint is None:
        return head + "No checkpoint was saved yet. Lower optimizer.learning_rate or check the data, and start again."
    return head + (
        f"The last checkpoint, step {last_checkpoint}, was saved before the first non-finite step; its weights are "
        "finite but may already have diverged (a learning rate too high grows them without a non-finite loss). "
        f"Resuming repeats step {step} on the same batch with the same randomness: lower optimizer.learning_rate "
        "(it may change on resume) or check the data; if it fails again, start a new --workdir."
    )


def training_model(
    graphdef: nnx.GraphDef, params: nnx.State, rngs: nnx.State, compute_dtype: Any, execution: LayerExecution
) -> Mask2FormerForUniversalSegmentation:
    """The model of a training state inside the step: in training mode, computing in `compute_dtype`,
    its repeated layers run as `execution` says. copy=True: fresh Variables at this trace level, so
    dropout can advance the RNG counts."""
    model = nnx.merge(graphdef, params, rngs, copy=True)
    model.set_execution(execution)
    model.set_dtype(compute_dtype)
    model.train()
    return model


def make_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    loss_config: LossConfig,
    normalize: Callable[[jax.Array], jax.Array],
    compute_dtype: Any = jnp.float32,
    execution: LayerExecution = UNROLLED,
    mesh: Mesh | None = None,
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """The step on a host batch (m2f_jax.data.batch: uint8 images, target maps): images normalised by
    `normalize` (the image processor's) and binary target masks built here on the device; then the
    forward in training mode, the matched loss on every prediction, gradients, one
    optimizer update. A non-finite loss, gradient norm or updated parameter leaves the state
    untouched (and says so in metrics["finite"]), so no state with non-finite weights exists.

    compute_dtype: the model's compute dtype in the step (bfloat16 on accelerators; see
    `set_dtype`): the parameters, gradients and optimizer state stay float32, and softmax, norm
    statistics, sampling and the loss stay float32.
    execution: how the repeated layers run (rematerialisation policy, scan); the same values.
    mesh: the device mesh the batch is split over; the loss then runs per device (`sharded_loss`)."""
    if mesh is None:
        loss_of = functools.partial(mask2former_loss, config=loss_config)
    else:
        loss_of = sharded_loss(mesh, loss_config)

    def loss_fn(params, rngs, batch, key):
        model = training_model(graphdef, params, rngs, compute_dtype, execution)
        pixels, pixel_mask, masks = model_inputs(batch, normalize)
        outputs = model(pixels, pixel_mask=pixel_mask)
        targets = PaddedTargets(masks=masks, labels=batch["class_labels"], valid=batch["mask_valid"])
        loss, parts = loss_of(outputs, targets, key)
        return loss, (parts, nnx.state(model, nnx.Not(nnx.Param)))

    def step(state: TrainState, batch: Mapping[str, jax.Array]):
        key = jax.random.fold_in(state.loss_key, state.step)
        (loss, (parts, rngs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.rngs, batch, key)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = all_finite(loss, grad_norm, params)

        def keep(new, old):
            return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

        new_state = TrainState(
            step=state.step + finite.astype(jnp.int32),
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state),
            rngs=keep(rngs, state.rngs),
            loss_key=state.loss_key,
        )
        metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite, **parts}
        return new_state, metrics

    return step


def sharded_loss(mesh: Mesh, config: LossConfig) -> Callable:
    """`mask2former_loss(outputs, targets, key)` with each device computing its own images' matching and
    losses, and only the sums and counts added up over the batch axes: the loss's gathers and
    per-target loops index the batch, and under plain jit the partitioner would gather every
    device's mask logits and run them everywhere. The values are those of one device."""
    loss = functools.partial(mask2former_loss, config=config, axis_name=BATCH_AXES)
    return jax.shard_map(loss, mesh=mesh, in_specs=(P(BATCH_AXES), P(BATCH_AXES), P()), out_specs=P())
