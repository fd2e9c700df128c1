"""The own-data folder source and its validator, on tiny folders written here."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest
from PIL import Image

from m2f_jax.data.sources import SampleError, check_sample, open_source
from m2f_jax.data.sources.folder import FolderSource
from m2f_jax.data.validate import main, validate

# Ids neither sorted nor consecutive: a class's label is its position here.
CLASSES = [
    {"id": 3, "name": "road", "isthing": False},
    {"id": 7, "name": "car", "isthing": True},
    {"id": 0, "name": "sky", "isthing": False},
    {"id": 12, "name": "person", "isthing": True},
]
ROAD, CAR, SKY, PERSON = range(4)
IGNORE = 255
H, W = 6, 8

# Regions of the reference sample (row slice, column slice).
SKY_ROWS = (slice(0, 2), slice(None))
CAR_A = (slice(2, 5), slice(1, 4))  # instance 5
CAR_B = (slice(3, 5), slice(5, 7))  # instance 9
CAR_LOOSE = (slice(5, 6), slice(3, 4))  # car pixels of no instance: crowd
PERSON_COL = (slice(2, 6), slice(7, 8))  # no instance: crowd
VOID = (slice(5, 6), slice(0, 2))


def reference_maps() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, semantic in data set ids, instances) of the reference sample."""
    image = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    semantic = np.full((H, W), CLASSES[ROAD]["id"], np.uint8)
    semantic[SKY_ROWS] = CLASSES[SKY]["id"]
    for region in (CAR_A, CAR_B, CAR_LOOSE):
        semantic[region] = CLASSES[CAR]["id"]
    semantic[PERSON_COL] = CLASSES[PERSON]["id"]
    semantic[VOID] = IGNORE
    instances = np.zeros((H, W), np.uint8)
    instances[CAR_A], instances[CAR_B] = 5, 9
    return image, semantic, instances


def save(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_labels(root, spec) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.json").write_text(spec if isinstance(spec, str) else json.dumps(spec))


def make_folder(root, with_instances: bool = True, splits=("train", "val")):
    """A valid folder: each split holds the reference sample "a" and an all-road sample "b"."""
    write_labels(root, {"classes": CLASSES, "ignore_index": IGNORE})
    image, semantic, instances = reference_maps()
    for split in splits:
        save(root / split / "images" / "a.png", image)
        save(root / split / "semantic" / "a.png", semantic)
        save(root / split / "images" / "b.PNG", image[::-1])
        save(root / split / "semantic" / "b.png", np.full((H, W), CLASSES[ROAD]["id"], np.uint8))
        if with_instances:
            save(root / split / "instances" / "a.png", instances)
            save(root / split / "instances" / "b.png", np.zeros((H, W), np.uint8))
    return root


def region_mask(*regions) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    for region in regions:
        mask[region] = True
    return mask


def test_sample_pixel_for_pixel(tmp_path):
    source = FolderSource("train", make_folder(tmp_path))
    assert list(source.classes) == CLASSES and len(source) == 2
    sample = source[0]
    check_sample(sample, len(CLASSES), "a")
    image, _, _ = reference_maps()
    np.testing.assert_array_equal(sample["image"], image)
    assert sample["name"] == "a" and sample["segments"].dtype == np.int32
    road = ~region_mask(SKY_ROWS, CAR_A, CAR_B, CAR_LOOSE, PERSON_COL, VOID)
    # classes present outside instances in label order (crowd for things), then instances 5 and 9
    expected = [
        (ROAD, False, False, road),
        (CAR, True, True, region_mask(CAR_LOOSE)),
        (SKY, False, False, region_mask(SKY_ROWS)),
        (PERSON, True, True, region_mask(PERSON_COL)),
        (CAR, False, True, region_mask(CAR_A)),
        (CAR, False, True, region_mask(CAR_B)),
    ]
    expected_map = np.zeros((H, W), np.int32)
    for i, (category, crowd, thing, mask) in enumerate(expected, start=1):
        assert sample["segments_info"][i - 1] == {"id": i, "category_id": category, "iscrowd": crowd, "isthing": thing}
        expected_map[mask] = i
    np.testing.assert_array_equal(sample["segments"], expected_map)
    assert (sample["segments"][VOID] == 0).all()
    other = source[1]
    assert other["name"] == "b" and other["segments_info"] == [
        {"id": 1, "category_id": ROAD, "iscrowd": False, "isthing": False}
    ]
    np.testing.assert_array_equal(other["segments"], np.ones((H, W), np.int32))
    np.testing.assert_array_equal(other["image"], image[::-1])


def test_semantic_only_split_makes_every_thing_pixel_crowd(tmp_path):
    source = open_source("folder", "val", root=make_folder(tmp_path, with_instances=False))
    sample = source[0]
    cars = region_mask(CAR_A, CAR_B, CAR_LOOSE)
    info = {s["category_id"]: s for s in sample["segments_info"]}
    assert sorted(info) == [ROAD, CAR, SKY, PERSON]
    assert info[CAR]["iscrowd"] and info[PERSON]["iscrowd"] and not info[ROAD]["iscrowd"]
    np.testing.assert_array_equal(sample["segments"] == info[CAR]["id"], cars)
    np.testing.assert_array_equal(sample["segments"] == info[PERSON]["id"], region_mask(PERSON_COL))
    assert (sample["segments"][VOID] == 0).all() and (sample["segments"][~region_mask(VOID)] > 0).all()


def test_sixteen_bit_masks_and_default_ignore(tmp_path):
    write_labels(
        tmp_path, {"classes": [{"id": 300, "name": "a", "isthing": False}, {"id": 1, "name": "b", "isthing": True}]}
    )
    semantic = np.full((H, W), 300, np.uint16)
    semantic[0, :3] = 1
    semantic[1, 0] = 255  # the default ignore_index
    instances = np.zeros((H, W), np.uint16)
    instances[0, :3] = 1000
    save(tmp_path / "train" / "images" / "x.jpg", np.zeros((H, W, 3), np.uint8))
    save(tmp_path / "train" / "semantic" / "x.png", semantic)
    save(tmp_path / "train" / "instances" / "x.png", instances)
    sample = FolderSource("train", tmp_path)[0]
    expected = np.ones((H, W), np.int32)
    expected[0, :3], expected[1, 0] = 2, 0
    np.testing.assert_array_equal(sample["segments"], expected)
    assert [(s["category_id"], s["iscrowd"]) for s in sample["segments_info"]] == [(0, False), (1, False)]


def test_source_pickles_and_opens_no_image_at_construction(tmp_path):
    root = make_folder(tmp_path)
    (root / "train" / "images" / "a.png").write_bytes(b"not an image")
    source = FolderSource("train", root)  # listing only: the corrupt file is met when read
    clone = pickle.loads(pickle.dumps(source))
    assert clone.describe(1) == source.describe(1) and str(root / "train" / "semantic" / "b.png") in clone.describe(1)
    np.testing.assert_array_equal(clone[1]["segments"], source[1]["segments"])
    with pytest.raises(SampleError, match="a.png"):
        clone[0]


@pytest.mark.parametrize(
    "spec, field",
    [
        ("{not json", "JSON"),
        ({"things": []}, '"classes"'),
        ({"classes": [{"id": 1, "name": "a"}]}, '"isthing"'),
        ({"classes": [{"id": "1", "name": "a", "isthing": False}]}, '"id"'),
        ({"classes": [{"id": 1, "name": "a", "isthing": 0}]}, '"isthing"'),
        (
            {"classes": [{"id": 1, "name": "a", "isthing": False}, {"id": 1, "name": "b", "isthing": False}]},
            '"id" 1 is used twice',
        ),
        (
            {"classes": [{"id": 1, "name": "a", "isthing": False}, {"id": 2, "name": "a", "isthing": False}]},
            "\"name\" 'a' is used twice",
        ),
        ({"classes": [{"id": 1, "name": "a", "isthing": False}], "ignore_index": 1}, '"ignore_index"'),
    ],
)
def test_bad_labels_json(tmp_path, spec, field):
    root = make_folder(tmp_path)
    write_labels(root, spec)
    problems = validate(root)
    assert [p.kind for p in problems] == ["labels"] and problems[0].path == str(root / "labels.json")
    assert field in problems[0].message
    with pytest.raises(ValueError, match="labels.json") as error:
        FolderSource("train", root)
    assert field in str(error.value)


def test_missing_labels_json(tmp_path):
    root = make_folder(tmp_path)
    (root / "labels.json").unlink()
    assert [(p.kind, p.path) for p in validate(root)] == [("labels", str(root / "labels.json"))]
    with pytest.raises(ValueError, match="labels.json: no such file"):
        FolderSource("val", root)


def _break(root, kind):
    """Breaks a valid folder in one way; returns the file the problem must name."""
    train = root / "train"
    if kind == "missing_folder":
        for f in (train / "semantic").iterdir():
            f.unlink()
        (train / "semantic").rmdir()
        return train / "semantic"
    if kind == "empty":
        for sub in ("images", "semantic", "instances"):
            for f in (train / sub).iterdir():
                f.unlink()
        return train / "images"
    if kind == "duplicate_name":
        save(train / "images" / "a.jpg", np.zeros((H, W, 3), np.uint8))
        return train / "images" / "a.png"  # listed after a.jpg
    if kind == "unsupported_file":
        (train / "images" / "notes.txt").write_text("hi")
        return train / "images" / "notes.txt"
    if kind == "missing_mask":
        (train / "instances" / "b.png").unlink()
        return train / "images" / "b.PNG"
    if kind == "extra_mask":
        save(train / "semantic" / "c.png", np.zeros((H, W), np.uint8))
        return train / "semantic" / "c.png"
    if kind == "unreadable":
        (train / "semantic" / "b.png").write_bytes(b"\x89PNG broken")
        return train / "semantic" / "b.png"
    if kind == "mask_format":
        save(train / "semantic" / "b.png", np.full((H, W, 3), 3, np.uint8))
        return train / "semantic" / "b.png"
    if kind == "size_mismatch":
        save(train / "semantic" / "b.png", np.full((H, W + 1), 3, np.uint8))
        return train / "semantic" / "b.png"
    if kind == "unknown_label":
        semantic = np.full((H, W), 3, np.uint8)
        semantic[0, 0], semantic[0, 1] = 5, 200
        save(train / "semantic" / "b.png", semantic)
        return train / "semantic" / "b.png"
    raise AssertionError(kind)


SETUP_KINDS = ["missing_folder", "empty", "duplicate_name", "unsupported_file", "missing_mask", "extra_mask"]
SAMPLE_KINDS = ["unreadable", "mask_format", "size_mismatch", "unknown_label"]


@pytest.mark.parametrize("kind", SETUP_KINDS + SAMPLE_KINDS)
def test_validator_finds_each_problem(tmp_path, kind):
    root = make_folder(tmp_path)
    path = _break(root, kind)
    problems = validate(root)
    assert [(p.kind, p.path) for p in problems] == [(kind, str(path))]
    if kind == "unknown_label":
        assert "5, 200" in problems[0].message
    if kind in SETUP_KINDS:  # construction lists files only, so it sees these; the val split is intact
        with pytest.raises(ValueError, match=str(path)) as error:
            FolderSource("train", root)
        assert "m2f_jax.data.validate" in str(error.value)
        FolderSource("val", root)
    else:
        source = FolderSource("train", root)
        with pytest.raises(SampleError, match=str(path)):
            source[1]
        check_sample(source[0], len(CLASSES), "a")


@pytest.mark.parametrize(
    "where, value, message",
    [
        (CAR_A, None, "instance 5 covers several classes: 'car' (id 7), 'person' (id 12)"),
        (CAR_B, 3, "instance 9 lies on 'road' (id 3), not a thing class"),
        (CAR_B, IGNORE, "instance 9 lies on unlabelled (ignore_index 255), not a thing class"),
    ],
)
def test_instance_problems(tmp_path, where, value, message):
    root = make_folder(tmp_path)
    _, semantic, _ = reference_maps()
    if value is None:
        semantic[where[0], 1] = CLASSES[PERSON]["id"]
    else:
        semantic[where] = value
    save(root / "train" / "semantic" / "a.png", semantic)
    path = str(root / "train" / "instances" / "a.png")
    assert [(p.kind, p.path, p.message) for p in validate(root, ["train"])] == [("instance", path, message)]
    with pytest.raises(SampleError, match=re.escape(message)):
        FolderSource("train", root)[0]


def test_many_problems_in_one_pass_and_the_cli(tmp_path, capsys):
    root = make_folder(tmp_path)
    broken = {kind: _break(root, kind) for kind in ("unsupported_file", "extra_mask", "unknown_label")}
    (root / "val" / "images" / "a.png").write_bytes(b"garbage")
    (root / "val" / "instances" / "b.png").unlink()
    broken |= {"unreadable": root / "val" / "images" / "a.png", "missing_mask": root / "val" / "images" / "b.PNG"}
    problems = validate(root)
    assert sorted((p.kind, p.path) for p in problems) == sorted((k, str(p)) for k, p in broken.items())
    assert main([str(root)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("5 problems found") and all(str(p) in out for p in broken.values())
    assert "unknown label values (1):" in out and "images without a mask (1):" in out
    assert main([str(root), "--split", "val"]) == 1
    assert "2 problems found" in capsys.readouterr().out
    assert validate(root, ["val"]) == [p for p in problems if "/val/" in p.path]


def test_cli_summary_of_a_valid_folder(tmp_path, capsys):
    root = make_folder(tmp_path, splits=("train",))
    assert validate(root) == []
    assert main([str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "images: train 2"
    rows = {line.split()[1]: line.split() for line in lines[3:]}
    # images, pixels and instances per class over the two samples
    car_pixels = int(region_mask(CAR_A, CAR_B, CAR_LOOSE).sum())
    assert rows["car"][3:5] == ["1", str(car_pixels)] and rows["car"][-1] == "2"
    road_pixels = int((~region_mask(SKY_ROWS, CAR_A, CAR_B, CAR_LOOSE, PERSON_COL, VOID)).sum()) + H * W
    assert rows["road"][3:5] == ["2", str(road_pixels)]
    assert rows["person"][-1] == "0"


def test_missing_splits(tmp_path):
    root = make_folder(tmp_path, splits=("train",))
    assert [(p.kind, p.path) for p in validate(root, ["val"])] == [("missing_folder", str(root / "val"))]
    with pytest.raises(ValueError, match="val: no such folder"):
        FolderSource("val", root)
    with pytest.raises(ValueError, match="split must be one of"):
        FolderSource("test", root)
    write_labels(tmp_path / "bare", {"classes": CLASSES})
    assert [(p.kind, p.path) for p in validate(tmp_path / "bare")] == [("empty", str(tmp_path / "bare"))]
