"""Your own data: a folder of images with class-id masks and, optionally, instance-id masks.

The format:

    DIR/labels.json
    DIR/train/images/NAME.jpg        (or .jpeg .png .bmp .tif .tiff .webp, any case)
    DIR/train/semantic/NAME.png
    DIR/train/instances/NAME.png     (optional, per split)
    DIR/val/...                      (the same three folders)

labels.json lists the classes and the value of unlabelled pixels:

    {"classes": [{"id": 0, "name": "road", "isthing": false},
                 {"id": 7, "name": "car", "isthing": true}],
     "ignore_index": 255}

- "id": the value that marks the class in the masks, any non-negative integer (distinct, not
  necessarily consecutive); "name": distinct, non-empty; "isthing": true for countable objects
  (car, person), false for amorphous regions (road, sky). The model's training label of a class is its
  position in this list. "ignore_index" is optional (default 255) and must not be a class id.
- semantic/NAME.png: a single-channel PNG (8-bit or 16-bit grey, or a palette PNG whose indices are
  the values), the same size as the image: the class id of each pixel, ignore_index where unlabelled.
  Ignored pixels count for no task, neither as a class nor as background.
- instances/NAME.png: a single-channel 8- or 16-bit PNG of the image's size: 0 = no instance, every
  other value one object (the numbers need not be consecutive). All pixels of an instance must carry
  one thing class in semantic/ (not a stuff class, not ignore_index). When a split has an instances/
  folder, every image needs its file there (all zeros for an image without objects).
- Images and masks pair by file name without extension (train/images/a.jpg <-> train/semantic/a.png);
  an unpaired file, two images with one name or a file of another type is an error. Hidden files
  (.name) are skipped. Masks must be PNG: lossy formats change the values at region borders.
- Images are read as `processing.image_io` reads them (EXIF orientation applied, 8-bit RGB; 16-bit
  images are refused); masks as stored, so they must match the image as it displays.

What a sample holds (see `base`): each instance is one segment; each stuff class present is one
segment; the pixels of a thing class that no instance covers (all of them in a split without
instances/) are one segment per class marked iscrowd, so panoptic and instance training ignore them
while semantic training learns them. Semantic-only data therefore needs no instances/ folder.
Segment ids are 1, 2, ... in a fixed order: one per class present (ascending label), then the
instances (ascending instance value).

Check a folder with `python -m m2f_jax.data.validate DIR` first: it reads every file and lists every
problem, where training stops at the first broken file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from m2f_jax.data.sources.base import SampleError
from m2f_jax.data.validate import SPLITS, Labels, pair_split, read_labels, read_sample


class FolderSource:
    """The `split` ("train" or "val") of a folder in the format above, rooted at `root`.

    Construction reads labels.json and lists the files (no image is opened); a missing or unpaired
    file raises ValueError naming it. A sample whose files are unreadable or inconsistent raises
    `SampleError` naming them.
    """

    def __init__(self, split: str, root: str | os.PathLike):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split, self.root = split, os.fspath(root)
        hint = f"\n(python -m m2f_jax.data.validate {self.root} checks every file of the folder)"
        labels, problems = read_labels(self.root)
        if problems:
            raise ValueError("\n".join(str(p) for p in problems) + hint)
        self.labels: Labels = labels
        if not os.path.isdir(os.path.join(self.root, split)):
            raise ValueError(f"{os.path.join(self.root, split)}: no such folder (the {split} split){hint}")
        self.files, problems = pair_split(self.root, split)
        if problems:
            shown = "\n".join(f"  {p}" for p in problems[:10])
            more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
            raise ValueError(f"the {split} split of {self.root} has {len(problems)} problems:\n{shown}{more}{hint}")

    @property
    def classes(self) -> Sequence[Mapping[str, Any]]:
        return self.labels.classes

    def __len__(self) -> int:
        return len(self.files)

    def describe(self, index: int) -> str:
        files = self.files[index]
        return ", ".join(p for p in (files.image, files.semantic, files.instances) if p)

    def __getitem__(self, index: int) -> dict[str, Any]:
        files = self.files[index]
        checked, problems = read_sample(files, self.labels)
        if problems:
            raise SampleError("; ".join(str(p) for p in problems))
        segments, info = segments_from_maps(checked.labels, checked.instances, checked.instance_labels, self.classes)
        return {"image": checked.image, "segments": segments, "segments_info": info, "name": files.name}

    def __repr__(self) -> str:
        return f"FolderSource({self.split!r}, root={self.root!r}): {len(self)} images, {len(self.classes)} classes"


def segments_from_maps(
    labels: np.ndarray,
    instances: np.ndarray | None,
    instance_labels: Mapping[int, int],
    classes: Sequence[Mapping[str, Any]],
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """A checked contiguous-label map (-1 = ignore) and instance map -> (segment-id map, segments_info):
    one segment per class present outside the instances (crowd for thing classes), then one per instance.
    Instances must lie on one thing class each (`validate.check_instances`), given in `instance_labels`."""
    num = len(classes)
    code = labels.astype(np.int64)
    if instances is not None:
        code = np.where(instances > 0, num + instances.astype(np.int64), code)
    values, inverse = np.unique(code, return_inverse=True)
    kept = values[values >= 0]  # -1 (ignore), when present, is values[0] and becomes segment id 0
    segments = (inverse.reshape(code.shape) - (values.size - kept.size) + 1).astype(np.int32)
    info = []
    for segment_id, value in enumerate(kept.tolist(), start=1):
        if value < num:
            thing = bool(classes[value]["isthing"])
            info.append({"id": segment_id, "category_id": value, "iscrowd": thing, "isthing": thing})
        else:
            label = int(instance_labels[value - num])
            info.append({"id": segment_id, "category_id": label, "iscrowd": False, "isthing": True})
    return segments, info
