"""Checks a whole experiment config (configs/*.py) before any work starts, and reports every
problem at once by its dotted name, e.g. "optimizer.accumulation_steps must be >= 1, got 0".

Each field has a check; fields the schema does not know (a typo in a config file) and missing
fields are problems too. Settings that span fields (steps and accumulation, target slots and
queries, the model config itself) are checked once every field is well-formed.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

from m2f_jax.config import ResNetConfig, SwinConfig
from m2f_jax.data.sources import SOURCES
from m2f_jax.data.transforms import KINDS
from m2f_jax.modeling.layers import REMAT_POLICIES

# A check returns None when the value is fine, else what was expected ("must be ...").
Check = Callable[[Any], "str | None"]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def integer(low: int) -> Check:
    def check(v):
        if not _is_int(v):
            return f"must be an integer >= {low}, got {v!r}"
        return None if v >= low else f"must be >= {low}, got {v}"

    return check


def number(low: float = -math.inf, high: float = math.inf, low_open: bool = False, high_open: bool = False) -> Check:
    """A finite int or float in the interval (open or closed at each end)."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    interval = f"in {left}{low}, {high}{right}" if high < math.inf else f"{'>' if low_open else '>='} {low}"

    def check(v):
        if not _is_number(v) or not math.isfinite(v):
            return f"must be a number {interval}, got {v!r}"
        inside = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
        return None if inside else f"must be {interval}, got {v}"

    return check


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"must be True or False, got {v!r}"


def choice(*options: Any) -> Check:
    def check(v):
        return None if v in options and isinstance(v, str) else f"must be one of {list(options)}, got {v!r}"

    return check


def integers(length: int, low: int) -> Check:
    def check(v):
        if not isinstance(v, tuple | list) or len(v) != length or not all(_is_int(x) and x >= low for x in v):
            return f"must be {length} integers >= {low}, e.g. {tuple([max(low, 1) * 2] * length)}, got {v!r}"
        return None

    return check


def fractions(v: Any) -> str | None:
    ok = isinstance(v, tuple | list) and all(_is_number(x) and 0 < x < 1 for x in v)
    return None if ok else f"must be fractions of the run in (0, 1), e.g. (0.889, 0.963), got {v!r}"


def optional(check: Check) -> Check:
    return lambda v: None if v is None else check(v)


def folder_or_empty(v: Any) -> str | None:
    if not isinstance(v, str):
        return f"must be a folder path or '', got {v!r}"
    if v and not os.path.isfile(os.path.join(v, "config.json")):
        return f"must be a folder with config.json (a converted or HF model), got {v!r}"
    return None


def checkpoint_or_empty(v: Any) -> str | None:
    """A local file or folder, or a hub id (only its form is checked here: nothing is downloaded)."""
    from m2f_jax.conversion.imagenet import local_or_hub

    if not isinstance(v, str):
        return f"must be a checkpoint file, folder or hub id, or '', got {v!r}"
    if v:
        try:
            local_or_hub(v)
        except FileNotFoundError as error:
            return (
                f"must be an existing checkpoint file or folder, or a hub id ({error}; "
                "a resumed run does not read it: '' is allowed then)"
            )
    return None


def _preset(v: Any) -> str | None:
    from m2f_jax.config import preset_names

    names = preset_names()
    if v == "" or v in names:
        return None
    close = difflib.get_close_matches(str(v), names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"must be '' or a name from m2f_jax.preset_names(){hint}, got {v!r}"


POSITIVE = integer(1)

# Every field an experiment config has, with its check. data.options holds the data source's own
# keyword options (its folder, annotation file, ...): the source checks them when it is opened.
FIELDS: dict[str, Check] = {
    "seed": integer(0),
    "task": choice("panoptic", "instance", "semantic"),
    "data.source": choice(*SOURCES),
    "data.max_instances": POSITIVE,
    "data.eval_images": integer(0),  # 0: the whole validation split
    "data.workers": integer(0),
    "data.max_skipped": integer(0),
    "data.augment.kind": choice(*KINDS),
    "data.augment.crop_size": integers(2, low=1),
    "data.augment.min_scale": number(0, low_open=True),
    "data.augment.max_scale": number(0, low_open=True),
    "data.augment.base_size": POSITIVE,
    "data.augment.max_size": POSITIVE,
    "data.augment.max_category_area": number(0, 1, low_open=True),
    "data.augment.photometric": boolean,
    "data.augment.flip": boolean,
    "model.preset": _preset,
    "model.init_from": folder_or_empty,
    "model.backbone_init": checkpoint_or_empty,  # ImageNet weights for a new run's backbone (conversion.imagenet)
    "model.num_queries": POSITIVE,
    "model.hidden_dim": POSITIVE,
    "model.feature_size": POSITIVE,
    "model.mask_feature_size": POSITIVE,
    "model.encoder_feedforward_dim": POSITIVE,
    "model.dim_feedforward": POSITIVE,
    "model.encoder_layers": POSITIVE,
    "model.decoder_layers": POSITIVE,
    "loss.class_weight": number(0),
    "loss.mask_weight": number(0),
    "loss.dice_weight": number(0),
    "loss.no_object_weight": number(0),
    "loss.num_points": POSITIVE,
    "loss.oversample_ratio": number(1),
    "loss.importance_sample_ratio": number(0, 1),
    "loss.matcher": choice("hungarian", "scipy"),
    "loss.auxiliary": boolean,
    "optimizer.learning_rate": number(0, low_open=True),
    "optimizer.weight_decay": number(0),
    "optimizer.backbone_multiplier": number(0),
    "optimizer.clip_norm": optional(number(0)),  # 0 or None: no clipping
    "optimizer.schedule": choice("poly", "multistep", "constant"),
    "optimizer.warmup_steps": integer(0),
    "optimizer.warmup_factor": number(0, 1),
    "optimizer.accumulation_steps": POSITIVE,
    "steps": POSITIVE,
    "batch_size": POSITIVE,
    "fsdp": POSITIVE,
    "remat": choice("none", *REMAT_POLICIES),  # rematerialisation policy of the repeated layers
    "scan_layers": boolean,  # one lax.scan over identical layers: compile time independent of depth
    "compute_dtype": choice("float32", "bfloat16"),
    "log_every": POSITIVE,
    "checkpoint_every": POSITIVE,
    "keep_checkpoints": POSITIVE,  # 0 would let orbax delete every checkpoint, the resumed one too
}

# The backbone's fields of model.*, by the type of backbone: a ResNet preset's config has the ResNet ones,
# any other config the Swin ones (without a preset, model.* builds a Swin: a ResNet needs a preset).
BACKBONE_FIELDS: dict[type, dict[str, Check]] = {
    SwinConfig: {
        "model.embed_dim": POSITIVE,
        "model.depths": integers(4, low=1),  # Mask2Former reads all four stages
        "model.num_heads": integers(4, low=1),
        "model.window_size": POSITIVE,
        "model.drop_path_rate": number(0, 1, high_open=True),
    },
    ResNetConfig: {
        "model.embedding_size": POSITIVE,
        "model.hidden_sizes": integers(4, low=1),
        "model.depths": integers(4, low=1),
    },
}

# Fields a config may leave out (m2f_jax.training.optimizer.OptimizerConfig's defaults apply).
OPTIONAL_FIELDS: dict[str, Check] = {
    "model.keep_matching_labels": boolean,  # init_from onto other labels: keep the outputs of shared names
    "optimizer.b1": number(0, 1, high_open=True),
    "optimizer.b2": number(0, 1, high_open=True),
    "optimizer.eps": number(0, low_open=True),
    "optimizer.poly_power": number(0, low_open=True),
    "optimizer.milestones": fractions,
    "optimizer.gamma": number(0, low_open=True),
    # Evaluation (eval.py, and during training): m2f_jax.training.experiment.EVAL_DEFAULTS where absent.
    "eval.shortest_edge": POSITIVE,  # the test size: images resized as the processor's size says
    "eval.longest_edge": POSITIVE,
    "eval.batch_size": POSITIVE,
    "eval.every": integer(0),  # steps between evaluations during training; 0: none
    "eval.metric": optional(
        choice("PQ", "mIoU", "AP")
    ),  # the best model (WORKDIR/best) is kept by it; None: the task's
    "eval.tta": boolean,  # semantic test-time augmentation: multi-scale + flip
    "eval.tta_scales": lambda v: (
        None
        if isinstance(v, tuple | list) and v and all(_is_int(x) and x >= 1 for x in v)
        else f"must be shortest edges (integers >= 1), e.g. (256, 384, 512), got {v!r}"
    ),
    "eval.tta_max_size": POSITIVE,
}


def as_dict(c: Any) -> dict[str, Any]:
    """A plain nested dict of a ConfigDict (references resolved), FrozenConfigDict or dict."""
    if hasattr(c, "copy_and_resolve_references"):
        c = c.copy_and_resolve_references()
    if hasattr(c, "as_configdict"):
        c = c.as_configdict()
    if hasattr(c, "to_dict"):
        c = c.to_dict()
    return {k: as_dict(v) if isinstance(v, Mapping) or hasattr(v, "to_dict") else v for k, v in dict(c).items()}


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optimizer.learning_rate": 1e-3, ...}: the leaves of a nested dict by dotted name."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def problems(c: Any, model: bool = True) -> list[str]:
    """Every problem of the experiment config `c`, as sentences naming the field; [] if none.
    model=False: the model comes from elsewhere (eval.py reads the run's config.json), so model.*
    and the model config they make are not checked."""
    tree = as_dict(c)
    options = tree.get("data", {}).get("options") if isinstance(tree.get("data"), Mapping) else None
    flat = {k: v for k, v in flatten(tree).items() if not k.startswith("data.options.")}
    kind = _backbone_type(flat.get("model.preset"))
    required = {**FIELDS, **BACKBONE_FIELDS[kind]}
    known = {k: v for k, v in {**required, **OPTIONAL_FIELDS}.items() if model or not k.startswith("model.")}
    if not model:
        flat = {k: v for k, v in flat.items() if not k.startswith("model.")}
    found = []
    if not isinstance(options, Mapping):
        found.append(f"data.options must be a dict of the data source's options (may be empty), got {options!r}")
    for name in sorted(set(flat) - set(known) - {"data.options"}):
        other = next((t for t, fields in BACKBONE_FIELDS.items() if name in fields), None)
        if other is not None:
            found.append(_other_backbone_field(name, other, kind, flat.get("model.preset")))
            continue
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        found.append(f"{name} is not a known field{hint}; the fields are listed in docs/training.md")
    for name, check in known.items():
        if name not in flat:
            if name in required:
                # A group written as a leaf shows up here too (e.g. data = 3).
                found.append(f"{name} is missing")
            continue
        message = check(flat[name])
        if message:
            found.append(f"{name} {message}")
    if found:
        return found
    # Every field is well-formed: settings that span several fields.
    if flat["data.augment.min_scale"] > flat["data.augment.max_scale"]:
        found.append(
            f"data.augment.min_scale={flat['data.augment.min_scale']} must be <= max_scale="
            f"{flat['data.augment.max_scale']}"
        )
    accumulate = flat["optimizer.accumulation_steps"]
    if flat["steps"] % accumulate:
        found.append(
            f"steps must be a multiple of optimizer.accumulation_steps={accumulate} (each optimizer update "
            f"takes {accumulate} steps), got {flat['steps']}"
        )
    if model and flat["model.init_from"] and flat["model.backbone_init"]:
        found.append(
            "model.backbone_init and model.init_from are both set: init_from's model brings its own backbone "
            "weights; set one of them (the recipes set backbone_init: --config.model.backbone_init= clears it)"
        )
    if model and not (flat["model.preset"] or flat["model.init_from"]):  # else the model fields are not used
        for i, heads in enumerate(flat["model.num_heads"]):
            width = flat["model.embed_dim"] * 2**i
            if width % heads:
                found.append(f"model.num_heads[{i}]={heads} must divide stage {i + 1}'s width {width}")
    if not found:
        found.extend(_data_problems(c, training=model))  # model=False: eval.py, which reads the val split
    if model and not found:
        found.extend(_model_problems(c))
    return found


def _backbone_type(preset_name: Any) -> type:
    """The backbone config type of model.preset's model; SwinConfig without one (model.* builds a Swin)."""
    from m2f_jax.config import preset

    return type(preset(preset_name).backbone_config) if preset_name and _preset(preset_name) is None else SwinConfig


def _other_backbone_field(name: str, other: type, kind: type, preset_name: Any) -> str:
    """Why a field of another backbone type than the config's is refused."""
    other_name, kind_name = other.__name__.removesuffix("Config"), kind.__name__.removesuffix("Config")
    if preset_name:
        return (
            f"{name} is a {other_name} backbone field, but model.preset {preset_name!r} has a {kind_name} "
            f"backbone, whose fields are {', '.join(BACKBONE_FIELDS[kind])}"
        )
    return (
        f"{name} is a {other_name} backbone field: without model.preset the model.* fields build a Swin; a "
        "ResNet model needs a ResNet preset (e.g. 'resnet-50-coco-panoptic', m2f_jax.preset_names())"
    )


def _data_problems(c: Any, training: bool = True) -> list[str]:
    """What the data source says of data.options (a missing folder or annotation file, a bad option),
    and whether it can train the task: found by opening its train split (no image is read); for
    evaluation (training=False), its val split."""
    from m2f_jax.data.sources import tasks_of
    from m2f_jax.training import experiment

    try:
        source = experiment.dataset(c, "train" if training else "val")
    except (OSError, ValueError, TypeError) as error:
        return [f"data.options ({c.data.source!r} source): {error}"]
    if training and c.task not in tasks_of(source):
        return [
            f"task {c.task!r} cannot be trained from data source {c.data.source!r}: it has {list(tasks_of(source))}"
        ]
    return []


def _model_problems(c: Any) -> list[str]:
    """What the model config built from `c` refuses (widths, label counts), and target slots
    against queries: checked without building the model."""
    from m2f_jax.training import experiment

    try:
        config = experiment.model_config(c, experiment.dataset(c, "train"))  # opened by _data_problems
        experiment.check_experiment(c, config)
    except (ValueError, KeyError) as error:
        source = "model.init_from's config" if c.model.init_from else "the model config"
        return [f"{source}: {error}"]
    return []


def validate(c: Any, model: bool = True) -> None:
    """Raises ValueError listing every problem of the experiment config `c` (see `problems`)."""
    found = problems(c, model)
    if found:
        raise ValueError(f"the experiment config has {len(found)} problem(s):\n  " + "\n  ".join(found))
