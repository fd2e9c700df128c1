"""From an experiment config (configs/*.py) to the objects a run needs: data, model config,
optimizer, the (sharded) initial state and the jitted step. train.py and eval.py share these."""

from __future__ import annotations

import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from m2f_jax.config import Mask2FormerConfig, SwinConfig, preset
from m2f_jax.data.pipeline import PipelineConfig, TrainBatches
from m2f_jax.data.sources import Source, id2label, open_source
from m2f_jax.data.transforms import AugmentConfig
from m2f_jax.inference import TTA_MAX_SIZE, TTA_SCALES
from m2f_jax.losses import LossConfig
from m2f_jax.modeling import Mask2FormerForUniversalSegmentation
from m2f_jax.modeling.layers import LayerExecution
from m2f_jax.processing.preprocess import ImageProcessor
from m2f_jax.training import backbone_init
from m2f_jax.training.mesh import batch_sharding, replicated, state_sharding
from m2f_jax.training.optimizer import OptimizerConfig, build_optimizer, learning_rate_schedule, parameter_groups
from m2f_jax.training.step import TrainState, init_state, make_train_step
from m2f_jax.training.validation import validate as validate  # the whole config, before any work

_MODEL_FIELDS = (
    "num_queries", "hidden_dim", "feature_size", "mask_feature_size", "encoder_feedforward_dim",
    "dim_feedforward", "encoder_layers", "decoder_layers",
)  # fmt: skip


def source_options(c: Any) -> dict[str, Any]:
    """The data source's keyword options (data.options), as a plain dict."""
    options = c.data.options
    return dict(options.to_dict() if hasattr(options, "to_dict") else options)


@functools.lru_cache(maxsize=8)
def _open_source(kind: str, split: str, options_json: str) -> Source:
    return open_source(kind, split, **json.loads(options_json))


def dataset(c: Any, split: str) -> Source:
    """The "train" or "val" split of the config's data source (opened once per process: reading a
    large annotation file is the slow part)."""
    return _open_source(c.data.source, split, json.dumps(source_options(c), sort_keys=True))


def pipeline_config(c: Any) -> PipelineConfig:
    a = c.data.augment
    augment = AugmentConfig(
        kind=a.kind, crop_size=tuple(a.crop_size), min_scale=a.min_scale, max_scale=a.max_scale,
        base_size=a.base_size, max_size=a.max_size, max_category_area=a.max_category_area,
        photometric=a.photometric, flip=a.flip,
    )  # fmt: skip
    return PipelineConfig(
        batch_size=c.batch_size, max_instances=c.data.max_instances, task=c.task, augment=augment, seed=c.seed,
        workers=c.data.workers,
    )  # fmt: skip


def train_batches(c: Any, process_index: int, process_count: int) -> TrainBatches:
    """This process's iterator of host batches (see m2f_jax.data.batch), with get_state/set_state."""
    return TrainBatches(dataset(c, "train"), pipeline_config(c), process_index, process_count)


# eval.* fields a config may leave out (shipped recipes set the test size of their data set).
EVAL_DEFAULTS = dict(
    shortest_edge=800, longest_edge=1333, batch_size=8, every=0, metric=None, tta=False,
    tta_scales=TTA_SCALES, tta_max_size=TTA_MAX_SIZE,
)  # fmt: skip
METRIC_OF_TASK = {"panoptic": "PQ", "instance": "AP", "semantic": "mIoU"}


def eval_settings(c: Any) -> dict[str, Any]:
    """eval.* with EVAL_DEFAULTS filled in; the metric defaults to the task's (PQ, AP or mIoU)."""
    given = c.eval.to_dict() if "eval" in c else {}
    settings = {**EVAL_DEFAULTS, **given}
    settings["metric"] = settings["metric"] or METRIC_OF_TASK[c.task]
    return settings


def processor(c: Any) -> ImageProcessor:
    """The image processor of the run's model: ImageNet mean and std (the step normalises with them on
    the device, as every Mask2Former checkpoint) and the test size (eval.shortest_edge/longest_edge);
    saved with the run, so that eval.py, predict.py and `segment()` see images as training meant."""
    e = eval_settings(c)
    return ImageProcessor(size={"shortest_edge": e["shortest_edge"], "longest_edge": e["longest_edge"]})


def model_config(c: Any, data: Source) -> Mask2FormerConfig:
    """The preset or the config's fields (init_from: that model's config), with the dataset's labels and
    the experiment's loss settings (which the model config carries, so config.json records them)."""
    loss = dict(
        id2label=id2label(data),
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

    abstract = nnx.eval_shape(build)
    graphdef = nnx.graphdef(abstract)
    tx = build_optimizer(opt_config, parameter_groups(abstract))
    return graphdef, lambda: init_state(build(), tx, c.seed + 2)[1]


def abstract_state(c: Any, config: Mask2FormerConfig, opt_config: OptimizerConfig, mesh) -> tuple[nnx.GraphDef, Any]:
    """(graphdef, the TrainState as ShapeDtypeStructs with their shardings): what a checkpoint
    restores into, without creating any weights."""
    graphdef, init = _state_builder(c, config, opt_config)
    shapes = jax.eval_shape(init)
    shardings = state_sharding(mesh, shapes)
    return graphdef, jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def initial_state(
    c: Any,
    config: Mask2FormerConfig,
    opt_config: OptimizerConfig,
    mesh,
    report: list[str] | None = None,
    load_weights: bool = True,
) -> tuple[nnx.GraphDef, TrainState]:
    """(graphdef, TrainState) placed on the mesh: random weights created directly in their
    shards, the backbone's then replaced by `model.backbone_init`'s, or the weights of
    `model.init_from` (onto the data's labels: see training.finetune). load_weights=False reads
    neither (a resumed run restores every weight from its checkpoint: the random state only gives the
    structure). `report`, when given, receives lines saying where the initial weights came from."""
    if c.model.init_from and load_weights:
        from m2f_jax.training.finetune import load_for_labels

        model, lines = load_for_labels(
            c.model.init_from, config, c.seed, keep_matching_labels=c.model.get("keep_matching_labels", True)
        )
        if report is not None:
            report.extend(lines)
        graphdef, state = init_state(model, build_optimizer(opt_config, parameter_groups(model)), c.seed)
        return graphdef, jax.device_put(state, state_sharding(mesh, state))
    source = c.model.get("backbone_init") if load_weights else None
    backbone = None
    if source:  # read and checked before the random state is built
        backbone, lines = backbone_init.load(source, config.backbone_config)
        if report is not None:
            report.extend(lines)
    graphdef, init = _state_builder(c, config, opt_config)
    shardings = state_sharding(mesh, jax.eval_shape(init))
    state = jax.jit(init, out_shardings=shardings)()
    return graphdef, state if backbone is None else backbone_init.replace_backbone(state, backbone)


def layer_execution(c: Any) -> LayerExecution:
    """The config's remat policy ("none" or a name in REMAT_POLICIES) and scan_layers switch."""
    return LayerExecution(remat=None if c.remat == "none" else c.remat, scan=c.scan_layers)


def jitted_train_step(
    c: Any,
    config: Mask2FormerConfig,
    graphdef: nnx.GraphDef,
    opt_config: OptimizerConfig,
    state: TrainState,
    mesh,
    compiler_options: dict[str, Any] | None = None,
):
    """The step under jax.jit: the state keeps its shardings and is donated; the batch is split
    over every device; the metrics come back replicated. compiler_options: XLA's, for this step only
    (the tests compile at {"xla_backend_optimization_level": 0}: the same values, compiled in half the
    time)."""
    tx = build_optimizer(opt_config, parameter_groups(nnx.merge(graphdef, state.params, state.rngs)))
    losses = loss_config(c, config)
    step = make_train_step(
        graphdef, tx, losses, processor(c).normalize, jnp.dtype(c.compute_dtype), layer_execution(c), mesh
    )
    shardings = jax.tree.map(lambda x: x.sharding, state)
    return jax.jit(
        step,
        in_shardings=(shardings, batch_sharding(mesh)),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=0,
        compiler_options=compiler_options,
    )
