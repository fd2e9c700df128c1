#!/usr/bin/env python
"""COCO instance AP: pycocotools' COCOeval against faster-coco-eval's COCOeval_faster on the same detections.

Generates --images images of 480x640 with 4-10 ground-truth instances each (ellipses and rectangles,
80 thing categories, about 1 in 20 crowd) and --detections detections per image (a third are
ground-truth masks shifted or cut, mostly of the right class; the rest random shapes and classes;
random scores), as compressed RLE. Then times, per tool, building the COCO objects (loadRes of the
results list) and evaluate + accumulate + summarize for iouType "segm" and "bbox", compares the 12
numbers of each iouType and the precision tables (per-class AP comes from them), and times
`m2f_jax.evaluation.InstanceEvaluator` (its update per image, which encodes the masks, and its
compute(), which runs pycocotools).

Measured on this project's 2-core CPU machine, 500 images x 100 detections (two runs; the machine
was shared, so the seconds vary): pycocotools 14.5 s and 22.2 s (load + segm + bbox), faster-coco-eval
3.4 s and 4.6 s, 4.3-4.8x faster. The 2 x 12 numbers were equal there, but the precision tables
differed by 2.2e-16 (so per-class AP differs in the last bit), and on 4 of 4 sets of 20 images some
of the 12 numbers differed by 5.6e-17 to 1.1e-16. InstanceEvaluator therefore keeps pycocotools, the
official implementation: faster-coco-eval is faster but not identical. For scale, the evaluator's
update (encoding the masks) took 57-99 ms per image, 29-50 s for the same 500 images, and its compute()
18-20 s.

faster-coco-eval is not a dependency of the project: `pip install faster-coco-eval` to run this.

    PYTHONPATH=. python bench/coco_eval.py --images 500 --detections 100 --json /tmp/coco_eval.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time

import numpy as np
from pycocotools import mask as mask_utils

HEIGHT, WIDTH = 480, 640
NUM_CLASSES = 80


def shape(rng: np.random.Generator, mask: np.ndarray) -> None:
    """Paints a random ellipse or rectangle (4 to 300 pixels across) into `mask`, in its box only."""
    h, w = int(rng.integers(4, 300)), int(rng.integers(4, 300))
    y0, x0 = int(rng.integers(-h // 2, HEIGHT - h // 2)), int(rng.integers(-w // 2, WIDTH - w // 2))
    ys, xs = slice(max(y0, 0), min(y0 + h, HEIGHT)), slice(max(x0, 0), min(x0 + w, WIDTH))
    if rng.random() < 0.5:
        mask[ys, xs] = True
        return
    yy, xx = np.ogrid[ys, xs]
    mask[ys, xs] |= ((yy - y0 - h / 2) / (h / 2)) ** 2 + ((xx - x0 - w / 2) / (w / 2)) ** 2 <= 1


def image(rng: np.random.Generator, detections: int):
    """(segment-id map, segments_info, masks (N, H, W), labels, scores) of one image."""
    segments = np.zeros((HEIGHT, WIDTH), np.int32)
    info = []
    for i in range(1, int(rng.integers(4, 11)) + 1):
        mask = np.zeros((HEIGHT, WIDTH), bool)
        shape(rng, mask)
        segments[mask] = i
        info.append({"id": i, "category_id": int(rng.integers(NUM_CLASSES)), "iscrowd": rng.random() < 0.05})
    masks = np.zeros((detections, HEIGHT, WIDTH), bool)
    labels = rng.integers(NUM_CLASSES, size=detections)
    for k in range(detections):
        if k < detections // 3:
            s = info[int(rng.integers(len(info)))]
            dy, dx = rng.integers(-8, 9, 2)
            masks[k] = np.roll(segments == s["id"], (int(dy), int(dx)), (0, 1))
            if rng.random() < 0.3:
                masks[k, int(rng.integers(HEIGHT)) :] = False  # cut: a lower IoU
            if rng.random() < 0.8:
                labels[k] = s["category_id"]
        else:
            shape(rng, masks[k])
    return segments, info, masks, labels, rng.random(detections)


def rle(masks: np.ndarray) -> list[dict]:
    return mask_utils.encode(np.asfortranarray(masks.view(np.uint8).transpose(1, 2, 0)))


def make_data(rng: np.random.Generator, count: int, detections: int, evaluator) -> tuple[dict, list, float]:
    """The ground truth as a COCO dataset dict, the detections as a results list (bytes counts), and
    the seconds `evaluator.update_arrays` took (None: not timed). Images are made one at a time: all
    the masks at once would not fit in memory."""
    truth, results, update = [], [], 0.0
    for image_id in range(count):
        segments, info, masks, labels, scores = image(rng, detections)
        if evaluator is not None:
            start = time.perf_counter()
            evaluator.update_arrays(image_id, segments, info, masks, labels, scores)
            update += time.perf_counter() - start
        present = [s for s in info if (segments == s["id"]).any()]
        ids = np.array([s["id"] for s in present])
        for s, encoded in zip(present, rle(segments[None] == ids[:, None, None]), strict=True):
            truth.append(
                {
                    "id": len(truth) + 1,
                    "image_id": image_id,
                    "category_id": s["category_id"],
                    "segmentation": encoded,
                    "area": float(mask_utils.area(encoded)),
                    "bbox": mask_utils.toBbox(encoded).tolist(),
                    "iscrowd": int(s["iscrowd"]),
                }
            )
        for encoded, label, score in zip(rle(masks), labels.tolist(), scores.tolist(), strict=True):
            results.append({"image_id": image_id, "category_id": label, "segmentation": encoded, "score": score})
    images = [{"id": i, "height": HEIGHT, "width": WIDTH} for i in range(count)]
    categories = [{"id": c, "name": str(c)} for c in range(NUM_CLASSES)]
    return {"images": images, "categories": categories, "annotations": truth}, results, update


def pycocotools_stats(dataset: dict, results: list) -> tuple[dict, dict, dict]:
    """Seconds per step, and per iouType the 12 numbers and the precision table."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    times, stats, precision = {}, {}, {}
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        dt = gt.loadRes([dict(r) for r in results])
        times["load"] = time.perf_counter() - start
        for iou_type in ("segm", "bbox"):
            start = time.perf_counter()
            e = COCOeval(gt, dt, iou_type)
            e.evaluate()
            e.accumulate()
            e.summarize()
            times[iou_type] = time.perf_counter() - start
            stats[iou_type], precision[iou_type] = e.stats.tolist(), e.eval["precision"]
    return times, stats, precision


def faster_stats(dataset: dict, results: list) -> tuple[dict, dict, dict]:
    """As pycocotools_stats, with faster-coco-eval's COCO and COCOeval_faster."""
    from faster_coco_eval import COCO, COCOeval_faster

    times, stats, precision = {}, {}, {}
    start = time.perf_counter()
    gt = COCO(dataset)
    dt = gt.loadRes([dict(r) for r in results])
    times["load"] = time.perf_counter() - start
    for iou_type in ("segm", "bbox"):
        start = time.perf_counter()
        e = COCOeval_faster(gt, dt, iou_type, print_function=lambda *args: None)
        e.evaluate()
        e.accumulate()
        e.summarize()
        times[iou_type] = time.perf_counter() - start
        stats[iou_type], precision[iou_type] = e.stats[:12].tolist(), e.eval["precision"]
    return times, stats, precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-evaluator", action="store_true", help="time only the two COCO tools")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    evaluator = None
    if not args.skip_evaluator:
        from m2f_jax.evaluation import InstanceEvaluator

        evaluator = InstanceEvaluator([{"id": c, "name": str(c), "isthing": True} for c in range(NUM_CLASSES)])
    start = time.perf_counter()
    dataset, results, update = make_data(np.random.default_rng(args.seed), args.images, args.detections, evaluator)
    print(
        f"{args.images} images x {args.detections} detections at {HEIGHT}x{WIDTH}, "
        f"{len(dataset['annotations'])} truth instances; made in {time.perf_counter() - start:.1f} s"
    )

    report = {"images": args.images, "detections": args.detections, "seed": args.seed, "cpus": os.cpu_count()}
    tables = {}
    for name, run in (("pycocotools", pycocotools_stats), ("faster-coco-eval", faster_stats)):
        times, stats, tables[name] = run(dataset, results)
        report[name] = {"seconds": times, "stats": stats}
        print(
            f"{name:17s} load {times['load']:6.2f} s  segm {times['segm']:6.2f} s  bbox {times['bbox']:6.2f} s  "
            f"total {sum(times.values()):6.2f} s  segm AP {100 * stats['segm'][0]:.3f}"
        )
    ours, theirs = report["pycocotools"], report["faster-coco-eval"]
    difference = max(
        abs(a - b) for t in ("segm", "bbox") for a, b in zip(ours["stats"][t], theirs["stats"][t], strict=True)
    )
    table_difference = max(
        float(np.abs(tables["pycocotools"][t] - tables["faster-coco-eval"][t]).max()) for t in ("segm", "bbox")
    )
    speedup = sum(ours["seconds"].values()) / sum(theirs["seconds"].values())
    report.update(
        identical=ours["stats"] == theirs["stats"],
        max_difference=difference,
        precision_max_difference=table_difference,
        speedup=speedup,
    )
    print(
        f"the same 2 x 12 numbers: {report['identical']} (largest difference {difference:.3g}; in the precision "
        f"tables {table_difference:.3g}); faster-coco-eval {speedup:.2f}x as fast"
    )
    if evaluator is not None:
        start = time.perf_counter()
        result = evaluator.compute()
        compute = time.perf_counter() - start
        same_ap = result["AP"] == 100 * ours["stats"]["segm"][0]
        report["InstanceEvaluator"] = {"update_per_image": update / args.images, "compute": compute, "same_AP": same_ap}
        print(
            f"InstanceEvaluator update {1000 * update / args.images:.1f} ms per image, compute {compute:.2f} s "
            f"(segm + bbox), the same AP as pycocotools: {same_ap}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
