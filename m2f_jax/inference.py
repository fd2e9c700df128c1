"""The one inference path: model + image processor + jitted forward on shape buckets + post-processing.

`segment()`, predict.py and evaluation (m2f_jax.evaluation.evaluate) all run images through a
`Predictor`. Images are resized by the processor, then padded to a *shape bucket* and the batch to
a fixed number of rows, so that a folder of photos of many sizes compiles once per bucket, not once
per batch. Padding does not change an image's result: the model masks the padding (its output on
an image's own region equals that for the image alone) and the post-processing crops it away.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from m2f_jax import hub
from m2f_jax.modeling import Mask2FormerForUniversalSegmentation
from m2f_jax.processing import postprocess
from m2f_jax.processing.preprocess import CONFIG_NAME, ImageProcessor

TASKS = ("panoptic", "instance", "semantic")
BUCKETS_PER_OCTAVE = 8  # "auto" buckets: a side is padded by at most 1/8 (plus the size divisor)


@jax.jit
def _forward(model: Mask2FormerForUniversalSegmentation, pixels: jax.Array, mask: jax.Array):
    """The two outputs post-processing needs (not the auxiliary ones: less to copy to the host)."""
    outputs = model(pixels, pixel_mask=mask)
    return outputs.class_queries_logits, outputs.masks_queries_logits


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


class Outputs(NamedTuple):
    """A batch's model outputs on the host, with the geometry post-processing needs; `post_process_*`
    read it like the model's own output."""

    class_queries_logits: np.ndarray  # (B, Q, K + 1)
    masks_queries_logits: np.ndarray  # (B, Q, H / 4, W / 4)
    image_sizes: list[tuple[int, int]]  # each image's region of the padded input
    original_sizes: list[tuple[int, int]]

    def row(self, i: int) -> Outputs:
        return Outputs(
            self.class_queries_logits[i : i + 1],
            self.masks_queries_logits[i : i + 1],
            self.image_sizes[i : i + 1],
            self.original_sizes[i : i + 1],
        )


def post_process(outputs: Outputs, task: str, target_sizes=None, **kwargs) -> list[Any]:
    """`post_process_{task}_segmentation` of every image, at its original size unless `target_sizes`."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    post = getattr(postprocess, f"post_process_{task}_segmentation")
    targets = outputs.original_sizes if target_sizes is None else target_sizes
    return post(outputs, target_sizes=targets, image_sizes=outputs.image_sizes, **kwargs)


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


class Predictor:
    """Runs a model on images of any sizes: `predictor(images, task)` gives post-processed results at
    each image's original size; `predictor.stream(...)` gives each image's raw outputs, batched by bucket.

    buckets: "auto" (each padded side rounded up to one of 8 sizes per power of two, multiples of the
    processor's size divisor, capped at the largest padded size the processor can produce), None
    (no bucketing: the batch's own padded size, one compilation per distinct size), or a list of
    (height, width) shapes (an image goes to the smallest that holds it). batch_size rows are run
    together (rounded up to a multiple of the devices); a partial batch is padded and its padding
    dropped. devices: this process's devices to shard the batch over (default: all local ones); the
    parameters are replicated on them.
    """

    def __init__(
        self,
        model: Mask2FormerForUniversalSegmentation,
        processor: ImageProcessor | None = None,
        *,
        batch_size: int = 8,
        buckets: str | Sequence[Sequence[int]] | None = "auto",
        devices: Sequence[jax.Device] | None = None,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.processor = processor or default_processor(model)
        self.buckets = _check_buckets(buckets, self.processor)
        devices = list(devices or jax.local_devices())
        self.mesh = Mesh(np.array(devices), ("data",))
        self.batch_size = _round_up(batch_size, len(devices))
        self._rows = NamedSharding(self.mesh, PartitionSpec("data"))
        self.set_model(model)

    def set_model(self, model: Mask2FormerForUniversalSegmentation) -> None:
        """Uses `model` from now on (e.g. new training parameters; same structure: no recompilation)."""
        from flax import nnx

        graphdef, state = nnx.split(model)
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self.model = nnx.merge(graphdef, jax.device_put(state, replicated))

    @property
    def config(self):
        return self.model.config

    def at_size(self, shortest_edge: int, longest_edge: int) -> Predictor:
        """This predictor with images resized to another size (same model, devices and batch size)."""
        other = copy.copy(self)
        size = {"shortest_edge": int(shortest_edge), "longest_edge": int(longest_edge)}
        other.processor = dataclasses.replace(self.processor, size=size, do_resize=True)
        return other

    # -- shapes ---------------------------------------------------------------------------------------

    def bucket(self, resized: tuple[int, int]) -> tuple[int, int] | None:
        """The padded shape of an image resized to `resized` (None: no bucketing, the batch decides)."""
        if self.buckets is None:
            return None
        if isinstance(self.buckets, list):
            fitting = [b for b in self.buckets if b[0] >= resized[0] and b[1] >= resized[1]]
            if not fitting:
                raise ValueError(f"an image resized to {resized} fits none of the buckets {self.buckets}")
            return min(fitting, key=lambda b: (b[0] * b[1], b))
        divisor = max(self.processor.size_divisor, 1)
        cap = _largest_padded_side(self.processor)
        shape = []
        for side in resized:
            step = max(divisor, 2 ** max(0, side.bit_length() - 1) // BUCKETS_PER_OCTAVE)
            padded = _round_up(_round_up(side, step), divisor)
            shape.append(max(_round_up(side, divisor), min(padded, cap)) if cap else padded)
        return tuple(shape)

    # -- running --------------------------------------------------------------------------------------

    def run(self, images: Sequence[np.ndarray]) -> Outputs:
        """One batch (at most batch_size (H, W, 3) arrays, padded together) through the model."""
        if not 1 <= len(images) <= self.batch_size:
            raise ValueError(f"run() takes 1 to {self.batch_size} images, got {len(images)}")
        inputs = self.processor(list(images), input_data_format="channels_last")
        pixels, mask = inputs["pixel_values"], inputs["pixel_mask"]
        shape = self._batch_shape([tuple(s) for s in inputs["image_sizes"].tolist()], pixels.shape[1:3])
        padded = np.zeros((self.batch_size, *shape, 3), np.float32)
        padded_mask = np.zeros((self.batch_size, *shape), bool)
        padded[: len(images), : pixels.shape[1], : pixels.shape[2]] = pixels
        padded_mask[: len(images), : mask.shape[1], : mask.shape[2]] = mask
        padded_mask[len(images) :] = padded_mask[0]  # the filler rows: blank images of the first's size, dropped
        class_logits, mask_logits = jax.device_get(
            _forward(self.model, jax.device_put(padded, self._rows), jax.device_put(padded_mask, self._rows))
        )
        n = len(images)
        return Outputs(
            np.asarray(class_logits[:n]),
            np.asarray(mask_logits[:n]),
            [tuple(int(v) for v in s) for s in inputs["image_sizes"]],
            [tuple(int(v) for v in s) for s in inputs["original_sizes"]],
        )

    def _batch_shape(self, resized: list[tuple[int, int]], padded: tuple[int, int]) -> tuple[int, int]:
        if self.buckets is None:
            return tuple(int(v) for v in padded)
        shapes = [self.bucket(s) for s in resized]
        return max(s[0] for s in shapes), max(s[1] for s in shapes)

    def stream(self, items: Iterable[tuple[Any, np.ndarray]]) -> Iterator[tuple[Any, Outputs]]:
        """(key, (H, W, 3) uint8 image) pairs in, (key, that image's `Outputs`) out, as batches fill:
        images wait in their bucket's queue until batch_size of them are there (at most one partial
        batch per bucket in memory); the partial batches run at the end. Order follows the batches."""
        queues: dict[Any, list[tuple[Any, np.ndarray]]] = {}
        for key, image in items:
            resized = self.processor.resized_size(*image.shape[:2])
            # One queue per bucket, or without buckets per padded size.
            bucket = self.processor.padded_size([resized]) if self.buckets is None else self.bucket(resized)
            queue = queues.setdefault(bucket, [])
            queue.append((key, image))
            if len(queue) == self.batch_size:
                yield from self._emit(queue)
                queues[bucket] = []
        for queue in queues.values():
            if queue:
                yield from self._emit(queue)

    def _emit(self, queue: list[tuple[Any, np.ndarray]]) -> Iterator[tuple[Any, Outputs]]:
        outputs = self.run([image for _, image in queue])
        for i, (key, _) in enumerate(queue):
            yield key, outputs.row(i)

    def __call__(
        self, images: Sequence[Any], task: str = "panoptic", input_data_format: str | None = None, **post_process_kwargs
    ) -> list[Any]:
        """Post-processed results of `images` (arrays, PIL images or paths, as the processor reads them),
        in their order."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        arrays = self.processor.to_arrays(list(images), input_data_format)
        results: list[Any] = [None] * len(arrays)
        for i, outputs in self.stream(enumerate(arrays)):
            results[i] = post_process(outputs, task, **post_process_kwargs)[0]
        return results


# The original's semantic test-time augmentation (its ADE20K configs): these shortest edges, at most
# this longest edge, each also mirrored.
TTA_SCALES = (256, 384, 512, 640, 768, 896)
TTA_MAX_SIZE = 3584


def semantic_tta(
    predictor: Predictor, image: np.ndarray, scales: Sequence[int] = TTA_SCALES, max_size: int = TTA_MAX_SIZE,
    flip: bool = True,
) -> np.ndarray:  # fmt: skip
    """The (H, W) class map of an (H, W, 3) image from its class scores (at its own size) averaged over
    copies resized to each shortest edge in `scales` (longest at most `max_size`) and, with `flip`,
    their mirror images, as the original's semantic test-time augmentation."""
    if not scales:
        raise ValueError("tta scales must name at least one shortest edge")
    total = None
    for scale in scales:
        resized = predictor.at_size(scale, max_size)
        copies = [image, np.ascontiguousarray(image[:, ::-1])] if flip else [image]
        step = min(len(copies), resized.batch_size)
        for first in range(0, len(copies), step):
            outputs = resized.run(copies[first : first + step])
            for i, result in enumerate(post_process(outputs, "semantic", return_segmentation_scores=True)):
                scores = result["segmentation_scores"]
                scores = scores[:, :, ::-1] if first + i == 1 else scores  # the mirrored copy, back
                total = scores.copy() if total is None else total.__iadd__(scores)
    return total.argmax(0).astype(np.int32)


def _largest_padded_side(processor: ImageProcessor) -> int | None:
    """The longest padded side the processor produces (None when images keep their own size)."""
    size = processor.size
    if not processor.do_resize:
        return None
    longest = size.get("longest_edge") or max(size.get("max_height", 0), size.get("max_width", 0))
    longest = longest or max(size.get("height", 0), size.get("width", 0))
    divisor = max(processor.size_divisor, 1)
    return _round_up(int(math.ceil(longest)), divisor) if longest else None


def _check_buckets(buckets: Any, processor: ImageProcessor) -> str | list[tuple[int, int]] | None:
    if buckets is None or buckets == "auto":
        return buckets
    if isinstance(buckets, str):
        raise ValueError(f"buckets must be 'auto', None or a list of (height, width), got {buckets!r}")
    shapes = []
    divisor = max(processor.size_divisor, 1)
    for b in buckets:
        if len(b) != 2 or any(isinstance(v, bool) or int(v) != v or v < 1 or v % divisor for v in b):
            raise ValueError(f"each bucket must be (height, width), positive multiples of {divisor}; got {b!r}")
        shapes.append((int(b[0]), int(b[1])))
    if not shapes:
        raise ValueError("buckets is an empty list")
    return shapes


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
    (e.g. threshold=0.5). Many images: a `Predictor` kept across calls avoids replicating the weights
    each time.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    single = not isinstance(images, (list, tuple))
    batch = [images] if single else list(images)
    processor = processor or default_processor(model)
    predictor = Predictor(model, processor, batch_size=min(len(batch), 8))
    results = predictor(batch, task, input_data_format, **post_process_kwargs)
    return results[0] if single else results
