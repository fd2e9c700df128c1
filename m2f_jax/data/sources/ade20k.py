"""ADE20K scene parsing (the 150-class ADEChallengeData2016 release) from its folders.

`ADE20K(split, root)` reads `root` = the unzipped `ADEChallengeData2016` folder
(http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip):
`images/{training,validation}/ADE_*.jpg` with `annotations/{training,validation}/ADE_*.png`, 8-bit maps
whose value 0 is "other" (unlabelled: ignored) and 1..150 the classes below. The contiguous label is
value - 1 (HF's `do_reduce_labels` convention). This is the semantic benchmark: every class is stuff
(isthing False) and a sample holds one segment per class present, its id the pixel value itself.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from m2f_jax.data.sources.base import SampleError, read_label_png, read_rgb

SPLITS = {"train": "training", "val": "validation"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

# The SceneParsing benchmark's class names, in the order of their values 1..150.
NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel",  # noqa: E501
    "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
CLASSES = [{"id": value, "name": name, "isthing": False} for value, name in enumerate(NAMES, start=1)]


class ADE20K:
    """The `split` ("train" or "val") of ADEChallengeData2016 under `root` (see the module docstring)."""

    def __init__(self, split: str, root: str | os.PathLike):
        if split not in SPLITS:
            raise ValueError(f"ADE20K split must be one of {sorted(SPLITS)}, got {split!r}")
        self.split, self.root, self.classes = split, os.fspath(root), CLASSES
        self.tasks = ("semantic",)
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"ADE20K root {self.root!r} is not a folder (the unzipped ADEChallengeData2016)")
        self.image_dir = os.path.join(self.root, "images", SPLITS[split])
        self.annotation_dir = os.path.join(self.root, "annotations", SPLITS[split])
        images = _stems(self.image_dir, IMAGE_EXTENSIONS)
        annotations = _stems(self.annotation_dir, (".png",))
        _require_none(sorted(images.keys() - annotations.keys()), "images without an annotation", self.image_dir)
        _require_none(sorted(annotations.keys() - images.keys()), "annotations without an image", self.annotation_dir)
        if not images:
            raise FileNotFoundError(f"ADE20K: no images in {self.image_dir!r}")
        self.files = [(images[stem], annotations[stem]) for stem in sorted(images)]

    def __len__(self) -> int:
        return len(self.files)

    def _paths(self, index: int) -> tuple[str, str]:
        image, annotation = self.files[index]
        return os.path.join(self.image_dir, image), os.path.join(self.annotation_dir, annotation)

    def describe(self, index: int) -> str:
        image, annotation = self._paths(index)
        return f"image {image!r}, annotation {annotation!r}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path, annotation_path = self._paths(index)
        image, labels = read_rgb(image_path), read_label_png(annotation_path)
        if labels.ndim != 2 or labels.shape != image.shape[:2]:
            raise SampleError(
                f"{annotation_path!r}: expected a single-channel map of the image's size {image.shape[:2]}, "
                f"got shape {labels.shape}"
            )
        values = np.unique(labels)
        bad = values[(values < 0) | (values > len(CLASSES))]
        if bad.size:
            raise SampleError(f"{annotation_path!r}: values {bad.tolist()} are outside 0..{len(CLASSES)}")
        info = [{"id": int(v), "category_id": int(v) - 1, "iscrowd": False, "isthing": False} for v in values if v != 0]
        return {
            "image": image,
            "segments": labels.astype(np.int32),
            "segments_info": info,
            "name": self.files[index][0],
        }


def _stems(folder: str, extensions: tuple[str, ...]) -> dict[str, str]:
    """File stem -> file name for the files of `folder` with one of `extensions` (listing only)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"ADE20K: missing folder {folder!r}")
    return {
        os.path.splitext(name)[0]: name
        for name in os.listdir(folder)
        if not name.startswith(".") and name.lower().endswith(extensions)
    }


def _require_none(stems: list[str], what: str, folder: str) -> None:
    if stems:
        shown = ", ".join(stems[:10]) + (f", ... ({len(stems)} in all)" if len(stems) > 10 else "")
        raise FileNotFoundError(f"ADE20K: {what} in {folder!r}: {shown}")
