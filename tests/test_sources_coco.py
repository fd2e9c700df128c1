"""COCO panoptic and instance sources against tiny folders written here in COCO's layout, the synthetic
source, and the synthetic set written as COCO panoptic and read back."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from m2f_jax.data import synthetic
from m2f_jax.data.sources import SampleError, check_sample, open_source
from m2f_jax.data.sources.coco import CocoInstances, CocoPanoptic
from m2f_jax.data.sources.synthetic import SyntheticSource

H, W = 24, 32

# pycocotools' decode warns about numpy 2's copy keyword on every call; nothing here to act on
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _save_image(path, seed: int) -> np.ndarray:
    """A random RGB image saved at `path` (JPEG for .jpg), and the pixels PIL reads back from the file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=95)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _write_json(path, data) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)


# ----------------------------------------------------------------------------------------------------
# Panoptic

# COCO ids, deliberately unsorted: sorted, person (1) -> label 0, car (3) -> 1, tree-merged (184) -> 2.
PANOPTIC_CATEGORIES = [
    {"id": 184, "name": "tree-merged", "isthing": 0},
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 3, "name": "car", "isthing": 1},
]


def _panoptic_ids() -> list[np.ndarray]:
    """Two id maps: ids 300 (needs G) and 70000 (needs B) besides small ones, void (0) pixels, a crowd."""
    first = np.zeros((H, W), np.int64)
    first[:, :12] = 300  # tree, stuff
    first[4:10, 14:20] = 70000  # person
    first[15:20, 22:30] = 5  # car, crowd
    second = np.full((H, W), 7, np.int64)  # tree
    second[10:, :] = 0  # void
    return [first, second]


def _panoptic_segments() -> list[list[dict]]:
    """segments_info in the JSON (COCO category ids); 9 is listed but has no pixels."""
    return [
        [
            {"id": 300, "category_id": 184, "iscrowd": 0, "area": 288},
            {"id": 70000, "category_id": 1, "iscrowd": 0, "area": 36},
            {"id": 5, "category_id": 3, "iscrowd": 1, "area": 40},
        ],
        [{"id": 7, "category_id": 184, "iscrowd": 0, "area": 320}, {"id": 9, "category_id": 3, "iscrowd": 0}],
    ]


def _write_panoptic(root, split: str = "val2017", png_dir: str | None = None) -> list[np.ndarray]:
    """A two-image COCO panoptic split under `root`; returns the images as read back from their JPEGs."""
    png_dir = png_dir or os.path.join(root, "annotations", f"panoptic_{split}")
    os.makedirs(png_dir, exist_ok=True)
    image_ids, images, annotations, pixels = [139, 285], [], [], []
    for image_id, ids, segments in zip(image_ids, _panoptic_ids(), _panoptic_segments(), strict=True):
        name = f"{image_id:012d}"
        pixels.append(_save_image(os.path.join(root, split, name + ".jpg"), seed=image_id))
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
        Image.fromarray(rgb).save(os.path.join(png_dir, name + ".png"))
        images.append({"id": image_id, "file_name": name + ".jpg", "height": H, "width": W})
        annotations.append({"image_id": image_id, "file_name": name + ".png", "segments_info": segments})
    data = {"images": images[::-1], "annotations": annotations, "categories": PANOPTIC_CATEGORIES}
    _write_json(os.path.join(root, "annotations", f"panoptic_{split}.json"), data)
    return pixels


@pytest.fixture
def panoptic_root(tmp_path):
    return tmp_path, _write_panoptic(tmp_path)


def test_panoptic_samples_pixel_for_pixel(panoptic_root):
    root, pixels = panoptic_root
    source = open_source("coco_panoptic", "val", root=str(root))
    assert source.classes == [
        {"id": 1, "name": "person", "isthing": True},
        {"id": 3, "name": "car", "isthing": True},
        {"id": 184, "name": "tree-merged", "isthing": False},
    ]
    assert len(source) == 2 and source.split == "val"
    expected_info = [
        [
            {"id": 300, "category_id": 2, "iscrowd": False, "isthing": False},
            {"id": 70000, "category_id": 0, "iscrowd": False, "isthing": True},
            {"id": 5, "category_id": 1, "iscrowd": True, "isthing": True},
        ],
        [
            {"id": 7, "category_id": 2, "iscrowd": False, "isthing": False},
            {"id": 9, "category_id": 1, "iscrowd": False, "isthing": True},
        ],
    ]
    for i, (ids, image, info) in enumerate(zip(_panoptic_ids(), pixels, expected_info, strict=True)):
        sample = source[i]
        check_sample(sample, len(source.classes), source.describe(i))
        np.testing.assert_array_equal(sample["image"], image)
        assert sample["segments"].dtype == np.int32
        np.testing.assert_array_equal(sample["segments"], ids)
        assert sample["segments_info"] == info
    assert source[0]["name"] == "000000000139.jpg"
    assert "000000000285.png" in source.describe(1) and "000000000285.jpg" in source.describe(1)


def test_panoptic_detectron2_layout_and_explicit_options(tmp_path):
    _write_panoptic(tmp_path, split="train2017", png_dir=str(tmp_path / "panoptic_train2017"))
    source = CocoPanoptic("train", tmp_path)
    np.testing.assert_array_equal(source[0]["segments"], _panoptic_ids()[0])
    os.rename(tmp_path / "train2017", tmp_path / "pictures")
    os.rename(tmp_path / "panoptic_train2017", tmp_path / "pngs")
    moved = CocoPanoptic("train", tmp_path, image_dir="pictures", panoptic_dir=str(tmp_path / "pngs"))
    np.testing.assert_array_equal(moved[1]["segments"], _panoptic_ids()[1])


def test_panoptic_construction_errors(tmp_path):
    with pytest.raises(ValueError, match="nowhere"):
        CocoPanoptic("val", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="split"):
        CocoPanoptic("test", tmp_path)
    _write_panoptic(tmp_path)
    json_path = tmp_path / "annotations" / "panoptic_val2017.json"
    data = json.loads(json_path.read_text())
    os.rename(json_path, tmp_path / "elsewhere.json")
    with pytest.raises(ValueError, match="panoptic_val2017.json"):
        CocoPanoptic("val", tmp_path)
    _write_json(json_path, {k: v for k, v in data.items() if k != "annotations"})
    with pytest.raises(ValueError, match="annotations"):
        CocoPanoptic("val", tmp_path)
    data["annotations"][1]["segments_info"][0]["category_id"] = 99
    _write_json(json_path, data)
    with pytest.raises(ValueError, match=r"000000000285\.png.*category_id 99"):
        CocoPanoptic("val", tmp_path)
    os.rename(tmp_path / "annotations" / "panoptic_val2017", tmp_path / "pngs")
    with pytest.raises(ValueError, match="panoptic_val2017"):
        CocoPanoptic("val", tmp_path)


def test_panoptic_sample_errors(panoptic_root):
    root, _ = panoptic_root
    png = root / "annotations" / "panoptic_val2017" / "000000000139.png"
    ids = _panoptic_ids()[0]
    ids[0, 0] = 12  # listed nowhere
    Image.fromarray(np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)).save(png)
    source = CocoPanoptic("val", root)
    with pytest.raises(SampleError, match=r"000000000139\.png.*\[12\]"):
        source[0]
    os.remove(png)
    with pytest.raises(SampleError, match=r"000000000139\.png"):
        source[0]
    (root / "val2017" / "000000000285.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(SampleError, match=r"000000000285\.jpg"):
        source[1]


# ----------------------------------------------------------------------------------------------------
# Instances

INSTANCE_CATEGORIES = [  # sorted: person (1) -> 0, dog (18) -> 1, toothbrush (90) -> 2
    {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
]


def _box(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[rows, cols] = True
    return mask


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths of the column-major pixels, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return {"size": [H, W], "counts": ([0] if flat[0] else []) + runs}


# The masks the annotations below describe. The polygon's corners are pixel corners: pycocotools fills
# x in [2, 10), y in [3, 9), i.e. rows 3-8 and columns 2-9.
POLYGON = _box(slice(3, 9), slice(2, 10))  # 48 px, person
SMALL = _box(slice(5, 8), slice(6, 13))  # 21 px, on top of POLYGON, dog
COMPRESSED = _box(slice(15, 20), slice(20, 26)) & ~_box(slice(15, 17), slice(20, 22))  # 26 px, toothbrush
CROWD = _box(slice(2, 5), slice(1, 5))  # 12 px, under POLYGON although smaller, person crowd
LONE_CROWD = _box(slice(0, 4), slice(0, 32))


def _write_instances(root) -> list[np.ndarray]:
    """Three images in this "images" order: 42 (every kind of mask), 7 (none), 9 (only a crowd)."""
    compressed = mask_utils.encode(np.asfortranarray(COMPRESSED.astype(np.uint8)))
    compressed["counts"] = compressed["counts"].decode()  # as JSON stores it
    annotations = [  # JSON order sets the segment ids: SMALL 1, POLYGON 2, COMPRESSED 3, CROWD 4
        {"id": 11, "image_id": 42, "category_id": 18, "iscrowd": 0, "segmentation": _uncompressed_rle(SMALL)},
        {"id": 12, "image_id": 42, "category_id": 1, "iscrowd": 0, "segmentation": [[2, 3, 10, 3, 10, 9, 2, 9]]},
        {"id": 13, "image_id": 42, "category_id": 90, "iscrowd": 0, "segmentation": compressed},
        {"id": 14, "image_id": 42, "category_id": 1, "iscrowd": 1, "segmentation": _uncompressed_rle(CROWD)},
        {"id": 15, "image_id": 42, "category_id": 1, "iscrowd": 0, "segmentation": [[1, 1, 5, 5]]},  # 2 points
        {"id": 16, "image_id": 9, "category_id": 1, "iscrowd": 1, "segmentation": _uncompressed_rle(LONE_CROWD)},
    ]
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": H, "width": W} for i in (42, 7, 9)]
    pixels = [_save_image(root / "train2017" / image["file_name"], seed=image["id"]) for image in images]
    data = {"images": images, "annotations": annotations, "categories": INSTANCE_CATEGORIES}
    _write_json(root / "annotations" / "instances_train2017.json", data)
    return pixels


def test_instances_samples_pixel_for_pixel(tmp_path):
    pixels = _write_instances(tmp_path)
    source = open_source("coco_instances", "train", root=str(tmp_path))
    assert source.classes == [
        {"id": 1, "name": "person", "isthing": True},
        {"id": 18, "name": "dog", "isthing": True},
        {"id": 90, "name": "toothbrush", "isthing": True},
    ]
    assert len(source) == 3
    expected = np.zeros((H, W), np.int32)  # crowd first, then by decreasing area
    for mask, segment_id in ((CROWD, 4), (POLYGON, 2), (COMPRESSED, 3), (SMALL, 1)):
        expected[mask] = segment_id
    sample = source[0]
    check_sample(sample, 3, source.describe(0))
    np.testing.assert_array_equal(sample["image"], pixels[0])
    np.testing.assert_array_equal(sample["segments"], expected)
    assert set(zip(*np.nonzero(sample["segments"] == 2), strict=True)) == set(
        zip(*np.nonzero(POLYGON & ~SMALL), strict=True)
    )
    assert sample["segments_info"] == [
        {"id": 1, "category_id": 1, "iscrowd": False, "isthing": True},
        {"id": 2, "category_id": 0, "iscrowd": False, "isthing": True},
        {"id": 3, "category_id": 2, "iscrowd": False, "isthing": True},
        {"id": 4, "category_id": 0, "iscrowd": True, "isthing": True},
    ]
    assert sample["name"] == "000000000042.jpg"
    empty = source[1]
    np.testing.assert_array_equal(empty["image"], pixels[1])
    assert not empty["segments"].any() and empty["segments_info"] == []
    np.testing.assert_array_equal(source[2]["segments"], LONE_CROWD.astype(np.int32))

    kept = CocoInstances("train", tmp_path, drop_empty=True)  # drops 7 (nothing) and 9 (only a crowd)
    assert len(kept) == 1
    np.testing.assert_array_equal(kept[0]["segments"], expected)


def test_instances_errors(tmp_path):
    with pytest.raises(ValueError, match="nowhere"):
        CocoInstances("train", tmp_path / "nowhere")
    _write_instances(tmp_path)
    json_path = tmp_path / "annotations" / "instances_train2017.json"
    with pytest.raises(ValueError, match="instances_val2017.json"):
        CocoInstances("val", tmp_path, image_dir="train2017")
    data = json.loads(json_path.read_text())
    data["annotations"][2]["category_id"] = 91
    _write_json(json_path, data)
    with pytest.raises(ValueError, match="annotation 13 has category_id 91"):
        CocoInstances("train", tmp_path)
    data["annotations"][2]["category_id"] = 90
    data["images"][0]["height"] = H + 1  # its RLEs are H high
    _write_json(json_path, data)
    with pytest.raises(ValueError, match="annotation 11 has an RLE"):
        CocoInstances("train", tmp_path)
    data["images"][0]["height"] = H
    del data["categories"]
    _write_json(json_path, data)
    with pytest.raises(ValueError, match="categories"):
        CocoInstances("train", tmp_path)


def test_instances_sample_errors(tmp_path):
    _write_instances(tmp_path)
    source = CocoInstances("train", tmp_path)
    (tmp_path / "train2017" / "000000000007.jpg").write_bytes(b"broken")
    with pytest.raises(SampleError, match=r"000000000007\.jpg"):
        source[1]
    os.remove(tmp_path / "train2017" / "000000000009.jpg")
    with pytest.raises(SampleError, match=r"000000000009\.jpg"):
        source[2]
    Image.fromarray(np.zeros((H, W + 1, 3), np.uint8)).save(tmp_path / "train2017" / "000000000042.jpg", "JPEG")
    with pytest.raises(SampleError, match=r"000000000042\.jpg"):
        source[0]


def test_sources_pickle(tmp_path):
    _write_panoptic(tmp_path)
    _write_instances(tmp_path)
    sources = [CocoPanoptic("val", tmp_path), CocoInstances("train", tmp_path), SyntheticSource("train", 2, (H, W))]
    for source in sources:
        again = pickle.loads(pickle.dumps(source))
        assert again.classes == source.classes and len(again) == len(source)
        a, b = source[0], again[0]
        np.testing.assert_array_equal(a["segments"], b["segments"])
        np.testing.assert_array_equal(a["image"], b["image"])
        assert a["segments_info"] == b["segments_info"]


# ----------------------------------------------------------------------------------------------------
# Synthetic


def test_synthetic_source_is_the_synthetic_dataset():
    source = open_source("synthetic", "val", num_images=3, image_size=(H, W), seed=4)
    data = synthetic.SyntheticDataset(3, image_size=(H, W), seed=4 + 10_000)  # val draws from seed + 10,000
    assert [c["id"] for c in source.classes] == list(range(1, 8))
    assert [c["name"] for c in source.classes] == list(synthetic.STUFF + synthetic.THINGS)
    assert [c["isthing"] for c in source.classes] == [False] * 3 + [True] * 4
    for i in range(3):
        sample, raw = source[i], data[i]
        check_sample(sample, 7, source.describe(i))
        np.testing.assert_array_equal(sample["image"], raw["image"])
        np.testing.assert_array_equal(sample["segments"], raw["instances"] + 1)
        assert not (sample["segments"] == 0).any()
        assert sample["segments_info"] == [
            {"id": s["id"] + 1, "category_id": s["category_id"], "iscrowd": False, "isthing": s["category_id"] >= 3}
            for s in raw["segments_info"]
        ]
    train = SyntheticSource("train", 1, (H, W), seed=4)
    np.testing.assert_array_equal(train[0]["image"], synthetic.SyntheticDataset(1, (H, W), seed=4)[0]["image"])


def _assert_same_samples(read, drawn) -> None:
    assert read.classes == drawn.classes and len(read) == len(drawn)
    for i in range(len(drawn)):
        a, b = read[i], drawn[i]
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["segments"], b["segments"])
        assert a["segments_info"] == b["segments_info"] and a["name"] == b["name"]


def test_synthetic_written_as_coco_panoptic_reads_back(tmp_path):
    synthetic.main([str(tmp_path), "--train-images", "3", "--val-images", "2", "--image-size", str(H), str(W)])
    for split, count in (("train", 3), ("val", 2)):
        _assert_same_samples(CocoPanoptic(split, tmp_path), SyntheticSource(split, count, (H, W)))
    data = json.loads((tmp_path / "annotations" / "panoptic_val2017.json").read_text())
    assert data["categories"][3] == {"id": 4, "name": "circle", "isthing": 1}
    first = data["annotations"][0]["segments_info"][0]
    ids = SyntheticSource("val", 1, (H, W))[0]["segments"]
    y, x = np.nonzero(ids == first["id"])
    assert first["area"] == len(y) and first["bbox"] == [x.min(), y.min(), x.max() - x.min() + 1, y.max() - y.min() + 1]
    with pytest.raises(FileExistsError, match="val2017"):
        synthetic.write_coco_panoptic(tmp_path, "val", 1)
    with pytest.raises(SystemExit, match="1"):
        synthetic.main([str(tmp_path), "--train-images", "1", "--val-images", "1"])


def test_interrupted_write_is_no_data_set(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic.json, "dump", fail)
    with pytest.raises(KeyboardInterrupt):
        synthetic.write_coco_panoptic(tmp_path, "train", 2, image_size=(H, W))
    with pytest.raises(ValueError, match="panoptic_train2017.json"):
        CocoPanoptic("train", tmp_path)
