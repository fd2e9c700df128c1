"""Semantic (mIoU) and panoptic (PQ) metrics on hand-computable cases, against plain reference
implementations on random data, and their input checks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2f_jax.evaluation import PanopticEvaluator, SemanticEvaluator, confusion_matrix


def same_results(a, b) -> bool:
    """Equal nested dicts of numbers, NaN equal to NaN."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_results(a[k], b[k]) for k in a)
    return a == b or (math.isnan(a) and math.isnan(b))


# ----------------------------------------------------------------------------------------------------
# Semantic segmentation


def numpy_confusion(pred, target, k, ignore_index=None, valid=None):
    keep = np.ones(target.shape, bool) if valid is None else valid.copy()
    if ignore_index is not None:
        keep &= target != ignore_index
    return np.bincount(target[keep] * k + pred[keep], minlength=k * k).reshape(k, k)


def semantic(pred, target, k, **kwargs):
    evaluator = SemanticEvaluator(k, ignore_index=kwargs.pop("ignore_index", None))
    evaluator.update(np.array(pred), np.array(target), **kwargs)
    return evaluator.compute()


def test_semantic_perfect_prediction():
    target = np.random.default_rng(0).integers(0, 4, (2, 8, 8))
    result = semantic(target, target, 4)
    for key in ("mIoU", "fwIoU", "mAcc", "pAcc"):
        assert result[key] == pytest.approx(100)


def test_semantic_hand_computed_and_absent_class_excluded():
    # class 0: TP 1, 2 gt pixels, 1 predicted -> IoU 1/2, Acc 1/2; class 1: TP 2, 2 gt, 3 predicted
    # -> IoU 2/3, Acc 1; class 2 appears nowhere -> NaN, not in the means.
    result = semantic([[[0, 1, 1, 1]]], [[[0, 0, 1, 1]]], 3)
    assert result["mIoU"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    assert result["mAcc"] == pytest.approx(75)
    assert result["pAcc"] == pytest.approx(75)
    assert result["fwIoU"] == pytest.approx(100 * (0.5 * 1 / 2 + 0.5 * 2 / 3))
    assert result["per_class"]["1"] == pytest.approx({"IoU": 100 * 2 / 3, "Acc": 100})
    assert math.isnan(result["per_class"]["2"]["IoU"]) and math.isnan(result["per_class"]["2"]["Acc"])


def test_semantic_class_only_predicted_counts_with_iou_zero():
    result = semantic([[[0, 2]]], [[[0, 0]]], 3)  # class 2: predicted, never true
    assert result["per_class"]["2"]["IoU"] == 0 and math.isnan(result["per_class"]["2"]["Acc"])
    assert result["mIoU"] == pytest.approx(100 * (1 / 2 + 0) / 2)
    assert result["mAcc"] == pytest.approx(50)


def test_semantic_ignore_index_and_padding_are_not_counted():
    target = np.array([[[0, 1, 255, 255]]])
    pred = np.array([[[0, 1, 0, 2]]])
    assert semantic(pred, target, 3, ignore_index=255)["mIoU"] == pytest.approx(100)
    valid = np.array([[[True, True, False, False]]])
    assert semantic(pred, np.array([[[0, 1, 1, 1]]]), 3, valid=valid)["mIoU"] == pytest.approx(100)
    # an image padded inside a batch gives what it gives alone
    rng = np.random.default_rng(1)
    image_pred, image_target = rng.integers(0, 5, (1, 6, 7)), rng.integers(0, 5, (1, 6, 7))
    batch_pred, batch_target = rng.integers(0, 5, (1, 9, 9)), rng.integers(0, 5, (1, 9, 9))
    batch_pred[:, :6, :7], batch_target[:, :6, :7] = image_pred, image_target
    valid = np.zeros((1, 9, 9), bool)
    valid[:, :6, :7] = True
    assert same_results(semantic(batch_pred, batch_target, 5, valid=valid), semantic(image_pred, image_target, 5))


def test_confusion_matrix_jitted_equals_numpy_bincount():
    rng = np.random.default_rng(2)
    k = 7
    pred, target = rng.integers(0, k, (3, 17, 23)), rng.integers(0, k, (3, 17, 23))
    np.testing.assert_array_equal(confusion_matrix(pred, target, k), numpy_confusion(pred, target, k))
    target[rng.random(target.shape) < 0.2] = 255
    valid = rng.random(target.shape) < 0.9
    jitted = jax.jit(confusion_matrix, static_argnames=("num_classes", "ignore_index"))
    got = jitted(jnp.asarray(pred), jnp.asarray(target), num_classes=k, ignore_index=255, valid=jnp.asarray(valid))
    np.testing.assert_array_equal(got, numpy_confusion(pred, target, k, 255, valid))


def test_semantic_accumulation_equals_one_update():
    rng = np.random.default_rng(3)
    k = 6
    shapes = [(1, 13, 9), (2, 5, 31), (1, 40, 3)]
    pairs = [(rng.integers(0, k, s), rng.integers(0, k, s)) for s in shapes]
    accumulated = SemanticEvaluator(k)
    for i, (pred, target) in enumerate(pairs):
        if i == 1:  # device arrays take the unpadded path
            pred, target = jnp.asarray(pred), jnp.asarray(target)
        accumulated.update(pred, target)
    together = SemanticEvaluator(k)
    together.update(np.concatenate([p.ravel() for p, _ in pairs]), np.concatenate([t.ravel() for _, t in pairs]))
    np.testing.assert_array_equal(accumulated.matrix, together.matrix)
    np.testing.assert_array_equal(accumulated.matrix, sum(numpy_confusion(p.ravel(), t.ravel(), k) for p, t in pairs))
    assert same_results(accumulated.compute(), together.compute())


def test_semantic_errors():
    evaluator = SemanticEvaluator(3, ignore_index=255, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="same shape"):
        evaluator.update(np.zeros((1, 4, 4), int), np.zeros((1, 4, 5), int))
    with pytest.raises(ValueError, match="valid"):
        evaluator.update(np.zeros((1, 4, 4), int), np.zeros((1, 4, 4), int), valid=np.ones((1, 4, 5), bool))
    with pytest.raises(TypeError, match="integer"):
        evaluator.update(np.zeros((4, 4), np.float32), np.zeros((4, 4), int))
    with pytest.raises(ValueError, match=r"1 target and 0 predicted pixels"):
        evaluator.update(np.array([[0, 1]]), np.array([[0, 7]]))
    with pytest.raises(ValueError, match=r"0 target and 1 predicted pixels"):
        evaluator.update(jnp.array([[0, -1, 9]]), jnp.array([[0, 1, 255]], jnp.uint8))  # 9 is ignored
    assert evaluator.matrix.sum() == 0  # nothing was added by the failed updates
    with pytest.raises(ValueError, match="is a class id"):
        SemanticEvaluator(3, ignore_index=2)
    with pytest.raises(ValueError, match="class_names"):
        SemanticEvaluator(3, class_names=["a", "b"])


# ----------------------------------------------------------------------------------------------------
# Panoptic segmentation

CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 2, "name": "car", "isthing": 1},
    {"id": 3, "name": "sky", "isthing": 0},
    {"id": 4, "name": "grass", "isthing": 0},
    {"id": 5, "name": "road", "isthing": 0},  # never present
]


def pred_info(*pairs):
    return [{"id": i, "label_id": c, "was_fused": False, "score": 0.9} for i, c in pairs]


def gt_info(*pairs, crowd=()):
    return [{"id": i, "category_id": c, "iscrowd": int(i in crowd)} for i, c in pairs]


def panoptic(*images):
    evaluator = PanopticEvaluator(CATEGORIES)
    for image in images:
        evaluator.update(*image)
    return evaluator.compute()


def row(*runs):
    """A (1, W) id map from (id, length) runs."""
    return np.concatenate([np.full(n, i) for i, n in runs])[None]


def test_panoptic_perfect_prediction_and_absent_class_excluded():
    gt = np.zeros((6, 8), int)
    gt[:3], gt[3:, :4], gt[3:, 4:6] = 7, 8, 9  # sky, person, car; (3:, 6:) void
    pred = np.where(gt == 0, 0, gt - 6)  # ids 1, 2, 3
    # a listed ground-truth segment without pixels (here id 10) is not counted
    result = panoptic((pred, pred_info((1, 3), (2, 1), (3, 2)), gt, gt_info((7, 3), (8, 1), (9, 2), (10, 2))))
    assert (result["PQ"], result["SQ"], result["RQ"]) == pytest.approx((100, 100, 100))
    assert (result["n"], result["n_th"], result["n_st"]) == (3, 2, 1)
    assert result["PQ_th"] == pytest.approx(100) and result["PQ_st"] == pytest.approx(100)
    assert all(math.isnan(result["per_class"][name][m]) for name in ("grass", "road") for m in ("PQ", "SQ", "RQ"))


def test_panoptic_segment_split_in_two():
    # gt sky of 100 pixels predicted as two sky segments of 60 and 40: IoU 0.6 -> TP; 0.4 -> FP.
    result = panoptic((row((1, 60), (2, 40)), pred_info((1, 3), (2, 3)), row((5, 100)), gt_info((5, 3))))
    sky = result["per_class"]["sky"]
    assert (sky["TP"], sky["FP"], sky["FN"]) == (1, 1, 0)
    assert (sky["PQ"], sky["SQ"], sky["RQ"]) == pytest.approx((100 * 0.6 / 1.5, 60, 100 / 1.5))
    assert result["PQ"] == pytest.approx(40) and result["n"] == 1 and math.isnan(result["PQ_th"])


@pytest.mark.parametrize("length, shift, matched", [(100, 33, True), (100, 34, False), (60, 20, False)])
def test_panoptic_iou_just_above_and_below_half(length, shift, matched):
    # gt: sky [0, length), grass 40 pixels after it; pred sky [shift, shift + length), void elsewhere.
    # IoU = (length - shift) / (length + shift): 67/133 = 0.504 matches, 66/134 = 0.493 does not,
    # and 40/80 = 0.5 does not either (IoU must be > 0.5).
    gt = row((1, length), (2, 40))
    pred = row((0, shift), (9, length), (0, 40 - shift))
    sky = panoptic((pred, pred_info((9, 3)), gt, gt_info((1, 3), (2, 4))))["per_class"]["sky"]
    iou = (length - shift) / (length + shift)
    if matched:
        assert (sky["TP"], sky["FP"], sky["FN"]) == (1, 0, 0) and sky["PQ"] == pytest.approx(100 * iou)
    else:
        assert (sky["TP"], sky["FP"], sky["FN"]) == (0, 1, 1) and sky["PQ"] == 0 and sky["SQ"] == 0


def test_panoptic_void_leaves_the_union():
    # gt sky [0, 100) then void; pred sky [34, 134): IoU 66 / (100 + 100 - 66 - 34 on void) = 0.66.
    sky = panoptic((row((0, 34), (9, 100)), pred_info((9, 3)), row((1, 100), (0, 34)), gt_info((1, 3))))
    assert sky["per_class"]["sky"]["TP"] == 1 and sky["per_class"]["sky"]["SQ"] == pytest.approx(66)


def test_panoptic_false_positive_on_void_is_not_counted():
    # gt: sky [0, 20), void [20, 40). pred: sky [0, 12) (IoU 0.6), car 1 [12, 15) + [25, 32) with 7
    # of 10 pixels on void (ignored), car 2 [15, 25) with exactly 5 of 10 (not more than half: FP).
    gt = row((1, 20), (0, 20))
    pred = row((3, 12), (1, 3), (2, 10), (1, 7), (0, 8))
    result = panoptic((pred, pred_info((1, 2), (2, 2), (3, 3)), gt, gt_info((1, 3))))
    car, sky = result["per_class"]["car"], result["per_class"]["sky"]
    assert (car["TP"], car["FP"], car["FN"]) == (0, 1, 0)
    assert (sky["TP"], sky["FP"], sky["FN"]) == (1, 0, 0)


def test_panoptic_crowd_regions():
    # gt: person crowd [0, 20), car [20, 40). pred: a person on the crowd (ignored, never matched), a
    # car on the crowd (a person crowd does not excuse a car: FP), a person with 6 of 11 pixels on
    # the crowd and 5 on the car (ignored) and the car's right part (IoU 15/20: TP).
    gt = row((1, 20), (2, 20))
    pred = row((1, 10), (2, 4), (3, 6), (3, 5), (4, 15))
    result = panoptic((pred, pred_info((1, 1), (2, 2), (3, 1), (4, 2)), gt, gt_info((1, 1), (2, 2), crowd=(1,))))
    person, car = result["per_class"]["person"], result["per_class"]["car"]
    assert (person["TP"], person["FP"], person["FN"]) == (0, 0, 0) and math.isnan(person["PQ"])
    assert (car["TP"], car["FP"], car["FN"]) == (1, 1, 0) and car["SQ"] == pytest.approx(75)
    assert result["n"] == 1


def test_panoptic_missing_class_and_nothing_predicted():
    gt = row((1, 10), (2, 10))
    result = panoptic((np.full((1, 20), -1), [], gt, gt_info((1, 2), (2, 4))))
    assert result["per_class"]["car"]["FN"] == 1 and result["per_class"]["car"]["PQ"] == 0
    assert (result["PQ"], result["n"], result["n_th"], result["n_st"]) == (0, 2, 1, 1)


def test_panoptic_things_and_stuff_and_accumulation():
    # image 1: sky perfect, car missed; image 2: car perfect, grass predicted as sky.
    image1 = (row((1, 10), (0, 5)), pred_info((1, 3)), row((4, 10), (5, 5)), gt_info((4, 3), (5, 2)))
    image2 = (row((1, 8), (2, 8)), pred_info((1, 2), (2, 3)), row((4, 8), (5, 8)), gt_info((4, 2), (5, 4)))
    result = panoptic(image1, image2)
    # car: TP 1 FN 1 -> PQ 1 / 1.5; sky: TP 1 FP 1 -> 1 / 1.5; grass: FN 1 -> 0.
    assert result["PQ_th"] == pytest.approx(100 / 1.5) and result["n_th"] == 1
    assert result["PQ_st"] == pytest.approx(100 / 1.5 / 2) and result["n_st"] == 2
    assert result["PQ"] == pytest.approx(100 * (2 / 1.5) / 3) and result["SQ"] == pytest.approx(100 * 2 / 3)
    # the two images side by side (ids of the second shifted) count the same as one update
    shifted = (image2[0] + 10 * (image2[0] > 0), pred_info((11, 2), (12, 3)), image2[2] + 10, gt_info((14, 2), (15, 4)))
    side_by_side = (
        np.concatenate([image1[0], shifted[0]], 1),
        image1[1] + shifted[1],
        np.concatenate([image1[2], shifted[2]], 1),
        image1[3] + shifted[3],
    )
    assert same_results(panoptic(side_by_side), result)


def reference_pq_stats(pred, pred_segments, gt, gt_segments, categories):
    """A plain transcription of panopticapi's per-image loop (pq_compute_single_core)."""
    stats = {c["id"]: [0, 0, 0, 0.0] for c in categories}  # tp, fp, fn, iou
    gt_segs = {s["id"]: dict(s, area=int((gt == s["id"]).sum())) for s in gt_segments}
    pred_segs = {s["id"]: dict(category_id=s["label_id"], area=int((pred == s["id"]).sum())) for s in pred_segments}
    void = -(10**6)
    gt = np.where(np.isin(gt, list(gt_segs)), gt, void)
    pairs = {}
    for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist(), strict=True):
        pairs[g, p] = pairs.get((g, p), 0) + 1
    gt_matched, pred_matched = set(), set()
    for (g, p), inter in pairs.items():
        if g not in gt_segs or p not in pred_segs or gt_segs[g]["iscrowd"]:
            continue
        if gt_segs[g]["category_id"] != pred_segs[p]["category_id"]:
            continue
        iou = inter / (pred_segs[p]["area"] + gt_segs[g]["area"] - inter - pairs.get((void, p), 0))
        if iou > 0.5:
            stats[gt_segs[g]["category_id"]][0] += 1
            stats[gt_segs[g]["category_id"]][3] += iou
            gt_matched.add(g)
            pred_matched.add(p)
    crowd = {}
    for g, info in gt_segs.items():
        if g in gt_matched:
            continue
        if info["iscrowd"]:
            crowd[info["category_id"]] = g
            continue
        stats[info["category_id"]][2] += 1
    for p, info in pred_segs.items():
        if p in pred_matched:
            continue
        ignored = pairs.get((void, p), 0)
        if info["category_id"] in crowd:
            ignored += pairs.get((crowd[info["category_id"]], p), 0)
        if ignored / info["area"] <= 0.5:
            stats[info["category_id"]][1] += 1
    return stats


def test_panoptic_matches_panopticapi_loop_on_random_images():
    rng = np.random.default_rng(4)
    evaluator = PanopticEvaluator(CATEGORIES)
    expected = {c["id"]: [0, 0, 0, 0.0] for c in CATEGORIES}
    for _ in range(20):
        # blocky random maps so that segments overlap in every proportion
        gt = np.kron(rng.integers(0, 7, (4, 5)), np.ones((3, 4), int))
        pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, 7, gt.shape))
        gt_ids = [int(i) for i in np.unique(gt) if i != 0 or rng.random() < 0.5]  # id 0 listed or void
        crowd_cats = set()  # at most one crowd segment per thing category, as in COCO
        gt_segments = []
        for i in gt_ids:
            category = int(rng.integers(1, 5))
            is_crowd = category <= 2 and category not in crowd_cats and rng.random() < 0.3
            if is_crowd:
                crowd_cats.add(category)
            gt_segments.append({"id": i, "category_id": category, "iscrowd": int(is_crowd)})
        pred_segments = pred_info(*[(int(i), int(rng.integers(1, 5))) for i in np.unique(pred) if i != 0])
        evaluator.update(pred, pred_segments, gt, gt_segments)
        for cat, values in reference_pq_stats(pred, pred_segments, gt, gt_segments, CATEGORIES).items():
            expected[cat] = [a + b for a, b in zip(expected[cat], values, strict=True)]
    for i, c in enumerate(CATEGORIES):
        tp, fp, fn, iou = expected[c["id"]]
        assert (evaluator.tp[i], evaluator.fp[i], evaluator.fn[i]) == (tp, fp, fn)
        assert evaluator.iou[i] == pytest.approx(iou)
    assert evaluator.tp.sum() > 10 and evaluator.fp.sum() > 10 and evaluator.fn.sum() > 10


def test_panoptic_errors():
    evaluator = PanopticEvaluator(CATEGORIES)
    gt, gts = row((1, 10)), gt_info((1, 3))
    cases = [
        ((row((1, 9)), pred_info((1, 3)), gt, gts), "differ in size"),
        ((row((1, 10)), pred_info((1, 9)), gt, gts), r"predicted segments_info has unknown category ids \[9\]"),
        ((row((1, 10)), pred_info((1, 3)), gt, gt_info((1, 42))), r"ground-truth .* unknown category ids \[42\]"),
        ((row((1, 5), (2, 5)), pred_info((1, 3)), gt, gts), r"predicted ids \[2\] are in the map"),
        ((row((1, 10)), pred_info((1, 3), (2, 3)), gt, gts), r"segments \[2\] are listed but have no pixels"),
        ((row((1, 10)), pred_info((1, 3), (1, 4)), gt, gts), "repeats ids"),
        ((row((0, 10)), pred_info((0, 3)), gt, gts), "mean void"),
        ((row((1, 10)), [{"id": 1, "category_id": 3}], gt, gts), "'label_id'"),
        ((row((1, 10)), pred_info((1, 3)), gt, [{"id": 1, "category_id": 3, "isthing": 1}]), "disagrees"),
        ((np.ones((2, 2, 2), int), [], gt, gts), r"\(H, W\)"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            evaluator.update(*args)
    assert evaluator.tp.sum() + evaluator.fp.sum() + evaluator.fn.sum() == 0
    with pytest.raises(ValueError, match="unique"):
        PanopticEvaluator(CATEGORIES + [CATEGORIES[0]])


def test_panoptic_segments_of_the_jitted_result_equal_the_host_post_processing():
    """`panoptic_segments`' reading of `panoptic_inference` gives what `post_process_panoptic_segmentation`
    gives for the same logits, fused stuff segments included."""
    from types import SimpleNamespace

    from m2f_jax.processing.postprocess import (
        panoptic_inference,
        panoptic_segments,
        post_process_panoptic_segmentation,
    )

    rng = np.random.default_rng(3)
    class_logits = rng.normal(0, 1, (2, 16, 6)).astype(np.float32)
    class_logits[np.arange(2)[:, None], np.arange(16), rng.integers(0, 6, (2, 16))] += 8.0  # confident queries
    mask_logits = rng.normal(-3, 1, (2, 16, 12, 12)).astype(np.float32)
    for b, q in np.ndindex(2, 16):  # each query: a random box
        y, x = rng.integers(0, 9, 2)
        mask_logits[b, q, y : y + rng.integers(2, 6), x : x + rng.integers(2, 6)] += 7.0
    fuse = np.array([True, True, False, False, False])
    host = post_process_panoptic_segmentation(
        SimpleNamespace(class_queries_logits=class_logits, masks_queries_logits=mask_logits),
        threshold=0.5, label_ids_to_fuse={0, 1},
    )  # fmt: skip
    device = jax.device_get(panoptic_inference(class_logits, mask_logits, 0.5, fuse_classes=fuse, size=(48, 48)))
    for b in range(2):
        ours = panoptic_segments(device, b)
        np.testing.assert_array_equal(ours["segmentation"], host[b]["segmentation"])
        assert [(s["id"], s["label_id"]) for s in ours["segments_info"]] == [
            (s["id"], s["label_id"]) for s in host[b]["segments_info"]
        ]
        np.testing.assert_allclose([s["score"] for s in ours["segments_info"]],
                                   [s["score"] for s in host[b]["segments_info"]], atol=1e-5)  # fmt: skip
    assert sum(len(h["segments_info"]) for h in host) >= 4
