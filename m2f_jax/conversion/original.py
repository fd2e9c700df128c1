"""The original Mask2Former model zoo (facebookresearch/Mask2Former, detectron2) -> our Flax model.

The zoo's files are detectron2 checkpoints: `.pkl` (a pickle of {"model": {name: numpy array},
"__author__": ...}) or `.pth` ({"model": state dict, ...} or a bare state dict; needs torch). Their
keys are the original module names (`backbone.layers.0.blocks.1.attn.qkv.weight`,
`sem_seg_head.pixel_decoder.transformer.encoder.layers.0.norm1.weight`,
`sem_seg_head.predictor.transformer_cross_attention_layers.3.multihead_attn.in_proj_weight`, ...).
They are renamed here to the hub's key names and then go through conversion.hf, so the same checks
apply: every key both ways, every shape, mismatches listed.

The files carry no config, so the architecture is read off the tensors (Swin width, depths, heads,
window and MLP ratio; label and query counts; widths and layer counts of the heads; attention heads
from the deformable attention's sampling offsets). What the tensors cannot tell comes from the user:
the label names (a list, a JSON file, or a data set whose names m2f_jax knows) and, optionally, a
preset whose architecture the checkpoint must match (it also supplies the label names).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from m2f_jax.config import DATASET_LABELS, Mask2FormerConfig, ResNetConfig, SwinConfig, preset
from m2f_jax.conversion import hf

EXTENSIONS = (".pkl", ".pth")

# The normalisation the original configs use (0-255 scale, RGB), which m2f_jax's processor applies
# (HF's ImageNet mean/std on the 0-1 scale). Checkpoints that carry other values are refused.
IMAGENET_MEAN, IMAGENET_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)

# Hub prefixes: the backbone, the pixel decoder, the transformer module.
_B, _PD, _P = "model.pixel_level_module.encoder.", "model.pixel_level_module.decoder.", "model.transformer_module."
# Original prefixes that recur: a Swin block, a pixel-decoder encoder layer, the transformer decoder.
_BLOCK = r"^backbone\.layers\.(\d+)\.blocks\.(\d+)\."
_ENC = r"^sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\."
_DEC = r"^sem_seg_head\.predictor\."
_RES = r"^backbone\.res(\d)\.(\d+)\."
_SWIN = _B + r"encoder.layers.\1.blocks.\2."  # the hub's Swin block for a _BLOCK match
_DL = _P + r"decoder.layers.\1."  # the hub's decoder layer for a pattern whose first group is its index


def _res(m: re.Match, rest: str) -> str:
    """A detectron2 ResNet block (res2..res5, block index) -> its HF stage and layer."""
    return f"{_B}encoder.stages.{int(m[1]) - 2}.layers.{m[2]}.{rest}"


# (pattern, replacement) rules, original name -> hub name; a key matches at most one rule.
RENAMES = (
    # Swin (mask2former/modeling/backbone/swin.py, D2SwinTransformer)
    (r"^backbone\.patch_embed\.proj\.", _B + "embeddings.patch_embeddings.projection."),
    (r"^backbone\.patch_embed\.norm\.", _B + "embeddings.norm."),
    (_BLOCK + r"norm1\.", _SWIN + r"layernorm_before."),
    (_BLOCK + r"norm2\.", _SWIN + r"layernorm_after."),
    (_BLOCK + r"attn\.proj\.", _SWIN + r"attention.output.dense."),
    (
        _BLOCK + r"attn\.(relative_position_bias_table|relative_position_index)$",
        _SWIN + r"attention.self.\3",
    ),
    (_BLOCK + r"mlp\.fc1\.", _SWIN + r"intermediate.dense."),
    (_BLOCK + r"mlp\.fc2\.", _SWIN + r"output.dense."),
    (r"^backbone\.layers\.(\d+)\.downsample\.(reduction|norm)\.", _B + r"encoder.layers.\1.downsample.\2."),
    (r"^backbone\.norm(\d+)\.", lambda m: f"{_B}hidden_states_norms.stage{int(m[1]) + 1}."),
    # ResNet (detectron2/modeling/backbone/resnet.py: BasicStem, BottleneckBlock or BasicBlock, each
    # conv a detectron2 Conv2d holding its norm as `.norm`) -> HF's ResNetBackbone
    (r"^backbone\.stem\.conv1\.weight$", _B + "embedder.embedder.convolution.weight"),
    (r"^backbone\.stem\.conv1\.norm\.", _B + "embedder.embedder.normalization."),
    (_RES + r"conv(\d)\.weight$", lambda m: _res(m, f"layer.{int(m[3]) - 1}.convolution.weight")),
    (_RES + r"conv(\d)\.norm\.", lambda m: _res(m, f"layer.{int(m[3]) - 1}.normalization.")),
    (_RES + r"shortcut\.weight$", lambda m: _res(m, "shortcut.convolution.weight")),
    (_RES + r"shortcut\.norm\.", lambda m: _res(m, "shortcut.normalization.")),
    # MSDeformAttnPixelDecoder (mask2former/modeling/pixel_decoder/msdeformattn.py)
    (r"^sem_seg_head\.pixel_decoder\.input_proj\.(\d+)\.([01])\.", _PD + r"input_projections.\1.\2."),
    (r"^sem_seg_head\.pixel_decoder\.transformer\.level_embed$", _PD + "level_embed"),
    (
        _ENC + r"self_attn\.(sampling_offsets|attention_weights|value_proj|output_proj)\.",
        _PD + r"encoder.layers.\1.self_attn.\2.",
    ),
    (_ENC + r"norm1\.", _PD + r"encoder.layers.\1.self_attn_layer_norm."),
    (_ENC + r"linear1\.", _PD + r"encoder.layers.\1.fc1."),
    (_ENC + r"linear2\.", _PD + r"encoder.layers.\1.fc2."),
    (_ENC + r"norm2\.", _PD + r"encoder.layers.\1.final_layer_norm."),
    (r"^sem_seg_head\.pixel_decoder\.mask_features\.", _PD + "mask_projection."),
    (r"^sem_seg_head\.pixel_decoder\.(adapter|layer)_(\d+)\.(weight|bias)$", _PD + r"\1_\2.0.\3"),
    (r"^sem_seg_head\.pixel_decoder\.(adapter|layer)_(\d+)\.norm\.", _PD + r"\1_\2.1."),
    # MultiScaleMaskedTransformerDecoder (mask2former/modeling/transformer_decoder/
    # mask2former_transformer_decoder.py); its fused self-attention in_proj is in SPLITS
    (_DEC + r"transformer_self_attention_layers\.(\d+)\.self_attn\.out_proj\.", _DL + "self_attn.out_proj."),
    (_DEC + r"transformer_self_attention_layers\.(\d+)\.norm\.", _DL + r"self_attn_layer_norm."),
    (
        _DEC + r"transformer_cross_attention_layers\.(\d+)\.multihead_attn\.(in_proj_weight|in_proj_bias|out_proj\.)",
        _DL + r"cross_attn.\2",
    ),
    (_DEC + r"transformer_cross_attention_layers\.(\d+)\.norm\.", _DL + r"cross_attn_layer_norm."),
    (_DEC + r"transformer_ffn_layers\.(\d+)\.linear1\.", _DL + r"fc1."),
    (_DEC + r"transformer_ffn_layers\.(\d+)\.linear2\.", _DL + r"fc2."),
    (_DEC + r"transformer_ffn_layers\.(\d+)\.norm\.", _DL + r"final_layer_norm."),
    (_DEC + r"decoder_norm\.", _P + "decoder.layernorm."),
    (_DEC + r"query_feat\.weight$", _P + "queries_features.weight"),
    (_DEC + r"query_embed\.weight$", _P + "queries_embedder.weight"),
    (_DEC + r"level_embed\.weight$", _P + "level_embed.weight"),
    (_DEC + r"input_proj\.(\d+)\.", _P + r"input_projections.\1."),
    (_DEC + r"class_embed\.", "class_predictor."),
    (_DEC + r"mask_embed\.layers\.(\d+)\.", _P + r"decoder.mask_predictor.mask_embedder.\1.0."),
    (r"^criterion\.empty_weight$", "criterion.empty_weight"),
)
# Fused projections the hub stores split: (pattern, hub prefix, the three part names).
SPLITS = (
    (_BLOCK + r"attn\.qkv\.(weight|bias)$", _SWIN + "attention.self.", ("query", "key", "value")),
    (
        _DEC + r"transformer_self_attention_layers\.(\d+)\.self_attn\.in_proj_(weight|bias)$",
        _DL + r"self_attn.",
        ("q_proj", "k_proj", "v_proj"),
    ),
)
# Buffers of the original model that the hub format has no place for.
NORMALISATION_KEYS = ("pixel_mean", "pixel_std")


# Label names as the user may give them (see label_names).
Labels = str | os.PathLike | Sequence[str] | Mapping[Any, str] | None


# ------------------------------------------------------------------------------------- reading
class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays, dicts and plain values only: a .pkl from elsewhere runs no code
    (pickle's documented way to restrict what a file may construct)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store the arrays' bytes
    }  # fmt: skip

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it would construct {module}.{name}, which a weights file never holds")
        return super().find_class(module, name)


def _read_pkl(path: str) -> Any:
    with open(path, "rb") as f:
        try:
            return _ArraysOnly(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as e:
            raise ValueError(f"{path} is not a readable detectron2 .pkl checkpoint ({type(e).__name__}: {e})") from e


def read_original(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The weights of a detectron2 checkpoint (.pkl, or .pth with torch) as {original name: numpy array}."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is not a file")
    if not path.endswith(EXTENSIONS):
        raise ValueError(f"{path}: expected a detectron2 checkpoint ending in {' or '.join(EXTENSIONS)}")
    data = _read_pkl(path) if path.endswith(".pkl") else hf.read_torch_state(path, wrappers=("model",))
    if isinstance(data, Mapping) and "model" in data:
        data = data["model"]
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"{path} holds no weights: expected {{'model': {{name: array}}}} or {{name: array}}")
    state, bad = {}, []
    for key, value in data.items():
        if hasattr(value, "detach"):  # a torch tensor from a .pth
            value = value.detach().float().numpy() if value.is_floating_point() else value.numpy()
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            bad.append(f"{key!r}: {type(value).__name__}")
            continue
        state[key] = value
    if bad:
        raise ValueError(f"{path}: entries that are not named arrays: {', '.join(bad[:10])}")
    hf.check_finite(state, path)
    return state


# ----------------------------------------------------------------------------------- renaming
def to_hub_names(
    state: Mapping[str, np.ndarray], source: str = "the checkpoint"
) -> tuple[dict[str, np.ndarray], dict[str, str], list[str]]:
    """Renames original keys to hub keys; returns (hub state dict, {hub key: original key}, dropped keys).

    Raises ValueError listing every key that no rule knows. The normalisation buffers are checked
    against the values m2f_jax's processor applies and dropped."""
    out: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    dropped, unknown = [], []
    for key, array in state.items():
        if key in NORMALISATION_KEYS:
            _check_normalisation(key, array, source)
            dropped.append(key)
            continue
        for pattern, prefix, parts in SPLITS:
            match = re.match(pattern, key)
            if match:
                head, kind = match.expand(prefix), match.groups()[-1]
                if array.shape[0] % 3:
                    raise ValueError(f"{source}: {key} has {array.shape[0]} rows, not 3 equal parts (q, k, v)")
                for part, piece in zip(parts, np.split(array, 3, axis=0), strict=True):
                    out[f"{head}{part}.{kind}"] = piece
                    origin[f"{head}{part}.{kind}"] = key
                break
        else:
            for pattern, replacement in RENAMES:
                name, n = re.subn(pattern, replacement, key)
                if n:
                    out[name] = array
                    origin[name] = key
                    break
            else:
                unknown.append(key)
    if unknown:
        raise ValueError(
            f"{source}: {len(unknown)} keys are not Mask2Former (Swin or ResNet) weights:\n"
            + "\n".join(f"  {k}" for k in sorted(unknown))
        )
    return out, origin, dropped


def _check_normalisation(key: str, array: np.ndarray, source: str) -> None:
    expected = IMAGENET_MEAN if key == "pixel_mean" else IMAGENET_STD
    if array.size != 3 or not np.allclose(array.reshape(-1), expected, atol=1e-2):
        raise ValueError(
            f"{source}: {key} is {array.reshape(-1).tolist()}, but m2f_jax normalises with the ImageNet "
            f"{key.split('_')[1]} {list(expected)} (0-255 scale) that every original config uses"
        )


# ------------------------------------------------------------------------- the architecture
def _get(state: Mapping[str, np.ndarray], key: str, source: str) -> np.ndarray:
    if key not in state:
        raise ValueError(
            f"{source} is not a Mask2Former checkpoint: it has no {key} (an ImageNet backbone, or another model?)"
        )
    return state[key]


def _count(state: Mapping[str, np.ndarray], pattern: str) -> int:
    """1 + the largest index that `pattern`'s group takes among the keys (0 when none matches)."""
    found = [int(m[1]) for k in state if (m := re.match(pattern, k))]
    return max(found) + 1 if found else 0


def infer_swin(state: Mapping[str, np.ndarray], source: str = "the checkpoint") -> SwinConfig:
    """The Swin backbone the tensors determine: width and patch size from the patch embedding, depths
    from the block indices, heads and window size from each relative-position table ((2w-1)^2 rows,
    one column per head), the MLP ratio from fc1, the qkv bias from its presence."""
    proj = _get(state, "backbone.patch_embed.proj.weight", source)
    embed_dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    stages = _count(state, r"^backbone\.layers\.(\d+)\.")
    depths = tuple(_count(state, rf"^backbone\.layers\.{i}\.blocks\.(\d+)\.") for i in range(stages))
    heads, windows = [], set()
    for i in range(stages):
        table = _get(state, f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table", source)
        side = math.isqrt(table.shape[0])
        if side * side != table.shape[0] or side % 2 == 0:
            rows = table.shape[0]
            raise ValueError(f"{source}: layer {i}'s relative_position_bias_table has {rows} rows, not (2w-1)²")
        heads.append(int(table.shape[1]))
        windows.add((side + 1) // 2)
    if len(windows) != 1:
        raise ValueError(f"{source}: the stages' relative-position tables give window sizes {sorted(windows)}")
    fc1 = _get(state, "backbone.layers.0.blocks.0.mlp.fc1.weight", source)
    return SwinConfig(
        embed_dim=embed_dim,
        depths=depths,
        num_heads=tuple(heads),
        window_size=windows.pop(),
        patch_size=patch,
        mlp_ratio=fc1.shape[0] / fc1.shape[1],
        qkv_bias="backbone.layers.0.blocks.0.attn.qkv.bias" in state,
    )


def infer_resnet(state: Mapping[str, np.ndarray], source: str = "the checkpoint") -> dict[str, Any]:
    """HF `ResNetConfig` fields the tensors of a detectron2 ResNet determine (stem width, stage widths
    and depths, bottleneck or basic blocks). Mask2Former's ResNets put the stride in the 3x3 conv
    (STRIDE_IN_1X1 False), which is HF's default and cannot be read from the weights."""
    stem = _get(state, "backbone.stem.conv1.weight", source)
    stages = sorted({int(m[1]) for k in state if (m := re.match(r"^backbone\.res(\d)\.", k))})
    if stages != [2, 3, 4, 5]:
        raise ValueError(f"{source}: expected ResNet stages res2..res5, found {[f'res{s}' for s in stages]}")
    bottleneck = "backbone.res2.0.conv3.weight" in state
    last = "conv3" if bottleneck else "conv2"
    return dict(
        embedding_size=int(stem.shape[0]),
        hidden_sizes=[int(state[f"backbone.res{s}.0.{last}.weight"].shape[0]) for s in stages],
        depths=[_count(state, rf"^backbone\.res{s}\.(\d+)\.") for s in stages],
        layer_type="bottleneck" if bottleneck else "basic",
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )


def infer_head(state: Mapping[str, np.ndarray], source: str = "the checkpoint") -> dict[str, Any]:
    """The Mask2FormerConfig fields of the pixel decoder and transformer decoder the tensors determine
    (the attention heads from the deformable attention's sampling offsets: heads x levels x 4 points x 2)."""
    pd, pr = "sem_seg_head.pixel_decoder.", "sem_seg_head.predictor."
    queries = _get(state, pr + "query_feat.weight", source)
    classes = _get(state, pr + "class_embed.weight", source)
    levels = _count(state, r"^sem_seg_head\.pixel_decoder\.input_proj\.(\d+)\.")
    offsets = _get(state, pd + "transformer.encoder.layers.0.self_attn.sampling_offsets.weight", source)
    points = 4  # MSDeformAttn's n_points, fixed by the original pixel decoder (and HF)
    if levels == 0 or offsets.shape[0] % (levels * points * 2):
        raise ValueError(f"{source}: sampling_offsets has {offsets.shape[0]} rows, not heads x {levels} levels x 4 x 2")
    return dict(
        id2label={i: f"LABEL_{i}" for i in range(classes.shape[0] - 1)},
        feature_size=int(_get(state, pd + "input_proj.0.0.weight", source).shape[0]),
        mask_feature_size=int(_get(state, pd + "mask_features.weight", source).shape[0]),
        hidden_dim=int(queries.shape[1]),
        encoder_feedforward_dim=int(_get(state, pd + "transformer.encoder.layers.0.linear1.weight", source).shape[0]),
        encoder_layers=_count(state, r"^sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\."),
        # the original builds DEC_LAYERS - 1 layers; HF's decoder_layers is DEC_LAYERS
        decoder_layers=_count(state, r"^sem_seg_head\.predictor\.transformer_ffn_layers\.(\d+)\.") + 1,
        num_attention_heads=offsets.shape[0] // (levels * points * 2),
        dim_feedforward=int(_get(state, pr + "transformer_ffn_layers.0.linear1.weight", source).shape[0]),
        enforce_input_projection=pr + "input_proj.0.weight" in state,
        num_queries=int(queries.shape[0]),
    )


def infer_config(state: Mapping[str, np.ndarray], source: str = "the checkpoint") -> Mask2FormerConfig:
    """The model config the original tensors determine, with placeholder label names."""
    head = infer_head(state, source)
    if "backbone.stem.conv1.weight" in state:
        fields = infer_resnet(state, source)
        try:
            backbone = ResNetConfig(**fields)
        except ValueError as e:
            raise ValueError(f"{source} has a ResNet backbone ({fields}) that m2f_jax does not build: {e}") from e
        return Mask2FormerConfig(backbone_config=backbone, **head)
    return Mask2FormerConfig(backbone_config=infer_swin(state, source), **head)


# -------------------------------------------------------------------------------------- labels
def dataset_label_names(dataset: str, task: str) -> list[str] | None:
    """The class names, in the original's contiguous order, of a data set m2f_jax's sources define;
    None for one they do not (mapillary-vistas)."""
    from m2f_jax.data.sources import ade20k, cityscapes, tfds

    coco = [name for _, name in tfds.COCO_PANOPTIC]
    city = [name for _, name in cityscapes.EVAL_CLASSES]
    names = {
        ("coco", "panoptic"): coco,
        ("coco", "instance"): coco[: tfds.COCO_NUM_THINGS],
        ("ade", "semantic"): list(ade20k.NAMES),
        ("ade", "panoptic"): list(ade20k.NAMES),
        ("ade", "instance"): list(tfds.ADE_INSTANCE),
        ("cityscapes", "semantic"): city,
        ("cityscapes", "panoptic"): city,
        ("cityscapes", "instance"): city[cityscapes.FIRST_THING :],
    }
    return names.get((dataset, task))


def label_names(labels: Labels, num_labels: int) -> dict[int, str]:
    """id2label from `labels`: None (placeholders LABEL_i), a data set and task ("coco-panoptic",
    "ade-semantic", ... as in the preset names), a JSON file (a list of names, or {id: name} like HF's
    id2label files), a list of names, or {id: name}. The count must be the checkpoint's."""
    if labels is None:
        return {i: f"LABEL_{i}" for i in range(num_labels)}
    where = "labels"
    if isinstance(labels, (str, os.PathLike)):
        text = os.fspath(labels)
        dataset, _, task = text.rpartition("-")
        if (dataset, task) in DATASET_LABELS:
            names = dataset_label_names(dataset, task)
            if names is None:
                raise ValueError(f"m2f_jax has no class names for {text}; give them as a list or a JSON file")
            labels, where = names, f"labels of {text}"
        elif os.path.isfile(text):
            where = text
            try:
                with open(text, encoding="utf-8") as f:
                    labels = json.load(f)
            except (OSError, ValueError) as e:
                raise ValueError(f"{text}: not a readable JSON file of label names ({e})") from e
        else:
            known = ", ".join(f"{d}-{t}" for d, t in DATASET_LABELS)
            raise ValueError(f"labels {text!r} is neither a JSON file nor a data set name ({known})")
    if isinstance(labels, Mapping):
        try:
            id2label = {int(k): str(v) for k, v in labels.items()}
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: the ids of an {{id: name}} mapping must be integers ({e})") from e
        if sorted(id2label) != list(range(len(id2label))):
            raise ValueError(f"{where}: the ids must be 0..{len(id2label) - 1}, got {sorted(id2label)[:10]}...")
    elif isinstance(labels, Sequence) and all(isinstance(n, str) for n in labels):
        id2label = dict(enumerate(labels))
    else:
        raise ValueError(f"{where}: expected a list of names or an {{id: name}} mapping, got {type(labels).__name__}")
    if len(id2label) != num_labels:
        raise ValueError(
            f"{where}: {len(id2label)} label names given, but the checkpoint's class_embed has {num_labels} classes"
        )
    return id2label


# ------------------------------------------------------------------------------------- loading
# The fields a preset fixes that the tensors do not show; the rest must agree with the tensors.
PRESET_ONLY_FIELDS = ("image_size", "drop_path_rate")


def _apply_preset(config: Mask2FormerConfig, name: str, source: str) -> Mask2FormerConfig:
    expected = preset(name)
    backbone = {f: getattr(expected.backbone_config, f) for f in PRESET_ONLY_FIELDS}
    config = config.replace(backbone_config=dataclasses.replace(config.backbone_config, **backbone))
    ours, theirs = config.to_hf_dict(), expected.to_hf_dict()
    keys = [k for k in ours if k not in ("id2label", "label2id") and ours[k] != theirs[k]]
    differ = [f"{k}: checkpoint {ours[k]} vs preset {theirs[k]}" for k in keys]
    if differ:
        raise ValueError(f"{source} does not match the preset {name}:\n" + "\n".join(f"  {d}" for d in differ))
    return config


def _preset_labels(name: str) -> str | None:
    """The data set and task of a preset name ("coco-panoptic"), when m2f_jax knows its class names."""
    for dataset, task in DATASET_LABELS:
        if name.endswith(f"-{dataset}-{task}") and dataset_label_names(dataset, task) is not None:
            return f"{dataset}-{task}"
    return None


def load_original(
    path: str | os.PathLike,
    *,
    labels: Labels = None,
    preset_name: str | None = None,
) -> tuple[Mask2FormerConfig, dict[str, np.ndarray], list[str]]:
    """(config, our parameters, ignored original keys) of an original checkpoint, all checked: the file
    readable and finite, every key known, the architecture consistent with `preset_name` when given,
    the labels' count, and every parameter's name and shape against the model the config describes.
    Label names come from `labels`, else from the preset's data set, else placeholders."""
    source = os.fspath(path)
    state = read_original(source)
    config = infer_config(state, source)
    if preset_name is not None:
        config = _apply_preset(config, preset_name, source)
        if labels is None:
            labels = _preset_labels(preset_name)
    config = config.replace(id2label=label_names(labels, config.num_labels))
    hub_state, origin, dropped = to_hub_names(state, source)
    params, ignored = hf.hf_to_flax(hub_state)
    _check(params, config, origin, source)
    return config, params, dropped + sorted({origin[k] for k in ignored})


def _check(params: Mapping[str, np.ndarray], config: Mask2FormerConfig, origin: Mapping[str, str], source: str) -> None:
    """check_params, with each listed parameter followed by the original key it came from."""
    from m2f_jax.weights import param_shapes

    ours_to_original = {}
    for hub_key, original in origin.items():
        for name in hf.hf_to_flax({hub_key: np.zeros((3, 1))})[0]:  # names only: the shape is irrelevant here
            ours_to_original[name] = original
    try:
        hf.check_params(params, param_shapes(config))
    except hf.CheckpointMismatch as e:
        lines = []
        for line in str(e).splitlines():
            name = line.strip().split(":")[0]
            lines.append(f"{line}  <- {ours_to_original[name]}" if name in ours_to_original else line)
        raise hf.CheckpointMismatch(f"{source}: " + "\n".join(lines)) from None


def is_original_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` names a file this module reads (by its extension)."""
    return os.path.isfile(path) and os.fspath(path).endswith(EXTENSIONS)


def convert_original(
    source: str | os.PathLike,
    destination: str | os.PathLike | None = None,
    *,
    labels: Labels = None,
    preset_name: str | None = None,
    overwrite: bool = False,
    seed: int = 0,
):
    """Converts an original checkpoint file; returns (model, ignored original keys). With `destination`,
    also writes the converted folder (config.json + flax_model.safetensors) atomically, as convert_hf
    does; an existing non-empty destination is replaced only with `overwrite=True`, checked first."""
    from m2f_jax import weights

    if destination is not None:
        weights.check_destination(destination, overwrite)
    config, params, ignored = load_original(source, labels=labels, preset_name=preset_name)
    model = weights.model_from_params(config, params, seed)
    model.name_or_path = os.fspath(source)
    if destination is not None:
        weights.save_model(model, destination, overwrite=overwrite)
    return model, ignored
