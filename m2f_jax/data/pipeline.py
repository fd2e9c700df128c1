"""The training input pipeline on grain: source -> seeded shuffle (a new order each epoch) -> this
process's shard -> read + augment + targets (seeded per example) -> batch -> worker processes.

Every example's randomness comes from (seed, its position in the global stream), so the batches do
not depend on the number of workers; global batch k is positions [k*B, (k+1)*B) of the stream and
process p of P takes its rows [p*B/P, (p+1)*B/P), so the processes' batches concatenated in process
order are the batch one process would make (the order `jax.make_array_from_process_local_data`
assembles), and each process reads only its own files. The iterator's state (`get_state`: the number
of batches taken) goes into the checkpoint, so a resumed run sees exactly the batches it would have
seen, with any number of worker processes.

A sample that cannot be read (`SampleError`: missing or corrupt file) or has more targets than
`max_instances` is replaced by the next good sample of the source (index + 1, + 2, ...), and its message
travels in the batch's "skipped" or "over_full" list: the training loop counts unreadable samples and
stops past a limit, and reports each over-full one once (a property of the data, met every epoch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np
from absl import flags

from m2f_jax.data.batch import TooManySegments, collate, targets
from m2f_jax.data.sources import SampleError, Source, check_sample
from m2f_jax.data.transforms import AugmentConfig, augment

_MAX_REPLACEMENTS = 100  # consecutive unreadable samples before an example gives up


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    batch_size: int  # global, over all processes
    max_instances: int
    task: str = "panoptic"
    augment: AugmentConfig = AugmentConfig()
    seed: int = 0
    workers: int = 0  # worker processes per host (0: in the training process)
    prefetch: int = 2  # batches each worker (or the training process, with workers = 0) prepares ahead


def compact(sample: Mapping[str, Any], num_classes: int, where: str) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The sample's segment map renumbered 1..n in ascending id order (0 stays 0), and its segments_info
    sorted by id with those ids: the targets (which come in ascending id) are those of the sample as it
    was, whatever order its segments_info lists. Checks the sample against the source contract first
    (SampleError if broken)."""
    check_sample(sample, num_classes, where)
    info = sample["segments_info"]
    order = np.argsort([s["id"] for s in info], kind="stable")
    sorted_ids = np.asarray([info[k]["id"] for k in order] or [0], np.int64)
    segments = sample["segments"]
    # every map id > 0 is listed (checked above), so its rank among the sorted ids is its new id - 1
    compacted = np.where(segments > 0, np.searchsorted(sorted_ids, segments) + 1, 0).astype(np.int32)
    return compacted, [{**info[k], "id": rank + 1} for rank, k in enumerate(order.tolist())]


class _Example:
    """Position in the stream -> one training example (picklable: it runs in grain's workers)."""

    def __init__(self, source: Source, config: PipelineConfig):
        self.source, self.config = source, config
        self.num_classes = len(source.classes)

    def __call__(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        index, skipped, over_full = int(index), [], []
        for attempt in range(_MAX_REPLACEMENTS):
            where = (index + attempt) % len(self.source)
            try:
                example = self._example(where, rng)
            except SampleError as error:
                skipped.append(f"{self.source.describe(where)}: {error}")
                continue
            except TooManySegments as error:
                over_full.append(f"{self.source.describe(where)}: {error}")
                continue
            example.update(skipped=skipped, over_full=over_full)
            return example
        raise SampleError(
            f"{_MAX_REPLACEMENTS} consecutive samples could not be used:\n" + "\n".join(skipped + over_full)
        )

    def _example(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        sample = self.source[index]
        segments, info = compact(sample, self.num_classes, self.source.describe(index))
        categories = np.asarray([-1] + [s["category_id"] for s in info], np.int32)
        image, segments, pixel_mask = augment(sample["image"], segments, categories, self.config.augment, rng)
        target_map, labels, valid = targets(segments, info, self.config.task, self.config.max_instances)
        return {"image": image, "pixel_mask": pixel_mask, "target_map": target_map, "class_labels": labels,
                "mask_valid": valid}  # fmt: skip


def _batches(source: Source, config: PipelineConfig, process_index: int, process_count: int) -> grain.MapDataset:
    if len(source) < 1:
        raise ValueError(f"the {source.split} split of the data source is empty")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")
    if config.batch_size % process_count:
        raise ValueError(f"the global batch_size {config.batch_size} is not divisible by {process_count} processes")
    positions = grain.MapDataset.range(len(source)).shuffle(seed=config.seed).repeat()
    examples = positions.random_map(_Example(source, config), seed=config.seed + 1)
    # Global batch k is the consecutive rows [k*B, (k+1)*B) of the stream; process p takes its rows
    # [k*B + p*b, k*B + (p+1)*b): every b-row slice, then every P-th slice from the p-th (lazy: only
    # those examples are read).
    slices = examples.batch(config.batch_size // process_count, batch_fn=collate)
    return slices[process_index::process_count]


class TrainBatches:
    """This process's endless iterator of host batches (m2f_jax.data.batch), `batch_size / process_count`
    rows each. Its state is the number of batches taken (with the settings that give it meaning), so
    it resumes exactly whatever the number of worker processes before and after."""

    def __init__(self, source: Source, config: PipelineConfig, process_index: int = 0, process_count: int = 1):
        self.config, self.num_samples = config, len(source)
        self._batches = _batches(source, config, process_index, process_count)
        self.position = 0
        self._iterator = None

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._iterator is None:
            # grain's default ReadOptions (16 threads, 500 elements ahead) would build up to 500 batches
            # ahead of the training loop (~40 GB at batch 16 of 1024x1024) in every process and hold back
            # the first batch until 16 are done: read `prefetch` batches ahead, in as many threads.
            ahead = max(self.config.prefetch, 1)
            read = grain.ReadOptions(num_threads=ahead, prefetch_buffer_size=ahead)
            stream = self._batches[self.position :].to_iter_dataset(read)
            if self.config.workers > 0:
                if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags; outside an absl app
                    flags.FLAGS.mark_as_parsed()  # (tests, notebooks) they keep their defaults
                options = grain.MultiprocessingOptions(
                    num_workers=self.config.workers, per_worker_buffer_size=self.config.prefetch
                )
                stream = stream.mp_prefetch(options)
            self._iterator = iter(stream)
        batch = next(self._iterator)
        self.position += 1
        return batch

    def close(self) -> None:
        """Stops the reading threads and worker processes now (not at garbage collection); a later
        `next` starts them again from the same position."""
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None

    def get_state(self) -> dict[str, int]:
        """The position (JSON), with the settings that give it its meaning."""
        c = self.config
        return {"batch": self.position, "seed": c.seed, "batch_size": c.batch_size, "num_samples": self.num_samples}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continues from a `get_state()` result; one saved with another seed, batch size or data set size raises."""
        mine = self.get_state()
        differ = {k: (state.get(k), mine[k]) for k in ("seed", "batch_size", "num_samples") if state.get(k) != mine[k]}
        position = state.get("batch")
        if differ or not isinstance(position, int) or position < 0:
            raise ValueError(f"cannot resume from data state {dict(state)}: (saved, current) differ in {differ}")
        self.close()
        self.position = position
