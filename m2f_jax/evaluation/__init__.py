"""Evaluation metrics: semantic (mIoU and accuracies), panoptic (PQ, SQ, RQ) and instance (COCO mask
and box AP), in percent; and writers of predictions in the formats the official tools score."""

from m2f_jax.evaluation.instance import InstanceEvaluator, coco_results
from m2f_jax.evaluation.panoptic import PanopticEvaluator
from m2f_jax.evaluation.semantic import SemanticEvaluator, confusion_matrix
from m2f_jax.evaluation.writers import InstanceWriter, PanopticWriter, SemanticWriter

__all__ = [
    "InstanceEvaluator",
    "InstanceWriter",
    "PanopticEvaluator",
    "PanopticWriter",
    "SemanticEvaluator",
    "SemanticWriter",
    "coco_results",
    "confusion_matrix",
]
