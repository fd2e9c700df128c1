"""The synthetic data set: determinism, consistent labels, class coverage, errors (the batches made
from it: tests/test_pipeline.py)."""

from __future__ import annotations

import numpy as np
import pytest

from m2f_jax.data.synthetic import SyntheticDataset

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


def test_images_without_things_have_stuff_only(samples):
    assert any(not any(seg["isthing"] for seg in s["segments_info"]) for s in samples)
    plain = SyntheticDataset(4, image_size=SIZE, no_things_prob=1.0)
    for i in range(len(plain)):
        assert not any(seg["isthing"] for seg in plain[i]["segments_info"])


def test_bad_arguments_raise(data):
    with pytest.raises(ValueError):
        SyntheticDataset(0)
    with pytest.raises(ValueError, match="image_size"):
        SyntheticDataset(4, image_size=(8, 64))
    with pytest.raises(IndexError):
        data[len(data)]
