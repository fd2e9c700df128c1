"""Preprocessing: parity with HF's Mask2FormerImageProcessor, input conversions and input errors.

The reference is HF's default torchvision backend. It resizes with torch's `interpolate`: antialiased
bilinear on uint8 images (torch's fixed-point kernel on x86/ARM CPUs) and nearest-exact on segmentation
maps. Our numpy kernels reproduce those bit for bit (tested directly against torch below), so the
parity tolerance on pixel_values is 1e-5, which only covers float32 rounding of the normalisation
(observed: 0.0 against the torchvision backend, ~5e-7 against the PIL backend's float64 normalisation).
Without torchvision installed, transformers falls back to its PIL backend, whose Pillow resize uses
22-bit instead of torch's ~15-bit fixed-point weights and rounds pixels differently (up to 2 uint8 steps
in some pixels), and whose Pillow nearest resize rounds exact ties differently. The parity tests then run
HF's PIL-backend pipeline (sizes, padding, rescale, normalize, targets) with its resize swapped for the
torch call that the torchvision backend makes; one more test pins the plain PIL backend to 2 uint8 steps.
Deliberate differences, checked here: target masks are padded with 0 (HF: ignore_index).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from m2f_jax.processing import preprocess
from m2f_jax.processing.preprocess import ImageProcessor, resize_bilinear, resize_nearest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
F = torch.nn.functional

SHAPES = [(333, 517), (480, 640), (50, 800), (1000, 20)]
SMALL = {"shortest_edge": 96, "longest_edge": 160}


def random_images(shapes, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.randint(0, 256, (*s, 3), dtype=np.uint8) for s in shapes]


def random_maps(shapes, values, seed=1):
    rng = np.random.RandomState(seed)
    return [rng.randint(0, values, s).astype(np.uint8) for s in shapes]


def _torch_resize(self, image, size, resample=None, **kwargs):
    """torchvision's `resize` on a CPU tensor, for numpy (C, H, W) input: torch.nn.functional.interpolate."""
    x = torch.from_numpy(np.ascontiguousarray(image))[None]
    out = [size.height, size.width]
    if int(resample) == 0:  # NEAREST: torchvision uses nearest-exact; non-uint8 goes through float32
        y = F.interpolate(x if x.dtype == torch.uint8 else x.float(), size=out, mode="nearest-exact")
        return y.round().to(x.dtype)[0].numpy()
    return F.interpolate(x, size=out, mode="bilinear", antialias=True)[0].numpy()


@pytest.fixture
def hf_processor(monkeypatch):
    """Factory of HF processors: the torchvision backend, or the PIL backend with torchvision's resize."""

    def make(**kwargs):
        processor = transformers.Mask2FormerImageProcessor(**kwargs)
        if processor.backend != "torchvision":
            from transformers.image_processing_backends import PilBackend

            monkeypatch.setattr(PilBackend, "resize", _torch_resize)
        return processor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield make


def hf_outputs(processor, images, **kwargs):
    out = processor(images, return_tensors=None, **kwargs)
    result = {
        "pixel_values": np.stack([np.asarray(x) for x in out["pixel_values"]]).transpose(0, 2, 3, 1),
        "pixel_mask": np.stack([np.asarray(x) for x in out["pixel_mask"]]).astype(bool),
    }
    if "mask_labels" in out:
        result["mask_labels"] = [np.asarray(m) for m in out["mask_labels"]]
        result["class_labels"] = [np.asarray(c) for c in out["class_labels"]]
    return result


def assert_same_targets(ours, theirs, ignore_index):
    """Masks equal inside each image; in the padding ours are 0 where HF writes ignore_index."""
    for i, (h, w) in enumerate(ours["image_sizes"]):
        mine, hf = ours["mask_labels"][i], theirs["mask_labels"][i]
        assert mine.shape == hf.shape and mine.dtype == np.float32
        np.testing.assert_array_equal(mine[:, :h, :w], hf[:, :h, :w])
        assert not mine[:, h:].any() and not mine[:, :, w:].any()
        if ignore_index is not None and hf.shape[0]:
            assert np.all(hf[:, h:] == ignore_index) and np.all(hf[:, :, w:] == ignore_index)
        np.testing.assert_array_equal(ours["class_labels"][i], theirs["class_labels"][i])
        assert ours["class_labels"][i].dtype == np.int64


# ----------------------------------------------------------------------------------------------------
# Kernels against torch (what torchvision calls on CPU)


@pytest.mark.parametrize("seed", range(3))
def test_bilinear_uint8_is_torch_bit_for_bit(seed):
    rng = np.random.RandomState(seed)
    for _ in range(15):
        h, w, oh, ow = rng.randint(1, 260, 4)
        x = rng.randint(0, 256, (h, w, 3), dtype=np.uint8)
        ref = (
            F.interpolate(
                torch.from_numpy(x).permute(2, 0, 1)[None], size=(int(oh), int(ow)), mode="bilinear", antialias=True
            )[0]
            .permute(1, 2, 0)
            .numpy()
        )
        np.testing.assert_array_equal(resize_bilinear(x, oh, ow), ref, err_msg=f"{(h, w)} -> {(oh, ow)}")


def test_bilinear_float_matches_torch():
    """float64 in both: equal to 1e-12. torch's float32 kernel (weights and sums in float32) strays from the
    float64 result by up to ~6e-5 on values in [0, 1]; that is its rounding, not a different formula."""
    rng = np.random.RandomState(3)
    for h, w, oh, ow in [(333, 517, 800, 1242), (1000, 20, 1333, 27), (64, 48, 17, 9), (40, 30, 41, 29)]:
        x = rng.rand(h, w, 3)
        t = torch.from_numpy(x).permute(2, 0, 1)[None]
        ref64 = F.interpolate(t, size=(oh, ow), mode="bilinear", antialias=True)[0].permute(1, 2, 0).numpy()
        ref32 = F.interpolate(t.float(), size=(oh, ow), mode="bilinear", antialias=True)[0].permute(1, 2, 0).numpy()
        ours = resize_bilinear(x, oh, ow)
        np.testing.assert_allclose(ours, ref64, rtol=0, atol=1e-12)
        np.testing.assert_allclose(ours, ref32, rtol=0, atol=1e-4)


def test_nearest_exact_is_torch_bit_for_bit():
    """Random sizes plus sizes where output pixel centres fall exactly on source borders (ties)."""
    rng = np.random.RandomState(4)
    cases = [tuple(rng.randint(2, 300, 4)) for _ in range(40)]
    cases += [(2, 141, 300, 480), (333, 40, 800, 123), (480, 640, 800, 1088), (4, 166, 90, 700)]
    for h, w, oh, ow in cases:
        seg = rng.randint(0, 200, (h, w)).astype(np.uint8)
        for dtype in (torch.uint8, torch.float32):
            ref = (
                F.interpolate(
                    torch.from_numpy(seg).to(dtype)[None, None], size=(int(oh), int(ow)), mode="nearest-exact"
                )[0, 0]
                .numpy()
                .astype(np.uint8)
            )
            np.testing.assert_array_equal(resize_nearest(seg, oh, ow), ref, err_msg=f"{(h, w)} -> {(oh, ow)}")


# ----------------------------------------------------------------------------------------------------
# Parity with HF's processor


@pytest.mark.parametrize(
    "settings",
    [
        {},  # shortest edge 800, longest 1333: 333x517 -> 800x1248, 50x800 capped by the longest edge
        {"size": {"height": 384, "width": 512}},
        {"size": {"max_height": 200, "max_width": 300}},
        {"size": SMALL, "pad_size": {"height": 192, "width": 192}},
        {"size": SMALL, "size_divisor": 0},
    ],
)
def test_pixels_match_hf(hf_processor, settings):
    images = random_images(SHAPES)
    ours = ImageProcessor(**settings)(images)
    theirs = hf_outputs(hf_processor(**settings), images)
    assert ours["pixel_values"].shape == theirs["pixel_values"].shape
    np.testing.assert_allclose(ours["pixel_values"], theirs["pixel_values"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(ours["pixel_mask"], theirs["pixel_mask"])
    np.testing.assert_array_equal(ours["original_sizes"], SHAPES)
    for mask, (h, w) in zip(ours["pixel_mask"], ours["image_sizes"], strict=True):
        assert mask[:h, :w].all() and mask.sum() == h * w


def test_pil_images_and_single_image_match_hf(hf_processor):
    images = random_images(SHAPES[:2], seed=5)
    pil = [Image.fromarray(x) for x in images]
    hf = hf_processor(size=SMALL)
    ours = ImageProcessor(size=SMALL)
    batch = ours(pil)
    np.testing.assert_allclose(batch["pixel_values"], hf_outputs(hf, pil)["pixel_values"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(batch["pixel_values"], ours(images)["pixel_values"])
    single = ours(pil[1])
    assert single["pixel_values"].shape[0] == 1
    np.testing.assert_allclose(single["pixel_values"], hf_outputs(hf, pil[1])["pixel_values"], rtol=0, atol=1e-5)


def test_float_images_match_hf(hf_processor):
    """Float input in [0, 1] with do_rescale=False: resized in floating point (torch: float64 here too)."""
    images = [x / 255.0 for x in random_images(SHAPES[:2], seed=6)]
    ours = ImageProcessor(size=SMALL, do_rescale=False)(images)
    theirs = hf_outputs(hf_processor(size=SMALL, do_rescale=False), images)
    np.testing.assert_allclose(ours["pixel_values"], theirs["pixel_values"], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "settings, values",
    [
        ({"ignore_index": 255}, 7),
        ({"ignore_index": 3}, 6),
        ({"ignore_index": 255, "do_reduce_labels": True}, 5),
        ({"ignore_index": 255, "size": {"height": 384, "width": 512}}, 4),
        ({"ignore_index": 255, "size": SMALL, "pad_size": {"height": 192, "width": 192}}, 4),
    ],
)
def test_semantic_targets_match_hf(hf_processor, settings, values):
    images, maps = random_images(SHAPES), random_maps(SHAPES, values)
    maps[1][:] = 0  # only background: empty targets with reduce_labels
    ours = ImageProcessor(**settings)(images, maps)
    theirs = hf_outputs(hf_processor(**settings), images, segmentation_maps=maps)
    assert_same_targets(ours, theirs, settings["ignore_index"])


@pytest.mark.parametrize("reduce_labels", [False, True])
def test_instance_targets_match_hf(hf_processor, reduce_labels):
    """Instance ids (some above 255, int32 maps) mapped to classes, one mapping per image or shared."""
    rng = np.random.RandomState(7)
    shapes = SHAPES[:3]
    images = random_images(shapes)
    ids = np.array([0, 3, 17, 300, 301, 1000])
    maps = [ids[rng.randint(0, len(ids), s)].astype(np.int32) for s in shapes]
    mapping = {0: 9, 3: 1, 17: 4, 300: 1, 301: 7, 1000: 2}
    settings = {"ignore_index": 255, "do_reduce_labels": reduce_labels, "size": SMALL}
    for given in (mapping, [mapping, {**mapping, 3: 5}, mapping]):
        ours = ImageProcessor(**settings)(images, maps, given)
        theirs = hf_outputs(hf_processor(**settings), images, segmentation_maps=maps, instance_id_to_semantic_id=given)
        assert_same_targets(ours, theirs, 255)


def test_close_to_hf_pil_backend():
    """HF's PIL backend (Pillow's 22-bit fixed-point resize): pixel values within 2 uint8 steps."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.Mask2FormerImageProcessorPil()
    images = random_images(SHAPES)
    ours = ImageProcessor()(images)
    theirs = hf_outputs(hf, images)
    step = 1 / 255 / min(preprocess.IMAGENET_STD)
    np.testing.assert_allclose(ours["pixel_values"], theirs["pixel_values"], rtol=0, atol=2 * step + 1e-5)
    np.testing.assert_array_equal(ours["pixel_mask"], theirs["pixel_mask"])


# ----------------------------------------------------------------------------------------------------
# Conversions


def test_grayscale_rgba_chw_and_integer_inputs_convert():
    rng = np.random.RandomState(8)
    rgb = rng.randint(0, 256, (37, 53, 3), dtype=np.uint8)
    processor = ImageProcessor(size=SMALL)
    reference = processor(rgb)["pixel_values"]
    alpha = rng.randint(0, 256, (37, 53, 1), dtype=np.uint8)
    same = [
        rgb.transpose(2, 0, 1),  # (C, H, W)
        np.concatenate([rgb, alpha], -1),  # RGBA: alpha dropped
        Image.fromarray(np.concatenate([rgb, alpha], -1), "RGBA"),
        rgb.astype(np.int64),  # integers in [0, 255] read as uint8
        rgb[None],  # a (1, H, W, C) batch
    ]
    for image in same:
        np.testing.assert_array_equal(processor(image)["pixel_values"], reference)
    gray = rgb[..., 0]
    gray_rgb = processor(np.repeat(gray[..., None], 3, -1))["pixel_values"]
    for image in (gray, gray[..., None], gray[None], Image.fromarray(gray, "L")):
        np.testing.assert_array_equal(processor(image)["pixel_values"], gray_rgb)
    np.testing.assert_array_equal(
        processor(rgb[:3].copy(), input_data_format="channels_last")["pixel_values"],
        processor(rgb[:3].transpose(2, 0, 1))["pixel_values"],
    )


def test_array_batches_equal_lists():
    images, maps = random_images([(40, 60)] * 3), random_maps([(40, 60)] * 3, 5)
    processor = ImageProcessor(size=SMALL, ignore_index=255)
    stacked, listed = processor(np.stack(images), np.stack(maps)), processor(images, maps)
    np.testing.assert_array_equal(stacked["pixel_values"], listed["pixel_values"])
    for a, b in zip(stacked["mask_labels"], listed["mask_labels"], strict=True):
        np.testing.assert_array_equal(a, b)


def test_image_files_are_read(tmp_path):
    rgb = np.random.RandomState(9).randint(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    processor = ImageProcessor(size=SMALL)
    for path in (tmp_path / "a.png", str(tmp_path / "a.png")):
        np.testing.assert_array_equal(processor(path)["pixel_values"], processor(rgb)["pixel_values"])


def test_float_images_in_unit_range_warn_when_rescaled():
    image = np.random.RandomState(10).rand(20, 30, 3)
    with pytest.warns(UserWarning, match="do_rescale=False"):
        ImageProcessor(size=SMALL)(image)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ImageProcessor(size=SMALL, do_rescale=False)(image)


def test_padding_rounds_to_size_divisor_without_resizing():
    """Deliberate difference: with do_resize=False HF pads to the batch maximum; we round it up to 32."""
    images = random_images([(33, 50), (20, 70)])
    out = ImageProcessor(do_resize=False)(images)
    assert out["pixel_values"].shape == (2, 64, 96, 3)
    np.testing.assert_array_equal(out["image_sizes"], [(33, 50), (20, 70)])
    assert out["pixel_mask"].sum() == 33 * 50 + 20 * 70


def test_fixed_shape_targets():
    images, maps = random_images([(40, 60), (50, 30)]), random_maps([(40, 60), (50, 30)], 4)
    out = ImageProcessor(size=SMALL, ignore_index=255)(images, maps, max_instances=6)
    listed = ImageProcessor(size=SMALL, ignore_index=255)(images, maps)
    assert out["mask_labels"].shape == (2, 6, *out["pixel_values"].shape[1:3]) and out["mask_labels"].dtype == bool
    for i in range(2):
        n = len(listed["class_labels"][i])
        np.testing.assert_array_equal(out["mask_labels"][i, :n], listed["mask_labels"][i] == 1)
        np.testing.assert_array_equal(out["class_labels"][i], [*listed["class_labels"][i], *[-1] * (6 - n)])
        np.testing.assert_array_equal(out["mask_valid"][i], np.arange(6) < n)
    with pytest.raises(ValueError, match="image 0: 4 segments do not fit in max_instances=3"):
        ImageProcessor(size=SMALL, ignore_index=255)(images, maps, max_instances=3)


# ----------------------------------------------------------------------------------------------------
# Bad input: a clear error, raised before any resizing


@pytest.fixture
def no_resizing(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("resized before the input was checked")

    monkeypatch.setattr(preprocess, "resize_bilinear", fail)
    monkeypatch.setattr(preprocess, "resize_nearest", fail)


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (np.zeros((5,), np.uint8), ValueError, r"image 1: expected an image of rank 2 .* got shape \(5,\)"),
        (np.zeros((2, 3, 4, 5, 3), np.uint8), ValueError, "rank 2"),
        (np.zeros((0, 5, 3), np.uint8), ValueError, "zero-size dimension"),
        (np.zeros((3, 0, 5), np.uint8), ValueError, "zero-size dimension"),
        (np.full((5, 5, 3), np.nan), ValueError, "NaN or infinite"),
        (np.full((5, 5, 3), np.inf, np.float32), ValueError, "NaN or infinite"),
        (np.zeros((5, 5, 2), np.uint8), ValueError, "cannot tell the channel axis"),
        (np.zeros((5, 5), bool), TypeError, "got dtype bool"),
        (np.full((4, 4), 300), ValueError, r"values in \[0, 255\], got \[300, 300\]"),
        ({"pixels": 1}, TypeError, "expected a PIL image, a numpy array .* got dict"),
        (None, TypeError, "got NoneType"),
        ("/no/such/image.png", FileNotFoundError, "no such file '/no/such/image.png'"),
    ],
)
def test_bad_images_raise_before_resizing(no_resizing, bad, error, message):
    good = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(error, match=message):
        ImageProcessor()([good, bad])


def test_corrupt_and_non_image_files_raise(no_resizing, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (tmp_path / "notes.txt").write_text("hello")
    for name in ("broken.png", "notes.txt"):
        with pytest.raises(ValueError, match=f"image 0: cannot read .*{name}"):
            ImageProcessor()(str(tmp_path / name))
    with pytest.raises(ValueError, match="images is empty"):
        ImageProcessor()([])


def test_bad_segmentation_maps_raise_before_resizing(no_resizing):
    images = [np.zeros((8, 10, 3), np.uint8), np.zeros((6, 6, 3), np.uint8)]
    good = [np.zeros((8, 10), np.uint8), np.zeros((6, 6), np.uint8)]
    processor = ImageProcessor(ignore_index=255)
    cases = [
        ([good[0], np.zeros((6, 7), np.uint8)], ValueError, r"map 1: shape \(6, 7\) does not match .* \(6, 6\)"),
        ([good[0], np.zeros((6, 6, 3), np.uint8)], ValueError, "expected a 2-D"),
        ([good[0], np.zeros((6, 6), np.float32)], TypeError, "integer class/instance ids"),
        (good[:1], ValueError, "got 2 images but 1 segmentation maps"),
    ]
    for maps, error, message in cases:
        with pytest.raises(error, match=message):
            processor(images, maps)
    with pytest.raises(ValueError, match="2 segmentation maps but 1 instance_id_to_semantic_id"):
        processor(images, good, [{0: 1}])
    with pytest.raises(ValueError, match="needs an ignore_index"):
        ImageProcessor(do_reduce_labels=True)(images, good)
    with pytest.raises(ValueError, match="without segmentation_maps"):
        processor(images, instance_id_to_semantic_id={0: 1})


def test_sizes_that_cannot_work_raise():
    with pytest.raises(ValueError, match=r"image 1 resized to \(192, 288\) is larger than pad_size \(192, 192\)"):
        ImageProcessor(size={"shortest_edge": 192, "longest_edge": 352}, pad_size={"height": 192, "width": 192})(
            random_images([(100, 100), (100, 150)])
        )
    with pytest.raises(ValueError, match="would be resized to"):
        ImageProcessor(size_divisor=0)(np.zeros((1, 5000), np.uint8))
    with pytest.raises(ValueError, match="size must have the keys"):
        ImageProcessor(size={"shortest_edge": 384})
    with pytest.raises(ValueError, match="only bilinear"):
        ImageProcessor(resample=3)


# ----------------------------------------------------------------------------------------------------
# Configuration files


def test_reads_hub_style_config(tmp_path):
    config = {
        "do_normalize": True,
        "ignore_index": 255,
        "image_mean": [0.485, 0.456, 0.406],
        "image_processor_type": "Mask2FormerImageProcessor",
        "image_std": [0.229, 0.224, 0.225],
        "num_labels": 80,
        "reduce_labels": True,
        "resample": 2,
        "size": 384,
        "max_size": 1000,
        "size_divisor": 32,
        "some_future_key": [1, 2],
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    processor = ImageProcessor.from_pretrained(tmp_path)
    assert processor.size == {"shortest_edge": 384, "longest_edge": 1000}
    assert processor.ignore_index == 255 and processor.num_labels == 80 and processor.do_reduce_labels
    assert ImageProcessor.from_dict({"max_size": 900}).size == {"shortest_edge": 800, "longest_edge": 900}
    assert ImageProcessor.from_dict({"size": [300, 400]}).size == {"height": 300, "width": 400}
    with pytest.raises(FileNotFoundError):
        ImageProcessor.from_pretrained(tmp_path / "missing")


def test_config_round_trips_through_hf(tmp_path):
    ours = ImageProcessor(size={"height": 384, "width": 512}, ignore_index=255, do_reduce_labels=True, num_labels=5)
    ours.save_pretrained(tmp_path / "ours")
    assert ImageProcessor.from_pretrained(tmp_path / "ours") == ours
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.Mask2FormerImageProcessor.from_pretrained(str(tmp_path / "ours"))
        hf_default = transformers.Mask2FormerImageProcessor(pad_size={"height": 800, "width": 1344})
        hf_default.save_pretrained(str(tmp_path / "hf"))
    assert (hf.size.height, hf.size.width) == (384, 512)
    assert (hf.ignore_index, hf.do_reduce_labels, hf.size_divisor) == (255, True, 32)
    back = ImageProcessor.from_pretrained(tmp_path / "hf")
    assert back == ImageProcessor(pad_size={"height": 800, "width": 1344})
