"""Original Mask2Former checkpoints (detectron2 .pkl/.pth) against the ORIGINAL code's outputs.

tests/data holds tiny random checkpoints written by facebookresearch/Mask2Former's and detectron2's
own modules, with those modules' outputs on a fixed input (see tests/data/make_original_fixture.py).
Both are imported and run by m2f_jax; the ResNet one is also renamed by the same table, loaded into
HF's ResNet-backbone Mask2Former and run by HF. Either way the reference is the original model, not
our own mapping.
"""

from __future__ import annotations

import json
import os
import pickle
import sys

import jax
import numpy as np
import pytest

from m2f_jax.conversion import cli, hf, original
from m2f_jax.weights import from_pretrained, model_params

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "data"))
from make_original_fixture import HEAD, RESNET, SWIN, fixture_input  # noqa: E402

from helpers import FAST_COMPILE, max_diff  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data")
SWIN_PKL = os.path.join(DATA, "original_swin.pkl")
RESNET_PKL = os.path.join(DATA, "original_resnet.pkl")


def _state(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")["model"]


def _write_pkl(folder, state, name="model.pkl"):
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "test"}, f)
    return path


@pytest.fixture(scope="module")
def swin_model():
    return original.convert_original(SWIN_PKL)


def test_swin_checkpoint_matches_the_original_model(swin_model):
    model, ignored = swin_model
    config = model.config
    backbone = config.backbone_config
    assert (backbone.embed_dim, backbone.depths, backbone.num_heads) == (
        SWIN["embed_dim"],
        SWIN["depths"],
        SWIN["num_heads"],
    )
    assert (backbone.window_size, backbone.mlp_ratio) == (SWIN["window_size"], SWIN["mlp_ratio"])
    assert (config.num_labels, config.num_queries) == (HEAD["classes"], HEAD["queries"])
    assert config.hidden_dim == config.feature_size == config.mask_feature_size == HEAD["hidden"]
    assert (config.encoder_layers, config.decoder_layers, config.num_attention_heads) == (
        HEAD["enc_layers"],
        HEAD["dec_layers"] + 1,
        HEAD["heads"],
    )
    assert (config.encoder_feedforward_dim, config.dim_feedforward) == (HEAD["enc_ffn"], HEAD["ffn"])
    # Only the index buffers (recomputed from the window) and the loss's class weights go unused.
    assert sorted(ignored) == sorted(
        [f"backbone.layers.{i}.blocks.{j}.attn.relative_position_index" for i in range(4) for j in range(2)]
        + ["criterion.empty_weight"]
    )
    assert_outputs_match(model, "original_swin_outputs.npz")


def assert_outputs_match(model, outputs_file: str) -> None:
    """Our jitted model on the fixture input gives the original model's outputs (saved in `outputs_file`)."""
    reference = np.load(os.path.join(DATA, outputs_file))
    pixels = fixture_input().transpose(0, 2, 3, 1)
    out = jax.jit(lambda m, x: m(x), compiler_options=FAST_COMPILE)(model, pixels)
    assert max_diff(out.class_queries_logits, reference["pred_logits"]) < 1e-4
    assert max_diff(out.masks_queries_logits, reference["pred_masks"]) < 1e-4


def test_resnet_table_matches_the_original_model_through_hf():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    state = _state(RESNET_PKL)
    hub_state, origin, dropped = original.to_hub_names(state)
    assert dropped == [] and set(origin.values()) == set(state)
    backbone = original.infer_resnet(state)
    assert (backbone["embedding_size"], backbone["hidden_sizes"], backbone["depths"]) == (
        RESNET["stem"],
        list(RESNET["widths"]),
        list(RESNET["depths"]),
    )
    head = original.infer_head(state)
    fields = {k: v for k, v in head.items() if k not in ("id2label", "enforce_input_projection")}
    config = transformers.Mask2FormerConfig(
        backbone_config=transformers.ResNetConfig(**backbone),
        num_labels=len(head["id2label"]),
        enforce_input_projection=head["enforce_input_projection"],
        **fields,
    )
    model = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    # Every original key lands on a HF key of its shape, and every HF key is covered.
    assert {k: tuple(v.shape) for k, v in hub_state.items()} == expected
    model.load_state_dict({k: torch.from_numpy(v) for k, v in hub_state.items()}, strict=False)
    with torch.no_grad():
        out = model(torch.from_numpy(fixture_input()))
    reference = np.load(os.path.join(DATA, "original_resnet_outputs.npz"))
    assert max_diff(out.class_queries_logits, reference["pred_logits"]) < 1e-4
    assert max_diff(out.masks_queries_logits, reference["pred_masks"]) < 1e-4


def test_protocol_2_pickle_reads_as_the_default_one(tmp_path):
    state = _state(SWIN_PKL)
    path = tmp_path / "protocol2.pkl"
    path.write_bytes(pickle.dumps({"model": state}, protocol=2))
    again = original.read_original(path)
    assert again.keys() == state.keys() and all(np.array_equal(again[k], state[k]) for k in state)


def test_pth_reads_as_the_pkl(tmp_path, swin_model):
    torch = pytest.importorskip("torch")
    path = str(tmp_path / "model_final.pth")
    torch.save({"model": {k: torch.from_numpy(v) for k, v in _state(SWIN_PKL).items()}, "iteration": 3}, path)
    config, params, _ = original.load_original(path)
    assert config == swin_model[0].config
    ours = model_params(swin_model[0])
    assert params.keys() == ours.keys() and all(np.array_equal(params[k], ours[k]) for k in ours)


def test_labels_from_a_list_a_json_file_or_a_data_set(tmp_path):
    names = [f"thing {i}" for i in range(HEAD["classes"])]
    assert original.label_names(names, 5) == dict(enumerate(names))
    path = tmp_path / "id2label.json"
    path.write_text(json.dumps({str(i): n for i, n in enumerate(names)}))
    assert original.label_names(str(path), 5) == dict(enumerate(names))
    city = original.label_names("cityscapes-instance", 8)
    assert list(city.values()) == ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
    assert original.label_names("coco-instance", 80)[79] == "toothbrush"
    assert original.label_names("coco-panoptic", 133)[132] == "rug-merged"
    assert original.label_names("ade-semantic", 150)[0] == "wall"
    assert original.label_names(None, 2) == {0: "LABEL_0", 1: "LABEL_1"}


@pytest.mark.parametrize(
    "labels, message",
    [
        (["a", "b"], "2 label names given, but the checkpoint's class_embed has 5 classes"),
        ("coco-panoptic", "133 label names given"),
        ("mapillary-vistas-panoptic", "no class names for mapillary-vistas-panoptic"),
        ("no-such-thing", "neither a JSON file nor a data set name"),
        ({"1": "a", "2": "b"}, "the ids must be 0..1"),
    ],
)
def test_bad_labels_are_refused(labels, message):
    with pytest.raises(ValueError, match=message):
        original.load_original(SWIN_PKL, labels=labels)


def test_preset_must_match_the_tensors():
    with pytest.raises(ValueError, match=r"does not match the preset swin-tiny-coco-panoptic:\n.*backbone_config"):
        original.load_original(SWIN_PKL, preset_name="swin-tiny-coco-panoptic")


def test_unreadable_files_are_refused(tmp_path):
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(open(SWIN_PKL, "rb").read()[:5000])
    with pytest.raises(ValueError, match=f"{truncated} is not a readable detectron2 .pkl checkpoint"):
        original.read_original(truncated)
    not_weights = tmp_path / "list.pkl"
    not_weights.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="holds no weights"):
        original.read_original(not_weights)
    arbitrary = tmp_path / "object.pkl"
    arbitrary.write_bytes(pickle.dumps({"model": {"a": np.zeros(2)}, "meta": __import__("collections").Counter()}))
    with pytest.raises(ValueError, match="it would construct collections.Counter"):
        original.read_original(arbitrary)
    strings = _write_pkl(tmp_path, {"backbone.norm0.weight": "not an array"}, "strings.pkl")
    with pytest.raises(ValueError, match="entries that are not named arrays: 'backbone.norm0.weight': str"):
        original.read_original(strings)
    with pytest.raises(ValueError, match="expected a detectron2 checkpoint ending in .pkl or .pth"):
        original.read_original(__file__)


def test_missing_unexpected_and_misshaped_keys_are_listed(tmp_path):
    state = _state(SWIN_PKL)
    unknown = dict(state, **{"sem_seg_head.predictor.extra.weight": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match=r"1 keys are not Mask2Former .*\n  sem_seg_head.predictor.extra.weight"):
        original.load_original(_write_pkl(tmp_path, unknown, "unknown.pkl"))
    broken = dict(state)
    del broken["sem_seg_head.predictor.transformer_ffn_layers.1.linear2.weight"]
    broken["sem_seg_head.predictor.mask_embed.layers.1.weight"] = np.zeros((32, 31), np.float32)
    with pytest.raises(hf.CheckpointMismatch) as info:
        original.load_original(_write_pkl(tmp_path, broken, "broken.pkl"))
    text = str(info.value)
    assert "1 missing:\n    model.transformer_module.decoder.layers.1.fc2.kernel" in text
    assert (
        "model.transformer_module.decoder.mask_predictor.mask_embedder.layers.1.kernel: checkpoint (31, 32) vs "
        "model (32, 32)  <- sem_seg_head.predictor.mask_embed.layers.1.weight"
    ) in text
    backbone_only = {k: v for k, v in state.items() if k.startswith("backbone.")}
    with pytest.raises(ValueError, match="is not a Mask2Former checkpoint: it has no sem_seg_head.predictor"):
        original.load_original(_write_pkl(tmp_path, backbone_only, "backbone.pkl"))


def test_non_finite_weights_and_other_normalisations_are_refused(tmp_path):
    state = _state(SWIN_PKL)
    nan = dict(state)
    nan["backbone.norm3.weight"] = np.full_like(state["backbone.norm3.weight"], np.nan)
    with pytest.raises(ValueError, match=r"hold non-finite values .*\n  backbone.norm3.weight: 32 NaN, 0 inf"):
        original.read_original(_write_pkl(tmp_path, nan, "nan.pkl"))
    imagenet = dict(state, pixel_mean=np.array([[[123.675]], [[116.28]], [[103.53]]], np.float32))
    assert "pixel_mean" in original.load_original(_write_pkl(tmp_path, imagenet, "imagenet.pkl"))[2]
    other = dict(state, pixel_std=np.ones((3, 1, 1), np.float32))
    with pytest.raises(ValueError, match=r"pixel_std is \[1.0, 1.0, 1.0\], but m2f_jax normalises with the ImageNet"):
        original.load_original(_write_pkl(tmp_path, other, "other.pkl"))


def test_resnet_checkpoint_matches_the_original_model():
    model, ignored = original.convert_original(RESNET_PKL)
    backbone = model.config.backbone_config
    assert (backbone.embedding_size, backbone.hidden_sizes, backbone.depths) == (
        RESNET["stem"],
        tuple(RESNET["widths"]),
        tuple(RESNET["depths"]),
    )
    assert ignored == ["criterion.empty_weight"]
    assert_outputs_match(model, "original_resnet_outputs.npz")


def test_basic_block_resnets_are_refused_with_their_shape():
    """ResNet-18/34 (basic blocks): no Mask2Former checkpoint uses them, and m2f_jax builds bottlenecks only."""
    state = {k: v for k, v in _state(RESNET_PKL).items() if ".conv3." not in k}
    with pytest.raises(ValueError, match="has a ResNet backbone .*'layer_type': 'basic'.*must be 'bottleneck'"):
        original.infer_config(state)


def test_cli_writes_a_folder_that_loads(tmp_path, capsys):
    names = tmp_path / "names.json"
    names.write_text(json.dumps([f"c{i}" for i in range(HEAD["classes"])]))
    dst = tmp_path / "converted"
    assert cli.main([SWIN_PKL, str(dst), "--labels", str(names)]) == 0
    assert "5 labels, 6 queries" in capsys.readouterr().out
    model = from_pretrained(str(dst))
    assert model.config.id2label == {i: f"c{i}" for i in range(5)}
    assert cli.main([SWIN_PKL, str(dst)]) == 1  # exists: refused without --overwrite
    assert "exists and is not empty" in capsys.readouterr().err
    assert cli.main([SWIN_PKL, str(dst), "--overwrite"]) == 0
    assert "label names are placeholders" in capsys.readouterr().out
    assert from_pretrained(SWIN_PKL).config.id2label[0] == "LABEL_0"
    assert cli.main([str(dst), str(tmp_path / "again"), "--labels", str(names)]) == 2
