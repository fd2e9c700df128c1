"""Building models from weights, and our own weight files (no torch needed to read them).

A converted folder holds `config.json` (HF's format) and `flax_model.safetensors`, whose keys are
the model's dotted parameter paths (`model.transformer_module.decoder.layernorm.scale`, ...). The
model's weights are its trained `nnx.Param`s and its `Frozen` ones (ResNet's frozen BatchNorm): both
are saved and loaded; "params" below means both.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import uuid
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from m2f_jax import hub
from m2f_jax.config import Mask2FormerConfig
from m2f_jax.conversion import hf, original
from m2f_jax.modeling import Mask2FormerForUniversalSegmentation
from m2f_jax.modeling.frozen_batchnorm import Frozen

FLAX_WEIGHTS = "flax_model.safetensors"
# The variables that are the model's weights: trained and frozen ones (not RNG state).
WEIGHT_TYPES = (nnx.Param, Frozen)
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
    return {_path_name(path): tuple(v.shape) for path, v in flat if isinstance(v, WEIGHT_TYPES)}


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
        if isinstance(var, WEIGHT_TYPES):
            value = jnp.asarray(params[name], dtype=var.dtype)
        elif isinstance(var, nnx.RngKey):
            value = next(keys)
        else:  # RNG counters and any other small state start at zero
            value = jnp.zeros(var.shape, var.dtype)
        flat.append((path, var.replace(value)))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def model_params(model: Mask2FormerForUniversalSegmentation) -> dict[str, np.ndarray]:
    flat = nnx.to_flat_state(nnx.state(model, nnx.Any(*WEIGHT_TYPES)))
    return {_path_name(path): np.asarray(v[...]) for path, v in flat}


def save_model(
    model: Mask2FormerForUniversalSegmentation,
    folder: str | os.PathLike,
    *,
    overwrite: bool = False,
    carried: tuple[str | os.PathLike, ...] = (),
) -> None:
    """Writes `folder` (config.json + flax_model.safetensors, and a copy of each file in `carried`, e.g. a
    preprocessor_config.json) atomically; an existing non-empty folder is replaced, whole, only with
    `overwrite=True`."""
    check_destination(folder, overwrite)
    _write_converted(model, folder, overwrite, carried=tuple(os.fspath(f) for f in carried))


def check_destination(folder: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuses an output folder that cannot or must not be written, before any work: an existing file,
    an existing non-empty folder (unless `overwrite`), or a parent we cannot write to."""
    path = os.path.abspath(os.fspath(folder))
    if os.path.lexists(path) and not os.path.isdir(path):
        raise FileExistsError(f"the destination {os.fspath(folder)} exists and is not a folder")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise FileExistsError(
            f"the destination {os.fspath(folder)} exists and is not empty; "
            "pass overwrite=True (--overwrite) to replace it whole"
        )
    ancestor = os.path.dirname(path)
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise NotADirectoryError(f"cannot create {os.fspath(folder)}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot create {os.fspath(folder)}: no permission to write in {ancestor}")


def check_apart(source: str, destination: str | os.PathLike) -> None:
    """A conversion never writes into its source, nor replaces a folder that holds it."""
    src, dst = os.path.realpath(source), os.path.realpath(os.fspath(destination))
    if os.path.commonpath([src, dst]) == src:
        where = "is" if src == dst else "is inside"
        raise ValueError(
            f"the destination {os.fspath(destination)} {where} the source folder {source}; "
            "the converter never writes into its source: choose a destination outside it"
        )
    if os.path.commonpath([src, dst]) == dst:
        raise ValueError(
            f"the source {source} is inside the destination {os.fspath(destination)}, which would be replaced; "
            "choose another destination"
        )


def _write_converted(model, folder: str | os.PathLike, overwrite: bool, carried: tuple[str, ...]) -> None:
    """Writes our model folder (config.json, flax_model.safetensors, copies of `carried`) atomically."""
    from safetensors.numpy import save_file

    def fill(tmp: str) -> None:
        model.config.save(tmp)
        save_file(model_params(model), os.path.join(tmp, FLAX_WEIGHTS))
        for file in carried:
            shutil.copyfile(file, os.path.join(tmp, os.path.basename(file)))

    write_folder(folder, fill, overwrite=overwrite)


def write_folder(folder: str | os.PathLike, fill: Callable[[str], None], *, overwrite: bool = False) -> None:
    """Builds a folder by calling `fill(temporary sibling folder)`, then renames it into place: a crash
    leaves no half-written folder, and an overwritten folder keeps none of its old files. Call
    check_destination first, before any expensive work; it is checked again just before the rename."""
    path = os.path.abspath(os.fspath(folder))
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    os.mkdir(tmp)
    try:
        fill(tmp)
        for file in os.listdir(tmp):
            with open(os.path.join(tmp, file), "rb") as f:
                os.fsync(f.fileno())
        _move_into_place(tmp, path, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _move_into_place(tmp: str, path: str, overwrite: bool) -> None:
    if not os.path.lexists(path):
        os.rename(tmp, path)
        return
    if os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path):
        os.rmdir(path)
        os.rename(tmp, path)
        return
    check_destination(path, overwrite)  # it may have changed since the first check
    old = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.old-{uuid.uuid4().hex[:8]}")
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    if os.path.islink(old):
        os.unlink(old)
    else:
        shutil.rmtree(old)


def _source_folder(name_or_path: str | os.PathLike, revision: str | None) -> str:
    """The local folder of a source: the folder given, or the hub repository's files (cached or fetched)."""
    path, local = hub.local_or_hub(name_or_path)
    if local:
        if not os.path.isdir(path):
            raise NotADirectoryError(
                f"{path} is a file; expected a folder (config.json with {FLAX_WEIGHTS} or Hugging Face weights) "
                "or a hub id"
            )
        return path
    folder = hub.snapshot(path, revision, [*hf.SAFETENSORS_PATTERNS, FLAX_WEIGHTS])
    if os.path.isfile(os.path.join(folder, FLAX_WEIGHTS)) or glob.glob(os.path.join(folder, "model*.safetensors")):
        return folder
    return hub.snapshot(path, revision, hf.BIN_PATTERNS)


def _convert(folder: str, seed: int = 0):
    config, state_dict = hf.load_hf_checkpoint(folder)
    params, ignored = hf.hf_to_flax(state_dict)
    return model_from_params(config, params, seed), ignored


def export_source(
    source: str | os.PathLike | Mask2FormerForUniversalSegmentation,
    destination: str | os.PathLike,
    revision: str | None = None,
) -> Mask2FormerForUniversalSegmentation:
    """The model an export writes out: `source` itself, or what `from_pretrained` reads from it; a
    destination that is, lies inside, or holds a local source folder is refused before it is read."""
    if isinstance(source, Mask2FormerForUniversalSegmentation):
        return source
    path, local = hub.local_or_hub(source)
    if local:
        check_apart(path, destination)
    return from_pretrained(source, revision=revision)


def convert_hf(
    source: str | os.PathLike,
    destination: str | os.PathLike | None = None,
    revision: str | None = None,
    *,
    overwrite: bool = False,
):
    """Converts a HF checkpoint (folder or hub id); returns (model, ignored keys).

    With `destination`, also writes the converted folder (config.json, flax_model.safetensors, and the
    preprocessor config when the source has one), atomically. An existing non-empty destination is
    replaced, whole, only with `overwrite=True`; a destination equal to, inside, or holding the source is
    always refused (the source is never modified). All of this is checked before any conversion.
    """
    path, local = hub.local_or_hub(source)
    if destination is not None:
        if local:
            check_apart(path, destination)
        check_destination(destination, overwrite)
    folder = _source_folder(source, revision)
    if destination is not None:
        check_apart(folder, destination)
    model, ignored = _convert(folder)
    model.name_or_path = os.fspath(source)
    if destination is not None:
        carried = tuple(os.path.join(folder, n) for n in CARRIED_FILES if os.path.isfile(os.path.join(folder, n)))
        _write_converted(model, destination, overwrite, carried)
    return model, ignored


def read_converted(folder: str) -> tuple[Mask2FormerConfig, dict[str, np.ndarray]]:
    """(config, parameters) of a converted folder, checked: readable files, all weights finite."""
    config = hf.read_config(folder)
    weights = os.path.join(folder, FLAX_WEIGHTS)
    params = hf.read_safetensors(weights)
    hf.check_finite(params, weights)
    return config, params


def from_pretrained(
    name_or_path: str | os.PathLike, revision: str | None = None, seed: int = 0
) -> Mask2FormerForUniversalSegmentation:
    """The ready model from a converted folder, a raw HF `save_pretrained` folder, a hub id (read from
    the local HF cache when offline), a train.py run folder (the parameters of its latest checkpoint,
    see m2f_jax.training.export), or an original model-zoo file (.pkl / .pth; label names are placeholders:
    m2f_jax.conversion.original.convert_original takes them). `model.name_or_path` records the source as given."""
    from m2f_jax.training import export  # imports this module

    path, local = hub.local_or_hub(name_or_path)
    if local and original.is_original_checkpoint(path):
        model = original.convert_original(path, seed=seed)[0]
        model.name_or_path = os.fspath(name_or_path)
        return model
    if local and export.is_run(path):
        model = export.run_model(path, seed=seed)
        model.name_or_path = os.fspath(name_or_path)
        return model
    folder = _source_folder(name_or_path, revision)
    if os.path.isfile(os.path.join(folder, FLAX_WEIGHTS)):
        model = model_from_params(*read_converted(folder), seed)
    elif hf.is_hf_folder(folder):
        model = _convert(folder, seed)[0]
    else:
        raise FileNotFoundError(
            f"{folder} has neither {FLAX_WEIGHTS} nor Hugging Face weights ({', '.join(hf.WEIGHT_FILES)})"
        )
    model.name_or_path = os.fspath(name_or_path)
    return model
