"""Flax NNX modules of Mask2Former (NHWC inside)."""

from m2f_jax.modeling.layers import LayerExecution
from m2f_jax.modeling.mask2former import Mask2FormerForUniversalSegmentation, Mask2FormerOutput

__all__ = ["LayerExecution", "Mask2FormerForUniversalSegmentation", "Mask2FormerOutput"]
