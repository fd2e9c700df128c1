"""One-call inference: images in, post-processed segmentations at the images' own sizes out."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import Any

import jax

from m2f_jax import hub
from m2f_jax.modeling import Mask2FormerForUniversalSegmentation
from m2f_jax.processing import postprocess
from m2f_jax.processing.preprocess import CONFIG_NAME, ImageProcessor

TASKS = ("panoptic", "instance", "semantic")

_forward = jax.jit(lambda model, pixels, mask: model(pixels, pixel_mask=mask))


@functools.lru_cache(maxsize=16)
def _checkpoint_processor(name_or_path: str) -> ImageProcessor | None:
    path = hub.find_file(name_or_path, CONFIG_NAME)
    return None if path is None else ImageProcessor.from_pretrained(path)


def default_processor(model: Mask2FormerForUniversalSegmentation) -> ImageProcessor:
    """The image processor of the checkpoint the model came from (its preprocessor_config.json), else
    HF's defaults (shortest edge 800, longest 1333), with a warning when a checkpoint has none."""
    source = getattr(model, "name_or_path", None)
    if source is None:
        return ImageProcessor()
    processor = _checkpoint_processor(source)
    if processor is None:
        warnings.warn(
            f"{source} has no {CONFIG_NAME}: using HF's default image processor settings (shortest edge 800, "
            "longest 1333); pass processor=... to choose",
            stacklevel=3,
        )
        return ImageProcessor()
    return processor


def segment(
    model: Mask2FormerForUniversalSegmentation,
    images: Any,
    task: str = "panoptic",
    processor: ImageProcessor | None = None,
    input_data_format: str | None = None,
    **post_process_kwargs,
) -> Any:
    """Segments one image (returns its result) or a list (returns a list), batched and jitted.

    images: PIL images, numpy arrays or file paths, any sizes (`input_data_format` as the processor's).
    Results are at each image's original size: a (H, W) class map for "semantic", a dict with
    "segmentation" and "segments_info" for "panoptic" and "instance". The processor defaults to the
    checkpoint's own settings (`default_processor`). Extra keyword arguments go to the post-processing
    (e.g. threshold=0.5).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    single = not isinstance(images, (list, tuple))
    batch = [images] if single else list(images)
    processor = processor or default_processor(model)
    results = segment_batch(model, batch, task, processor, input_data_format, **post_process_kwargs)
    return results[0] if single else results


def segment_batch(
    model: Mask2FormerForUniversalSegmentation,
    images: Sequence[Any],
    task: str,
    processor: ImageProcessor,
    input_data_format: str | None = None,
    **post_process_kwargs,
) -> list[Any]:
    """All images through the model as one padded batch (one compilation per padded shape)."""
    inputs = processor(list(images), input_data_format=input_data_format)
    outputs = _forward(model, inputs["pixel_values"], inputs["pixel_mask"])
    target_sizes = [tuple(int(v) for v in size) for size in inputs["original_sizes"]]
    image_sizes = [tuple(int(v) for v in size) for size in inputs["image_sizes"]]
    post = getattr(postprocess, f"post_process_{task}_segmentation")
    return post(outputs, target_sizes=target_sizes, image_sizes=image_sizes, **post_process_kwargs)
