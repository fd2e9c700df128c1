"""What every data source gives: random access to samples in one representation for all three tasks.

A sample is a dict:
- "image": uint8 (H, W, 3) RGB (EXIF orientation applied, as `processing.image_io` reads files);
- "segments": int32 (H, W) segment-id map; 0 = no segment (void, ignore, unlabelled pixels);
- "segments_info": list of {"id": int (> 0, a value of "segments"), "category_id": int (the
  contiguous training label, 0..num_classes-1, an index into the source's `classes`), "iscrowd":
  bool, "isthing": bool}; a map id absent here is an error;
- "name": str, the image's file (or record) name, for messages and outputs.
- "image_id" (optional): int, the data set's own id of the image (COCO's), which predictions written
  for the official tools carry.
Ids listed in "segments_info" may be absent from the map (no pixels); map ids must all be listed.

Panoptic targets are the non-crowd segments; instance targets the non-crowd thing segments; semantic
targets one per category present (crowd segments included, as the original's COCO semantic labels
are made from every panoptic segment). Ignore pixels are 0 in "segments" and belong to no target.

A source has `len()`, `source[i]` (the sample; a file that cannot be read raises `SampleError` naming
it), `classes` (list of {"id": the data set's own category id, "name", "isthing"}; position = the
contiguous label), `describe(i)` (the files of sample i, for messages, without reading them) and
`split`, and `tasks`: the tasks its annotations can train (a source with one segment per class, such as
ADE20K's semantic release, has only "semantic"; `tasks_of` gives all three when it is not set). It is
a `grain.RandomAccessDataSource`: the pipeline shuffles, shards and transforms it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from m2f_jax.processing import image_io


class SampleError(Exception):
    """A sample that cannot be read (missing or corrupt file, inconsistent annotation); names its files."""


class Source(Protocol):
    split: str
    classes: Sequence[Mapping[str, Any]]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...

    def describe(self, index: int) -> str: ...


TASKS = ("panoptic", "instance", "semantic")


def tasks_of(source: Source) -> tuple[str, ...]:
    return tuple(getattr(source, "tasks", TASKS))


def id2label(source: Source) -> dict[int, str]:
    """Contiguous label -> class name, as a model config's id2label."""
    return {i: str(c["name"]) for i, c in enumerate(source.classes)}


def check_sample(sample: Mapping[str, Any], num_classes: int, where: str) -> None:
    """Raises SampleError (naming `where`) if a sample breaks the representation above."""
    image, segments = sample.get("image"), sample.get("segments")
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise SampleError(f"{where}: image must be uint8 (H, W, 3), got {_describe(image)}")
    if not isinstance(segments, np.ndarray) or segments.dtype != np.int32 or segments.shape != image.shape[:2]:
        raise SampleError(f"{where}: segments must be int32 {image.shape[:2]}, got {_describe(segments)}")
    info = sample.get("segments_info")
    if not isinstance(info, list):
        raise SampleError(f"{where}: segments_info must be a list, got {type(info).__name__}")
    ids = [s["id"] for s in info]
    if len(set(ids)) != len(ids) or any(i <= 0 for i in ids):
        raise SampleError(f"{where}: segment ids must be distinct and > 0, got {ids}")
    bad = [s["category_id"] for s in info if not 0 <= s["category_id"] < num_classes]
    if bad:
        raise SampleError(f"{where}: category ids {bad} are outside the {num_classes} classes")
    # Listed ids absent from the map are allowed (a segment with no pixels); unlisted map ids are not.
    listed = np.sort(np.asarray([0, *ids], np.int64))
    found = listed[np.minimum(np.searchsorted(listed, segments), len(listed) - 1)]
    if not np.array_equal(found, segments):  # searchsorted: one pass, no sort of the map
        unlisted = set(np.unique(segments[found != segments]).tolist())
        raise SampleError(f"{where}: the segment map holds ids {sorted(unlisted)} with no segments_info entry")


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 (H, W, 3) through the one reader (EXIF, modes); SampleError if it cannot be."""
    try:
        return image_io.read_image(path)
    except (OSError, ValueError) as error:
        raise SampleError(str(error)) from error


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """A label PNG as it is stored: (H, W) integers for 8/16-bit single-channel files (palette indices
    for mode P), (H, W, 3) uint8 for RGB ones (COCO panoptic ids); no EXIF or colour conversion."""
    try:
        image = image_io.open_image(path)
    except (OSError, ValueError) as error:
        raise SampleError(str(error)) from error
    array = np.asarray(image)
    if image.mode in ("RGBA",):
        array = array[..., :3]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise SampleError(f"{os.fspath(path)!r}: a label image must be single-channel or RGB, got mode {image.mode}")
    return array


def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"{x.dtype} {x.shape}"
    return type(x).__name__
