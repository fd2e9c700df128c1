"""The training batch: compact on the host and over the transfer, expanded on the device.

A host batch (per process, numpy) holds, for b images of the crop size (H, W) and M = max_instances:
- "image" uint8 (b, H, W, 3): the raw pixels (normalised on the device, by the processor's own code);
- "pixel_mask" bool (b, H, W): True on real pixels, False on padding;
- "target_map" (b, H, W) uint8 (int16 when M > 254): target slot + 1 of each pixel, 0 for none
  (void, ignore, crowd, padding);
- "class_labels" int32 (b, M): each slot's class, -1 in empty slots; "mask_valid" bool (b, M).
That is H*W*5 bytes per image (5 MB at 1024x1024) instead of the M*H*W bytes of binary masks (100 MB at
M = 100). `model_inputs` builds the model's pixel_values and the binary mask_labels from it inside the
jitted step.

Which segments become targets: "panoptic" every non-crowd segment; "instance" every non-crowd thing
segment; "semantic" one target per category present, crowd segments included (the original's COCO
semantic labels come from every panoptic segment). Targets come in ascending segment id (panoptic,
instance) or ascending category (semantic).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from m2f_jax.processing.targets import PAD_LABEL

TASKS = ("panoptic", "instance", "semantic")
KEYS = ("image", "pixel_mask", "target_map", "class_labels", "mask_valid")


class TooManySegments(ValueError):
    """An image with more targets than max_instances slots."""


def target_dtype(max_instances: int) -> np.dtype:
    return np.dtype(np.uint8) if max_instances <= 254 else np.dtype(np.int16)


def category_lookup(segments: np.ndarray, segments_info: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """An array indexed by segment id giving its category (-1 for ids without a segment), covering the map."""
    top = max([int(segments.max(initial=0))] + [int(s["id"]) for s in segments_info])
    lookup = np.full(top + 1, -1, np.int32)
    for s in segments_info:
        lookup[int(s["id"])] = int(s["category_id"])
    return lookup


def targets(
    segments: np.ndarray, segments_info: Sequence[Mapping[str, Any]], task: str, max_instances: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(target_map (H, W), class_labels (M,) int32, mask_valid (M,) bool) of one image's segment map.

    Segments without pixels give no target. More targets than `max_instances` raise TooManySegments."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if segments.size and segments.min() >= 0 and segments.max() <= 1 << 16:  # small ids (compacted maps):
        present = np.flatnonzero(np.bincount(segments.ravel()))  # a count, 5x faster than np.unique's sort
    else:
        present = np.unique(segments)
    present = set(present[present > 0].tolist())
    if task == "semantic":
        lookup = category_lookup(segments, segments_info)
        labels = sorted({int(s["category_id"]) for s in segments_info if int(s["id"]) in present})
        slot_of_category = {c: k + 1 for k, c in enumerate(labels)}
        slots = np.zeros(len(lookup), np.int32)
        for segment_id, category in enumerate(lookup.tolist()):
            slots[segment_id] = slot_of_category.get(category, 0)
    else:
        kept = sorted(
            (int(s["id"]), int(s["category_id"]))
            for s in segments_info
            if int(s["id"]) in present and not s["iscrowd"] and (task == "panoptic" or s["isthing"])
        )
        labels = [category for _, category in kept]
        slots = np.zeros(max([int(segments.max(initial=0))] + [i for i, _ in kept]) + 1, np.int32)
        for k, (segment_id, _) in enumerate(kept):
            slots[segment_id] = k + 1
    if len(labels) > max_instances:
        raise TooManySegments(f"{len(labels)} {task} targets do not fit in max_instances={max_instances}")
    class_labels = np.full(max_instances, PAD_LABEL, np.int32)
    class_labels[: len(labels)] = labels
    return slots[segments].astype(target_dtype(max_instances)), class_labels, class_labels != PAD_LABEL


def collate(examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stacks examples (each with KEYS, and "skipped" and "over_full": lists of messages about the samples
    they replaced) into a host batch; the two lists are concatenated, for the training loop to report."""
    batch = {k: np.stack([e[k] for e in examples]) for k in KEYS}
    for key in ("skipped", "over_full"):
        batch[key] = [message for e in examples for message in e[key]]
    return batch


def model_inputs(batch: Mapping[str, Any], normalize) -> tuple[Any, Any, Any]:
    """(pixel_values float32 (b, H, W, 3), pixel_mask, mask_labels bool (b, M, H, W)) from a host batch,
    traced inside the step: `normalize` is the image processor's (rescale and normalise in its float
    order) and padded pixels are 0, as the processor pads after normalising."""
    import jax.numpy as jnp

    mask = batch["pixel_mask"]
    pixels = jnp.where(mask[..., None], normalize(batch["image"]), 0.0)
    slots = jnp.arange(1, batch["class_labels"].shape[-1] + 1, dtype=jnp.int32)
    masks = batch["target_map"].astype(jnp.int32)[:, None] == slots[None, :, None, None]
    return pixels, mask, masks
