"""Our Flax parameters -> a Hugging Face Mask2Former checkpoint: the inverse of `conversion.hf`.

`flax_to_hf` undoes `hf.hf_to_flax` exactly (`hf_to_flax(flax_to_hf(p)) == p`, bit for bit): a table of
renames from our parameter paths to the hub's key names, then the layout changes (kernel (in, out) ->
weight (out, in), conv HWIO -> OIHW, norm `scale` -> `weight`, the cross-attention's q, k and v merged
back into `in_proj`), plus the tensors that `save_pretrained` writes but our model does not hold,
computed from the config (`EXTRA_TENSORS`). The result has exactly the key set HF's `save_pretrained`
writes, so `Mask2FormerForUniversalSegmentation.from_pretrained` loads it with nothing missing or
unexpected. `export_hf` writes such a folder (config.json, model.safetensors, preprocessor_config.json).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping

import numpy as np

from m2f_jax.config import Mask2FormerConfig, SwinConfig

HF_WEIGHTS = "model.safetensors"

# (pattern, replacement) applied in order to each of our parameter paths: the inverse of hf.RENAMES
# (whose last rules only accept in-memory spellings, which need no inverse).
RENAMES = (
    (r"\.attention\.q_proj\.", ".attention.self.query."),
    (r"\.attention\.k_proj\.", ".attention.self.key."),
    (r"\.attention\.v_proj\.", ".attention.self.value."),
    (r"\.attention\.relative_position_bias_table$", ".attention.self.relative_position_bias_table"),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.blocks\.(\d+)\.mlp\.fc1\.", r".blocks.\1.intermediate.dense."),
    (r"\.blocks\.(\d+)\.mlp\.fc2\.", r".blocks.\1.output.dense."),
    (r"(pixel_level_module\.decoder\.input_projections\.\d+)\.conv\.", r"\1.0."),
    (r"(pixel_level_module\.decoder\.input_projections\.\d+)\.norm\.", r"\1.1."),
    (r"\.lateral_convs\.(\d+)\.conv\.", lambda m: f".adapter_{int(m[1]) + 1}.0."),
    (r"\.lateral_convs\.(\d+)\.norm\.", lambda m: f".adapter_{int(m[1]) + 1}.1."),
    (r"\.output_convs\.(\d+)\.conv\.", lambda m: f".layer_{int(m[1]) + 1}.0."),
    (r"\.output_convs\.(\d+)\.norm\.", lambda m: f".layer_{int(m[1]) + 1}.1."),
    (r"\.mask_embedder\.layers\.(\d+)\.", r".mask_embedder.\1.0."),
    (
        r"transformer_module\.(queries_embedder|queries_features|level_embed)\.embedding$",
        r"transformer_module.\1.weight",
    ),
)

# The cross-attention's separate projections, which HF keeps as one fused `in_proj` (q, k, v stacked).
_FUSED = re.compile(r"^(?P<prefix>.*\.cross_attn)\.(?P<proj>[qkv])_proj\.(?P<kind>kernel|bias)$")


def _loss_class_weights(config: Mask2FormerConfig) -> dict[str, np.ndarray]:
    """HF's loss buffer: weight 1 per class and `no_object_weight` for the last ("no object")."""
    weights = np.ones(config.num_labels + 1, np.float32)
    weights[-1] = config.no_object_weight
    return {"criterion.empty_weight": weights}


def _swin_final_norm(config: Mask2FormerConfig) -> dict[str, np.ndarray]:
    """SwinModel's last LayerNorm, which the backbone never applies (HF neither): written at HF's
    initial values (ones, zeros) because save_pretrained writes it."""
    if not isinstance(config.backbone_config, SwinConfig):
        return {}
    width = config.backbone_config.stage_channels[-1]
    prefix = "model.pixel_level_module.encoder.swin.layernorm"
    return {f"{prefix}.weight": np.ones(width, np.float32), f"{prefix}.bias": np.zeros(width, np.float32)}


# Tensors that save_pretrained writes beyond our parameters, each computed from the config. (Swin's
# relative_position_index is a non-persistent buffer in transformers 5: not written, not needed.)
EXTRA_TENSORS: tuple[Callable[[Mask2FormerConfig], dict[str, np.ndarray]], ...] = (
    _loss_class_weights,
    _swin_final_norm,
)


def _rename(name: str) -> str:
    for pattern, replacement in RENAMES:
        name = re.sub(pattern, replacement, name)
    return name


def _leaf(name: str, array: np.ndarray) -> tuple[str, np.ndarray]:
    """The inverse of hf._leaf: kernel -> weight (linear transposed, conv HWIO -> OIHW), scale -> weight."""
    if name.endswith(".kernel"):
        base = name[: -len(".kernel")]
        if array.ndim == 4:
            return base + ".weight", np.ascontiguousarray(array.transpose(3, 2, 0, 1))
        if array.ndim == 2:
            return base + ".weight", np.ascontiguousarray(array.T)
        raise ValueError(f"{name}: expected a 2-D (linear) or 4-D (conv) kernel, got shape {array.shape}")
    if name.endswith(".scale"):
        return name[: -len(".scale")] + ".weight", array
    return name, array


def _fuse(parts: dict[tuple[str, str], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """{(prefix, kind): {q, k, v: array}} -> HF's in_proj_weight (3E, E) and in_proj_bias (3E,)."""
    out = {}
    for (prefix, kind), projections in parts.items():
        missing = sorted(set("qkv") - set(projections))
        if missing:
            raise ValueError(f"{prefix}: the {kind} of {', '.join(p + '_proj' for p in missing)} is missing")
        stacked = [projections[p].T if kind == "kernel" else projections[p] for p in "qkv"]
        out[f"{prefix}.in_proj_{'weight' if kind == 'kernel' else 'bias'}"] = np.ascontiguousarray(
            np.concatenate(stacked, axis=0)
        )
    return out


def flax_to_hf(params: Mapping[str, np.ndarray], config: Mask2FormerConfig | None = None) -> dict[str, np.ndarray]:
    """{our dotted parameter path: array} -> {hub key: array}, the keys `save_pretrained` writes. With
    `config`, the tensors of EXTRA_TENSORS are added (without it, only the parameters are mapped)."""
    state: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    fused: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for name, array in params.items():
        array = np.asarray(array)
        match = _FUSED.match(name)
        if match:
            fused.setdefault((match["prefix"], match["kind"]), {})[match["proj"]] = array
            continue
        key, array = _leaf(_rename(name), array)
        if key in sources:
            raise ValueError(f"{name} and {sources[key]} would both be written as {key}")
        sources[key] = name
        state[key] = array
    extra = [item for compute in EXTRA_TENSORS for item in compute(config).items()] if config is not None else []
    for key, array in [*_fuse(fused).items(), *extra]:
        if key in state:
            raise ValueError(f"{key} is written twice (a parameter path maps onto a fused or computed tensor)")
        state[key] = array
    if config is not None:  # torch's BatchNorm also saves a step counter, which frozen statistics never use
        for key in [k for k in state if k.endswith(".running_mean")]:
            state[key.removesuffix("running_mean") + "num_batches_tracked"] = np.zeros((), np.int64)
    return state


def export_hf(
    source,
    destination: str | os.PathLike,
    *,
    processor=None,
    overwrite: bool = False,
    revision: str | None = None,
) -> str:
    """Writes `destination` as a Hugging Face checkpoint folder (config.json, model.safetensors with the
    hub's key names, preprocessor_config.json) that transformers' `from_pretrained` loads; returns its path.

    source: a model (ours, e.g. trained or built here) or anything `m2f_jax.from_pretrained` reads (a
    converted folder, a raw HF folder, a hub id, a train.py run folder). processor: the ImageProcessor to
    write; default: the source's preprocessor_config.json (see inference.default_processor), else HF's
    defaults. The folder is written atomically; an existing non-empty one is replaced, whole, only with
    `overwrite=True`; a destination that is, lies inside, or holds a local source is refused. All of this
    is checked before the model is read.
    """
    from m2f_jax import weights
    from m2f_jax.inference import default_processor

    weights.check_destination(destination, overwrite)
    model = weights.export_source(source, destination, revision)
    processor = default_processor(model) if processor is None else processor
    state = flax_to_hf(weights.model_params(model), model.config)

    def fill(folder: str) -> None:
        from safetensors.numpy import save_file

        model.config.save(folder)
        save_file(state, os.path.join(folder, HF_WEIGHTS), metadata={"format": "pt"})  # transformers reads "pt"
        processor.save_pretrained(folder)

    weights.write_folder(destination, fill, overwrite=overwrite)
    return os.fspath(destination)
