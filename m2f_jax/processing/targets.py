"""Segmentation maps -> training targets: one binary mask and one class label per segment.

`semantic_to_targets` and `instance_to_targets` give the masks and labels of HF's
`convert_segmentation_map_to_binary_masks` (same order: ascending segment value; same content), as
lists of variable length. `pad_targets` and `pad_targets_batch` turn them into the fixed shapes a jitted
training step needs: `max_instances` slots, a validity flag per slot, and the label `PAD_LABEL` (-1) in
the empty slots. -1 can never be taken for a class or for the "no object" class (`num_labels`), and
indexing with it in a loss that forgot the validity mask shows up as an error rather than a plausible
number. Too many segments raise an error: a target is never dropped silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

PAD_LABEL = -1


class PaddedTargets(NamedTuple):
    """Fixed-shape targets: masks (..., M, H, W) bool, labels (..., M) int32, valid (..., M) bool."""

    masks: np.ndarray
    labels: np.ndarray
    valid: np.ndarray


def _label_map(seg_map: np.ndarray, ignore_index: int | None, reduce_labels: bool) -> np.ndarray:
    """Checks a (H, W) integer map and applies HF's `do_reduce_labels` (0 -> ignore_index, v -> v - 1)."""
    seg_map = np.asarray(seg_map)
    if seg_map.ndim != 2:
        raise ValueError(f"a segmentation map must be 2-D (H, W), got shape {seg_map.shape}")
    if not (np.issubdtype(seg_map.dtype, np.integer) or seg_map.dtype == np.bool_):
        raise TypeError(f"a segmentation map must hold integers, got dtype {seg_map.dtype}")
    if reduce_labels:
        if ignore_index is None:
            raise ValueError("reduce_labels=True needs an ignore_index (the value that label 0 becomes)")
        seg_map = seg_map.astype(np.int64)
        return np.where(seg_map == 0, ignore_index, seg_map - 1)
    return seg_map


def _binary_masks(seg_map: np.ndarray, ignore_index: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) float32 masks and (N,) values of the distinct values of `seg_map`, ascending, ignore dropped."""
    values = np.unique(seg_map)
    if ignore_index is not None:
        values = values[values != ignore_index]
    masks = seg_map[None] == values[:, None, None]
    return masks.astype(np.float32), values.astype(np.int64)


def semantic_to_targets(
    seg_map: np.ndarray, ignore_index: int | None = None, reduce_labels: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """A (H, W) class map -> masks (N, H, W) float32 and class labels (N,) int64, one per class present.

    ignore_index: pixels with this value belong to no mask. reduce_labels: first map 0 to ignore_index
    and every other value v to v - 1 (datasets such as ADE20K whose 0 means "unlabelled").
    """
    seg_map = _label_map(seg_map, ignore_index, reduce_labels)
    return _binary_masks(seg_map, ignore_index)


def instance_to_targets(
    instance_map: np.ndarray,
    instance_id_to_semantic_id: Mapping[int, int],
    ignore_index: int | None = None,
    reduce_labels: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """A (H, W) instance-id map -> masks (N, H, W) float32 and class labels (N,) int64, one per instance.

    Masks come in ascending instance id, each labelled `instance_id_to_semantic_id[id]`. With
    reduce_labels the ids are reduced as in `semantic_to_targets` and, as in HF, the mapping is read with
    the original id and its class reduced by one. An id present in the map but not in the mapping raises.
    """
    seg_map = _label_map(instance_map, ignore_index, reduce_labels)
    masks, ids = _binary_masks(seg_map, ignore_index)
    keys = ids + 1 if reduce_labels else ids
    missing = [int(k) for k in keys if int(k) not in instance_id_to_semantic_id]
    if missing:
        raise ValueError(
            f"instance ids {missing} appear in the instance map but not in instance_id_to_semantic_id "
            f"(which has {sorted(instance_id_to_semantic_id)[:20]}...)"
        )
    offset = 1 if reduce_labels else 0
    labels = np.array([instance_id_to_semantic_id[int(k)] - offset for k in keys], dtype=np.int64)
    return masks, labels


def pad_targets(masks: np.ndarray, labels: np.ndarray, max_instances: int) -> PaddedTargets:
    """Variable-length masks (N, H, W) and labels (N,) -> `max_instances` slots (bool masks, int32 labels).

    Slots N..max_instances-1 hold empty masks, label PAD_LABEL (-1) and valid=False. The masks must be
    binary (bool, or numbers that are all 0 or 1). N > max_instances raises ValueError.
    """
    masks = np.asarray(masks)
    labels = np.asarray(labels)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    if labels.shape != (masks.shape[0],):
        raise ValueError(f"labels must be (N,) = ({masks.shape[0]},) to match the masks, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    if max_instances < 0:
        raise ValueError(f"max_instances must be >= 0, got {max_instances}")
    count = masks.shape[0]
    if count > max_instances:
        raise ValueError(
            f"{count} segments do not fit in max_instances={max_instances}; raise max_instances "
            "(segments are never dropped silently)"
        )
    if masks.dtype != np.bool_:
        if not np.all((masks == 0) | (masks == 1)):
            raise ValueError("masks must be binary: every value 0 or 1")
        masks = masks != 0
    if labels.size and (labels.min() < np.iinfo(np.int32).min or labels.max() > np.iinfo(np.int32).max):
        raise ValueError(f"labels must fit in int32, got range [{labels.min()}, {labels.max()}]")
    out = PaddedTargets(
        masks=np.zeros((max_instances, *masks.shape[1:]), dtype=np.bool_),
        labels=np.full((max_instances,), PAD_LABEL, dtype=np.int32),
        valid=np.zeros((max_instances,), dtype=np.bool_),
    )
    out.masks[:count] = masks
    out.labels[:count] = labels
    out.valid[:count] = True
    return out


def pad_targets_batch(masks: Sequence[np.ndarray], labels: Sequence[np.ndarray], max_instances: int) -> PaddedTargets:
    """`pad_targets` for a batch: lists of (N_i, H, W) masks and (N_i,) labels -> (B, M, H, W), (B, M), (B, M).

    All masks must share (H, W) (images padded to one size, as the image processor does).
    """
    if len(masks) != len(labels):
        raise ValueError(f"got {len(masks)} mask arrays but {len(labels)} label arrays")
    if not masks:
        raise ValueError("pad_targets_batch needs at least one image's targets")
    shapes = {tuple(np.shape(m)[1:]) for m in masks}
    if len(shapes) != 1:
        raise ValueError(f"all masks must share (H, W) to be stacked, got {sorted(shapes)}")
    padded = []
    for i, (m, lab) in enumerate(zip(masks, labels, strict=True)):
        try:
            padded.append(pad_targets(m, lab, max_instances))
        except (ValueError, TypeError) as e:
            raise type(e)(f"image {i}: {e}") from e
    return PaddedTargets(*(np.stack(parts) for parts in zip(*padded, strict=True)))
