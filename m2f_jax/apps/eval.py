"""Evaluates a run of train.py on its held-out images: mIoU (semantic) and PQ (panoptic), with
colour overlays of the first images.

    python eval.py --config configs/synthetic.py --workdir runs/synthetic [--overlays 8] [--step N]

Reads the run's latest (or --step) checkpoint and config.json; writes DIR/eval/metrics.json (the
numbers, per class too) and DIR/eval/overlay_NN.png (image | ground truth | panoptic prediction).
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags, logging
from ml_collections import config_flags

from m2f_jax.apps import run_absl

_CONFIG = _WORKDIR = _STEP = _OVERLAYS = _BATCH = None  # absl flag handles, defined by run()


def _define_flags() -> None:
    """Defined when the command runs, not on import, so that train and eval can share a process."""
    global _CONFIG, _WORKDIR, _STEP, _OVERLAYS, _BATCH
    _CONFIG = config_flags.DEFINE_config_file("config", None, "the experiment config the run was trained with")
    _WORKDIR = flags.DEFINE_string("workdir", None, "the run folder written by train.py")
    _STEP = flags.DEFINE_integer("step", None, "the checkpoint to evaluate (default: the latest)")
    _OVERLAYS = flags.DEFINE_integer("overlays", 8, "how many held-out images to draw")
    _BATCH = flags.DEFINE_integer("batch_size", 16, "images per jitted forward")
    flags.mark_flags_as_required(["config", "workdir"])


def flag_problems(batch_size: int, overlays: int, step: int | None) -> list[str]:
    """eval.py's own flags, checked before any work."""
    found = []
    if batch_size < 1:
        found.append(f"--batch_size must be >= 1, got {batch_size}")
    if overlays < 0:
        found.append(f"--overlays must be >= 0, got {overlays}")
    if step is not None and step < 0:
        found.append(f"--step must be >= 0 (a checkpoint's step), got {step}")
    return found


def main(argv) -> int:
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save and restore step at INFO
    from m2f_jax.training import experiment

    c, workdir = _CONFIG.value, _WORKDIR.value
    found = flag_problems(_BATCH.value, _OVERLAYS.value, _STEP.value)
    try:
        experiment.validate(c, model=False)  # the model is the run's config.json
    except ValueError as error:
        found.append(str(error))
    if found:
        sys.exit("eval.py: " + "\n".join(found))

    import jax
    import numpy as np
    from flax import nnx
    from PIL import Image

    from m2f_jax.config import Mask2FormerConfig
    from m2f_jax.data.sources import SampleError
    from m2f_jax.evaluation.evaluate import evaluate
    from m2f_jax.training import workdir as run_record
    from m2f_jax.training.checkpoint import Checkpoints
    from m2f_jax.training.mesh import make_mesh
    from m2f_jax.visualize import overlay

    try:
        checkpoints = Checkpoints(workdir, create=False)
    except FileNotFoundError as error:
        sys.exit(f"eval.py: {error}; train first")
    step = checkpoints.latest_step() if _STEP.value is None else _STEP.value
    if step is None or step not in checkpoints.all_steps():
        checkpoints.close()
        sys.exit(
            f"eval.py: no checkpoint {'' if step is None else step} in {checkpoints.directory} "
            f"(there are {checkpoints.all_steps() or 'none'}); train first"
        )
    try:
        data = experiment.dataset(c, "val")
    except (OSError, ValueError) as error:
        checkpoints.close()
        sys.exit(f"eval.py: data.source {c.data.source!r}: {error}")
    count = min(len(data), c.data.eval_images or len(data))
    model_config = Mask2FormerConfig.load(workdir)
    try:  # a checkpoint restored into another optimizer layout would fail with pages of orbax errors
        run_record.check_evaluate(workdir, c, step)
    except ValueError as error:
        checkpoints.close()
        sys.exit(f"eval.py: {error}")
    opt_config, _ = experiment.optimizer_config(c)
    mesh = make_mesh(1, devices=jax.local_devices()[:1])
    graphdef, like = experiment.abstract_state(c, model_config, opt_config, mesh)
    state, _ = checkpoints.restore(like, step)
    checkpoints.close()
    model = nnx.merge(graphdef, state.params, state.rngs)

    try:
        metrics, shown = evaluate(
            model, data, batch_size=_BATCH.value, keep_results=_OVERLAYS.value, processor=experiment.processor(c),
            num_images=count,
        )  # fmt: skip
    except (ValueError, SampleError) as error:  # images of several sizes, an unreadable sample
        sys.exit(f"eval.py: {error}")
    out = os.path.join(workdir, "eval")
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, f"metrics.json.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump({"step": step, "images": count, **metrics}, f, indent=1)
    os.replace(tmp, os.path.join(out, "metrics.json"))  # a reader never sees half a file
    labels = model_config.id2label
    for i, result in enumerate(shown):
        sample = data[i]
        zoom = max(1, 256 // max(sample["image"].shape[:2]))  # small images drawn larger (nearest)

        def big(x, zoom=zoom):
            return np.repeat(np.repeat(np.asarray(x), zoom, 0), zoom, 1)

        truth = {
            "segmentation": big(sample["segments"]),
            "segments_info": [{"id": s["id"], "label_id": s["category_id"]} for s in sample["segments_info"]],
        }
        predicted = {**result["panoptic"], "segmentation": big(result["panoptic"]["segmentation"])}
        image = big(result["image"])
        panels = [Image.fromarray(image), overlay(image, truth, labels), overlay(image, predicted, labels)]
        canvas = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels)), "white")
        x = 0
        for panel in panels:
            canvas.paste(panel, (x, 0))
            x += panel.width
        canvas.save(os.path.join(out, f"overlay_{i:02d}.png"))
    s, p = metrics["semantic"], metrics["panoptic"]
    print(
        f"step {step}, {len(data)} held-out images: mIoU {s['mIoU']:.1f}  pAcc {s['pAcc']:.1f}  "
        f"PQ {p['PQ']:.1f} (things {p['PQ_th']:.1f}, stuff {p['PQ_st']:.1f})  SQ {p['SQ']:.1f}  RQ {p['RQ']:.1f}"
    )
    print(f"metrics and {len(shown)} overlays in {out}", flush=True)
    return 0


def run() -> None:
    """The `m2f-eval` command (and `python eval.py`); `--config NAME` names a shipped config."""
    run_absl(main, _define_flags, __doc__)


if __name__ == "__main__":
    run()
