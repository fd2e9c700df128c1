"""Evaluates a model on a data set's validation split: PQ (panoptic), COCO mask and box AP (instance)
and mIoU (semantic), whichever the data set's annotations define.

    python eval.py --config configs/synthetic.py --workdir runs/synthetic [--step N]
    python eval.py --config configs/coco_panoptic.py --model converted/swin-tiny-coco-panoptic
    python eval.py --config configs/ade20k_semantic.py --model DIR --tta --output results/ade

--config names the data set (data.*) and the test size (eval.*) of a recipe or a run. The model is a
train.py run folder (--workdir: its latest or --step checkpoint, parameters only) or a converted,
HF or exported model folder (--model). Every process evaluates its own share of the images on its
devices; the counts are combined (start it like train.py for several hosts). Writes, under --output
(default WORKDIR/eval/step_N, or eval/<model folder name>; results there are replaced only with
--overwrite): metrics.json (every number, per class too),
per_class.txt, overlay_NN.png (image | ground truth | prediction) and, with --write_predictions,
predictions/ in the official formats (COCO panoptic PNG + JSON, COCO instance results JSON, semantic
PNGs), which the official tools can score too.
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags, logging
from ml_collections import config_flags

from m2f_jax.apps import run_absl

_F: dict = {}  # absl flag handles, defined by run()


def _define_flags() -> None:
    """Defined when the command runs, not on import, so that train and eval can share a process."""
    _F["config"] = config_flags.DEFINE_config_file("config", None, "an experiment config (data.* and eval.*)")
    _F["workdir"] = flags.DEFINE_string("workdir", None, "a train.py run folder to evaluate")
    _F["step"] = flags.DEFINE_integer("step", None, "with --workdir: the checkpoint (default: the latest)")
    _F["model"] = flags.DEFINE_string("model", None, "a converted, HF or exported model folder, or a hub id")
    _F["output"] = flags.DEFINE_string("output", None, "results folder (default WORKDIR/eval or eval/<model>)")
    _F["tasks"] = flags.DEFINE_list("tasks", None, "tasks to score (default: all the data set defines)")
    _F["batch_size"] = flags.DEFINE_integer("batch_size", None, "images per jitted forward (default eval.batch_size)")
    _F["num_images"] = flags.DEFINE_integer("num_images", None, "the first N images (default data.eval_images)")
    _F["overlays"] = flags.DEFINE_integer("overlays", 8, "how many images to draw")
    _F["tta"] = flags.DEFINE_boolean("tta", None, "semantic multi-scale + flip test-time augmentation (eval.tta)")
    _F["buckets"] = flags.DEFINE_enum("buckets", "auto", ["auto", "none"], "pad inputs to shape buckets or not")
    _F["write_predictions"] = flags.DEFINE_boolean("write_predictions", False, "write predictions/ (see above)")
    _F["overwrite"] = flags.DEFINE_boolean("overwrite", False, "replace the results already in --output")
    _F["dtype"] = flags.DEFINE_enum(
        "dtype", "float32", ["float32", "bfloat16"], "compute dtype (bfloat16 on GPUs/TPUs)"
    )
    flags.mark_flags_as_required(["config"])


def flag_problems(values: dict) -> list[str]:
    """eval.py's own flags, checked before any work."""
    found = []
    if (values["workdir"] is None) == (values["model"] is None):
        found.append("give exactly one of --workdir (a train.py run) and --model (a model folder or hub id)")
    if values["step"] is not None and values["workdir"] is None:
        found.append("--step needs --workdir")
    for name, low in (("batch_size", 1), ("overlays", 0), ("step", 0), ("num_images", 0)):
        if values[name] is not None and values[name] < low:
            found.append(f"--{name} must be >= {low}, got {values[name]}")
    return found


def main(argv) -> int:
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore step at INFO
    from m2f_jax.training import experiment

    c = _F["config"].value
    values = {name: handle.value for name, handle in _F.items() if name != "config"}
    found = flag_problems(values)
    try:
        experiment.validate(c, model=False)  # the model is the run's or the folder's config.json
    except ValueError as error:
        found.append(str(error))
    if found:
        sys.exit("eval.py: " + "\n".join(found))

    from m2f_jax.training.mesh import initialize_distributed

    initialize_distributed()  # before anything touches the devices

    import dataclasses

    import jax

    import m2f_jax
    from m2f_jax.data.sources import SampleError
    from m2f_jax.evaluation.evaluate import evaluate, evaluation_tasks
    from m2f_jax.inference import Predictor, default_processor
    from m2f_jax.training.export import load_run

    lead = jax.process_index() == 0
    settings = experiment.eval_settings(c)
    try:
        data = experiment.dataset(c, "val")
        tasks = evaluation_tasks(data, values["tasks"])
    except (OSError, ValueError) as error:
        sys.exit(f"eval.py: data.source {c.data.source!r}: {error}")
    workdir, step = values["workdir"], None
    try:
        if workdir:
            model, step = load_run(workdir, values["step"])
        else:
            model = m2f_jax.from_pretrained(values["model"])
    except (OSError, ValueError) as error:
        sys.exit(f"eval.py: {error}")
    model.set_dtype(values["dtype"])
    out = values["output"] or (
        os.path.join(workdir, "eval", f"step_{step}")
        if workdir
        else os.path.join("eval", os.path.basename(values["model"].rstrip("/")))
    )
    if os.path.exists(os.path.join(out, "metrics.json")) and not values["overwrite"]:
        sys.exit(f"eval.py: {out} already holds results; pass --overwrite to replace them, or choose --output")
    if model.config.num_labels != len(data.classes):
        sys.exit(
            f"eval.py: the model has {model.config.num_labels} labels, data.source {c.data.source!r} "
            f"{len(data.classes)} classes"
        )
    size = {"shortest_edge": settings["shortest_edge"], "longest_edge": settings["longest_edge"]}
    processor = dataclasses.replace(default_processor(model), size=size, do_resize=True)
    predictor = Predictor(
        model, processor, batch_size=values["batch_size"] or settings["batch_size"],
        buckets=None if values["buckets"] == "none" else "auto",
    )  # fmt: skip
    tta = settings["tta"] if values["tta"] is None else values["tta"]
    tta_options = {"scales": settings["tta_scales"], "max_size": settings["tta_max_size"]} if tta else None
    if tta and "semantic" not in tasks:
        sys.exit(f"eval.py: --tta augments semantic maps; the tasks scored here are {list(tasks)}")
    count = values["num_images"] if values["num_images"] is not None else c.data.eval_images
    count = min(len(data), count or len(data))

    writers = []
    if values["write_predictions"]:
        from m2f_jax.evaluation.writers import EvaluationWriters

        writers = [EvaluationWriters(os.path.join(out, "predictions"), data, tasks, overwrite=values["overwrite"])]
    try:
        metrics, shown = evaluate(
            predictor, data, tasks=tasks, num_images=count, keep_results=values["overlays"] if lead else 0,
            tta=tta_options, writers=writers, progress=lead,
        )  # fmt: skip
    except (ValueError, SampleError) as error:  # an unreadable sample, a model that does not fit the data
        sys.exit(f"eval.py: {error}")
    if not lead:
        return 0

    source = f"{workdir} step {step}" if workdir else values["model"]
    record = {"model": source, "step": step, "split": "val", "tta": tta, **metrics}
    write_results(out, record, tasks)
    draw_overlays(out, data, shown, model.config.id2label)
    from m2f_jax.evaluation.report import summary

    print(f"{source}: {metrics['images']} validation images of {c.data.source}")
    print("\n".join(summary(metrics)))
    print(f"metrics, per-class tables and {len(shown)} overlays in {out}", flush=True)
    return 0


def write_results(out: str, record: dict, tasks) -> None:
    """metrics.json and per_class.txt, each written whole or not at all."""
    from m2f_jax.evaluation.report import per_class_table

    os.makedirs(out, exist_ok=True)
    tables = "\n\n".join(f"{task}\n{per_class_table(record, task)}" for task in tasks)
    for name, text in (("metrics.json", json.dumps(record, indent=1)), ("per_class.txt", tables + "\n")):
        tmp = os.path.join(out, f".{name}.tmp{os.getpid()}")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(out, name))  # a reader never sees half a file


def draw_overlays(out: str, data, shown: list[dict], labels: dict[int, str]) -> None:
    """overlay_NN.png: image | ground truth | prediction (panoptic, else semantic, else instances)."""
    import numpy as np
    from PIL import Image

    from m2f_jax.visualize import overlay

    for i, kept in enumerate(shown):
        sample, found = data[kept["index"]], kept["predictions"]
        zoom = max(1, 256 // max(sample["image"].shape[:2]))  # small images drawn larger (nearest)

        def big(x, zoom=zoom):
            return np.repeat(np.repeat(np.asarray(x), zoom, -2), zoom, -1)

        truth = {
            "segmentation": big(sample["segments"]),
            "segments_info": [{"id": s["id"], "label_id": s["category_id"]} for s in sample["segments_info"]],
        }
        if "panoptic" in found:
            predicted = {**found["panoptic"], "segmentation": big(found["panoptic"]["segmentation"])}
        elif "semantic" in found:
            predicted = big(found["semantic"])
        else:  # the confident detections only (evaluation keeps the top 100 at any score)
            result = found["instance"]
            confident = [k for k, s in enumerate(result["segments_info"]) if s["score"] >= 0.5]
            predicted = {
                "segmentation": big(np.asarray(result["segmentation"])[confident]),
                "segments_info": [result["segments_info"][k] for k in confident],
            }
        image = np.repeat(np.repeat(sample["image"], zoom, 0), zoom, 1)
        panels = [Image.fromarray(image), overlay(image, truth, labels), overlay(image, predicted, labels)]
        canvas = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels)), "white")
        x = 0
        for panel in panels:
            canvas.paste(panel, (x, 0))
            x += panel.width
        canvas.save(os.path.join(out, f"overlay_{i:02d}.png"))


def run() -> None:
    """The `m2f-eval` command (and `python eval.py`); `--config NAME` names a shipped config."""
    run_absl(main, _define_flags, __doc__)


if __name__ == "__main__":
    run()
