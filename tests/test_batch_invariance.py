"""pixel_mask: an image padded inside a batch gets exactly what it gets alone.

Three images of different sizes are padded (bottom/right, to a multiple of 32) into one batch
with a pixel_mask. On each image's valid region the logits must equal those of the image run
alone without padding, by us and by HF transformers on the same weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import m2f_jax

from helpers import max_diff, save_random_hf_model, tiny_config

torch = pytest.importorskip("torch")

SIZES = [(70, 90), (64, 64), (45, 101)]


def pad_batch(images, multiple=32):
    height = -(-max(i.shape[0] for i in images) // multiple) * multiple
    width = -(-max(i.shape[1] for i in images) // multiple) * multiple
    pixels = np.zeros((len(images), height, width, 3), np.float32)
    mask = np.zeros((len(images), height, width), bool)
    for b, image in enumerate(images):
        h, w = image.shape[:2]
        pixels[b, :h, :w] = image
        mask[b, :h, :w] = True
    return pixels, mask


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf")
    hf_model = save_random_hf_model(tiny_config(window_size=7), folder, seed=11)
    return m2f_jax.from_pretrained(str(folder)), hf_model


def test_padded_batch_equals_each_image_alone(models):
    model, hf_model = models
    rng = np.random.RandomState(0)
    images = [rng.randn(h, w, 3).astype(np.float32) for h, w in SIZES]
    pixels, mask = pad_batch(images)
    # Garbage in the padding must not matter either.
    pixels = np.where(mask[..., None], pixels, rng.randn(*pixels.shape).astype(np.float32) * 10)
    forward = jax.jit(lambda m, x, pm: m(x, pixel_mask=pm))
    batched = forward(model, jnp.asarray(pixels), jnp.asarray(mask))
    alone_fn = jax.jit(lambda m, x: m(x))
    for b, image in enumerate(images):
        h4, w4 = -(-image.shape[0] // 4), -(-image.shape[1] // 4)
        alone = alone_fn(model, jnp.asarray(image[None]))
        with torch.no_grad():
            ref = hf_model(torch.from_numpy(image.transpose(2, 0, 1)[None].copy()))
        got_masks = np.asarray(batched.masks_queries_logits[b, :, :h4, :w4])
        got_classes = np.asarray(batched.class_queries_logits[b])
        assert max_diff(got_classes, alone.class_queries_logits[0]) <= 1e-4
        assert max_diff(got_masks, alone.masks_queries_logits[0]) <= 1e-4
        assert max_diff(got_classes, ref.class_queries_logits[0].numpy()) <= 1e-4
        assert max_diff(got_masks, ref.masks_queries_logits[0].numpy()) <= 1e-4
        for aux_batched, aux_alone in zip(batched.auxiliary_logits, alone.auxiliary_logits, strict=True):
            assert (
                max_diff(aux_batched["masks_queries_logits"][b, :, :h4, :w4], aux_alone["masks_queries_logits"][0])
                <= 1e-4
            )


@pytest.fixture(scope="module")
def padded_and_alone(models):
    """Three images' outputs in one padded batch, and each image's outputs alone."""
    model, _ = models
    rng = np.random.RandomState(3)
    images = [rng.randn(h, w, 3).astype(np.float32) for h, w in SIZES]
    pixels, mask = pad_batch(images)
    batched = jax.jit(lambda m, x, pm: m(x, pixel_mask=pm))(model, jnp.asarray(pixels), jnp.asarray(mask))
    alone_fn = jax.jit(lambda m, x: m(x))
    return batched, [alone_fn(model, jnp.asarray(image[None])) for image in images]


@pytest.mark.parametrize("task", ["semantic", "instance", "panoptic"])
def test_padded_batch_gives_the_same_segments(padded_and_alone, task):
    """Post-processed with image_sizes, each padded image's segments are those it gets alone."""
    from m2f_jax.processing import postprocess

    batched, alone = padded_and_alone
    post = getattr(postprocess, f"post_process_{task}_segmentation")
    # Keep every query of the random model, so that there are segments to compare.
    kwargs = {"semantic": {}, "instance": {"threshold": 0.0}}.get(
        task, {"threshold": 0.0, "overlap_mask_area_threshold": 0.0}
    )
    results = post(batched, target_sizes=SIZES, image_sizes=SIZES, **kwargs)
    for size, outputs, result in zip(SIZES, alone, results, strict=True):
        expected = post(outputs, target_sizes=[size], image_sizes=[size], **kwargs)[0]
        if task == "semantic":
            assert result.shape == size
            np.testing.assert_array_equal(result, expected)
            continue
        assert result["segmentation"].shape == size
        assert len(result["segments_info"]) > 0
        np.testing.assert_array_equal(result["segmentation"], expected["segmentation"])
        assert [(s["id"], s["label_id"]) for s in result["segments_info"]] == [
            (s["id"], s["label_id"]) for s in expected["segments_info"]
        ]
        got_scores = [s["score"] for s in result["segments_info"]]
        np.testing.assert_allclose(got_scores, [s["score"] for s in expected["segments_info"]], atol=1e-5)


def test_full_mask_equals_no_mask(models):
    model, _ = models
    pixels = jnp.asarray(np.random.RandomState(1).randn(2, 64, 96, 3), jnp.float32)
    forward = jax.jit(lambda m, x, pm: m(x, pixel_mask=pm))
    with_mask = forward(model, pixels, jnp.ones((2, 64, 96), bool))
    without = jax.jit(lambda m, x: m(x))(model, pixels)
    assert max_diff(with_mask.masks_queries_logits, without.masks_queries_logits) <= 1e-5


def test_pixel_mask_shape_is_checked(models):
    model, _ = models
    with pytest.raises(ValueError, match="pixel_mask must be"):
        model(jnp.zeros((1, 32, 32, 3)), pixel_mask=jnp.ones((1, 32, 33), bool))
