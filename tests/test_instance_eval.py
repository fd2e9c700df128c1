"""COCO instance AP (InstanceEvaluator) against pycocotools called directly on the same detections,
and the prediction writers read back with the official formats' decoders."""

from __future__ import annotations

import json
import math
import os
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from m2f_jax.evaluation import InstanceEvaluator, InstanceWriter, PanopticWriter, SemanticWriter
from m2f_jax.evaluation import writers as writers_module
from m2f_jax.processing.postprocess import post_process_instance_segmentation

# Contiguous labels 0..7; 5 things and 3 stuff classes, mixed.
CATEGORIES = [
    {"id": i, "name": name, "isthing": thing}
    for i, (name, thing) in enumerate(
        [("person", 1), ("sky", 0), ("car", 1), ("dog", 1), ("grass", 0), ("cup", 1), ("wall", 0), ("bus", 1)]
    )
]
THINGS = [c["id"] for c in CATEGORIES if c["isthing"]]
STUFF = [c["id"] for c in CATEGORIES if not c["isthing"]]
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


# ----------------------------------------------------------------------------------------------------
# Data: random images (id maps + segments_info) and detections, and the reference evaluation


def random_truth(rng, h, w, n, crowd_rate=0.15):
    """An (H, W) int32 id map of n rectangles painted over each other (some hidden entirely), and its info."""
    segments = np.zeros((h, w), np.int32)
    info = []
    for i in range(1, n + 1):
        y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
        y1, x1 = rng.integers(y0 + 1, h + 1), rng.integers(x0 + 1, w + 1)
        segments[y0:y1, x0:x1] = i
        category = int(rng.integers(len(CATEGORIES)))
        thing = bool(CATEGORIES[category]["isthing"])
        crowd = thing and rng.random() < crowd_rate
        info.append({"id": i, "category_id": category, "iscrowd": crowd, "isthing": thing})
    return segments, info


def random_detections(rng, segments, info, n):
    """n detections: truth masks shifted by a few pixels (a spread of IoUs), random boxes and a few
    empty masks; labels mostly the truth's, some random (stuff included); scores in (0, 1)."""
    h, w = segments.shape
    masks, labels = np.zeros((n, h, w), bool), np.zeros(n, np.int64)
    for k in range(n):
        kind = rng.random()
        if info and kind < 0.6:
            s = info[rng.integers(len(info))]
            dy, dx = rng.integers(-3, 4, 2)
            masks[k] = np.roll(segments == s["id"], (dy, dx), (0, 1))
            labels[k] = s["category_id"] if rng.random() < 0.8 else rng.integers(len(CATEGORIES))
        elif kind < 0.95:
            y0, x0 = rng.integers(0, h - 1), rng.integers(0, w - 1)
            masks[k, y0 : rng.integers(y0 + 1, h + 1), x0 : rng.integers(x0 + 1, w + 1)] = True
            labels[k] = rng.integers(len(CATEGORIES))
        else:
            labels[k] = rng.choice(THINGS)  # an empty mask
    return masks, labels, rng.random(n)


def random_images(seed, count=6):
    rng = np.random.default_rng(seed)
    images = []
    for image_id in range(1, count + 1):
        h, w = int(rng.integers(24, 64)), int(rng.integers(24, 64))
        segments, info = random_truth(rng, h, w, int(rng.integers(0, 12)))
        images.append((image_id * 7, segments, info, *random_detections(rng, segments, info, int(rng.integers(0, 40)))))
    return images


def rle(mask):
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def reference_cocos(images, category_ids=None):
    """Ground truth and results as COCO objects, built as a user of pycocotools would (loadRes), with
    category ids mapped through `category_ids` (label -> id; default: the labels)."""
    ids = category_ids or {c: c for c in THINGS}
    truth, results = [], []
    for image_id, segments, info, masks, labels, scores in images:
        for s in info:
            mask = segments == s["id"]
            if s["isthing"] and mask.any():
                encoded = rle(mask)
                truth.append(
                    {
                        "id": len(truth) + 1,
                        "image_id": image_id,
                        "category_id": ids[s["category_id"]],
                        "segmentation": encoded,
                        "area": float(mask_utils.area(encoded)),
                        "bbox": list(mask_utils.toBbox(encoded)),
                        "iscrowd": int(s["iscrowd"]),
                    }
                )
        for mask, label, score in zip(masks, labels, scores, strict=True):
            if int(label) in ids:
                results.append(
                    {"image_id": image_id, "category_id": ids[int(label)], "segmentation": rle(mask), "score": score}
                )
    gt = COCO()
    gt.dataset = {
        "images": [{"id": i, "height": s.shape[0], "width": s.shape[1]} for i, s, *_ in images],
        "categories": [{"id": ids[c["id"]], "name": c["name"]} for c in CATEGORIES if c["isthing"]],
        "annotations": truth,
    }
    gt.createIndex()
    if results:
        dt = gt.loadRes(results)
    else:  # loadRes fails on an empty list: an empty results set, as COCO builds one
        dt = COCO()
        dt.dataset = {**gt.dataset, "annotations": []}
        dt.createIndex()
    return gt, dt


def reference_numbers(gt, dt):
    """{"segm": {six numbers, "per_class"}, "bbox": {six numbers}} in percent, NaN for COCOeval's -1."""
    out = {}
    for iou_type in ("segm", "bbox"):
        e = COCOeval(gt, dt, iou_type)
        e.evaluate()
        e.accumulate()
        e.summarize()
        out[iou_type] = {m: 100 * s if s >= 0 else math.nan for m, s in zip(METRICS, e.stats[:6], strict=True)}
        per_class = {}
        for k, category_id in enumerate(e.params.catIds):
            p = e.eval["precision"][:, :, k, 0, 2]
            per_class[gt.cats[category_id]["name"]] = 100 * p[p > -1].mean() if (p > -1).any() else math.nan
        out[iou_type]["per_class"] = per_class
    return out


def reference(images):
    return reference_numbers(*reference_cocos(images))


def evaluate(images):
    evaluator = InstanceEvaluator(CATEGORIES)
    for image in images:
        evaluator.update_arrays(*image)
    return evaluator.compute()


def same(a, b):
    return a == b or (math.isnan(a) and math.isnan(b))


def assert_matches(ours, ref):
    """All six numbers of segm and bbox, and the per-class mask AP, exactly."""
    for m in METRICS:
        assert same(ours[m], ref["segm"][m]), (m, ours[m], ref["segm"][m])
        assert same(ours["box"][m], ref["bbox"][m]), ("box " + m, ours["box"][m], ref["bbox"][m])
    assert ours["per_class"].keys() == ref["segm"]["per_class"].keys()
    for name, value in ours["per_class"].items():
        assert same(value, ref["segm"]["per_class"][name]), (name, value, ref["segm"]["per_class"][name])


def as_reference(result):
    """An evaluator's result laid out as `reference`'s, to compare two evaluators."""
    return {"segm": result, "bbox": result["box"]}


def box(h, w, y0, y1, x0, x1):
    mask = np.zeros((h, w), bool)
    mask[y0:y1, x0:x1] = True
    return mask


# ----------------------------------------------------------------------------------------------------
# InstanceEvaluator against pycocotools


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_images_match_pycocotools(seed):
    images = random_images(seed)
    ours, ref = evaluate(images), reference(images)
    assert_matches(ours, ref)
    assert 0 < ours["AP"] < 100  # a case that tests something
    assert set(ours["per_class"]) == {c["name"] for c in CATEGORIES if c["isthing"]}
    assert "maxDets=100" in ours["summary"] and "maxDets=100" in ours["box"]["summary"]


def test_hand_made_cases_match_pycocotools():
    """A crowd region (detections on it are ignored), an image without truth, one without predictions,
    an empty predicted mask, and stuff truth and predictions (left out)."""
    h, w = 40, 50
    crowd = np.zeros((h, w), np.int32)
    crowd[0:20, 0:30] = 1  # a crowd of people
    crowd[25:35, 5:15] = 2  # a person
    crowd[30:40, 30:50] = 3  # sky (stuff)
    crowd_info = [
        {"id": 1, "category_id": 0, "iscrowd": True, "isthing": True},
        {"id": 2, "category_id": 0, "iscrowd": False, "isthing": True},
        {"id": 3, "category_id": 1, "iscrowd": False, "isthing": False},
    ]
    crowd_masks = np.stack(
        [box(h, w, 2, 10, 2, 10), crowd == 2, box(h, w, 10, 19, 5, 25), crowd == 3, np.zeros((h, w), bool)]
    )
    crowd_image = (1, crowd, crowd_info, crowd_masks, np.array([0, 0, 0, 1, 0]), np.array([0.9, 0.7, 0.8, 0.95, 0.6]))
    no_truth = (2, np.zeros((h, w), np.int32), [], crowd_masks[:2], np.array([2, 3]), np.array([0.5, 0.99]))
    no_predictions = (3, crowd, crowd_info, np.zeros((0, h, w), bool), np.zeros(0, int), np.zeros(0))
    images = [crowd_image, no_truth, no_predictions]
    ours = evaluate(images)
    assert_matches(ours, reference(images))
    assert math.isnan(ours["per_class"]["car"]) and ours["per_class"]["person"] > 0

    # Stuff truth and stuff predictions are left out: the image without them scores the same.
    labels, scores = crowd_image[4], crowd_image[5]
    thing = np.isin(labels, THINGS)
    stuff_free = np.where(crowd == 3, 0, crowd)
    without_stuff = (1, stuff_free, crowd_info[:2], crowd_masks[thing], labels[thing], scores[thing])
    evaluator = InstanceEvaluator(CATEGORIES)
    evaluator.update_arrays(*crowd_image)
    assert {a["category_id"] for a in evaluator.truth} == {d["category_id"] for d in evaluator.detections} == {0}
    result = evaluator.compute()
    # By hand: the two best detections lie on the crowd (ignored), the third finds the person, the
    # empty mask comes last: precision 1 up to recall 1.
    assert result["AP"] == pytest.approx(100)
    assert_matches(result, reference([without_stuff]))
    assert_matches(evaluate([without_stuff]), as_reference(result))


def test_no_predictions_at_all():
    nothing = (np.zeros((0, 30, 30), bool), [], [])
    images = [(i, *random_truth(np.random.default_rng(i), 30, 30, 6, 0), *nothing) for i in (1, 2)]
    ours = evaluate(images)
    assert_matches(ours, reference(images))
    assert ours["AP"] == 0 and ours["box"]["AP"] == 0


def test_more_than_100_detections_on_an_image():
    """COCOeval keeps the 100 best per image and category; the evaluator hands it every detection (here
    more than 255 in all, which pycocotools' area() cannot take at once)."""
    rng = np.random.default_rng(5)
    segments, info = random_truth(rng, 48, 64, 10, 0)
    masks, labels, scores = random_detections(rng, segments, info, 300)
    labels[:150] = 0  # 150 persons: more than 100 of one category
    labels[150:] = rng.choice(THINGS, 150)
    images = [(1, segments, info, masks, labels, scores)]
    assert_matches(evaluate(images), reference(images))


def test_update_takes_post_processing_output():
    """update() reads `post_process_instance_segmentation(..., return_binary_maps=True)` (the COCO AP
    setting: threshold 0, no overlap removal) as update_arrays reads the same masks."""
    rng = np.random.default_rng(3)
    outputs = SimpleNamespace(
        class_queries_logits=rng.normal(size=(1, 12, len(CATEGORIES) + 1)).astype(np.float32),
        masks_queries_logits=rng.normal(size=(1, 12, 8, 10)).astype(np.float32) * 3,
    )
    segments, info = random_truth(rng, 32, 40, 8, 0)
    (prediction,) = post_process_instance_segmentation(
        outputs, threshold=0, overlap_mask_area_threshold=0, return_binary_maps=True, target_sizes=[(32, 40)]
    )
    assert len(prediction["segments_info"]) == 12 * len(CATEGORIES)  # fewer than top_k=100 pairs
    a, b = InstanceEvaluator(CATEGORIES), InstanceEvaluator(CATEGORIES)
    a.update(4, segments, info, prediction)
    labels = [s["label_id"] for s in prediction["segments_info"]]
    scores = [s["score"] for s in prediction["segments_info"]]
    b.update_arrays(4, segments, info, prediction["segmentation"], labels, scores)
    assert a.detections == b.detections and a.compute()["AP"] == b.compute()["AP"]
    assert_matches(a.compute(), reference([(4, segments, info, prediction["segmentation"], labels, scores)]))


def test_merge_equals_one_evaluator_and_refuses_repeated_ids():
    images = random_images(7)
    whole = evaluate(images)
    first, second = InstanceEvaluator(CATEGORIES), InstanceEvaluator(CATEGORIES)
    for image in images[:2]:
        first.update_arrays(*image)
    for image in images[2:]:
        second.update_arrays(*image)
    second = pickle.loads(pickle.dumps(second))  # as from another process
    second.merge(first)  # the order of the shards does not matter
    assert_matches(second.compute(), as_reference(whole))
    with pytest.raises(ValueError, match="image ids"):
        second.merge(first)
    with pytest.raises(ValueError, match="categories"):
        InstanceEvaluator(CATEGORIES[:4]).merge(first)


def test_input_checks():
    with pytest.raises(ValueError, match="thing"):
        InstanceEvaluator([c for c in CATEGORIES if not c["isthing"]])
    with pytest.raises(ValueError, match="no images"):
        InstanceEvaluator(CATEGORIES).compute()
    evaluator = InstanceEvaluator(CATEGORIES)
    segments, info = random_truth(np.random.default_rng(0), 20, 30, 4, 0)
    none = (np.zeros((0, 20, 30), bool), [], [])
    with pytest.raises(ValueError, match="differ in size"):
        evaluator.update_arrays(1, segments, info, np.zeros((1, 20, 31), bool), [0], [0.5])
    with pytest.raises(ValueError, match=r"labels \[8\]"):
        evaluator.update_arrays(1, segments, info, np.zeros((1, 20, 30), bool), [8], [0.5])
    with pytest.raises(ValueError, match=r"unknown category ids \[9\]"):
        evaluator.update_arrays(1, segments, [{"id": 1, "category_id": 9}], *none)
    with pytest.raises(ValueError, match="isthing"):
        evaluator.update_arrays(1, segments, [{"id": 1, "category_id": 1, "isthing": True}], *none)
    with pytest.raises(ValueError, match="missing 'segments_info'"):
        evaluator.update(1, segments, info, {"segmentation": none[0]})
    with pytest.raises(ValueError, match="return_binary_maps"):
        evaluator.update(1, segments, info, {"segmentation": segments, "segments_info": []})
    assert not evaluator.images and not evaluator.truth  # nothing added by the refused calls
    evaluator.update_arrays(1, segments, info, *none)
    with pytest.raises(ValueError, match="already added"):
        evaluator.update_arrays(1, segments, info, *none)


# ----------------------------------------------------------------------------------------------------
# Writers


def rgb2id(rgb):
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def test_panoptic_writer(tmp_path):
    segmentation = np.full((20, 30), -1, np.int32)
    segmentation[2:6, 3:9] = 1
    segmentation[10:20, 0:30] = 70000  # an id that spreads over R, G and B
    segmentation[0, 0] = 0
    info = [{"id": 1, "label_id": 2, "score": 0.9}, {"id": 70000, "label_id": 0, "score": 0.8}]
    folder = str(tmp_path / "panoptic_val")
    with PanopticWriter(folder, [1, 3, 7]) as writer:  # labels 0, 1, 2 -> the data set's ids 1, 3, 7
        writer.add(139, "000000000139.jpg", segmentation, info)
        writer.add(140, "b.jpg", np.zeros((4, 4), np.int32), [])
    ids = rgb2id(np.asarray(Image.open(os.path.join(folder, "000000000139.png")).convert("RGB")))
    np.testing.assert_array_equal(ids, np.where(segmentation < 0, 0, segmentation))
    with open(folder + ".json") as f:
        annotations = json.load(f)["annotations"]
    assert annotations[0] == {
        "image_id": 139,
        "file_name": "000000000139.png",
        "segments_info": [
            {"id": 1, "category_id": 7, "iscrowd": 0, "bbox": [3, 2, 6, 4], "area": 24},
            {"id": 70000, "category_id": 1, "iscrowd": 0, "bbox": [0, 10, 30, 10], "area": 300},
        ],
    }
    assert annotations[1]["segments_info"] == []
    assert sorted(os.listdir(tmp_path)) == ["panoptic_val", "panoptic_val.json"]  # no temporary files left

    with pytest.raises(FileExistsError):
        PanopticWriter(folder, [1, 3, 7])
    writer = PanopticWriter(folder, [1, 3, 7], json_path=str(tmp_path / "other.json"))
    with pytest.raises(FileExistsError):
        writer.add(1, "000000000139.jpg", segmentation, info)
    with pytest.raises(ValueError, match="not in segments_info"):
        writer.add(1, "c.jpg", segmentation, info[:1])
    with pytest.raises(ValueError, match="no pixels"):
        writer.add(1, "c.jpg", segmentation, [*info, {"id": 5, "label_id": 0}])
    with pytest.raises(ValueError, match="label 3"):
        writer.add(1, "c.jpg", segmentation, [info[0], {"id": 70000, "label_id": 3}])


def test_instance_writer_json_scores_as_the_evaluator(tmp_path):
    images = random_images(11)
    dataset_ids = {c["id"]: 10 + 3 * c["id"] for c in CATEGORIES}  # the data set's own ids
    evaluator = InstanceEvaluator(CATEGORIES)
    path = str(tmp_path / "instances_results.json")
    with InstanceWriter(path, [dataset_ids[c["id"]] for c in CATEGORIES], thing_labels=THINGS) as writer:
        for image_id, segments, info, masks, labels, scores in images:
            evaluator.update_arrays(image_id, segments, info, masks, labels, scores)
            pairs = enumerate(zip(labels.tolist(), scores.tolist(), strict=True))
            segments_info = [{"id": k, "label_id": label, "score": score} for k, (label, score) in pairs]
            writer.add(image_id, {"segmentation": masks, "segments_info": segments_info})
    with open(path) as f:
        results = json.load(f)
    assert {r["category_id"] for r in results} <= {dataset_ids[c] for c in THINGS}
    assert all(isinstance(r["segmentation"]["counts"], str) for r in results)
    gt, _ = reference_cocos(images, {c: dataset_ids[c] for c in THINGS})
    assert_matches(evaluator.compute(), reference_numbers(gt, gt.loadRes(path)))
    with pytest.raises(ValueError, match="label 9"):
        writer.add(99, {"segmentation": np.zeros((1, 4, 4), bool), "segments_info": [{"label_id": 9, "score": 1}]})


def test_semantic_writer(tmp_path):
    labels = np.array([[0, 1], [149, 3]], np.int64)
    ade = SemanticWriter(str(tmp_path / "ade"), range(1, 151))  # ADE20K's submission: value = label + 1
    path = ade.add("ADE_val_00000001.jpg", labels)
    written = np.asarray(Image.open(path))
    assert path.endswith("ADE_val_00000001.png") and written.dtype == np.uint8
    np.testing.assert_array_equal(written, labels + 1)
    wide = SemanticWriter(str(tmp_path / "wide"), {0: 0, 1: 300, 3: 7, 149: 65535})
    written = np.asarray(Image.open(wide.add("x.png", labels)))
    assert written.dtype.itemsize >= 2  # a 16-bit PNG
    np.testing.assert_array_equal(written, [[0, 300], [65535, 7]])
    with pytest.raises(ValueError, match="label 2"):
        wide.add("y.png", np.array([[2]]))
    with pytest.raises(FileExistsError):
        ade.add("ADE_val_00000001.jpg", labels)
    assert ade.add(os.path.join("frankfurt", "a.png"), labels).endswith(os.path.join("ade", "frankfurt", "a.png"))
    with pytest.raises(ValueError, match="inside the output folder"):
        ade.add(os.path.join("..", "a.png"), labels)


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def fail_half_way(self, f, *args, **kwargs):
        f.write(b"\x89PNG half a file")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", fail_half_way)
    with pytest.raises(OSError, match="disk full"):
        SemanticWriter(str(tmp_path / "semantic"), range(3)).add("a.png", np.zeros((4, 4), np.int32))
    with pytest.raises(OSError, match="disk full"), PanopticWriter(str(tmp_path / "panoptic"), [1]) as writer:
        writer.add(1, "a.png", np.ones((4, 4), np.int32), [{"id": 1, "label_id": 0}])
    assert os.listdir(tmp_path / "semantic") == [] and os.listdir(tmp_path / "panoptic") == []
    assert not os.path.exists(tmp_path / "panoptic.json")  # an exception in the with block writes no JSON

    monkeypatch.setattr(writers_module.json, "dumps", lambda value: 1 / 0)
    writer = InstanceWriter(str(tmp_path / "results.json"), [1])
    with pytest.raises(ZeroDivisionError):
        writer.close()
    assert sorted(os.listdir(tmp_path)) == ["panoptic", "semantic"]
