"""Image files and PIL images -> numpy arrays, the one way every entry point reads them.

The processor, `segment()` and predict.py all read through here, so a file gives the same pixels
whichever way it comes in:
- EXIF orientation is applied (a phone photo comes out the way it displays, as HF's `load_image` does);
- 8-bit modes (L, P, RGBA, CMYK, YCbCr, 1, ...) become RGB uint8; an alpha channel is dropped;
- images of more than 8 bits per channel (PIL modes I;16*, I, F: 16-bit PNGs, 32-bit and float TIFFs)
  are refused: their value range is not the 0-255 the models were trained on, and guessing a scale
  would give silently wrong segments. Convert them yourself (to uint8, or to a float array in [0, 1]
  passed with do_rescale=False).
A PIL image or a file is always (H, W, C): only numpy arrays can be channels-first.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

WIDE_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")  # more than 8 bits per value

# What PIL raises for files that are not images, truncated or corrupt, or too large to decode safely.
_READ_ERRORS = (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, ValueError)


def open_image(path: str | os.PathLike, where: str | None = None) -> Image.Image:
    """Reads an image file fully (corrupt and truncated files fail here, not later). A missing file
    raises FileNotFoundError, an unreadable one ValueError naming it (after `where`, when given)."""
    prefix = f"{where}: " if where else ""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{prefix}no such file {os.fspath(path)!r}")
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except _READ_ERRORS as e:
        raise ValueError(f"{prefix}cannot read {os.fspath(path)!r} as an image ({e})") from e


def pil_to_rgb(image: Image.Image, where: str = "image") -> np.ndarray:
    """A PIL image -> (H, W, 3) uint8 RGB, upright per its EXIF orientation."""
    if image.mode in WIDE_MODES:
        raise ValueError(
            f"{where}: {image.mode!r} images hold more than 8 bits per value (16-bit or float), which the "
            "model does not take as they are; convert to 8-bit RGB, or pass a float array in [0, 1] with "
            "do_rescale=False"
        )
    try:
        image = ImageOps.exif_transpose(image)
    except _READ_ERRORS as e:  # a malformed EXIF block: say so rather than segment it the wrong way up
        raise ValueError(f"{where}: cannot apply its EXIF orientation ({e})") from e
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def read_image(path: str | os.PathLike, where: str | None = None) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB (see the module docstring); errors name the file (after
    `where`, e.g. "image 3", when given)."""
    name = os.fspath(path)
    image = open_image(path, where)
    return pil_to_rgb(image, name if where is None else f"{where} ({name!r})")
