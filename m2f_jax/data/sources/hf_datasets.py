"""A Hugging Face `datasets` data set, laid out as HF's MaskFormer/Mask2Former fine-tuning guides use them.

One image column and one annotation column, either
- `semantic_column`: a single-channel image (or array) of class ids per pixel, ignore_index where
  unlabelled; with `reduce_labels` (HF's do_reduce_labels, for ADE20K-style data where 0 means
  "other"), 0 becomes ignore_index and every other value v becomes v - 1 before anything else; or
- `instance_column`: an RGB image whose red channel is the class id and whose green channel the
  instance id (the encoding of HF's instance-segmentation guide); blue is not read. `reduce_labels`
  applies to the red channel. Green 0 is "no instance".
`id2label` ({class id: name}) names the classes; a class's training label is its position among the
sorted ids. `thing_ids` are the thing classes' ids. Segments follow the folder source's rules
(`folder`): one per instance, one per stuff class present, and the thing pixels outside every
instance (all of them with a semantic column) one crowd segment per class; an instance must lie on a
single thing class (SampleError otherwise), as must every pixel value be a class id or ignore_index.

Needs the optional extra: pip install 'm2f-jax[hf]'.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from PIL import Image

from m2f_jax.data.sources.base import SampleError
from m2f_jax.data.sources.folder import segments_from_maps
from m2f_jax.data.validate import SPLITS, Labels, check_instances, check_semantic
from m2f_jax.processing.image_io import pil_to_rgb

DEFAULT_SPLITS = {"train": "train", "val": "validation"}


class HFDatasetSource:
    """The `split` ("train" or "val") of a `datasets` data set (see the module docstring).

    `dataset`: a `datasets.DatasetDict` (its split named by `splits[split]`) or a `Dataset` (used as
    the split); or `path`: a folder written by `save_to_disk`, else a hub name for `load_dataset`.
    `splits` maps "train"/"val" to the data set's split names (default train -> "train",
    val -> "validation"). Columns other than the two used are not read.
    """

    def __init__(
        self,
        split: str,
        dataset: Any = None,
        path: str | os.PathLike | None = None,
        image_column: str = "image",
        semantic_column: str | None = None,
        instance_column: str | None = None,
        id2label: Mapping[int, str] | None = None,
        thing_ids: Iterable[int] = (),
        ignore_index: int = 255,
        reduce_labels: bool = False,
        splits: Mapping[str, str] | None = None,
    ):
        datasets = _import_datasets()
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if (dataset is None) == (path is None):
            raise ValueError("pass exactly one of dataset= (a datasets.Dataset or DatasetDict) and path=")
        if (semantic_column is None) == (instance_column is None):
            raise ValueError(
                "pass exactly one of semantic_column= (class ids) and instance_column= (R class, G instance)"
            )
        self.split, self.reduce_labels = split, bool(reduce_labels)
        self.labels = _labels(id2label, thing_ids, ignore_index)
        if path is not None:
            path = os.fspath(path)
            dataset = datasets.load_from_disk(path) if os.path.isdir(path) else datasets.load_dataset(path)
        if isinstance(dataset, datasets.DatasetDict):
            name = dict(DEFAULT_SPLITS, **(splits or {}))[split]
            if name not in dataset:
                raise ValueError(
                    f"the data set has no split {name!r} for {split!r}; its splits: {sorted(dataset)} "
                    f"(map them with splits={{'{split}': NAME}})"
                )
            dataset, self.split_name = dataset[name], name
        elif isinstance(dataset, datasets.Dataset):
            self.split_name = str(dataset.split) if dataset.split is not None else split
        else:
            raise TypeError(f"dataset must be a datasets.Dataset or DatasetDict, got {type(dataset).__name__}")
        self.image_column = image_column
        self.mask_column = semantic_column if semantic_column is not None else instance_column
        self.instance_encoded = instance_column is not None
        for column in (image_column, self.mask_column):
            if column not in dataset.column_names:
                raise ValueError(
                    f"the {self.split_name!r} split has no column {column!r}; its columns: {dataset.column_names}"
                )
        self.dataset = dataset.select_columns([image_column, self.mask_column])

    @property
    def classes(self) -> tuple[dict[str, Any], ...]:
        return self.labels.classes

    def __len__(self) -> int:
        return len(self.dataset)

    def describe(self, index: int) -> str:
        return f"row {index} of the {self.split_name!r} split (columns {self.image_column!r}, {self.mask_column!r})"

    def __getitem__(self, index: int) -> dict[str, Any]:
        where = self.describe(index)
        row = self.dataset[int(index)]
        image = _image(row[self.image_column], f"{where}, {self.image_column!r}")
        mask = _mask(row[self.mask_column], f"{where}, {self.mask_column!r}")
        instances = None
        if self.instance_encoded:
            if mask.ndim != 3:
                raise SampleError(
                    f"{where}: {self.mask_column!r} must be RGB (R class, G instance), got shape {mask.shape}"
                )
            mask, instances = mask[..., 0], mask[..., 1]
        if mask.shape[:2] != image.shape[:2]:
            raise SampleError(f"{where}: {self.mask_column!r} is {mask.shape[:2]}, the image {image.shape[:2]}")
        if self.reduce_labels:
            mask = np.where(mask == 0, self.labels.ignore_index, mask.astype(np.int64) - 1)
        labels, problems = check_semantic(mask, self.labels, f"{where}, {self.mask_column!r}")
        instance_labels = {}
        if not problems and instances is not None:
            instance_labels, problems = check_instances(
                instances, labels, self.labels, f"{where}, {self.mask_column!r}"
            )
        if problems:
            raise SampleError("; ".join(str(p) for p in problems))
        segments, info = segments_from_maps(labels, instances, instance_labels, self.classes)
        return {"image": image, "segments": segments, "segments_info": info, "name": f"{self.split_name}_{index:06d}"}

    def __repr__(self) -> str:
        return f"HFDatasetSource({self.split!r}): {len(self)} rows of {self.split_name!r}, {len(self.classes)} classes"


def _import_datasets():
    try:
        import datasets
    except ImportError as error:
        raise ImportError(
            "the Hugging Face data source needs the `datasets` package: pip install 'm2f-jax[hf]'"
        ) from error
    return datasets


def _labels(id2label: Mapping[int, str] | None, thing_ids: Iterable[int], ignore_index: int) -> Labels:
    if not id2label:
        raise ValueError("id2label ({class id: name}) is required")
    try:
        names = {int(k): str(v) for k, v in id2label.items()}  # a config.json read as JSON has string keys
    except (TypeError, ValueError) as error:
        raise ValueError(f"id2label keys must be integer class ids ({error})") from error
    things = {int(t) for t in thing_ids}
    if things - set(names):
        raise ValueError(f"thing_ids {sorted(things - set(names))} are not ids of id2label")
    if min(names) < 0:
        raise ValueError(f"id2label ids must be non-negative, got {min(names)}")
    if ignore_index in names:
        raise ValueError(f"ignore_index {ignore_index} is also a class id of id2label")
    classes = tuple({"id": i, "name": names[i], "isthing": i in things} for i in sorted(names))
    return Labels(classes, int(ignore_index))


def _image(value: Any, where: str) -> np.ndarray:
    """A column value (PIL image or array) -> uint8 (H, W, 3), through the one reader's rules."""
    try:
        if isinstance(value, Image.Image):
            return pil_to_rgb(value, where)
        array = np.asarray(value)
    except (OSError, ValueError) as error:
        raise SampleError(str(error)) from error
    if array.dtype == np.uint8 and array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] in (3, 4):
        return np.ascontiguousarray(array[..., :3])
    raise SampleError(f"{where}: an image must be uint8 (H, W) or (H, W, 3), got {array.dtype} {array.shape}")


def _mask(value: Any, where: str) -> np.ndarray:
    """A column value -> its integers as stored: (H, W), or (H, W, 3) for RGB; alpha dropped, no EXIF."""
    try:
        array = np.asarray(value)
    except (OSError, ValueError) as error:
        raise SampleError(f"{where}: cannot read the mask ({error})") from error
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3) or array.dtype.kind not in "iu":
        raise SampleError(f"{where}: a mask must be integers (H, W) or (H, W, 3), got {array.dtype} {array.shape}")
    return array
