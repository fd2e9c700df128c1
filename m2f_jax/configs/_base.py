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
