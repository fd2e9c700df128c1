"""Checks a data folder in the own-data format (see `m2f_jax.data.sources.folder`) before training.

    python -m m2f_jax.data.validate DIR [--split train] [--split val]

reads every file once and reports every problem in one pass, grouped by kind, each line naming the
file; it exits 1 if there is any, else 0 after a summary (images per split; images, pixels and
instances per class). A training run that meets a broken file stops at that file; this finds them all.

The checks live here once: `FolderSource` raises with the problems `read_labels` and `pair_split`
find at construction and with those `read_sample` finds when it reads a sample, and the Hugging Face
source uses the same checks on its masks (`check_semantic`, `check_instances`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from m2f_jax.data.sources.base import SampleError, read_label_png, read_rgb

SPLITS = ("train", "val")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_IGNORE_INDEX = 255

# Every kind of problem, in report order.
KINDS = {
    "labels": "labels.json",
    "missing_folder": "missing folders",
    "empty": "empty splits",
    "duplicate_name": "images sharing a name",
    "unsupported_file": "unsupported files",
    "missing_mask": "images without a mask",
    "extra_mask": "masks without an image",
    "unreadable": "unreadable or corrupt files",
    "mask_format": "masks that are not single-channel",
    "size_mismatch": "mask and image sizes differ",
    "unknown_label": "unknown label values",
    "instance": "instance problems",
}


@dataclass(frozen=True)
class Problem:
    """One problem: its kind (a key of KINDS), the file or folder it is in, and what is wrong."""

    kind: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class Labels:
    """The classes of a data set: {"id", "name", "isthing"} in contiguous-label order, and the ignore value."""

    classes: tuple[dict[str, Any], ...]
    ignore_index: int = DEFAULT_IGNORE_INDEX
    # data set id -> contiguous label (-1: not a class), for ids 0..max id
    lut: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        lut = np.full(max(c["id"] for c in self.classes) + 1, -1, np.int64)
        lut[[c["id"] for c in self.classes]] = np.arange(len(self.classes))
        object.__setattr__(self, "lut", lut)

    def describe(self, label: int) -> str:
        """A contiguous label (-1: ignore) as the user wrote it."""
        if label < 0:
            return f"unlabelled (ignore_index {self.ignore_index})"
        return f"{self.classes[label]['name']!r} (id {self.classes[label]['id']})"


@dataclass(frozen=True)
class SampleFiles:
    """The files of one folder sample; `instances` is None when its split has no instances/ folder."""

    name: str
    image: str
    semantic: str
    instances: str | None = None


@dataclass(frozen=True)
class CheckedSample:
    """A sample's arrays once they pass every check: the image, its contiguous labels (-1 = ignore),
    the instance map (None without one) and each instance's contiguous label."""

    image: np.ndarray
    labels: np.ndarray
    instances: np.ndarray | None
    instance_labels: dict[int, int]


def read_labels(root: str | os.PathLike) -> tuple[Labels | None, list[Problem]]:
    """ROOT/labels.json -> (Labels, []), or (None, every problem found in it)."""
    path = os.path.join(os.fspath(root), "labels.json")

    def problem(message: str) -> tuple[None, list[Problem]]:
        return None, [Problem("labels", path, message)]

    if not os.path.isfile(path):
        return problem("no such file; it lists the classes (see m2f_jax.data.sources.folder)")
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return problem(f"not readable as JSON ({error})")
    if not isinstance(spec, dict):
        return problem(f"must hold a JSON object, got {type(spec).__name__}")
    classes = spec.get("classes")
    if not isinstance(classes, list) or not classes:
        return problem('"classes" must be a non-empty list of {"id", "name", "isthing"}')
    problems, seen_ids, seen_names = [], set(), set()
    for i, c in enumerate(classes):
        where = f'"classes"[{i}]'
        if not isinstance(c, dict) or {"id", "name", "isthing"} - set(c):
            problems.append(Problem("labels", path, f'{where} must be an object with "id", "name" and "isthing"'))
            continue
        if not _is_int(c["id"]) or c["id"] < 0:
            problems.append(Problem("labels", path, f'{where} "id" must be a non-negative integer, got {c["id"]!r}'))
        elif c["id"] in seen_ids:
            problems.append(Problem("labels", path, f'{where} "id" {c["id"]} is used twice'))
        if not isinstance(c["name"], str) or not c["name"]:
            problems.append(Problem("labels", path, f'{where} "name" must be a non-empty string, got {c["name"]!r}'))
        elif c["name"] in seen_names:
            problems.append(Problem("labels", path, f'{where} "name" {c["name"]!r} is used twice'))
        if not isinstance(c["isthing"], bool):
            problems.append(Problem("labels", path, f'{where} "isthing" must be true or false, got {c["isthing"]!r}'))
        seen_ids.add(c["id"])
        seen_names.add(c["name"])
    ignore = spec.get("ignore_index", DEFAULT_IGNORE_INDEX)
    if not _is_int(ignore) or ignore < 0:
        problems.append(Problem("labels", path, f'"ignore_index" must be a non-negative integer, got {ignore!r}'))
    elif ignore in seen_ids:
        problems.append(Problem("labels", path, f'"ignore_index" {ignore} is also a class id in "classes"'))
    if problems:
        return None, problems
    kept = tuple({"id": c["id"], "name": c["name"], "isthing": c["isthing"]} for c in classes)
    return Labels(kept, ignore), []


def pair_split(root: str | os.PathLike, split: str) -> tuple[list[SampleFiles], list[Problem]]:
    """The samples of ROOT/SPLIT paired by file stem (listing only, sorted by name) and the pairing problems."""
    split_dir = os.path.join(os.fspath(root), split)
    folders = {sub: os.path.join(split_dir, sub) for sub in ("images", "semantic", "instances")}
    missing = [Problem("missing_folder", folders[s], "no such folder") for s in ("images", "semantic")]
    missing = [p for p in missing if not os.path.isdir(p.path)]
    if missing:
        return [], missing
    problems = []
    images = _list(folders["images"], IMAGE_EXTENSIONS, "an image", problems)
    semantic = _list(folders["semantic"], (".png",), "a mask (masks are lossless .png files)", problems)
    instances = None
    if os.path.isdir(folders["instances"]):
        instances = _list(folders["instances"], (".png",), "a mask (masks are lossless .png files)", problems)
    if not images:
        problems.append(Problem("empty", folders["images"], "no images"))
    masks = [("semantic", semantic)] + ([("instances", instances)] if instances is not None else [])
    samples = []
    for name, image in sorted(images.items()):
        absent = [f"{split}/{sub}/{name}.png" for sub, found in masks if name not in found]
        for mask in absent:
            problems.append(Problem("missing_mask", image, f"no mask {mask}"))
        if not absent:
            samples.append(SampleFiles(name, image, semantic[name], instances[name] if instances is not None else None))
    for _, found in masks:
        for name in sorted(set(found) - set(images)):
            problems.append(Problem("extra_mask", found[name], f"no image {split}/images/{name}.*"))
    return samples, problems


def check_semantic(semantic: np.ndarray, labels: Labels, path: str) -> tuple[np.ndarray | None, list[Problem]]:
    """A class-id map -> (contiguous labels, -1 for ignore_index), or (None, problems) for unknown values."""
    if semantic.ndim != 2:
        return None, [Problem("mask_format", path, f"must be single-channel (class ids), got shape {semantic.shape}")]
    values = np.unique(semantic).astype(np.int64)
    known = (values >= 0) & (values < len(labels.lut))
    mapped = np.where(known, labels.lut[np.where(known, values, 0)], -1)
    unknown = values[(mapped < 0) & (values != labels.ignore_index)]
    if unknown.size:
        shown = ", ".join(str(v) for v in unknown[:20]) + (", ..." if unknown.size > 20 else "")
        message = f"values {shown} are neither class ids of labels.json nor ignore_index {labels.ignore_index}"
        return None, [Problem("unknown_label", path, message)]
    lut = np.full(int(values.max()) + 1, -1, np.int32)
    lut[values] = mapped
    return lut[semantic], []


def check_instances(
    instances: np.ndarray, labels_map: np.ndarray, labels: Labels, path: str
) -> tuple[dict[int, int], list[Problem]]:
    """Each instance (value > 0) must lie on one thing class: ({instance: contiguous label}, problems)."""
    on = instances > 0
    width = len(labels.classes) + 1
    pairs = np.unique(instances[on].astype(np.int64) * width + labels_map[on] + 1)
    ids, classes = pairs // width, pairs % width - 1
    found, problems = {}, []
    for instance in np.unique(ids).tolist():
        under = classes[ids == instance].tolist()
        if len(under) > 1:
            spans = ", ".join(labels.describe(c) for c in under)
            problems.append(Problem("instance", path, f"instance {instance} covers several classes: {spans}"))
        elif under[0] < 0 or not labels.classes[under[0]]["isthing"]:
            problems.append(
                Problem("instance", path, f"instance {instance} lies on {labels.describe(under[0])}, not a thing class")
            )
        else:
            found[instance] = under[0]
    return found, problems


def read_sample(files: SampleFiles, labels: Labels) -> tuple[CheckedSample | None, list[Problem]]:
    """Reads a sample's files once and checks them: (the arrays, []) or (None, every problem found)."""
    problems: list[Problem] = []
    image = _read(read_rgb, files.image, problems)
    semantic = _read(read_label_png, files.semantic, problems)
    instances = _read(read_label_png, files.instances, problems) if files.instances else None
    labels_map = None
    if semantic is not None:
        labels_map, found = check_semantic(semantic, labels, files.semantic)
        problems += found
    if instances is not None and instances.ndim != 2:
        message = f"must be single-channel (instance ids), got shape {instances.shape}"
        problems.append(Problem("mask_format", files.instances, message))
        instances = None
    for path, mask in ((files.semantic, semantic), (files.instances, instances)):
        if image is not None and mask is not None and mask.shape[:2] != image.shape[:2]:
            size, image_size = _size(mask), _size(image)
            message = f"size {size} differs from the image's {image_size} ({files.image})"
            problems.append(Problem("size_mismatch", path, message))
    if problems:
        return None, problems
    instance_labels = {}
    if instances is not None:
        instance_labels, problems = check_instances(instances, labels_map, labels, files.instances)
        if problems:
            return None, problems
    return CheckedSample(image, labels_map, instances, instance_labels), []


@dataclass
class Summary:
    """What a valid folder holds: images per split; images, pixels and instances per contiguous label."""

    images: dict[str, int] = field(default_factory=dict)
    class_images: np.ndarray | None = None
    class_pixels: np.ndarray | None = None
    class_instances: np.ndarray | None = None


def validate(root: str | os.PathLike, splits: Sequence[str] | None = None, progress: bool = False) -> list[Problem]:
    """Every problem of the folder ROOT (both splits present when `splits` is None); [] if it is valid."""
    return check_folder(root, splits, progress)[0]


def check_folder(
    root: str | os.PathLike, splits: Sequence[str] | None = None, progress: bool = False
) -> tuple[list[Problem], Summary]:
    """`validate` and the summary of what it read (a tqdm bar on stderr with `progress`)."""
    from tqdm import tqdm

    root = os.fspath(root)
    if not os.path.isdir(root):
        return [Problem("missing_folder", root, "no such folder")], Summary()
    labels, problems = read_labels(root)
    if splits is None:
        splits = [s for s in SPLITS if os.path.isdir(os.path.join(root, s))]
        if not splits:
            problems.append(Problem("empty", root, f"no split folder ({' or '.join(SPLITS)})"))
    summary = Summary()
    samples = []
    for split in splits:
        if not os.path.isdir(os.path.join(root, split)):
            problems.append(Problem("missing_folder", os.path.join(root, split), "no such folder"))
            continue
        found, pairing = pair_split(root, split)
        problems += pairing
        samples += found
        summary.images[split] = len(found)
    if labels is None:  # masks cannot be checked without the classes
        return _sorted(problems), summary
    num = len(labels.classes)
    summary.class_images, summary.class_pixels, summary.class_instances = (np.zeros(num, np.int64) for _ in range(3))
    for files in tqdm(samples, desc="checking", unit="image", file=sys.stderr, disable=not progress):
        sample, found = read_sample(files, labels)
        problems += found
        if sample is None:
            continue
        pixels = np.bincount(sample.labels[sample.labels >= 0], minlength=num)
        summary.class_pixels += pixels
        summary.class_images += pixels > 0
        summary.class_instances += np.bincount(list(sample.instance_labels.values()), minlength=num).astype(np.int64)
    return _sorted(problems), summary


def report(problems: Sequence[Problem]) -> str:
    """The problems grouped by kind, one line each naming its file."""
    groups = defaultdict(list)
    for p in problems:
        groups[p.kind].append(p)
    lines = [f"{len(problems)} problem{'s' * (len(problems) != 1)} found:"]
    for kind, title in KINDS.items():
        if groups[kind]:
            lines.append(f"\n{title} ({len(groups[kind])}):")
            lines += [f"  {p}" for p in groups[kind]]
    return "\n".join(lines)


def summarize(labels: Labels, summary: Summary) -> str:
    """Images per split, then one line per class: images, pixels (share of labelled pixels) and instances."""
    lines = ["images: " + ", ".join(f"{split} {n}" for split, n in summary.images.items())]
    total = max(int(summary.class_pixels.sum()), 1)
    lines.append(f"{'id':>6}  {'name':<24} {'kind':<5} {'images':>8} {'pixels':>12} {'share':>7} {'instances':>9}")
    for c, images, pixels, instances in zip(
        labels.classes, summary.class_images, summary.class_pixels, summary.class_instances, strict=True
    ):
        kind = "thing" if c["isthing"] else "stuff"
        lines.append(
            f"{c['id']:>6}  {c['name'][:24]:<24} {kind:<5} {images:>8} {pixels:>12} {pixels / total:>7.1%}"
            f" {instances:>9}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m m2f_jax.data.validate",
        description="Check a data folder in the own-data format (labels.json, SPLIT/images, SPLIT/semantic, "
        "SPLIT/instances): reads every file and reports every problem.",
    )
    parser.add_argument("root", help="the data folder (holding labels.json)")
    parser.add_argument(
        "--split", action="append", choices=SPLITS, help="a split to check (repeatable; default: those present)"
    )
    args = parser.parse_args(argv)
    problems, summary = check_folder(args.root, args.split, progress=True)
    if problems:
        print(report(problems))
        return 1
    print(f"{args.root}: no problems")
    print(summarize(read_labels(args.root)[0], summary))
    return 0


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _list(folder: str, extensions: tuple[str, ...], what: str, problems: list[Problem]) -> dict[str, str]:
    """stem -> path of the files of `folder` with one of `extensions` (hidden files skipped)."""
    found: dict[str, str] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        stem, ext = os.path.splitext(entry.name)
        if ext.lower() not in extensions:
            problems.append(Problem("unsupported_file", entry.path, f"not {what} ({', '.join(extensions)})"))
        elif stem in found:
            problems.append(Problem("duplicate_name", entry.path, f"shares its name with {found[stem]}"))
        else:
            found[stem] = entry.path
    return found


def _size(array: np.ndarray) -> str:
    return f"{array.shape[1]}x{array.shape[0]}"


def _read(reader, path: str, problems: list[Problem]) -> np.ndarray | None:
    try:
        return reader(path)
    except SampleError as error:
        problems.append(Problem("unreadable", path, str(error)))
        return None


def _sorted(problems: list[Problem]) -> list[Problem]:
    order = {kind: i for i, kind in enumerate(KINDS)}
    return sorted(problems, key=lambda p: (order[p.kind], p.path))


if __name__ == "__main__":
    sys.exit(main())
