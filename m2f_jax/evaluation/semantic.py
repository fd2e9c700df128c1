"""Semantic segmentation metrics: mIoU, fwIoU, mAcc and pAcc from a confusion matrix.

The definitions are detectron2's `SemSegEvaluator` (also mmseg's): a class's IoU is
TP / (TP + FP + FN) over all counted pixels of the data set, and a class absent from both the
predictions and the ground truth has no IoU (NaN) and is left out of the mean. A class that is only
predicted has IoU 0 and counts. Accuracy of a class is TP / (its ground-truth pixels), NaN and left
out of mAcc without ground truth; pAcc is all correct pixels over all counted pixels; fwIoU weighs
each class's IoU by its share of the ground-truth pixels. All reported numbers are in percent, as
detectron2 prints them.

A pixel is counted unless its target is `ignore_index` or it lies in padding (`valid` False).
The matrix has rows = ground truth and columns = prediction. The per-batch counts run on device
(`confusion_matrix`, jittable, fixed shapes); `SemanticEvaluator` adds them up on the host in int64,
since a data set at full resolution can pass 2**31 pixels in one cell.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _check_classes(num_classes: int, ignore_index: int | None) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        raise ValueError(f"ignore_index {ignore_index} is a class id (num_classes={num_classes}); use one outside")


def _check_inputs(pred, target, valid, num_classes: int, ignore_index: int | None) -> None:
    """Static checks (arguments, shapes, dtypes): under jit they run at trace time, before any work."""
    _check_classes(num_classes, ignore_index)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {pred.shape} and {target.shape}")
    if valid is not None and valid.shape != target.shape:
        raise ValueError(f"valid must have the target's shape {target.shape}, got {valid.shape}")
    for name, x in (("pred", pred), ("target", target)):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise TypeError(f"{name} must hold integer class ids, got dtype {x.dtype}")


def _counted(target: jnp.ndarray, valid: jnp.ndarray | None, ignore_index: int | None) -> jnp.ndarray:
    counted = jnp.ones(target.shape, bool) if valid is None else valid.astype(bool)
    return counted if ignore_index is None else counted & (target != ignore_index)


def confusion_matrix(
    pred: Any, target: Any, num_classes: int, ignore_index: int | None = None, valid: Any | None = None
) -> jnp.ndarray:
    """(num_classes, num_classes) int32 pixel counts, [target class, predicted class].

    pred, target: integer arrays of one shape, typically (B, H, W); valid: optional bool array of that
    shape, False on padding. Jittable with `num_classes` and `ignore_index` static; the result of
    several batches is the sum of their matrices. Under jit nothing can raise on values, so pixels whose
    target or prediction lies outside [0, num_classes) (other than `ignore_index`) are not counted;
    `SemanticEvaluator.update` raises on them instead.
    """
    pred, target = jnp.asarray(pred), jnp.asarray(target)
    valid = None if valid is None else jnp.asarray(valid)
    _check_inputs(pred, target, valid, num_classes, ignore_index)
    pred, target = pred.astype(jnp.int32), target.astype(jnp.int32)
    k = num_classes
    known = (target >= 0) & (target < k) & (pred >= 0) & (pred < k)
    index = jnp.where(_counted(target, valid, ignore_index) & known, target * k + pred, k * k)
    return jnp.bincount(index.ravel(), length=k * k + 1)[:-1].reshape(k, k)


@functools.partial(jax.jit, static_argnames=("num_classes", "ignore_index"))
def _batch_counts(pred, target, valid, num_classes: int, ignore_index: int | None):
    """The batch's matrix and the numbers of counted pixels with an unknown target / prediction."""
    matrix = confusion_matrix(pred, target, num_classes, ignore_index, valid)
    pred, target = pred.astype(jnp.int32), target.astype(jnp.int32)  # uint8 cannot hold e.g. -1
    counted = _counted(target, valid, ignore_index)
    target_known = (target >= 0) & (target < num_classes)
    pred_known = (pred >= 0) & (pred < num_classes)
    return matrix, (counted & ~target_known).sum(), (counted & target_known & ~pred_known).sum()


def _bucket(n: int) -> int:
    """n rounded up to one of 16 sizes per power of two (at most 1/16 more), so that host inputs of
    many image sizes share a few compiled shapes instead of compiling one per size."""
    step = 1 << max(0, n.bit_length() - 5)
    return -(-n // step) * step


def _flat_padded(x: np.ndarray, size: int) -> np.ndarray:
    """x flattened and zero-padded to `size`, as int32 (bool stays bool): jax would wrap larger
    integers silently, so ids beyond int32 raise here."""
    if x.dtype == np.bool_:
        dtype = np.bool_
    else:
        dtype = np.int32
        info = np.iinfo(dtype)
        if not np.can_cast(x.dtype, dtype) and x.size and (x.min() < info.min or x.max() > info.max):
            raise ValueError(f"class ids must fit in int32, got values in [{x.min()}, {x.max()}]")
    out = np.zeros(size, dtype)
    out[: x.size] = x.ravel()
    return out


def _mean(x: np.ndarray) -> float:
    """Mean over the non-NaN entries, NaN if there is none (without numpy's empty-slice warning)."""
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


class SemanticEvaluator:
    """Accumulates a confusion matrix over a data set; `compute()` gives the metrics in percent."""

    def __init__(self, num_classes: int, ignore_index: int | None = None, class_names: Sequence[str] | None = None):
        _check_classes(num_classes, ignore_index)
        names = [str(i) for i in range(num_classes)] if class_names is None else [str(n) for n in class_names]
        if len(names) != num_classes:
            raise ValueError(f"got {len(names)} class_names for num_classes={num_classes}")
        if len(set(names)) != num_classes:
            raise ValueError("class_names must be unique")
        self.num_classes, self.ignore_index, self.class_names = num_classes, ignore_index, names
        self.matrix = np.zeros((num_classes, num_classes), np.int64)  # [target, prediction]

    def update(self, pred: Any, target: Any, valid: Any | None = None) -> None:
        """Adds a batch: pred and target integer arrays of one shape ((B, H, W) or (H, W)), numpy or
        jax; valid optional bool, False on padding. Raises ValueError, and adds nothing, if a counted
        pixel has a target or a prediction outside [0, num_classes)."""
        arrays = [pred, target] + ([] if valid is None else [valid])
        if not any(isinstance(x, jax.Array) for x in arrays):
            # Host data (often one image at its own size): flatten and pad to a bucketed length with
            # valid=False, so that few shapes are compiled. Device data keeps its (fixed) shape.
            pred, target = np.asarray(pred), np.asarray(target)
            valid = np.ones(target.shape, bool) if valid is None else np.asarray(valid, bool)
            _check_inputs(pred, target, valid, self.num_classes, self.ignore_index)
            size = _bucket(max(target.size, 1))
            pred, target, valid = (_flat_padded(x, size) for x in (pred, target, valid))
        matrix, bad_target, bad_pred = jax.device_get(
            _batch_counts(pred, target, valid, num_classes=self.num_classes, ignore_index=self.ignore_index)
        )
        if bad_target or bad_pred:
            raise ValueError(
                f"{bad_target} target and {bad_pred} predicted pixels lie outside [0, {self.num_classes}) "
                f"(ignore_index={self.ignore_index}); nothing was added"
            )
        self.matrix += matrix

    def merge(self, other: SemanticEvaluator) -> None:
        """Adds the matrix of `other` (another shard of the data set, with the same classes)."""
        if (other.class_names, other.ignore_index) != (self.class_names, self.ignore_index):
            raise ValueError("cannot merge semantic evaluators of different classes or ignore_index")
        self.matrix += other.matrix

    def compute(self) -> dict[str, Any]:
        """{"mIoU", "fwIoU", "mAcc", "pAcc", "per_class": {name: {"IoU", "Acc"}}}, all in percent;
        NaN where nothing defines a value (e.g. a class absent from predictions and ground truth)."""
        m = self.matrix.astype(np.float64)
        tp, gt, predicted = np.diag(m), m.sum(1), m.sum(0)
        union = gt + predicted - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            acc = np.where(gt > 0, tp / gt, np.nan)
            fw_iou = np.sum(iou[gt > 0] * gt[gt > 0]) / gt.sum()
            p_acc = tp.sum() / gt.sum()
        return {
            "mIoU": 100 * _mean(iou),
            "fwIoU": 100 * float(fw_iou),
            "mAcc": 100 * _mean(acc),
            "pAcc": 100 * float(p_acc),
            "per_class": {
                name: {"IoU": 100 * float(i), "Acc": 100 * float(a)}
                for name, i, a in zip(self.class_names, iou, acc, strict=True)
            },
        }
