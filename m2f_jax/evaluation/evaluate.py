"""A model on a labelled data set: jitted forward and post-processing in fixed-size batches, then
mIoU (semantic) and PQ (panoptic) on the host. (eval.py draws the overlays.)"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from m2f_jax.evaluation.panoptic import PanopticEvaluator
from m2f_jax.evaluation.semantic import SemanticEvaluator
from m2f_jax.modeling import Mask2FormerForUniversalSegmentation
from m2f_jax.processing.postprocess import panoptic_inference, semantic_inference
from m2f_jax.processing.preprocess import ImageProcessor

IGNORE = -1  # the semantic ground truth of pixels without a segment


@jax.jit
def _predict(model: Mask2FormerForUniversalSegmentation, pixel_values: jax.Array, fuse_classes: jax.Array):
    """Semantic map and panoptic result at the input size, for one batch."""
    outputs = model(pixel_values)
    size = pixel_values.shape[1:3]
    class_logits, mask_logits = outputs.class_queries_logits, outputs.masks_queries_logits
    return (
        semantic_inference(class_logits, mask_logits, size=size),
        panoptic_inference(class_logits, mask_logits, fuse_classes=fuse_classes, size=size),
    )


def panoptic_segments(result: Mapping[str, np.ndarray], row: int) -> dict[str, Any]:
    """Row `row` of a batched `panoptic_inference` result as `post_process_panoptic_segmentation`
    gives it: {"segmentation", "segments_info": [{"id", "label_id", "score"}]} (fused queries give
    one segment, with the best score among them)."""
    segmentation = np.asarray(result["segmentation"][row])
    present = set(np.unique(segmentation).tolist())
    segments: dict[int, dict[str, Any]] = {}
    for segment_id, label, score, keep in zip(
        *(np.asarray(result[k][row]).tolist() for k in ("segment_ids", "labels", "scores", "keep")), strict=True
    ):
        if keep and segment_id in present:
            previous = segments.get(segment_id)
            if previous is None or score > previous["score"]:
                segments[segment_id] = {"id": segment_id, "label_id": label, "score": score}
    return {"segmentation": segmentation, "segments_info": [segments[i] for i in sorted(segments)]}


def semantic_truth(sample: Mapping[str, Any]) -> np.ndarray:
    """A sample's class map: each segment's category (crowd included), IGNORE where there is none."""
    segments, info = sample["segments"], sorted(sample["segments_info"], key=lambda s: s["id"])
    if not info:
        return np.full(segments.shape, IGNORE, np.int32)
    ids = np.array([s["id"] for s in info])
    categories = np.array([s["category_id"] for s in info], np.int32)
    position = np.minimum(np.searchsorted(ids, segments), len(ids) - 1)  # ids may be large (COCO's RGB ids)
    return np.where(ids[position] == segments, categories[position], IGNORE)


def evaluate(
    model: Mask2FormerForUniversalSegmentation,
    dataset: Sequence[Mapping[str, Any]],
    batch_size: int = 16,
    keep_results: int = 0,
    processor: ImageProcessor | None = None,
    num_images: int | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """mIoU etc. (`SemanticEvaluator`) and PQ etc. (`PanopticEvaluator`) of `model` in inference
    mode on the first `num_images` (default all) samples of `dataset`, a data source
    (m2f_jax.data.sources) whose classes are the model's labels and whose images share one size.
    Images are normalised by `processor` (default: ImageNet's, as training). Returns
    ({"semantic": ..., "panoptic": ...}, the first `keep_results` samples' {"image", "semantic",
    "panoptic"} predictions, for overlays)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(keep_results, bool) or not isinstance(keep_results, int) or keep_results < 0:
        raise ValueError(f"keep_results must be an integer >= 0, got {keep_results!r}")
    classes = dataset.classes
    if len(classes) != model.config.num_labels:
        raise ValueError(f"the data set has {len(classes)} classes, the model {model.config.num_labels} labels")
    processor = processor or ImageProcessor()
    count = len(dataset) if num_images is None else min(num_images, len(dataset))
    semantic = SemanticEvaluator(len(classes), ignore_index=IGNORE, class_names=[c["name"] for c in classes])
    panoptic = PanopticEvaluator([{**c, "id": k} for k, c in enumerate(classes)])  # contiguous labels
    fuse = np.array([not c["isthing"] for c in classes])
    kept: list[dict[str, Any]] = []
    size = None
    for start in range(0, count, batch_size):
        samples = [dataset[i] for i in range(start, min(start + batch_size, count))]
        for i, sample in enumerate(samples):
            size = size or sample["image"].shape
            if sample["image"].shape != size:
                raise ValueError(
                    f"evaluate() batches images of one size: {dataset.describe(start + i)} is "
                    f"{sample['image'].shape[:2]}, the first image {size[:2]}"
                )
        images = np.stack([s["image"] for s in samples])
        padded = np.concatenate([images, np.repeat(images[-1:], batch_size - len(samples), 0)])  # one shape
        semantic_maps, result = jax.device_get(_predict(model, processor.normalize(padded), fuse))
        semantic.update(semantic_maps[: len(samples)], np.stack([semantic_truth(s) for s in samples]))
        for row, sample in enumerate(samples):
            prediction = panoptic_segments(result, row)
            panoptic.update(
                prediction["segmentation"], prediction["segments_info"], sample["segments"], sample["segments_info"]
            )
            if len(kept) < keep_results:
                kept.append({"image": sample["image"], "semantic": semantic_maps[row], "panoptic": prediction})
    return {"semantic": semantic.compute(), "panoptic": panoptic.compute()}, kept
