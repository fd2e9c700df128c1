"""train.py and eval.py as a user runs them, on a COCO panoptic folder read by grain worker processes:
exact resume after SIGKILL, the loss falling, the evaluation's metrics and overlays (a short version
of the README's demo), and a corrupt image mid-run.

Runs A (2N steps straight), B (killed with SIGKILL after its step-N checkpoint; started once A has
compiled, so the two overlap) and C (B resumed) share one persistent compilation cache, so the step
compiles once. A also
shows the loss falling and is what eval.py evaluates. Bad configs and flags, and resuming with a
changed config, must fail in seconds, before anything is built.
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


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """The synthetic set as a COCO panoptic folder: 32 training and 8 validation images of 32x32."""
    from m2f_jax.data.synthetic import write_coco_panoptic

    root = tmp_path_factory.mktemp("coco")
    write_coco_panoptic(root, "train", 32, image_size=(32, 32))
    write_coco_panoptic(root, "val", 8, image_size=(32, 32), seed=10_000)
    return str(root)


def command(script, workdir, *flags, data=None):
    config = f"{CONFIG}:{data}" if data else CONFIG
    return [sys.executable, os.path.join(ROOT, script), f"--config={config}", f"--workdir={workdir}", *flags]


def train_flags(steps=2 * N, workers=1):
    return [f"--config.steps={steps}", f"--config.checkpoint_every={N}", "--config.log_every=1",
            "--config.model.drop_path_rate=0.2", f"--config.data.workers={workers}"]  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("jax_cache")
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("M2F_", "SLURM_", "OMPI_"))},
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
            if "loss" in record:  # not the evaluations' lines
                by_step[record["step"]] = record["loss"]
    return [by_step[s] for s in sorted(by_step)], sorted(by_step)


def logged(workdir) -> int:
    """The last step in the run's metrics.jsonl (0: none yet; the file is created before compiling)."""
    try:
        return max(losses(workdir)[1], default=0)
    except (FileNotFoundError, ValueError):  # not there yet, or a line half written
        return 0


def final_state(workdir, coco):
    from m2f_jax.config import Mask2FormerConfig
    from m2f_jax.training import experiment
    from m2f_jax.training.checkpoint import Checkpoints
    from m2f_jax.training.mesh import make_mesh

    from tiny_experiment import get_config

    c = get_config(coco)
    c.model.drop_path_rate = 0.2
    checkpoints = Checkpoints(str(workdir), create=False)
    mesh = make_mesh(1)
    _, like = experiment.abstract_state(c, Mask2FormerConfig.load(workdir), experiment.optimizer_config(c)[0], mesh)
    state, data = checkpoints.restore(like)
    checkpoints.close()
    return state, data


@pytest.fixture(scope="module")
def runs(tmp_path_factory, env, coco):
    """A (2N steps straight), and B (killed with SIGKILL once its step-N checkpoint is committed and
    it has logged a later step) started as soon as A has compiled (A's first step logged), so B loads
    the compiled step from the cache while A trains. Returns their workdirs once A has finished."""
    straight, killed, logs = (tmp_path_factory.mktemp(name) for name in ("straight", "killed", "logs"))
    a_log, b_log = open(logs / "a.log", "w"), open(logs / "b.log", "w")  # noqa: SIM115
    a = subprocess.Popen(
        command("train.py", straight, *train_flags(), f"--config.eval.every={N}", data=coco),
        env=env, stdout=a_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.time() + 900
    while time.time() < deadline and a.poll() is None and not logged(straight):  # A has compiled: the cache holds it
        time.sleep(0.05)
    b = subprocess.Popen(
        command("train.py", killed, *train_flags(), data=coco), env=env, stdout=b_log, stderr=subprocess.STDOUT
    )
    committed = os.path.join(killed, "checkpoints", str(N))
    while time.time() < deadline and b.poll() is None:  # saves are asynchronous: wait for the commit
        if os.path.isdir(committed) and logged(killed) > N:
            b.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    b.wait(timeout=60)
    a.wait(timeout=900)
    a_log.close(), b_log.close()
    assert a.returncode == 0, (logs / "a.log").read_text()[-4000:]
    assert b.returncode == -signal.SIGKILL, f"B ended before the kill: {(logs / 'b.log').read_text()[-3000:]}"
    # Committed checkpoints only: the kill may land while step 2N is being saved (its temporary folder,
    # which a resume ignores and removes).
    committed = [d for d in os.listdir(os.path.join(killed, "checkpoints")) if d.isdigit()]
    assert committed == [str(N)], "the kill came after step 2N was saved"
    return straight, killed


@pytest.fixture(scope="module")
def straight(runs):
    return runs[0]


@pytest.fixture(scope="module")
def killed_and_resumed(runs, env, coco):
    """C: B resumed, with the data read in the training process (the data state does not depend on it)."""
    resumed = run(command("train.py", runs[1], *train_flags(workers=0), data=coco), env)
    assert f"resumed from step {N}" in resumed and "data.workers: 1 -> 0" in resumed, resumed
    return runs[1]


def test_resume_after_sigkill_is_exact(straight, killed_and_resumed, coco):
    a_losses, a_steps = losses(straight)
    b_losses, b_steps = losses(killed_and_resumed)
    assert a_steps == b_steps == list(range(1, 2 * N + 1))
    np.testing.assert_array_equal(b_losses, a_losses)
    (a, a_data), (b, b_data) = final_state(straight, coco), final_state(killed_and_resumed, coco)
    assert a_data == b_data and a_data["iterator"]["batch"] == 2 * N and a_data["skipped"] == 0
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


def test_eval_writes_metrics_and_overlays(straight, env, coco):
    out = run(command("eval.py", straight, "--overlays=2", "--batch_size=4", data=coco), env)
    assert "mIoU" in out and "PQ" in out and "AP" in out
    folder = os.path.join(straight, "eval", f"step_{2 * N}")
    with open(os.path.join(folder, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["step"] == 2 * N and metrics["images"] == 8
    assert 0 <= metrics["semantic"]["mIoU"] <= 100 and 0 <= metrics["panoptic"]["PQ"] <= 100
    assert 0 <= metrics["instance"]["AP"] <= 100 and 0 <= metrics["instance"]["box"]["AP"] <= 100
    assert sorted(os.listdir(folder)) == ["metrics.json", "overlay_00.png", "overlay_01.png", "per_class.txt"]


def test_evaluation_during_training_logs_and_keeps_the_best(straight):
    """Run A evaluated every N steps (B and C did not, and end in the same state): logged, and the best
    model exported with its step and score."""
    with open(os.path.join(straight, "metrics.jsonl")) as f:
        evaluated = [r for r in map(json.loads, f) if "eval/panoptic/PQ" in r]
    assert [r["step"] for r in evaluated] == [N, 2 * N]
    assert all(0 <= r["eval/semantic/mIoU"] <= 100 and 0 <= r["eval/instance/AP"] <= 100 for r in evaluated)
    with open(os.path.join(straight, "best", "best.json")) as f:
        best = json.load(f)
    scores = {r["step"]: r["eval/panoptic/PQ"] for r in evaluated}
    assert best["metric"] == "PQ" and best["value"] == max(scores.values()) and scores[best["step"]] == best["value"]
    import m2f_jax

    assert m2f_jax.from_pretrained(os.path.join(straight, "best")).config.num_labels == 7


def test_predict_reads_the_run(straight, coco, tmp_path):
    """predict.py --model WORKDIR (the run's latest checkpoint and its processor) on a folder of images."""
    from m2f_jax.apps import predict

    out = tmp_path / "out"
    args = [
        "--model",
        str(straight),
        "--task",
        "panoptic",
        "--input",
        os.path.join(coco, "val2017"),
        "--output",
        str(out),
    ]
    assert predict.main(args) == 0
    assert len([name for name in os.listdir(out) if name.endswith(".json")]) == 8


def fails(cmd, env):
    return finished(start(cmd, env), code=1)


def start(cmd, env) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen, code: int) -> str:
    """stderr of a failed run (code 1: a message, no traceback), or stdout of a successful one."""
    out, err = process.communicate(timeout=300)
    assert process.returncode == code, (out + err)[-4000:]
    if code:
        assert "Traceback" not in err, err[-4000:]
    return err if code else out


def test_bad_config_and_flags_fail_before_any_work(tmp_path, env):
    """Every bad field (flag) reported at once, in seconds, and nothing created: these once failed
    with ZeroDivisionError after compiling, or deleted every checkpoint (keep_checkpoints=0)."""
    workdir = tmp_path / "never"
    bad = ["--config.checkpoint_every=0", "--config.log_every=0", "--config.optimizer.accumulation_steps=0",
           "--config.steps=-1", "--config.data.augment.crop_size=(32,)", "--config.keep_checkpoints=0"]  # fmt: skip
    evaluating = start(command("eval.py", workdir, "--batch_size", "0", "--overlays=-1", "--step=-2"), env)
    train = fails(command("train.py", workdir, *bad), env)
    for expected in ("train.py: the experiment config has 6 problem(s):", "checkpoint_every must be >= 1, got 0",
                     "log_every must be >= 1, got 0", "optimizer.accumulation_steps must be >= 1, got 0",
                     "steps must be >= 1, got -1", "keep_checkpoints must be >= 1, got 0",
                     "data.augment.crop_size must be 2 integers >= 1, e.g. (2, 2), got (32,)"):  # fmt: skip
        assert expected in train, train
    evaluate = finished(evaluating, code=1)
    for expected in ("--batch_size must be >= 1, got 0", "--overlays must be >= 0, got -1", "--step must be >= 0"):
        assert expected in evaluate, evaluate
    assert not workdir.exists()


def test_resume_with_a_changed_config(straight, env, coco):
    """A changed model or batch is refused with the fields' saved and new values before anything is
    restored (once: pages of orbax errors), and the workdir is left as it was; bookkeeping may change;
    steps below the checkpoint's are refused. The three runs only read the workdir: run together."""
    checkpoints = sorted(os.listdir(os.path.join(straight, "checkpoints")))
    exported = os.stat(os.path.join(straight, "model", "flax_model.safetensors")).st_mtime_ns
    with open(os.path.join(straight, "experiment.json")) as f:
        recorded = f.read()
    changed = start(command("train.py", straight, *train_flags(), "--config.model.hidden_dim=32",
                            "--config.batch_size=16", data=coco), env)  # fmt: skip
    bookkeeping = start(command("train.py", straight, *train_flags(), "--config.log_every=5", data=coco), env)
    shorter = start(command("train.py", straight, *train_flags(steps=N), data=coco), env)
    error = finished(changed, code=1)
    assert f"cannot resume the checkpoint at step {2 * N}" in error and len(error.splitlines()) < 8, error
    assert "  batch_size: 8 -> 16" in error and "  model.hidden_dim: 64 -> 32" in error, error
    out = finished(bookkeeping, code=0)
    assert "  log_every: 1 -> 5" in out and f"has already trained {2 * N} steps" in out, out
    assert f"steps={N} but {straight} holds a checkpoint at step {2 * N}" in finished(shorter, code=1)
    assert sorted(os.listdir(os.path.join(straight, "checkpoints"))) == checkpoints
    assert os.stat(os.path.join(straight, "model", "flax_model.safetensors")).st_mtime_ns == exported  # not redone
    with open(os.path.join(straight, "experiment.json")) as f:
        assert f.read() == recorded


def test_a_corrupt_image_mid_run_is_skipped_and_reported(tmp_path, env, coco):
    """One training image replaced by garbage: the run names it and goes on, and stops, with a checkpoint
    of the step reached, once more than data.max_skipped samples were skipped (0 here)."""
    import shutil

    root = tmp_path / "coco"
    shutil.copytree(coco, root)
    broken = root / "train2017" / sorted(os.listdir(root / "train2017"))[5]
    broken.write_bytes(b"not an image")
    workdir = tmp_path / "run"
    # The runs' step count (the schedule is compiled in: the cached step is reused); the first 4 steps
    # of 8 images read every image once, so the run stops by step 4.
    flags = [*train_flags(workers=0), "--config.data.max_skipped=0"]
    error = fails(command("train.py", workdir, *flags, data=str(root)), env)
    assert f"skipped a sample: image '{broken}'" in error and "cannot read" in error, error
    assert "1 samples could not be read, more than data.max_skipped=0" in error and str(broken) in error, error
    stopped = int(error.split("stopped at step ")[1].split(" ")[0])
    assert os.listdir(workdir / "checkpoints") == [str(stopped)]
    with open(workdir / "metrics.jsonl") as f:
        assert json.loads(f.readlines()[-1])["skipped_images"] == 1
