"""A synthetic panoptic data set drawn on the fly: nothing to download, learnable in minutes on a CPU.

Each image is a few large "stuff" regions (sky, grass, water: a Voronoi partition warped by smooth
random fields, each region filled with its class's colour and texture) under 0-8 "thing" shapes
(circle, square, triangle, ring: random size, position and rotation, a per-class colour with
per-instance jitter and a dark outline, so that touching instances of one class stay separable).
Later shapes occlude earlier ones. Sky and water are both blue and differ by texture; circle and ring
by their hole, so the classes take more than a colour lookup.

Every segment has at least `min_area` visible pixels: a thing left with less after occlusion is
removed (its pixels show what lies under it) and a stuff class with less gives its pixels to the
nearest other stuff region, so panoptic quality is well defined on every image. A sample depends on
(seed, index) only, so a data iterator can resume from any index.

`write_coco_panoptic` (command line: `python -m m2f_jax.data.synthetic ROOT --train-images N
--val-images M`) writes the set as a COCO panoptic folder, to exercise the on-disk data path.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any

import numpy as np
from PIL import Image

STUFF = ("sky", "grass", "water")
THINGS = ("circle", "square", "triangle", "ring")

_STUFF_RGB = ((125, 175, 235), (70, 145, 55), (35, 75, 155))
_THING_RGB = ((215, 45, 45), (235, 205, 40), (165, 60, 200), (245, 135, 25))
_STUFF_COUNT_P = (0.15, 0.35, 0.5)  # probability of 1, 2, 3 stuff classes in an image
_MAX_COVERED = 1 / 3  # a new shape is re-placed (up to 4 tries) if more of it covers earlier shapes


class SyntheticDataset:
    """`num_images` images of `image_size` (H, W); sample i is a dict:

    "image" uint8 (H, W, 3); "semantic" int32 (H, W), the class of every pixel; "instances" int32 (H, W),
    segment ids 0..N-1 (stuff segments first, one per stuff class present, ascending class; then things
    in drawing order); "instance_id_to_semantic_id" {segment id: class id}; "segments_info"
    [{"id", "category_id", "isthing", "area"}], the panoptic description of "instances".
    Class ids are 0..6: the stuff classes, then the thing classes (`classes`, `id2label`).
    """

    def __init__(
        self,
        num_images: int,
        image_size: tuple[int, int] = (128, 128),
        seed: int = 0,
        max_things: int = 8,
        no_things_prob: float = 0.1,
        min_area: int = 16,
    ):
        height, width = (int(v) for v in image_size)
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        if height < 16 or width < 16:
            raise ValueError(f"image_size must be at least (16, 16), got {tuple(image_size)}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if max_things < 0 or not 0.0 <= no_things_prob <= 1.0 or min_area < 1:
            raise ValueError(
                f"need max_things >= 0, 0 <= no_things_prob <= 1 and min_area >= 1; got {max_things}, "
                f"{no_things_prob}, {min_area}"
            )
        self.num_images, self.image_size, self.seed = int(num_images), (height, width), int(seed)
        self.max_things, self.no_things_prob, self.min_area = int(max_things), float(no_things_prob), int(min_area)
        names = STUFF + THINGS
        self.classes = [{"id": i, "name": n, "isthing": i >= len(STUFF)} for i, n in enumerate(names)]
        self.id2label = {c["id"]: c["name"] for c in self.classes}

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an integer, got {type(index).__name__}")
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} images")
        return _sample(np.random.default_rng([self.seed, int(index)]), self)


# ----------------------------------------------------------------------------------------------------
# Layout: stuff regions and thing shapes


def _smooth_field(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, amplitude: float) -> np.ndarray:
    """A sum of 3 random low-frequency plane waves (1-3 cycles per image side) at normalised y (H, 1),
    x (1, W); cos(a + b) = cos a cos b - sin a sin b keeps the trigonometry on the axes."""
    out = 0.0
    for _ in range(3):
        angle, freq, phase = rng.uniform(0, 2 * np.pi), rng.uniform(1, 3), rng.uniform(0, 2 * np.pi)
        a, b = 2 * np.pi * freq * np.sin(angle) * y + phase, 2 * np.pi * freq * np.cos(angle) * x
        out = out + np.cos(a) * np.cos(b) - np.sin(a) * np.sin(b)
    return out * (amplitude / 3)


def _stuff_distances(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(stuff classes present (k,), warped distances (k, H, W)); a pixel belongs to its nearest class."""
    count = int(rng.choice(3, p=_STUFF_COUNT_P)) + 1
    classes = np.sort(rng.choice(len(STUFF), count, replace=False))
    scale = math.sqrt(height * width)
    y = np.arange(height)[:, None] / scale
    x = np.arange(width)[None, :] / scale
    centres: list[np.ndarray] = []
    while len(centres) < count:  # centres at least 0.3 apart (a few tries), so regions start large
        for _ in range(10):
            c = rng.uniform(0, 1, 2) * (height / scale, width / scale)
            if all(np.hypot(*(c - o)) > 0.3 for o in centres):
                break
        centres.append(c)
    distances = np.stack([np.hypot(y - cy, x - cx) + _smooth_field(rng, y, x, 0.15) for cy, cx in centres])
    return classes, distances


def _shape(rng: np.random.Generator, kind: int, height: int, width: int) -> tuple[tuple[slice, slice], np.ndarray]:
    """A random shape of thing class `kind` (index into THINGS): its bounding box and mask inside it.

    Sizes are equalised by area (about 3 r^2, r = 8-18% of the image side and at least 6 px, so that a
    shape is at least 12 px across and stride-4 masks can represent it)."""
    r = max(6.0, math.sqrt(height * width) * rng.uniform(0.08, 0.18))
    reach = r * (1.0, 1.2, 1.5, 1.15)[kind]
    cy, cx, theta = rng.uniform(0.05, 0.95) * height, rng.uniform(0.05, 0.95) * width, rng.uniform(0, 2 * np.pi)
    y0, y1 = max(int(cy - reach) - 1, 0), min(int(cy + reach) + 2, height)
    x0, x1 = max(int(cx - reach) - 1, 0), min(int(cx + reach) + 2, width)
    dy = np.arange(y0, y1)[:, None] + 0.5 - cy
    dx = np.arange(x0, x1)[None, :] + 0.5 - cx
    if kind == 0:  # circle
        mask = dy**2 + dx**2 <= reach**2
    elif kind == 1:  # square, rotated; reach = half the diagonal
        u, v = dx * np.cos(theta) + dy * np.sin(theta), dy * np.cos(theta) - dx * np.sin(theta)
        mask = np.maximum(abs(u), abs(v)) <= reach / math.sqrt(2)
    elif kind == 2:  # equilateral triangle, reach = circumradius: inside all three edges at reach / 2
        angles = theta + 2 * np.pi * np.arange(3) / 3
        mask = np.all([dx * np.cos(a) + dy * np.sin(a) <= reach / 2 for a in angles], axis=0)
    else:  # ring, hole 35-50% of the outer radius
        d2 = dy**2 + dx**2
        mask = (d2 <= reach**2) & (d2 >= (reach * rng.uniform(0.35, 0.5)) ** 2)
    return (slice(y0, y1), slice(x0, x1)), mask


def _things(rng: np.random.Generator, data: SyntheticDataset) -> tuple[list[int], list]:
    """Thing classes (indices into THINGS) in drawing order and their (box, mask) shapes."""
    if data.max_things == 0 or rng.random() < data.no_things_prob:
        return [], []
    present = rng.choice(len(THINGS), int(rng.integers(1, len(THINGS) + 1)), replace=False)
    counts = rng.integers(1, 5, len(present))  # 1-4 instances per class present
    while counts.sum() > data.max_things:
        counts[np.argmax(counts)] -= 1
    kinds = rng.permutation(np.repeat(present, counts)).tolist()
    height, width = data.image_size
    occupied = np.zeros((height, width), bool)
    shapes = []
    for kind in kinds:
        for _ in range(4):
            box, mask = _shape(rng, kind, height, width)
            if (occupied[box] & mask).sum() <= _MAX_COVERED * mask.sum():
                break
        occupied[box] |= mask
        shapes.append((box, mask))
    return kinds, shapes


def _owners(shapes: list, keep: list[int], height: int, width: int) -> np.ndarray:
    """(H, W) index into `shapes` of the visible shape (the last drawn of `keep`), -1 where none."""
    owner = np.full((height, width), -1, np.int32)
    for t in keep:
        box, mask = shapes[t]
        owner[box][mask] = t
    return owner


# ----------------------------------------------------------------------------------------------------
# Rendering


def _stuff_pixels(rng: np.random.Generator, cls: int, y: np.ndarray, x: np.ndarray, height: int) -> np.ndarray:
    """(n, 3) colours of stuff class `cls` at pixels (y, x): base colour with jitter, plus its texture."""
    base = np.asarray(_STUFF_RGB[cls], np.float32) + rng.uniform(-15, 15, 3)
    if cls == 0:  # sky: smooth, lighter towards the bottom of the image
        shade = 35 * y / height + rng.normal(0, 3, y.shape)
    elif cls == 1:  # grass: coarse per-pixel noise
        shade = rng.normal(0, 20, y.shape)
    else:  # water: wavy horizontal ripples
        phase = rng.uniform(0, 2 * np.pi)
        shade = 22 * np.sin(2 * np.pi * (y / 5 + 0.15 * np.sin(2 * np.pi * x / 23 + phase))) + rng.normal(0, 4, y.shape)
    return base + shade[:, None].astype(np.float32)


def _draw_thing(rng, image: np.ndarray, kind: int, box, mask: np.ndarray, visible: np.ndarray) -> None:
    """Paints a shape's visible pixels: jittered class colour, mild noise, the shape's 1-px edge darkened."""
    colour = np.asarray(_THING_RGB[kind], np.float32) + rng.uniform(-20, 20, 3)
    padded = np.pad(mask, 1, mode="edge")  # the image border is not an edge
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    pixels = colour + rng.normal(0, 6, (*mask.shape, 1)).astype(np.float32)
    pixels = np.where((mask & ~interior)[..., None], colour * 0.4, pixels)
    region = image[box]
    region[visible] = pixels[visible]


def _sample(rng: np.random.Generator, data: SyntheticDataset) -> dict[str, Any]:
    height, width = data.image_size
    stuff_classes, distances = _stuff_distances(rng, height, width)
    kinds, shapes = _things(rng, data)

    # Things left with fewer than min_area visible pixels are removed (uncovering what lies below,
    # which only grows the others), then stuff classes likewise, keeping the largest.
    owner = _owners(shapes, list(range(len(shapes))), height, width)
    areas = np.bincount(owner[owner >= 0], minlength=len(shapes))
    keep = [t for t in range(len(shapes)) if areas[t] >= data.min_area]
    if len(keep) < len(shapes):
        owner = _owners(shapes, keep, height, width)
    nearest = np.argmin(distances, axis=0)
    stuff_areas = np.bincount(nearest[owner < 0], minlength=len(stuff_classes))
    small = [k for k in range(len(stuff_classes)) if stuff_areas[k] < data.min_area and k != np.argmax(stuff_areas)]
    if small:
        distances[small] = np.inf
        nearest = np.argmin(distances, axis=0)
    stuff = stuff_classes[nearest]

    image = np.empty((height, width, 3), np.float32)
    semantic = stuff.astype(np.int32)
    instances = np.empty((height, width), np.int32)
    mapping: dict[int, int] = {}
    for cls in np.flatnonzero(np.bincount(stuff[owner < 0], minlength=len(STUFF))):
        region = stuff == cls
        y, x = np.nonzero(region)
        image[region] = _stuff_pixels(rng, int(cls), y.astype(np.float32), x.astype(np.float32), height)
        instances[region] = len(mapping)
        mapping[len(mapping)] = int(cls)
    for t in keep:
        box, mask = shapes[t]
        visible = owner[box] == t
        _draw_thing(rng, image, kinds[t], box, mask, visible)
        cls = len(STUFF) + kinds[t]
        semantic[box][visible] = cls
        instances[box][visible] = len(mapping)
        mapping[len(mapping)] = cls

    areas = np.bincount(instances.ravel(), minlength=len(mapping))
    segments_info = [
        {"id": i, "category_id": c, "isthing": c >= len(STUFF), "area": int(areas[i])} for i, c in mapping.items()
    ]
    return {
        "image": np.clip(np.rint(image), 0, 255).astype(np.uint8),
        "semantic": semantic,
        "instances": instances,
        "instance_id_to_semantic_id": mapping,
        "segments_info": segments_info,
    }


# ----------------------------------------------------------------------------------------------------
# Writing the set to disk as COCO panoptic


def write_coco_panoptic(
    root: str | os.PathLike, split: str, num_images: int, image_size: tuple[int, int] = (64, 64), seed: int = 0
) -> str:
    """Writes `SyntheticSource(split, num_images, image_size, seed)` in COCO 2017's panoptic layout under
    `root`: the images as lossless PNGs in `{split}2017/`, their id maps (id = R + 256 G + 256^2 B) in
    `annotations/panoptic_{split}2017/` and `annotations/panoptic_{split}2017.json` ("images",
    "annotations", "categories" with ids 1..7). Image i has id i and file name `%012d.png`. Returns the
    JSON's path.

    The JSON is written last, to a temporary file renamed into place: an interrupted write leaves no
    annotation file, so `CocoPanoptic` refuses the folder instead of reading part of a set (delete the
    leftovers and write again). Refuses (FileExistsError) if any of the split's three paths exists.
    """
    from m2f_jax.data.sources.synthetic import SyntheticSource  # that module imports this one

    source = SyntheticSource(split, num_images, image_size=image_size, seed=seed)
    name = f"{split}2017"
    image_dir = os.path.join(root, name)
    png_dir = os.path.join(root, "annotations", f"panoptic_{name}")
    json_path = png_dir + ".json"
    existing = [p for p in (image_dir, png_dir, json_path) if os.path.exists(p)]
    if existing:
        raise FileExistsError(f"refusing to overwrite the {split} split: {existing} already exist")
    os.makedirs(image_dir)
    os.makedirs(png_dir)
    images, annotations = [], []
    for index in range(len(source)):
        sample = source[index]
        ids, file_name = sample["segments"], sample["name"]
        Image.fromarray(sample["image"]).save(os.path.join(image_dir, file_name))
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 256**2], axis=-1).astype(np.uint8)
        Image.fromarray(rgb).save(os.path.join(png_dir, file_name))
        images.append({"id": index, "file_name": file_name, "height": ids.shape[0], "width": ids.shape[1]})
        annotations.append({"image_id": index, "file_name": file_name, "segments_info": _coco_segments(sample, source)})
    categories = [{"id": c["id"], "name": c["name"], "isthing": int(c["isthing"])} for c in source.classes]
    partial = json_path + ".partial"
    with open(partial, "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    os.replace(partial, json_path)
    return json_path


def _coco_segments(sample: dict[str, Any], source) -> list[dict[str, Any]]:
    """A sample's segments_info as COCO panoptic writes it: data-set category ids, area, bbox [x, y, w, h]
    (every synthetic segment has pixels)."""
    segments = []
    for s in sample["segments_info"]:
        y, x = np.nonzero(sample["segments"] == s["id"])
        bbox = [int(x.min()), int(y.min()), int(x.max() - x.min()) + 1, int(y.max() - y.min()) + 1]
        segments.append(
            {
                "id": s["id"],
                "category_id": source.classes[s["category_id"]]["id"],
                "iscrowd": int(s["iscrowd"]),
                "area": len(y),
                "bbox": bbox,
            }
        )
    return segments


def main(argv: list[str] | None = None) -> None:
    """Command line: writes the train and val splits (val from seed + 10,000, as SyntheticSource) under ROOT."""
    parser = argparse.ArgumentParser(
        prog="python -m m2f_jax.data.synthetic", description="Write the synthetic data set as a COCO panoptic folder."
    )
    parser.add_argument("root", help="folder to write (train2017/, val2017/, annotations/)")
    parser.add_argument("--train-images", type=int, required=True, help="number of training images")
    parser.add_argument("--val-images", type=int, required=True, help="number of validation images")
    parser.add_argument("--image-size", type=int, nargs="+", default=[64], help="H [W] (W = H if omitted)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if len(args.image_size) > 2:
        parser.error(f"--image-size takes H or H W, got {args.image_size}")
    size = (args.image_size[0], args.image_size[-1])
    for split, count in (("train", args.train_images), ("val", args.val_images)):
        try:
            path = write_coco_panoptic(args.root, split, count, image_size=size, seed=args.seed)
        except (FileExistsError, ValueError) as error:
            parser.exit(1, f"error: {error}\n")
        print(f"wrote {count} {split} images ({path})")


if __name__ == "__main__":
    main()
