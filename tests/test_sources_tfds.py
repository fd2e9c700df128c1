"""The TFDS source on tiny data sets that TFDS's own machinery prepares (array_record, no download,
no TensorFlow) under the real builder names and feature specs: every pixel and segment checked."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
from PIL import Image

from m2f_jax.data.sources import SampleError, open_source
from m2f_jax.data.sources import tfds as tfds_source
from m2f_jax.processing import image_io

tfds = pytest.importorskip("tensorflow_datasets", reason="the tfds extra is not installed: pip install '.[tfds]'")

RNG = np.random.default_rng(0)


def _prepare(data_dir, name, config, version, features, splits) -> None:
    """Writes `splits` ({split: [example]}) as data set `name`/`config` through TFDS's builder."""
    ds_name = name
    with tfds.core.registered.skip_registration():

        class Builder(tfds.core.GeneratorBasedBuilder):
            name = ds_name
            VERSION = tfds.core.Version(version)
            BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=config)] if config else []

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

            def _split_generators(self, dl_manager):
                return {split: self._generate_examples(examples) for split, examples in splits.items()}

            def _generate_examples(self, examples):
                yield from enumerate(examples)

    stats = tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)
    Builder(data_dir=str(data_dir), config=config, file_format="array_record").download_and_prepare(
        download_config=stats
    )


def _save(array: np.ndarray, path) -> str:
    Image.fromarray(array).save(path)
    return str(path)


def _coco_example(raw, key: str) -> tuple[dict, dict]:
    """A COCO panoptic example (files under `raw`) and what the source must give for it."""
    h, w = 6, 8
    ids = np.array([0, 7, 300, 70000, 16777215])  # void, then ids using the R, G and B channels
    segments = ids[RNG.integers(0, len(ids), (h, w))].astype(np.int32)
    rgb = np.stack([segments % 256, segments // 256 % 256, segments // 65536], -1).astype(np.uint8)
    listed = [7, 300, 70000, 16777215, 12]  # 12 has no pixels (allowed)
    labels, crowd = RNG.integers(0, 133, len(listed)), RNG.integers(0, 2, len(listed)).astype(bool)
    image = _save(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8), raw / f"{key}.jpg")
    objects = [
        {"id": i, "area": 1, "bbox": tfds.features.BBox(0.0, 0.0, 1.0, 1.0), "label": int(c), "is_crowd": k}
        for i, c, k in zip(listed, labels, crowd, strict=True)
    ]
    example = {
        "image": image,
        "image/filename": f"{key}.jpg",
        "image/id": 1,
        "panoptic_image": _save(rgb, raw / f"{key}.png"),
        "panoptic_image/filename": f"{key}.png",
        "panoptic_objects": objects,
    }
    info = [
        {"id": i, "category_id": int(c), "iscrowd": bool(k), "isthing": bool(c < 80)}
        for i, c, k in zip(listed, labels, crowd, strict=True)
    ]
    return example, {
        "image": image_io.read_image(image),
        "segments": segments,
        "segments_info": info,
        "name": f"{key}.jpg",
    }


def _coco_features(names: list[str]) -> dict:
    return {
        "image": tfds.features.Image(encoding_format="jpeg"),
        "image/filename": tfds.features.Text(),
        "image/id": np.int64,
        "panoptic_image": tfds.features.Image(encoding_format="png"),
        "panoptic_image/filename": tfds.features.Text(),
        "panoptic_objects": tfds.features.Sequence(
            {
                "id": np.int64,
                "area": np.int64,
                "bbox": tfds.features.BBoxFeature(),
                "label": tfds.features.ClassLabel(names=names),
                "is_crowd": np.bool_,
            }
        ),
    }


def _ade_example(raw, key: str) -> tuple[dict, dict]:
    """A scene_parse150 example (R = instance category 1..100, G = instance id) and its expectation."""
    h, w = 5, 7
    instances = {3: 1, 9: 100, 200: 42}  # instance id -> category
    g = np.array([0, 3, 9, 200])[RNG.integers(0, 4, (h, w))]
    r = np.vectorize(lambda i: instances.get(i, 0))(g)
    r[(g == 0) & (RNG.random((h, w)) < 0.5)] = 17  # a category without an instance: ignored
    image = _save(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8), raw / f"{key}.jpg")
    annotation = _save(np.stack([r, g, np.zeros_like(g)], -1).astype(np.uint8), raw / f"{key}.png")
    present = sorted(set(np.unique(g).tolist()) - {0})
    info = [{"id": i, "category_id": instances[i] - 1, "iscrowd": False, "isthing": True} for i in present]
    expected = {"image": image_io.read_image(image), "segments": g.astype(np.int32), "segments_info": info}
    return {"image": image, "annotation": annotation}, expected


def _cityscapes_example(raw, key: str) -> tuple[dict, dict]:
    """A cityscapes example (gtFine labelIds) and its expectation (trainId + 1, ignore -> 0)."""
    h, w = 4, 6
    label_ids = np.array([0, 1, 7, 9, 24, 26, 33, 255])  # unlabelled, ego vehicle, road, parking, person, car, ...
    train_ids = {7: 0, 24: 11, 26: 13, 33: 18}
    labels = label_ids[RNG.integers(0, len(label_ids), (h, w))]
    segments = np.vectorize(lambda v: train_ids.get(v, -1) + 1)(labels).astype(np.int32)
    image = _save(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8), raw / f"{key}_leftImg8bit.png")
    present = sorted(set(np.unique(segments).tolist()) - {0})
    info = [{"id": s, "category_id": s - 1, "iscrowd": False, "isthing": s - 1 >= 11} for s in present]
    example = {
        "image_id": key,
        "image_left": image,
        "segmentation_label": _save(labels.astype(np.uint8), raw / f"{key}_gtFine_labelIds.png"),
    }
    return example, {"image": image_io.read_image(image), "segments": segments, "segments_info": info, "name": key}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """data_dir and {(name, split): [expected samples]} for the three data sets."""
    data_dir, raw = tmp_path_factory.mktemp("tfds"), tmp_path_factory.mktemp("raw")
    expected = {}

    def examples(make, name, splits):
        out = {}
        for split, n in splits.items():
            pairs = [make(raw, f"{name.replace('/', '_')}_{split}_{i}") for i in range(n)]
            out[split] = [p[0] for p in pairs]
            expected[name, split] = [p[1] for p in pairs]
        return out

    coco_names = [n for _, n in tfds_source.COCO_PANOPTIC]
    coco = examples(_coco_example, "coco/2017_panoptic", {"train": 2, "validation": 1})
    _prepare(data_dir, "coco", "2017_panoptic", "1.1.0", _coco_features(coco_names), coco)
    ade = examples(_ade_example, "scene_parse150", {"train": 2, "test": 1})
    ade_features = {"image": tfds.features.Image(encoding_format="jpeg"), "annotation": tfds.features.Image()}
    _prepare(data_dir, "scene_parse150", None, "1.0.0", ade_features, ade)
    city = examples(_cityscapes_example, "cityscapes/semantic_segmentation", {"train": 2, "validation": 1})
    city_features = {
        "image_id": tfds.features.Text(),
        "image_left": tfds.features.Image(shape=(1024, 2048, 3), encoding_format="png"),
        "segmentation_label": tfds.features.Image(shape=(1024, 2048, 1), encoding_format="png", use_colormap=True),
    }
    _prepare(data_dir, "cityscapes", "semantic_segmentation", "1.0.0", city_features, city)
    return str(data_dir), expected


CASES = [
    ("coco/2017_panoptic", "train", "train"),
    ("coco/2017_panoptic", "val", "validation"),
    ("scene_parse150", "train", "train"),
    ("scene_parse150", "val", "test"),
    ("cityscapes/semantic_segmentation", "train", "train"),
    ("cityscapes/semantic_segmentation", "val", "validation"),
]


@pytest.mark.parametrize("name,split,tfds_split", CASES)
def test_samples_match_what_was_written(prepared, name, split, tfds_split):
    data_dir, expected = prepared
    source = open_source("tfds", split, name=name, data_dir=data_dir)
    want = expected[name, tfds_split]
    assert len(source) == len(want)
    for i, w in enumerate(want):
        got = source[i]
        assert got["image"].dtype == np.uint8 and got["segments"].dtype == np.int32
        np.testing.assert_array_equal(got["image"], w["image"])
        np.testing.assert_array_equal(got["segments"], w["segments"])
        assert sorted(got["segments_info"], key=lambda s: s["id"]) == sorted(w["segments_info"], key=lambda s: s["id"])
        if "name" in w:
            assert got["name"] == w["name"]
        assert tfds_split in source.describe(i)
    assert "tensorflow" not in sys.modules  # prepared and read without TensorFlow


def test_classes():
    coco = tfds_source._DATASETS["coco/2017_panoptic"][3]
    assert len(coco) == 133 and sum(c["isthing"] for c in coco) == 80
    assert [c["id"] for c in coco] == sorted(c["id"] for c in coco) and coco[79]["id"] == 90 and coco[80]["id"] == 92
    assert len(tfds_source._DATASETS["scene_parse150"][3]) == 100
    city = tfds_source._DATASETS["cityscapes/semantic_segmentation"][3]
    assert len(city) == 19 and [c["name"] for c in city if c["isthing"]][0] == "person"


def test_pickle_round_trip(prepared):
    data_dir, _ = prepared
    source = open_source("tfds", "train", name="coco/2017_panoptic", data_dir=data_dir)
    copy = pickle.loads(pickle.dumps(source))
    assert len(copy) == len(source) and copy.classes == source.classes
    np.testing.assert_array_equal(copy[1]["segments"], source[1]["segments"])


def test_errors(prepared, tmp_path):
    data_dir, _ = prepared
    with pytest.raises(ValueError, match="unsupported data set"):
        open_source("tfds", "train", name="mnist", data_dir=data_dir)
    with pytest.raises(ValueError, match="split must be one of"):
        open_source("tfds", "test", name="coco/2017_panoptic", data_dir=data_dir)
    with pytest.raises(FileNotFoundError, match="tfds build coco/2017_panoptic --file_format=array_record"):
        open_source("tfds", "train", name="coco/2017_panoptic", data_dir=str(tmp_path))
    with pytest.raises(IndexError):
        open_source("tfds", "val", name="scene_parse150", data_dir=data_dir)[5]


def test_wrong_coco_label_names_fail_fast(tmp_path):
    example, _ = _coco_example(tmp_path, "x")
    names = [n for _, n in tfds_source.COCO_PANOPTIC]
    names[0], names[1] = names[1], names[0]
    _prepare(tmp_path / "data", "coco", "2017_panoptic", "1.1.0", _coco_features(names), {"train": [example]})
    with pytest.raises(ValueError, match=r"first differences: \[\(0, 'bicycle', 'person'\)"):
        open_source("tfds", "train", name="coco/2017_panoptic", data_dir=str(tmp_path / "data"))


def test_inconsistent_instance_raises_sample_error(tmp_path):
    g = np.array([[5, 5], [5, 0]], np.uint8)
    r = np.array([[3, 4], [3, 0]], np.uint8)  # instance 5 carries two categories
    example = {
        "image": _save(np.zeros((2, 2, 3), np.uint8), tmp_path / "i.png"),
        "annotation": _save(np.stack([r, g, np.zeros_like(g)], -1), tmp_path / "a.png"),
    }
    features = {"image": tfds.features.Image(encoding_format="jpeg"), "annotation": tfds.features.Image()}
    _prepare(tmp_path / "data", "scene_parse150", None, "1.0.0", features, {"train": [example]})
    source = open_source("tfds", "train", name="scene_parse150", data_dir=str(tmp_path / "data"))
    with pytest.raises(SampleError, match=r"scene_parse150 train\[0\].*one category"):
        source[0]
