"""Hugging Face Mask2Former checkpoints -> the parameters of our Flax model.

A checkpoint's keys (the hub names that `save_pretrained` writes) map onto our parameter paths by
a table of renames, plus the layout changes: Linear (out, in) -> (in, out), Conv OIHW -> HWIO,
norm `weight` -> `scale`, and the cross-attention's fused `in_proj` split into q, k and v. A ResNet
backbone's keys need no rename (our modules carry HF's names; BatchNorm running statistics keep
theirs and load as frozen weights). Every key is checked both ways and every shape, and a mismatch
fails with the full list.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping

import numpy as np

from m2f_jax import hub
from m2f_jax.config import Mask2FormerConfig

# Keys that checkpoints carry but the model does not use: the loss's class weights, Swin's
# index buffers (recomputed from the window size), SwinModel's final norm, which the
# backbone bypasses (HF ignores it too), and BatchNorm's update counters (ResNet backbones).
IGNORED_KEYS = (
    r"^criterion\.empty_weight$",
    r"\.relative_position_index$",
    r"^model\.pixel_level_module\.encoder\.swin\.layernorm\.",
    r"num_batches_tracked$",
)

# (pattern, replacement) applied in order to every key. The hub names come first; the last two
# rules accept the names transformers 5 uses in memory too (a `torch.save(model.state_dict())`).
RENAMES = (
    (r"\.attention\.self\.query\.", ".attention.q_proj."),
    (r"\.attention\.self\.key\.", ".attention.k_proj."),
    (r"\.attention\.self\.value\.", ".attention.v_proj."),
    (r"\.attention\.self\.relative_position_bias_table$", ".attention.relative_position_bias_table"),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.blocks\.(\d+)\.intermediate\.dense\.", r".blocks.\1.mlp.fc1."),
    (r"\.blocks\.(\d+)\.output\.dense\.", r".blocks.\1.mlp.fc2."),
    (r"(pixel_level_module\.decoder\.input_projections\.\d+)\.0\.", r"\1.conv."),
    (r"(pixel_level_module\.decoder\.input_projections\.\d+)\.1\.", r"\1.norm."),
    (r"\.adapter_(\d+)\.0\.", lambda m: f".lateral_convs.{int(m[1]) - 1}.conv."),
    (r"\.adapter_(\d+)\.1\.", lambda m: f".lateral_convs.{int(m[1]) - 1}.norm."),
    (r"\.layer_(\d+)\.0\.", lambda m: f".output_convs.{int(m[1]) - 1}.conv."),
    (r"\.layer_(\d+)\.1\.", lambda m: f".output_convs.{int(m[1]) - 1}.norm."),
    (r"\.mask_embedder\.(\d+)\.0\.", r".mask_embedder.layers.\1."),
    (
        r"transformer_module\.(queries_embedder|queries_features|level_embed)\.weight$",
        r"transformer_module.\1.embedding",
    ),
    (r"^model\.pixel_level_module\.encoder\.swin\.", "model.pixel_level_module.encoder."),
    (r"\.attention\.relative_position_bias\.relative_position_bias_table$", ".attention.relative_position_bias_table"),
)


class CheckpointMismatch(ValueError):
    """The checkpoint does not fit the model its config describes."""


def _leaf(name: str, array: np.ndarray) -> tuple[str, np.ndarray]:
    """Renames a parameter leaf and converts its layout."""
    if name.endswith(".weight"):
        base = name[: -len(".weight")]
        if array.ndim == 4:  # conv OIHW -> HWIO
            return base + ".kernel", array.transpose(2, 3, 1, 0)
        if array.ndim == 2:  # linear (out, in) -> (in, out)
            return base + ".kernel", array.T
        if array.ndim == 1:  # LayerNorm / GroupNorm
            return base + ".scale", array
    return name, array


def hf_to_flax(state_dict: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Maps a hub state dict to {our dotted parameter path: array}; also returns the ignored keys."""
    params: dict[str, np.ndarray] = {}
    ignored = []
    for key, array in state_dict.items():
        array = np.asarray(array)
        if any(re.search(p, key) for p in IGNORED_KEYS):
            ignored.append(key)
            continue
        name = key
        for pattern, replacement in RENAMES:
            name = re.sub(pattern, replacement, name)
        if name.endswith(".cross_attn.in_proj_weight") or name.endswith(".cross_attn.in_proj_bias"):
            prefix = name.rsplit(".", 1)[0]
            kind = "kernel" if name.endswith("weight") else "bias"
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), np.split(array, 3, axis=0), strict=True):
                params[f"{prefix}.{proj}.{kind}"] = part.T if kind == "kernel" else part
            continue
        name, array = _leaf(name, array)
        params[name] = array
    return params, ignored


def check_params(params: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]]) -> None:
    """Raises CheckpointMismatch naming every missing, unexpected and mis-shaped parameter."""
    missing = sorted(set(expected) - set(params))
    unexpected = sorted(set(params) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(params[k].shape)} vs model {tuple(expected[k])}"
        for k in set(params) & set(expected)
        if tuple(params[k].shape) != tuple(expected[k])
    )
    if missing or unexpected or misshaped:
        lines = ["the checkpoint does not match the model its config describes:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                lines.append(f"  {len(items)} {title}:")
                lines.extend(f"    {item}" for item in items)
        raise CheckpointMismatch("\n".join(lines))


# ------------------------------------------------------------------------------ reading sources
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# What to fetch of a hub repository: the JSON files and the safetensors weights, else the .bin weights.
SAFETENSORS_PATTERNS = ["*.json", "model*.safetensors"]
BIN_PATTERNS = ["*.json", "pytorch_model*.bin"]


def is_hf_folder(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in WEIGHT_FILES)


def read_config(folder: str) -> Mask2FormerConfig:
    """The model config of a folder's config.json; errors name the file and say what is wrong."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config.json in {folder}")
    data = hub.read_json(path)
    architectures = data.get("architectures") or []
    if architectures and "Mask2FormerForUniversalSegmentation" not in architectures:
        raise ValueError(f"{path}: expected Mask2FormerForUniversalSegmentation weights, got {architectures}")
    try:
        return Mask2FormerConfig.from_hf_dict(data)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise ValueError(f"{path}: {e}") from e


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file; ValueError naming the file when it cannot be parsed."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except (SafetensorError, ValueError, TypeError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from e


def read_torch_state(path: str, wrappers: tuple[str, ...] = ("model", "state_dict")) -> dict[str, np.ndarray]:
    """The state dict a `torch.save` file holds (possibly under one of `wrappers`, e.g. the official
    releases' {"model": ...}), as numpy arrays; read with weights_only=True, so no code in the file runs.
    Every PyTorch reader of the package goes through here: one set of errors naming the file."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{path} is a PyTorch checkpoint, which needs torch to read (pip install torch)") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as e:  # torch reports corrupt or unsafe files as RuntimeError, UnpicklingError, EOFError, ...
        raise ValueError(
            f"{path} is not a readable PyTorch state dict ({type(e).__name__}: {e}). A training checkpoint that "
            "also holds optimizer or scheduler objects can be reduced to its weights, if you trust the file, with "
            "torch.save(torch.load(path, weights_only=False)['model'], 'weights.pth')"
        ) from e
    for wrapper in wrappers:
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} must hold a state dict (name -> tensor), got {type(state).__name__}")
    bad = [f"{k!r}: {type(v).__name__}" for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        under = f", or one under {' or '.join(map(repr, wrappers))}" if wrappers else ""
        raise ValueError(
            f"{path} must hold a state dict (name -> tensor){under}; these entries are not tensors: "
            + ", ".join(bad[:10])
            + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        )
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def read_state_dict(folder: str) -> dict[str, np.ndarray]:
    """All tensors of a `save_pretrained` folder as numpy arrays (safetensors preferred; .bin needs torch)."""
    shards = sorted(glob.glob(os.path.join(folder, "model*.safetensors")))
    if shards:
        state = {}
        for shard in shards:
            state.update(read_safetensors(shard))
        return state
    bins = sorted(glob.glob(os.path.join(folder, "pytorch_model*.bin")))
    if bins:
        try:
            import torch  # noqa: F401
        except ImportError as e:
            raise ImportError(
                f"{folder} holds PyTorch .bin weights, which need torch to read (pip install torch)"
            ) from e
        state = {}
        for shard in bins:
            state.update(read_torch_state(shard, wrappers=()))
        return state
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {folder}")


def check_finite(tensors: Mapping[str, np.ndarray], source: str, shown: int = 20) -> None:
    """Raises ValueError naming every tensor (by its key in `source`) that holds NaN or infinity: such
    weights load without complaint and then predict nonsense (every pixel of class 0)."""
    bad = []
    for key, array in tensors.items():
        array = np.asarray(array)
        if array.dtype.kind in "biu" or array.size == 0:
            continue
        finite = np.isfinite(array)
        if not finite.all():
            nan = int(np.isnan(array).sum())
            bad.append(f"{key}: {nan} NaN, {array.size - int(finite.sum()) - nan} inf of {array.size} values")
    if bad:
        lines = [f"{source}: {len(bad)} tensors hold non-finite values (NaN or inf):"]
        lines.extend(f"  {line}" for line in bad[:shown])
        if len(bad) > shown:
            lines.append(f"  ... and {len(bad) - shown} more")
        raise ValueError("\n".join(lines))


def load_hf_checkpoint(folder: str) -> tuple[Mask2FormerConfig, dict[str, np.ndarray]]:
    """(config, hub-named state dict) of a `save_pretrained` folder, checked: readable, all weights finite."""
    config = read_config(folder)
    state = read_state_dict(folder)
    check_finite(state, folder)
    return config, state
