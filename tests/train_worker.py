"""Runs a few training steps of a tiny model on a chosen mesh and saves the final parameters and
the losses; tests/test_training.py starts it in subprocesses (fake CPU devices, several processes).

    python tests/train_worker.py OUT.npz --steps 3 --meshes 1x1,8x1,4x2   (one process, fake devices)
    M2F_COORDINATOR=127.0.0.1:PORT M2F_NUM_PROCESSES=2 M2F_PROCESS_ID=0 python tests/train_worker.py ...
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path[:0] = [os.path.join(os.path.dirname(__file__), ".."), os.path.dirname(__file__)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--meshes", default="1x1", help="comma-separated DATAxFSDP device meshes to run in turn")
    args = parser.parse_args()

    from m2f_jax.training.mesh import initialize_distributed

    initialize_distributed()
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    from m2f_jax.training import experiment
    from m2f_jax.training.mesh import global_batch, make_mesh

    from tiny_experiment import get_config

    c = get_config()
    c.steps = args.steps
    # Adam's first update is lr * sign(g): float-level differences in how devices sum a gradient
    # flip the sign of near-zero components. A large eps makes the update proportional to the
    # gradient, so runs on different meshes agree to float tolerance exactly when their gradients do.
    c.optimizer.eps = 1e-2
    results = {}
    for spec in args.meshes.split(","):
        data, fsdp = (int(v) for v in spec.split("x"))
        devices = jax.devices()[: data * fsdp] if jax.process_count() == 1 else jax.devices()
        mesh = make_mesh(fsdp, devices=devices)
        batches = experiment.train_batches(c, jax.process_index(), jax.process_count())
        model_config = experiment.model_config(c, experiment.dataset(c, "train"))
        opt_config, _ = experiment.optimizer_config(c)
        graphdef, state = experiment.initial_state(c, model_config, opt_config, mesh)
        step = experiment.jitted_train_step(c, model_config, graphdef, opt_config, state, mesh)
        losses = []
        for _ in range(c.steps):
            batch = next(batches)
            assert not batch.pop("skipped")
            state, metrics = step(state, global_batch(batch, mesh))
            losses.append(float(metrics["loss"]))
        gathered = multihost_utils.process_allgather(state.params, tiled=True)
        flat = jax.tree_util.tree_flatten_with_path(gathered)[0]
        for path, value in flat:
            results[f"{spec}/{jax.tree_util.keystr(path)}"] = np.asarray(value)
        results[f"{spec}/losses"] = np.asarray(losses)
    if jax.process_index() == 0:
        np.savez(args.out, **results)


if __name__ == "__main__":
    main()
