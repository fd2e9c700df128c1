"""ADE20K and Cityscapes folder sources on tiny folders in the official layouts, written here."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from PIL import Image

from m2f_jax.data.sources import SampleError, check_sample, open_source
from m2f_jax.data.sources.ade20k import ADE20K
from m2f_jax.data.sources.cityscapes import Cityscapes

H, W = 24, 32


def _rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _decoded(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# ---------------------------------------------------------------- ADE20K

ADE_SAMPLES = {  # (split folder, stem) -> the class values painted in its annotation
    ("training", "ADE_train_00000001"): [0, 1, 150, 13],
    ("training", "ADE_train_00000002"): [5, 77],
    ("validation", "ADE_val_00000001"): [0, 150, 2],
}


def _ade_labels(values: list[int]) -> np.ndarray:
    labels = np.zeros((H, W), np.uint8)
    for i, v in enumerate(values):  # vertical bands, one per value
        labels[:, i * W // len(values) : (i + 1) * W // len(values)] = v
    return labels


def _write_ade(tmp_path) -> tuple[str, dict]:
    root = tmp_path / "ADEChallengeData2016"
    written = {}
    for seed, ((folder, stem), values) in enumerate(ADE_SAMPLES.items()):
        os.makedirs(root / "images" / folder, exist_ok=True)
        os.makedirs(root / "annotations" / folder, exist_ok=True)
        Image.fromarray(_rgb(seed)).save(root / "images" / folder / f"{stem}.jpg")
        labels = _ade_labels(values)
        Image.fromarray(labels).save(root / "annotations" / folder / f"{stem}.png")
        written[stem] = labels
    return str(root), written


def test_ade20k_samples_pixel_for_pixel(tmp_path):
    root, written = _write_ade(tmp_path)
    for split, folder in (("train", "training"), ("val", "validation")):
        source = ADE20K(split, root=root)
        stems = sorted(stem for f, stem in ADE_SAMPLES if f == folder)
        assert len(source) == len(stems) and source.split == split
        for i, stem in enumerate(stems):
            sample = source[i]
            check_sample(sample, len(source.classes), source.describe(i))
            assert sample["name"] == f"{stem}.jpg"
            np.testing.assert_array_equal(
                sample["image"], _decoded(os.path.join(root, "images", folder, f"{stem}.jpg"))
            )
            assert sample["segments"].dtype == np.int32
            np.testing.assert_array_equal(sample["segments"], written[stem])
            expected = sorted((v, v - 1) for v in ADE_SAMPLES[(folder, stem)] if v != 0)
            assert sorted((s["id"], s["category_id"]) for s in sample["segments_info"]) == expected
            assert not any(s["iscrowd"] or s["isthing"] for s in sample["segments_info"])
            assert f"{stem}.jpg" in source.describe(i) and f"{stem}.png" in source.describe(i)


def test_ade20k_classes_registry_and_pickle(tmp_path):
    root, _ = _write_ade(tmp_path)
    source = open_source("ade20k", "val", root=root)
    assert isinstance(source, ADE20K)
    assert len(source.classes) == 150
    assert source.classes[0] == {"id": 1, "name": "wall", "isthing": False}
    assert source.classes[-1] == {"id": 150, "name": "flag", "isthing": False}
    assert [c["id"] for c in source.classes] == list(range(1, 151))
    assert len({c["name"] for c in source.classes}) == 150
    copy = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(copy[0]["segments"], source[0]["segments"])


def test_ade20k_construction_errors(tmp_path):
    with pytest.raises(ValueError, match="test"):
        ADE20K("test", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ADE20K("train", root=tmp_path / "nowhere")
    root, _ = _write_ade(tmp_path)
    os.rename(os.path.join(root, "annotations", "validation"), os.path.join(root, "elsewhere"))
    with pytest.raises(FileNotFoundError, match=r"annotations/validation"):
        ADE20K("val", root=root)
    os.remove(os.path.join(root, "annotations", "training", "ADE_train_00000002.png"))
    with pytest.raises(FileNotFoundError, match=r"images without an annotation in .*training.*ADE_train_00000002"):
        ADE20K("train", root=root)
    Image.fromarray(np.zeros((H, W), np.uint8)).save(os.path.join(root, "annotations", "training", "ADE_x.png"))
    os.remove(os.path.join(root, "images", "training", "ADE_train_00000002.jpg"))
    with pytest.raises(FileNotFoundError, match=r"annotations without an image in .*annotations/training.*ADE_x"):
        ADE20K("train", root=root)


def test_ade20k_sample_errors(tmp_path):
    root, _ = _write_ade(tmp_path)
    source = ADE20K("train", root=root)
    annotation = os.path.join(root, "annotations", "training", "ADE_train_00000001.png")
    labels = _ade_labels([3, 151, 200])
    Image.fromarray(labels).save(annotation)
    with pytest.raises(SampleError, match=r"ADE_train_00000001\.png.*\[151, 200\]"):
        source[0]
    with open(annotation, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(SampleError, match=r"ADE_train_00000001\.png"):
        source[0]
    Image.fromarray(np.zeros((H, W + 1), np.uint8)).save(annotation)
    with pytest.raises(SampleError, match=r"ADE_train_00000001\.png.*size"):
        source[0]
    os.remove(os.path.join(root, "images", "training", "ADE_train_00000002.jpg"))
    with pytest.raises(SampleError, match=r"ADE_train_00000002\.jpg"):
        source[1]


# ---------------------------------------------------------------- Cityscapes

# Regions painted over a road (labelId 7) background: (rows, cols, labelId, instanceIds value).
REGIONS_1 = [
    (slice(0, 6), slice(None), 23, 23),  # sky
    (slice(6, 10), slice(0, 8), 0, 0),  # unlabeled: ignored
    (slice(6, 10), slice(8, 16), 3, 3),  # out of roi: ignored
    (slice(6, 10), slice(16, 24), 29, 29000),  # a caravan instance: no trainId, ignored
    (slice(6, 10), slice(24, 32), 40, 40),  # an id absent from the label table: ignored
    (slice(10, 16), slice(0, 8), 26, 26001),  # car 2
    (slice(10, 16), slice(8, 16), 26, 26000),  # car 1
    (slice(10, 16), slice(24, 32), 11, 11),  # building
    (slice(16, 24), slice(0, 6), 24, 24000),  # person
    (slice(16, 24), slice(6, 12), 25, 25),  # a rider group without instance id: crowd
    (slice(16, 24), slice(12, 16), 26, 26),  # a car group: crowd
]
# Expected segments of that image, ids in the documented order, painted over the same regions:
# (rows, cols, id, trainId, iscrowd); road (id 1) everywhere else, the ignored regions 0.
EXPECTED_1 = [
    (slice(0, 6), slice(None), 3, 10, False),
    (slice(6, 10), slice(None), 0, None, None),
    (slice(10, 16), slice(0, 8), 6, 13, False),
    (slice(10, 16), slice(8, 16), 5, 13, False),
    (slice(10, 16), slice(24, 32), 2, 2, False),
    (slice(16, 24), slice(0, 6), 4, 11, False),
    (slice(16, 24), slice(6, 12), 7, 12, True),
    (slice(16, 24), slice(12, 16), 8, 13, True),
]
REGIONS_2 = [(slice(0, 8), slice(None), 23, 23), (slice(12, 20), slice(4, 12), 33, 33000)]  # sky, a bicycle
EXPECTED_2 = [(slice(0, 8), slice(None), 2, 10, False), (slice(12, 20), slice(4, 12), 3, 18, False)]
CITYSCAPES = {  # split -> city -> stem -> regions
    "train": {
        "aachen": {"aachen_000000_000019": REGIONS_1},
        "bonn": {"bonn_000001_000019": REGIONS_2, "bonn_000000_000019": []},
    },
    "val": {"frankfurt": {"frankfurt_000000_000294": REGIONS_2}},
}


def _paint(regions) -> tuple[np.ndarray, np.ndarray]:
    labels, instances = np.full((H, W), 7, np.uint8), np.full((H, W), 7, np.uint16)
    for rows, cols, label, instance in regions:
        labels[rows, cols], instances[rows, cols] = label, instance
    return labels, instances


def _expected(segments) -> tuple[np.ndarray, dict]:
    ids, info = np.ones((H, W), np.int32), {1: (0, False)}
    for rows, cols, segment, train_id, crowd in segments:
        ids[rows, cols] = segment
        if segment:
            info[segment] = (train_id, crowd)
    return ids, info


def _write_cityscapes(tmp_path) -> str:
    root = tmp_path / "cityscapes"
    seed = 0
    for split, cities in CITYSCAPES.items():
        for city, stems in cities.items():
            os.makedirs(root / "leftImg8bit" / split / city)
            os.makedirs(root / "gtFine" / split / city)
            for stem, regions in stems.items():
                Image.fromarray(_rgb(seed)).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
                labels, instances = _paint(regions)
                gt = root / "gtFine" / split / city
                Image.fromarray(labels).save(gt / f"{stem}_gtFine_labelIds.png")
                Image.fromarray(instances).save(gt / f"{stem}_gtFine_instanceIds.png")
                Image.fromarray(labels).save(gt / f"{stem}_gtFine_color.png")  # present in the zip, unused
                seed += 1
    return str(root)


def test_cityscapes_samples_pixel_for_pixel(tmp_path):
    root = _write_cityscapes(tmp_path)
    source = Cityscapes("train", root=root)
    # Cities in order, stems sorted within a city; the expectations written above.
    order = [
        ("aachen", "aachen_000000_000019", EXPECTED_1),
        ("bonn", "bonn_000000_000019", []),
        ("bonn", "bonn_000001_000019", EXPECTED_2),
    ]
    assert len(source) == 3
    for i, (city, stem, expected) in enumerate(order):
        sample = source[i]
        check_sample(sample, len(source.classes), source.describe(i))
        assert sample["name"] == f"{stem}_leftImg8bit.png"
        image_path = os.path.join(root, "leftImg8bit", "train", city, f"{stem}_leftImg8bit.png")
        np.testing.assert_array_equal(sample["image"], _decoded(image_path))
        ids, info = _expected(expected)
        assert sample["segments"].dtype == np.int32
        np.testing.assert_array_equal(sample["segments"], ids)
        got = {s["id"]: (s["category_id"], s["iscrowd"]) for s in sample["segments_info"]}
        assert got == info
        for s in sample["segments_info"]:
            assert s["isthing"] == (s["category_id"] >= 11)
        assert f"{stem}_gtFine_instanceIds.png" in source.describe(i)
    val = Cityscapes("val", root=root)
    assert len(val) == 1
    np.testing.assert_array_equal(val[0]["segments"], _expected(EXPECTED_2)[0])


def test_cityscapes_classes_registry_and_pickle(tmp_path):
    root = _write_cityscapes(tmp_path)
    source = open_source("cityscapes", "train", root=root)
    assert isinstance(source, Cityscapes)
    assert [c["id"] for c in source.classes] == [
        7,
        8,
        11,
        12,
        13,
        17,
        19,
        20,
        21,
        22,
        23,
        24,
        25,
        26,
        27,
        28,
        31,
        32,
        33,
    ]
    names = "road sidewalk building wall fence pole traffic_light traffic_sign vegetation terrain sky person rider car"
    names += " truck bus train motorcycle bicycle"
    assert [c["name"] for c in source.classes] == [n.replace("_", " ") for n in names.split()]
    assert [c["isthing"] for c in source.classes] == [False] * 11 + [True] * 8
    copy = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(copy[0]["segments"], source[0]["segments"])


def test_cityscapes_construction_errors(tmp_path):
    with pytest.raises(ValueError, match="test"):
        Cityscapes("test", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Cityscapes("train", root=tmp_path / "nowhere")
    root = _write_cityscapes(tmp_path)
    os.rename(os.path.join(root, "gtFine", "val"), os.path.join(root, "gtFine", "other"))
    with pytest.raises(FileNotFoundError, match=r"gtFine/val.*gtFine_trainvaltest\.zip"):
        Cityscapes("val", root=root)
    os.remove(os.path.join(root, "gtFine", "train", "bonn", "bonn_000001_000019_gtFine_instanceIds.png"))
    with pytest.raises(FileNotFoundError, match=r"gtFine/train.*bonn_000001_000019_gtFine_instanceIds\.png"):
        Cityscapes("train", root=root)


def test_cityscapes_sample_errors(tmp_path):
    root = _write_cityscapes(tmp_path)
    source = Cityscapes("train", root=root)
    gt = os.path.join(root, "gtFine", "train", "aachen", "aachen_000000_000019_gtFine_")
    labels, instances = _paint(REGIONS_1)
    instances[16:24, 0:6] = 26000  # person pixels with a car's instance id
    Image.fromarray(instances).save(gt + "instanceIds.png")
    with pytest.raises(SampleError, match=r"instanceIds\.png.*disagrees with.*labelIds\.png"):
        source[0]
    with open(gt + "labelIds.png", "wb") as f:
        f.write(b"garbage")
    with pytest.raises(SampleError, match=r"aachen_000000_000019_gtFine_labelIds\.png"):
        source[0]
    os.remove(os.path.join(root, "leftImg8bit", "train", "bonn", "bonn_000000_000019_leftImg8bit.png"))
    with pytest.raises(SampleError, match=r"bonn_000000_000019_leftImg8bit\.png"):
        source[1]
