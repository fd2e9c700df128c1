"""Runs a model exported by `m2f_jax.export_serving` (StableHLO, jax.export): a server needs this file, jax,
numpy and safetensors, and neither the model's code nor flax.

    from m2f_jax.serving import ServedModel
    served = ServedModel.load("exported/")              # serving.json, model.jaxexport, the weights
    outputs = served(pixel_values, pixel_mask)          # (B, H, W, 3) float32, (B, H, W) bool
    outputs["class_queries_logits"], outputs["masks_queries_logits"]

`served.manifest` holds what a server needs besides: the inputs' names, shapes and dtypes, id2label, the
post-processing settings, and the name of the image processor's file (preprocessor_config.json, HF's
format, which m2f_jax.ImageProcessor and transformers read).
Smaller images go into the fixed H x W padded at the bottom and right, with pixel_mask True on their own
pixels: their outputs are then those of the image alone (on its region of the mask logits, at stride 4).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from jax import export as jax_export

MANIFEST = "serving.json"
FORMAT = "m2f_jax.serving/1"


class ServedModel:
    """An exported forward pass with its weights on the device; call it on padded batches."""

    def __init__(self, exported: jax_export.Exported, weights: dict[str, jax.Array], manifest: dict[str, Any]):
        self.exported = exported
        self.weights = weights
        self.manifest = manifest

    @classmethod
    def load(cls, folder: str | os.PathLike) -> ServedModel:
        """Reads an export folder: the manifest, the serialized function, and the weights (put on the default
        device once, then passed to every call)."""
        from safetensors.numpy import load_file

        folder = os.fspath(folder)
        path = os.path.join(folder, MANIFEST)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {MANIFEST} in {folder}: not a folder written by m2f_jax.export_serving")
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{path}: format {manifest.get('format')!r}, this loader reads {FORMAT!r}")
        with open(os.path.join(folder, manifest["exported"]), "rb") as f:
            exported = jax_export.deserialize(bytearray(f.read()))
        platform = jax_export.default_export_platform()  # "cuda", not jax.default_backend()'s "gpu"
        if platform not in exported.platforms:
            raise ValueError(
                f"{folder} was exported for {', '.join(exported.platforms)}, not for this machine's {platform}; "
                "export again with platforms including it"
            )
        weights = jax.device_put(load_file(os.path.join(folder, manifest["weights"])))
        return cls(exported, weights, manifest)

    @property
    def id2label(self) -> dict[int, str]:
        return {int(k): v for k, v in self.manifest["id2label"].items()}

    def _check(self, name: str, array: np.ndarray) -> None:
        spec = next(i for i in self.manifest["inputs"] if i["name"] == name)
        expected = spec["shape"]
        ok = array.ndim == len(expected) and all(e in (None, n) for e, n in zip(expected, array.shape, strict=False))
        if not ok or array.shape[0] == 0:
            shape = ", ".join("batch" if e is None else str(e) for e in expected)
            raise ValueError(f"{name} must have shape ({shape}), got {array.shape}")
        if array.dtype != np.dtype(spec["dtype"]):
            raise ValueError(f"{name} must be {spec['dtype']}, got {array.dtype}")

    def __call__(self, pixel_values: Any, pixel_mask: Any = None) -> dict[str, np.ndarray]:
        """pixel_values (B, H, W, 3) float32 (normalised, as the image processor makes them); pixel_mask
        (B, H, W) bool, True on each image's own pixels (a top-left rectangle); default all True.
        Returns class_queries_logits (B, Q, K+1) and masks_queries_logits (B, Q, H/4, W/4) as numpy arrays."""
        pixel_values = np.asarray(pixel_values)
        pixel_mask = np.ones(pixel_values.shape[:3], bool) if pixel_mask is None else np.asarray(pixel_mask)
        self._check("pixel_values", pixel_values)
        self._check("pixel_mask", pixel_mask)
        if pixel_mask.shape[0] != pixel_values.shape[0]:
            raise ValueError(f"pixel_mask has {pixel_mask.shape[0]} images, pixel_values {pixel_values.shape[0]}")
        outputs = self.exported.call(self.weights, pixel_values, pixel_mask)
        return {name: np.asarray(value) for name, value in outputs.items()}
