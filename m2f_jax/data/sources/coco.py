"""COCO 2017 as data sources: the panoptic annotations (PNG id maps) and the instance annotations
(polygons and RLE masks), in the folder layout the official zips unpack to.

Both read their JSON once at construction, check it (every category known, every annotation's image
listed) and keep only what a sample needs in flat numpy arrays, so a source pickles quickly to grain's
worker processes and `source[i]` reads just sample i's files.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from m2f_jax.data.sources.base import SampleError, read_label_png, read_rgb

SPLITS = {"train": "train2017", "val": "val2017"}


def _split_name(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    return SPLITS[split]


def _existing(root: str, path: str | os.PathLike, what: str, is_dir: bool) -> str:
    """`path` (relative paths are taken under `root`), which must exist; ValueError naming it if not."""
    path = os.path.join(root, os.fspath(path))
    if not (os.path.isdir(path) if is_dir else os.path.isfile(path)):
        raise ValueError(f"COCO {what} {path!r} does not exist")
    return path


def _check_root(root: str | os.PathLike) -> str:
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ValueError(f"COCO root folder {root!r} does not exist")
    return root


def _load_json(path: str, fields: Sequence[str]) -> dict[str, Any]:
    """The annotation file, which must be a JSON object holding `fields`; ValueError naming what is wrong."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read COCO annotation file {path!r} as JSON ({error})") from error
    missing = [k for k in fields if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"COCO annotation file {path!r} lacks {missing}")
    return data


def _classes(categories: list[Mapping[str, Any]], path: str, panoptic: bool) -> list[dict[str, Any]]:
    """Categories sorted by id: position = contiguous label (as detectron2 maps COCO's ids)."""
    classes = []
    for c in sorted(categories, key=lambda c: c.get("id", -1)):
        missing = [k for k in ("id", "name", "isthing") if k not in c and (panoptic or k != "isthing")]
        if missing:
            raise ValueError(f"{path!r}: category {c} lacks the fields {missing}")
        isthing = bool(c["isthing"]) if panoptic else True
        classes.append({"id": int(c["id"]), "name": str(c["name"]), "isthing": isthing})
    return classes


def _unknown_category(path: str, where: str, category_id: Any) -> ValueError:
    return ValueError(f"{path!r}: {where} has category_id {category_id}, which 'categories' does not list")


class CocoPanoptic:
    """COCO panoptic segmentation: `root/{train,val}2017/*.jpg`, `root/annotations/panoptic_{train,val}2017.json`
    and its PNGs in `root/annotations/panoptic_{train,val}2017/` (or detectron2's `root/panoptic_{split}2017/`).

    Options (relative paths are taken under `root`): `image_dir`, `annotation_file`, `panoptic_dir`
    override the default places. Classes are the JSON's "categories" sorted by id (133 for COCO: things
    and stuff), samples its "annotations" in order, named by their image's file. A PNG pixel's segment
    id is R + 256 G + 256^2 B; 0 is void. A PNG holding an id its annotation does not list is an error.
    """

    def __init__(
        self,
        split: str,
        root: str | os.PathLike,
        image_dir: str | os.PathLike | None = None,
        annotation_file: str | os.PathLike | None = None,
        panoptic_dir: str | os.PathLike | None = None,
    ):
        name = _split_name(split)
        root = _check_root(root)
        self.split = split
        self.image_dir = _existing(root, image_dir or name, "image folder", is_dir=True)
        default_json = os.path.join("annotations", f"panoptic_{name}.json")
        self.annotation_file = _existing(root, annotation_file or default_json, "annotation file", is_dir=False)
        if panoptic_dir is None:
            candidates = [os.path.join(root, "annotations", f"panoptic_{name}"), os.path.join(root, f"panoptic_{name}")]
            found = [c for c in candidates if os.path.isdir(c)]
            if not found:
                raise ValueError(f"COCO panoptic PNG folder not found: neither {candidates[0]!r} nor {candidates[1]!r}")
            self.panoptic_dir = found[0]
        else:
            self.panoptic_dir = _existing(root, panoptic_dir, "panoptic PNG folder", is_dir=True)

        path = self.annotation_file
        data = _load_json(path, ("images", "annotations", "categories"))
        self.classes = _classes(data["categories"], path, panoptic=True)
        try:
            self._index(data, path)
        except KeyError as error:
            raise ValueError(f"{path!r}: an image, annotation or segment lacks the field {error}") from error

    def _index(self, data: Mapping[str, Any], path: str) -> None:
        """Builds the per-sample store (file names, segment ids, labels, crowd flags) from the JSON."""
        labels = {c["id"]: i for i, c in enumerate(self.classes)}
        images = {int(image["id"]): image for image in data["images"]}
        self.image_files, self.png_files, self.image_ids = [], [], []
        segment_ids, segment_labels, segment_crowd, self._starts = [], [], [], [0]
        for annotation in data["annotations"]:
            image = images.get(int(annotation["image_id"]))
            if image is None:
                raise ValueError(
                    f"{path!r}: annotation {annotation['file_name']!r} has image_id "
                    f"{annotation['image_id']}, which 'images' does not list"
                )
            self.image_files.append(image["file_name"])
            self.image_ids.append(int(image["id"]))
            self.png_files.append(annotation["file_name"])
            for segment in annotation["segments_info"]:
                label = labels.get(int(segment["category_id"]))
                if label is None:
                    where = f"annotation {annotation['file_name']!r}"
                    raise _unknown_category(path, where, segment["category_id"])
                segment_ids.append(int(segment["id"]))
                segment_labels.append(label)
                segment_crowd.append(bool(segment.get("iscrowd", 0)))
            self._starts.append(len(segment_ids))
        self._segment_ids = np.asarray(segment_ids, np.int64)
        self._segment_labels = np.asarray(segment_labels, np.int32)
        self._segment_crowd = np.asarray(segment_crowd, bool)
        self._isthing = np.asarray([c["isthing"] for c in self.classes], bool)

    def __len__(self) -> int:
        return len(self.png_files)

    def _paths(self, index: int) -> tuple[str, str]:
        image = os.path.join(self.image_dir, self.image_files[index])
        return image, os.path.join(self.panoptic_dir, self.png_files[index])

    def describe(self, index: int) -> str:
        image, png = self._paths(index)
        return f"image {image!r}, panoptic PNG {png!r}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path, png_path = self._paths(index)
        image = read_rgb(image_path)
        png = read_label_png(png_path)
        if png.ndim != 3:
            raise SampleError(f"{png_path!r}: a COCO panoptic PNG must be RGB (ids as R + 256 G + 256^2 B)")
        if png.shape[:2] != image.shape[:2]:
            raise SampleError(f"{png_path!r} is {png.shape[:2]} but its image {image_path!r} is {image.shape[:2]}")
        rgb = png.astype(np.int32)
        segments = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        start, end = self._starts[index], self._starts[index + 1]
        labels = self._segment_labels[start:end]
        segments_info = [
            {"id": int(i), "category_id": int(c), "iscrowd": bool(crowd), "isthing": bool(self._isthing[c])}
            for i, c, crowd in zip(self._segment_ids[start:end], labels, self._segment_crowd[start:end], strict=True)
        ]
        unlisted = set(np.unique(segments).tolist()) - {0} - {s["id"] for s in segments_info}
        if unlisted:
            raise SampleError(f"{png_path!r} holds segment ids {sorted(unlisted)} that its annotation does not list")
        return {
            "image": image, "segments": segments, "segments_info": segments_info, "name": self.image_files[index],
            "image_id": self.image_ids[index],
        }  # fmt: skip


class CocoInstances:
    """COCO instance segmentation: `root/{train,val}2017/*.jpg` and `root/annotations/instances_{train,val}2017.json`.

    Options (relative paths are taken under `root`): `image_dir` and `annotation_file` override the
    default places; `drop_empty=True` leaves out images without a non-crowd annotation (as detectron2's
    FILTER_EMPTY_ANNOTATIONS does for training). Classes are the JSON's "categories" sorted by id (80
    for COCO, all things), samples its "images" in order. Masks come from polygons, uncompressed or
    compressed RLE (crowd annotations are RLE), decoded with pycocotools; an annotation whose polygons
    all have fewer than 3 points is left out, as detectron2 does.

    Segment id k + 1 is the image's annotation k (from 0, in JSON order, after those left out). The id
    map cannot hold overlapping masks, so crowd annotations are drawn first, then the others in
    decreasing mask area (ties: the later one on top): a pixel covered by two annotations belongs to
    the smaller non-crowd one.
    """

    def __init__(
        self,
        split: str,
        root: str | os.PathLike,
        image_dir: str | os.PathLike | None = None,
        annotation_file: str | os.PathLike | None = None,
        drop_empty: bool = False,
    ):
        name = _split_name(split)
        root = _check_root(root)
        self.split = split
        self.image_dir = _existing(root, image_dir or name, "image folder", is_dir=True)
        default_json = os.path.join("annotations", f"instances_{name}.json")
        self.annotation_file = _existing(root, annotation_file or default_json, "annotation file", is_dir=False)

        path = self.annotation_file
        data = _load_json(path, ("images", "annotations", "categories"))
        self.classes = _classes(data["categories"], path, panoptic=False)
        try:
            self._index(data, path, drop_empty)
        except KeyError as error:
            raise ValueError(f"{path!r}: an image or annotation lacks the field {error}") from error

    def _index(self, data: Mapping[str, Any], path: str, drop_empty: bool) -> None:
        """Builds the per-image store from the annotation file's contents."""
        labels = {c["id"]: i for i, c in enumerate(self.classes)}
        sizes = {int(image["id"]): (int(image["height"]), int(image["width"])) for image in data["images"]}
        by_image: dict[int, list[Mapping[str, Any]]] = {}
        for annotation in data["annotations"]:
            if int(annotation["image_id"]) not in sizes:
                where = f"annotation {annotation.get('id')} has image_id {annotation['image_id']}"
                raise ValueError(f"{path!r}: {where}, which 'images' does not list")
            by_image.setdefault(int(annotation["image_id"]), []).append(annotation)

        # Per image: a range of annotations; per annotation: label, crowd, and either a range of
        # polygons (in one flat coordinate array) or an RLE (pycocotools' compressed dict).
        self.image_files, self.image_ids, sizes_kept, image_starts = [], [], [], [0]
        annotation_labels, crowd, rle_index, polygon_starts, self._rles = [], [], [], [0], []
        polygons: list[Sequence[float]] = []
        for image in data["images"]:
            height, width = sizes[int(image["id"])]
            parsed = [self._parse(a, labels, height, width) for a in by_image.get(int(image["id"]), [])]
            parsed = [p for p in parsed if p is not None]
            if drop_empty and all(is_crowd for _, is_crowd, _ in parsed):
                continue
            self.image_files.append(image["file_name"])
            self.image_ids.append(int(image["id"]))
            sizes_kept.append((height, width))
            for label, is_crowd, segmentation in parsed:
                annotation_labels.append(label)
                crowd.append(is_crowd)
                if isinstance(segmentation, dict):
                    rle_index.append(len(self._rles))
                    self._rles.append(segmentation)
                else:
                    rle_index.append(-1)
                    polygons.extend(segmentation)
                polygon_starts.append(len(polygons))
            image_starts.append(len(annotation_labels))
        lengths = np.asarray([len(p) for p in polygons], np.int64)
        self._coords = np.fromiter(itertools.chain.from_iterable(polygons), np.float64, int(lengths.sum()))
        self._coord_starts = np.concatenate([[0], np.cumsum(lengths)])
        self._sizes = np.asarray(sizes_kept, np.int64).reshape(-1, 2)
        self._image_starts = np.asarray(image_starts, np.int64)
        self._labels = np.asarray(annotation_labels, np.int32)
        self._crowd = np.asarray(crowd, bool)
        self._rle_index = np.asarray(rle_index, np.int64)
        self._polygon_starts = np.asarray(polygon_starts, np.int64)

    def _parse(self, annotation: Mapping[str, Any], labels: Mapping[int, int], height: int, width: int):
        """(label, iscrowd, compressed RLE dict or list of polygons), or None for an annotation without
        a valid polygon; ValueError naming the annotation if it is malformed."""
        path, where = self.annotation_file, f"annotation {annotation.get('id')}"
        label = labels.get(int(annotation["category_id"]))
        if label is None:
            raise _unknown_category(path, where, annotation["category_id"])
        segmentation = annotation.get("segmentation")
        if isinstance(segmentation, dict):
            if "counts" not in segmentation or list(segmentation.get("size", ())) != [height, width]:
                raise ValueError(
                    f"{path!r}: {where} has an RLE without counts or of size {segmentation.get('size')} "
                    f"for an image of {[height, width]}"
                )
            if isinstance(segmentation["counts"], list):  # uncompressed
                segmentation = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(segmentation, list):
            segmentation = [p for p in segmentation if len(p) >= 6 and len(p) % 2 == 0]
            if not segmentation:
                return None
        else:
            raise ValueError(f"{path!r}: {where} has no 'segmentation' (polygons or RLE)")
        return label, bool(annotation.get("iscrowd", 0)), segmentation

    def __len__(self) -> int:
        return len(self.image_files)

    def describe(self, index: int) -> str:
        image = os.path.join(self.image_dir, self.image_files[index])
        return f"image {image!r} (annotations in {self.annotation_file!r})"

    def _rle(self, annotation: int, height: int, width: int) -> dict[str, Any]:
        """The compressed RLE of one stored annotation (polygons are rasterised by pycocotools)."""
        rle = self._rle_index[annotation]
        if rle >= 0:
            return self._rles[rle]
        first, last = self._polygon_starts[annotation], self._polygon_starts[annotation + 1]
        polygons = [self._coords[self._coord_starts[p] : self._coord_starts[p + 1]] for p in range(first, last)]
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path = os.path.join(self.image_dir, self.image_files[index])
        image = read_rgb(image_path)
        height, width = (int(v) for v in self._sizes[index])
        if image.shape[:2] != (height, width):
            raise SampleError(
                f"{image_path!r} is {image.shape[:2]} but {self.annotation_file!r} gives it {(height, width)}"
            )
        first, last = self._image_starts[index], self._image_starts[index + 1]
        rles = [self._rle(a, height, width) for a in range(first, last)]
        crowd = self._crowd[first:last]
        areas = [int(mask_utils.area(rle)) for rle in rles]
        # Crowd first (in order), then non-crowd by decreasing area; a stable sort puts the later of equals on top.
        order = sorted(range(len(rles)), key=lambda k: (not crowd[k], 0 if crowd[k] else -areas[k]))
        segments = np.zeros((height, width), np.int32)
        for k in order:
            segments[mask_utils.decode(rles[k]).astype(bool)] = k + 1
        segments_info = [
            {"id": k + 1, "category_id": int(self._labels[first + k]), "iscrowd": bool(crowd[k]), "isthing": True}
            for k in range(len(rles))
        ]
        return {
            "image": image, "segments": segments, "segments_info": segments_info, "name": self.image_files[index],
            "image_id": self.image_ids[index],
        }  # fmt: skip
