"""COCO instance segmentation AP (mask and box), scored by pycocotools' COCOeval as the official tool.

Per image, the thing segments of the ground truth and the predicted masks are encoded at once as
COCO's compressed RLE (a few hundred bytes per mask), so a data set fits in memory; `compute()`
builds the COCO ground truth and results in memory and runs COCOeval with iouType "segm" and "bbox"
(boxes are the masks' bounding boxes, `pycocotools.mask.toBbox`). As in COCO instance AP and
detectron2, only thing categories count: stuff segments and stuff predictions are left out. Crowd
segments stay with iscrowd=1, so that COCOeval ignores the detections that match them. The results
of a prediction are built as COCO.loadRes builds them from a results file without boxes (area and
box from the mask, as detectron2 scores mask AP), so `writers.InstanceWriter`'s JSON scored by the
official tools gives the same numbers.

COCOeval keeps the 100 best detections per image *and category* (maxDets); COCO's rules allow 100 per
image, which `post_process_instance_segmentation(..., threshold=0, overlap_mask_area_threshold=0,
return_binary_maps=True)` gives (its top_k=100, as the original's test-time setting).

Kept on pycocotools rather than faster-coco-eval, which bench/coco_eval.py measured 4.3-4.8x faster
(500 images x 100 detections: 3.4 s against 14.5 s) but not identical (1-ulp differences in the
precision tables, so in per-class AP, and in some of the 12 numbers on smaller sets).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[:6], in this order


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """(N, H, W) bool masks -> N compressed COCO RLEs {"size": [H, W], "counts": str}, as results files
    hold them (pycocotools reads str and bytes counts alike)."""
    if len(masks) == 0:
        return []
    # pycocotools wants (H, W, N) uint8 in Fortran order (every mask column-major), which is (N, W, H)
    # in C order: copying to that and encoding takes 78 ms for 100 masks of 480x640, against 93 ms
    # through np.asfortranarray of the (H, W, N) view.
    columns = np.ascontiguousarray(masks.view(np.uint8).transpose(0, 2, 1))
    rles = mask_utils.encode(columns.transpose(2, 1, 0))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def _area_and_box(rles: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' areas and [x, y, w, h] boxes of the RLEs, as loadRes computes them. area() runs on
    255 RLEs at a time: pycocotools 2.0.11's area() of more overflows a uint8 under numpy 2."""
    if not rles:
        return np.zeros(0, np.uint32), np.zeros((0, 4))
    areas = np.concatenate([mask_utils.area(rles[i : i + 255]) for i in range(0, len(rles), 255)])
    return areas, mask_utils.toBbox(rles)


def coco_results(
    image_id: int, masks: np.ndarray, labels: np.ndarray, scores: np.ndarray, category_ids: Mapping[int, int]
) -> list[dict[str, Any]]:
    """COCO results entries {"image_id", "category_id", "segmentation": RLE, "score"} of one image's
    detections, in their order; category_id = category_ids[label], and a detection whose label is not
    a key of category_ids (a stuff class) is left out. Inputs as `read_predictions` returns them."""
    keep = np.array([int(label) in category_ids for label in labels], bool)
    rles = encode_masks(masks[keep])
    return [
        {"image_id": int(image_id), "category_id": int(category_ids[int(label)]), "segmentation": rle, "score": score}
        for label, score, rle in zip(labels[keep].tolist(), scores[keep].tolist(), rles, strict=True)
    ]


def read_predictions(predictions: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(masks (N, H, W) bool, labels (N,) int64, scores (N,) float64) from one image's
    `post_process_instance_segmentation(..., return_binary_maps=True)` result."""
    try:
        masks, segments = predictions["segmentation"], predictions["segments_info"]
        labels = [s["label_id"] for s in segments]
        scores = [s["score"] for s in segments]
    except KeyError as e:
        raise ValueError(
            f"predictions need 'segmentation' and 'segments_info' with 'label_id' and 'score', missing {e}"
        ) from None
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(
            "predictions['segmentation'] must be the (N, H, W) masks of "
            f"post_process_instance_segmentation(..., return_binary_maps=True), got shape {masks.shape}"
        )
    return _check_detections(masks, labels, scores)


def _check_detections(masks: Any, labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The arrays as (N, H, W) bool, (N,) int64 and (N,) float64; raises on other shapes or types."""
    masks, labels, scores = np.asarray(masks), np.asarray(labels), np.asarray(scores)
    if masks.ndim != 3 or masks.dtype != np.bool_:
        raise ValueError(f"masks must be (N, H, W) bool, got {masks.dtype} {masks.shape}")
    n = masks.shape[0]
    if labels.shape != (n,) or scores.shape != (n,):
        raise ValueError(f"labels and scores must have the masks' shape ({n},), got {labels.shape} and {scores.shape}")
    if n and not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    scores = scores.astype(np.float64)
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return masks, labels.astype(np.int64), scores


def _truth_map(x: Any) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"truth_segments must be an (H, W) id map, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"truth_segments must hold integer ids, got dtype {x.dtype}")
    return x


def _quiet(function, *args) -> str:
    """Calls a pycocotools function, keeping its prints off stdout; returns what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        function(*args)
    return printed.getvalue()


class InstanceEvaluator:
    """Accumulates encoded ground truth and detections per image; `compute()` gives mask and box AP.

    categories: [{"id": contiguous label, "name", "isthing"}]; AP is over the thing categories. Image
    ids are the caller's unique ints. Picklable, and `merge` adds the images of other evaluators (the
    shards of several processes).
    """

    def __init__(self, categories: Sequence[Mapping[str, Any]]):
        try:
            self.categories = [
                {"id": int(c["id"]), "name": str(c["name"]), "isthing": bool(c["isthing"])} for c in categories
            ]
        except KeyError as e:
            raise ValueError(f"every category needs 'id', 'name' and 'isthing', missing {e}") from None
        ids = [c["id"] for c in self.categories]
        if len(set(ids)) != len(ids) or len({c["name"] for c in self.categories}) != len(ids):
            raise ValueError("category ids and names must be unique")
        self._isthing = {c["id"]: c["isthing"] for c in self.categories}
        self._things = {c["id"]: c["id"] for c in self.categories if c["isthing"]}
        if not self._things:
            raise ValueError("instance AP needs thing categories; none of the categories has isthing set")
        self.images: dict[int, tuple[int, int]] = {}  # image id -> (height, width)
        self.truth: list[dict[str, Any]] = []  # COCO annotations without "id" (numbered in compute)
        self.detections: list[dict[str, Any]] = []  # COCO results entries

    def update(
        self,
        image_id: int,
        truth_segments: Any,
        truth_info: Sequence[Mapping[str, Any]],
        predictions: Mapping[str, Any],
    ) -> None:
        """Adds one image: its (H, W) segment-id map and [{"id", "category_id", "iscrowd", "isthing"}]
        (a data source's sample; unlisted map ids are void), and the image's
        `post_process_instance_segmentation(..., return_binary_maps=True)` result at its own size."""
        self.update_arrays(image_id, truth_segments, truth_info, *read_predictions(predictions))

    def update_arrays(
        self,
        image_id: int,
        truth_segments: Any,
        truth_info: Sequence[Mapping[str, Any]],
        masks: Any,
        labels: Any,
        scores: Any,
    ) -> None:
        """As `update`, with the detections as (N, H, W) bool masks, (N,) labels and (N,) scores.
        Everything is checked before anything is added. A listed segment with no pixels is not
        counted (as PanopticEvaluator); empty predicted masks are kept (they match nothing)."""
        image_id = int(image_id)
        if image_id in self.images:
            raise ValueError(f"image id {image_id} was already added")
        segments = _truth_map(truth_segments)
        masks, labels, scores = _check_detections(masks, labels, scores)
        if masks.shape[1:] != segments.shape:
            raise ValueError(f"predicted masks {masks.shape[1:]} and truth_segments {segments.shape} differ in size")
        unknown = sorted(set(labels.tolist()) - self._isthing.keys())
        if unknown:
            raise ValueError(f"predicted labels {unknown} are not category ids")
        things = self._truth_things(truth_info)

        ids = np.array([s["id"] for s in things], np.int64)
        truth_masks = (segments[None] == ids[:, None, None]) if len(ids) else np.zeros((0, *segments.shape), bool)
        present = truth_masks.any((1, 2))
        rles = encode_masks(truth_masks[present])
        areas, boxes = _area_and_box(rles)
        kept = [s for s, p in zip(things, present.tolist(), strict=True) if p]
        self.truth += [
            {
                "image_id": image_id,
                "category_id": int(s["category_id"]),
                "iscrowd": int(bool(s.get("iscrowd", 0))),
                "segmentation": rle,
                "area": float(area),
                "bbox": box.tolist(),
            }
            for s, rle, area, box in zip(kept, rles, areas, boxes, strict=True)
        ]
        self.detections += coco_results(image_id, masks, labels, scores, self._things)
        self.images[image_id] = segments.shape

    def _truth_things(self, truth_info: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The thing segments of truth_info; raises on missing fields, repeated ids, unknown categories
        and an isthing that disagrees with its category."""
        try:
            ids = [int(s["id"]) for s in truth_info]
            categories = [int(s["category_id"]) for s in truth_info]
        except KeyError as e:
            raise ValueError(f"every truth_info segment needs 'id' and 'category_id', missing {e}") from None
        if len(set(ids)) != len(ids):
            raise ValueError(f"truth_info repeats segment ids: {sorted(ids)}")
        unknown = sorted(set(categories) - self._isthing.keys())
        if unknown:
            raise ValueError(f"truth_info has unknown category ids {unknown}")
        for s, category in zip(truth_info, categories, strict=True):
            if "isthing" in s and bool(s["isthing"]) != self._isthing[category]:
                raise ValueError(f"truth segment {s['id']}: isthing={s['isthing']} disagrees with category {category}")
        return [s for s, category in zip(truth_info, categories, strict=True) if self._isthing[category]]

    def merge(self, *others: InstanceEvaluator) -> None:
        """Adds the images of other evaluators of the same categories; raises if an image id repeats."""
        for other in others:
            if other.categories != self.categories:
                raise ValueError("cannot merge evaluators of different categories")
            repeated = sorted(self.images.keys() & other.images.keys())
            if repeated:
                raise ValueError(f"cannot merge: image ids {repeated[:10]} are in both evaluators")
        for other in others:
            self.images.update(other.images)
            self.truth += other.truth
            self.detections += other.detections

    def _coco(self) -> tuple[COCO, COCO]:
        """The ground truth and the results as pycocotools COCO objects (results as COCO.loadRes makes them)."""
        images = [{"id": i, "height": h, "width": w} for i, (h, w) in self.images.items()]
        categories = [{"id": c["id"], "name": c["name"]} for c in self.categories if c["isthing"]]
        truth = [{**a, "id": i + 1} for i, a in enumerate(self.truth)]  # COCOeval: id 0 means unmatched
        areas, boxes = _area_and_box([d["segmentation"] for d in self.detections])
        results = [
            {**d, "area": area, "bbox": box, "id": i + 1, "iscrowd": 0}
            for i, (d, area, box) in enumerate(zip(self.detections, areas, boxes, strict=True))
        ]
        cocos = []
        for entries in (truth, results):
            coco = COCO()
            coco.dataset = {"images": images, "categories": categories, "annotations": entries}
            _quiet(coco.createIndex)
            cocos.append(coco)
        return cocos[0], cocos[1]

    def compute(self) -> dict[str, Any]:
        """{"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class": {name: AP}, "summary": COCOeval's
        printout, "box": {the six numbers and "summary" for boxes}} in percent (mask AP at the top).
        NaN where COCOeval has no value (-1: no ground truth in an area range, or a class without
        ground truth in per_class); without any detection every AP with ground truth is 0."""
        if not self.images:
            raise ValueError("no images were added")
        truth, results = self._coco()
        out: dict[str, Any] = {}
        for iou_type in ("segm", "bbox"):
            evaluation = COCOeval(truth, results, iou_type)
            _quiet(evaluation.evaluate)
            _quiet(evaluation.accumulate)
            summary = _quiet(evaluation.summarize)
            numbers: dict[str, Any] = {
                name: 100 * float(value) if value >= 0 else float("nan")
                for name, value in zip(METRICS, evaluation.stats[:6], strict=True)
            }
            numbers["summary"] = summary
            if iou_type == "segm":
                # As detectron2: precision over IoU thresholds and recall points, area "all", 100 detections.
                precision = evaluation.eval["precision"][:, :, :, 0, -1]
                names = {c["id"]: c["name"] for c in self.categories}
                numbers["per_class"] = {}
                for k, category_id in enumerate(evaluation.params.catIds):
                    valid = precision[:, :, k][precision[:, :, k] > -1]
                    numbers["per_class"][names[category_id]] = 100 * float(valid.mean()) if valid.size else float("nan")
                out.update(numbers)
            else:
                out["box"] = numbers
        return out
