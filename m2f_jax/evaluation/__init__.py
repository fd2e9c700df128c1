"""Evaluation metrics: semantic (mIoU and accuracies) and panoptic (PQ, SQ, RQ), in percent."""

from m2f_jax.evaluation.panoptic import PanopticEvaluator
from m2f_jax.evaluation.semantic import SemanticEvaluator, confusion_matrix

__all__ = ["PanopticEvaluator", "SemanticEvaluator", "confusion_matrix"]
