"""Predictions written in the formats that the official tools score.

- `PanopticWriter`: COCO panoptic, one RGB PNG per image (id = R + 256 G + 256^2 B, panopticapi's
  id2rgb) and one JSON {"annotations": [...]} for panopticapi's `pq_compute`;
- `InstanceWriter`: a COCO results JSON, [{"image_id", "category_id", "segmentation": RLE, "score"}],
  for pycocotools' `COCO.loadRes` and `COCOeval` (the entries `InstanceEvaluator` scores);
- `SemanticWriter`: one PNG of class values per image (ADE20K's and Cityscapes' submission formats).

Our predictions carry contiguous labels 0..K-1; every writer maps them back to the data set's own
ids through `category_ids`: a sequence (position = label), typically `[c["id"] for c in
source.classes]`, or a mapping {label: id}. A label without an id raises. Every file is written to
a temporary file beside it and renamed, so a reader never sees half a file; existing files are
replaced only with overwrite=True. The JSON files are written by `close()` (or at the end of a
`with` block that raises nothing), after all the PNGs.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import IO, Any

import numpy as np
from PIL import Image

from m2f_jax.evaluation.instance import coco_results, read_predictions

PRED_VOID = (0, -1)  # "no segment" and "nothing predicted" in our panoptic maps; 0 is VOID in COCO's PNGs


def write_atomically(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """`write(file)` into a new temporary file in `path`'s folder, then renamed to `path`: a failure
    leaves the old file (or none), never a partial one."""
    folder, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "xb") as f:
            write(f)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _category_table(category_ids: Sequence[int] | Mapping[int, int]) -> dict[int, int]:
    if isinstance(category_ids, Mapping):
        return {int(label): int(i) for label, i in category_ids.items()}
    return {label: int(i) for label, i in enumerate(category_ids)}


def _mapped(table: dict[int, int], label: int, where: str) -> int:
    if label not in table:
        raise ValueError(f"{where}: label {label} has no entry in category_ids ({len(table)} labels)")
    return table[label]


def _png_name(file_name: str) -> str:
    """The PNG's name for an image: its file name with the extension .png (image.jpg -> image.png)."""
    if os.path.isabs(file_name) or ".." in file_name.split(os.sep):
        raise ValueError(f"file_name must be a name inside the output folder, got {file_name!r}")
    return os.path.splitext(file_name)[0] + ".png"


def _refuse_existing(path: str, overwrite: bool) -> None:
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")


def _write_png(path: str, array: np.ndarray) -> None:
    write_atomically(path, lambda f: Image.fromarray(array).save(f, format="PNG"))


def _write_json(path: str, value: Any) -> None:
    write_atomically(path, lambda f: f.write(json.dumps(value).encode("utf-8")))


class _Writer:
    """close() on leaving a `with` block normally; after an exception nothing more is written."""

    def close(self) -> str:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()


class PanopticWriter(_Writer):
    """COCO panoptic predictions: `folder`/<name>.png per image and the JSON `json_path` (default
    `folder` + ".json", as COCO's panoptic_val2017/ and panoptic_val2017.json), for panopticapi."""

    def __init__(
        self,
        folder: str,
        category_ids: Sequence[int] | Mapping[int, int],
        json_path: str | None = None,
        overwrite: bool = False,
    ):
        self.folder, self.overwrite = folder, overwrite
        self.json_path = json_path or os.path.normpath(folder) + ".json"
        self.category_ids = _category_table(category_ids)
        _refuse_existing(self.json_path, overwrite)
        os.makedirs(folder, exist_ok=True)
        self.annotations: list[dict[str, Any]] = []
        self._image_ids: set[int] = set()

    def add(self, image_id: int, file_name: str, segmentation: Any, segments_info: Sequence[Mapping[str, Any]]) -> None:
        """One image: `post_process_panoptic_segmentation`'s (H, W) id map (0 and -1: void) and its
        [{"id", "label_id", ...}]; `file_name` is the image's (its PNG: the same name with .png).
        Raises on map ids not listed, listed ids without pixels (panopticapi refuses both), ids
        outside [1, 2^24) and labels without a category id."""
        image_id = int(image_id)
        if image_id in self._image_ids:
            raise ValueError(f"image id {image_id} was already added")
        png = _png_name(file_name)
        path = os.path.join(self.folder, png)
        _refuse_existing(path, self.overwrite)
        ids = np.asarray(segmentation)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"segmentation must be an (H, W) integer id map, got {ids.dtype} {ids.shape}")
        try:
            listed = {int(s["id"]): int(s["label_id"]) for s in segments_info}
        except KeyError as e:
            raise ValueError(f"every segment needs 'id' and 'label_id', missing {e}") from None
        if len(listed) != len(segments_info):
            raise ValueError(f"segments_info repeats ids: {sorted(int(s['id']) for s in segments_info)}")
        bad = sorted(i for i in listed if not 0 < i < 256**3)
        if bad:
            raise ValueError(f"segment ids must lie in [1, 2^24) to fit an RGB PNG, got {bad}")
        ids = np.where(np.isin(ids, PRED_VOID), 0, ids).astype(np.int64)
        present = set(np.unique(ids).tolist()) - {0}
        if present - listed.keys():
            raise ValueError(f"ids {sorted(present - listed.keys())[:10]} are in the map but not in segments_info")
        if listed.keys() - present:
            raise ValueError(f"segments {sorted(listed.keys() - present)} are listed but have no pixels")
        segments = []
        for segment_id, label in listed.items():
            mask = ids == segment_id
            rows, columns = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            x, y = int(columns[0]), int(rows[0])
            segments.append(
                {
                    "id": segment_id,
                    "category_id": _mapped(self.category_ids, label, f"segment {segment_id}"),
                    "iscrowd": 0,
                    "bbox": [x, y, int(columns[-1]) - x + 1, int(rows[-1]) - y + 1],
                    "area": int(mask.sum()),
                }
            )
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 256**2], axis=-1).astype(np.uint8)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _write_png(path, rgb)
        self._image_ids.add(image_id)
        self.annotations.append({"image_id": image_id, "file_name": png, "segments_info": segments})

    def close(self) -> str:
        """Writes the JSON (after every PNG) and returns its path."""
        _write_json(self.json_path, {"annotations": self.annotations})
        return self.json_path


class InstanceWriter(_Writer):
    """A COCO instance results JSON at `path`. Labels not in `thing_labels` (None: all labels) are
    left out, as COCO instance results hold thing categories only; entries are kept in memory
    (compressed RLE) and written by `close()`."""

    def __init__(
        self,
        path: str,
        category_ids: Sequence[int] | Mapping[int, int],
        thing_labels: Collection[int] | None = None,
        overwrite: bool = False,
    ):
        self.path = path
        self.category_ids = _category_table(category_ids)
        things = self.category_ids.keys() if thing_labels is None else {int(label) for label in thing_labels}
        unknown = sorted(set(things) - self.category_ids.keys())
        if unknown:
            raise ValueError(f"thing_labels {unknown} have no entry in category_ids")
        self._things = {label: self.category_ids[label] for label in things}
        _refuse_existing(path, overwrite)
        self.results: list[dict[str, Any]] = []
        self._image_ids: set[int] = set()

    def add(self, image_id: int, predictions: Mapping[str, Any]) -> None:
        """One image's `post_process_instance_segmentation(..., return_binary_maps=True)` result at
        the image's own size (for COCO AP: threshold=0, overlap_mask_area_threshold=0)."""
        image_id = int(image_id)
        if image_id in self._image_ids:
            raise ValueError(f"image id {image_id} was already added")
        masks, labels, scores = read_predictions(predictions)
        for label in set(labels.tolist()):
            _mapped(self.category_ids, label, f"image {image_id}")
        self.results += coco_results(image_id, masks, labels, scores, self._things)
        self._image_ids.add(image_id)

    def close(self) -> str:
        """Writes the JSON and returns its path."""
        _write_json(self.path, self.results)
        return self.path


class SemanticWriter(_Writer):
    """`folder`/<name>.png per image: each pixel's category_ids[label], uint8 when every id is below
    256, else uint16. ADE20K's submission format is `category_ids=range(1, 151)` (value = label + 1; 0,
    "other", is never predicted), i.e. `[c["id"] for c in ade20k.CLASSES]`; Cityscapes' is its
    source's class ids (trainId -> labelId); `range(num_classes)` writes the labels themselves."""

    def __init__(self, folder: str, category_ids: Sequence[int] | Mapping[int, int], overwrite: bool = False):
        self.folder, self.overwrite = folder, overwrite
        self.category_ids = _category_table(category_ids)
        if not self.category_ids or any(not 0 <= v < 2**16 for v in self.category_ids.values()):
            raise ValueError("category_ids must be one or more values in [0, 65536) (a PNG's range)")
        self.dtype = np.uint8 if max(self.category_ids.values()) < 256 else np.uint16
        os.makedirs(folder, exist_ok=True)

    def add(self, file_name: str, segmentation: Any) -> str:
        """One (H, W) map of labels (e.g. `post_process_semantic_segmentation`'s); returns the PNG's path."""
        path = os.path.join(self.folder, _png_name(file_name))
        _refuse_existing(path, self.overwrite)
        labels = np.asarray(segmentation)
        if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"segmentation must be an (H, W) integer label map, got {labels.dtype} {labels.shape}")
        present, inverse = np.unique(labels, return_inverse=True)
        values = np.array([_mapped(self.category_ids, int(v), path) for v in present], self.dtype)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _write_png(path, values[inverse.reshape(labels.shape)])
        return path

    def close(self) -> str:
        """Nothing is pending (every PNG is written by `add`); returns the folder."""
        return self.folder


class EvaluationWriters:
    """An evaluation's predictions, each task in its official format under `folder`: panoptic/ and
    panoptic.json, instances.json, semantic/ (the data set's own category and image ids; a sample
    without "image_id" is numbered by its index). Several processes: each writes its own images'
    PNGs, and process 0 the JSON files with every process's entries (`close` is a collective)."""

    def __init__(self, folder: str, data, tasks: Collection[str], overwrite: bool = False):
        ids = [c["id"] for c in data.classes]
        things = [k for k, c in enumerate(data.classes) if c["isthing"]]
        self.panoptic = (
            PanopticWriter(os.path.join(folder, "panoptic"), ids, overwrite=overwrite) if "panoptic" in tasks else None
        )
        self.instance = (
            InstanceWriter(os.path.join(folder, "instances.json"), ids, things, overwrite=overwrite)
            if "instance" in tasks
            else None
        )
        self.semantic = (
            SemanticWriter(os.path.join(folder, "semantic"), ids, overwrite=overwrite) if "semantic" in tasks else None
        )

    def add(self, index: int, sample: Mapping[str, Any], predictions: Mapping[str, Any]) -> None:
        image_id = int(sample.get("image_id", index))
        if self.panoptic is not None:
            p = predictions["panoptic"]
            self.panoptic.add(image_id, sample["name"], p["segmentation"], p["segments_info"])
        if self.instance is not None:
            self.instance.add(image_id, predictions["instance"])
        if self.semantic is not None:
            self.semantic.add(sample["name"], predictions["semantic"])

    def close(self) -> None:
        import jax

        from m2f_jax.training.mesh import gather_objects

        panoptic = gather_objects(None if self.panoptic is None else self.panoptic.annotations)
        instance = gather_objects(None if self.instance is None else self.instance.results)
        if jax.process_index() != 0:
            return
        if self.panoptic is not None:
            self.panoptic.annotations = sorted((a for part in panoptic for a in part), key=lambda a: a["image_id"])
            self.panoptic.close()
        if self.instance is not None:
            self.instance.results = [r for part in instance for r in part]
            self.instance.close()
