"""Building models from weights, and our own weight files (no torch needed to read them).

A converted folder holds `config.json` (HF's format) and `flax_model.safetensors`, whose keys are
the model's dotted parameter paths (`model.transformer_module.decoder.layernorm.scale`, ...).
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m2f_jax.config import Mask2FormerConfig
from m2f_jax.conversion import hf
from m2f_jax.modeling import Mask2FormerForUniversalSegmentation

FLAX_WEIGHTS = "flax_model.safetensors"
# Files besides the weights that a converted folder keeps (the image processor's settings).
CARRIED_FILES = ("preprocessor_config.json",)


def _path_name(path) -> str:
    return ".".join(str(p) for p in path)


@functools.lru_cache(maxsize=8)
def _abstract_parts(config: Mask2FormerConfig) -> tuple[nnx.GraphDef, tuple]:
    """The model's structure and flat abstract state, traced once per config: tracing the
    initialisers takes seconds (NNX's RNG counter updates under a trace cost O(n) each)."""
    model = nnx.eval_shape(lambda: Mask2FormerForUniversalSegmentation(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    return graphdef, tuple(nnx.to_flat_state(state))


def abstract_model(config: Mask2FormerConfig) -> Mask2FormerForUniversalSegmentation:
    """The model with shapes but no values (free to build, whatever its size)."""
    graphdef, flat = _abstract_parts(config)
    return nnx.merge(graphdef, nnx.from_flat_state(list(flat)))


def param_shapes(config: Mask2FormerConfig) -> dict[str, tuple[int, ...]]:
    _, flat = _abstract_parts(config)
    return {_path_name(path): tuple(v.shape) for path, v in flat if isinstance(v, nnx.Param)}


def model_from_params(
    config: Mask2FormerConfig, params: Mapping[str, np.ndarray], seed: int = 0
) -> Mask2FormerForUniversalSegmentation:
    """A model whose parameters are `params` (checked: names and shapes) and whose dropout RNG
    streams start from `seed`, without spending time on a random initialisation."""
    hf.check_params(params, param_shapes(config))
    graphdef, abstract = _abstract_parts(config)
    keys = iter(jax.random.split(jax.random.key(seed), len(abstract)))
    flat = []
    for path, var in abstract:
        name = _path_name(path)
        if isinstance(var, nnx.Param):
            value = jnp.asarray(params[name], dtype=var.dtype)
        elif isinstance(var, nnx.RngKey):
            value = next(keys)
        else:  # RNG counters and any other small state start at zero
            value = jnp.zeros(var.shape, var.dtype)
        flat.append((path, var.replace(value)))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def model_params(model: Mask2FormerForUniversalSegmentation) -> dict[str, np.ndarray]:
    return {_path_name(path): np.asarray(v[...]) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def save_model(model: Mask2FormerForUniversalSegmentation, folder: str) -> None:
    from safetensors.numpy import save_file

    os.makedirs(folder, exist_ok=True)
    model.config.save(folder)
    save_file(model_params(model), os.path.join(folder, FLAX_WEIGHTS))


def convert_hf(source: str, destination: str | None = None, revision: str | None = None):
    """Converts a HF checkpoint (folder or hub id); returns (model, ignored keys).

    With `destination`, also writes the converted folder (config.json, flax_model.safetensors,
    and the preprocessor config when the source has one).
    """
    config, state_dict, folder = hf.load_hf_checkpoint(source, revision)
    params, ignored = hf.hf_to_flax(state_dict)
    model = model_from_params(config, params)
    if destination is not None:
        save_model(model, destination)
        for name in CARRIED_FILES:
            if os.path.isfile(os.path.join(folder, name)):
                shutil.copy(os.path.join(folder, name), os.path.join(destination, name))
    return model, ignored


def from_pretrained(path: str, revision: str | None = None, seed: int = 0) -> Mask2FormerForUniversalSegmentation:
    """The ready model from a converted folder, a raw HF `save_pretrained` folder, or a hub id."""
    if os.path.isfile(os.path.join(path, FLAX_WEIGHTS)):
        from safetensors.numpy import load_file

        config = Mask2FormerConfig.load(path)
        return model_from_params(config, load_file(os.path.join(path, FLAX_WEIGHTS)), seed)
    if os.path.isdir(path) and not hf.is_hf_folder(path):
        raise FileNotFoundError(
            f"{path} has neither {FLAX_WEIGHTS} nor Hugging Face weights ({', '.join(hf.WEIGHT_FILES)})"
        )
    return convert_hf(path, revision=revision)[0]
