"""Cityscapes (fine annotations) from its official folders, as panoptic samples of the 19 evaluation classes.

Download (manual, the licence requires an account): register at https://www.cityscapes-dataset.com,
download `gtFine_trainvaltest.zip` and `leftImg8bit_trainvaltest.zip` and unzip both into one `root`:
`leftImg8bit/{train,val}/{city}/{stem}_leftImg8bit.png` and
`gtFine/{train,val}/{city}/{stem}_gtFine_{labelIds,instanceIds}.png`.

The classes are the 19 with a trainId in cityscapesScripts' label table, in trainId order, "id" being
the labelId; every other labelId (void, ego vehicle, parking, caravan, ...) is ignored (segment 0).
Segments follow cityscapesScripts' panoptic conversion: one per stuff class present, one per thing
instance (instanceIds value labelId * 1000 + k), and one crowd segment per thing class for its pixels
without an instance id (group regions, stored as the bare labelId). The class of a pixel comes from
labelIds, its instance from instanceIds; the two must agree on thing pixels. Segment ids are 1, 2, ... in the order:
stuff by trainId, instances by instanceId, crowd by trainId.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from m2f_jax.data.sources.base import SampleError, read_label_png, read_rgb

SPLITS = {"train": "train", "val": "val"}
IMAGE_SUFFIX, LABEL_SUFFIX, INSTANCE_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png", "_gtFine_instanceIds.png"

# (labelId, name) of the evaluation classes in trainId order; trainIds 11.. are things.
EVAL_CLASSES = (
    (7, "road"), (8, "sidewalk"), (11, "building"), (12, "wall"), (13, "fence"), (17, "pole"),
    (19, "traffic light"), (20, "traffic sign"), (21, "vegetation"), (22, "terrain"), (23, "sky"),
    (24, "person"), (25, "rider"), (26, "car"), (27, "truck"), (28, "bus"), (31, "train"),
    (32, "motorcycle"), (33, "bicycle"),
)  # fmt: skip
FIRST_THING = 11
CLASSES = [{"id": i, "name": n, "isthing": t >= FIRST_THING} for t, (i, n) in enumerate(EVAL_CLASSES)]

# labelId -> trainId, -1 for ignored ids (labelIds PNGs are 8-bit).
TRAIN_ID = np.full(256, -1, np.int64)
TRAIN_ID[[label_id for label_id, _ in EVAL_CLASSES]] = np.arange(len(EVAL_CLASSES))
CROWD_KEY = 1 << 16  # above every instanceId (labelId * 1000 + k, 16-bit)
NUM_KEYS = CROWD_KEY + len(EVAL_CLASSES)


class Cityscapes:
    """The `split` ("train" or "val") of Cityscapes gtFine under `root` (see the module docstring)."""

    def __init__(self, split: str, root: str | os.PathLike):
        if split not in SPLITS:
            raise ValueError(f"Cityscapes split must be one of {sorted(SPLITS)}, got {split!r}")
        self.split, self.root, self.classes = split, os.fspath(root), CLASSES
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"Cityscapes root {self.root!r} is not a folder")
        self.image_dir = os.path.join(self.root, "leftImg8bit", SPLITS[split])
        self.gt_dir = os.path.join(self.root, "gtFine", SPLITS[split])
        for folder, archive in ((self.image_dir, "leftImg8bit"), (self.gt_dir, "gtFine")):
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"Cityscapes: missing folder {folder!r} (unzip {archive}_trainvaltest.zip)")
        self.stems: list[tuple[str, str]] = []  # (city, stem)
        missing = []
        for city in sorted(os.listdir(self.image_dir)):
            if not os.path.isdir(os.path.join(self.image_dir, city)):
                continue
            gt_city = os.path.join(self.gt_dir, city)
            gt_files = set(os.listdir(gt_city)) if os.path.isdir(gt_city) else set()
            for name in sorted(os.listdir(os.path.join(self.image_dir, city))):
                if not name.endswith(IMAGE_SUFFIX):
                    continue
                stem = name[: -len(IMAGE_SUFFIX)]
                missing += [
                    os.path.join(city, stem + s) for s in (LABEL_SUFFIX, INSTANCE_SUFFIX) if stem + s not in gt_files
                ]
                self.stems.append((city, stem))
        if missing:
            shown = ", ".join(missing[:10]) + (f", ... ({len(missing)} in all)" if len(missing) > 10 else "")
            raise FileNotFoundError(f"Cityscapes: missing annotation files in {self.gt_dir!r}: {shown}")
        if not self.stems:
            raise FileNotFoundError(f"Cityscapes: no *{IMAGE_SUFFIX} images in the city folders of {self.image_dir!r}")

    def __len__(self) -> int:
        return len(self.stems)

    def _paths(self, index: int) -> tuple[str, str, str]:
        city, stem = self.stems[index]
        gt = os.path.join(self.gt_dir, city, stem)
        return os.path.join(self.image_dir, city, stem + IMAGE_SUFFIX), gt + LABEL_SUFFIX, gt + INSTANCE_SUFFIX

    def describe(self, index: int) -> str:
        image, labels, instances = self._paths(index)
        return f"image {image!r}, labelIds {labels!r}, instanceIds {instances!r}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path, label_path, instance_path = self._paths(index)
        image = read_rgb(image_path)
        labels, instances = read_label_png(label_path), read_label_png(instance_path)
        for path, array in ((label_path, labels), (instance_path, instances)):
            if array.ndim != 2 or array.shape != image.shape[:2]:
                raise SampleError(
                    f"{path!r}: expected a single-channel map of the image's size {image.shape[:2]}, "
                    f"got shape {array.shape}"
                )
        labels, instances = labels.astype(np.int64), instances.astype(np.int64)
        if labels.min() < 0 or labels.max() > 255:
            raise SampleError(f"{label_path!r}: labelIds outside 0..255")
        train_ids = TRAIN_ID[labels]
        thing = train_ids >= FIRST_THING
        is_instance = instances >= 1000
        instance_label = np.where(is_instance, instances // 1000, instances)
        disagree = thing & (instance_label != labels)
        if disagree.any():
            raise SampleError(
                f"{instance_path!r} disagrees with {label_path!r} at {int(disagree.sum())} thing pixels "
                "(an instanceId must be labelId * 1000 + k, or the bare labelId)"
            )
        # One key per segment, ordered stuff trainIds < instanceIds < crowd keys (-1: ignore); the keys
        # present are numbered 1, 2, ... through a lookup table (linear time, no sort of the pixels).
        key = np.where(thing, np.where(is_instance, instances, CROWD_KEY + train_ids), train_ids)
        present = np.flatnonzero(np.bincount(key.ravel() + 1, minlength=NUM_KEYS + 1)[1:])
        numbering = np.zeros(NUM_KEYS + 1, np.int32)  # at key + 1; ignore stays 0
        numbering[present + 1] = np.arange(1, len(present) + 1)
        segments = numbering[key + 1]
        info = []
        for segment_id, k in enumerate(present.tolist(), start=1):
            crowd = k >= CROWD_KEY
            train_id = k - CROWD_KEY if crowd else (int(TRAIN_ID[k // 1000]) if k >= 1000 else k)
            info.append(
                {"id": segment_id, "category_id": train_id, "iscrowd": crowd, "isthing": train_id >= FIRST_THING}
            )
        return {
            "image": image,
            "segments": segments,
            "segments_info": info,
            "name": self.stems[index][1] + IMAGE_SUFFIX,
        }
