"""Same random weights, same input: our model against HF transformers' PyTorch Mask2Former.

Each case saves a HF model with save_pretrained, converts the folder with our converter, and
compares every Swin stage, every pixel-decoder output, every decoder prediction and the logits.

Masked attention thresholds sigmoid(mask logit) at 0.5, so a logit within float32 rounding of 0
(random full-size models have some within 1e-6) can flip one attention-mask bit between two
correct implementations, and every later layer then differs. So each prediction is compared
while both sides' attention masks agree bit for bit: the tiny models must agree on all of them;
the real-size float32 model is compared up to the first flip (if any), and the real-size model
is compared in float64 as well, where every mask agrees.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import m2f_jax
from m2f_jax.config import preset

from helpers import max_diff, nhwc, save_random_hf_model, tiny_config

torch = pytest.importorskip("torch")
F = torch.nn.functional


def predictions_with_same_attention_masks(ours, theirs, sizes) -> int:
    """How many leading predictions were computed from bit-identical attention masks in both
    implementations (the masks are what the previous prediction gives after resizing)."""
    for i in range(len(theirs) - 1):
        size = sizes[i % 3]
        mine = F.interpolate(torch.from_numpy(np.array(ours[i])).double(), size=size, mode="bilinear")
        ref = F.interpolate(theirs[i].double(), size=size, mode="bilinear")
        if not torch.equal(mine < 0, ref < 0):
            return i + 1  # prediction i is comparable; prediction i+1 saw different masks
    return len(theirs)


def compare(config, batch, height, width, tmp_path, tolerance, seed=0, float64=False, require_all=True):
    hf_model = save_random_hf_model(config, tmp_path / "hf", seed=seed)
    model = m2f_jax.from_pretrained(str(tmp_path / "hf"))
    pixels = np.random.RandomState(seed).randn(batch, 3, height, width).astype(np.float32)
    inputs = torch.from_numpy(pixels)
    if float64:
        hf_model, inputs, pixels = hf_model.double(), inputs.double(), pixels.astype(np.float64)
        state = nnx.state(model, nnx.Param)
        nnx.update(model, jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), state))
    with torch.no_grad():
        ref = hf_model(inputs, output_hidden_states=True, output_auxiliary_logits=True)
    forward = jax.jit(lambda m, x: m(x, output_hidden_states=True))
    out = forward(model, pixels.transpose(0, 2, 3, 1))

    assert len(out.encoder_hidden_states) == len(ref.encoder_hidden_states) == 4
    for ours, theirs in zip(out.encoder_hidden_states, ref.encoder_hidden_states, strict=True):
        assert ours.shape == nhwc(theirs).shape
        assert max_diff(ours, nhwc(theirs)) <= tolerance
    for ours, theirs in zip(out.pixel_decoder_hidden_states, ref.pixel_decoder_hidden_states, strict=True):
        assert max_diff(ours, nhwc(theirs)) <= tolerance
    assert max_diff(out.mask_features, nhwc(ref.pixel_decoder_last_hidden_state)) <= tolerance

    predictions = list(out.auxiliary_logits) + [
        {"class_queries_logits": out.class_queries_logits, "masks_queries_logits": out.masks_queries_logits}
    ]
    hf_predictions = list(ref.auxiliary_logits) + [
        {"class_queries_logits": ref.class_queries_logits, "masks_queries_logits": ref.masks_queries_logits}
    ]
    assert len(predictions) == len(hf_predictions) == config.decoder_layers
    sizes = [tuple(t.shape[1:3]) for t in out.pixel_decoder_hidden_states]
    checked = predictions_with_same_attention_masks(
        [p["masks_queries_logits"] for p in predictions], [p["masks_queries_logits"] for p in hf_predictions], sizes
    )
    if require_all:
        assert checked == len(predictions), "an attention-mask bit differs from HF's"
    for ours, theirs in zip(predictions[:checked], hf_predictions[:checked], strict=True):
        for key in ("class_queries_logits", "masks_queries_logits"):
            assert ours[key].shape == tuple(theirs[key].shape)
            assert max_diff(ours[key], theirs[key].numpy()) <= tolerance, key
    q = config.num_queries
    assert out.class_queries_logits.shape == (batch, q, config.num_labels + 1)
    assert out.masks_queries_logits.shape == (batch, q, (height + 3) // 4, (width + 3) // 4)
    return checked


def test_tiny_square(tmp_path):
    compare(tiny_config(), 1, 64, 64, tmp_path, 1e-4)


def test_tiny_batch2_odd_size(tmp_path):
    # 70x90: stage sides 18x23 -> 9x12 -> 5x6 -> 3x3, every one padded to the window.
    compare(tiny_config(), 2, 70, 90, tmp_path, 1e-4, seed=1)


def test_window12_non_square_not_window_multiple(tmp_path):
    # 200x328 -> stages 50x82, 25x41, 13x21, 7x11: none a multiple of 12, shifted windows padded.
    compare(tiny_config(window_size=12), 2, 200, 328, tmp_path, 1e-4, seed=2)


def test_pre_norm_and_input_projection(tmp_path):
    compare(tiny_config(pre_norm=True, enforce_input_projection=True), 1, 64, 96, tmp_path, 1e-4, seed=3)


@pytest.mark.slow
def test_swin_tiny_real_shape_float32(tmp_path):
    """The real Swin-T COCO panoptic shape (133 labels, 100 queries) at 384x384, batch 2."""
    config = preset("swin-tiny-coco-panoptic")
    assert config.num_labels == 133 and config.num_queries == 100
    checked = compare(config, 2, 384, 384, tmp_path, 5e-4, seed=4, require_all=False)
    print(f"float32 Swin-T: {checked} of {config.decoder_layers} predictions saw identical attention masks")
    assert checked >= 2  # the prediction from the learned queries and the first layer's, at least


@pytest.mark.slow
def test_swin_tiny_real_shape_float64(tmp_path):
    """Every prediction of the real Swin-T shape, in float64 on both sides."""
    with jax.enable_x64(True):
        compare(preset("swin-tiny-coco-panoptic"), 1, 256, 320, tmp_path, 1e-8, seed=5, float64=True)


def test_bfloat16_follows_float32_on_converted_weights(tmp_path):
    """bf16 inference end to end (Predictor: processor, jitted forward, post-processing) on converted
    weights: the logits within a few percent of float32's (which equal HF's, tests above), and the
    semantic maps agreeing with float32's on nearly every pixel."""
    from m2f_jax.inference import Predictor, post_process
    from m2f_jax.processing.preprocess import ImageProcessor

    save_random_hf_model(tiny_config(), tmp_path / "hf", seed=6)
    model = m2f_jax.from_pretrained(str(tmp_path / "hf"))
    images = [np.random.RandomState(i).randint(0, 256, (96 + 16 * i, 128, 3), np.uint8) for i in range(2)]
    outputs = {}
    for dtype in ("float32", "bfloat16"):
        model.set_dtype(dtype)
        outputs[dtype] = Predictor(model, ImageProcessor(do_resize=False), batch_size=2).run(images)
    full, half = outputs["float32"], outputs["bfloat16"]
    for key in ("class_queries_logits", "masks_queries_logits"):
        ours, reference = getattr(half, key), getattr(full, key)
        assert ours.dtype == np.float32
        error = np.abs(ours - reference).mean() / np.abs(reference).mean()
        assert 0 < error < BF16_LOGIT_ERROR, (key, error)
    maps = [post_process(out, "semantic") for out in (full, half)]
    agreement = np.mean([np.mean(a == b) for a, b in zip(*maps, strict=True)])
    assert agreement > BF16_MAP_AGREEMENT, agreement


# Stated tolerances of bf16 inference: mean |logit error| relative to the mean |logit| (measured 0.010 for
# the class logits, 0.016 for the mask logits), and the fraction of pixels whose semantic label is the
# float32 one (measured 1.0).
BF16_LOGIT_ERROR = 0.05
BF16_MAP_AGREEMENT = 0.97
