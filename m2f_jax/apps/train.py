"""Trains Mask2Former with the matched, point-sampled losses on one device, a device mesh, or
several processes, resuming from the last checkpoint in --workdir.

    python train.py --config configs/synthetic.py --workdir runs/synthetic [--config.steps=200 ...]

Writes under --workdir: checkpoints/ (orbax; the last `keep_checkpoints`), metrics.jsonl (one line
per logged step), TensorBoard event files in tensorboard/, config.json (the model's HF config),
experiment.json (this config; a resume may change only some fields, see docs/training.md),
preprocessor_config.json (the image processor), and at the end model/: the last checkpoint's model
as a folder that from_pretrained, predict.py --model and segment() read (m2f_jax.training.export).
Several processes: start one per host with M2F_COORDINATOR=host:port, M2F_NUM_PROCESSES and
M2F_PROCESS_ID set, or under SLURM (srun), Open MPI (mpirun) or on a Cloud TPU pod, where JAX
finds them itself (docs/training.md).
"""

from __future__ import annotations

import os
import sys
import time

from absl import flags, logging
from ml_collections import config_flags

from m2f_jax.apps import run_absl

_CONFIG = _WORKDIR = None  # absl flag handles, defined by run()


def _define_flags() -> None:
    """Defined when the command runs, not on import, so that train and eval can share a process."""
    global _CONFIG, _WORKDIR
    _CONFIG = config_flags.DEFINE_config_file("config", None, "an experiment config file (configs/*.py)")
    _WORKDIR = flags.DEFINE_string("workdir", None, "run folder: checkpoints, metrics and logs (resumes if present)")
    flags.mark_flags_as_required(["config", "workdir"])


# ----------------------------------------------------------------------------------------------------
# Checks: the config, the processes and mesh, the workdir's saved configs


def main(argv) -> int:
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save and restore step at INFO
    from m2f_jax.training import experiment

    c, workdir = _CONFIG.value, _WORKDIR.value
    try:
        experiment.validate(c)  # every field, before any process, device or file is touched
    except ValueError as error:
        sys.exit(f"train.py: {error}")

    from m2f_jax.training.mesh import initialize_distributed

    initialize_distributed()  # before anything touches the devices

    import jax
    import numpy as np

    from m2f_jax.training import workdir as run_record
    from m2f_jax.training.checkpoint import Checkpoints
    from m2f_jax.training.mesh import count_everywhere, global_batch, make_mesh
    from m2f_jax.training.metrics import MetricsLog
    from m2f_jax.training.periodic_eval import PeriodicEvaluation
    from m2f_jax.training.step import check_batch, non_finite_message

    lead = jax.process_index() == 0
    try:
        mesh = make_mesh(c.fsdp)
    except ValueError as error:
        sys.exit(f"train.py: {error}")
    if c.batch_size % mesh.size:
        sys.exit(f"train.py: batch_size must be a multiple of the mesh's {mesh.size} devices, got {c.batch_size}")
    try:  # the data source: its folders and annotation files are checked here, before any device work
        model_config = experiment.model_config(c, experiment.dataset(c, "train"))
        batches = experiment.train_batches(c, jax.process_index(), jax.process_count())
        evaluation = PeriodicEvaluation(c, workdir) if experiment.eval_settings(c)["every"] else None
    except (OSError, ValueError) as error:
        sys.exit(f"train.py: data.source {c.data.source!r}: {error}")

    # ------------------------------------------------------------------------------------------------
    # Resume: the saved configs compared with this one before anything is built or restored

    checkpoints = Checkpoints(workdir, keep=c.keep_checkpoints)
    resume_from = checkpoints.latest_step()

    def refuse(message: str) -> None:
        checkpoints.close()  # orbax's background clean-up must end before the interpreter does
        sys.exit(f"train.py: {message}")

    if resume_from is not None:
        try:
            changes = run_record.check_resume(workdir, c, model_config, resume_from)
        except ValueError as error:
            refuse(str(error))
        if resume_from > c.steps:
            refuse(f"steps={c.steps} but {workdir} holds a checkpoint at step {resume_from}; raise steps")
        if changes and lead:
            print(run_record.describe_changes(changes), flush=True)
        if resume_from == c.steps:
            if lead:
                print(f"{workdir} has already trained {c.steps} steps; raise steps to continue", flush=True)
            checkpoints.close()
            _export(workdir, lead, only_if_stale=True)  # e.g. a run stopped between its last save and export
            return 0

    # ------------------------------------------------------------------------------------------------
    # Set-up: model, optimizer, the sharded state and the jitted step

    opt_config, schedule = experiment.optimizer_config(c)
    initial_weights: list[str] = []  # where the initial weights came from (printed and recorded when not resuming)
    graphdef, state = experiment.initial_state(
        c, model_config, opt_config, mesh, report=initial_weights, load_weights=resume_from is None
    )
    step_fn = experiment.jitted_train_step(c, model_config, graphdef, opt_config, state, mesh)
    skipped: list[str] = []  # this process's samples that could not be read, since this start
    skipped_before = 0  # all processes' skipped samples before this start
    over_full: set[str] = set()  # this process's samples with more targets than slots (not counted as skipped)
    if resume_from is not None:
        state, data_state = checkpoints.restore(state, resume_from)
        # Every process's iterator state is the same (positions within its own shard), so the one
        # checkpoint copy (orbax writes JSON from the first process) serves them all.
        batches.set_state(data_state["iterator"])
        skipped_before = int(data_state["skipped"])
        if lead:
            run_record.record_resume(workdir, c, resume_from, changes)
            print(f"resumed from step {resume_from} in {workdir}", flush=True)
    elif lead:
        for line in initial_weights:
            print(line, flush=True)
        run_record.record_start(workdir, c, model_config, initial_weights)
        experiment.processor(c).save_pretrained(workdir)  # the normalisation the model was trained with
    first = int(jax.device_get(state.step))

    # ------------------------------------------------------------------------------------------------
    # The loop

    def stop_if_non_finite(done: int, metrics) -> None:
        if not bool(jax.device_get(metrics["finite"])):
            checkpoints.wait()  # the save in flight, if any, is the last checkpoint
            last = checkpoints.latest_step()
            sys.exit(non_finite_message(done, float(metrics["loss"]), float(metrics["grad_norm"]), last))

    log = MetricsLog(workdir, enabled=lead)
    start, timed_from = time.perf_counter(), None
    pending = None  # the previous step's (number, metrics), checked once the next step is queued
    try:
        for step in range(first, c.steps):
            local = next(batches)
            for message in local.pop("skipped"):
                print(f"train.py: skipped a sample: {message}", file=sys.stderr, flush=True)
                skipped.append(message)
            for message in set(local.pop("over_full")) - over_full:  # met again every epoch: said once
                print(f"train.py: skipped a sample with more targets than data.max_instances: {message}",
                      file=sys.stderr, flush=True)  # fmt: skip
                over_full.add(message)
            check_batch(local, model_config.num_labels, step)
            state, metrics = step_fn(state, global_batch(local, mesh))
            done = step + 1
            if pending is not None:  # the device runs this step while the host checks the last one
                stop_if_non_finite(*pending)
            pending = (done, metrics)
            if timed_from is None:  # the first step includes compilation
                timed_from, start = done, time.perf_counter()
            boundary = done % c.log_every == 0 or done % c.checkpoint_every == 0 or done == c.steps
            # The same decision on every process, at the same steps.
            total_skipped = skipped_before + count_everywhere(len(skipped)) if boundary else 0
            too_many_skipped = total_skipped > c.data.max_skipped
            if done % c.log_every == 0 or done == c.steps:
                stop_if_non_finite(done, metrics)
                elapsed = time.perf_counter() - start
                rate = (done - timed_from) / elapsed if elapsed > 0 and done > timed_from else float("nan")
                scalars = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
                scalars.update(
                    learning_rate=float(schedule(done - 1)),
                    images_per_s=rate * c.batch_size,
                    skipped_images=total_skipped,
                    over_full_images=len(over_full),
                )
                log.write(done, scalars, eta_s=(c.steps - done) / rate if rate > 0 else None)  # NaN > 0 is False
            if done % c.checkpoint_every == 0 or done == c.steps or too_many_skipped:
                stop_if_non_finite(done, metrics)  # never save a state whose data position ran past a skipped step
                data_state = {"iterator": batches.get_state(), "skipped": total_skipped}
                checkpoints.save(done, state, data_state)  # asynchronous: written while training goes on
            if evaluation is not None and evaluation.due(done):
                began = time.perf_counter()
                log.write(done, evaluation(done, graphdef, state))  # and WORKDIR/best when it is the best
                start += time.perf_counter() - began  # images_per_s: training time only
            if too_many_skipped:
                checkpoints.wait()
                sys.exit(
                    f"train.py: {total_skipped} samples could not be read, more than data.max_skipped="
                    f"{c.data.max_skipped}; stopped at step {done} (saved). Fix or remove them, or raise "
                    "data.max_skipped, then resume. This process's:\n  " + "\n  ".join(skipped)
                )
    finally:
        batches.close()  # the data workers
        log.close()
        checkpoints.close()  # waits for the save in flight, on every way out
    if lead:
        print(f"trained {c.steps} steps; checkpoints in {checkpoints.directory}", flush=True)
    _export(workdir, lead)
    return 0


def _export(workdir: str, lead: bool, only_if_stale: bool = False) -> None:
    """The last checkpoint's model as WORKDIR/model, replacing an older export (this run's own output).
    Every process takes part (orbax reads collectively); process 0 writes."""
    from m2f_jax.training import export

    folder = os.path.join(workdir, export.MODEL_FOLDER)
    if only_if_stale and export.is_exported(workdir, folder):
        return
    try:
        step = export.export_model(workdir, folder, overwrite=True)
    except (OSError, ValueError) as error:
        sys.exit(
            f"train.py: the checkpoints are saved, but the model could not be exported to {folder}: {error}\n"
            f"Export it with: python -m m2f_jax.training.export {workdir} {folder} --overwrite"
        )
    if lead:
        print(f"exported the model of step {step} to {folder} (from_pretrained, predict.py --model)", flush=True)


def run() -> None:
    """The `m2f-train` command (and `python train.py`); `--config NAME` names a shipped config."""
    run_absl(main, _define_flags, __doc__)


if __name__ == "__main__":
    run()
