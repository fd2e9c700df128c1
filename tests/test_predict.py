"""predict.py and m2f_jax.segment on a converted random-weight model.

The HF model is saved with save_pretrained next to a preprocessor_config.json, converted with the
converter, and predict.py runs over a folder that also holds a corrupt image and a non-image file.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import m2f_jax
from m2f_jax.apps import predict

GOOD = {"street.png": (70, 90), "room.jpg": (64, 48), "gray.png": (50, 100)}
_forward = m2f_jax.inference._forward  # the jitted forward of every inference path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.RandomState(0)
    for name, (h, w) in GOOD.items():
        pixels = rng.randint(0, 256, (h, w, 3), np.uint8)
        image = Image.fromarray(pixels).convert("L") if name.startswith("gray") else Image.fromarray(pixels)
        image.save(folder / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (folder / "notes.txt").write_text("not an image; ignored")
    return folder


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_predict_folder_with_a_corrupt_file(converted, photos, tmp_path, capsys, task):
    out = tmp_path / "out"
    status = predict.main(
        ["--model", converted, "--task", task, "--input", str(photos), "--output", str(out), "--batch-size", "2"]
        + ([] if task == "semantic" else ["--threshold", "0"])
    )
    err = capsys.readouterr().err
    assert status == 1  # one file failed
    assert "segmented 3 of 4 images" in err
    assert "broken.jpg" in err
    assert sorted(os.listdir(out)) == sorted(
        f"{os.path.splitext(name)[0]}{suffix}"
        for name in GOOD
        for suffix in ("_overlay.png", "_segmentation.png", ".json")
    )
    id2label = m2f_jax.from_pretrained(converted).config.id2label
    for name, (h, w) in GOOD.items():
        stem = os.path.splitext(name)[0]
        with Image.open(out / f"{stem}_overlay.png") as overlay:
            assert overlay.mode == "RGB" and overlay.width >= w and overlay.height >= h  # with a legend
        with Image.open(out / f"{stem}_segmentation.png") as png:
            ids = np.asarray(png)
        assert ids.shape == (h, w) and ids.dtype == np.uint16
        with open(out / f"{stem}.json") as f:
            record = json.load(f)
        assert record["task"] == task and record["size"] == [h, w]
        segments = record["segments"]
        assert segments, "threshold 0 keeps segments of a random model"
        for segment in segments:
            assert segment["label"] == id2label[segment["label_id"]]
            assert segment["area"] == int((ids == segment["id"]).sum())
        if task != "semantic":
            assert 0 not in {s["id"] for s in segments}  # 0 means "no segment" in the PNG
        # Every labelled pixel belongs to a listed segment.
        listed = {s["id"] for s in segments} | ({0} if task != "semantic" else set())
        assert set(np.unique(ids)) <= listed


def test_predict_refuses_a_missing_input(converted, tmp_path, capsys):
    args = ["--model", converted, "--task", "semantic", "--input", str(tmp_path / "nope"), "--output", "x"]
    assert predict.main(args) == 2
    assert "neither a file nor a folder" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_segment_equals_the_explicit_pipeline(converted, photos, task):
    """m2f_jax.segment does processor -> model -> post-processing, for one image or a list."""
    model = m2f_jax.from_pretrained(converted)
    processor = m2f_jax.ImageProcessor.from_pretrained(converted)
    images = [np.asarray(Image.open(photos / name).convert("RGB")) for name in GOOD]
    kwargs = {} if task == "semantic" else {"threshold": 0.0}

    inputs = processor(images)
    class_logits, mask_logits = _forward(model, inputs["pixel_values"], inputs["pixel_mask"])
    outputs = SimpleNamespace(class_queries_logits=class_logits, masks_queries_logits=mask_logits)
    post = getattr(processor, f"post_process_{task}_segmentation")
    expected = post(outputs, target_sizes=inputs["original_sizes"], image_sizes=inputs["image_sizes"], **kwargs)

    batch = m2f_jax.segment(model, images, task=task, processor=processor, **kwargs)
    single = m2f_jax.segment(model, images[1], task=task, processor=processor, **kwargs)
    assert isinstance(batch, list) and len(batch) == len(images)
    for got, want in zip(batch, expected, strict=True):
        got_map = got if task == "semantic" else got["segmentation"]
        want_map = want if task == "semantic" else want["segmentation"]
        np.testing.assert_array_equal(got_map, want_map)
    # One image alone gives what it gets in the padded batch.
    single_map = single if task == "semantic" else single["segmentation"]
    np.testing.assert_array_equal(single_map, batch[1] if task == "semantic" else batch[1]["segmentation"])
    assert m2f_jax.visualize.overlay(images[1], single).width >= images[1].shape[1]


def test_segment_rejects_an_unknown_task(converted):
    model = m2f_jax.from_pretrained(converted)
    with pytest.raises(ValueError, match="task must be one of"):
        m2f_jax.segment(model, np.zeros((32, 32, 3), np.uint8), task="depth")
