"""The converter: key and shape checks, folders in and out, the command line, and the presets."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

import m2f_jax
from m2f_jax.config import Mask2FormerConfig, preset, preset_names
from m2f_jax.conversion import hf
from m2f_jax.weights import FLAX_WEIGHTS, param_shapes

from helpers import max_diff, save_random_hf_model, tiny_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf")
    save_random_hf_model(tiny_config(), folder)
    with open(folder / "preprocessor_config.json", "w") as f:
        json.dump({"image_processor_type": "Mask2FormerImageProcessor", "size_divisor": 32}, f)
    return folder


def forward(model, pixels):
    return jax.jit(lambda m, x: m(x))(model, pixels)


def test_cli_converts_and_folder_loads_without_torch_weights(hf_folder, tmp_path):
    dst = tmp_path / "flax"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "convert", "hf_to_flax.py"), str(hf_folder), str(dst)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "converted" in result.stdout and "ignored" in result.stdout
    assert sorted(os.listdir(dst)) == ["config.json", FLAX_WEIGHTS, "preprocessor_config.json"]
    raw, converted = m2f_jax.from_pretrained(str(hf_folder)), m2f_jax.from_pretrained(str(dst))
    # The source is recorded as given (a static str: the jitted forwards below carry it).
    assert (raw.name_or_path, converted.name_or_path) == (str(hf_folder), str(dst))
    # Lossless: every weight of the written folder is the raw checkpoint's, bit for bit.
    raw_params = jax.tree_util.tree_leaves_with_path(nnx.state(raw, nnx.Param))
    converted_params = jax.tree_util.tree_leaves_with_path(nnx.state(converted, nnx.Param))
    assert [path for path, _ in raw_params] == [path for path, _ in converted_params]
    for (path, a), (_, b) in zip(raw_params, converted_params, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
    pixels = np.random.RandomState(0).randn(1, 64, 96, 3).astype(np.float32)
    assert max_diff(forward(raw, pixels).masks_queries_logits, forward(converted, pixels).masks_queries_logits) < 1e-5
    assert converted.config == tiny_config()


def test_pytorch_bin_checkpoint(tmp_path):
    config = tiny_config()
    model = save_random_hf_model(config, tmp_path / "hf")
    # A .bin as the hub has them: the hub key names, which save_pretrained writes.
    hub_state = {k: torch.from_numpy(v) for k, v in hf.read_state_dict(str(tmp_path / "hf")).items()}
    os.remove(tmp_path / "hf" / "model.safetensors")
    torch.save(hub_state, tmp_path / "hf" / "pytorch_model.bin")
    ours = m2f_jax.from_pretrained(str(tmp_path / "hf"))
    pixels = np.random.RandomState(1).randn(1, 3, 64, 64).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(pixels))
    out = forward(ours, pixels.transpose(0, 2, 3, 1))
    assert max_diff(out.class_queries_logits, ref.class_queries_logits.numpy()) < 1e-4


def test_rejects_checkpoint_of_another_shape(hf_folder, tmp_path):
    """Weights of a 5-label model under a config that says 7 labels and 16 queries."""
    other = tmp_path / "other"
    other.mkdir()
    for name in ("model.safetensors",):
        os.symlink(hf_folder / name, other / name)
    tiny_config(num_labels=7, num_queries=16).save(other)
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "convert", "hf_to_flax.py"), str(other), str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "class_predictor.kernel: checkpoint (64, 6) vs model (64, 8)" in result.stderr
    assert "model.transformer_module.queries_embedder.embedding: checkpoint (12, 64) vs model (16, 64)" in result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_and_unexpected_keys_are_named(hf_folder):
    state = hf.read_state_dict(str(hf_folder))
    state.pop("model.transformer_module.decoder.layernorm.weight")
    state["model.transformer_module.decoder.extra.weight"] = np.zeros((3, 3), np.float32)
    params, _ = hf.hf_to_flax(state)
    with pytest.raises(hf.CheckpointMismatch) as info:
        hf.check_params(params, param_shapes(tiny_config()))
    message = str(info.value)
    assert "1 missing:\n    model.transformer_module.decoder.layernorm.scale" in message
    assert "1 unexpected:\n    model.transformer_module.decoder.extra.kernel" in message


def test_not_a_checkpoint_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither"):
        m2f_jax.from_pretrained(str(tmp_path))


def test_config_round_trips_through_hf(hf_folder):
    ours = Mask2FormerConfig.load(hf_folder)
    assert ours == tiny_config()
    again = transformers.Mask2FormerConfig.from_dict(ours.to_hf_dict())
    assert Mask2FormerConfig.from_hf_dict(again.to_dict()) == ours
    assert hash(ours) == hash(Mask2FormerConfig.from_hf_dict(again.to_dict()))


@pytest.mark.parametrize("field, value", [("init_std", 0.01), ("init_xavier_std", 2.0)])
def test_initialisation_scales_we_do_not_read_are_refused(field, value):
    with pytest.raises(ValueError, match=f"{field}={value} is not honoured"):
        tiny_config(**{field: value})
    assert getattr(Mask2FormerConfig.from_hf_dict(tiny_config().to_hf_dict()), field) != value  # defaults load


def test_rejects_other_backbones():
    with pytest.raises(ValueError, match="only Swin and ResNet backbones"):
        Mask2FormerConfig.from_hf_dict({"model_type": "mask2former", "backbone_config": {"model_type": "convnext"}})


@pytest.mark.parametrize(
    "name",
    [
        "swin-tiny-coco-panoptic",
        "swin-large-mapillary-vistas-panoptic",
        "resnet-50-coco-panoptic",
    ],
)
def test_presets_match_hf_parameter_shapes(name):
    """HF's model for the preset, built without memory on the meta device, converts key for key: window 7
    and 100 queries (tiny), window 12 and 200 queries (large; base differs from it in widths only), ResNet."""
    config = preset(name)
    with torch.device("meta"):
        model = transformers.Mask2FormerForUniversalSegmentation(
            transformers.Mask2FormerConfig.from_dict(config.to_hf_dict())
        )
    fake = {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in model.state_dict().items()}
    params, _ = hf.hf_to_flax(fake)
    hf.check_params(params, param_shapes(config))


def test_preset_names():
    names = preset_names()
    assert len(names) == 7 * 11 and "swin-large-coco-panoptic" in names and "resnet-101-ade-semantic" in names
    assert preset("facebook/mask2former-swin-large-coco-panoptic").num_queries == 200
    assert preset("swin-large-ade-semantic").num_queries == 100
    assert preset("swin-base-IN21k-ade-semantic").backbone_config.window_size == 12
    with pytest.raises(ValueError, match="unknown preset"):
        preset("swin-huge-coco-panoptic")
