"""Mask2Former in JAX and Flax NNX: universal image segmentation that reproduces HF checkpoints.

The names below load on first use (PEP 562), so that `import m2f_jax.serving` (a server running an
exported model) or `m2f_jax.processing` imports neither the model nor flax.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from m2f_jax import visualize
    from m2f_jax.config import Mask2FormerConfig, ResNetConfig, SwinConfig, preset, preset_names
    from m2f_jax.conversion.stablehlo import export_serving
    from m2f_jax.conversion.to_hf import export_hf
    from m2f_jax.inference import segment
    from m2f_jax.modeling import LayerExecution, Mask2FormerForUniversalSegmentation, Mask2FormerOutput
    from m2f_jax.processing.preprocess import ImageProcessor
    from m2f_jax.weights import convert_hf, from_pretrained, save_model

    Mask2FormerImageProcessor = ImageProcessor

# name -> (module, attribute); attribute None: the module itself.
_PUBLIC = {
    "ImageProcessor": ("m2f_jax.processing.preprocess", "ImageProcessor"),
    # HF's name, so a transformers notebook needs only its import changed
    "Mask2FormerImageProcessor": ("m2f_jax.processing.preprocess", "ImageProcessor"),
    "LayerExecution": ("m2f_jax.modeling", "LayerExecution"),
    "Mask2FormerConfig": ("m2f_jax.config", "Mask2FormerConfig"),
    "Mask2FormerForUniversalSegmentation": ("m2f_jax.modeling", "Mask2FormerForUniversalSegmentation"),
    "Mask2FormerOutput": ("m2f_jax.modeling", "Mask2FormerOutput"),
    "ResNetConfig": ("m2f_jax.config", "ResNetConfig"),
    "SwinConfig": ("m2f_jax.config", "SwinConfig"),
    "convert_hf": ("m2f_jax.weights", "convert_hf"),
    "export_hf": ("m2f_jax.conversion.to_hf", "export_hf"),
    "export_serving": ("m2f_jax.conversion.stablehlo", "export_serving"),
    "from_pretrained": ("m2f_jax.weights", "from_pretrained"),
    "preset": ("m2f_jax.config", "preset"),
    "preset_names": ("m2f_jax.config", "preset_names"),
    "save_model": ("m2f_jax.weights", "save_model"),
    "segment": ("m2f_jax.inference", "segment"),
    "visualize": ("m2f_jax.visualize", None),
}
__all__ = [  # a literal list, for linters and `from m2f_jax import *` (tests/test_serving.py checks it is _PUBLIC)
    "ImageProcessor",
    "LayerExecution",
    "Mask2FormerConfig",
    "Mask2FormerForUniversalSegmentation",
    "Mask2FormerImageProcessor",
    "Mask2FormerOutput",
    "ResNetConfig",
    "SwinConfig",
    "convert_hf",
    "export_hf",
    "export_serving",
    "from_pretrained",
    "preset",
    "preset_names",
    "save_model",
    "segment",
    "visualize",
]


def __getattr__(name: str) -> Any:
    """A public name (imported now, then kept), or a submodule (`m2f_jax.inference`)."""
    if name in _PUBLIC:
        module, attribute = _PUBLIC[name]
        value = importlib.import_module(module)
        value = value if attribute is None else getattr(value, attribute)
    else:
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
