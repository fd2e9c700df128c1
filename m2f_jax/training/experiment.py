"""From an experiment config (configs/*.py) to the objects a run needs: data, model config,
optimizer, the (sharded) initial state and the jitted step. train.py and eval.py share these."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from m2f_jax.config import Mask2FormerConfig, SwinConfig, preset
from m2f_jax.data import SyntheticDataset, TrainBatches
from m2f_jax.losses import LossConfig
from m2f_jax.modeling import Mask2FormerForUniversalSegmentation
from m2f_jax.training.mesh import batch_sharding, replicated, state_sharding
from m2f_jax.training.optimizer import OptimizerConfig, build_optimizer, learning_rate_schedule
from m2f_jax.training.step import TrainState, init_state, make_train_step
from m2f_jax.training.validation import validate as validate  # the whole config, before any work

_MODEL_FIELDS = (
    "num_queries", "hidden_dim", "feature_size", "mask_feature_size", "encoder_feedforward_dim",
    "dim_feedforward", "encoder_layers", "decoder_layers",
)  # fmt: skip


def dataset(c: Any, split: str) -> SyntheticDataset:
    if c.data.source != "synthetic":
        raise ValueError(f"data.source {c.data.source!r} is not available yet (only 'synthetic')")
    count = c.data.train_images if split == "train" else c.data.eval_images
    seed = c.seed if split == "train" else c.seed + 10_000  # held-out images never seen in training
    return SyntheticDataset(count, image_size=tuple(c.data.image_size), seed=seed)


def train_batches(c: Any, process_index: int, process_count: int) -> TrainBatches:
    return TrainBatches(
        dataset(c, "train"),
        batch_size=c.batch_size,
        seed=c.seed,
        max_instances=c.data.max_instances,
        task=c.task,
        flip=c.data.flip,
        process_index=process_index,
        process_count=process_count,
    )


def model_config(c: Any, data: SyntheticDataset) -> Mask2FormerConfig:
    """The preset or the config's fields (init_from: that model's config), with the dataset's labels and
    the experiment's loss settings (which the model config carries, so config.json records them)."""
    loss = dict(
        id2label=dict(data.id2label),
        class_weight=c.loss.class_weight,
        mask_weight=c.loss.mask_weight,
        dice_weight=c.loss.dice_weight,
        no_object_weight=c.loss.no_object_weight,
        train_num_points=c.loss.num_points,
        oversample_ratio=c.loss.oversample_ratio,
        importance_sample_ratio=c.loss.importance_sample_ratio,
        use_auxiliary_loss=c.loss.auxiliary,
    )
    if c.model.init_from:
        return Mask2FormerConfig.load(c.model.init_from).replace(**loss)
    if c.model.preset:
        return preset(c.model.preset).replace(**loss)
    m = c.model
    backbone = SwinConfig(
        embed_dim=m.embed_dim,
        depths=tuple(m.depths),
        num_heads=tuple(m.num_heads),
        window_size=m.window_size,
        drop_path_rate=m.drop_path_rate,
    )
    return Mask2FormerConfig(backbone_config=backbone, **loss, **{k: m[k] for k in _MODEL_FIELDS})


def check_experiment(c: Any, config: Mask2FormerConfig) -> None:
    """Settings that would only fail inside the compiled step, checked before any work."""
    if c.data.max_instances > config.num_queries:
        raise ValueError(
            f"data.max_instances={c.data.max_instances} target slots but model num_queries={config.num_queries}: "
            "every target needs its own query; lower max_instances or raise num_queries"
        )


def loss_config(c: Any, config: Mask2FormerConfig) -> LossConfig:
    """The loss settings the model config holds (see `model_config`), with the experiment's matcher."""
    return LossConfig.from_model_config(config, matcher=c.loss.matcher)


def optimizer_config(c: Any) -> tuple[OptimizerConfig, optax.Schedule]:
    """The optimizer settings and schedule (in optimizer steps: steps / accumulation_steps)."""
    o = c.optimizer.to_dict()
    config = OptimizerConfig(total_steps=max(1, c.steps // o.get("accumulation_steps", 1)), **o)
    return config, learning_rate_schedule(config)


def _state_builder(c: Any, config: Mask2FormerConfig, opt_config: OptimizerConfig):
    """(graphdef, a function creating the initial TrainState from random weights)."""

    def build():
        return Mask2FormerForUniversalSegmentation(config, rngs=nnx.Rngs(params=c.seed, dropout=c.seed + 1))

    graphdef, abstract_params, _ = nnx.split(nnx.eval_shape(build), nnx.Param, ...)
    tx = build_optimizer(opt_config, abstract_params)
    return graphdef, lambda: init_state(build(), tx, c.seed + 2)[1]


def abstract_state(c: Any, config: Mask2FormerConfig, opt_config: OptimizerConfig, mesh) -> tuple[nnx.GraphDef, Any]:
    """(graphdef, the TrainState as ShapeDtypeStructs with their shardings): what a checkpoint
    restores into, without creating any weights."""
    graphdef, init = _state_builder(c, config, opt_config)
    shapes = jax.eval_shape(init)
    shardings = state_sharding(mesh, shapes)
    return graphdef, jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def initial_state(
    c: Any, config: Mask2FormerConfig, opt_config: OptimizerConfig, mesh
) -> tuple[nnx.GraphDef, TrainState]:
    """(graphdef, TrainState) placed on the mesh: random weights created directly in their
    shards, or the weights of `model.init_from`."""
    if c.model.init_from:
        from m2f_jax.weights import from_pretrained

        model = from_pretrained(c.model.init_from, seed=c.seed)
        graphdef, state = init_state(model, build_optimizer(opt_config, nnx.state(model, nnx.Param)), c.seed)
        return graphdef, jax.device_put(state, state_sharding(mesh, state))
    graphdef, init = _state_builder(c, config, opt_config)
    shardings = state_sharding(mesh, jax.eval_shape(init))
    return graphdef, jax.jit(init, out_shardings=shardings)()


def jitted_train_step(
    c: Any, config: Mask2FormerConfig, graphdef: nnx.GraphDef, opt_config: OptimizerConfig, state: TrainState, mesh
):
    """The step under jax.jit: the state keeps its shardings and is donated; the batch is split
    over every device; the metrics come back replicated."""
    tx = build_optimizer(opt_config, state.params)
    losses = loss_config(c, config)
    step = make_train_step(graphdef, tx, losses, compute_dtype=jnp.dtype(c.compute_dtype), remat=c.remat)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    return jax.jit(
        step,
        in_shardings=(shardings, batch_sharding(mesh)),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=0,
    )
