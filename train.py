#!/usr/bin/env python
"""Trains Mask2Former with the matched, point-sampled losses on one device, a device mesh, or
several processes, resuming from the last checkpoint in --workdir.

    python train.py --config configs/synthetic.py --workdir runs/synthetic [--config.steps=200 ...]

Writes under --workdir: checkpoints/ (orbax; the last `keep_checkpoints`), metrics.jsonl (one line
per logged step), TensorBoard event files in tensorboard/, and config.json (the model's HF config).
Several processes: start one per host with M2F_COORDINATOR=host:port, M2F_NUM_PROCESSES and
M2F_PROCESS_ID set (TPU pods and SLURM need none of them).
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "an experiment config file (configs/*.py)")
_WORKDIR = flags.DEFINE_string("workdir", None, "run folder: checkpoints, metrics and logs (resumes if present)")
flags.mark_flags_as_required(["config", "workdir"])


# ----------------------------------------------------------------------------------------------------
# Set-up: processes, mesh, data, model and optimizer


def main(argv) -> int:
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save and restore step at INFO
    from m2f_jax.training.mesh import initialize_distributed

    initialize_distributed()  # before anything touches the devices

    import jax
    import numpy as np

    from m2f_jax.training import experiment
    from m2f_jax.training.checkpoint import Checkpoints
    from m2f_jax.training.mesh import global_batch, make_mesh
    from m2f_jax.training.metrics import MetricsLog
    from m2f_jax.training.step import check_batch

    c, workdir = _CONFIG.value, _WORKDIR.value
    lead = jax.process_index() == 0
    mesh = make_mesh(c.fsdp)
    if c.batch_size % mesh.size:
        raise ValueError(f"batch_size {c.batch_size} must be a multiple of the {mesh.size} devices")

    batches = experiment.train_batches(c, jax.process_index(), jax.process_count())
    model_config = experiment.model_config(c, batches.dataset)
    experiment.check_experiment(c, model_config)
    opt_config, schedule = experiment.optimizer_config(c)
    graphdef, state = experiment.initial_state(c, model_config, opt_config, mesh)
    step_fn = experiment.jitted_train_step(c, model_config, graphdef, opt_config, state, mesh)

    # ------------------------------------------------------------------------------------------------
    # Resume: the latest checkpoint's state and the data iterator's position

    checkpoints = Checkpoints(workdir, keep=c.keep_checkpoints)
    if checkpoints.latest_step() is not None:
        state, data_state = checkpoints.restore(state)
        batches.set_state(data_state)
        if lead:
            print(f"resumed from step {checkpoints.latest_step()} in {workdir}", flush=True)
    elif lead:
        os.makedirs(workdir, exist_ok=True)
        model_config.save(workdir)
    first = int(jax.device_get(state.step))

    # ------------------------------------------------------------------------------------------------
    # The loop

    def stop_if_non_finite(done: int, metrics) -> None:
        if not bool(jax.device_get(metrics["finite"])):
            last = checkpoints.latest_step()
            sys.exit(
                f"non-finite loss or gradient at step {done} (loss {float(metrics['loss'])}, grad norm "
                f"{float(metrics['grad_norm'])}); stopped without saving, so the last good checkpoint "
                f"({'step ' + str(last) if last is not None else 'none'}) is intact. Lower the learning rate "
                "or check the data."
            )

    log = MetricsLog(workdir, enabled=lead)
    start, timed_from = time.perf_counter(), None
    pending = None  # the previous step's (number, metrics), checked once the next step is queued
    for step in range(first, c.steps):
        local = next(batches)
        check_batch(local, model_config.num_labels, step)
        state, metrics = step_fn(state, global_batch(local, mesh))
        done = step + 1
        if pending is not None:  # the device runs this step while the host checks the last one
            stop_if_non_finite(*pending)
        pending = (done, metrics)
        if timed_from is None:  # the first step includes compilation
            timed_from, start = done, time.perf_counter()
        if done % c.log_every == 0 or done == c.steps:
            stop_if_non_finite(done, metrics)
            elapsed = time.perf_counter() - start
            rate = (done - timed_from) / elapsed if elapsed > 0 and done > timed_from else float("nan")
            scalars = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
            scalars.update(learning_rate=float(schedule(done - 1)), images_per_s=rate * c.batch_size)
            log.write(done, scalars, eta_s=(c.steps - done) / rate if rate > 0 else None)  # NaN > 0 is False
        if done % c.checkpoint_every == 0 or done == c.steps:
            stop_if_non_finite(done, metrics)  # never save a state whose data position ran past a skipped step
            checkpoints.save(done, state, batches.get_state())
    log.close()
    checkpoints.close()
    if lead:
        print(f"trained {c.steps} steps; checkpoints in {checkpoints.directory}", flush=True)
    return 0


if __name__ == "__main__":
    app.run(main)
