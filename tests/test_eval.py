"""The inference path (`Predictor`) and `evaluate()`: one compilation per shape bucket, an image's
result independent of its batch and bucket, metrics equal to independent computations on the same
predictions, and the four data-set layouts (eval.py on devices and processes: test_eval_script.py)."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

import m2f_jax
from m2f_jax.data.sources import open_source
from m2f_jax.evaluation.evaluate import IGNORE, evaluate, semantic_truth, shard
from m2f_jax.evaluation.instance import InstanceEvaluator
from m2f_jax.evaluation.panoptic import PanopticEvaluator
from m2f_jax.inference import Predictor, _forward, post_process, semantic_tta

from helpers import tiny_config

SMALL = m2f_jax.ImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})


def random_model(num_labels: int, seed: int = 0):
    """A tiny model with random weights (its own label count: its own compilations)."""
    return m2f_jax.Mask2FormerForUniversalSegmentation(
        tiny_config(window_size=7, num_labels=num_labels), rngs=nnx.Rngs(seed)
    )


def test_a_folder_of_twelve_sizes_compiles_once_per_bucket():
    model = random_model(num_labels=11)
    predictor = Predictor(model, SMALL, batch_size=4)
    rng = np.random.RandomState(0)
    images = [rng.randint(0, 256, (30 + 9 * i, 100 - 6 * i, 3), np.uint8) for i in range(12)]
    buckets = {predictor.bucket(SMALL.resized_size(*image.shape[:2])) for image in images}
    assert 1 < len(buckets) < 12
    before = _forward._cache_size()
    results = predictor(images, "semantic")
    assert _forward._cache_size() - before == len(buckets)
    assert [r.shape for r in results] == [image.shape[:2] for image in images]
    # An image's result does not depend on its batch, bucket or padding: alone, padded to its own size.
    alone = Predictor(model, SMALL, batch_size=1, buckets=None)
    np.testing.assert_array_equal(alone([images[7]], "semantic")[0], results[7])


def test_buckets_are_checked_and_explicit_lists_are_used():
    model = random_model(num_labels=11)
    with pytest.raises(ValueError, match="multiples of 32"):
        Predictor(model, SMALL, buckets=[(64, 70)])
    with pytest.raises(ValueError, match="batch_size"):
        Predictor(model, SMALL, batch_size=0)
    predictor = Predictor(model, SMALL, buckets=[(96, 96), (64, 96)])
    assert predictor.bucket((64, 64)) == (64, 96) and predictor.bucket((96, 64)) == (96, 96)
    with pytest.raises(ValueError, match="fits none of the buckets"):
        predictor.bucket((128, 64))


def test_shards_cover_the_images_once():
    for count in (0, 1, 7, 64):
        for total in (1, 2, 3, 8):
            covered = [i for p in range(total) for i in shard(count, p, total)]
            assert covered == list(range(count))


@pytest.fixture(scope="module")
def synthetic_eval():
    """evaluate() on 6 synthetic images (several sizes) with a random model, and the raw outputs."""
    data = open_source("synthetic", "val", num_images=6, image_size=(64, 64))
    model = random_model(num_labels=len(data.classes), seed=3)
    predictor = Predictor(model, SMALL, batch_size=4)
    metrics, kept = evaluate(predictor, data, keep_results=6)
    outputs = dict(predictor.stream((i, data[i]["image"]) for i in range(len(data))))
    return data, predictor, metrics, kept, outputs


def test_miou_equals_a_plain_numpy_confusion_matrix(synthetic_eval):
    data, _, metrics, kept, outputs = synthetic_eval
    k = len(data.classes)
    matrix = np.zeros((k, k), np.int64)
    for i in range(len(data)):
        pred = post_process(outputs[i], "semantic")[0]
        truth = semantic_truth(data[i])
        counted = truth != IGNORE
        np.add.at(matrix, (truth[counted], pred[counted]), 1)
    tp, union = np.diag(matrix), matrix.sum(0) + matrix.sum(1) - np.diag(matrix)
    iou = tp[union > 0] / union[union > 0]
    assert metrics["semantic"]["mIoU"] == pytest.approx(100 * iou.mean(), abs=1e-9)
    assert metrics["images"] == len(data) and len(kept) == len(data)


def test_pq_and_ap_follow_the_protocols(synthetic_eval):
    """PQ: stuff fused, thresholds 0.8/0.5/0.8; AP: the top 100 (query, class) pairs at any score."""
    data, _, metrics, _, outputs = synthetic_eval
    categories = [{"id": k, "name": c["name"], "isthing": c["isthing"]} for k, c in enumerate(data.classes)]
    panoptic, instance = PanopticEvaluator(categories), InstanceEvaluator(categories)
    stuff = {k for k, c in enumerate(data.classes) if not c["isthing"]}
    for i in range(len(data)):
        sample = data[i]
        p = post_process(outputs[i], "panoptic", threshold=0.8, label_ids_to_fuse=stuff)[0]
        panoptic.update(p["segmentation"], p["segments_info"], sample["segments"], sample["segments_info"])
        found = post_process(
            outputs[i], "instance", threshold=0.0, overlap_mask_area_threshold=0.0, return_binary_maps=True
        )[0]
        assert len(found["segments_info"]) == min(100, 12 * len(data.classes))
        instance.update(i, sample["segments"], sample["segments_info"], found)
    for task, evaluator in (("panoptic", panoptic), ("instance", instance)):
        expected = evaluator.compute()
        for name in ("PQ", "SQ", "RQ") if task == "panoptic" else ("AP", "AP50", "AP75"):
            assert metrics[task][name] == pytest.approx(expected[name], abs=1e-9, nan_ok=True), (task, name)


def test_semantic_tta_averages_scales_and_flips(synthetic_eval):
    data, predictor, *_ = synthetic_eval
    image = data[0]["image"]
    one = semantic_tta(predictor, image, scales=(64,), max_size=96, flip=False)
    np.testing.assert_array_equal(one, predictor.at_size(64, 96)([image], "semantic")[0])
    mirrored = semantic_tta(predictor, np.ascontiguousarray(image[:, ::-1]), scales=(48, 64), max_size=96)
    both = semantic_tta(predictor, image, scales=(48, 64), max_size=96)
    assert both.shape == image.shape[:2]
    agree = (mirrored[:, ::-1] == both).mean()  # the flip average is symmetric up to float rounding
    assert agree > 0.99, agree


# ----------------------------------------------------------------------------------------------------
# The data-set layouts


def _layouts(tmp_path):
    import test_sources_coco as coco
    import test_sources_semantic as semantic

    coco._write_panoptic(tmp_path / "coco")
    coco._write_instances(tmp_path / "coco")
    ade = semantic._write_ade(tmp_path)[0]
    cityscapes = semantic._write_cityscapes(tmp_path)
    everything = {"panoptic", "semantic", "instance"}
    return {
        "coco_panoptic": (open_source("coco_panoptic", "val", root=str(tmp_path / "coco")), everything),
        "coco_instances": (open_source("coco_instances", "train", root=str(tmp_path / "coco")), everything),
        "ade20k": (open_source("ade20k", "val", root=ade), {"semantic"}),
        "cityscapes": (open_source("cityscapes", "val", root=cityscapes), everything),
    }


def test_every_layout_is_evaluated(tmp_path):
    for name, (data, tasks) in _layouts(tmp_path).items():
        model = random_model(num_labels=len(data.classes))
        metrics, _ = evaluate(Predictor(model, SMALL, batch_size=2), data)
        assert set(metrics) - {"images"} == tasks, name
        assert metrics["images"] == len(data), name
        if "semantic" in metrics:
            assert 0 <= metrics["semantic"]["pAcc"] <= 100, name
