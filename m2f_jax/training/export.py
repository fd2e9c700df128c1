"""From a train.py run to a model: the parameters of one of its checkpoints, as a model or as a model
folder (config.json, flax_model.safetensors, preprocessor_config.json) that from_pretrained, predict.py
and segment() read.

    python -m m2f_jax.training.export WORKDIR DEST [--step N] [--overwrite]

Only the weights are read: orbax restores the `params` part of the checkpoint's state (and the frozen
weights, such as ResNet's BatchNorm, from its non-parameter part), so the optimizer state (twice the
parameters with AdamW) is neither read nor allocated, and no experiment config is needed. Only
committed checkpoints are seen: a step that orbax is still writing, in `N.orbax-checkpoint-tmp`, is
not listed.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np
from flax import nnx

from m2f_jax.config import Mask2FormerConfig
from m2f_jax.conversion import hf
from m2f_jax.modeling import Mask2FormerForUniversalSegmentation
from m2f_jax.modeling.frozen_batchnorm import Frozen
from m2f_jax.processing.preprocess import CONFIG_NAME
from m2f_jax.training.workdir import EXPERIMENT_FILE, MODEL_FILE
from m2f_jax.weights import FLAX_WEIGHTS, abstract_model, check_destination, model_from_params, save_model

CHECKPOINTS = "checkpoints"
MODEL_FOLDER = "model"  # where train.py exports its final model, inside the run folder


def _missing(path: str) -> list[str]:
    """The parts of a run folder that `path` lacks."""
    parts = {f"{CHECKPOINTS}/": os.path.isdir, MODEL_FILE: os.path.isfile, EXPERIMENT_FILE: os.path.isfile}
    return [name for name, exists in parts.items() if not exists(os.path.join(path, name.rstrip("/")))]


def is_run(path: str | os.PathLike) -> bool:
    """Whether `path` is a train.py run folder: checkpoints/, config.json and experiment.json in it."""
    return os.path.isdir(path) and not _missing(os.fspath(path))


def _check_run(workdir: str) -> None:
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"{workdir} is not a folder (expected a train.py run folder)")
    missing = _missing(workdir)
    if missing:
        raise FileNotFoundError(
            f"{workdir} is not a train.py run folder: it has no {', '.join(missing)} "
            f"(a run folder holds {CHECKPOINTS}/, {MODEL_FILE} and {EXPERIMENT_FILE})"
        )


def _read_params(workdir: str, step: int | None, config: Mask2FormerConfig) -> tuple[dict[str, np.ndarray], int]:
    """(the parameters of the checkpoint at `step`, default the latest, by dotted name; that step)."""
    import orbax.checkpoint as ocp

    from m2f_jax.training.checkpoint import Checkpoints

    checkpoints = Checkpoints(workdir, create=False)
    try:
        steps = sorted(checkpoints.all_steps())
        if not steps:
            raise FileNotFoundError(f"{workdir} has no checkpoint yet (none in {checkpoints.directory}); train first")
        step = steps[-1] if step is None else step
        if step not in steps:
            raise FileNotFoundError(f"{workdir} has no checkpoint at step {step}; its checkpoints: steps {steps}")
        # Host arrays of the state's weights; partial_restore skips every other leaf of the checkpoint. Frozen
        # weights (ResNet's BatchNorm) travel in the state's non-parameter part, with the RNG streams.
        abstract = abstract_model(config)
        target = {"params": nnx.state(abstract, nnx.Param)}
        frozen = nnx.state(abstract, Frozen)
        if frozen:
            target["rngs"] = frozen
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
        restored = checkpoints.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item=target, restore_args=as_numpy, partial_restore=True)
            ),
        )
    finally:
        checkpoints.close()
    flat = [item for part in target for item in nnx.to_flat_state(restored["state"][part])]
    return {".".join(str(p) for p in path): np.asarray(v[...]) for path, v in flat}, step


def load_run(
    workdir: str | os.PathLike, step: int | None = None, seed: int = 0
) -> tuple[Mask2FormerForUniversalSegmentation, int]:
    """(run_model(workdir, step, seed), the step it was read from): for callers that report the step."""
    workdir = os.fspath(workdir)
    _check_run(workdir)
    config = hf.read_config(workdir)
    params, step = _read_params(workdir, step, config)
    model = model_from_params(config, params, seed)
    model.name_or_path = workdir  # inference.default_processor reads the run's preprocessor_config.json
    return model, step


def run_model(
    workdir: str | os.PathLike, step: int | None = None, seed: int = 0
) -> Mask2FormerForUniversalSegmentation:
    """The model of a run's checkpoint at `step` (default: the latest), its config from the run's
    config.json, its dropout RNG streams started from `seed`. Several processes: call it on every
    one (orbax reads collectively)."""
    return load_run(workdir, step, seed)[0]


def export_model(
    workdir: str | os.PathLike, folder: str | os.PathLike, step: int | None = None, overwrite: bool = False
) -> int:
    """Writes the model of a run's checkpoint at `step` (default: the latest) as a model folder, with
    the run's preprocessor_config.json, atomically; returns the step. An existing non-empty `folder` is
    replaced, whole, only with `overwrite=True`; the run folder, or a folder holding it, never.
    Several processes: call it on every one (orbax reads collectively); process 0 writes."""
    workdir, folder = os.fspath(workdir), os.fspath(folder)
    _check_run(workdir)
    run, destination = os.path.realpath(workdir), os.path.realpath(folder)
    if os.path.commonpath([run, destination]) == destination:
        raise ValueError(
            f"the destination {folder} is or holds the run folder {workdir}, which writing it would replace; "
            f"choose a folder outside the run, or inside it (e.g. {os.path.join(workdir, MODEL_FOLDER)})"
        )
    check_destination(folder, overwrite)
    model, step = load_run(workdir, step)
    processor = os.path.join(workdir, CONFIG_NAME)
    if jax.process_index() == 0:
        save_model(model, folder, overwrite=overwrite, carried=(processor,) if os.path.isfile(processor) else ())
    return step


def is_exported(workdir: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether `folder` holds weights written after the run's latest checkpoint was committed (orbax
    names a committed step's folder by its number)."""
    weights = os.path.join(folder, FLAX_WEIGHTS)
    if not os.path.isfile(weights):
        return False
    checkpoints = os.path.join(workdir, CHECKPOINTS)
    steps = [int(name) for name in os.listdir(checkpoints) if name.isdigit()] if os.path.isdir(checkpoints) else []
    return not steps or os.path.getmtime(weights) >= os.path.getmtime(os.path.join(checkpoints, str(max(steps))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m m2f_jax.training.export",
        description=(
            "Write the model of a train.py run's checkpoint (default: the latest) as a model folder: "
            f"config.json, {FLAX_WEIGHTS} and the run's {CONFIG_NAME}, which m2f_jax.from_pretrained, "
            "predict.py --model and segment() read. Only the parameters are read from the checkpoint."
        ),
    )
    parser.add_argument("workdir", metavar="WORKDIR", help="the run folder (train.py --workdir)")
    parser.add_argument("dest", metavar="DEST", help="the model folder to write (created; written whole or not at all)")
    parser.add_argument("--step", type=int, default=None, help="the checkpoint to export (default: the latest)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty DEST whole")
    args = parser.parse_args(argv)
    jax.config.update("jax_platforms", "cpu")  # host work only; a training run may hold the accelerator
    try:
        step = export_model(args.workdir, args.dest, args.step, args.overwrite)
    except (OSError, ValueError) as error:
        print(f"export: {error}", file=sys.stderr)
        return 2
    print(f"wrote the model of step {step} of {args.workdir} to {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
