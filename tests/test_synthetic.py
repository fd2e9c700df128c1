"""The synthetic data set (determinism, consistent labels, class coverage) and the training batches
(shapes, per-process slices, resuming, errors)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from m2f_jax.data import SyntheticDataset, TrainBatches
from m2f_jax.processing.preprocess import IMAGENET_MEAN, IMAGENET_STD

SIZE = (64, 64)
NUM_THINGS = 4


@pytest.fixture(scope="module")
def data() -> SyntheticDataset:
    return SyntheticDataset(48, image_size=SIZE, seed=3)


@pytest.fixture(scope="module")
def samples(data) -> list[dict]:
    return [data[i] for i in range(len(data))]


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            assert a[k] == b[k], k


def test_deterministic_in_seed_and_index(data, samples):
    again = SyntheticDataset(200, image_size=SIZE, seed=3)  # the size of the set does not matter
    for i in (0, 7, 47):
        _assert_same(samples[i], again[i])
        _assert_same(samples[i], data[i])
    other = SyntheticDataset(48, image_size=SIZE, seed=4)
    assert not np.array_equal(samples[0]["image"], other[0]["image"])
    assert not np.array_equal(samples[0]["image"], samples[1]["image"])


def test_sample_fields_are_consistent(data, samples):
    classes = data.classes
    assert [c["id"] for c in classes] == list(range(len(classes)))
    assert data.id2label == {c["id"]: c["name"] for c in classes}
    for s in samples:
        assert s["image"].shape == (*SIZE, 3) and s["image"].dtype == np.uint8
        assert s["semantic"].dtype == np.int32 and s["instances"].dtype == np.int32
        mapping = s["instance_id_to_semantic_id"]
        assert sorted(mapping) == list(range(len(mapping)))
        lookup = np.array([mapping[i] for i in range(len(mapping))])
        np.testing.assert_array_equal(lookup[s["instances"]], s["semantic"])
        areas = np.bincount(s["instances"].ravel(), minlength=len(mapping))
        info = s["segments_info"]
        assert [seg["id"] for seg in info] == list(range(len(mapping)))
        for seg in info:
            assert seg["category_id"] == mapping[seg["id"]]
            assert seg["isthing"] == classes[seg["category_id"]]["isthing"]
            assert seg["area"] == areas[seg["id"]] >= data.min_area
        stuff = [seg["category_id"] for seg in info if not seg["isthing"]]
        assert stuff and len(stuff) == len(set(stuff))  # one segment per stuff class present


def test_classes_and_instances_across_images(data, samples):
    seen = set()
    most = np.zeros(len(data.classes), int)  # the most instances of each class in one image
    for s in samples:
        counts = np.bincount([seg["category_id"] for seg in s["segments_info"]], minlength=len(data.classes))
        seen |= set(np.flatnonzero(counts).tolist())
        most = np.maximum(most, counts)
    assert seen == set(data.id2label)
    assert all(most[c["id"]] >= 2 for c in data.classes if c["isthing"])
    assert sum(c["isthing"] for c in data.classes) == NUM_THINGS


def test_images_without_things_give_stuff_only_targets(samples):
    assert any(not any(seg["isthing"] for seg in s["segments_info"]) for s in samples)
    plain = SyntheticDataset(4, image_size=SIZE, no_things_prob=1.0)
    panoptic = next(TrainBatches(plain, 4, seed=0, max_instances=5))
    assert panoptic["mask_valid"].any(axis=1).all()
    assert (panoptic["class_labels"][panoptic["mask_valid"]] < 3).all()  # stuff ids only
    np.testing.assert_array_equal(panoptic["mask_labels"].sum(axis=1), 1)  # the stuff masks tile the image
    instance = next(TrainBatches(plain, 4, seed=0, max_instances=5, task="instance"))
    assert not instance["mask_valid"].any() and (instance["class_labels"] == -1).all()


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_batch_shapes_and_contents(data, task):
    batches = TrainBatches(data, 6, seed=1, max_instances=12, task=task, flip=True)
    batch = next(batches)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        "pixel_values": ((6, *SIZE, 3), np.float32),
        "pixel_mask": ((6, *SIZE), np.bool_),
        "mask_labels": ((6, 12, *SIZE), np.bool_),
        "class_labels": ((6, 12), np.int32),
        "mask_valid": ((6, 12), np.bool_),
    }
    assert batch["pixel_mask"].all()
    valid, labels, masks = batch["mask_valid"], batch["class_labels"], batch["mask_labels"]
    assert (labels[~valid] == -1).all() and not masks[~valid].any()
    assert masks[valid].any(axis=(1, 2)).all()
    assert (masks.sum(axis=1) <= 1).all()  # targets never overlap
    if task == "instance":
        assert (labels[valid] >= 3).all()
    if task == "semantic":
        assert all(len(set(row[v])) == v.sum() for row, v in zip(labels, valid, strict=True))
    for row in range(6):  # each row is its dataset image, mirrored or not, normalised as HF
        image = data[batches.index(row)]["image"].astype(np.float32)
        expected = [(im / 255 - IMAGENET_MEAN) / IMAGENET_STD for im in (image, image[:, ::-1])]
        assert any(np.allclose(batch["pixel_values"][row], e, atol=1e-5) for e in expected)


def test_epochs_are_permutations(data):
    batches = TrainBatches(data, 8, seed=5, max_instances=12)
    first = [batches.index(p) for p in range(len(data))]
    second = [batches.index(p) for p in range(len(data), 2 * len(data))]
    assert sorted(first) == sorted(second) == list(range(len(data)))
    assert first != second and first != list(range(len(data)))
    plain = TrainBatches(data, 8, seed=5, max_instances=12, shuffle=False)
    assert [plain.index(p) for p in range(50)] == [p % len(data) for p in range(50)]


@pytest.mark.parametrize("count", [2, 4])
def test_process_slices_concatenate_to_the_global_batch(data, count):
    whole = TrainBatches(data, 20, seed=2, max_instances=12, flip=True)
    parts = [
        TrainBatches(data, 20, seed=2, max_instances=12, flip=True, process_index=p, process_count=count)
        for p in range(count)
    ]
    for step in (0, 2):  # batch 2 straddles two epochs: positions 40..47 of the first, 0..11 of the second
        global_batch = whole.batch_at(step)
        local = [p.batch_at(step) for p in parts]
        for key, value in global_batch.items():
            np.testing.assert_array_equal(np.concatenate([b[key] for b in local]), value, err_msg=key)


def test_resume_continues_exactly(data):
    straight = TrainBatches(data, 4, seed=7, max_instances=12, flip=True)
    expected = [next(straight) for _ in range(6)]
    first = TrainBatches(data, 4, seed=7, max_instances=12, flip=True)
    for _ in range(3):
        next(first)
    saved = json.loads(json.dumps(first.get_state()))  # as a checkpoint stores it
    resumed = TrainBatches(data, 4, seed=7, max_instances=12, flip=True, process_index=1, process_count=2)
    resumed.set_state(saved)
    for want in expected[3:]:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key][2:], err_msg=key)


def test_bad_arguments_raise(data):
    with pytest.raises(ValueError, match="not divisible by process_count"):
        TrainBatches(data, 6, seed=0, max_instances=12, process_count=4)
    with pytest.raises(ValueError, match="process_index"):
        TrainBatches(data, 8, seed=0, max_instances=12, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="task"):
        TrainBatches(data, 8, seed=0, max_instances=12, task="depth")
    with pytest.raises(ValueError, match=r"dataset image \d+ \(step 0, row \d\) has \d+ panoptic segments"):
        next(TrainBatches(data, 8, seed=0, max_instances=3))
    batches = TrainBatches(data, 8, seed=0, max_instances=12)
    with pytest.raises(ValueError, match="batch_size"):
        batches.set_state({"step": 3, "seed": 0, "batch_size": 16, "num_images": len(data)})
    with pytest.raises(ValueError):
        SyntheticDataset(0)
    with pytest.raises(ValueError, match="image_size"):
        SyntheticDataset(4, image_size=(8, 64))
    with pytest.raises(IndexError):
        data[len(data)]
