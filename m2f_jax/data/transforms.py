"""Training augmentations on the host: a sample (image + segment-id map) -> one fixed-size crop.

All three recipes of the original give an image of exactly `crop_size` (padded where the resized image
is smaller) and a `pixel_mask` of its real pixels:
- "lsj" (COCO): horizontal flip, resize so the image fits in `scale * crop_size` with scale uniform in
  [min_scale, max_scale] (0.1-2.0 of 1024), a random `crop_size` crop where larger, padding where smaller.
- "semantic" (ADE20K, Cityscapes): resize the short side to `scale * base_size` (scale one of 0.5, 0.6,
  ..., 2.0), the long side capped at `max_size`; a random crop, retried up to 10 times while one category
  covers `max_category_area` or more of the crop's labelled pixels (one crop when that is 1, as the
  original); photometric distortion; flip; padding.
- "flip": flip only; images must be at most `crop_size` (padded to it). For data already at model size.

Speed: the crop is cut from the source image before resampling (PIL's `resize(box=...)` resamples
only the region the crop keeps), so a 0.1-2.0 jitter of a 640x480 COCO image never builds the 2048-pixel
intermediate. Images resample bilinearly and segment maps by nearest neighbour (PIL, as detectron2's
ResizeTransform); padded pixels get segment 0 (no target), as the original pads labels with ignore.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

KINDS = ("lsj", "semantic", "flip")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    kind: str = "lsj"
    crop_size: tuple[int, int] = (1024, 1024)  # (height, width) of every training image
    min_scale: float = 0.1
    max_scale: float = 2.0
    base_size: int = 512  # "semantic": the short side at scale 1
    max_size: int = 2048  # "semantic": the long side is capped here after scaling
    max_category_area: float = 1.0  # "semantic": a crop where one category covers this much is retried
    photometric: bool = True  # "semantic": brightness, contrast, saturation, hue
    flip: bool = True

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"augment kind must be one of {KINDS}, got {self.kind!r}")
        crop = tuple(int(v) for v in self.crop_size)
        if len(crop) != 2 or min(crop) < 1:
            raise ValueError(f"crop_size must be (height, width) >= 1, got {self.crop_size}")
        object.__setattr__(self, "crop_size", crop)
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {self.min_scale}, {self.max_scale}")
        if self.base_size < 1 or self.max_size < 1 or not 0 < self.max_category_area <= 1:
            raise ValueError(
                f"need base_size >= 1, max_size >= 1, 0 < max_category_area <= 1; got {self.base_size}, "
                f"{self.max_size}, {self.max_category_area}"
            )


def augment(
    image: np.ndarray, segments: np.ndarray, categories: np.ndarray, config: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image uint8 (H, W, 3), segment ids int32 (H, W)) -> (image, segments, pixel_mask) at `crop_size`.

    categories: a lookup from segment id to category (-1 for none), used by the category-area
    constraint; it is only read when `max_category_area < 1`."""
    height, width = image.shape[:2]
    crop_h, crop_w = config.crop_size
    if config.kind == "flip":
        if height > crop_h or width > crop_w:
            raise ValueError(f"image of {height}x{width} is larger than crop_size {config.crop_size} (augment 'flip')")
        scale, top, left = 1.0, 0, 0
    elif config.kind == "lsj":
        jitter = rng.uniform(config.min_scale, config.max_scale)
        scale = min(jitter * crop_h / height, jitter * crop_w / width)
        top, left = _random_offset(rng, height, width, scale, config.crop_size)
    else:
        short = rng.choice(semantic_scales(config)) * config.base_size
        scale = min(short / min(height, width), config.max_size / max(height, width))
        top, left = _constrained_offset(rng, segments, categories, scale, config)
    image, segments = _resized_crop(image, segments, scale, top, left, config.crop_size)
    if config.kind == "semantic" and config.photometric:
        image = photometric_distortion(image, rng)
    if config.flip and rng.random() < 0.5:
        image, segments = image[:, ::-1], segments[:, ::-1]
    return _pad(image, segments, config.crop_size)


def semantic_scales(config: AugmentConfig) -> np.ndarray:
    """The short-side scales the "semantic" recipe draws from: min_scale to max_scale in steps of 0.1, as
    the original's list of sizes (int(x * 0.1 * base) for x in 5..20) chosen from uniformly."""
    steps = int(round((config.max_scale - config.min_scale) / 0.1))
    return config.min_scale + 0.1 * np.arange(steps + 1)


def _scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def _random_offset(rng, height: int, width: int, scale: float, crop: tuple[int, int]) -> tuple[int, int]:
    """A uniformly random top-left corner of the crop in the resized image (0 where it is smaller)."""
    new_h, new_w = _scaled_size(height, width, scale)
    return int(rng.integers(0, max(new_h - crop[0], 0) + 1)), int(rng.integers(0, max(new_w - crop[1], 0) + 1))


def _constrained_offset(rng, segments: np.ndarray, categories: np.ndarray, scale: float, config: AugmentConfig):
    """detectron2's RandomCrop_CategoryAreaConstraint: one random crop when `max_category_area` is 1 (no
    constraint), else up to 10 random crops, the first whose labelled pixels hold more than one category
    with none covering `max_category_area` or more (the counts are taken on the source pixels under the
    crop, which the nearest-neighbour resize keeps in proportion)."""
    height, width = segments.shape
    if config.max_category_area >= 1:  # retrying here would favour crops with several categories
        return _random_offset(rng, height, width, scale, config.crop_size)
    for _ in range(10):
        top, left = _random_offset(rng, height, width, scale, config.crop_size)
        y0, x0 = int(top / scale), int(left / scale)
        y1, x1 = int(np.ceil((top + config.crop_size[0]) / scale)), int(np.ceil((left + config.crop_size[1]) / scale))
        labels = categories[segments[y0:y1, x0:x1]]
        counts = np.bincount(labels[labels >= 0])
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max() / counts.sum() < config.max_category_area:
            break
    return top, left


def _resized_crop(image, segments, scale: float, top: int, left: int, crop: tuple[int, int]):
    """The crop [top, top + crop) x [left, left + crop) of the image resized by `scale`, resampling only
    that region of the source."""
    height, width = image.shape[:2]
    new_h, new_w = _scaled_size(height, width, scale)
    out_h, out_w = min(crop[0], new_h - top), min(crop[1], new_w - left)
    sy, sx = height / new_h, width / new_w
    box = (left * sx, top * sy, (left + out_w) * sx, (top + out_h) * sy)
    if (out_h, out_w) == (height, width) and box == (0, 0, width, height):
        return image, segments
    resized = Image.fromarray(image).resize((out_w, out_h), Image.Resampling.BILINEAR, box=box)
    ids = Image.fromarray(segments, mode="I").resize((out_w, out_h), Image.Resampling.NEAREST, box=box)
    return np.asarray(resized), np.asarray(ids, np.int32)


def _pad(image: np.ndarray, segments: np.ndarray, crop: tuple[int, int]):
    height, width = image.shape[:2]
    out_image = np.zeros((*crop, 3), np.uint8)
    out_segments = np.zeros(crop, np.int32)
    pixel_mask = np.zeros(crop, np.bool_)
    out_image[:height, :width] = image
    out_segments[:height, :width] = segments
    pixel_mask[:height, :width] = True
    return out_image, out_segments, pixel_mask


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The SSD colour augmentation the original uses for semantic training (each step with probability
    1/2): brightness +-32, contrast x[0.5, 1.5] (before or after the HSV steps), saturation x[0.5, 1.5],
    hue +-18 degrees (of 180); values clipped to [0, 255] after each step."""
    x = image.astype(np.float32)
    if rng.random() < 0.5:
        x = np.clip(x + rng.uniform(-32, 32), 0, 255)
    contrast_first = rng.random() < 0.5
    contrast = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    if contrast is not None and contrast_first:
        x = np.clip(x * contrast, 0, 255)
    saturation = rng.uniform(0.5, 1.5) if rng.random() < 0.5 else None
    hue = rng.uniform(-18, 18) if rng.random() < 0.5 else None
    if saturation is not None or hue is not None:
        hsv = np.asarray(Image.fromarray(x.astype(np.uint8)).convert("HSV"), np.float32)
        if saturation is not None:
            hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255)
        if hue is not None:  # PIL's hue runs over 0-255 for 360 degrees; 18 of 180 is 36 degrees
            hsv[..., 0] = np.mod(hsv[..., 0] + hue * 256 / 180, 256)
        x = np.asarray(Image.fromarray(hsv.astype(np.uint8), mode="HSV").convert("RGB"), np.float32)
    if contrast is not None and not contrast_first:
        x = np.clip(x * contrast, 0, 255)
    return x.astype(np.uint8)
