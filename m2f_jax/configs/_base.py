"""Pieces shared by the shipped configs (not a config itself: names starting with _ are not listed)."""

from __future__ import annotations

from typing import Any

import ml_collections


def augment(kind: str, crop_size: tuple[int, int], **overrides: Any) -> ml_collections.ConfigDict:
    """data.augment: every field of m2f_jax.data.transforms.AugmentConfig, the original's defaults
    unless overridden (kind "lsj": COCO; "semantic": ADE20K, Cityscapes; "flip": data at model size)."""
    fields = dict(
        kind=kind, crop_size=tuple(crop_size), min_scale=0.1, max_scale=2.0, base_size=512, max_size=2048,
        max_category_area=1.0, photometric=kind == "semantic", flip=True,
    )  # fmt: skip
    if kind == "semantic":
        fields.update(min_scale=0.5, max_scale=2.0)
    unknown = set(overrides) - set(fields)
    if unknown:
        raise ValueError(f"unknown augment fields {sorted(unknown)}; the fields are {sorted(fields)}")
    return ml_collections.ConfigDict({**fields, **overrides})


def data(
    source: str,
    options: dict[str, Any],
    max_instances: int,
    augmentation: ml_collections.ConfigDict,
    eval_images: int = 0,
    workers: int = 4,
    max_skipped: int = 100,
) -> ml_collections.ConfigDict:
    """The data section: a source from m2f_jax.data.sources.SOURCES with its options (data.options.*,
    e.g. root), target slots per image, augmentation, evaluation images (0: the whole val split),
    grain worker processes per host, and how many unreadable samples a run skips before it stops."""
    c = ml_collections.ConfigDict()
    c.source = source
    c.options = ml_collections.ConfigDict(options)
    c.max_instances = max_instances
    c.eval_images = eval_images
    c.workers = workers
    c.max_skipped = max_skipped
    c.augment = augmentation
    return c


def evaluation(shortest_edge: int, longest_edge: int, *, every: int = 5000, batch_size: int = 8,
               tta_scales: tuple[int, ...] | None = None, tta_max_size: int | None = None,
               ) -> ml_collections.ConfigDict:  # fmt: skip
    """eval.*: the test size (images resized to `shortest_edge`, longest side at most `longest_edge`),
    images per forward, steps between evaluations while training (0: none), and the semantic
    test-time augmentation's shortest edges and longest side (off unless eval.tta; default the
    original's ADE20K ones, m2f_jax.inference.TTA_SCALES and TTA_MAX_SIZE)."""
    from m2f_jax.inference import TTA_MAX_SIZE, TTA_SCALES

    tta_scales, tta_max_size = tta_scales or TTA_SCALES, tta_max_size or TTA_MAX_SIZE
    return ml_collections.ConfigDict(dict(
        shortest_edge=shortest_edge, longest_edge=longest_edge, batch_size=batch_size, every=every,
        metric=None, tta=False, tta_scales=tuple(tta_scales), tta_max_size=tta_max_size,
    ))  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# The published recipes (reference/FACTS.md, from the original code's configs)

# A recipe file's argument -> the backbone of m2f_jax.config's presets (the start of the preset's name).
# Swin-B is the ImageNet-21k variant, the one FACTS.md's published Swin-B results come from (the same
# shapes as "base"); r50 / r101 are the paper's ResNet baselines.
VARIANTS = {
    "swin_t": "swin-tiny", "swin_s": "swin-small", "swin_b": "swin-base-IN21k", "swin_l": "swin-large",
    "r50": "resnet-50", "r101": "resnet-101",
}  # fmt: skip
# The ImageNet classification checkpoints the original recipes start the backbone from, as hub ids:
# Swin-T/S ImageNet-1k at 224, window 7; Swin-B/L ImageNet-22k at 384, window 12; R50/R101
# torchvision's ImageNet ResNets (detectron2's ImageNetPretrained/torchvision/R-50.pkl and R-101.pkl
# are those converted), which timm publishes unchanged as resnet50.tv_in1k / resnet101.tv_in1k.
IMAGENET_BACKBONES = {
    "swin-tiny": "microsoft/swin-tiny-patch4-window7-224",
    "swin-small": "microsoft/swin-small-patch4-window7-224",
    "swin-base-IN21k": "microsoft/swin-base-patch4-window12-384-in22k",
    "swin-large": "microsoft/swin-large-patch4-window12-384-in22k",
    "resnet-50": "timm/resnet50.tv_in1k",
    "resnet-101": "timm/resnet101.tv_in1k",
}

_HEAD_FIELDS = (
    "num_queries", "hidden_dim", "feature_size", "mask_feature_size", "encoder_feedforward_dim",
    "dim_feedforward", "encoder_layers", "decoder_layers",
)  # fmt: skip


def preset_name(arg: str | None, dataset: str, task: str) -> str:
    """The model preset of a recipe argument ("swin_t", ..., "r50", "r101"; None: "swin_t"), e.g.
    "swin-tiny-coco-panoptic" or "resnet-50-coco-panoptic"."""
    arg = arg or "swin_t"
    if arg not in VARIANTS:
        raise ValueError(
            f"unknown backbone {arg!r}: the argument after the config file's ':' is one of {list(VARIANTS)}"
        )
    return f"{VARIANTS[arg]}-{dataset}-{task}"


def model(preset_name: str) -> ml_collections.ConfigDict:
    """model.*: `preset` set (it decides the model), and every other field written out with the preset's
    values (the backbone's: those of its type, training.validation.BACKBONE_FIELDS), so that the config a
    run records says what is trained. The backbone starts from the ImageNet classification checkpoint the
    original recipe used (`backbone_init`: a file, folder or hub id; "" for random weights); `init_from`
    fine-tunes a whole converted model instead (and needs backbone_init="")."""
    from m2f_jax.config import preset
    from m2f_jax.training.validation import BACKBONE_FIELDS

    p = preset(preset_name)
    c = ml_collections.ConfigDict()
    c.preset = preset_name
    c.init_from = ""
    c.keep_matching_labels = True  # init_from with other labels: keep the class outputs of the names in both
    variant = next(v for v in sorted(IMAGENET_BACKBONES, key=len, reverse=True) if preset_name.startswith(f"{v}-"))
    c.backbone_init = IMAGENET_BACKBONES[variant]
    for field in BACKBONE_FIELDS[type(p.backbone_config)]:
        c[field.removeprefix("model.")] = getattr(p.backbone_config, field.removeprefix("model."))
    for name in _HEAD_FIELDS:
        c[name] = getattr(p, name)
    return c


def loss() -> ml_collections.ConfigDict:
    """loss.*: the paper's matched, point-sampled loss (class 2, mask BCE 5, dice 5, no-object 0.1;
    12544 = 112 * 112 points, oversampling 3, importance ratio 0.75) on all ten predictions."""
    return ml_collections.ConfigDict(dict(
        class_weight=2.0, mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1, num_points=112 * 112,
        oversample_ratio=3.0, importance_sample_ratio=0.75, matcher="hungarian", auxiliary=True,
    ))  # fmt: skip


def optimizer(schedule: str) -> ml_collections.ConfigDict:
    """optimizer.*: AdamW lr 1e-4, weight decay 0.05, backbone x0.1, full-model clipping at global norm
    0.01, no warmup; "multistep": x0.1 at 88.9% and 96.3% of the run (COCO), "poly": power 0.9
    (ADE20K, Cityscapes)."""
    c = ml_collections.ConfigDict(dict(
        learning_rate=1e-4, weight_decay=0.05, backbone_multiplier=0.1, clip_norm=0.01, schedule=schedule,
        warmup_steps=0, warmup_factor=1.0, accumulation_steps=1,
    ))  # fmt: skip
    if schedule == "multistep":
        c.milestones = (0.889, 0.963)
        c.gamma = 0.1
    elif schedule == "poly":
        c.poly_power = 0.9
    else:
        raise ValueError(f"the published recipes use 'multistep' or 'poly', got {schedule!r}")
    return c


def recipe(
    task: str,
    source: str,
    options: dict[str, Any],
    augmentation: ml_collections.ConfigDict,
    preset_name: str,
    steps: int,
    schedule: str,
    test_size: tuple[int, int],
    max_instances: int | None = None,
    tta: tuple[tuple[int, ...], int] | None = None,
) -> ml_collections.ConfigDict:
    """A whole experiment config with the original's training settings: batch 16, the paper's loss and
    optimizer, bfloat16 compute, activations recomputed (remat "full") for crops of 1024x1024 or more.
    test_size: (shortest edge, longest edge) at evaluation; tta: (shortest edges, longest side) of the
    semantic test-time augmentation. max_instances: target slots per image, the preset's query count
    unless given (it may not be more)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.task = task
    model_section = model(preset_name)
    slots = model_section.num_queries if max_instances is None else max_instances
    c.data = data(source, options, max_instances=slots, augmentation=augmentation, workers=8)
    c.model = model_section
    c.loss = loss()
    c.optimizer = optimizer(schedule)
    c.steps = steps
    c.batch_size = 16  # global, over all processes and devices
    c.fsdp = 1
    height, width = augmentation.crop_size
    # COCO's LSJ crops: memory, not speed, is the limit there (m2f_jax.modeling.layers.REMAT_POLICIES)
    c.remat = "full" if height * width >= 1024 * 1024 else "none"
    c.scan_layers = True  # one compiled copy of each repeated layer: Swin-L compiles as fast as Swin-T
    c.compute_dtype = "bfloat16"  # the original trains with AMP; parameters and optimizer stay float32
    c.log_every = 100
    c.checkpoint_every = 5000
    c.keep_checkpoints = 3
    c.eval = evaluation(*test_size, **({} if tta is None else {"tta_scales": tta[0], "tta_max_size": tta[1]}))
    return c


def cityscapes(task: str, arg: str | None) -> ml_collections.ConfigDict:
    """The Cityscapes recipe of `task` (detectron2's Cityscapes settings): short side 0.5-2.0 x 1024 (long
    side at most 4096), a 512x1024 crop with the category-area constraint, photometric distortion, flip;
    batch 16, 90,000 steps, poly. Semantic targets are one per class present, so 19 slots hold them all."""
    return recipe(
        task, "cityscapes", {"root": "data/cityscapes"},
        augment("semantic", (512, 1024), base_size=1024, max_size=4096),
        preset_name(arg, "cityscapes", task), steps=90_000, schedule="poly", test_size=(1024, 2048),
        max_instances=19 if task == "semantic" else None,
        tta=((512, 768, 1024, 1280, 1536, 1792), 4096),
    )  # fmt: skip
