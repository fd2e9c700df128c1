"""The model as a serving artifact: its jitted forward pass serialized with jax.export (StableHLO), for a
server that runs it with `m2f_jax.serving` (jax, numpy and safetensors; no model code, no flax).

The folder (written atomically, as every output here):
    model.jaxexport           the serialized `jax.export.Exported`: (weights, pixel_values, pixel_mask) ->
                              {class_queries_logits, masks_queries_logits}, images of a fixed H x W, the
                              batch symbolic (any size >= 1) unless fixed at export
    flax_model.safetensors    the weights, by our dotted parameter names
    config.json, preprocessor_config.json   so the folder is also a model folder `from_pretrained` reads
    serving.json              what a server needs: the inputs' names, shapes and dtypes, the outputs,
                              id2label, the post-processing settings, the file names

The weights are arguments of the exported function, not constants inside it: a Swin-L model's ~850 MB
embedded as constants would make a module beyond flatbuffers' 2 GB comfort zone and XLA's constant handling
(compile-time memory and time grow with them), and every retrained model would need a new export; as a
safetensors file they are read (memory-mapped) and put on the device once, then passed by reference to each
call, and the same StableHLO serves any weights of the same architecture.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import export as jax_export

from m2f_jax import hub, serving, weights
from m2f_jax.modeling import Mask2FormerForUniversalSegmentation
from m2f_jax.processing import postprocess
from m2f_jax.processing.preprocess import CONFIG_NAME, ImageProcessor

EXPORTED = "model.jaxexport"
OUTPUTS = ("class_queries_logits", "masks_queries_logits")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
_POSTPROCESS = {
    "semantic": postprocess.post_process_semantic_segmentation,
    "instance": postprocess.post_process_instance_segmentation,
    "panoptic": postprocess.post_process_panoptic_segmentation,
}


def _settings(function) -> dict:
    """A post-processing function's tunable defaults (thresholds, top_k, ...), JSON-ready."""
    skip = {"outputs", "target_sizes", "image_sizes"}
    out = {}
    for name, p in inspect.signature(function).parameters.items():
        if name in skip or name.startswith("return_") or p.default is inspect.Parameter.empty:
            continue
        out[name] = [] if name == "label_ids_to_fuse" and p.default is None else p.default
    return out


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s >= 1 for s in size):
        raise ValueError(f"size must be (height, width), two positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def _forward(model: Mask2FormerForUniversalSegmentation):
    """(the flat weights {dotted name: array}, the function of (weights, pixel_values, pixel_mask))."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    leaves = nnx.to_flat_state(params)
    paths = {".".join(str(p) for p in path): path for path, _ in leaves}
    flat = {".".join(str(p) for p in path): np.asarray(v[...]) for path, v in leaves}

    def forward(weights_by_name, pixel_values, pixel_mask):
        state = nnx.from_flat_state([(paths[n], nnx.Param(weights_by_name[n])) for n in paths])
        served = nnx.merge(graphdef, state, rest)
        served.eval()  # no dropout, whatever mode the given model was in
        outputs = served(pixel_values, pixel_mask=pixel_mask)
        return {name: getattr(outputs, name) for name in OUTPUTS}

    return flat, forward


def export_serving(
    source,
    destination: str | os.PathLike,
    size: Sequence[int],
    *,
    batch: int | None = None,
    platforms: Sequence[str] | None = None,
    dtype: str | None = None,
    processor: ImageProcessor | None = None,
    task: str | None = None,
    overwrite: bool = False,
    revision: str | None = None,
) -> str:
    """Writes the serving folder described in the module docstring; returns its path.

    source: a model, or anything `m2f_jax.from_pretrained` reads. size: the padded (height, width) every
    input has. batch: None for a symbolic batch (any size), or a fixed one. platforms:
    where the artifact may run ("cpu", "cuda", "rocm", "tpu"); default this machine's backend. dtype: the
    compute dtype ("bfloat16" on accelerators; default float32). processor: written as
    preprocessor_config.json with pad_size = `size` (default: the source's, see inference.default_processor);
    give one whose resized images fit in `size` (e.g. a longest edge of at most min(size)). task: the default
    task recorded for the server. Checked before any work: the destination (as export_hf), size, batch, platforms, task.
    """
    from m2f_jax.inference import default_processor

    weights.check_destination(destination, overwrite)
    height, width = _check_size(size)
    platforms = tuple(platforms) if platforms else (jax_export.default_export_platform(),)
    unknown = sorted(set(platforms) - set(PLATFORMS))
    if unknown:
        raise ValueError(f"unknown platforms {unknown}; choose among {', '.join(PLATFORMS)}")
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be a positive integer or None (symbolic), got {batch!r}")
    if task is not None and task not in _POSTPROCESS:
        raise ValueError(f"task must be one of {', '.join(_POSTPROCESS)}, got {task!r}")
    if isinstance(source, Mask2FormerForUniversalSegmentation):
        model = source
    else:
        path, local = hub.local_or_hub(source)
        if local:
            weights.check_apart(path, destination)
        model = weights.from_pretrained(source, revision=revision)
    processor = default_processor(model) if processor is None else processor
    # The written processor pads every batch to the exported size (it refuses an image resized beyond it).
    processor = dataclasses.replace(processor, pad_size={"height": height, "width": width})

    model = nnx.clone(model)
    model.set_dtype(dtype)
    flat, forward = _forward(model)
    (b,) = jax_export.symbolic_shape("batch") if batch is None else (batch,)
    channels = model.config.backbone_config.num_channels
    specs = (
        {name: jax.ShapeDtypeStruct(a.shape, a.dtype) for name, a in flat.items()},
        jax.ShapeDtypeStruct((b, height, width, channels), jnp.float32),
        jax.ShapeDtypeStruct((b, height, width), jnp.bool_),
    )
    exported = jax_export.export(jax.jit(forward), platforms=platforms)(*specs)
    shape = [batch, height, width]
    manifest = {
        "format": serving.FORMAT,
        "exported": EXPORTED,
        "weights": weights.FLAX_WEIGHTS,
        "processor": CONFIG_NAME,
        "platforms": list(platforms),
        "compute_dtype": str(jnp.dtype(dtype)) if dtype else "float32",
        "inputs": [
            {"name": "pixel_values", "shape": [*shape, channels], "dtype": "float32"},
            {"name": "pixel_mask", "shape": shape, "dtype": "bool"},
        ],
        "outputs": [
            {"name": name, "shape": [d if isinstance(d, int) else None for d in aval.shape], "dtype": str(aval.dtype)}
            for name, aval in zip(OUTPUTS, exported.out_avals, strict=True)
        ],
        "mask_stride": 4,  # masks_queries_logits are at 1/4 of the padded input
        "id2label": {str(k): v for k, v in model.config.id2label.items()},
        "task": task,
        "postprocess": {name: _settings(function) for name, function in _POSTPROCESS.items()},
    }

    def fill(folder: str) -> None:
        from safetensors.numpy import save_file

        with open(os.path.join(folder, EXPORTED), "wb") as f:
            f.write(exported.serialize())
        save_file(flat, os.path.join(folder, weights.FLAX_WEIGHTS))
        model.config.save(folder)
        processor.save_pretrained(folder)
        with open(os.path.join(folder, serving.MANIFEST), "w") as f:
            json.dump(manifest, f, indent=2)

    weights.write_folder(destination, fill, overwrite=overwrite)
    return os.fspath(destination)
