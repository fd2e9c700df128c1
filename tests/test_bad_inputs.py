"""Bad and awkward inputs at the processor, the model, the post-processing and predict.py: each gets a
clear error or a correct result, and nothing is lost (issue 9's corpus; the converter's, the weights'
and training's cases are in their own test files)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
from PIL import Image

import m2f_jax
from m2f_jax.apps import predict
from m2f_jax.processing import postprocess as pp
from m2f_jax.processing.image_io import read_image

SMALL = {"shortest_edge": 64, "longest_edge": 96}
EXIF_ORIENTATION = 0x0112


def save_rotated_jpeg(path, pixels: np.ndarray, orientation: int = 6) -> None:
    """A JPEG stored sideways with an EXIF tag saying how to display it (6: rotate 90 degrees clockwise)."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    Image.fromarray(pixels).save(path, exif=exif, quality=95)


# ----------------------------------------------------------------------------------------------------
# 1-3: reading images


def test_pil_images_and_files_are_never_channels_first(tmp_path):
    """A 100x3 PIL image (3 rows) is (3, 100) whatever its height; before, heights of 1, 3 or 4 were
    taken as channels."""
    processor = m2f_jax.ImageProcessor(size=SMALL)
    for size in ((100, 3), (100, 1), (300, 4)):
        image = Image.new("RGB", size, (10, 200, 30))
        image.save(tmp_path / "thin.png")
        for item in (image, tmp_path / "thin.png"):
            assert processor(item)["original_sizes"].tolist() == [[size[1], size[0]]]


def test_arrays_are_guessed_channels_first_only_when_unambiguous():
    processor = m2f_jax.ImageProcessor(size=SMALL)
    for shape in ((3, 3, 3), (3, 100, 3), (1, 100, 3), (4, 5, 3)):
        with pytest.raises(ValueError, match="reads both as"):
            processor(np.zeros(shape, np.uint8))
    assert processor(np.zeros((3, 100, 3), np.uint8), input_data_format="channels_last")["original_sizes"].tolist() == [
        [3, 100]
    ]
    with pytest.warns(UserWarning, match=r"image 0 \(shape \(3, 40, 50\)\) read as channels-first"):
        assert processor(np.zeros((3, 40, 50), np.uint8))["original_sizes"].tolist() == [[40, 50]]


@pytest.mark.parametrize("mode, dtype", [("I;16", np.uint16), ("I", np.int32), ("F", np.float32)])
def test_wide_images_are_refused_the_same_way_everywhere(tmp_path, mode, dtype):
    """16-bit, 32-bit and float images: refused by the one reader, also when their values happen to fit
    in 0-255 (a dark 16-bit image is not an 8-bit one)."""
    image = Image.fromarray(np.full((20, 30), 200, dtype), mode=mode if mode != "I;16" else None)
    assert image.mode == mode
    path = tmp_path / f"wide_{mode.replace(';', '')}.{'tif' if mode != 'I;16' else 'png'}"
    image.save(path)
    with pytest.raises(ValueError, match="more than 8 bits"):
        read_image(path)
    processor = m2f_jax.ImageProcessor(size=SMALL)
    for item in (image, path):
        with pytest.raises(ValueError, match="more than 8 bits"):
            processor(item)


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((30, 50, 3), np.uint8)
    pixels[:, :10] = 255  # the stored image's left edge is white
    save_rotated_jpeg(tmp_path / "phone.jpg", pixels)
    upright = read_image(tmp_path / "phone.jpg")
    assert upright.shape == (50, 30, 3)  # displayed 90 degrees clockwise: the left edge is now the top
    assert upright[:8].mean() > 200 and upright[-30:].mean() < 30
    processor = m2f_jax.ImageProcessor(size=SMALL)
    with Image.open(tmp_path / "phone.jpg") as opened:
        for item in (tmp_path / "phone.jpg", opened):
            assert processor(item)["original_sizes"].tolist() == [[50, 30]]


# ----------------------------------------------------------------------------------------------------
# 4: post-processing arguments and non-finite logits


@dataclasses.dataclass
class Outputs:
    class_queries_logits: np.ndarray
    masks_queries_logits: np.ndarray


def outputs(batch: int = 2) -> Outputs:
    rng = np.random.RandomState(0)
    return Outputs(rng.randn(batch, 6, 4).astype(np.float32), rng.randn(batch, 6, 8, 8).astype(np.float32))


@pytest.mark.parametrize("task", ["semantic", "instance", "panoptic"])
def test_non_finite_logits_are_refused(task):
    bad = outputs()
    bad.masks_queries_logits[1, 2, 3, 4] = np.nan
    with pytest.raises(ValueError, match=r"masks_queries_logits of image\(s\) \[1\] contain NaN"):
        getattr(pp, f"post_process_{task}_segmentation")(bad)
    bad = outputs()
    bad.class_queries_logits[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"class_queries_logits of image\(s\) \[0\]"):
        getattr(pp, f"post_process_{task}_segmentation")(bad)


@pytest.mark.parametrize("name", ["threshold", "mask_threshold", "overlap_mask_area_threshold"])
@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), "0.5", None])
def test_thresholds_must_be_fractions(name, value):
    for post in (pp.post_process_instance_segmentation, pp.post_process_panoptic_segmentation):
        with pytest.raises(ValueError, match=f"{name} must be a number in \\[0, 1\\]"):
            post(outputs(), **{name: value})


def test_other_arguments_are_checked():
    with pytest.raises(ValueError, match="top_k must be a positive integer, got -1"):
        pp.post_process_instance_segmentation(outputs(), top_k=-1)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        pp.post_process_instance_segmentation(outputs(), top_k=2.5)
    with pytest.raises(ValueError, match="label_ids_to_fuse must be a collection of label ids"):
        pp.post_process_panoptic_segmentation(outputs(), label_ids_to_fuse=3)
    with pytest.raises(ValueError, match="label_ids_to_fuse must hold integer label ids"):
        pp.post_process_panoptic_segmentation(outputs(), label_ids_to_fuse=["sky"])
    assert pp.post_process_panoptic_segmentation(outputs(), label_ids_to_fuse=np.array([0, 2]), threshold=0.0)
    for post in (pp.post_process_semantic_segmentation, pp.post_process_instance_segmentation):
        with pytest.raises(ValueError, match=r"e.g. \[\(480, 640\)\] for one image; got the flat \(48, 64\)"):
            post(outputs(), target_sizes=(48, 64))
        with pytest.raises(ValueError, match="integer pairs"):
            post(outputs(), target_sizes=[(48.5, 64), (10, 10)])


# ----------------------------------------------------------------------------------------------------
# 5, 8, 11: predict.py on a folder of good, bad and awkward images


def write_corpus(folder) -> dict[str, tuple[int, int] | None]:
    """The corpus: file name -> the (H, W) its result must have, or None for a reported skip."""
    rng = np.random.RandomState(1)

    def rgb(h, w):
        return rng.randint(0, 256, (h, w, 3), np.uint8)

    expected = {}
    Image.fromarray(rgb(40, 60)).save(folder / "photo.jpg")
    Image.fromarray(rgb(30, 20)).save(folder / "photo.png")  # the same stem as photo.jpg
    expected.update({"photo.jpg": (40, 60), "photo.png": (30, 20)})
    save_rotated_jpeg(folder / "phone.jpg", rgb(30, 50))
    expected["phone.jpg"] = (50, 30)  # as displayed
    Image.fromarray(rgb(1, 1)).save(folder / "dot.png")
    expected["dot.png"] = (1, 1)
    Image.fromarray(rgb(1, 5000)).save(folder / "line.png")  # resizes to height 0: skipped, alone
    expected["line.png"] = None
    Image.fromarray(np.tile(rgb(40, 50), (100, 100, 1))).save(folder / "large.png", compress_level=1)
    expected["large.png"] = (4000, 5000)
    Image.fromarray(np.full((20, 30), 300, np.uint16)).save(folder / "deep.png")  # 16-bit
    Image.fromarray(rng.rand(20, 30).astype(np.float32)).save(folder / "float.tif")
    (folder / "empty.png").write_bytes(b"")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG at all")
    Image.fromarray(rgb(64, 64)).save(folder / "whole.png")
    (folder / "truncated.png").write_bytes((folder / "whole.png").read_bytes()[:300])
    (folder / "whole.png").unlink()
    expected.update({name: None for name in ("deep.png", "float.tif", "empty.png", "corrupt.jpg", "truncated.png")})
    (folder / "notes.txt").write_text("not an image: not listed")
    return expected


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return folder, write_corpus(folder)


def run_predict(converted, source, out, *extra):
    return predict.main(
        ["--model", converted, "--task", "semantic", "--input", str(source), "--output", str(out), "--batch-size", "16"]
        + list(extra)
    )


def test_predict_on_the_corpus(converted, corpus, tmp_path, capsys):
    folder, expected = corpus
    out = tmp_path / "out"
    assert run_predict(converted, folder, out) == 1
    err = capsys.readouterr().err
    good = {name: size for name, size in expected.items() if size is not None}
    assert f"segmented {len(good)} of {len(expected)} images" in err
    skipped = [line for line in err.splitlines() if line.startswith("  skipped: ")]
    assert len(skipped) == len(expected) - len(good)
    for name, size in expected.items():
        if size is None:
            assert any(name in line for line in skipped), name
    assert "(1, 5000)" in next(line for line in skipped if "line.png" in line)  # the real size
    names = {"photo.jpg": "photo.jpg", "photo.png": "photo.png", "phone.jpg": "phone", "dot.png": "dot"}
    names["large.png"] = "large"
    assert sorted(os.listdir(out)) == sorted(names[n] + suffix for n in good for suffix in predict.RESULT_SUFFIXES)
    for name, size in good.items():
        with open(out / f"{names[name]}.json") as f:
            record = json.load(f)
        assert record["image"] == name and tuple(record["size"]) == size
        with Image.open(out / f"{names[name]}_segmentation.png") as png:
            assert png.size == (size[1], size[0])


def test_predict_into_its_own_input_folder(converted, tmp_path, capsys):
    """Results written beside the images are not taken for images by the next run; nothing is
    overwritten unless asked; --skip-existing resumes."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.RandomState(2)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.randint(0, 256, (32, 40, 3), np.uint8)).save(folder / name)
    assert run_predict(converted, folder, folder) == 0
    assert "segmented 2 of 2 images" in capsys.readouterr().err
    assert predict.list_inputs(str(folder)) == [str(folder / "a.png"), str(folder / "b.png")]
    before = (folder / "a.json").read_bytes()
    assert run_predict(converted, folder, folder) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    (folder / "b.json").unlink()  # b's results are incomplete
    assert run_predict(converted, folder, folder, "--skip-existing") == 0
    assert "segmented 1 of 1 images into" in capsys.readouterr().err and (folder / "b.json").exists()
    assert run_predict(converted, folder, folder, "--overwrite") == 0
    assert (folder / "a.json").read_bytes() == before


def test_predict_never_overwrites_an_input(converted, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    pixels = np.random.RandomState(3).randint(0, 256, (32, 40, 3), np.uint8)
    Image.fromarray(pixels).save(folder / "a.png")
    Image.fromarray(pixels).save(folder / "a_overlay.png")  # the user's own image, named like a result
    assert run_predict(converted, folder, folder, "--overwrite") == 2
    assert "would overwrite the input" in capsys.readouterr().err


def test_predict_checks_the_output_before_loading_the_model(tmp_path, capsys, monkeypatch):
    (tmp_path / "image.png").write_bytes(b"")
    (tmp_path / "taken").write_text("a file")
    missing_model = str(tmp_path / "no-model")  # would fail if it were loaded first
    assert run_predict(missing_model, tmp_path / "image.png", tmp_path / "taken") == 2
    err = capsys.readouterr().err
    assert "--output" in err and "not a folder" in err

    # A folder that refuses files (read-only, or a full disk): simulated, as root writes anywhere.
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(predict.tempfile, "TemporaryFile", refuse)
    assert run_predict(missing_model, tmp_path / "image.png", tmp_path / "out") == 2
    assert "cannot be written to (Permission denied)" in capsys.readouterr().err


def test_a_failed_write_leaves_no_partial_file(converted, tmp_path, capsys, monkeypatch):
    """A full disk while writing: the file being written is not left half-written, the run stops with
    a summary, and --skip-existing finishes it."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.RandomState(4)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.randint(0, 256, (32, 40, 3), np.uint8)).save(folder / name)
    out = tmp_path / "out"
    real_save, calls = Image.Image.save, []

    def save_until_full(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 4:  # b's id map: write a few bytes, then fail as a full disk does
            with open(fp, "wb") as f:
                f.write(b"\x89PNG partial")
            raise OSError(28, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_until_full)
    assert run_predict(converted, folder, out, "--batch-size", "2") == 1
    err = capsys.readouterr().err
    assert "segmented 1 of 3 images" in err and "No space left on device" in err and "--skip-existing" in err
    assert sorted(os.listdir(out)) == sorted(["a" + suffix for suffix in predict.RESULT_SUFFIXES] + ["b_overlay.png"])
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert run_predict(converted, folder, out, "--skip-existing") == 0
    assert len(os.listdir(out)) == 9


# ----------------------------------------------------------------------------------------------------
# 15: a notebook cell written for HF transformers runs with only its import changed

HF_CELL = """
{import_line}
import torch
from PIL import Image

processor = Mask2FormerImageProcessor.from_pretrained(checkpoint)
model = Mask2FormerForUniversalSegmentation.from_pretrained(checkpoint)
inputs = processor(images=image, return_tensors="pt")
with torch.no_grad():
    outputs = model(**inputs)
class_queries_logits = outputs.class_queries_logits
masks_queries_logits = outputs["masks_queries_logits"]
semantic = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]
panoptic = processor.post_process_panoptic_segmentation(outputs, target_sizes=[image.size[::-1]], threshold=0.0)[0]
"""


def test_a_transformers_notebook_cell_runs_with_only_the_import_changed(tmp_path):
    pytest.importorskip("torch")
    from helpers import save_random_hf_model, tiny_config

    save_random_hf_model(tiny_config(window_size=7), tmp_path, seed=5)
    m2f_jax.ImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(tmp_path)
    image = Image.fromarray(np.random.RandomState(6).randint(0, 256, (50, 70, 3), np.uint8))
    results = {}
    for name, import_line in (
        ("hf", "from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor"),
        ("ours", "from m2f_jax import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor"),
    ):
        scope = {"checkpoint": str(tmp_path), "image": image}
        exec(HF_CELL.format(import_line=import_line), scope)
        results[name] = scope
    hf, ours = results["hf"], results["ours"]
    np.testing.assert_allclose(ours["class_queries_logits"], hf["class_queries_logits"].numpy(), atol=1e-4)
    np.testing.assert_allclose(ours["masks_queries_logits"], hf["masks_queries_logits"].numpy(), atol=1e-4)
    assert ours["semantic"].shape == (50, 70)
    assert (ours["semantic"] == hf["semantic"].numpy()).mean() > 0.999  # near-ties may differ
    assert ours["panoptic"]["segmentation"].shape == (50, 70) and ours["panoptic"]["segments_info"]


# ----------------------------------------------------------------------------------------------------
# 14: segment() uses the checkpoint's own processor settings


def test_segment_uses_the_checkpoints_processor(converted, tmp_path):
    """The converted folder carries a 64/96 preprocessor config: segment() without a processor uses
    it (before, it used HF's 800/1333 defaults); a checkpoint without one warns and uses the defaults."""
    from m2f_jax.inference import default_processor

    model = m2f_jax.from_pretrained(converted)
    assert model.name_or_path == converted
    assert default_processor(model) == m2f_jax.ImageProcessor.from_pretrained(converted)
    assert default_processor(model).size == {"shortest_edge": 64, "longest_edge": 96}
    images = [np.random.RandomState(7).randint(0, 256, (32, 40, 3), np.uint8)] * 2
    implicit = m2f_jax.segment(model, images, task="semantic")
    explicit = m2f_jax.segment(model, images, task="semantic", processor=default_processor(model))
    np.testing.assert_array_equal(implicit[0], explicit[0])
    model.save_pretrained(tmp_path / "bare")  # weights and config only
    bare = m2f_jax.from_pretrained(str(tmp_path / "bare"))
    with pytest.warns(UserWarning, match="has no preprocessor_config.json"):
        assert default_processor(bare) == m2f_jax.ImageProcessor()
    model.name_or_path = None  # built from a config: HF's defaults, silently
    assert default_processor(model) == m2f_jax.ImageProcessor()
