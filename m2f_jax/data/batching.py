"""Deterministic, resumable training batches of fixed shape, each process producing its own rows.

The global sample stream is the data set in a fresh random order per epoch (a permutation drawn
from (seed, epoch)), cut into global batches of `batch_size`; a batch may straddle two epochs, so
every batch is full. Process p of P yields rows [p*B/P, (p+1)*B/P) of each global batch, so the
processes' batches concatenated in process order are exactly the batch one process would yield
(the order `jax.make_array_from_process_local_data` assembles). The only state is the step
number, so `get_state()` is a tiny dict to store in a checkpoint and `set_state()` continues exactly
where the saved run stopped. The optional horizontal flip is drawn from (seed, step, row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from m2f_jax.processing.preprocess import IMAGENET_MEAN, IMAGENET_STD
from m2f_jax.processing.targets import instance_to_targets, pad_targets_batch, semantic_to_targets

TASKS = ("panoptic", "instance", "semantic")
_PERMUTATION, _FLIP = 1, 2  # tags that keep the two random streams apart
_MEAN = np.asarray(IMAGENET_MEAN, np.float32)
_STD = np.asarray(IMAGENET_STD, np.float32)


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., H, W, 3) -> float32 model input, ImageNet-normalised as HF's processor does."""
    return (np.asarray(images).astype(np.float32) / 255 - _MEAN) / _STD


class TrainBatches:
    """An endless iterator of this process's rows of each global batch, as numpy arrays:

    "pixel_values" float32 (b, H, W, 3), ImageNet-normalised ((x / 255 - mean) / std, as HF);
    "pixel_mask" bool (b, H, W), all True (the images share one size);
    "mask_labels" bool (b, M, H, W), "class_labels" int32 (b, M) (-1 in empty slots), "mask_valid"
    bool (b, M), with b = batch_size / process_count and M = max_instances.

    dataset: a sequence of samples with "image", "semantic", "instances" and
    "instance_id_to_semantic_id" (as `SyntheticDataset`), and `classes` ({"id", "isthing"}) for the
    "instance" task. task: "panoptic" (one target per segment, things and stuff), "instance" (thing
    segments only) or "semantic" (one target per class present).
    """

    def __init__(
        self,
        dataset: Sequence[Mapping[str, Any]],
        batch_size: int,
        seed: int,
        max_instances: int,
        task: str = "panoptic",
        flip: bool = False,
        process_index: int = 0,
        process_count: int = 1,
        shuffle: bool = True,
    ):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if len(dataset) < 1:
            raise ValueError("the dataset is empty")
        if batch_size < 1 or max_instances < 1 or seed < 0:
            raise ValueError(
                f"need batch_size >= 1, max_instances >= 1 and seed >= 0; got {batch_size}, {max_instances}, {seed}"
            )
        if process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")
        if batch_size % process_count:
            raise ValueError(f"the global batch_size {batch_size} is not divisible by process_count {process_count}")
        self.dataset, self.task, self.seed, self.flip, self.shuffle = dataset, task, int(seed), flip, shuffle
        self.batch_size, self.max_instances = int(batch_size), int(max_instances)
        per_process = batch_size // process_count
        self.rows = range(process_index * per_process, (process_index + 1) * per_process)
        self.thing_ids = [c["id"] for c in dataset.classes if c["isthing"]] if task == "instance" else []
        self.step = 0
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, its permutation)

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.batch_at(self.step)
        self.step += 1
        return batch

    def get_state(self) -> dict[str, int]:
        """The position (JSON-serialisable), with the settings that give the step its meaning."""
        return {"step": self.step, "seed": self.seed, "batch_size": self.batch_size, "num_images": len(self.dataset)}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continues from a `get_state()` result; one saved with another seed, batch size or data set raises."""
        mine = self.get_state()
        differ = {k: (state.get(k), mine[k]) for k in ("seed", "batch_size", "num_images") if state.get(k) != mine[k]}
        step = state.get("step")
        if differ or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"cannot resume from data state {dict(state)}: (saved, current) differ in {differ}")
        self.step = int(step)

    def index(self, position: int) -> int:
        """The dataset index at a position of the global sample stream."""
        epoch, offset = divmod(position, len(self.dataset))
        if not self.shuffle:
            return offset
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng([self.seed, _PERMUTATION, epoch])
            self._order = (epoch, rng.permutation(len(self.dataset)))
        return int(self._order[1][offset])

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of global batch `step` (the iterator's position is not changed)."""
        images, masks, labels = [], [], []
        for row in self.rows:
            index = self.index(step * self.batch_size + row)
            sample = self.dataset[index]
            image, semantic, instances = sample["image"], sample["semantic"], sample["instances"]
            if self.flip and np.random.default_rng([self.seed, _FLIP, step, row]).random() < 0.5:
                image, semantic, instances = image[:, ::-1], semantic[:, ::-1], instances[:, ::-1]
            m, lab = self._targets(semantic, instances, sample["instance_id_to_semantic_id"])
            if len(lab) > self.max_instances:
                raise ValueError(
                    f"dataset image {index} (step {step}, row {row}) has {len(lab)} {self.task} segments, more "
                    f"than max_instances={self.max_instances}; raise max_instances"
                )
            images.append(image)
            masks.append(m)
            labels.append(lab)
        images = np.stack(images)
        targets = pad_targets_batch(masks, labels, self.max_instances)
        return {
            "pixel_values": normalize(images),
            "pixel_mask": np.ones(images.shape[:3], bool),
            "mask_labels": targets.masks,
            "class_labels": targets.labels,
            "mask_valid": targets.valid,
        }

    def _targets(self, semantic: np.ndarray, instances: np.ndarray, mapping: Mapping[int, int]):
        if self.task == "semantic":
            return semantic_to_targets(semantic)
        if self.task == "instance":  # stuff pixels belong to no target
            return instance_to_targets(np.where(np.isin(semantic, self.thing_ids), instances, -1), mapping, -1)
        return instance_to_targets(instances, mapping)
