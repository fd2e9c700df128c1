"""A model on a labelled data set: every image through the inference path (`Predictor`: jitted,
sharded over this process's devices, shape buckets), then mIoU, PQ and COCO AP.

Each process evaluates its own contiguous shard of the images; the evaluators' counts are then
combined on every process (`gather_objects`), so 1 device, 8 devices or several processes give the
same numbers. Post-processing runs on the host at each image's original size, by the original's
rules: semantic maps; panoptic segments with the stuff classes fused (thresholds 0.8 / 0.5 / 0.8);
instances as the top 100 (query, class) pairs with no score or overlap filtering (COCO's protocol).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from m2f_jax.data.sources.base import tasks_of
from m2f_jax.evaluation.instance import InstanceEvaluator
from m2f_jax.evaluation.panoptic import PanopticEvaluator
from m2f_jax.evaluation.semantic import SemanticEvaluator
from m2f_jax.inference import TASKS, Predictor, post_process, semantic_tta

IGNORE = -1  # the semantic ground truth of pixels without a segment
INSTANCE_TOP_K = 100  # detections per image, COCO's maxDets


def semantic_truth(sample: Mapping[str, Any]) -> np.ndarray:
    """A sample's class map: each segment's category (crowd included), IGNORE where there is none."""
    segments, info = sample["segments"], sorted(sample["segments_info"], key=lambda s: s["id"])
    if not info:
        return np.full(segments.shape, IGNORE, np.int32)
    ids = np.array([s["id"] for s in info])
    categories = np.array([s["category_id"] for s in info], np.int32)
    position = np.minimum(np.searchsorted(ids, segments), len(ids) - 1)  # ids may be large (COCO's RGB ids)
    return np.where(ids[position] == segments, categories[position], IGNORE)


def shard(count: int, index: int, total: int) -> range:
    """Process `index` of `total`'s contiguous share of `count` images (sizes differ by at most one)."""
    start, rest = divmod(count, total)
    first = index * start + min(index, rest)
    return range(first, first + start + (index < rest))


class Evaluators:
    """The metrics of the chosen tasks over one data set; picklable, merged across shards."""

    def __init__(self, classes: Sequence[Mapping[str, Any]], tasks: Sequence[str]):
        contiguous = [{"id": k, "name": c["name"], "isthing": bool(c["isthing"])} for k, c in enumerate(classes)]
        self.tasks = tuple(tasks)
        self.images = 0
        self.semantic = (
            SemanticEvaluator(len(classes), ignore_index=IGNORE, class_names=[c["name"] for c in classes])
            if "semantic" in tasks
            else None
        )
        self.panoptic = PanopticEvaluator(contiguous) if "panoptic" in tasks else None
        self.instance = InstanceEvaluator(contiguous) if "instance" in tasks else None

    def update(self, image_id: int, sample: Mapping[str, Any], predictions: Mapping[str, Any]) -> None:
        self.images += 1
        if self.semantic is not None:
            self.semantic.update(predictions["semantic"], semantic_truth(sample))
        if self.panoptic is not None:
            p = predictions["panoptic"]
            self.panoptic.update(p["segmentation"], p["segments_info"], sample["segments"], sample["segments_info"])
        if self.instance is not None:
            self.instance.update(image_id, sample["segments"], sample["segments_info"], predictions["instance"])

    def merge(self, other: Evaluators) -> None:
        self.images += other.images
        for task in self.tasks:
            getattr(self, task).merge(getattr(other, task))

    def compute(self) -> dict[str, Any]:
        return {"images": self.images, **{task: getattr(self, task).compute() for task in self.tasks}}


def _predictions(outputs, tasks: Sequence[str], fuse: set[int]) -> dict[str, Any]:
    """The post-processed results of one image (its `Outputs`) for each task."""
    found = {}
    if "semantic" in tasks:
        found["semantic"] = post_process(outputs, "semantic")[0]
    if "panoptic" in tasks:
        found["panoptic"] = post_process(outputs, "panoptic", label_ids_to_fuse=fuse)[0]
    if "instance" in tasks:
        found["instance"] = post_process(
            outputs, "instance", threshold=0.0, overlap_mask_area_threshold=0.0, top_k=INSTANCE_TOP_K,
            return_binary_maps=True,
        )[0]  # fmt: skip
    return found


def evaluation_tasks(dataset, tasks: Sequence[str] | None) -> tuple[str, ...]:
    """The tasks to score: those asked for (default: all) that the data set's annotations define."""
    available = tasks_of(dataset)
    asked = TASKS if tasks is None else tuple(tasks)
    unknown = [t for t in asked if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; the tasks are {list(TASKS)}")
    chosen = tuple(t for t in asked if t in available)
    if "instance" in chosen and not any(c["isthing"] for c in dataset.classes):
        chosen = tuple(t for t in chosen if t != "instance")  # no thing classes: no instances to score
    if not chosen:
        raise ValueError(f"the data set's annotations define {list(available)}, none of {list(asked)}")
    return chosen


def evaluate(
    predictor: Predictor,
    dataset,
    *,
    tasks: Sequence[str] | None = None,
    num_images: int | None = None,
    keep_results: int = 0,
    tta: Mapping[str, Any] | None = None,
    writers: Sequence[Any] = (),
    progress: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Scores `predictor`'s model on the first `num_images` (default all) samples of `dataset` (a data
    source of m2f_jax.data.sources whose classes are the model's labels), this process's shard of
    them, combined over all processes (every process must call it).

    tasks: default all that the data set defines (`evaluation_tasks`). tta: {"scales": [shortest
    edges], "max_size": longest edge, "flip": bool} scores semantic maps averaged over those inputs
    (`semantic_tta`). writers: objects with `add(image_id, sample, predictions)` and `close()`
    (m2f_jax.evaluation.writers). Returns ({"images", and per task its metrics}, this process's first
    `keep_results` {"index", "predictions"}, for overlays).
    """
    import jax
    from tqdm import tqdm

    from m2f_jax.training.mesh import gather_objects

    if isinstance(keep_results, bool) or not isinstance(keep_results, int) or keep_results < 0:
        raise ValueError(f"keep_results must be an integer >= 0, got {keep_results!r}")
    classes = dataset.classes
    if len(classes) != predictor.config.num_labels:
        raise ValueError(f"the data set has {len(classes)} classes, the model {predictor.config.num_labels} labels")
    tasks = evaluation_tasks(dataset, tasks)
    count = len(dataset) if num_images is None else min(num_images, len(dataset))
    mine = shard(count, jax.process_index(), jax.process_count())
    evaluators = Evaluators(classes, tasks)
    fuse = {k for k, c in enumerate(classes) if not c["isthing"]}
    kept: list[dict[str, Any]] = []

    def samples() -> Iterator[tuple[tuple[int, dict], np.ndarray]]:
        for index in mine:
            sample = dataset[index]
            yield (index, sample), sample["image"]

    def results() -> Iterator[tuple[int, dict, dict]]:
        if tta is None:
            for (index, sample), outputs in predictor.stream(samples()):
                yield index, sample, _predictions(outputs, tasks, fuse)
            return
        for (index, sample), image in samples():  # one image at a time through every scale and flip
            outputs = None if tasks == ("semantic",) else predictor.run([image])
            found = {} if outputs is None else _predictions(outputs, [t for t in tasks if t != "semantic"], fuse)
            found["semantic"] = semantic_tta(predictor, image, **tta)
            yield index, sample, found

    with tqdm(total=len(mine), unit="image", disable=not progress, smoothing=0.1) as bar:
        for index, sample, found in results():
            evaluators.update(index, sample, found)
            for writer in writers:
                writer.add(index, sample, found)
            if len(kept) < keep_results:
                kept.append({"index": index, "predictions": found})
            bar.update(1)
    for writer in writers:
        writer.close()
    shards = gather_objects(evaluators)
    combined = shards[0]
    for other in shards[1:]:
        combined.merge(other)
    return combined.compute(), kept
