"""The training input path after the augmentations: m2f_jax.data.batch (targets, model_inputs) and
m2f_jax.data.pipeline (TrainBatches: determinism, resume, workers, process shards, skipped samples, and
source -> batch pixel for pixel)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from m2f_jax.data.batch import KEYS, TooManySegments, collate, model_inputs, targets
from m2f_jax.data.pipeline import PipelineConfig, TrainBatches, compact
from m2f_jax.data.sources import SampleError
from m2f_jax.data.sources.coco import CocoPanoptic
from m2f_jax.data.sources.synthetic import SyntheticSource
from m2f_jax.data.synthetic import write_coco_panoptic
from m2f_jax.data.transforms import AugmentConfig, augment
from m2f_jax.processing.preprocess import ImageProcessor

# ----------------------------------------------------------------------------------------------------
# batch.targets on a hand-made map

SEGMENTS = np.array(
    [
        [1, 1, 2, 2, 0],
        [1, 1, 2, 2, 3],
        [4, 4, 5, 5, 3],
        [4, 4, 5, 5, 0],
    ],
    np.int32,
)
# Listed out of id order; 3 is a crowd thing; 6 and 7 have no pixels (7 shares category 0 with 1).
INFO = [
    {"id": 5, "category_id": 4, "iscrowd": False, "isthing": True},
    {"id": 1, "category_id": 0, "iscrowd": False, "isthing": False},
    {"id": 3, "category_id": 3, "iscrowd": True, "isthing": True},
    {"id": 6, "category_id": 2, "iscrowd": False, "isthing": True},
    {"id": 2, "category_id": 3, "iscrowd": False, "isthing": True},
    {"id": 4, "category_id": 1, "iscrowd": False, "isthing": False},
    {"id": 7, "category_id": 0, "iscrowd": False, "isthing": False},
]
EXPECTED = {
    # every non-crowd segment with pixels, ascending id: 1, 2, 4, 5
    "panoptic": (
        [[1, 1, 2, 2, 0],
         [1, 1, 2, 2, 0],
         [3, 3, 4, 4, 0],
         [3, 3, 4, 4, 0]],
        [0, 3, 1, 4],
    ),
    # non-crowd things: 2, 5
    "instance": (
        [[0, 0, 1, 1, 0],
         [0, 0, 1, 1, 0],
         [0, 0, 2, 2, 0],
         [0, 0, 2, 2, 0]],
        [3, 4],
    ),
    # one per category present, crowd included, ascending category: 0, 1, 3, 4
    "semantic": (
        [[1, 1, 3, 3, 0],
         [1, 1, 3, 3, 3],
         [2, 2, 4, 4, 3],
         [2, 2, 4, 4, 0]],
        [0, 1, 3, 4],
    ),
}  # fmt: skip


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_targets_by_hand(task):
    target_map, labels, valid = targets(SEGMENTS, INFO, task, max_instances=6)
    expected_map, expected_labels = EXPECTED[task]
    assert target_map.dtype == np.uint8 and labels.dtype == np.int32 and valid.dtype == np.bool_
    np.testing.assert_array_equal(target_map, expected_map)
    np.testing.assert_array_equal(labels, expected_labels + [-1] * (6 - len(expected_labels)))
    np.testing.assert_array_equal(valid, np.arange(6) < len(expected_labels))
    # exactly as many targets as slots fit; one more raises
    n = len(expected_labels)
    np.testing.assert_array_equal(targets(SEGMENTS, INFO, task, max_instances=n)[0], expected_map)
    with pytest.raises(TooManySegments, match=f"{n} {task} targets"):
        targets(SEGMENTS, INFO, task, max_instances=n - 1)


def test_targets_dtype_follows_max_instances():
    small = targets(SEGMENTS, INFO, "panoptic", max_instances=254)
    large = targets(SEGMENTS, INFO, "panoptic", max_instances=255)
    assert small[0].dtype == np.uint8 and large[0].dtype == np.int16
    np.testing.assert_array_equal(small[0], large[0])
    np.testing.assert_array_equal(small[1][:10], large[1][:10])
    # 300 segments: slot ids past 255 survive in int16
    many = np.arange(1, 301, dtype=np.int32).reshape(15, 20)
    info = [{"id": i, "category_id": i % 7, "iscrowd": False, "isthing": True} for i in range(1, 301)]
    target_map, labels, valid = targets(many, info, "panoptic", max_instances=300)
    np.testing.assert_array_equal(target_map, many)
    assert valid.all() and labels[-1] == 300 % 7


def test_targets_without_segments():
    target_map, labels, valid = targets(np.zeros((3, 4), np.int32), [], "semantic", max_instances=2)
    assert not target_map.any() and (labels == -1).all() and not valid.any()


def test_compact_keeps_the_targets():
    """The pipeline renumbers ids 1..n before augmenting; the targets of the renumbered map are those of
    the original (same slots, same order)."""
    shifted = np.where(SEGMENTS > 0, SEGMENTS * 1000 + 77, 0).astype(np.int32)  # large, sparse ids
    info = [{**s, "id": s["id"] * 1000 + 77} for s in INFO]
    sample = {"image": np.zeros((4, 5, 3), np.uint8), "segments": shifted, "segments_info": info, "name": "x"}
    segments, new_info = compact(sample, num_classes=5, where="x")
    assert segments.max() <= len(INFO) and sorted(s["id"] for s in new_info) == list(range(1, len(INFO) + 1))
    for task in ("panoptic", "instance", "semantic"):
        for a, b in zip(targets(segments, new_info, task, 8), targets(SEGMENTS, INFO, task, 8), strict=True):
            np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------------------
# batch.model_inputs against the image processor


def _host_batch(max_instances: int):
    """Two examples: the hand-made 4 x 5 one, and a 3 x 4 one padded to 4 x 5 (by augment 'flip')."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (4, 5, 3), dtype=np.uint8), rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)]
    small = np.array([[2, 2, 1, 1], [2, 0, 1, 1], [3, 3, 3, 1]], np.int32)
    small_info = [{"id": i, "category_id": c, "iscrowd": False, "isthing": True} for i, c in ((1, 2), (2, 0), (3, 2))]
    maps, infos, examples = [SEGMENTS, small], [INFO, small_info], []
    for image, seg, info in zip(images, maps, infos, strict=True):
        config = AugmentConfig(kind="flip", crop_size=(4, 5), flip=False)
        image_p, seg_p, mask = augment(image, seg, np.zeros(1, np.int32), config, rng)
        target_map, labels, valid = targets(seg_p, info, "panoptic", max_instances)
        examples.append({"image": image_p, "pixel_mask": mask, "target_map": target_map, "class_labels": labels,
                         "mask_valid": valid, "skipped": [], "over_full": []})  # fmt: skip
    return images, maps, infos, collate(examples)


def test_model_inputs_match_the_image_processor():
    import jax

    max_instances = 6
    images, maps, infos, batch = _host_batch(max_instances)
    assert set(batch) == {*KEYS, "skipped", "over_full"} and batch["image"].shape == (2, 4, 5, 3)
    processor = ImageProcessor()
    pixels, mask, masks = jax.jit(lambda b: model_inputs(b, processor.normalize))({k: batch[k] for k in KEYS})
    pixels, mask, masks = np.asarray(pixels), np.asarray(mask), np.asarray(masks)
    assert pixels.dtype == np.float32 and masks.dtype == np.bool_ and masks.shape == (2, max_instances, 4, 5)
    for slot in range(max_instances):
        np.testing.assert_array_equal(masks[:, slot], batch["target_map"] == slot + 1)
    np.testing.assert_array_equal(mask, batch["pixel_mask"])
    real = batch["pixel_mask"]
    np.testing.assert_allclose(pixels[real], processor.normalize(batch["image"])[real], rtol=0, atol=1e-6)
    assert not pixels[~real].any()

    # The old path: the processor on the unresized images and instance maps (crowd pixels to 0, the ignore
    # value) gives the same masks, labels and valid flags as targets() + model_inputs for "panoptic".
    old = ImageProcessor(do_resize=False, size_divisor=0, ignore_index=0)
    crowd = [{s["id"] for s in info if s["iscrowd"]} for info in infos]
    old_maps = [np.where(np.isin(m, list(c)), 0, m) for m, c in zip(maps, crowd, strict=True)]
    mappings = [{s["id"]: s["category_id"] for s in info} for info in infos]
    expected = old(images, old_maps, mappings, max_instances=max_instances, input_data_format="channels_last")
    np.testing.assert_array_equal(masks, expected["mask_labels"])
    np.testing.assert_array_equal(batch["class_labels"], expected["class_labels"])
    np.testing.assert_array_equal(batch["mask_valid"], expected["mask_valid"])
    np.testing.assert_array_equal(mask, expected["pixel_mask"])
    np.testing.assert_allclose(pixels, expected["pixel_values"], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# pipeline: sources


class ListSource:
    """An in-memory source of hand-given samples (segments_info deliberately not in id order); records
    the indices it is asked for."""

    split = "train"
    classes = [{"id": i, "name": f"c{i}", "isthing": i >= 2} for i in range(5)]

    def __init__(self, samples):
        self.samples, self.reads = samples, []

    def __len__(self):
        return len(self.samples)

    def describe(self, index):
        return f"list sample {index}"

    def __getitem__(self, index):
        self.reads.append(int(index))
        return {**self.samples[index], "name": f"s{index}"}


class Recording:
    """Wraps a source and records the indices read."""

    def __init__(self, source):
        self.source, self.reads = source, []
        self.split, self.classes = source.split, source.classes

    def __len__(self):
        return len(self.source)

    def describe(self, index):
        return self.source.describe(index)

    def __getitem__(self, index):
        self.reads.append(int(index))
        return self.source[index]


def list_sample(seed: int, segments_count: int, size=(12, 16)):
    """A sample of `segments_count` vertical stripes (ids 10, 20, ..., listed in reverse), image random."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    stripe = np.arange(size[1]) * segments_count // size[1]
    segments = np.broadcast_to((stripe + 1) * 10, size).astype(np.int32).copy()
    segments[0, 0] = 0
    info = [
        {"id": (k + 1) * 10, "category_id": int(rng.integers(0, 5)), "iscrowd": k == 1, "isthing": k % 2 == 0}
        for k in reversed(range(segments_count))
    ]
    return {"image": image, "segments": segments, "segments_info": info}


def flip_config(size, batch_size=4, max_instances=16, seed=0, task="panoptic", workers=0, flip=True):
    augment_config = AugmentConfig(kind="flip", crop_size=size, flip=flip)
    return PipelineConfig(batch_size=batch_size, max_instances=max_instances, task=task, augment=augment_config,
                          seed=seed, workers=workers)  # fmt: skip


def lsj_config(seed=0, batch_size=4, workers=0):
    augment_config = AugmentConfig(kind="lsj", crop_size=(24, 24), min_scale=0.5, max_scale=1.5)
    return PipelineConfig(batch_size=batch_size, max_instances=16, augment=augment_config, seed=seed, workers=workers)


def take(batches, n):
    return [next(batches) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert set(x) == set(y) == {*KEYS, "skipped", "over_full"}
        for k in KEYS:
            assert x[k].dtype == y[k].dtype
            np.testing.assert_array_equal(x[k], y[k])
        assert x["skipped"] == y["skipped"] and x["over_full"] == y["over_full"]


def differ(a, b):
    return any(not np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in KEYS)


def identify(image, samples):
    """(index, mirrored) of the source sample whose image the row holds (its real region)."""
    found = [
        (i, mirrored)
        for i, s in enumerate(samples)
        for mirrored in (False, True)
        if image.shape == s["image"].shape and np.array_equal(image, s["image"][:, ::-1] if mirrored else s["image"])
    ]
    assert found, "a batch row holds no source image"
    return found[0]


@pytest.fixture(scope="module")
def synthetic():
    return SyntheticSource("train", 6, image_size=(24, 24), seed=3)


@pytest.fixture(scope="module")
def synthetic_samples(synthetic):
    return [synthetic[i] for i in range(len(synthetic))]


# ----------------------------------------------------------------------------------------------------
# pipeline: determinism, resume, workers, shards


def test_batches_are_deterministic(synthetic):
    first = take(TrainBatches(synthetic, lsj_config()), 3)
    assert first[0]["image"].shape == (4, 24, 24, 3) and first[0]["target_map"].dtype == np.uint8
    assert first[0]["skipped"] == []
    assert_same_batches(first, take(TrainBatches(synthetic, lsj_config()), 3))
    assert differ(first, take(TrainBatches(synthetic, lsj_config(seed=1)), 3))
    # the epoch is 6 samples: batches 0-2 cover two epochs, in two different orders
    rows = [b["image"][r] for b in first for r in range(4)]
    assert any(not np.array_equal(rows[i], rows[i + 6]) for i in range(6))


def test_resume_equals_the_straight_run(synthetic):
    straight = take(TrainBatches(synthetic, lsj_config()), 5)
    interrupted = TrainBatches(synthetic, lsj_config())
    take(interrupted, 2)
    state = json.loads(json.dumps(interrupted.get_state()))  # as a checkpoint stores it
    assert state["batch"] == 2
    resumed = TrainBatches(synthetic, lsj_config())
    resumed.set_state(state)
    assert_same_batches(straight[2:], take(resumed, 3))
    # set_state on an iterator already running moves it back
    interrupted.set_state({**state, "batch": 1})
    assert_same_batches(straight[1:3], take(interrupted, 2))

    for changed in (lsj_config(seed=1), lsj_config(batch_size=2)):
        with pytest.raises(ValueError, match="cannot resume"):
            TrainBatches(synthetic, changed).set_state(state)
    with pytest.raises(ValueError, match="cannot resume"):
        TrainBatches(SyntheticSource("train", 7, image_size=(24, 24), seed=3), lsj_config()).set_state(state)
    for bad in ({**state, "batch": -1}, {**state, "batch": "2"}, {k: v for k, v in state.items() if k != "batch"}):
        with pytest.raises(ValueError, match="cannot resume"):
            TrainBatches(synthetic, lsj_config()).set_state(bad)


def test_worker_process_gives_the_same_batches():
    source = SyntheticSource("train", 8, image_size=(16, 16), seed=5)
    config = lsj_config()
    in_process = take(TrainBatches(source, config), 2)
    assert_same_batches(in_process, take(TrainBatches(source, lsj_config(workers=1)), 2))


def test_process_shards_concatenate_to_the_global_batch():
    source = SyntheticSource("train", 16, image_size=(16, 16), seed=4)
    samples = [source[i] for i in range(16)]
    config = dataclasses.replace(flip_config((16, 16)), prefetch=1)
    global_run = take(TrainBatches(source, config), 4)  # one epoch: stream position q -> sample order[q]
    order = [identify(b["image"][r], samples)[0] for b in global_run for r in range(4)]
    assert sorted(order) == list(range(16))
    recorders = [Recording(source) for _ in range(2)]
    shards = [take(TrainBatches(recorders[p], config, process_index=p, process_count=2), 2) for p in range(2)]

    for k in range(2):
        assert shards[0][k]["image"].shape[0] == 2
        # as documented: process p holds rows [2p, 2p + 2) of each global batch, so the shards concatenated
        # in process order are the global batch
        for key in KEYS:
            np.testing.assert_array_equal(np.concatenate([shards[0][k][key], shards[1][k][key]]), global_run[k][key])
    # Each process reads only samples of its own positions (its rows, and at most 2 batches read ahead:
    # positions < 16, all in the first epoch, where the two processes' samples are disjoint).
    for p in range(2):
        mine = {order[4 * k + 2 * p + i] for k in range(4) for i in range(2)}
        taken = {order[4 * k + 2 * p + i] for k in range(2) for i in range(2)}
        assert taken <= set(recorders[p].reads) <= mine, (p, recorders[p].reads, mine)


def test_process_index_is_checked(synthetic):
    with pytest.raises(ValueError, match="process_index"):
        TrainBatches(synthetic, lsj_config(), process_index=2, process_count=2)
    with pytest.raises(ValueError, match="divisible"):
        TrainBatches(synthetic, lsj_config(batch_size=3), process_index=0, process_count=2)


# ----------------------------------------------------------------------------------------------------
# pipeline: source -> batch, pixel for pixel


def assert_rows_are_their_samples(batches, samples, task, max_instances):
    """Each row is a source sample, mirrored or not, and its targets are those of the sample (mirrored
    alike): the pixel-for-pixel check of source -> batch. Returns the (index, mirrored) of every row."""
    found = []
    for batch in batches:
        for r in range(len(batch["image"])):
            index, mirrored = identify(batch["image"][r], samples)
            sample = samples[index]
            segments = sample["segments"][:, ::-1] if mirrored else sample["segments"]
            expected = targets(segments, sample["segments_info"], task, max_instances)
            assert batch["pixel_mask"][r].all()
            for key, value in zip(("target_map", "class_labels", "mask_valid"), expected, strict=True):
                assert batch[key][r].dtype == value.dtype
                np.testing.assert_array_equal(batch[key][r], value, err_msg=f"{key} of sample {index}")
            found.append((index, mirrored))
    return found


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_batch_rows_are_the_source_samples(synthetic, synthetic_samples, task):
    batches = take(TrainBatches(synthetic, flip_config((24, 24), task=task)), 3)
    found = assert_rows_are_their_samples(batches, synthetic_samples, task, 16)
    assert sorted(i for i, _ in found[:6]) == list(range(6))  # the first epoch is a permutation
    assert {m for _, m in found} == {True, False}


def test_batch_rows_are_the_source_samples_unordered_info():
    samples = [list_sample(seed, count) for seed, count in enumerate((3, 4, 2, 5))]
    for task in ("panoptic", "instance", "semantic"):
        batches = take(TrainBatches(ListSource(samples), flip_config((12, 16), batch_size=2, task=task)), 4)
        assert_rows_are_their_samples(batches, samples, task, 16)


@pytest.fixture
def coco(tmp_path):
    write_coco_panoptic(tmp_path, "train", 6, image_size=(24, 24), seed=3)
    return tmp_path


def test_coco_folder_batches_equal_the_synthetic_ones(coco, synthetic):
    config = lsj_config()
    assert_same_batches(
        take(TrainBatches(CocoPanoptic("train", coco), config), 2), take(TrainBatches(synthetic, config), 2)
    )


def test_corrupt_image_is_skipped_and_replaced_by_the_next(coco, synthetic_samples):
    bad = os.path.join(coco, "train2017", "000000000002.png")
    with open(bad, "wb") as f:
        f.write(b"this is not a png" * 10)
    source = CocoPanoptic("train", coco)
    batches = take(TrainBatches(source, flip_config((24, 24), batch_size=3)), 2)  # one epoch: 6 rows
    assert all(b["image"].shape[0] == 3 for b in batches)
    skipped = [m for b in batches for m in b["skipped"]]
    assert len(skipped) == 1 and "000000000002.png" in skipped[0]
    found = assert_rows_are_their_samples(batches, synthetic_samples, "panoptic", 16)
    assert sorted(i for i, _ in found) == [0, 1, 3, 3, 4, 5]
    # the row that carries the message is the replacement, sample 3
    batch = next(b for b in batches if b["skipped"])
    rows = [identify(batch["image"][r], synthetic_samples)[0] for r in range(3)]
    assert rows.count(3) >= 1


def test_too_many_segments_is_skipped_with_a_message():
    samples = [list_sample(0, 2), list_sample(1, 6), list_sample(2, 3), list_sample(3, 1)]
    source = ListSource(samples)
    batches = take(TrainBatches(source, flip_config((12, 16), max_instances=3, flip=False)), 1)  # one epoch
    (batch,) = batches
    assert batch["image"].shape[0] == 4
    assert len(batch["over_full"]) == 1 and not batch["skipped"]
    assert "list sample 1" in batch["over_full"][0] and "max_instances=3" in batch["over_full"][0]
    found = assert_rows_are_their_samples(batches, samples, "panoptic", 3)
    assert sorted(i for i, _ in found) == [0, 2, 2, 3]


def test_all_samples_unusable_raises():
    source = ListSource([list_sample(0, 6), list_sample(1, 7)])
    batches = TrainBatches(source, flip_config((12, 16), batch_size=2, max_instances=3))
    with pytest.raises(SampleError, match="consecutive samples"):
        next(batches)


def test_read_ahead_is_bounded_by_prefetch(synthetic):
    """grain's default would read 500 batches ahead; the pipeline reads `prefetch` batches ahead."""
    import time

    recorder = Recording(synthetic)
    batches = TrainBatches(recorder, dataclasses.replace(lsj_config(), prefetch=2))
    next(batches)
    time.sleep(0.3)
    assert len(recorder.reads) <= 4 * (1 + 2 + 1)  # the batch taken, 2 ahead, one being started
