"""A model on a labelled data set: jitted forward and post-processing in fixed-size batches, then
mIoU (semantic) and PQ (panoptic) on the host. (eval.py draws the overlays.)"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from m2f_jax.data.batching import normalize
from m2f_jax.evaluation.panoptic import PanopticEvaluator
from m2f_jax.evaluation.semantic import SemanticEvaluator
from m2f_jax.modeling import Mask2FormerForUniversalSegmentation
from m2f_jax.processing.postprocess import panoptic_inference, semantic_inference


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


def evaluate(
    model: Mask2FormerForUniversalSegmentation,
    dataset: Sequence[Mapping[str, Any]],
    batch_size: int = 16,
    keep_results: int = 0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """mIoU etc. (`SemanticEvaluator`) and PQ etc. (`PanopticEvaluator`) of `model` in inference
    mode on every sample of `dataset` (samples as `SyntheticDataset` gives them, classes as the
    model's labels). Returns ({"semantic": ..., "panoptic": ...}, the first `keep_results`
    samples' {"image", "semantic", "panoptic"} predictions, for overlays)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(keep_results, bool) or not isinstance(keep_results, int) or keep_results < 0:
        raise ValueError(f"keep_results must be an integer >= 0, got {keep_results!r}")
    classes = dataset.classes
    if len(classes) != model.config.num_labels:
        raise ValueError(f"the data set has {len(classes)} classes, the model {model.config.num_labels} labels")
    semantic = SemanticEvaluator(len(classes), class_names=[c["name"] for c in classes])
    panoptic = PanopticEvaluator(classes)
    fuse = np.array([not c["isthing"] for c in classes])
    kept: list[dict[str, Any]] = []
    for start in range(0, len(dataset), batch_size):
        samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images = np.stack([s["image"] for s in samples])
        padded = np.concatenate([images, np.repeat(images[-1:], batch_size - len(samples), 0)])  # one shape
        semantic_maps, result = jax.device_get(_predict(model, normalize(padded), fuse))
        semantic.update(semantic_maps[: len(samples)], np.stack([s["semantic"] for s in samples]))
        for row, sample in enumerate(samples):
            prediction = panoptic_segments(result, row)
            panoptic.update(
                prediction["segmentation"], prediction["segments_info"], sample["instances"], sample["segments_info"]
            )
            if len(kept) < keep_results:
                kept.append({"image": sample["image"], "semantic": semantic_maps[row], "panoptic": prediction})
    return {"semantic": semantic.compute(), "panoptic": panoptic.compute()}, kept
