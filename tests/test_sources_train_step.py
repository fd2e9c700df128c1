"""Every data source kind, from tiny data written here in its real layout, through the training pipeline:
the device-side masks and labels of one epoch equal, slot by slot, the targets derived here from what was
written (and the sources' documented id rules); then one batch of each source goes through the same
compiled train step (one compile for all: same crop, batch size and target slots)."""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
import pytest
import test_sources_coco as coco
import test_sources_folder as folder
import test_sources_hf as hf
import test_sources_semantic as semantic
import test_sources_tfds as tfds_data
from PIL import Image

from m2f_jax.data.batch import model_inputs
from m2f_jax.data.pipeline import PipelineConfig, TrainBatches
from m2f_jax.data.sources import SOURCES, open_source, tasks_of
from m2f_jax.data.sources import tfds as tfds_source
from m2f_jax.data.synthetic import SyntheticDataset
from m2f_jax.data.transforms import AugmentConfig
from m2f_jax.processing.preprocess import ImageProcessor
from m2f_jax.training import experiment
from m2f_jax.training.mesh import global_batch, make_mesh
from m2f_jax.training.step import check_batch

from helpers import FAST_COMPILE
from tiny_experiment import get_config

# pycocotools' decode warns about numpy 2's copy keyword on every call; nothing here to act on
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

MAX_INSTANCES = 12  # = the tiny model's num_queries


@dataclasses.dataclass
class Segment:
    """One segment as the test wrote it: the source's id, its pixels, contiguous label, crowd, thing."""

    id: int
    mask: np.ndarray
    label: int
    crowd: bool
    thing: bool


@dataclasses.dataclass
class Case:
    kind: str
    options: dict
    samples: list  # [(image uint8 (H, W, 3), [Segment])], one per sample of the train split
    train_task: str  # the task its batch trains in the shared step


def expected_targets(segments: list[Segment], task: str) -> list[tuple[int, np.ndarray]]:
    """(label, mask) per target slot as base.py and batch.py document them: panoptic the non-crowd
    segments, instance the non-crowd things, in ascending source id; semantic one per label present
    (crowd included), ascending. Segments without pixels give no target."""
    present = [s for s in segments if s.mask.any()]
    if task == "semantic":
        labels = sorted({s.label for s in present})
        return [(label, np.any([s.mask for s in present if s.label == label], axis=0)) for label in labels]
    kept = [s for s in sorted(present, key=lambda s: s.id) if not s.crowd and (task == "panoptic" or s.thing)]
    return [(s.label, s.mask) for s in kept]


def _decoded(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _segments_of(ids: np.ndarray, info) -> list[Segment]:
    """Segments of an id map and a segments_info-like list (id, category_id, iscrowd, isthing)."""
    return [Segment(s["id"], ids == s["id"], s["category_id"], s["iscrowd"], s["isthing"]) for s in info]


def _coco_panoptic(root) -> Case:
    pixels = coco._write_panoptic(root, split="train2017")
    # Documented: segment id = R + 256 G + 256^2 B; label = position among the categories sorted by id.
    categories = sorted(coco.PANOPTIC_CATEGORIES, key=lambda c: c["id"])
    label = {c["id"]: k for k, c in enumerate(categories)}
    thing = {c["id"]: bool(c["isthing"]) for c in categories}
    samples = [
        (
            image,
            [
                Segment(s["id"], ids == s["id"], label[s["category_id"]], bool(s["iscrowd"]), thing[s["category_id"]])
                for s in written
            ],
        )  # fmt: skip
        for image, ids, written in zip(pixels, coco._panoptic_ids(), coco._panoptic_segments(), strict=True)
    ]
    return Case("coco_panoptic", {"root": str(root)}, samples, "panoptic")


def _coco_instances(root) -> Case:
    pixels = coco._write_instances(root)
    # Documented: segment k + 1 = the image's k-th usable annotation in JSON order (the 2-point polygon
    # is left out); crowd drawn first, then by decreasing area. person -> 0, dog -> 1, toothbrush -> 2.
    painted = np.zeros(coco.CROWD.shape, np.int32)
    for mask, segment_id in ((coco.CROWD, 4), (coco.POLYGON, 2), (coco.COMPRESSED, 3), (coco.SMALL, 1)):
        painted[mask] = segment_id
    first = [(1, 1, False), (2, 0, False), (3, 2, False), (4, 0, True)]
    samples = [
        (pixels[0], [Segment(i, painted == i, label, crowd, True) for i, label, crowd in first]),
        (pixels[1], []),
        (pixels[2], [Segment(1, coco.LONE_CROWD, 0, True, True)]),
    ]
    return Case("coco_instances", {"root": str(root)}, samples, "instance")


def _ade20k(tmp) -> Case:
    root, written = semantic._write_ade(tmp)
    samples = []
    for stem in sorted(stem for folder_name, stem in semantic.ADE_SAMPLES if folder_name == "training"):
        labels = written[stem]
        # Documented: segment id = pixel value, label = value - 1, 0 = unlabelled.
        segments = [Segment(v, labels == v, v - 1, False, False) for v in np.unique(labels).tolist() if v]
        samples.append((_decoded(os.path.join(root, "images", "training", f"{stem}.jpg")), segments))
    return Case("ade20k", {"root": root}, samples, "semantic")


def _cityscapes(tmp) -> Case:
    root = semantic._write_cityscapes(tmp)
    # The hand-written expectations of test_sources_semantic (documented order: stuff by trainId,
    # instances by instanceId, crowd by trainId; trainIds 11.. are things).
    expected = {"aachen_000000_000019": semantic.EXPECTED_1, "bonn_000001_000019": semantic.EXPECTED_2}
    samples = []
    for city, stems in semantic.CITYSCAPES["train"].items():
        for stem in stems:
            ids, info = semantic._expected(expected.get(stem, []))
            segments = [Segment(i, ids == i, t, crowd, t >= 11) for i, (t, crowd) in info.items()]
            image = _decoded(os.path.join(root, "leftImg8bit", "train", city, f"{stem}_leftImg8bit.png"))
            samples.append((image, segments))
    return Case("cityscapes", {"root": root}, samples, "panoptic")


def _folder(root) -> Case:
    folder.make_folder(root, splits=("train",))
    image, _, _ = folder.reference_maps()
    region = folder.region_mask
    road = ~region(folder.SKY_ROWS, folder.CAR_A, folder.CAR_B, folder.CAR_LOOSE, folder.PERSON_COL, folder.VOID)
    # Documented: one segment per class present outside the instances (ascending label; crowd for things),
    # then the instances by ascending value (5, then 9).
    a = [
        Segment(1, road, folder.ROAD, False, False),
        Segment(2, region(folder.CAR_LOOSE), folder.CAR, True, True),
        Segment(3, region(folder.SKY_ROWS), folder.SKY, False, False),
        Segment(4, region(folder.PERSON_COL), folder.PERSON, True, True),
        Segment(5, region(folder.CAR_A), folder.CAR, False, True),
        Segment(6, region(folder.CAR_B), folder.CAR, False, True),
    ]
    b = [Segment(1, np.ones((folder.H, folder.W), bool), folder.ROAD, False, False)]
    return Case("folder", {"root": str(root)}, [(image, a), (image[::-1], b)], "panoptic")


def _hf_datasets() -> Case:
    dataset = hf.dataset_dict("annotation", [hf.rg_map(), hf.rg_map()])
    options = {"dataset": dataset, "instance_column": "annotation", "id2label": hf.ID2LABEL, "thing_ids": (5, 9)}
    ids, info = hf.expected_segments(instances=True)  # test_sources_hf's derivation from class_map / rg_map
    return Case("hf_datasets", options, [(image, _segments_of(ids, info)) for image in hf.images()], "panoptic")


def _tfds(tmp) -> list[Case]:
    """coco/2017_panoptic, scene_parse150 (instance only) and cityscapes/semantic_segmentation (semantic
    only), prepared by TFDS's own builder machinery as test_sources_tfds does."""
    data_dir, raw = tmp / "data", tmp / "raw"
    raw.mkdir(parents=True)
    cases = []

    def prepare(make, name, config, version, features, task):
        made = [make(raw, f"{name}_{i}") for i in range(2)]
        tfds_data._prepare(data_dir, name, config, version, features, {"train": [m[0] for m in made]})
        samples = [(w["image"], _segments_of(w["segments"], w["segments_info"])) for _, w in made]
        full = f"{name}/{config}" if config else name
        cases.append(Case("tfds", {"name": full, "data_dir": str(data_dir)}, samples, task))

    tf = tfds_data.tfds
    names = [n for _, n in tfds_source.COCO_PANOPTIC]
    prepare(tfds_data._coco_example, "coco", "2017_panoptic", "1.1.0", tfds_data._coco_features(names), "panoptic")
    ade_features = {"image": tf.features.Image(encoding_format="jpeg"), "annotation": tf.features.Image()}
    prepare(tfds_data._ade_example, "scene_parse150", None, "1.0.0", ade_features, "instance")
    city_features = {
        "image_id": tf.features.Text(),
        "image_left": tf.features.Image(shape=(1024, 2048, 3), encoding_format="png"),
        "segmentation_label": tf.features.Image(shape=(1024, 2048, 1), encoding_format="png", use_colormap=True),
    }
    prepare(tfds_data._cityscapes_example, "cityscapes", "semantic_segmentation", "1.0.0", city_features, "semantic")
    return cases


def _synthetic() -> Case:
    options = {"num_images": 4, "image_size": (24, 32), "seed": 0}
    drawn = SyntheticDataset(4, image_size=(24, 32), seed=0)  # documented: segment id = instance + 1
    samples = []
    for i in range(4):
        raw = drawn[i]
        segments = [
            Segment(s["id"] + 1, raw["instances"] == s["id"], s["category_id"], False, bool(s["isthing"]))
            for s in raw["segments_info"]
        ]
        samples.append((raw["image"], segments))
    return Case("synthetic", options, samples, "panoptic")


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, Case]:
    tmp = tmp_path_factory.mktemp("sources")
    built = [
        _coco_panoptic(tmp / "coco_panoptic"),
        _coco_instances(tmp / "coco_instances"),
        _ade20k(tmp / "ade20k"),
        _cityscapes(tmp / "cityscapes"),
        _folder(tmp / "folder"),
        _hf_datasets(),
        *_tfds(tmp / "tfds"),
        _synthetic(),
    ]
    return {case.kind + (f":{case.options['name']}" if case.kind == "tfds" else ""): case for case in built}


NAMES = [
    "coco_panoptic", "coco_instances", "ade20k", "cityscapes", "folder", "hf_datasets",
    "tfds:coco/2017_panoptic", "tfds:scene_parse150", "tfds:cityscapes/semantic_segmentation", "synthetic",
]  # fmt: skip


def test_every_source_kind_is_covered(cases):
    assert sorted(cases) == sorted(NAMES)
    assert {case.kind for case in cases.values()} == set(SOURCES)


def _epoch(source, task: str, crop: tuple[int, int]) -> dict:
    """One epoch in one batch: no resize, no flip, padded to `crop`."""
    augment = AugmentConfig(kind="flip", crop_size=crop, flip=False)
    config = PipelineConfig(batch_size=len(source), max_instances=MAX_INSTANCES, task=task, augment=augment, seed=0)
    batches = TrainBatches(source, config)
    try:
        return next(batches)
    finally:
        batches.close()


@pytest.mark.parametrize("name", NAMES)
def test_epoch_masks_match_what_was_written(cases, name):
    case = cases[name]
    source = open_source(case.kind, "train", **case.options)
    assert len(source) == len(case.samples)
    # the largest image plus a margin, so that every image has padding, which must be in no mask
    crop = tuple(max(image.shape[k] for image, _ in case.samples) + margin for k, margin in ((0, 2), (1, 3)))
    tasks = tasks_of(source)
    assert case.train_task in tasks
    for task in tasks:
        batch = _epoch(source, task, crop)
        assert batch["skipped"] == []
        pixels, pixel_mask, masks = (np.asarray(x) for x in model_inputs(batch, ImageProcessor().normalize))
        assert masks.dtype == np.bool_ and masks.shape == (len(source), MAX_INSTANCES, *crop)
        seen = []
        for row in range(len(source)):
            found = [
                i for i, (image, _) in enumerate(case.samples)
                if np.array_equal(batch["image"][row, : image.shape[0], : image.shape[1]], image)
            ]  # fmt: skip
            assert len(found) == 1, f"{name} {task}: row {row} matches samples {found}"
            seen.append(found[0])
            image, segments = case.samples[found[0]]
            real = np.zeros(crop, bool)
            real[: image.shape[0], : image.shape[1]] = True
            np.testing.assert_array_equal(pixel_mask[row], real)
            assert not batch["image"][row][~real].any() and not pixels[row][~real].any()
            want = expected_targets(segments, task)
            where = f"{name} {task} sample {found[0]}"
            labels = [label for label, _ in want] + [-1] * (MAX_INSTANCES - len(want))
            assert batch["class_labels"][row].tolist() == labels, where
            assert batch["mask_valid"][row].tolist() == [k < len(want) for k in range(MAX_INSTANCES)], where
            for k, (_, mask) in enumerate(want):
                full = np.zeros(crop, bool)
                full[: mask.shape[0], : mask.shape[1]] = mask
                np.testing.assert_array_equal(masks[row, k], full, err_msg=f"{where}, slot {k}")
            assert not masks[row, len(want) :].any(), where
        assert sorted(seen) == list(range(len(source))), f"{name} {task}: one epoch is every sample once"


def test_one_compiled_step_trains_on_every_source(cases):
    """One batch of every source through one jitted step: same crop (LSJ to 32x32), batch size and
    slots, so one compile; the model has the most classes of any source (ADE20K's 150)."""
    sources = {name: open_source(cases[name].kind, "train", **cases[name].options) for name in NAMES}
    c = get_config()
    c.steps = len(sources)  # the schedule spans the steps taken
    mesh = make_mesh(1, devices=jax.devices()[:1])
    config = experiment.model_config(c, max(sources.values(), key=lambda s: len(s.classes)))
    assert config.num_labels == 150 and config.num_queries == MAX_INSTANCES
    opt_config, _ = experiment.optimizer_config(c)
    graphdef, state = experiment.initial_state(c, config, opt_config, mesh)
    step = experiment.jitted_train_step(c, config, graphdef, opt_config, state, mesh, FAST_COMPILE)
    augment = AugmentConfig(kind="lsj", crop_size=(32, 32))
    for k, (name, source) in enumerate(sources.items()):
        pipeline = PipelineConfig(
            batch_size=4, max_instances=MAX_INSTANCES, task=cases[name].train_task, augment=augment, seed=k
        )
        batches = TrainBatches(source, pipeline)
        batch = next(batches)
        batches.close()
        assert batch.pop("skipped") == [] and batch.pop("over_full") == [], name
        assert batch["mask_valid"].any(), f"{name}: a batch without targets trains little"
        check_batch(batch, config.num_labels, k)
        state, metrics = step(state, global_batch(batch, mesh))
        assert bool(metrics["finite"]) and np.isfinite(float(metrics["loss"])), name
        assert int(state.step) == k + 1, name
