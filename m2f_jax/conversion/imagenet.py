"""Backbone weights from ImageNet classification checkpoints: the initial weights of a new Mask2Former.

`load_backbone_weights(source, backbone_config)` reads a checkpoint, recognises its format from its
keys, checks its architecture against the backbone config, and returns our backbone's parameters
(paths relative to the backbone, e.g. `encoder.layers.0.blocks.0.attention.q_proj.kernel`) with a
report of what was loaded, ignored and left at its initialisation.

Swin checkpoints come in three layouts, all mapped onto the names of HF's SwinModel and from there
onto ours by conversion.hf's renames and layout changes:
- Hugging Face `SwinModel` / `SwinForImageClassification` (`swin.` prefix), e.g. the hub's
  microsoft/swin-tiny-patch4-window7-224;
- timm (e.g. timm/swin_tiny_patch4_window7_224.ms_in1k): a fused qkv, and each patch merging at the
  start of the next stage (`layers.1.downsample` is our `layers.0.downsample`). Its 2x2 neighbourhood
  order (reshape + permute) is the official one, so no weight is permuted (the tests compare outputs);
- the official Swin repository's .pth (`{"model": state_dict}`): fused qkv, merging at the end of its
  stage, index buffers and masks (recomputed here, so ignored).
The classifier head and the final norm are ignored; our per-stage output norms (`hidden_states_norms`)
keep their initialisation, as the original Mask2Former adds them fresh. Relative position bias tables
of another window are resized as the official Swin code does when fine-tuning at another window.

ResNet checkpoints (for a ResNetConfig backbone) come in two layouts:
- torchvision's and timm's (`conv1`, `bn1`, `layer1`..`layer4`, `fc`), e.g. torchvision's
  resnet50-0676ba61.pth or the hub's timm/resnet50.tv_in1k (the same weights), mapped by
  conversion.resnet_imagenet;
- Hugging Face `ResNetModel` / `ResNetForImageClassification` (`resnet.` prefix), whose module names
  are ours, so conversion.hf's leaf renames apply as they do to a Mask2Former's ResNet backbone.
Every backbone weight, the frozen BatchNorm statistics included, comes from the checkpoint (none is
kept at its initialisation); the classifier is ignored.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Mapping

import numpy as np

from m2f_jax import hub
from m2f_jax.config import ResNetConfig, SwinConfig
from m2f_jax.conversion import hf, resnet_imagenet

HF_SWIN, TIMM_SWIN, OFFICIAL_SWIN = "Hugging Face Swin", "timm Swin", "official Swin"
TORCHVISION_RESNET, HF_RESNET = "torchvision/timm ResNet", "Hugging Face ResNet"
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")

# Our backbone parameters that no classification checkpoint has: they keep their initialisation.
SWIN_FRESH = (r"^hidden_states_norms\.",)

# Keys of classification checkpoints that a backbone does not use, with the reason (HF key names, after
# the `swin.` prefix is removed; timm's and official keys as they come).
_HF_IGNORED = (
    (r"^classifier\.", "classifier head"),
    (r"^layernorm\.", "final norm (before pooling)"),
    (r"^embeddings\.mask_token$", "masked image modelling token"),
    (r"\.relative_position_index$", "buffer (recomputed from the window)"),
)
_TORCH_IGNORED = (
    (r"^head\.", "classifier head"),
    (r"^norm\.", "final norm (before pooling)"),
    (r"\.relative_position_index$", "buffer (recomputed from the window)"),
    (r"\.attn_mask$", "buffer (recomputed from the window)"),
    (r"num_batches_tracked$", "buffer"),
)
_RESNET_IGNORED = {
    TORCHVISION_RESNET: ((r"^fc\.", "classifier head"), (r"num_batches_tracked$", "buffer")),
    HF_RESNET: ((r"^classifier\.", "classifier head"), (r"num_batches_tracked$", "buffer")),  # after `resnet.`
}
# config.json fields of an HF ResNet that must equal the backbone's (the stride placement does not
# show in the shapes).
_HF_RESNET_FIELDS = (
    "embedding_size", "hidden_sizes", "depths", "num_channels", "layer_type", "downsample_in_first_stage",
    "downsample_in_bottleneck",
)  # fmt: skip
# timm's and the official names -> HF SwinModel's (the downsample rule depends on the layout).
_TORCH_RENAMES = (
    (r"^patch_embed\.proj\.", "embeddings.patch_embeddings.projection."),
    (r"^patch_embed\.norm\.", "embeddings.norm."),
    (r"^layers\.", "encoder.layers."),
    (r"\.norm1\.", ".layernorm_before."),
    (r"\.norm2\.", ".layernorm_after."),
    (r"\.attn\.proj\.", ".attention.output.dense."),
    (r"\.attn\.relative_position_bias_table$", ".attention.self.relative_position_bias_table"),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
)
_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")
_QKV = re.compile(r"\.attn\.qkv\.(weight|bias)$")
_TABLE = re.compile(r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.self\.relative_position_bias_table$")


class BackboneMismatch(ValueError):
    """The checkpoint is not a backbone of the architecture the config describes."""


@dataclasses.dataclass(frozen=True)
class BackboneReport:
    """What `load_backbone_weights` did: `loaded` and `kept` are our backbone's parameter paths (kept:
    left at their initialisation), `ignored` the checkpoint's keys with why, `resized` one line per
    window change."""

    source: str
    format: str
    loaded: tuple[str, ...]
    ignored: tuple[tuple[str, str], ...]
    kept: tuple[str, ...]
    resized: tuple[str, ...] = ()

    def summary(self) -> str:
        """A few lines for a log: counts, the reasons for ignoring keys, the resized windows, what was kept."""
        lines = [f"backbone weights from {self.source} ({self.format}): {len(self.loaded)} parameters loaded"]
        reasons: dict[str, list[str]] = {}
        for key, reason in self.ignored:
            reasons.setdefault(reason, []).append(key)
        for reason, keys in reasons.items():
            shown = ", ".join(keys[:3]) + (f", ... ({len(keys)} in all)" if len(keys) > 3 else "")
            lines.append(f"  ignored, {reason}: {shown}")
        lines.extend(f"  resized: {line}" for line in self.resized)
        if self.kept:
            groups = sorted({k.rsplit(".", 2)[0] for k in self.kept})
            lines.append(f"  kept their initialisation: {len(self.kept)} parameters ({', '.join(groups)})")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ sources
def local_or_hub(source: str | os.PathLike) -> tuple[str, bool]:
    """hub.local_or_hub, except that a missing name ending as a weights file does (swin_tiny.pth) is a
    mistyped file, not a hub id: FileNotFoundError at once, with no network."""
    path, local = hub.local_or_hub(source)
    if not local and path.endswith((".safetensors", *TORCH_SUFFIXES)):
        raise FileNotFoundError(f"{path} does not exist")
    return path, local


def read_checkpoint(source: str | os.PathLike, revision: str | None = None) -> tuple[str, dict[str, np.ndarray], dict]:
    """(the file or folder read, its tensors, its config.json or {}) of a local .safetensors / .pth / .bin
    file, a folder holding model.safetensors or pytorch_model.bin, or a hub id; tensors checked finite."""
    path, local = local_or_hub(source)
    if not local:
        path = hub.snapshot(path, revision, hf.SAFETENSORS_PATTERNS)
        if not any(f.startswith("model") and f.endswith(".safetensors") for f in os.listdir(path)):
            path = hub.snapshot(os.fspath(source), revision, hf.BIN_PATTERNS)
    config = {}
    if os.path.isdir(path):
        state = hf.read_state_dict(path)  # FileNotFoundError naming the folder when it holds no weights
        if os.path.isfile(os.path.join(path, "config.json")):
            config = hub.read_json(os.path.join(path, "config.json"))
    elif path.endswith(".safetensors"):
        state = hf.read_safetensors(path)
    elif path.endswith(TORCH_SUFFIXES):
        state = hf.read_torch_state(path)
    else:
        raise ValueError(
            f"{path}: expected a .safetensors or PyTorch ({', '.join(TORCH_SUFFIXES)}) file, or a folder with "
            "model.safetensors or pytorch_model.bin"
        )
    hf.check_finite(state, path)
    return path, state, config


def _check_model_type(config: Mapping, expected: str, name: str, where: str) -> None:
    """ValueError when config.json names another model type than `expected` (a whole Mask2Former named)."""
    model_type = config.get("model_type")
    if model_type is not None and model_type != expected:
        hint = " (a whole Mask2Former: use model.init_from)" if model_type == "mask2former" else ""
        raise ValueError(f"{where}: config.json says model_type {model_type!r}{hint}; expected a {name} ({expected!r})")


def detect_format(state: Mapping[str, np.ndarray], config: Mapping, where: str) -> str:
    """HF_SWIN, TIMM_SWIN or OFFICIAL_SWIN from the keys (and config.json's model_type when there is one)."""
    _check_model_type(config, "swin", "Swin", where)
    if any(k in state for k in ("embeddings.patch_embeddings.projection.weight",
                                "swin.embeddings.patch_embeddings.projection.weight")):  # fmt: skip
        return HF_SWIN
    if "patch_embed.proj.weight" in state:
        if "layers.0.downsample.reduction.weight" in state:
            return OFFICIAL_SWIN
        if "layers.1.downsample.reduction.weight" in state:
            return TIMM_SWIN
    shown = ", ".join(sorted(state)[:8])
    raise ValueError(
        f"{where} is not a Swin classification checkpoint of a known layout (Hugging Face SwinModel or "
        f"SwinForImageClassification, timm, or the official Swin repository); its first keys: {shown}"
    )


def detect_resnet_format(state: Mapping[str, np.ndarray], config: Mapping, where: str) -> str:
    """TORCHVISION_RESNET or HF_RESNET from the keys (and config.json's model_type when there is one)."""
    _check_model_type(config, "resnet", "ResNet", where)
    if any(k in state for k in ("embedder.embedder.convolution.weight", "resnet.embedder.embedder.convolution.weight")):
        return HF_RESNET
    if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
        return TORCHVISION_RESNET
    shown = ", ".join(sorted(state)[:8])
    raise ValueError(
        f"{where} is not a ResNet classification checkpoint of a known layout (torchvision or timm: conv1, bn1, "
        f"layer1..layer4, fc; or Hugging Face ResNetModel or ResNetForImageClassification); its first keys: {shown}"
    )


# ------------------------------------------------------------------------------------------ Swin
def _hf_names(state: Mapping[str, np.ndarray], fmt: str) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    """The checkpoint in HF SwinModel's key names (fused qkv split), and the ignored keys with why."""
    ignored_rules = _HF_IGNORED if fmt == HF_SWIN else _TORCH_IGNORED
    out, ignored = {}, []
    for key, array in state.items():
        name = key.removeprefix("swin.") if fmt == HF_SWIN else key
        reason = next((why for pattern, why in ignored_rules if re.search(pattern, name)), None)
        if reason:
            ignored.append((key, reason))
            continue
        if fmt != HF_SWIN:
            shift = 0 if fmt == OFFICIAL_SWIN else 1  # timm merges at the start of the next stage
            name = re.sub(_DOWNSAMPLE, lambda m, s=shift: f"layers.{int(m[1]) - s}.downsample.", name)
            for pattern, replacement in _TORCH_RENAMES:
                name = re.sub(pattern, replacement, name)
            qkv = _QKV.search(name)
            if qkv:  # rows: query, key, value (each head's rows together, as HF's separate projections)
                stem = name[: qkv.start()]
                for part, piece in zip(("query", "key", "value"), np.split(array, 3, axis=0), strict=True):
                    out[f"{stem}.attention.self.{part}.{qkv[1]}"] = piece
                continue
        out[name] = array
    return out, ignored


def _window_of(table: np.ndarray, key: str, where: str) -> int:
    side = round(np.sqrt(table.shape[0]))
    if table.ndim != 2 or side * side != table.shape[0] or side % 2 == 0:
        raise BackboneMismatch(
            f"{where}: {key} has shape {tuple(table.shape)}, not ((2W-1)^2, heads) of a square window W; "
            "only square windows can be loaded (and resized)"
        )
    return (side + 1) // 2


def swin_architecture(state: Mapping[str, np.ndarray], where: str) -> dict:
    """embed_dim, patch_size, num_channels, depths, num_heads and window_size of a checkpoint in HF
    SwinModel's names, read from its weights' shapes."""
    if any("position_embeddings" in k or "absolute_pos_embed" in k for k in state):
        raise BackboneMismatch(f"{where} has absolute position embeddings, which the Swin backbone does not support")
    patch = state.get("embeddings.patch_embeddings.projection.weight")
    if patch is None or patch.ndim != 4:
        raise BackboneMismatch(f"{where} has no patch embedding weight (embeddings.patch_embeddings.projection)")
    blocks: dict[int, set[int]] = {}
    for key in state:
        m = re.match(r"^encoder\.layers\.(\d+)\.blocks\.(\d+)\.", key)
        if m:
            blocks.setdefault(int(m[1]), set()).add(int(m[2]))
    stages = sorted(blocks)
    heads, windows = [], set()
    for stage in stages:
        key = f"encoder.layers.{stage}.blocks.0.attention.self.relative_position_bias_table"
        if key not in state:
            raise BackboneMismatch(f"{where} has no {key}")
        heads.append(int(state[key].shape[1]))
        windows.add(_window_of(state[key], key, where))
    if len(windows) > 1:
        raise BackboneMismatch(f"{where} has several window sizes {sorted(windows)}; expected one")
    return dict(
        embed_dim=int(patch.shape[0]),
        num_channels=int(patch.shape[1]),
        patch_size=int(patch.shape[2]),
        depths=tuple(max(blocks[s]) + 1 for s in stages),
        num_heads=tuple(heads),
        window_size=windows.pop() if windows else None,
    )


def check_swin_architecture(found: dict, config: SwinConfig, where: str) -> None:
    """BackboneMismatch listing every field in which the checkpoint differs from `config` (the window
    excepted: its tables are resized)."""
    fields = ("embed_dim", "depths", "num_heads", "patch_size", "num_channels")
    differing = [f"{f}: checkpoint {found[f]} vs model {getattr(config, f)}" for f in fields
                 if found[f] != getattr(config, f)]  # fmt: skip
    if differing:
        raise BackboneMismatch(
            f"{where} is a Swin of another architecture than the model's backbone:\n  " + "\n  ".join(differing)
        )


def _cubic_weights(size_in: int, size_out: int, a: float = -0.75) -> np.ndarray:
    """(size_out, size_in) matrix of PyTorch's bicubic interpolation along one axis (align_corners=False,
    kernel a=-0.75, taps beyond the edge read the edge value). Hand-written because jax.image.resize's
    cubic kernel is Keys' a=-0.5 and renormalises its weights at the edges instead."""
    source = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5  # not clamped, as torch's cubic
    first = np.floor(source)
    t = source - first
    weights = np.zeros((size_out, size_in))
    for tap in (-1, 0, 1, 2):
        x = np.abs(t - tap)
        w = np.where(x <= 1, ((a + 2) * x - (a + 3)) * x * x + 1, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a)
        np.add.at(weights, (np.arange(size_out), np.clip(first + tap, 0, size_in - 1).astype(int)), w)
    return weights


def resize_bias_table(table: np.ndarray, window: int) -> np.ndarray:
    """A ((2W'-1)^2, heads) relative position bias table resized to window `window` as the official
    Swin code does when fine-tuning at another window: each head's (2W'-1)x(2W'-1) grid bicubically
    interpolated (torch.nn.functional.interpolate, mode="bicubic", align_corners=False)."""
    side_in = round(np.sqrt(table.shape[0]))
    side_out = 2 * window - 1
    grid = table.reshape(side_in, side_in, -1).astype(np.float64)
    resize = _cubic_weights(side_in, side_out)
    out = np.einsum("ai,ijh,bj->abh", resize, grid, resize)
    return out.reshape(side_out * side_out, -1).astype(table.dtype)


def swin_backbone_params(
    state: Mapping[str, np.ndarray], config: SwinConfig, fmt: str, where: str
) -> tuple[dict[str, np.ndarray], list[tuple[str, str]], tuple[str, ...]]:
    """(our backbone's parameters, ignored keys with why, resized-window lines) of a Swin checkpoint of
    format `fmt`, its architecture checked against `config`."""
    named, ignored = _hf_names(state, fmt)
    found = swin_architecture(named, where)
    check_swin_architecture(found, config, where)
    resized = ()
    if found["window_size"] != config.window_size:
        tables = [k for k in named if _TABLE.match(k)]
        for key in tables:
            named[key] = resize_bias_table(named[key], config.window_size)
        side_in, side_out = 2 * found["window_size"] - 1, 2 * config.window_size - 1
        resized = (
            f"pretrained window {found['window_size']} -> model window {config.window_size}: {len(tables)} relative "
            f"position bias tables {side_in}x{side_in} -> {side_out}x{side_out} (bicubic, as the official Swin code)",
        )
    params, _ = hf.hf_to_flax(named)
    return params, ignored, resized


# ------------------------------------------------------------------------------------------ ResNet
def resnet_params(
    state: Mapping[str, np.ndarray], config: ResNetConfig, fmt: str, file_config: Mapping, where: str
) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    """(our backbone's weights, frozen BatchNorm included, ignored keys with why) of a ResNet checkpoint
    of format `fmt`; every backbone weight must be there (CheckpointMismatch lists what is not)."""
    ignored, used = [], {}
    for key, array in state.items():
        name = key.removeprefix("resnet.") if fmt == HF_RESNET else key
        reason = next((why for pattern, why in _RESNET_IGNORED[fmt] if re.search(pattern, name)), None)
        if reason:
            ignored.append((key, reason))
        else:
            used[name] = array
    if fmt == TORCHVISION_RESNET:
        params, _ = resnet_imagenet.resnet_backbone_params(used, config)  # its ignored keys were taken out above
        return params, ignored
    found = {f: tuple(v) if isinstance(v, list) else v for f, v in file_config.items() if f in _HF_RESNET_FIELDS}
    differing = [f"{f}: checkpoint {v} vs model {getattr(config, f)}" for f, v in found.items()
                 if v != getattr(config, f)]  # fmt: skip
    if differing:
        raise BackboneMismatch(
            f"{where} is a ResNet of another architecture than the model's backbone:\n  " + "\n  ".join(differing)
        )
    params, _ = hf.hf_to_flax(used)  # our module names are HF's: only the leaves change
    hf.check_params(params, resnet_imagenet.backbone_shapes(config))
    return params, ignored


# ------------------------------------------------------------------------------------------ dispatch
@functools.lru_cache(maxsize=4)
def _backbone_shapes(config) -> dict[str, tuple[int, ...]]:
    """Our backbone's parameter paths and shapes for `config`, without creating any weights (traced once
    per config: tracing the initialisers takes a second even for a tiny model)."""
    from flax import nnx

    from m2f_jax.modeling.swin import SwinBackbone

    abstract = nnx.eval_shape(lambda: SwinBackbone(config, rngs=nnx.Rngs(0)))
    flat = nnx.to_flat_state(nnx.state(abstract, nnx.Param))
    return {".".join(str(p) for p in path): tuple(v.shape) for path, v in flat}


def load_backbone_weights(
    source: str | os.PathLike, backbone_config, revision: str | None = None
) -> tuple[dict[str, np.ndarray], BackboneReport]:
    """(our backbone's parameters from a classification checkpoint, the report). `source`: a local file
    or folder, or a hub id. Dispatched on the backbone config's type, then on the checkpoint's format
    (recognised from its keys); keys are checked both ways and every shape (CheckpointMismatch lists the
    missing, unexpected and mis-shaped ones)."""
    if not isinstance(backbone_config, SwinConfig | ResNetConfig):
        raise TypeError(f"no classification checkpoints are known for {type(backbone_config).__name__} backbones")
    where, state, file_config = read_checkpoint(source, revision)
    if isinstance(backbone_config, ResNetConfig):
        fmt = detect_resnet_format(state, file_config, where)
        try:
            params, ignored = resnet_params(state, backbone_config, fmt, file_config, where)
        except hf.CheckpointMismatch as e:
            raise hf.CheckpointMismatch(f"{where} ({fmt}): {e}") from e
        report = BackboneReport(
            source=os.fspath(source), format=fmt, loaded=tuple(sorted(params)), ignored=tuple(ignored), kept=()
        )
        return params, report
    fmt = detect_format(state, file_config, where)
    params, ignored, resized = swin_backbone_params(state, backbone_config, fmt, where)
    shapes = dict(_backbone_shapes(backbone_config))
    kept = tuple(k for k in shapes if any(re.search(p, k) for p in SWIN_FRESH))
    try:
        hf.check_params(params, {k: v for k, v in shapes.items() if k not in kept})
    except hf.CheckpointMismatch as e:
        raise hf.CheckpointMismatch(f"{where} ({fmt}): {e}") from e
    report = BackboneReport(
        source=os.fspath(source), format=fmt, loaded=tuple(sorted(params)), ignored=tuple(ignored), kept=kept,
        resized=resized,
    )  # fmt: skip
    return params, report
