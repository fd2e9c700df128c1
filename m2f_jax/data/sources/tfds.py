"""TensorFlow Datasets (prepared on disk as ArrayRecord) as a data source, read without TensorFlow.

`TFDSSource(split, name=..., data_dir=None)` reads a data set that `tfds build` (or
`builder.download_and_prepare`) has already written with `file_format="array_record"`. It opens the
prepared files through TFDS's read-only builder (`builder_from_files`: no generation code, no
download, no TensorFlow; what `tfds.data_source(name, download=False)` does when files come first)
and `as_data_source` (random access, picklable for grain workers). Image fields are taken as the
stored bytes and decoded here: images through the one reader (EXIF orientation, RGB), label images
as they are stored.

Preparing needs TensorFlow for the COCO builder (its `_info` uses `tf.int64`) and for the
scene_parse150 and cityscapes builders (`tf.io.gfile`); reading does not. Prepare with e.g.
`tfds build coco/2017_panoptic --file_format=array_record` (TFDS's public copies are TFRecord,
which has no random access).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from PIL import Image

from m2f_jax.data.sources.base import SampleError
from m2f_jax.processing import image_io

# The 133 COCO panoptic categories (id, name), in the order of panoptic_coco_categories.json, which
# is the order of TFDS's `panoptic_objects/label` names: 80 things, then 53 stuff.
COCO_PANOPTIC = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"),
    (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"),
    (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"), (92, "banner"), (93, "blanket"), (95, "bridge"), (100, "cardboard"),
    (107, "counter"), (109, "curtain"), (112, "door-stuff"), (118, "floor-wood"), (119, "flower"),
    (122, "fruit"), (125, "gravel"), (128, "house"), (130, "light"), (133, "mirror-stuff"), (138, "net"),
    (141, "pillow"), (144, "platform"), (145, "playingfield"), (147, "railroad"), (148, "river"), (149, "road"),
    (151, "roof"), (154, "sand"), (155, "sea"), (156, "shelf"), (159, "snow"), (161, "stairs"), (166, "tent"),
    (168, "towel"), (171, "wall-brick"), (175, "wall-stone"), (176, "wall-tile"), (177, "wall-wood"),
    (178, "water-other"), (180, "window-blind"), (181, "window-other"), (184, "tree-merged"),
    (185, "fence-merged"), (186, "ceiling-merged"), (187, "sky-other-merged"), (188, "cabinet-merged"),
    (189, "table-merged"), (190, "floor-other-merged"), (191, "pavement-merged"), (192, "mountain-merged"),
    (193, "grass-merged"), (194, "dirt-merged"), (195, "paper-merged"), (196, "food-other-merged"),
    (197, "building-other-merged"), (198, "rock-merged"), (199, "wall-other-merged"), (200, "rug-merged"),
)  # fmt: skip
COCO_NUM_THINGS = 80

# The 100 categories of the ADE20K instance annotations (Places Challenge 2017), ids 1..100 in order:
# the thing classes of SceneParse150 (Instance100 k -> the k-th thing of the 150 classes).
ADE_INSTANCE = (
    "bed", "window", "cabinet", "person", "door", "table", "curtain", "chair", "car", "painting, picture",
    "sofa", "shelf", "mirror", "armchair", "seat", "fence", "desk", "wardrobe, closet, press", "lamp", "tub",
    "rail", "cushion", "box", "column, pillar", "signboard, sign", "chest of drawers, chest, bureau, dresser",
    "counter", "sink", "fireplace", "refrigerator, icebox", "stairs", "case, display case, showcase, vitrine",
    "pool table, billiard table, snooker table", "pillow", "screen door, screen", "bookcase", "coffee table",
    "toilet, can, commode, crapper, pot, potty, stool, throne", "flower", "book", "bench", "countertop",
    "stove", "palm, palm tree", "kitchen island", "computer", "swivel chair", "boat", "arcade machine", "bus",
    "towel", "light", "truck", "chandelier", "awning, sunshade, sunblind", "street lamp", "booth", "tv",
    "plane", "clothes", "pole", "bannister, banister, balustrade, balusters, handrail",
    "ottoman, pouf, pouffe, puff, hassock", "bottle", "van", "ship", "fountain",
    "washer, automatic washer, washing machine", "plaything, toy", "stool", "barrel, cask",
    "basket, handbasket", "bag", "minibike, motorbike", "oven", "ball", "food, solid food", "step, stair",
    "trade name", "microwave", "pot", "animal", "bicycle", "dishwasher", "screen", "sculpture",
    "hood, exhaust hood", "sconce", "vase", "traffic light", "tray", "trash can", "fan", "plate", "monitor",
    "bulletin board", "radiator", "glass, drinking glass", "clock", "flag",
)  # fmt: skip

# Cityscapes (labelId, name) of the 19 evaluated classes, in trainId order; trainIds 11.. are things.
CITYSCAPES = (
    (7, "road"), (8, "sidewalk"), (11, "building"), (12, "wall"), (13, "fence"), (17, "pole"),
    (19, "traffic light"), (20, "traffic sign"), (21, "vegetation"), (22, "terrain"), (23, "sky"),
    (24, "person"), (25, "rider"), (26, "car"), (27, "truck"), (28, "bus"), (31, "train"),
    (32, "motorcycle"), (33, "bicycle"),
)  # fmt: skip
CITYSCAPES_NUM_STUFF = 11
# labelId (0..255) -> trainId, 255 (ignore) for every label that is not evaluated.
_CITYSCAPES_TRAIN_ID = np.full(256, 255, np.uint8)
_CITYSCAPES_TRAIN_ID[[label_id for label_id, _ in CITYSCAPES]] = np.arange(len(CITYSCAPES))


def _import_tfds():
    try:
        import tensorflow_datasets
    except ImportError as error:
        raise ImportError(
            "the tfds data source needs tensorflow-datasets (TensorFlow itself is not needed to read): "
            "pip install 'm2f-jax[tfds]'"
        ) from error
    return tensorflow_datasets


def _rgb(data: bytes, where: str) -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8 through the one reader (EXIF orientation, modes)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image_io.pil_to_rgb(image, where)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise SampleError(f"{where}: cannot decode the image ({error})") from error


def _label(data: bytes, where: str) -> np.ndarray:
    """Encoded label PNG bytes -> the stored values: (H, W) or (H, W, 3) integers, no conversion."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            array = np.asarray(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise SampleError(f"{where}: cannot decode the label image ({error})") from error
    return array[..., :3] if array.ndim == 3 else array


def _coco_panoptic(record: Mapping[str, Any], where: str, classes: list[dict]) -> dict[str, Any]:
    pan = _label(record["panoptic_image"], where).astype(np.int32)
    if pan.ndim != 3:
        raise SampleError(f"{where}: panoptic_image must be RGB, got shape {pan.shape}")
    objects = record["panoptic_objects"]
    info = [
        {"id": int(i), "category_id": int(c), "iscrowd": bool(crowd), "isthing": classes[int(c)]["isthing"]}
        for i, c, crowd in zip(objects["id"], objects["label"], objects["is_crowd"], strict=True)
    ]
    return {
        "image": _rgb(record["image"], where),
        "segments": pan[..., 0] + 256 * pan[..., 1] + 65536 * pan[..., 2],
        "segments_info": info,
        "name": record["image/filename"].decode(),
    }


def _ade_instances(record: Mapping[str, Any], where: str, classes: list[dict]) -> dict[str, Any]:
    annotation = _label(record["annotation"], where)
    if annotation.ndim != 3:
        raise SampleError(f"{where}: annotation must be RGB (R category, G instance), got shape {annotation.shape}")
    category, instance = annotation[..., 0].astype(np.int32), annotation[..., 1].astype(np.int32)
    pairs = np.unique(instance * 256 + category)
    pairs = pairs[pairs >= 256]  # instance 0 = no instance
    ids, categories = pairs // 256, pairs % 256
    if len(np.unique(ids)) != len(ids) or not np.all((categories >= 1) & (categories <= len(classes))):
        raise SampleError(f"{where}: instances need one category in 1..{len(classes)} each, got {pairs.tolist()}")
    info = [
        {"id": int(i), "category_id": int(c) - 1, "iscrowd": False, "isthing": True}
        for i, c in zip(ids, categories, strict=True)
    ]
    return {"image": _rgb(record["image"], where), "segments": instance, "segments_info": info, "name": where}


def _cityscapes(record: Mapping[str, Any], where: str, classes: list[dict]) -> dict[str, Any]:
    label = _label(record["segmentation_label"], where)
    if label.ndim == 3 and label.shape[2] == 1:
        label = label[..., 0]
    if label.ndim != 2 or label.dtype != np.uint8:
        raise SampleError(f"{where}: segmentation_label must be 8-bit single-channel, got {label.dtype} {label.shape}")
    train_id = _CITYSCAPES_TRAIN_ID[label]
    present = np.unique(train_id)
    info = [{"id": int(t) + 1, "category_id": int(t), "iscrowd": False, "isthing": classes[t]["isthing"]}
            for t in present[present != 255]]  # fmt: skip
    return {
        "image": _rgb(record["image_left"], where),
        "segments": np.where(train_id == 255, 0, train_id.astype(np.int32) + 1),
        "segments_info": info,
        "name": record["image_id"].decode(),
    }


# builder name (without version) -> (our split -> TFDS split, image fields, decoder, classes).
# What each data set's annotations can train: scene_parse150 labels only things (stuff is ignore), the
# cityscapes config only classes (one segment per class, instances merged).
_TASKS = {
    "coco/2017_panoptic": ("panoptic", "instance", "semantic"),
    "scene_parse150": ("instance",),
    "cityscapes/semantic_segmentation": ("semantic",),
}

_DATASETS: dict[str, tuple[dict[str, str], tuple[str, ...], Callable, list[dict]]] = {
    "coco/2017_panoptic": (
        {"train": "train", "val": "validation"},
        ("image", "panoptic_image"),
        _coco_panoptic,
        [{"id": i, "name": n, "isthing": k < COCO_NUM_THINGS} for k, (i, n) in enumerate(COCO_PANOPTIC)],
    ),
    "scene_parse150": (
        {"train": "train", "val": "test"},
        ("image", "annotation"),
        _ade_instances,
        [{"id": k + 1, "name": n, "isthing": True} for k, n in enumerate(ADE_INSTANCE)],
    ),
    "cityscapes/semantic_segmentation": (
        {"train": "train", "val": "validation"},
        ("image_left", "segmentation_label"),
        _cityscapes,
        [{"id": i, "name": n, "isthing": k >= CITYSCAPES_NUM_STUFF} for k, (i, n) in enumerate(CITYSCAPES)],
    ),
}


class TFDSSource:
    """A prepared TFDS data set (`file_format="array_record"`) as samples (see `base`).

    Options: `name` (a TFDS builder name, optionally with ":version"; the latest prepared version
    otherwise) and `data_dir` (TFDS's default, $TFDS_DATA_DIR or ~/tensorflow_datasets, if None).

    - "coco/2017_panoptic": ids from the RGB `panoptic_image` (R + 256 G + 256^2 B), matched to
      `panoptic_objects` by id; category_id = TFDS's `label` (the 133 categories in COCO's order, 80
      things then 53 stuff; `classes` holds their COCO ids and the names are checked against the
      data set's); iscrowd = `is_crowd`. Splits train / validation.
    - "scene_parse150": NOT the 150-class ADEChallengeData2016 semantic labels. TFDS builds it from
      the Places Challenge 2017 `annotations_instance.tar`: `annotation` is an RGB PNG whose R channel
      is one of 100 instance categories (1..100, the thing classes of SceneParse150 in order) and G
      an instance id (0 = no instance). Segments are the instances (G), category_id = R - 1; stuff
      and unlabelled pixels are 0 (ignore). For instance segmentation only (Mask2Former's ADE20K
      instance task, 100 classes); use the "ade20k" source for semantic or panoptic ADE20K. TFDS
      has no validation split: "val" reads TFDS's "test", which holds the ADE validation images.
    - "cityscapes/semantic_segmentation": `segmentation_label` holds gtFine labelIds (TFDS reads the
      `*_gtFine_labelIds.png` files), mapped here to the 19 trainId classes (`classes` ids are the
      labelIds); every other labelId is ignore (0). One segment per class present (semantic
      segmentation: a thing class is one segment for all its instances, so not for instance or
      panoptic targets). Manual download: put `leftImg8bit_trainvaltest.zip` and
      `gtFine_trainvaltest.zip` from cityscapes-dataset.com in `<data_dir>/downloads/manual/`, then
      `tfds build cityscapes/semantic_segmentation --file_format=array_record`.
    """

    def __init__(self, split: str, name: str = "coco/2017_panoptic", data_dir: str | None = None):
        dataset = name.split(":")[0]
        if dataset not in _DATASETS:
            raise ValueError(f"tfds source: unsupported data set {name!r}; one of {sorted(_DATASETS)}")
        splits, image_fields, self._decode, classes = _DATASETS[dataset]
        if split not in splits:
            raise ValueError(f"tfds source: split must be one of {sorted(splits)}, got {split!r}")
        tfds = _import_tfds()
        try:
            builder = tfds.core.read_only_builder.builder_from_files(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError as error:
            raise FileNotFoundError(
                f"tfds source: {name!r} is not prepared in data_dir={data_dir!r} (TFDS's default if None); "
                f"prepare it with `tfds build {dataset} --file_format=array_record` ({error})"
            ) from error
        missing = set(image_fields) - set(builder.info.features)
        if missing:
            raise ValueError(f"tfds source: {name!r} in {builder.data_dir} lacks the features {sorted(missing)}")
        if dataset == "coco/2017_panoptic":
            names = list(builder.info.features["panoptic_objects"]["label"].names)
            if names != [c["name"] for c in classes]:
                raise ValueError(
                    f"tfds source: {builder.data_dir} labels are not the 133 COCO panoptic categories in "
                    f"COCO's order (first differences: {_differences(names, [c['name'] for c in classes])})"
                )
        self.split, self.name, self.classes = split, name, classes
        self.tasks = _TASKS[dataset]
        self._tfds_split, self._dir = splits[split], str(builder.data_dir)
        try:
            self._records = builder.as_data_source(
                split=self._tfds_split, decoders={f: tfds.decode.SkipDecoding() for f in image_fields}
            )
        except Exception as error:  # TFDS raises several types for TFRecord-only data and missing splits
            raise ValueError(
                f"tfds source: cannot open split {self._tfds_split!r} of {self._dir} for random access (it must "
                f"be prepared with file_format='array_record'): {error}"
            ) from error

    def __len__(self) -> int:
        return len(self._records)

    def describe(self, index: int) -> str:
        return f"{self.name} {self._tfds_split}[{index}] in {self._dir}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self._records):
            raise IndexError(f"{self.name} {self.split}: index {index} out of range for {len(self._records)} samples")
        where = self.describe(index)
        try:
            record = self._records[index]
        except Exception as error:  # a corrupt record: array_record and the example parser raise many types
            raise SampleError(f"{where}: cannot read the record ({error})") from error
        sample = self._decode(record, where, self.classes)
        if sample["segments"].shape != sample["image"].shape[:2]:
            raise SampleError(
                f"{where}: label {sample['segments'].shape} and image {sample['image'].shape[:2]} sizes differ"
            )
        return sample  # checked against the contract by the pipeline (pipeline.compact), as every source's


def _differences(got: list[str], want: list[str]) -> list[tuple[int, str, str]]:
    if len(got) != len(want):
        return [(-1, f"{len(got)} labels", f"{len(want)} expected")]
    return [(i, g, w) for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w][:3]
