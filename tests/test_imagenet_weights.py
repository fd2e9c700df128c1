"""ImageNet Swin checkpoints (HF, timm, official) as our backbone: the four stage outputs match the source
model's on the same random weights; bias tables resized as torch's bicubic; bad checkpoints refused."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from m2f_jax.config import SwinConfig
from m2f_jax.conversion import hf, imagenet
from m2f_jax.modeling.swin import SwinBackbone
from m2f_jax.modeling.valid_region import FeatureMap

from helpers import max_diff, nhwc

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SWIN = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4)
CONFIG = SwinConfig(**SWIN)


def perturb(model, seed: int = 0):
    """Moves every parameter off its initial value (norms 1 and 0 would hide a swapped weight and bias)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model.eval()


@functools.cache
def _backbone_parts():
    return nnx.split(SwinBackbone(CONFIG, rngs=nnx.Rngs(0)), nnx.Param, ...)


@jax.jit
def _encoder(params, rest, pixels):
    model = nnx.merge(_backbone_parts()[0], params, rest)
    return model.encoder(model.embeddings(pixels))  # compiled once: every test uses CONFIG and 128 px


def our_stages(params, pixels_nchw):
    """Our encoder's four stage outputs (before the per-stage output norms) with `params` loaded: every
    parameter but the output norms, which the encoder does not use."""
    _, initial, rest = _backbone_parts()
    flat = nnx.to_flat_state(initial)
    names = {".".join(str(p) for p in path) for path, _ in flat}
    assert names - set(params) == {k for k in names if k.startswith("hidden_states_norms.")}
    values = [(path, v.replace(jnp.asarray(params[".".join(map(str, path))])) if ".".join(map(str, path)) in params
               else v) for path, v in flat]  # fmt: skip
    x = jnp.asarray(nhwc(pixels_nchw.numpy()))
    sizes = jnp.tile(jnp.array([x.shape[1:3]], jnp.int32), (x.shape[0], 1))
    return [np.asarray(s.values) for s in _encoder(nnx.from_flat_state(values), rest, FeatureMap(x, sizes))]


def assert_same_stages(ours, reference):
    assert len(ours) == len(reference) == 4
    for i, (a, b) in enumerate(zip(ours, reference, strict=True)):
        b = nhwc(b.detach().numpy())
        assert a.shape == b.shape, (i, a.shape, b.shape)
        assert max_diff(a, b) < 1e-4, (i, max_diff(a, b))


# ------------------------------------------------------------------------------------------ HF
@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """Random SwinModel and SwinForImageClassification, saved with save_pretrained."""
    torch.manual_seed(0)
    config = transformers.SwinConfig(**{**SWIN, "depths": list(SWIN["depths"]), "num_heads": list(SWIN["num_heads"])},
                                     image_size=128, num_labels=7)  # fmt: skip
    models = {}
    for i, cls in enumerate((transformers.SwinModel, transformers.SwinForImageClassification)):
        model = perturb(cls(config), seed=i)
        folder = tmp_path_factory.mktemp(cls.__name__)
        model.save_pretrained(str(folder))
        models[cls.__name__] = (folder, model)
    return models


@pytest.fixture(scope="module")
def hf_state(hf_folders):
    return hf.read_state_dict(str(hf_folders["SwinModel"][0]))


@pytest.mark.parametrize("name", ["SwinModel", "SwinForImageClassification"])
def test_hf_stage_outputs(hf_folders, name):
    folder, model = hf_folders[name]
    params, report = imagenet.load_backbone_weights(folder, CONFIG)
    assert report.format == imagenet.HF_SWIN and not report.resized
    assert set(report.kept) == {f"hidden_states_norms.stage{i}.{p}" for i in range(1, 5) for p in ("scale", "bias")}
    ignored = {k for k, _ in report.ignored}
    if name == "SwinForImageClassification":
        assert ignored == {"classifier.weight", "classifier.bias", "swin.layernorm.weight", "swin.layernorm.bias"}
    else:
        assert ignored == {"layernorm.weight", "layernorm.bias"}
    swin = model if name == "SwinModel" else model.swin
    pixels = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        embedded, dims = swin.embeddings(pixels)
        out = swin.encoder(embedded, dims, output_hidden_states=True, output_hidden_states_before_downsampling=True,
                           always_partition=True)  # fmt: skip  # as the detectron2 backbone: never shrink windows
    assert_same_stages(our_stages(params, pixels), out.reshaped_hidden_states[1:])


# ------------------------------------------------------------------------------------------ timm and official
@pytest.fixture(scope="module")
def timm_model():
    from torchvision_stub import import_timm

    timm = import_timm()
    torch.manual_seed(0)
    model = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=128, num_classes=7, always_partition=True, **SWIN
    )
    return perturb(model, seed=2)


@pytest.fixture(scope="module")
def timm_reference(timm_model):
    pixels = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return pixels, timm_model.forward_intermediates(pixels, norm=False, intermediates_only=True)


def official_state_dict(timm_model) -> dict:
    """The official repository's layout of a timm model: merging at the end of its stage, `head.`, and the
    index and mask buffers its checkpoints carry."""
    state = {}
    for key, value in timm_model.state_dict().items():
        key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", key)
        state[key.replace("head.fc.", "head.")] = value
    state.update({k: v for k, v in timm_model.named_buffers() if k.endswith(("relative_position_index", "attn_mask"))})
    return state


def test_official_layout_is_what_timm_converts(timm_model):
    """timm's own converter of official checkpoints maps our official-format dict back onto the timm model:
    the dict the next test loads has the official layout, by an independent reading of it."""
    from timm.models.swin_transformer import checkpoint_filter_fn

    official = official_state_dict(timm_model)
    assert any(k.startswith("layers.0.downsample.") for k in official) and any(
        k.endswith("attn_mask") for k in official
    )
    back = checkpoint_filter_fn({"model": official}, timm_model)
    expected = timm_model.state_dict()
    assert set(back) == set(expected)
    assert all(torch.equal(back[k], expected[k]) for k in expected)


@pytest.mark.parametrize("kind", ["timm.safetensors", "timm.pth", "timm_folder", "official.pth"])
def test_timm_and_official_stage_outputs(timm_model, timm_reference, tmp_path, kind):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in timm_model.state_dict().items()}
    if kind == "timm.safetensors":
        path = tmp_path / "swin.safetensors"
        save_file(state, str(path))
    elif kind == "timm.pth":
        path = tmp_path / "swin.pth"
        torch.save(state, path)
    elif kind == "timm_folder":  # a hub repository's layout: config.json (timm's, no model_type) + model.safetensors
        path = tmp_path / "repo"
        path.mkdir()
        save_file(state, str(path / "model.safetensors"))
        (path / "config.json").write_text('{"architecture": "swin_tiny_patch4_window7_224", "num_classes": 7}')
    else:
        path = tmp_path / "official.pth"
        torch.save({"model": official_state_dict(timm_model)}, path)
    params, report = imagenet.load_backbone_weights(path, CONFIG)
    assert report.format == (imagenet.OFFICIAL_SWIN if kind.startswith("official") else imagenet.TIMM_SWIN)
    reasons = {reason for _, reason in report.ignored}
    assert {"classifier head", "final norm (before pooling)"} <= reasons
    pixels, reference = timm_reference
    assert_same_stages(our_stages(params, pixels), reference)


# ------------------------------------------------------------------------------------------ windows
@pytest.mark.parametrize("window_in,window_out", [(7, 12), (12, 7), (4, 7), (7, 4)])
def test_bias_table_resize_matches_torch_bicubic(window_in, window_out):
    """As the official Swin code fine-tunes at another window: interpolate(mode="bicubic") per head."""
    heads, side_in, side_out = 3, 2 * window_in - 1, 2 * window_out - 1
    table = torch.randn(side_in * side_in, heads, generator=torch.Generator().manual_seed(window_in))
    grid = table.permute(1, 0).reshape(1, heads, side_in, side_in)
    expected = torch.nn.functional.interpolate(grid, size=(side_out, side_out), mode="bicubic", align_corners=False)
    expected = expected.reshape(heads, side_out * side_out).permute(1, 0).numpy()
    ours = imagenet.resize_bias_table(table.numpy(), window_out)
    assert ours.shape == expected.shape
    assert max_diff(ours, expected) < 1e-5


def test_checkpoint_of_another_window_is_resized(hf_folders, hf_state):
    folder = hf_folders["SwinModel"][0]
    params, report = imagenet.load_backbone_weights(folder, SwinConfig(**{**SWIN, "window_size": 7}))
    assert report.resized and "pretrained window 4 -> model window 7" in report.resized[0]
    assert "7x7 -> 13x13" in report.resized[0]
    table = torch.from_numpy(hf_state["encoder.layers.2.blocks.1.attention.self.relative_position_bias_table"])
    expected = torch.nn.functional.interpolate(table.permute(1, 0).reshape(1, 4, 7, 7), size=(13, 13), mode="bicubic")
    expected = expected.reshape(4, 169).permute(1, 0).numpy()
    ours = params["encoder.layers.2.blocks.1.attention.relative_position_bias_table"]
    assert max_diff(ours, expected) < 1e-5


# ------------------------------------------------------------------------------------------ bad inputs
def save(state, path):
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
    return path


def test_non_square_window_is_refused(hf_state, tmp_path):
    key = "encoder.layers.1.blocks.0.attention.self.relative_position_bias_table"
    path = save({**hf_state, key: np.zeros((5 * 7, 2), np.float32)}, tmp_path / "x.safetensors")
    with pytest.raises(imagenet.BackboneMismatch, match=rf"{re.escape(str(path))}: {key} .*only square windows"):
        imagenet.load_backbone_weights(path, CONFIG)


@pytest.mark.parametrize(
    "changes,message",
    [
        (dict(depths=(2, 2, 6, 2)), r"depths: checkpoint \(2, 2, 2, 2\) vs model \(2, 2, 6, 2\)"),
        (dict(num_heads=(2, 4, 8, 16)), r"num_heads: checkpoint \(1, 2, 4, 8\) vs model \(2, 4, 8, 16\)"),
        (dict(embed_dim=64, num_heads=(2, 4, 8, 16)), r"embed_dim: checkpoint 32 vs model 64"),
        (dict(patch_size=2), r"patch_size: checkpoint 4 vs model 2"),
    ],
)
def test_other_architecture_is_refused(hf_folders, changes, message):
    folder = hf_folders["SwinModel"][0]
    with pytest.raises(
        imagenet.BackboneMismatch, match=rf"(?s){re.escape(str(folder))} is a Swin of another .*{message}"
    ):
        imagenet.load_backbone_weights(folder, SwinConfig(**{**SWIN, **changes}))


def test_missing_unexpected_and_misshaped_keys_are_listed(hf_state, tmp_path):
    state = dict(hf_state)
    del state["encoder.layers.0.blocks.1.output.dense.bias"]
    state["encoder.layers.0.blocks.0.attention.extra.weight"] = np.zeros((4, 4), np.float32)
    state["encoder.layers.0.blocks.0.intermediate.dense.weight"] = np.zeros((64, 32), np.float32)  # mlp_ratio 2
    path = save(state, tmp_path / "x.safetensors")
    with pytest.raises(hf.CheckpointMismatch) as error:
        imagenet.load_backbone_weights(path, CONFIG)
    text = str(error.value)
    assert str(path) in text
    assert "1 missing:\n    encoder.layers.0.blocks.1.mlp.fc2.bias" in text
    assert "1 unexpected:\n    encoder.layers.0.blocks.0.attention.extra.kernel" in text
    assert "encoder.layers.0.blocks.0.mlp.fc1.kernel: checkpoint (32, 64) vs model (32, 128)" in text


def test_bad_files_are_refused(hf_state, tmp_path):
    unknown = save({"backbone.conv1.weight": np.zeros((4, 3, 3, 3), np.float32)}, tmp_path / "resnet.safetensors")
    with pytest.raises(ValueError, match=rf"{re.escape(str(unknown))} is not a Swin classification checkpoint"):
        imagenet.load_backbone_weights(unknown, CONFIG)
    mask2former = tmp_path / "m2f"
    mask2former.mkdir()
    save(hf_state, mask2former / "model.safetensors")
    (mask2former / "config.json").write_text('{"model_type": "mask2former"}')
    with pytest.raises(ValueError, match=r"model_type 'mask2former' \(a whole Mask2Former: use model.init_from\)"):
        imagenet.load_backbone_weights(mask2former, CONFIG)
    nan = save({**hf_state, "embeddings.norm.bias": np.full(32, np.nan, np.float32)}, tmp_path / "nan.safetensors")
    with pytest.raises(ValueError, match=r"nan.safetensors: 1 tensors hold non-finite values"):
        imagenet.load_backbone_weights(nan, CONFIG)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=rf"{re.escape(str(corrupt))} is not a readable PyTorch state dict"):
        imagenet.load_backbone_weights(corrupt, CONFIG)
    text = tmp_path / "weights.txt"
    text.write_text("x")
    with pytest.raises(ValueError, match=r"weights.txt: expected a .safetensors or PyTorch"):
        imagenet.load_backbone_weights(text, CONFIG)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin in"):
        imagenet.load_backbone_weights(empty, CONFIG)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        imagenet.load_backbone_weights(tmp_path / "missing.pth", CONFIG)
