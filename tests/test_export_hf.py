"""Export to Hugging Face (m2f_jax.export_hf, `m2f-convert --to-hf`): the written folder is checked by
transformers itself: its from_pretrained loads it with nothing missing, unexpected or mis-shaped, the tensors
are the source checkpoint's, the logits are ours, and its image processor reads our settings."""

from __future__ import annotations

import json
import os
import re
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

import m2f_jax
from m2f_jax import weights
from m2f_jax.conversion import cli, hf, to_hf
from m2f_jax.processing.preprocess import ImageProcessor

from helpers import max_diff, save_random_hf_model, tiny_config, tiny_resnet_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Settings unlike the defaults in every field that HF's processor reads.
PROCESSOR = dict(
    size={"shortest_edge": 96, "longest_edge": 160},
    size_divisor=64,
    rescale_factor=1 / 127.5,
    image_mean=(0.5, 0.4, 0.3),
    image_std=(0.2, 0.25, 0.3),
    ignore_index=255,
    do_reduce_labels=True,
    num_labels=5,
)
UNUSED_NORM = "model.pixel_level_module.encoder.swin.layernorm."  # SwinModel's final norm: never applied


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """(a save_pretrained folder with a preprocessor config, its torch model, its state dict as written)."""
    folder = tmp_path_factory.mktemp("src") / "hf"
    model = save_random_hf_model(tiny_config(), folder)
    ImageProcessor(**PROCESSOR).save_pretrained(folder)
    return folder, model, hf.read_state_dict(str(folder))


@pytest.fixture(scope="module")
def exported(source, tmp_path_factory):
    """The source exported through the command line and read back by transformers."""
    destination = tmp_path_factory.mktemp("out") / "exported"
    assert cli.main(["--to-hf", str(source[0]), str(destination)]) == 0
    model, info = transformers.Mask2FormerForUniversalSegmentation.from_pretrained(
        str(destination), output_loading_info=True
    )
    return destination, model.eval(), info


def hf_logits(model, pixels_nhwc):
    with torch.no_grad():
        out = model(torch.from_numpy(pixels_nhwc.transpose(0, 3, 1, 2).copy()))
    return out.class_queries_logits.numpy(), out.masks_queries_logits.numpy()


def settings(hf_config) -> dict:
    """A transformers config as a dict, without what records the loading (path, version, dtype)."""
    data = hf_config.to_dict()
    for part in (data, data["backbone_config"]):
        for key in ("_name_or_path", "transformers_version", "dtype"):
            part.pop(key, None)
    return data


def test_flax_to_hf_is_the_exact_inverse_of_hf_to_flax(source):
    _, _, state = source
    params, _ = hf.hf_to_flax(state)
    back = to_hf.flax_to_hf(params, tiny_config())
    assert sorted(back) == sorted(state)  # the key set save_pretrained writes, buffers included
    for key, value in state.items():
        if not key.startswith(UNUSED_NORM):  # ours holds no copy: written at HF's initial values
            assert back[key].dtype == value.dtype and np.array_equal(back[key], value), key
    again, ignored = hf.hf_to_flax(back)
    assert sorted(again) == sorted(params)
    assert sorted(ignored) == ["criterion.empty_weight", UNUSED_NORM + "bias", UNUSED_NORM + "weight"]
    for key, value in params.items():
        assert again[key].dtype == value.dtype and np.array_equal(again[key], value), key


def test_exported_hf_checkpoint_loads_whole_in_transformers(source, exported):
    """(i) HF model -> ours -> export -> transformers: no loading complaint, the same tensors and logits."""
    folder, reference, state = source
    destination, model, info = exported
    assert sorted(os.listdir(destination)) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    assert sorted(hf.read_state_dict(str(destination))) == sorted(state)
    ours, theirs = model.state_dict(), reference.state_dict()
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        if not key.startswith(UNUSED_NORM):
            assert torch.equal(ours[key], theirs[key]), key
    assert settings(model.config) == settings(reference.config)
    assert model.config.id2label == {i: f"class_{i}" for i in range(5)}
    assert model.config.label2id == {f"class_{i}": i for i in range(5)}
    pixels = np.random.RandomState(0).randn(2, 64, 96, 3).astype(np.float32)
    for a, b in zip(hf_logits(model, pixels), hf_logits(reference, pixels), strict=True):
        assert max_diff(a, b) == 0.0


def test_exported_processor_config_reads_as_ours_in_transformers(exported):
    """(iii) The preprocessor_config.json: transformers' processor reads our settings, every one of them."""
    theirs = transformers.Mask2FormerImageProcessor.from_pretrained(str(exported[0]))
    size = theirs.size
    assert {"shortest_edge": size.shortest_edge, "longest_edge": size.longest_edge} == PROCESSOR["size"]
    for name, value in PROCESSOR.items():
        if name != "size":
            got = getattr(theirs, name)
            assert (tuple(got) if isinstance(value, tuple) else got) == value, name
    assert int(theirs.resample) == 2 and theirs.pad_size is None
    assert (theirs.do_resize, theirs.do_rescale, theirs.do_normalize) == (True, True, True)
    assert ImageProcessor.from_pretrained(exported[0]) == ImageProcessor(**PROCESSOR)


def test_a_model_initialised_here_predicts_the_same_in_transformers(tmp_path):
    """(ii) A model from our own initialisation (as train.py starts one) exported: HF's logits are ours."""
    model = m2f_jax.Mask2FormerForUniversalSegmentation(tiny_config(), rngs=nnx.Rngs(3))
    processor = ImageProcessor(size={"height": 64, "width": 64})
    m2f_jax.export_hf(model, tmp_path / "hf", processor=processor)
    theirs = transformers.Mask2FormerForUniversalSegmentation.from_pretrained(str(tmp_path / "hf")).eval()
    pixels = np.random.RandomState(1).randn(1, 64, 96, 3).astype(np.float32)
    out = jax.jit(lambda m, x: m(x))(model, pixels)
    class_logits, mask_logits = hf_logits(theirs, pixels)
    assert max_diff(out.class_queries_logits, class_logits) < 1e-4
    assert max_diff(out.masks_queries_logits, mask_logits) < 1e-4
    assert ImageProcessor.from_pretrained(tmp_path / "hf") == processor


def test_resnet_backbone_round_trip(tmp_path):
    """A ResNet-backbone model (frozen BatchNorm statistics included) goes out whole: transformers loads
    the export with nothing missing (torch's BatchNorm step counters are written too) and the same tensors."""
    reference = save_random_hf_model(tiny_resnet_config(), tmp_path / "hf", seed=2)
    m2f_jax.export_hf(str(tmp_path / "hf"), tmp_path / "exported")
    model, info = transformers.Mask2FormerForUniversalSegmentation.from_pretrained(
        str(tmp_path / "exported"), output_loading_info=True
    )
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    ours, theirs = model.state_dict(), reference.state_dict()
    assert sorted(ours) == sorted(theirs)
    assert any(key.endswith("normalization.running_var") for key in ours)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
    pixels = np.random.RandomState(0).randn(1, 64, 64, 3).astype(np.float32)
    for a, b in zip(hf_logits(model.eval(), pixels), hf_logits(reference, pixels), strict=True):
        assert max_diff(a, b) == 0.0


# ------------------------------------------------------------------------------ (iv) bad inputs
@pytest.fixture
def no_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was read before the bad destination was refused")

    monkeypatch.setattr(weights, "from_pretrained", refuse)


def test_existing_destination_needs_overwrite(source, tmp_path, no_load, capsys):
    destination = tmp_path / "dst"
    destination.mkdir()
    (destination / "old.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=f"{re.escape(str(destination))} exists and is not empty"):
        m2f_jax.export_hf(str(source[0]), destination)
    assert cli.main(["--to-hf", str(source[0]), str(destination)]) == 1
    assert "exists and is not empty" in capsys.readouterr().err
    assert os.listdir(destination) == ["old.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not a folder"):
        m2f_jax.export_hf(str(source[0]), tmp_path / "file", overwrite=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        m2f_jax.export_hf(str(tmp_path / "missing"), tmp_path / "out")


def test_overwrite_replaces_the_destination_whole(source, tmp_path):
    destination = tmp_path / "dst"
    destination.mkdir()
    (destination / "stale.bin").write_text("old")
    (destination / "config.json").write_text("{}")
    m2f_jax.export_hf(str(source[0]), destination, overwrite=True)
    assert sorted(os.listdir(destination)) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert json.loads((destination / "config.json").read_text())["id2label"] == {str(i): f"class_{i}" for i in range(5)}
    assert sorted(os.listdir(tmp_path)) == ["dst"]  # no temporary or old folder left behind


@pytest.mark.parametrize("where", ["same", "inside", "holding"])
def test_destination_never_touches_the_source(source, tmp_path, where, no_load):
    folder = tmp_path / "parent" / "src"
    shutil.copytree(source[0], folder)
    destination = {"same": folder, "inside": folder / "hf", "holding": folder.parent}[where]
    with pytest.raises(ValueError, match=re.escape(str(destination))):
        m2f_jax.export_hf(str(folder), destination, overwrite=True)
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors", "preprocessor_config.json"]


def test_parameters_that_cannot_be_mapped_are_named(source):
    params, _ = hf.hf_to_flax(source[2])
    prefix = "model.transformer_module.decoder.layers.2.cross_attn"
    broken = {k: v for k, v in params.items() if k != f"{prefix}.k_proj.kernel"}
    with pytest.raises(ValueError, match=rf"{re.escape(prefix)}: the kernel of k_proj is missing"):
        to_hf.flax_to_hf(broken)
    with pytest.raises(ValueError, match=r"class_predictor\.kernel: expected a 2-D .* got shape \(2, 3, 4\)"):
        to_hf.flax_to_hf({"class_predictor.kernel": np.zeros((2, 3, 4), np.float32)})
    with pytest.raises(ValueError, match="would both be written as class_predictor.weight"):
        to_hf.flax_to_hf({"class_predictor.kernel": np.zeros((2, 3)), "class_predictor.weight": np.zeros((3, 2))})
