#!/usr/bin/env python
"""Segments an image or a folder of images with a converted (or raw HF) Mask2Former.

    python predict.py --model converted/swin-tiny-coco-panoptic --task panoptic --input photos/ --output out/

For every readable image it writes, under --output:
  NAME_overlay.png        the image tinted by segment, with a legend of label names
  NAME_segmentation.png   the raw result: 16-bit PNG of class ids (semantic) or of segment ids
                          (panoptic/instance: 0 = no segment; ids as in the JSON, which for
                          instances are the post-processing's ids + 1, as those count from 0)
  NAME.json               the segments: id, label_id, label, score, area in pixels
Unreadable files are reported and skipped; a summary ends the run (exit status 1 if any failed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def list_inputs(path: str) -> list[str]:
    if os.path.isdir(path):
        return sorted(
            os.path.join(path, name)
            for name in os.listdir(path)
            if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")
        )
    if os.path.isfile(path):
        return [path]
    raise FileNotFoundError(f"--input {path} is neither a file nor a folder")


def read_image(path: str):
    """RGB uint8 array, or raises ValueError saying why the file cannot be used."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e


def progress(done: int, total: int, start: float) -> None:
    width = 30
    filled = int(width * done / max(total, 1))
    rate = done / max(time.perf_counter() - start, 1e-9)
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} images, {rate:.2f}/s", end="", file=sys.stderr)
    if done == total:
        print(file=sys.stderr)


def write_outputs(image, result, task: str, id2label: dict[int, str], stem: str, folder: str) -> None:
    import numpy as np
    from PIL import Image

    from m2f_jax.visualize import overlay

    overlay(image, result, id2label).save(os.path.join(folder, f"{stem}_overlay.png"))
    if task == "semantic":
        ids = np.asarray(result)
        segments = [
            {"id": int(c), "label_id": int(c), "label": id2label.get(int(c), str(c)), "area": int((ids == c).sum())}
            for c in np.unique(ids)
        ]
        raw = ids
    else:
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
    Image.fromarray(raw.astype(np.uint16)).save(os.path.join(folder, f"{stem}_segmentation.png"))
    with open(os.path.join(folder, f"{stem}.json"), "w") as f:
        json.dump({"image": stem, "task": task, "size": list(raw.shape), "segments": segments}, f, indent=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="converted folder, raw HF save_pretrained folder, or hub id")
    parser.add_argument("--task", required=True, choices=("panoptic", "instance", "semantic"))
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, help="folder for the results (created)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threshold", type=float, default=None, help="score threshold (panoptic/instance)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")

    paths = list_inputs(args.input)
    if not paths:
        print(f"no images in {args.input} (looked for {', '.join(IMAGE_SUFFIXES)})", file=sys.stderr)
        return 1

    import m2f_jax
    from m2f_jax.inference import segment_batch
    from m2f_jax.processing.preprocess import ImageProcessor

    model = m2f_jax.from_pretrained(args.model)
    has_config = os.path.isfile(os.path.join(args.model, "preprocessor_config.json"))
    processor = ImageProcessor.from_pretrained(args.model) if has_config else ImageProcessor()
    kwargs = {} if args.threshold is None or args.task == "semantic" else {"threshold": args.threshold}
    os.makedirs(args.output, exist_ok=True)

    failed: list[str] = []
    done = 0
    start = time.perf_counter()
    for first in range(0, len(paths), args.batch_size):
        batch = []
        for path in paths[first : first + args.batch_size]:
            try:
                batch.append((path, read_image(path)))
            except ValueError as e:
                failed.append(str(e))
                done += 1
        if batch:
            results = segment_batch(model, [image for _, image in batch], args.task, processor, **kwargs)
            for (path, image), result in zip(batch, results, strict=True):
                stem = os.path.splitext(os.path.basename(path))[0]
                write_outputs(image, result, args.task, model.config.id2label, stem, args.output)
                done += 1
        progress(done, len(paths), start)

    print(f"segmented {len(paths) - len(failed)} of {len(paths)} images into {args.output}", file=sys.stderr)
    for message in failed:
        print(f"  skipped: {message}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
