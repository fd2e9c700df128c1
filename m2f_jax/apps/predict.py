"""Segments an image or a folder of images with a converted (or raw HF) Mask2Former, or a train.py run's.

    m2f-predict --model converted/swin-tiny-coco-panoptic --task panoptic --input photos/ --output out/
    (or python predict.py ... in a checkout)

For every readable image NAME.EXT it writes, under --output:
  NAME_overlay.png        the image tinted by segment, with a legend of label names
  NAME_segmentation.png   the raw result: 16-bit PNG of class ids (semantic) or of segment ids
                          (panoptic/instance: 0 = no segment; ids as in the JSON, which for
                          instances are the post-processing's ids + 1, as those count from 0)
  NAME.json               the segments: id, label_id, label, score, area in pixels
Inputs that share a NAME (photo.jpg, photo.png) keep their extension in it (photo.jpg_overlay.png).
Existing results are not overwritten unless --overwrite is given (--skip-existing keeps complete
results and redoes the rest, which resumes an interrupted run);
each file is written whole or not at all. A folder of results given as --input again is not
segmented again. Images that cannot be read or segmented are reported and skipped; a summary ends
the run (exit status 1 if any were skipped, 2 if the run could not start).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
RESULT_SUFFIXES = ("_overlay.png", "_segmentation.png", ".json")
_MARK_KEY, _MARK_VALUE = "Software", "m2f-predict"


class StartError(Exception):
    """The run cannot start (bad arguments, input or output); nothing has been written."""


# ----------------------------------------------------------------------------------------------------
# Inputs and output names


def is_own_output(path: str) -> bool:
    """True for the PNGs this tool writes (marked in a PNG text chunk), so that an output folder given
    as input is not segmented again, even after an interrupted run."""
    if not os.path.basename(path).endswith(RESULT_SUFFIXES[:2]):
        return False
    from PIL import Image

    try:
        with Image.open(path) as image:  # reads the header chunks only
            return getattr(image, "text", {}).get(_MARK_KEY) == _MARK_VALUE
    except (OSError, ValueError, SyntaxError):
        return False


def list_inputs(path: str) -> list[str]:
    if os.path.isdir(path):
        return sorted(
            os.path.join(path, name)
            for name in os.listdir(path)
            if name.lower().endswith(IMAGE_SUFFIXES)
            and not name.startswith(".")
            and not is_own_output(os.path.join(path, name))
        )
    if os.path.isfile(path):
        return [path]
    raise StartError(f"--input {path} is neither a file nor a folder")


def output_names(paths: list[str]) -> dict[str, str]:
    """Each input's result name: its stem, or its whole file name where stems collide (compared without
    case, for case-insensitive file systems), numbered if even that collides."""
    stems: dict[str, int] = {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0].lower()
        stems[stem] = stems.get(stem, 0) + 1
    names, taken = {}, set()
    for path in paths:
        file_name = os.path.basename(path)
        stem = os.path.splitext(file_name)[0]
        name = stem if stems[stem.lower()] == 1 else file_name
        candidate, n = name, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{name}-{n}"
        taken.add(candidate.lower())
        names[path] = candidate
    return names


def check_output_folder(folder: str) -> None:
    """The folder exists (or is created) and takes files, checked before any work."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise StartError(f"--output {folder} exists and is not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise StartError(f"--output {folder} cannot be written to ({e.strerror or e})") from e


def plan_outputs(paths: list[str], folder: str, overwrite: bool, skip_existing: bool) -> dict[str, str]:
    """{input: result name} of the inputs to segment; refuses to overwrite results (or inputs)."""
    names = output_names(paths)
    inputs = {os.path.realpath(p) for p in paths}
    todo, existing = {}, []
    for path, name in names.items():
        files = [os.path.join(folder, name + suffix) for suffix in RESULT_SUFFIXES]
        clobbered = [f for f in files if os.path.realpath(f) in inputs]
        if clobbered:
            raise StartError(f"the results of {path} would overwrite the input {clobbered[0]}; choose another --output")
        present = [f for f in files if os.path.exists(f)]
        if skip_existing and len(present) == len(files):
            continue
        if present and not (overwrite or skip_existing):  # --skip-existing redoes incomplete results
            existing.extend(present)
        todo[path] = name
    if existing:
        raise StartError(
            f"{len(existing)} result files already exist in {folder} (e.g. {existing[0]}); pass --overwrite to "
            "replace them, --skip-existing to keep them and segment the rest, or choose another --output"
        )
    return todo


# ----------------------------------------------------------------------------------------------------
# Writing


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """`write(temporary path)`, then rename it to `path`: a crash or a full disk leaves the old file (or
    none), never a partial one."""
    folder, name = os.path.split(path)
    fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def result_record(result, task: str, id2label: dict[int, str]):
    """(the raw uint16 id map, the JSON segments) of one result."""
    import numpy as np

    if task == "semantic":
        ids = np.asarray(result)
        segments = [
            {"id": int(c), "label_id": int(c), "label": id2label.get(int(c), str(c)), "area": int((ids == c).sum())}
            for c in np.unique(ids)
        ]
        return ids, segments
    segmentation = np.asarray(result["segmentation"])
    if segmentation.ndim == 3:  # binary maps -> id map
        ids = np.zeros(segmentation.shape[1:], np.int64)
        for info, binary in zip(result["segments_info"], segmentation, strict=True):
            ids[binary.astype(bool)] = info["id"]
        segmentation = ids
    shift = 1 if task == "instance" else 0  # instance ids count from 0; keep 0 for "none"
    raw = np.where(segmentation < 0, 0, segmentation + shift)
    segments = [
        {
            "id": int(s["id"]) + shift,
            "label_id": int(s["label_id"]),
            "label": id2label.get(int(s["label_id"]), str(s["label_id"])),
            "score": float(s["score"]),
            "area": int((segmentation == s["id"]).sum()),
        }
        for s in result["segments_info"]
    ]
    return raw, segments


def write_outputs(image, result, task: str, id2label: dict[int, str], source: str, name: str, folder: str) -> None:
    import numpy as np
    from PIL import Image, PngImagePlugin

    from m2f_jax.visualize import overlay

    raw, segments = result_record(result, task, id2label)
    mark = PngImagePlugin.PngInfo()
    mark.add_text(_MARK_KEY, _MARK_VALUE)
    picture = overlay(image, result, id2label)
    write_atomically(os.path.join(folder, f"{name}_overlay.png"), lambda p: picture.save(p, "PNG", pnginfo=mark))
    ids = Image.fromarray(raw.astype(np.uint16))
    write_atomically(os.path.join(folder, f"{name}_segmentation.png"), lambda p: ids.save(p, "PNG", pnginfo=mark))
    record = {"image": os.path.basename(source), "task": task, "size": list(raw.shape), "segments": segments}

    def dump(path: str) -> None:
        with open(path, "w") as f:
            json.dump(record, f, indent=1)

    # The JSON last: its presence marks the image's results as complete (--skip-existing).
    write_atomically(os.path.join(folder, f"{name}.json"), dump)


# ----------------------------------------------------------------------------------------------------
# The run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        required=True,
        help="converted folder, raw HF save_pretrained folder, hub id, or train.py run folder (its latest checkpoint)",
    )
    parser.add_argument("--task", required=True, choices=("panoptic", "instance", "semantic"))
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, help="folder for the results (created)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per jitted forward (padded)")
    parser.add_argument("--threshold", type=float, default=None, help="score threshold in [0, 1] (panoptic/instance)")
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype (bfloat16 on GPUs/TPUs)"
    )
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace results already in --output")
    existing.add_argument(
        "--skip-existing", action="store_true", help="keep complete results, segment the rest (resumes a run)"
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        parser.error(f"--threshold must be in [0, 1], got {args.threshold}")
    return args


def load(path: str, processor) -> tuple[object | None, str | None]:
    """(the image, None) if it can be read and processed, else (None, the reason)."""
    from m2f_jax.processing.image_io import read_image

    try:
        image = read_image(path)
        processor.resized_size(*image.shape[:2])  # an image too thin to resize fails here, alone
    except (FileNotFoundError, ValueError) as e:
        return None, f"{path}: {e}" if path not in str(e) else str(e)
    return image, None


def run(args: argparse.Namespace) -> int:
    paths = list_inputs(args.input)
    if not paths:
        raise StartError(f"no images in {args.input} (looked for {', '.join(IMAGE_SUFFIXES)})")
    check_output_folder(args.output)
    todo = plan_outputs(paths, args.output, args.overwrite, args.skip_existing)
    skipped_done = len(paths) - len(todo)

    from tqdm import tqdm

    import m2f_jax
    from m2f_jax.inference import Predictor, default_processor, post_process

    try:
        model = m2f_jax.from_pretrained(args.model)
        model.set_dtype(args.dtype)
        predictor = Predictor(model, default_processor(model), batch_size=args.batch_size)
    except (OSError, ValueError) as e:
        raise StartError(f"--model {args.model}: {e}") from e
    kwargs = {} if args.threshold is None or args.task == "semantic" else {"threshold": args.threshold}

    failed: list[str] = []
    written, stopped = 0, None
    with tqdm(total=len(todo), unit="image", file=sys.stderr, disable=None) as bar:

        def readable():
            """The images that can be read, as (path, image) keys for the predictor's batches by shape."""
            for path in todo:
                image, problem = load(path, predictor.processor)
                if problem:
                    failed.append(problem)
                    bar.update(1)
                else:
                    yield (path, image), image

        for (path, image), outputs in predictor.stream(readable()):
            bar.update(1)
            try:
                result = post_process(outputs, args.task, **kwargs)[0]
            except ValueError as error:  # e.g. non-finite outputs: this image only
                failed.append(f"{path}: {error}")
                continue
            try:
                write_outputs(image, result, args.task, model.config.id2label, path, todo[path], args.output)
            except OSError as e:  # a full disk or a folder gone read-only: later images would fail too
                stopped = f"cannot write the results of {path} to {args.output} ({e.strerror or e})"
                break
            written += 1

    note = f" ({skipped_done} already done)" if skipped_done else ""
    print(f"segmented {written} of {len(todo)} images into {args.output}{note}", file=sys.stderr)
    for message in failed:
        print(f"  skipped: {message}", file=sys.stderr)
    if stopped:
        print(f"stopped: {stopped}; rerun with --skip-existing to finish", file=sys.stderr)
    return 1 if failed or stopped else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except StartError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
