"""Data sources: random access to samples (image + segment-id map + segments_info, see `base`).

`open_source(kind, split, **options)` builds one by name, importing only that source's module (its
optional dependencies: pycocotools, datasets, tensorflow_datasets) when it is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from m2f_jax.data.sources.base import TASKS, SampleError, Source, check_sample, id2label, tasks_of

# kind -> "module:class"; each class takes (split, **options) and documents its options.
SOURCES = {
    "synthetic": "m2f_jax.data.sources.synthetic:SyntheticSource",
    "coco_panoptic": "m2f_jax.data.sources.coco:CocoPanoptic",
    "coco_instances": "m2f_jax.data.sources.coco:CocoInstances",
    "ade20k": "m2f_jax.data.sources.ade20k:ADE20K",
    "cityscapes": "m2f_jax.data.sources.cityscapes:Cityscapes",
    "folder": "m2f_jax.data.sources.folder:FolderSource",
    "hf_datasets": "m2f_jax.data.sources.hf_datasets:HFDatasetSource",
    "tfds": "m2f_jax.data.sources.tfds:TFDSSource",
}


def source_class(kind: str) -> type:
    if kind not in SOURCES:
        raise ValueError(f"unknown data source {kind!r}; one of {sorted(SOURCES)}")
    module, name = SOURCES[kind].split(":")
    return getattr(importlib.import_module(module), name)


def open_source(kind: str, split: str, **options: Any) -> Source:
    """The `split` ("train" or "val") of data source `kind`, e.g. open_source("ade20k", "val", root=...)."""
    return source_class(kind)(split, **options)


__all__ = [
    "SOURCES", "TASKS", "SampleError", "Source", "check_sample", "id2label", "open_source", "source_class", "tasks_of",
]  # fmt: skip
