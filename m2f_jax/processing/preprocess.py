"""Images (and segmentation maps) -> padded NHWC model inputs and training targets.

`ImageProcessor` performs the operations of HF's `Mask2FormerImageProcessor` (its default torchvision
backend), in numpy on the host, with the same settings and `preprocessor_config.json`:

1. resize: to `size` (shortest/longest edge keeping the aspect ratio, or a fixed height/width, or a
   max height/width), then each side rounded UP to a multiple of `size_divisor` (HF stretches the image
   by up to size_divisor - 1 pixels; the original Mask2Former pads instead). Images resize bilinearly
   with antialiasing as torch's `interpolate(..., mode="bilinear", antialias=True)`: uint8 images bit for
   bit with its fixed-point path (int16 weights, horizontal pass then vertical pass, rounding to uint8 in
   between; what torchvision runs on AVX2 CPUs); float images in float64 (equal to torch's float64
   result to 1e-12; torch's float32 kernel strays by up to ~1e-4 on [0, 1] values). Segmentation maps
   resize with torch's "nearest-exact" (the source pixel under each output pixel's centre), bit for bit.
2. rescale (x * rescale_factor) and normalize ((x - mean) / std), fused in float32 as HF does.
3. pad bottom/right with zeros to the largest size in the batch rounded up to a multiple of
   `size_divisor`, or to `pad_size`; `pixel_mask` is True on real pixels.

Where this differs from HF, deliberately: the binary target masks are padded with 0 (HF pads them with
`ignore_index`, so a padded pixel reads as belonging to every segment); the padded batch size is rounded
up to `size_divisor` also when do_resize=False (HF then pads to the batch maximum only); RGBA images
lose their alpha channel instead of being composited onto white (which HF does only when asked with
`do_convert_rgb`; without it HF fails on RGBA and grayscale input); integer images other than uint8 go
through the uint8 path when their values fit in [0, 255] and are refused otherwise; the legacy
`reduce_labels` key of older configs is read as `do_reduce_labels` (transformers 4 did this, 5 ignores
it); bad input is refused before any work with a message that says what was expected.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from m2f_jax import hub
from m2f_jax.processing import image_io, postprocess
from m2f_jax.processing.targets import instance_to_targets, pad_targets_batch, semantic_to_targets

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BILINEAR = 2  # PIL.Image.Resampling.BILINEAR, HF's `resample` value; the only one Mask2Former uses
CONFIG_NAME = "preprocessor_config.json"

_CHANNEL_COUNTS = (1, 3, 4)
_TENSOR_TYPES = (None, "np", "jax", "pt")
_SIZE_KEYS = ({"shortest_edge", "longest_edge"}, {"height", "width"}, {"max_height", "max_width"})


# ----------------------------------------------------------------------------------------------------
# Resizing kernels (numpy reproductions of torch's CPU kernels)


def _bilinear_aa_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Antialiased bilinear weights of one axis: first source index (out,) and weights (out, taps) float64.

    torch's `_compute_indices_min_size_weights_aa` (align_corners=False, no scale factor): a triangle
    filter widened by the downscaling factor, normalised per output pixel, summed in tap order.
    """
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    taps = int(math.ceil(support)) * 2 + 1
    centre = scale * (np.arange(out_size) + 0.5)
    start = np.maximum(np.trunc(centre - support + 0.5), 0).astype(np.int64)
    count = np.clip(np.minimum(np.trunc(centre + support + 0.5), in_size).astype(np.int64) - start, 0, taps)
    j = np.arange(taps)
    weights = np.maximum(0.0, 1.0 - np.abs((j + start[:, None] - centre[:, None] + 0.5) * invscale))
    weights[j >= count[:, None]] = 0.0
    total = np.zeros(out_size)
    for k in range(taps):  # sequential, as the C loop (numpy's pairwise sum would round differently)
        total += weights[:, k]
    weights = np.divide(weights, total[:, None], out=weights, where=total[:, None] != 0)
    return start, weights


def _int16_weights(weights: np.ndarray) -> tuple[np.ndarray, int]:
    """torch's `_compute_index_ranges_int16_weights`: weights scaled to int16 with the most bits that fit."""
    wt_max = float(weights.max())
    precision = 0
    while precision < 22 and int(0.5 + wt_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    return np.trunc(0.5 + weights * (1 << precision)).astype(np.int32), precision


def _resize_axis(x: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    """One separable bilinear pass along `axis` (0 or 1) of a (H, W, C) uint8 or float64 array."""
    in_size = x.shape[axis]
    start, weights = _bilinear_aa_weights(in_size, out_size)
    shape = [1, 1, 1]
    shape[axis] = out_size
    if x.dtype == np.uint8:
        weights, precision = _int16_weights(weights)
        acc = np.full([out_size if a == axis else n for a, n in enumerate(x.shape)], 1 << (precision - 1), np.int32)
    else:
        acc = np.zeros([out_size if a == axis else n for a, n in enumerate(x.shape)], np.float64)
    for k in range(weights.shape[1]):
        source = np.take(x, np.minimum(start + k, in_size - 1), axis=axis)
        acc += source * weights[:, k].reshape(shape)
    if x.dtype == np.uint8:
        return np.clip(acc >> precision, 0, 255).astype(np.uint8)
    return acc


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) uint8 or float -> (height, width, C), as torch's antialiased bilinear interpolate.

    uint8 stays uint8 (torch's fixed-point path, exact); floats are computed and returned in float64.
    Horizontal pass first, then vertical, each skipped when that side keeps its size.
    """
    x = image if image.dtype == np.uint8 else image.astype(np.float64)
    if x.shape[1] != width:
        x = _resize_axis(x, width, axis=1)
    if x.shape[0] != height:
        x = _resize_axis(x, height, axis=0)
    return x


def _nearest_exact_index(in_size: int, out_size: int) -> np.ndarray:
    """torch's nearest-exact source indices floor((i + 0.5) * in / out), rounded as its CPU kernel rounds.

    torch computes src = scale * (i + 0.5) - 0.5 with a fused multiply-add in float32 (the float64 product
    below is exact, so one rounding to float32 reproduces it), then floor(src + 0.5) after a float32
    rounding. Only exact ties (the output pixel centre on a source pixel border) depend on this; for
    outputs of a few rows or columns torch rounds some ties the other way.
    """
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    source = np.maximum((scale * (np.arange(out_size) + 0.5) - 0.5).astype(np.float32), 0)
    index = np.floor((source.astype(np.float64) + 0.5).astype(np.float32)).astype(np.int64)
    return np.minimum(index, in_size - 1)


def resize_nearest(label_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) map -> (height, width) by nearest-exact sampling (labels are copied, never mixed)."""
    rows = _nearest_exact_index(label_map.shape[0], height)
    cols = _nearest_exact_index(label_map.shape[1], width)
    return label_map[rows[:, None], cols[None, :]]


# ----------------------------------------------------------------------------------------------------
# Input checking and conversion


def _describe(x: Any) -> str:
    shape = getattr(x, "shape", None)
    return f"{type(x).__name__} with shape {tuple(shape)}" if shape is not None else type(x).__name__


def _as_array(item: Any, where: str) -> tuple[np.ndarray, bool]:
    """A PIL image, file path or array-like -> (numpy array, whether its layout is known to be (H, W, C)).

    Files and PIL images go through `image_io` (EXIF orientation, RGB, wide modes refused) and are
    always (H, W, 3); arrays are taken as they are."""
    if isinstance(item, (str, os.PathLike)):
        return image_io.read_image(item, where), True
    if isinstance(item, Image.Image):
        return image_io.pil_to_rgb(item, where), True
    if isinstance(item, np.ndarray) or hasattr(item, "__array__"):
        return np.asarray(item), False
    raise TypeError(
        f"{where}: expected a PIL image, a numpy array (H, W), (H, W, C) or (C, H, W), or a file path; "
        f"got {_describe(item)}"
    )


def _check_values(array: np.ndarray, where: str) -> np.ndarray:
    """uint8 stays; other integers must fit in [0, 255] (-> uint8); floats must be finite (-> float64)."""
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"{where}: integer images must have values in [0, 255], got [{low}, {high}]; "
                "convert other ranges (e.g. 16-bit) to float or uint8 first"
            )
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{where}: the image contains NaN or infinite values")
        return array.astype(np.float64)
    raise TypeError(f"{where}: expected an integer or floating-point image, got dtype {array.dtype}")


def _channel_layout(shape: tuple[int, ...], where: str, input_data_format: str | None) -> str:
    """The layout of a 3-D array: as given, else inferred when only one reading has 1, 3 or 4 channels.
    A shape that reads both ways (3x3x3, 1x100x3, 4x5x3, ...) is refused rather than guessed."""
    if input_data_format is not None:
        return input_data_format
    first, last = shape[0] in _CHANNEL_COUNTS, shape[-1] in _CHANNEL_COUNTS
    if first and last:
        raise ValueError(
            f"{where}: shape {shape} reads both as (C, H, W) and as (H, W, C); pass "
            "input_data_format='channels_last' or 'channels_first'"
        )
    if not (first or last):
        raise ValueError(
            f"{where}: cannot tell the channel axis of shape {shape}: expected 1, 3 or 4 channels "
            "first (C, H, W) or last (H, W, C)"
        )
    return "channels_first" if first else "channels_last"


def _to_hwc(array: np.ndarray, where: str, layout: str | None) -> np.ndarray:
    """(H, W), or (H, W, C) / (C, H, W) as `layout` says, with C in 1/3/4 -> (H, W, 3): gray repeated,
    alpha dropped."""
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim == 3:
        if layout == "channels_first":
            array = np.moveaxis(array, 0, -1)
    else:
        raise ValueError(
            f"{where}: expected an image of rank 2 (H, W) or 3 (H, W, C)/(C, H, W), got shape {array.shape}"
        )
    if 0 in array.shape:
        raise ValueError(f"{where}: the image has a zero-size dimension, shape {array.shape} (H, W, C)")
    channels = array.shape[-1]
    if channels == 1:
        return np.repeat(array, 3, axis=-1)
    if channels == 4:
        return array[..., :3]
    if channels != 3:
        raise ValueError(f"{where}: expected 1, 3 or 4 channels, got {channels} (shape {array.shape} as H, W, C)")
    return array


def _as_list(items: Any, name: str, batch_ndim: int) -> list[Any]:
    """One item or a batch -> list: lists, tuples and arrays of rank `batch_ndim` are batches."""
    if isinstance(items, (list, tuple)) or (isinstance(items, np.ndarray) and items.ndim == batch_ndim):
        batch = list(items)
    else:
        batch = [items]
    if not batch:
        raise ValueError(f"{name} is empty")
    return batch


def _segmentation_map(item: Any, where: str, image_size: tuple[int, int]) -> np.ndarray:
    """A (H, W) integer map matching its image's size (PIL 'L'/'P'/'I' images and paths are read as is)."""
    if isinstance(item, (str, os.PathLike)):
        item = image_io.open_image(item, where)
    seg = np.asarray(item)
    if seg.ndim != 2:
        raise ValueError(
            f"{where}: expected a 2-D (H, W) map of class or instance ids, got shape {seg.shape} "
            "(convert RGB-encoded panoptic PNGs to ids first)"
        )
    if not (np.issubdtype(seg.dtype, np.integer) or seg.dtype == np.bool_):
        raise TypeError(f"{where}: expected integer class/instance ids, got dtype {seg.dtype}")
    if seg.shape != image_size:
        raise ValueError(f"{where}: shape {seg.shape} does not match its image's (H, W) = {image_size}")
    return seg


# ----------------------------------------------------------------------------------------------------
# The processor


def _size_dict(size: Any, max_size: int | None = None) -> dict[str, int]:
    """HF's size forms -> dict: int (shortest edge, + max_size as longest), (h, w), or a dict of one key set."""
    if isinstance(size, int):
        size = {"shortest_edge": size} if max_size is None else {"shortest_edge": size, "longest_edge": max_size}
    elif isinstance(size, (list, tuple)) and len(size) == 2:
        size = {"height": size[0], "width": size[1]}
    if not isinstance(size, Mapping):
        raise TypeError(f"size must be a dict, an int or (height, width), got {size!r}")
    size = {k: v for k, v in size.items() if v is not None}
    if set(size) not in _SIZE_KEYS:
        raise ValueError(f"size must have the keys of one of {[sorted(k) for k in _SIZE_KEYS]}, got {size}")
    if any(not isinstance(v, int) or v < 1 for v in size.values()):
        raise ValueError(f"size values must be positive integers, got {size}")
    return dict(size)


@dataclasses.dataclass(frozen=True)
class ImageProcessor:
    """HF `Mask2FormerImageProcessor` settings and operations; call it on images to get model inputs.

    Images: PIL images, file paths, or arrays (H, W), (H, W, C) or (C, H, W) with C in 1/3/4, uint8 or
    float, any sizes; one image or a list (or a (B, H, W, C) array). Files and PIL images are read by
    `image_io` (upright per EXIF, RGB; 16-bit and float modes refused) and are always (H, W, C). An
    array is read as channels-first only when its shape allows no other reading (a warning says so);
    one that reads both ways (e.g. 3x3x3) needs input_data_format. Conversions: grayscale is repeated
    to 3 channels, an alpha channel is dropped, other integer arrays are taken as uint8 if their values
    fit. Float images are rescaled by `rescale_factor` like uint8 ones when do_rescale is True (HF's
    semantics): for floats already in [0, 1] use do_rescale=False (a warning says so otherwise).
    """

    do_resize: bool = True
    size: dict[str, int] = dataclasses.field(default_factory=lambda: {"shortest_edge": 800, "longest_edge": 1333})
    resample: int = BILINEAR
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    size_divisor: int = 32
    pad_size: dict[str, int] | None = None
    ignore_index: int | None = None
    do_reduce_labels: bool = False
    num_labels: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "size", _size_dict(self.size))
        if self.pad_size is not None:
            pad = _size_dict(self.pad_size)
            if set(pad) != {"height", "width"}:
                raise ValueError(f"pad_size must be {{'height': h, 'width': w}}, got {self.pad_size}")
            object.__setattr__(self, "pad_size", pad)
        if int(self.resample) != BILINEAR:
            raise ValueError(f"only bilinear resampling (resample={BILINEAR}) is implemented, got {self.resample}")
        object.__setattr__(self, "resample", int(self.resample))
        for name in ("image_mean", "image_std"):
            value = tuple(float(v) for v in np.broadcast_to(np.asarray(getattr(self, name), np.float64), (3,)))
            object.__setattr__(self, name, value)
        if min(self.image_std) <= 0:
            raise ValueError(f"image_std must be positive, got {self.image_std}")
        if self.rescale_factor <= 0 or self.size_divisor < 0:
            raise ValueError(
                f"need rescale_factor > 0 and size_divisor >= 0, got {self.rescale_factor}, {self.size_divisor}"
            )

    # -- configuration files ------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> ImageProcessor:
        """From HF's preprocessor config dict; unknown keys are ignored, `max_size` and `reduce_labels` read."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in config.items() if k in fields and v is not None}
        max_size = config.get("max_size")
        if "size" not in kwargs and max_size is not None:
            kwargs["size"] = {"shortest_edge": 800, "longest_edge": max_size}
        elif "size" in kwargs and not isinstance(kwargs["size"], Mapping):
            kwargs["size"] = _size_dict(kwargs["size"], max_size)
        if "do_reduce_labels" not in kwargs and config.get("reduce_labels") is not None:
            kwargs["do_reduce_labels"] = config["reduce_labels"]
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, revision: str | None = None) -> ImageProcessor:
        """From HF's `preprocessor_config.json`: the file's path, a folder holding it, or a hub id (as the
        model's `from_pretrained` resolves them; cached hub files load offline)."""
        path = os.fspath(name_or_path)
        if not os.path.isfile(path):
            found = hub.find_file(name_or_path, CONFIG_NAME, revision)
            if found is None:
                raise FileNotFoundError(f"no {CONFIG_NAME} in {path}")
            path = found
        data = hub.read_json(path)
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"{path}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        """HF's preprocessor config dict (JSON-serialisable), readable by transformers and `from_dict`."""
        config = dataclasses.asdict(self)
        config["image_mean"] = list(self.image_mean)
        config["image_std"] = list(self.image_std)
        config["image_processor_type"] = "Mask2FormerImageProcessor"
        return {k: v for k, v in config.items() if v is not None}

    def save_pretrained(self, folder: str | os.PathLike) -> str:
        """Writes `preprocessor_config.json` into `folder` (created if needed); returns the file's path."""
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, CONFIG_NAME)
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
        return path

    # -- geometry -----------------------------------------------------------------------------------

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The (h, w) an image of (height, width) gets: HF's rules, then rounded up to `size_divisor`."""
        if not self.do_resize:
            return height, width
        size = self.size
        if "shortest_edge" in size:
            new_h, new_w = _size_with_aspect_ratio(height, width, size["shortest_edge"], size["longest_edge"])
        elif "max_height" in size:
            scale = min(size["max_height"] / height, size["max_width"] / width)
            new_h, new_w = int(height * scale), int(width * scale)
        else:
            new_h, new_w = size["height"], size["width"]
        if self.size_divisor > 0:
            new_h = int(math.ceil(new_h / self.size_divisor) * self.size_divisor)
            new_w = int(math.ceil(new_w / self.size_divisor) * self.size_divisor)
        if new_h < 1 or new_w < 1:
            raise ValueError(f"an image of size {(height, width)} would be resized to {(new_h, new_w)} with {size}")
        return new_h, new_w

    def padded_size(self, sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
        """The batch's padded (H, W): `pad_size`, or the largest sides rounded up to `size_divisor`."""
        if self.pad_size is not None:
            padded = (self.pad_size["height"], self.pad_size["width"])
            for i, (h, w) in enumerate(sizes):
                if h > padded[0] or w > padded[1]:
                    raise ValueError(f"image {i} resized to {(h, w)} is larger than pad_size {padded}")
            return padded
        divisor = max(self.size_divisor, 1)
        return tuple(int(math.ceil(max(s[a] for s in sizes) / divisor) * divisor) for a in (0, 1))

    # -- the operations -----------------------------------------------------------------------------

    # HF's processor offers the post-processing too; these are the functions of `postprocess`.
    post_process_semantic_segmentation = staticmethod(postprocess.post_process_semantic_segmentation)
    post_process_instance_segmentation = staticmethod(postprocess.post_process_instance_segmentation)
    post_process_panoptic_segmentation = staticmethod(postprocess.post_process_panoptic_segmentation)

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """Rescale and normalize in float32 as HF's torchvision backend (mean and std scaled by 1/factor)."""
        x = image.astype(np.float32)
        mean, std = np.float32(self.image_mean), np.float32(self.image_std)
        if self.do_rescale and self.do_normalize:
            inverse = np.float32(1.0 / self.rescale_factor)
            return (x - mean * inverse) / (std * inverse)
        if self.do_normalize:
            return (x - mean) / std
        if self.do_rescale:
            return x * np.float32(self.rescale_factor)
        return x

    def to_arrays(self, images: Any, input_data_format: str | None = None, stacklevel: int = 2) -> list[np.ndarray]:
        """Images as the processor reads them (see the class): a list of checked (H, W, 3) arrays at their
        own sizes, before any resizing."""
        if input_data_format not in (None, "channels_first", "channels_last"):
            raise ValueError(
                f"input_data_format must be 'channels_first' or 'channels_last', got {input_data_format!r}"
            )
        arrays, guessed = [], []
        for i, item in enumerate(_as_list(images, "images", batch_ndim=4)):
            where = f"image {i}"
            array, channels_last = _as_array(item, where)
            layout = None
            if array.ndim == 3:
                layout = "channels_last" if channels_last else _channel_layout(array.shape, where, input_data_format)
                if layout == "channels_first" and input_data_format is None:
                    guessed.append(f"image {i} (shape {array.shape})")
            arrays.append(_check_values(_to_hwc(array, where, layout), where))
        if guessed:
            warnings.warn(
                f"{', '.join(guessed)} read as channels-first (C, H, W); pass input_data_format to say so",
                stacklevel=stacklevel,
            )
        return arrays

    def __call__(
        self,
        images: Any,
        segmentation_maps: Any = None,
        instance_id_to_semantic_id: Mapping[int, int] | Sequence[Mapping[int, int] | None] | None = None,
        *,
        max_instances: int | None = None,
        input_data_format: str | None = None,
        return_tensors: str | None = None,
    ) -> dict[str, Any]:
        """Images (and their segmentation maps) -> a dict of numpy arrays for the model and the loss.

        Returns pixel_values (B, H, W, 3) float32, pixel_mask (B, H, W) bool (True on real pixels),
        image_sizes (B, 2) int64 (each image's size after resizing, before padding: the region of the
        padded input it fills), original_sizes (B, 2) int64. With segmentation_maps (one (H, W) integer
        map per image, the image's size, as a list or a (B, H, W) array: class maps, or instance-id maps
        when instance_id_to_semantic_id is given, one dict for all images or one per image): mask_labels,
        a list of (N_i, H, W) float32 binary masks padded with 0 like the images, and class_labels, a list
        of (N_i,) int64 (see `targets`). With max_instances, the targets come in fixed shapes instead:
        mask_labels (B, M, H, W) bool, class_labels (B, M) int32 (-1 in empty slots), mask_valid (B, M) bool.
        input_data_format: "channels_first" or "channels_last" for 3-D arrays, instead of inferring it.
        return_tensors: None or "np" (numpy arrays), "jax" (jax arrays) or "pt" (torch tensors, still NHWC),
        as HF's argument, so that a notebook's `model(**processor(images=..., return_tensors="pt"))` runs.
        """
        if return_tensors not in _TENSOR_TYPES:
            raise ValueError(f"return_tensors must be one of {_TENSOR_TYPES}, got {return_tensors!r}")
        arrays = self.to_arrays(images, input_data_format, stacklevel=3)
        original = [a.shape[:2] for a in arrays]
        maps, mappings = self._check_targets(segmentation_maps, instance_id_to_semantic_id, original)
        resized = [self.resized_size(h, w) for h, w in original]
        padded = self.padded_size(resized)
        if self.do_rescale and any(a.dtype != np.uint8 and a.min() >= 0 and a.max() <= 1 for a in arrays):
            warnings.warn(
                "float images with values in [0, 1] are rescaled by rescale_factor again (do_rescale=True); "
                "pass do_rescale=False if they are already rescaled",
                stacklevel=2,
            )

        pixel_values = np.zeros((len(arrays), *padded, 3), np.float32)
        pixel_mask = np.zeros((len(arrays), *padded), np.bool_)
        for i, (array, (h, w)) in enumerate(zip(arrays, resized, strict=True)):
            pixel_values[i, :h, :w] = self.normalize(resize_bilinear(array, h, w) if self.do_resize else array)
            pixel_mask[i, :h, :w] = True
        outputs = {
            "pixel_values": pixel_values,
            "pixel_mask": pixel_mask,
            "image_sizes": np.array(resized, np.int64).reshape(-1, 2),
            "original_sizes": np.array(original, np.int64).reshape(-1, 2),
        }
        if maps is None:
            return _as_tensors(outputs, return_tensors)

        mask_labels, class_labels = [], []
        for seg, mapping, (h, w) in zip(maps, mappings, resized, strict=True):
            seg = resize_nearest(seg, h, w) if self.do_resize else seg
            if mapping is None:
                masks, labels = semantic_to_targets(seg, self.ignore_index, self.do_reduce_labels)
            else:
                masks, labels = instance_to_targets(seg, mapping, self.ignore_index, self.do_reduce_labels)
            full = np.zeros((masks.shape[0], *padded), np.float32)
            full[:, :h, :w] = masks
            mask_labels.append(full)
            class_labels.append(labels)
        if max_instances is None:
            outputs.update(mask_labels=mask_labels, class_labels=class_labels)
        else:
            targets = pad_targets_batch(mask_labels, class_labels, max_instances)
            outputs.update(mask_labels=targets.masks, class_labels=targets.labels, mask_valid=targets.valid)
        return _as_tensors(outputs, return_tensors)

    def _check_targets(
        self, segmentation_maps: Any, instance_id_to_semantic_id: Any, sizes: list[tuple[int, int]]
    ) -> tuple[list[np.ndarray] | None, list[Mapping[int, int] | None]]:
        """Checks the maps (one per image, each its image's size) and the per-image id mappings."""
        if segmentation_maps is None:
            if instance_id_to_semantic_id is not None:
                raise ValueError("instance_id_to_semantic_id was given without segmentation_maps")
            return None, []
        if self.do_reduce_labels and self.ignore_index is None:
            raise ValueError("do_reduce_labels=True needs an ignore_index (the value that label 0 becomes)")
        batch = _as_list(segmentation_maps, "segmentation_maps", batch_ndim=3)
        if len(batch) != len(sizes):
            raise ValueError(f"got {len(sizes)} images but {len(batch)} segmentation maps")
        maps = [_segmentation_map(item, f"segmentation map {i}", sizes[i]) for i, item in enumerate(batch)]
        if instance_id_to_semantic_id is None or isinstance(instance_id_to_semantic_id, Mapping):
            mappings = [instance_id_to_semantic_id] * len(maps)
        else:
            mappings = list(instance_id_to_semantic_id)
            if len(mappings) != len(maps):
                raise ValueError(f"got {len(maps)} segmentation maps but {len(mappings)} instance_id_to_semantic_id")
        return maps, mappings


def _as_tensors(outputs: dict[str, Any], return_tensors: str | None) -> dict[str, Any]:
    """numpy arrays as they are, or jax arrays ("jax") or torch tensors ("pt"); lists of per-image
    targets stay lists."""
    if return_tensors in (None, "np"):
        return outputs
    if return_tensors == "jax":
        import jax.numpy as jnp

        convert = jnp.asarray
    else:
        import torch

        convert = torch.from_numpy
    return {k: [convert(v) for v in x] if isinstance(x, list) else convert(x) for k, x in outputs.items()}


def _size_with_aspect_ratio(height: int, width: int, shortest: int, longest: int) -> tuple[int, int]:
    """HF's `get_size_with_aspect_ratio`: shortest side to `shortest` unless the longest would pass `longest`."""
    raw = None
    if max(height, width) / min(height, width) * shortest > longest:
        raw = longest * min(height, width) / max(height, width)
        shortest = int(round(raw))
    if (height <= width and height == shortest) or (width <= height and width == shortest):
        return height, width
    if width < height:
        return (int(raw * height / width) if raw is not None else int(shortest * height / width)), shortest
    return shortest, (int(raw * width / height) if raw is not None else int(shortest * width / height))
