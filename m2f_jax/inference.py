"""One-call inference: images in, post-processed segmentations at the images' own sizes out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from m2f_jax.modeling import Mask2FormerForUniversalSegmentation
from m2f_jax.processing import postprocess
from m2f_jax.processing.preprocess import ImageProcessor

TASKS = ("panoptic", "instance", "semantic")

_forward = jax.jit(lambda model, pixels, mask: model(pixels, pixel_mask=mask))


def segment(
    model: Mask2FormerForUniversalSegmentation,
    images: Any,
    task: str = "panoptic",
    processor: ImageProcessor | None = None,
    **post_process_kwargs,
) -> Any:
    """Segments one image (returns its result) or a list (returns a list), batched and jitted.

    images: PIL images, numpy arrays or file paths, any sizes. Results are at each image's
    original size: a (H, W) class map for "semantic", a dict with "segmentation" and
    "segments_info" for "panoptic" and "instance". Extra keyword arguments go to the
    post-processing (e.g. threshold=0.5).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    single = not isinstance(images, (list, tuple))
    batch = [images] if single else list(images)
    results = segment_batch(model, batch, task, processor or ImageProcessor(), **post_process_kwargs)
    return results[0] if single else results


def segment_batch(
    model: Mask2FormerForUniversalSegmentation,
    images: Sequence[Any],
    task: str,
    processor: ImageProcessor,
    **post_process_kwargs,
) -> list[Any]:
    """All images through the model as one padded batch (one compilation per padded shape)."""
    inputs = processor(list(images))
    outputs = _forward(model, inputs["pixel_values"], inputs["pixel_mask"])
    target_sizes = [tuple(int(v) for v in size) for size in inputs["original_sizes"]]
    image_sizes = [tuple(int(v) for v in size) for size in inputs["image_sizes"]]
    post = getattr(postprocess, f"post_process_{task}_segmentation")
    return post(outputs, target_sizes=target_sizes, image_sizes=image_sizes, **post_process_kwargs)
