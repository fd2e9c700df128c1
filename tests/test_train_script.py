"""train.py and eval.py as a user runs them: exact resume after SIGKILL, the loss falling, and the
evaluation's metrics and overlays (a short version of the README's demo).

Runs A (2N steps straight), B (killed with SIGKILL after its step-N checkpoint) and C (B resumed)
share one persistent compilation cache, so the step compiles once; A also shows the loss falling
and is what eval.py evaluates.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
CONFIG = os.path.join(os.path.dirname(__file__), "tiny_experiment.py")
N = 10  # steps before the kill; the runs train 2N


def command(script, workdir, *flags):
    return [sys.executable, os.path.join(ROOT, script), f"--config={CONFIG}", f"--workdir={workdir}", *flags]


def train_flags(steps=2 * N):
    return [f"--config.steps={steps}", f"--config.checkpoint_every={N}", "--config.log_every=1",
            "--config.model.drop_path_rate=0.2"]  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("jax_cache")
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("M2F_")},
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def run(cmd, env):
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout


def losses(workdir):
    """Loss per step from metrics.jsonl (a step logged twice, before a kill and after the resume,
    keeps its last value)."""
    by_step = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            by_step[record["step"]] = record["loss"]
    return [by_step[s] for s in sorted(by_step)], sorted(by_step)


def final_state(workdir):
    from m2f_jax.config import Mask2FormerConfig
    from m2f_jax.training import experiment
    from m2f_jax.training.checkpoint import Checkpoints
    from m2f_jax.training.mesh import make_mesh

    from tiny_experiment import get_config

    c = get_config()
    c.model.drop_path_rate = 0.2
    checkpoints = Checkpoints(str(workdir), create=False)
    mesh = make_mesh(1)
    _, like = experiment.abstract_state(c, Mask2FormerConfig.load(workdir), experiment.optimizer_config(c)[0], mesh)
    state, data = checkpoints.restore(like)
    checkpoints.close()
    return state, data


@pytest.fixture(scope="module")
def straight(tmp_path_factory, env):
    workdir = tmp_path_factory.mktemp("straight")
    run(command("train.py", workdir, *train_flags()), env)
    return workdir


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, env, straight):
    """B: killed (SIGKILL) once it has logged a step after its step-N checkpoint; C: resumed."""
    workdir = tmp_path_factory.mktemp("killed")
    process = subprocess.Popen(command("train.py", workdir, *train_flags()), env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:
        if os.path.exists(metrics) and max(losses(workdir)[1], default=0) > N:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, (
        f"run B ended by itself before the kill: {process.stdout.read()[-3000:]}"
    )
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [str(N)], "the kill came after step 2N"
    resumed = run(command("train.py", workdir, *train_flags()), env)
    assert f"resumed from step {N}" in resumed
    return workdir


def test_resume_after_sigkill_is_exact(straight, killed_and_resumed):
    a_losses, a_steps = losses(straight)
    b_losses, b_steps = losses(killed_and_resumed)
    assert a_steps == b_steps == list(range(1, 2 * N + 1))
    np.testing.assert_array_equal(b_losses, a_losses)
    (a, a_data), (b, b_data) = final_state(straight), final_state(killed_and_resumed)
    assert a_data == b_data and a_data["step"] == 2 * N
    assert int(a.step) == int(b.step) == 2 * N
    import jax

    for name, x, y in zip(
        jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(a), jax.tree.leaves(b), strict=True
    ):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(name[0]))


def test_loss_falls(straight):
    """The demo's learning, short: the tiny model's loss after 2N steps clearly under its first."""
    values, _ = losses(straight)
    assert np.mean(values[-5:]) < 0.9 * values[0], values  # 0.84 here; the demo goes much further


def test_eval_writes_metrics_and_overlays(straight, env):
    out = run(command("eval.py", straight, "--overlays=2", "--batch_size=4"), env)
    assert "mIoU" in out and "PQ" in out
    with open(os.path.join(straight, "eval", "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["step"] == 2 * N and metrics["images"] == 8
    assert 0 <= metrics["semantic"]["mIoU"] <= 100 and 0 <= metrics["panoptic"]["PQ"] <= 100
    assert sorted(os.listdir(os.path.join(straight, "eval"))) == ["metrics.json", "overlay_00.png", "overlay_01.png"]
