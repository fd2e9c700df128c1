#!/usr/bin/env python
"""Training input pipeline throughput: images/s of `m2f_jax.data.pipeline.TrainBatches` on generated
COCO-panoptic and ADE20K folders, with 0 (in-process), 1 and 2 grain worker processes.

Writes (or reuses, with --data DIR) realistic files: COCO panoptic (JPEG quality 90 at 640x480 /
480x640 / 640x427, ~100-200 KB, panoptic RGB PNGs with 10-40 segments whose ids spread over R, G, B,
a panoptic JSON with 133 categories, 80 things) and ADEChallengeData2016 (JPEG ~512x683, 8-bit
annotation PNGs with values 0..150). The pipeline cycles through them, so the OS file cache is warm:
this measures decode + augment + targets + batching, not the disk.

Per setting it takes warm-up batches (one per worker, so the worker start-up is not counted), then
times --batches batches; it also reports the main process's CPU time per batch (with workers: receiving
the batches), the bytes per image of the host batch against the old format (M x H x W bool masks +
float32 pixels), and a per-stage breakdown of one in-process example loop (functions timed directly).

    python bench/input_pipeline.py --batch 16 --batches 6 --json /tmp/input_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw

COCO_SIZES = ((480, 640), (640, 480), (427, 640))  # (height, width), COCO's common shapes
ADE_SIZES = ((512, 683), (683, 512), (512, 512), (512, 768))


# --------------------------------------------------------------------------- data generation
def natural_image(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth gradients + a low-frequency random field + flat shapes + sensor-like noise, so that
    JPEG sizes and decode times are those of photographs (~100-200 KB at 640x480, quality 90)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    for c in range(3):
        a, b, phase = rng.uniform(-1, 1, 3)
        image[..., c] = 128 + 60 * np.sin(a * xx / 50 + b * yy / 70 + phase * 6)
    field = rng.normal(128, 40, (height // 16 + 1, width // 16 + 1, 3)).clip(0, 255).astype(np.uint8)
    image += np.asarray(Image.fromarray(field).resize((width, height), Image.Resampling.BICUBIC), np.float32) - 128
    pil = Image.fromarray(image.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(10, 30))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = (x0, y0, x0 + int(rng.integers(20, 250)), y0 + int(rng.integers(20, 250)))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    noisy = np.asarray(pil, np.float32) + rng.normal(0, rng.uniform(12, 20), (height, width, 3)).astype(np.float32)
    return noisy.clip(0, 255).astype(np.uint8)


def region_map(height: int, width: int, regions: int, things: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W) int32 map of region indices: 1..regions as a Voronoi partition of the image (stuff),
    regions+1.. as ellipses and polygons drawn on top (things, some fully hidden), 0 on thin void
    outlines around the things."""
    seeds = rng.uniform(0, 1, (regions, 2)) * (height, width)
    ys, xs = np.mgrid[0:height, 0:width]
    distance = (ys[None] - seeds[:, 0, None, None]) ** 2 + (xs[None] - seeds[:, 1, None, None]) ** 2
    canvas = Image.fromarray((np.argmin(distance, axis=0) + 1).astype(np.int32), mode="I")
    draw = ImageDraw.Draw(canvas)
    for k in range(things):
        x0, y0 = int(rng.integers(-20, width)), int(rng.integers(-20, height))
        w, h = int(rng.integers(10, width // 2)), int(rng.integers(10, height // 2))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=regions + 1 + k, outline=0, width=2)
        else:
            points = [(x0 + int(rng.integers(0, w)), y0 + int(rng.integers(0, h))) for _ in range(6)]
            draw.polygon(points, fill=regions + 1 + k, outline=0)
    return np.asarray(canvas, np.int32)


def write_coco(root: str, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    thing_ids = np.sort(rng.choice(np.arange(1, 91), 80, replace=False))
    stuff_ids = np.sort(rng.choice(np.arange(92, 201), 53, replace=False))
    categories = [{"id": int(i), "name": f"thing{i}", "isthing": 1, "supercategory": "x"} for i in thing_ids] + [
        {"id": int(i), "name": f"stuff{i}", "isthing": 0, "supercategory": "y"} for i in stuff_ids
    ]
    os.makedirs(os.path.join(root, "train2017"), exist_ok=True)
    os.makedirs(os.path.join(root, "annotations", "panoptic_train2017"), exist_ok=True)
    images, annotations = [], []
    for n in range(count):
        height, width = COCO_SIZES[n % len(COCO_SIZES)]
        regions, things = int(rng.integers(4, 10)), int(rng.integers(6, 31))
        regions_map = region_map(height, width, regions, things, rng)
        ids = rng.choice(np.arange(1, 256**3), regions + things, replace=False)  # spread over R, G, B
        lookup = np.concatenate([[0], ids]).astype(np.int64)
        segments = lookup[regions_map]
        present, areas = np.unique(segments, return_counts=True)
        info = []
        for k, segment_id in enumerate(ids):
            hit = np.searchsorted(present, segment_id)
            if hit == len(present) or present[hit] != segment_id:
                continue  # hidden under other things: not listed, as in COCO
            thing = k >= regions
            category = int(rng.choice(thing_ids if thing else stuff_ids))
            crowd = int(thing and rng.random() < 0.05)
            info.append({"id": int(segment_id), "category_id": category, "iscrowd": crowd, "area": int(areas[hit])})
        stem = f"{n:012d}"
        rgb = np.stack([segments % 256, segments // 256 % 256, segments // 65536], -1).astype(np.uint8)
        Image.fromarray(rgb).save(os.path.join(root, "annotations", "panoptic_train2017", stem + ".png"))
        Image.fromarray(natural_image(height, width, rng)).save(
            os.path.join(root, "train2017", stem + ".jpg"), quality=90
        )
        images.append({"id": n, "file_name": stem + ".jpg", "height": height, "width": width})
        annotations.append({"image_id": n, "file_name": stem + ".png", "segments_info": info})
    data = {"images": images, "annotations": annotations, "categories": categories}
    with open(os.path.join(root, "annotations", "panoptic_train2017.json"), "w") as f:
        json.dump(data, f)


def write_ade(root: str, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    image_dir = os.path.join(root, "images", "training")
    label_dir = os.path.join(root, "annotations", "training")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(label_dir, exist_ok=True)
    for n in range(count):
        height, width = ADE_SIZES[n % len(ADE_SIZES)]
        regions, things = int(rng.integers(4, 10)), int(rng.integers(4, 16))
        regions_map = region_map(height, width, regions, things, rng)
        values = np.concatenate([[0], rng.integers(1, 151, regions + things)]).astype(np.uint8)  # 0: "other"
        stem = f"ADE_train_{n:08d}"
        Image.fromarray(values[regions_map], mode="L").save(os.path.join(label_dir, stem + ".png"))
        Image.fromarray(natural_image(height, width, rng)).save(os.path.join(image_dir, stem + ".jpg"), quality=90)


def prepare(data: str, count: int) -> tuple[str, str]:
    coco, ade = os.path.join(data, "coco"), os.path.join(data, "ADEChallengeData2016")
    if not os.path.isfile(os.path.join(coco, "annotations", "panoptic_train2017.json")):
        write_coco(coco, count, seed=0)
    if not os.path.isdir(os.path.join(ade, "annotations", "training")):
        write_ade(ade, count, seed=1)
    return coco, ade


def folder_kb(folder: str) -> float:
    sizes = [os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)]
    return statistics.mean(sizes) / 1024


# --------------------------------------------------------------------------- measurements
def settings(args):
    from m2f_jax.data.pipeline import PipelineConfig
    from m2f_jax.data.transforms import AugmentConfig

    coco = PipelineConfig(
        batch_size=args.batch,
        max_instances=100,
        task="panoptic",
        augment=AugmentConfig(kind="lsj", crop_size=(args.coco_crop,) * 2),
    )
    ade = PipelineConfig(
        batch_size=args.batch,
        max_instances=150,
        task="semantic",
        augment=AugmentConfig(kind="semantic", crop_size=(args.ade_crop,) * 2, min_scale=0.5, max_scale=2.0),
    )
    return {f"COCO panoptic, LSJ {args.coco_crop}": coco, f"ADE20K semantic, crop {args.ade_crop}": ade}


def tree_cpu_s() -> float:
    """CPU seconds (user + system) of this process and all its live descendants (grain's workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    parents, cpu = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(pid)], cpu[int(pid)] = int(fields[1]), (int(fields[11]) + int(fields[12])) / tick
    mine = {os.getpid()}
    for _ in range(4):  # children, grandchildren, ...
        mine |= {pid for pid, parent in parents.items() if parent in mine}
    return sum(cpu.get(pid, 0.0) for pid in mine)


def throughput(source, config, batches: int) -> dict:
    """Warm-up (one batch per worker: the workers start and each hands over its first batch), then
    `batches` timed batches; wall time and the main process's CPU time."""
    from m2f_jax.data.pipeline import TrainBatches

    stream = TrainBatches(source, config)
    start = time.perf_counter()
    for _ in range(max(1, config.workers)):
        batch = next(stream)
    warmup_s = time.perf_counter() - start
    wall, cpu, all_cpu = time.perf_counter(), time.process_time(), tree_cpu_s()
    for _ in range(batches):
        batch = next(stream)
    wall, cpu, all_cpu = time.perf_counter() - wall, time.process_time() - cpu, tree_cpu_s() - all_cpu
    stream.close()  # stops the worker processes now rather than at garbage collection
    images = batches * config.batch_size
    cores = max(1, config.workers)
    arrays = [v for v in batch.values() if isinstance(v, np.ndarray)]
    return {
        "workers": config.workers,
        "images_per_s": images / wall,
        "images_per_s_per_core": images / wall / cores,
        "main_cpu_ms_per_batch": 1e3 * cpu / batches,
        "images_per_cpu_s": images / all_cpu,  # all processes: the work's real cost per core
        "warmup_s": warmup_s,
        "bytes_per_image": sum(a.nbytes for a in arrays) / config.batch_size,
    }


def old_bytes_per_image(config) -> int:
    """The former batch: float32 pixel_values (H, W, 3), bool pixel_mask, M x H x W bool mask_labels,
    int32 class_labels (M)."""
    height, width = config.augment.crop_size
    m = config.max_instances
    return height * width * 3 * 4 + height * width + m * height * width + m * 4


def stages(source, config, count: int) -> dict:
    """One in-process pass over `count` examples with each step of `_Example._example` timed apart
    (seconds per image)."""
    from m2f_jax.data.batch import collate, targets
    from m2f_jax.data.pipeline import compact
    from m2f_jax.data.sources.base import read_label_png, read_rgb
    from m2f_jax.data.transforms import augment

    totals = dict.fromkeys(["JPEG decode", "PNG decode", "source rest", "compact + check", "augment", "targets"], 0.0)
    num_classes = len(source.classes)
    examples = []
    for n in range(count):
        index = n % len(source)
        rng = np.random.default_rng([config.seed, n])
        image_path, png_path = source._paths(index)
        t0 = time.perf_counter()
        read_rgb(image_path)
        t1 = time.perf_counter()
        read_label_png(png_path)
        t2 = time.perf_counter()
        sample = source[index]  # the whole read again: the rest (id conversion, checks) is the difference
        t3 = time.perf_counter()
        segments, info = compact(sample, num_classes, source.describe(index))
        t4 = time.perf_counter()
        categories = np.asarray([-1] + [s["category_id"] for s in info], np.int32)
        image, segments, pixel_mask = augment(sample["image"], segments, categories, config.augment, rng)
        t5 = time.perf_counter()
        target_map, labels, valid = targets(segments, info, config.task, config.max_instances)
        t6 = time.perf_counter()
        totals["JPEG decode"] += t1 - t0
        totals["PNG decode"] += t2 - t1
        totals["source rest"] += max(0.0, (t3 - t2) - (t2 - t0))
        totals["compact + check"] += t4 - t3
        totals["augment"] += t5 - t4
        totals["targets"] += t6 - t5
        examples.append({"image": image, "pixel_mask": pixel_mask, "target_map": target_map, "class_labels": labels,
                         "mask_valid": valid, "skipped": []})  # fmt: skip
    t7 = time.perf_counter()
    for k in range(0, count, config.batch_size):
        collate(examples[k : k + config.batch_size])
    totals["collate (np.stack)"] = time.perf_counter() - t7
    return {k: v / count for k, v in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="folder for the generated data (reused if present); default: a temporary one")
    parser.add_argument("--images", type=int, default=64, help="images generated per data set")
    parser.add_argument("--batch", type=int, default=16, help="batch size (one process)")
    parser.add_argument("--batches", type=int, default=6, help="timed batches per setting")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--coco-crop", type=int, default=1024)
    parser.add_argument("--ade-crop", type=int, default=512)
    parser.add_argument("--stage-images", type=int, default=32, help="examples in the per-stage breakdown")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    import dataclasses

    from m2f_jax.data.sources.ade20k import ADE20K
    from m2f_jax.data.sources.coco import CocoPanoptic

    with tempfile.TemporaryDirectory() as scratch:
        data = args.data or scratch
        start = time.perf_counter()
        coco_root, ade_root = prepare(data, args.images)
        print(f"data in {data} ({time.perf_counter() - start:.1f} s to write or find)")
        print(
            f"COCO: JPEG mean {folder_kb(os.path.join(coco_root, 'train2017')):.0f} KB, panoptic PNG mean "
            f"{folder_kb(os.path.join(coco_root, 'annotations', 'panoptic_train2017')):.0f} KB; ADE: JPEG mean "
            f"{folder_kb(os.path.join(ade_root, 'images', 'training')):.0f} KB, PNG mean "
            f"{folder_kb(os.path.join(ade_root, 'annotations', 'training')):.0f} KB"
        )
        sources = [CocoPanoptic("train", coco_root), ADE20K("train", ade_root)]
        results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "runs": []}
        rows = []
        for (name, config), source in zip(settings(args).items(), sources, strict=True):
            for workers in args.workers:
                run = throughput(source, dataclasses.replace(config, workers=workers), args.batches)
                run["setting"], run["old_bytes_per_image"] = name, old_bytes_per_image(config)
                results["runs"].append(run)
                rows.append(run)
                print(f"  {name}, workers={workers}: {run['images_per_s']:.1f} images/s", flush=True)
        breakdown = {name: stages(source, config, args.stage_images)
                     for (name, config), source in zip(settings(args).items(), sources, strict=True)}  # fmt: skip
        results["stages_s_per_image"] = breakdown

    print(f"\nbatch {args.batch} per process, {args.batches} timed batches after one warm-up batch per worker;")
    print(f"machine: {results['machine']}; files cycled from the (warm) OS cache\n")
    print(
        "| setting | workers | images/s | images/s per worker core | images per CPU-s (all processes) "
        "| main-process CPU / batch | bytes/image (old format) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['setting']} | {r['workers']} | {r['images_per_s']:.1f} | {r['images_per_s_per_core']:.1f} | "
            f"{r['images_per_cpu_s']:.1f} | "
            f"{r['main_cpu_ms_per_batch']:.0f} ms | {r['bytes_per_image'] / 2**20:.2f} MiB "
            f"({r['old_bytes_per_image'] / 2**20:.1f} MiB) |"
        )
    names = list(breakdown)
    print(f"\nper-stage time, ms per image, in-process, {args.stage_images} images\n")
    print("| stage | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for stage in breakdown[names[0]]:
        print(f"| {stage} | " + " | ".join(f"{1e3 * breakdown[n][stage]:.1f}" for n in names) + " |")
    print("| **total** | " + " | ".join(f"{1e3 * sum(breakdown[n].values()):.1f}" for n in names) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
