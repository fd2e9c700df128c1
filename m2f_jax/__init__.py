"""Mask2Former in JAX and Flax NNX: universal image segmentation that reproduces HF checkpoints."""

from m2f_jax import visualize
from m2f_jax.config import Mask2FormerConfig, ResNetConfig, SwinConfig, preset, preset_names
from m2f_jax.inference import segment
from m2f_jax.modeling import LayerExecution, Mask2FormerForUniversalSegmentation, Mask2FormerOutput
from m2f_jax.processing.preprocess import ImageProcessor
from m2f_jax.weights import convert_hf, from_pretrained, save_model

Mask2FormerImageProcessor = ImageProcessor  # HF's name, so a transformers notebook needs only its import changed

__all__ = [
    "ImageProcessor",
    "LayerExecution",
    "Mask2FormerConfig",
    "Mask2FormerImageProcessor",
    "Mask2FormerForUniversalSegmentation",
    "Mask2FormerOutput",
    "ResNetConfig",
    "SwinConfig",
    "convert_hf",
    "from_pretrained",
    "preset",
    "preset_names",
    "save_model",
    "segment",
    "visualize",
]
