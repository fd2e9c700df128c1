"""Colour overlays of segmentation results, with a legend, for notebooks and predict.py."""

from __future__ import annotations

import colorsys
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 colours, well apart in hue and stable for a given index."""
    golden = 0.618033988749895
    colours = [colorsys.hsv_to_rgb((i * golden) % 1.0, 0.65 + 0.35 * ((i * 7) % 3) / 2, 0.95) for i in range(n)]
    return (np.array(colours).reshape(n, 3) * 255).astype(np.uint8)


def _as_rgb(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"image must be (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    array = array[..., :3]
    if array.dtype != np.uint8:
        array = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return array


def _segments(result) -> tuple[np.ndarray, list[tuple[int, int, float | None]]]:
    """(id map, [(segment id, label id, score)]) from a semantic map or a panoptic/instance result."""
    if isinstance(result, Mapping):
        segmentation = np.asarray(result["segmentation"])
        infos = [(int(s["id"]), int(s["label_id"]), s.get("score")) for s in result["segments_info"]]
        if segmentation.ndim == 3:  # binary maps (N, H, W) -> an id map, later segments on top
            ids = np.full(segmentation.shape[1:], -1, np.int64)
            for (segment_id, _, _), binary in zip(infos, segmentation, strict=True):
                ids[binary.astype(bool)] = segment_id
            segmentation = ids
        return segmentation, infos
    segmentation = np.asarray(result)
    if segmentation.ndim != 2:
        raise ValueError(f"a semantic map must be (H, W), got shape {segmentation.shape}")
    labels = [int(v) for v in np.unique(segmentation) if v >= 0]
    return segmentation, [(label, label, None) for label in labels]


_TINT_ROWS = 256


def _segment_index(segmentation: np.ndarray, segment_ids: list[int]) -> np.ndarray:
    """Per pixel, the position of its segment id in `segment_ids`, or -1 for ids not listed."""
    if not segment_ids:
        return np.full(segmentation.shape, -1, np.int64)
    ids = np.asarray(segment_ids, np.int64)
    if ids.min() >= 0 and ids.max() < 2**20:  # the usual small ids: a lookup table, one gather
        table = np.full(int(ids.max()) + 2, -1, np.int32)
        table[ids[::-1]] = np.arange(len(ids) - 1, -1, -1)  # the first listed wins a repeated id
        return table[np.clip(segmentation, -1, len(table) - 2)]
    order = np.argsort(ids, kind="stable")
    position = np.minimum(np.searchsorted(ids[order], segmentation), len(ids) - 1)
    return np.where(ids[order][position] == segmentation, order[position], -1)


def overlay(
    image,
    result: Any,
    id2label: Mapping[int, str] | None = None,
    alpha: float = 0.55,
    legend: bool = True,
) -> Image.Image:
    """The image with each segment tinted in its own colour, and a legend of label names.

    `result` is a semantic map (H, W) of class ids, or a panoptic/instance result dict with
    "segmentation" (an (H, W) id map or (N, H, W) binary maps) and "segments_info". Pixels with
    no segment (id -1, or ids not listed) keep the image's colours.
    """
    rgb = _as_rgb(image)
    segmentation, infos = _segments(result)
    if segmentation.shape != rgb.shape[:2]:
        raise ValueError(f"result is {segmentation.shape}, image is {rgb.shape[:2]}: resize to target_sizes first")
    if not infos:  # nothing to tint, nothing to list
        return Image.fromarray(rgb)
    # A semantic map colours by class; panoptic and instance results give each segment its own.
    by_class = all(score is None for _, _, score in infos)
    colours = palette(max([label for _, label, _ in infos] + [0]) + 1) if by_class else palette(len(infos))
    colours = np.array([colours[label] if by_class else colours[i] for i, (_, label, _) in enumerate(infos)], np.uint8)
    index = _segment_index(segmentation, [segment_id for segment_id, _, _ in infos])
    picture = np.array(rgb)
    # Tinted in bands of rows: one pass over the image, bounded memory for 20-megapixel photos.
    for r0 in range(0, rgb.shape[0], _TINT_ROWS):
        rows = slice(r0, r0 + _TINT_ROWS)
        hit = index[rows] >= 0
        blended = (1 - alpha) * rgb[rows].astype(np.float32) + alpha * colours[np.maximum(index[rows], 0)]
        picture[rows] = np.where(hit[..., None], blended.astype(np.uint8), rgb[rows])
    present = np.bincount(index[index >= 0], minlength=len(infos)) > 0
    entries = []
    for i, (_, label, score) in enumerate(infos):
        if present[i]:
            name = (id2label or {}).get(label, str(label))
            entries.append((colours[i], name if score is None else f"{name} {score:.2f}"))
    picture = Image.fromarray(picture)
    if not legend or not entries:
        return picture
    return _with_legend(picture, entries)


def _with_legend(picture: Image.Image, entries: list[tuple[np.ndarray, str]]) -> Image.Image:
    font = ImageFont.load_default()
    row = 16
    text_width = max(int(ImageDraw.Draw(picture).textlength(text, font=font)) for _, text in entries)
    panel_width = text_width + row + 16
    height = max(picture.height, row * len(entries) + 8)
    canvas = Image.new("RGB", (picture.width + panel_width, height), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (colour, text) in enumerate(entries):
        top = 4 + i * row
        left = picture.width + 4
        draw.rectangle([left, top, left + row - 4, top + row - 4], fill=tuple(int(c) for c in colour))
        draw.text((left + row + 2, top), text, fill=(0, 0, 0), font=font)
    return canvas
