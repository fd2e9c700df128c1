"""Panoptic quality (PQ = SQ x RQ) with the definitions of COCO's panopticapi (`pq_compute`).

Per image, a predicted and a ground-truth segment of the same category match when their IoU is
> 0.5, where the union leaves out the predicted pixels that fall on void ground truth (matches are
then unique, since segments do not overlap). Matched pairs are true positives and add their IoU;
unmatched ground-truth segments are false negatives, except crowd segments, which are never
matched nor counted; unmatched predictions are false positives unless more than half of their
pixels lie on void or on crowd ground truth of their own category (panopticapi keeps one crowd
segment per category and image, as COCO has; several are taken together here). Per category over the data set,
PQ = sum IoU / (TP + FP/2 + FN/2), SQ = sum IoU / TP (0 without TP), RQ = TP / (TP + FP/2 + FN/2).
The overall, things and stuff numbers are means over the categories with at least one TP, FP or
FN (the others, absent from ground truth and predictions, are NaN in the per-class table and left
out). All numbers are in percent, as panopticapi prints them and detectron2 reports them.

Void: in ground truth, every pixel whose id is not listed in its segments_info; in predictions, 0
and -1 (our post-processing's "no segment" and "nothing predicted"). Other unlisted predicted ids
raise, as do listed segments absent from the prediction map (both as panopticapi); a listed
ground-truth segment with no pixels (e.g. after resizing) is not counted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

PRED_VOID = (0, -1)


def _segment_fields(segments_info: Sequence[Mapping[str, Any]], category_key: str, side: str):
    """(ids, categories) as int64 arrays, sorted by id; raises on missing fields or repeated ids."""
    try:
        pairs = sorted((int(s["id"]), int(s[category_key])) for s in segments_info)
    except KeyError as e:
        raise ValueError(f"every {side} segment needs 'id' and '{category_key}', missing {e}") from None
    ids = np.array([p[0] for p in pairs], np.int64)
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"{side} segments_info repeats ids: {sorted(ids.tolist())}")
    return ids, np.array([p[1] for p in pairs], np.int64)


def _index_map(segmentation: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: the index of its id in sorted `ids`, or len(ids) if unlisted; and the unlisted mask."""
    pos = np.minimum(np.searchsorted(ids, segmentation), max(len(ids) - 1, 0))
    listed = ids[pos] == segmentation if len(ids) else np.zeros(segmentation.shape, bool)
    return np.where(listed, pos, len(ids)), ~listed


def _id_map(x: Any, side: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"the {side} segmentation must be an (H, W) id map, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"the {side} segmentation must hold integer ids, got dtype {x.dtype}")
    return x.astype(np.int64)


class PanopticEvaluator:
    """Accumulates per-category TP, FP, FN and matched IoU over images; `compute()` gives PQ, SQ, RQ.

    categories: [{"id", "name", "isthing"}]; predictions ("label_id") and ground truth
    ("category_id") must both use these ids (map a model's contiguous labels to them first).
    """

    def __init__(self, categories: Sequence[Mapping[str, Any]]):
        self.categories = [
            {"id": int(c["id"]), "name": str(c["name"]), "isthing": bool(c["isthing"])} for c in categories
        ]
        ids = [c["id"] for c in self.categories]
        if len(set(ids)) != len(ids) or len({c["name"] for c in self.categories}) != len(ids):
            raise ValueError("category ids and names must be unique")
        self._index = {cat_id: i for i, cat_id in enumerate(ids)}
        self.isthing = np.array([c["isthing"] for c in self.categories], bool)
        n = len(ids)
        self.tp, self.fp, self.fn = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.iou = np.zeros(n, np.float64)  # sum of the matched pairs' IoU

    def _category_index(self, category_ids: np.ndarray, side: str) -> np.ndarray:
        unknown = sorted({int(c) for c in category_ids} - self._index.keys())
        if unknown:
            raise ValueError(f"{side} segments_info has unknown category ids {unknown}")
        return np.array([self._index[int(c)] for c in category_ids], np.int64)

    def update(
        self,
        pred_segmentation: Any,
        pred_segments_info: Sequence[Mapping[str, Any]],
        gt_segmentation: Any,
        gt_segments_info: Sequence[Mapping[str, Any]],
    ) -> None:
        """Adds one image. pred: (H, W) ids as `post_process_panoptic_segmentation` gives and its
        [{"id", "label_id", ...}]; gt: (H, W) ids and [{"id", "category_id", optional "iscrowd",
        optional "isthing" (checked against the category)}]. Everything is checked before counting."""
        pred_map, gt_map = _id_map(pred_segmentation, "predicted"), _id_map(gt_segmentation, "ground-truth")
        if pred_map.shape != gt_map.shape:
            raise ValueError(f"prediction {pred_map.shape} and ground truth {gt_map.shape} differ in size")
        pred_ids, pred_cats = _segment_fields(pred_segments_info, "label_id", "predicted")
        gt_ids, gt_cats = _segment_fields(gt_segments_info, "category_id", "ground-truth")
        if np.isin(pred_ids, PRED_VOID).any():
            raise ValueError(f"predicted segment ids {PRED_VOID} mean void and cannot be listed")
        pred_cats, gt_cats = self._category_index(pred_cats, "predicted"), self._category_index(gt_cats, "ground-truth")
        by_id = {int(s["id"]): s for s in gt_segments_info}
        crowd = np.array([bool(by_id[i].get("iscrowd", 0)) for i in gt_ids.tolist()], bool)
        for i, c in zip(gt_ids.tolist(), gt_cats, strict=True):
            if "isthing" in by_id[i] and bool(by_id[i]["isthing"]) != self.isthing[c]:
                raise ValueError(f"ground-truth segment {i}: isthing={by_id[i]['isthing']} disagrees with its category")

        pred_index, pred_unlisted = _index_map(pred_map, pred_ids)
        stray = np.unique(pred_map[pred_unlisted & ~np.isin(pred_map, PRED_VOID)])
        if stray.size:
            raise ValueError(f"predicted ids {stray[:10].tolist()} are in the map but not in segments_info")
        gt_index, _ = _index_map(gt_map, gt_ids)
        g, p = len(gt_ids), len(pred_ids)
        # counts[i, j]: pixels of gt segment i (g: void) under predicted segment j (p: void).
        counts = np.bincount((gt_index * (p + 1) + pred_index).ravel(), minlength=(g + 1) * (p + 1))
        counts = counts.reshape(g + 1, p + 1)
        gt_area, pred_area, pred_on_void = counts[:g].sum(1), counts.sum(0)[:p], counts[g, :p]
        if (pred_area == 0).any():
            raise ValueError(f"predicted segments {pred_ids[pred_area == 0].tolist()} are listed but have no pixels")

        inter = counts[:g, :p]
        same = gt_cats[:, None] == pred_cats[None, :]
        union = gt_area[:, None] + (pred_area - pred_on_void)[None, :] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(same & ~crowd[:, None] & (inter > 0), inter / union, 0.0)
        matched = iou > 0.5
        np.add.at(self.tp, gt_cats, matched.sum(1))
        np.add.at(self.iou, gt_cats, (iou * matched).sum(1))
        missed = ~matched.any(1) & ~crowd & (gt_area > 0)
        np.add.at(self.fn, gt_cats[missed], 1)
        ignored = pred_on_void + (inter * (same & crowd[:, None])).sum(0)
        false_pos = ~matched.any(0) & (ignored / pred_area <= 0.5)
        np.add.at(self.fp, pred_cats[false_pos], 1)

    def merge(self, other: PanopticEvaluator) -> None:
        """Adds the counts of `other` (another shard of the data set, with the same categories)."""
        if other.categories != self.categories:
            raise ValueError("cannot merge panoptic evaluators of different categories")
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.iou += other.iou

    def compute(self) -> dict[str, Any]:
        """{"PQ", "SQ", "RQ", "n"} overall, the same with suffixes "_th" (things) and "_st" (stuff), and
        "per_class": {name: {"PQ", "SQ", "RQ", "TP", "FP", "FN"}}; in percent, NaN where undefined."""
        tp, fp, fn = self.tp.astype(np.float64), self.fp.astype(np.float64), self.fn.astype(np.float64)
        counted = tp + fp + fn > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            denominator = tp + 0.5 * fp + 0.5 * fn
            pq = np.where(counted, self.iou / denominator, np.nan)
            sq = np.where(counted, np.where(tp > 0, self.iou / tp, 0.0), np.nan)
            rq = np.where(counted, tp / denominator, np.nan)
        results: dict[str, Any] = {}
        for suffix, group in (("", np.ones_like(counted)), ("_th", self.isthing), ("_st", ~self.isthing)):
            n = int((group & counted).sum())
            for name, values in (("PQ", pq), ("SQ", sq), ("RQ", rq)):
                results[name + suffix] = 100 * float(values[group & counted].mean()) if n else float("nan")
            results["n" + suffix] = n
        results["per_class"] = {
            c["name"]: {
                **{name: 100 * float(values[i]) for name, values in (("PQ", pq), ("SQ", sq), ("RQ", rq))},
                **{name: int(values[i]) for name, values in (("TP", self.tp), ("FP", self.fp), ("FN", self.fn))},
            }
            for i, c in enumerate(self.categories)
        }
        return results
