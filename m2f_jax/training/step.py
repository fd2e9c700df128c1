"""The training state and the jitted training step.

The model is split into its structure (graphdef, static), its parameters and its other state
(the RNG streams of dropout and stochastic depth). The state that moves through the step, and
into checkpoints, is a `TrainState` of arrays only.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from m2f_jax.config import Mask2FormerConfig
from m2f_jax.losses import LossConfig, mask2former_loss
from m2f_jax.modeling import Mask2FormerForUniversalSegmentation
from m2f_jax.processing.targets import PaddedTargets

BATCH_KEYS = ("pixel_values", "pixel_mask", "mask_labels", "class_labels", "mask_valid")


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: training steps taken (micro-batches when accumulating)
    params: nnx.State
    opt_state: Any
    rngs: nnx.State  # the model's RNG streams (dropout, drop-path)
    loss_key: jax.Array  # typed PRNG key; the step folds in `step` for the loss's point sampling


def split_model(model: Mask2FormerForUniversalSegmentation) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(structure, parameters, everything else), the last being the RNG streams."""
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


def random_init(config: Mask2FormerConfig, optimizer: optax.GradientTransformation, seed: int):
    """A freshly initialised model's (graphdef, TrainState) (call under jax.jit with out_shardings
    to create a sharded state without ever holding it whole on one device)."""
    model = Mask2FormerForUniversalSegmentation(config, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    return init_state(model, optimizer, seed + 2)


def targets_of(batch: Mapping[str, jax.Array]) -> PaddedTargets:
    return PaddedTargets(masks=batch["mask_labels"], labels=batch["class_labels"], valid=batch["mask_valid"])


def make_train_step(
    graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, loss_config: LossConfig
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """The step: forward in training mode, the matched loss on every prediction, gradients, one
    optimizer update. A non-finite loss or gradient norm leaves the state untouched (and says so
    in metrics["finite"]), so the caller can stop with the last good state."""

    def loss_fn(params, rngs, batch, key):
        model = nnx.merge(graphdef, params, rngs, copy=True)  # fresh Variables at this trace level
        outputs = model(batch["pixel_values"], pixel_mask=batch["pixel_mask"], deterministic=False)
        loss, parts = mask2former_loss(outputs, targets_of(batch), key, loss_config)
        return loss, (parts, nnx.state(model, nnx.Not(nnx.Param)))

    def step(state: TrainState, batch: Mapping[str, jax.Array]):
        key = jax.random.fold_in(state.loss_key, state.step)
        (loss, (parts, rngs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state.rngs, batch, key)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
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
