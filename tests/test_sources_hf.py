"""The Hugging Face `datasets` source, on tiny data sets built here (no download)."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

from m2f_jax.data.sources import SampleError, check_sample, open_source

datasets = pytest.importorskip("datasets")

ID2LABEL = {5: "person", 0: "wall", 9: "car", 2: "floor"}  # labels by sorted id: wall, floor, person, car
WALL, FLOOR, PERSON, CAR = range(4)
H, W = 5, 6


def images() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (2, H, W, 3), dtype=np.uint8)


def class_map() -> np.ndarray:
    """Class ids of a sample: wall above floor, two people and a car on the floor, an ignored corner."""
    semantic = np.zeros((H, W), np.uint8)
    semantic[2:] = 2
    semantic[2:4, 0:2] = 5
    semantic[2:4, 3] = 5
    semantic[4, 3:5] = 9
    semantic[0, 5] = 255
    return semantic


def rg_map() -> np.ndarray:
    """HF's instance encoding of class_map(): R class, G instance; the car has no instance (crowd)."""
    semantic = class_map()
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = semantic
    rgb[2:4, 0:2, 1] = 4
    rgb[2:4, 3, 1] = 1
    rgb[..., 2] = 77  # not read
    return rgb


def dataset_dict(column: str, masks: list[np.ndarray]):
    features = datasets.Features(
        {"image": datasets.Image(), column: datasets.Image(), "extra": datasets.Value("int32")}
    )
    split = {"image": list(images()), column: masks, "extra": [1, 2]}
    return datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(split, features=features),
            "validation": datasets.Dataset.from_dict(split, features=features),
        }
    )


def expected_segments(instances: bool) -> tuple[np.ndarray, list[dict]]:
    """The segment-id map and segments_info the folder rules give for class_map() (and rg_map())."""
    semantic = class_map()
    expected = np.zeros((H, W), np.int32)
    order = [(0, WALL, False, False), (2, FLOOR, False, False)]
    order += [(5, PERSON, True, True)] if not instances else []
    order += [(9, CAR, True, True)]
    info = []
    for i, (class_id, label, crowd, thing) in enumerate(order, start=1):
        expected[semantic == class_id] = i
        info.append({"id": i, "category_id": label, "iscrowd": crowd, "isthing": thing})
    if instances:  # then the instances by G value: 1, then 4
        rgb = rg_map()
        for g in (1, 4):
            expected[rgb[..., 1] == g] = len(info) + 1
            info.append({"id": len(info) + 1, "category_id": PERSON, "iscrowd": False, "isthing": True})
    return expected, info


def test_semantic_column_pixel_for_pixel():
    source = open_source(
        "hf_datasets",
        "val",
        dataset=dataset_dict("label", [class_map(), class_map()]),
        semantic_column="label",
        id2label=ID2LABEL,
        thing_ids=(5, 9),
    )
    assert source.split_name == "validation" and len(source) == 2
    assert [c["name"] for c in source.classes] == ["wall", "floor", "person", "car"]
    assert [c["isthing"] for c in source.classes] == [False, False, True, True]
    sample = source[1]
    check_sample(sample, 4, "row 1")
    np.testing.assert_array_equal(sample["image"], images()[1])
    expected, info = expected_segments(instances=False)
    np.testing.assert_array_equal(sample["segments"], expected)
    assert sample["segments_info"] == info and sample["name"] == "validation_000001"


def test_instance_column_pixel_for_pixel():
    source = open_source(
        "hf_datasets",
        "train",
        dataset=dataset_dict("annotation", [rg_map(), rg_map()]),
        instance_column="annotation",
        id2label={str(k): v for k, v in ID2LABEL.items()},  # as a config.json read as JSON has them
        thing_ids=(5, 9),
    )
    sample = source[0]
    check_sample(sample, 4, "row 0")
    expected, info = expected_segments(instances=True)
    np.testing.assert_array_equal(sample["segments"], expected)
    assert sample["segments_info"] == info


def test_reduce_labels():
    reduced = np.where(class_map() == 255, 0, class_map() + 1).astype(np.uint8)  # 0 = ignore, v + 1 = class v
    source = open_source(
        "hf_datasets",
        "train",
        dataset=dataset_dict("label", [reduced, reduced])["train"],
        semantic_column="label",
        id2label=ID2LABEL,
        thing_ids=(5, 9),
        reduce_labels=True,
    )
    expected, info = expected_segments(instances=False)
    np.testing.assert_array_equal(source[0]["segments"], expected)
    assert source[0]["segments_info"] == info


def test_save_to_disk_round_trip_and_pickle(tmp_path):
    dataset_dict("label", [class_map(), class_map()]).save_to_disk(str(tmp_path / "saved"))
    source = open_source(
        "hf_datasets",
        "train",
        path=tmp_path / "saved",
        semantic_column="label",
        id2label=ID2LABEL,
        thing_ids=(5, 9),
    )
    clone = pickle.loads(pickle.dumps(source))
    expected, info = expected_segments(instances=False)
    for s in (source, clone):
        np.testing.assert_array_equal(s[1]["segments"], expected)
        np.testing.assert_array_equal(s[1]["image"], images()[1])
        assert s[1]["segments_info"] == info
    assert "row 1" in clone.describe(1) and "'train'" in clone.describe(1)


def test_errors_name_the_column_split_or_value():
    data = dataset_dict("label", [class_map(), np.full((H, W), 7, np.uint8)])
    options = dict(semantic_column="label", id2label=ID2LABEL, thing_ids=(5, 9))
    with pytest.raises(ValueError, match=r"no column 'mask'; its columns: \['image', 'label', 'extra'\]"):
        open_source("hf_datasets", "train", dataset=data, **{**options, "semantic_column": "mask"})
    with pytest.raises(ValueError, match=r"no split 'test' for 'val'; its splits: \['train', 'validation'\]"):
        open_source("hf_datasets", "val", dataset=data, splits={"val": "test"}, **options)
    with pytest.raises(ValueError, match="exactly one of semantic_column"):
        open_source("hf_datasets", "train", dataset=data, instance_column="label", **options)
    with pytest.raises(ValueError, match=r"thing_ids \[3\]"):
        open_source("hf_datasets", "train", dataset=data, **{**options, "thing_ids": (3,)})
    with pytest.raises(ValueError, match="ignore_index 0 is also a class id"):
        open_source("hf_datasets", "train", dataset=data, ignore_index=0, **options)
    source = open_source("hf_datasets", "train", dataset=data, **options)
    with pytest.raises(SampleError, match="row 1 of the 'train' split.*'label'.*values 7 are neither"):
        source[1]
    rgb_as_semantic = open_source(
        "hf_datasets", "train", dataset=dataset_dict("label", [rg_map(), rg_map()]), **options
    )
    with pytest.raises(SampleError, match="must be single-channel"):
        rgb_as_semantic[0]
    wrong = rg_map()
    wrong[0, 0, 1] = 4  # instance 4 reaches a wall pixel
    spanning = open_source(
        "hf_datasets",
        "train",
        dataset=dataset_dict("annotation", [wrong, wrong]),
        instance_column="annotation",
        id2label=ID2LABEL,
        thing_ids=(5, 9),
    )
    with pytest.raises(SampleError, match="instance 4 covers several classes: 'wall' \\(id 0\\), 'person'"):
        spanning[0]


def test_without_datasets_installed_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match=r"pip install 'm2f-jax\[hf\]'"):
        open_source("hf_datasets", "train", dataset=object(), semantic_column="label", id2label=ID2LABEL)
