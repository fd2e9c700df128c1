"""Data-parallel and sharded training give the same parameters as one device; so do two processes.

Each configuration runs in a subprocess (tests/train_worker.py) with fake CPU devices, three steps
of a tiny model on the synthetic data with global batch 8.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "train_worker.py")


def start_worker(out, meshes, devices, env_extra=None) -> tuple[subprocess.Popen, str]:
    """The worker in a subprocess, its output in a log file beside `out` (no pipe to fill)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("M2F_")}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **(env_extra or {}))
    command = [sys.executable, WORKER, str(out), "--steps", "3", "--meshes", meshes]
    log = f"{out}.{(env_extra or {}).get('M2F_PROCESS_ID', 0)}.log"
    with open(log, "w") as f:
        return subprocess.Popen(command, env=env, stdout=f, stderr=subprocess.STDOUT), log


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process on 1 device, 8 devices ('data') and 4x2 devices ('data' x 'fsdp'); and two
    processes with 2 devices each (a 4-device 'data' mesh). All start at once: compiling is mostly
    single-threaded, so they share the cores."""
    one, two = tmp_path_factory.mktemp("one") / "params.npz", tmp_path_factory.mktemp("two") / "params.npz"
    port = free_port()
    processes = [start_worker(one, "1x1,8x1,4x2", devices=8)] + [
        start_worker(two, "2x1", devices=2, env_extra={
            "M2F_COORDINATOR": f"127.0.0.1:{port}", "M2F_NUM_PROCESSES": "2", "M2F_PROCESS_ID": str(i)})
        for i in range(2)
    ]  # fmt: skip
    for process, log in processes:
        process.wait(timeout=900)
        with open(log) as f:
            assert process.returncode == 0, f.read()[-4000:]
    return np.load(one), np.load(two)


def by_mesh(results, mesh):
    return {k.split("/", 1)[1]: results[k] for k in results.files if k.startswith(mesh + "/")}


def assert_same_training(a, b, atol=2e-5):
    """Float tolerance: a step changes a parameter by ~1e-4 here (see the worker's eps)."""
    assert a.keys() == b.keys()
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-4)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=atol, rtol=1e-4, err_msg=name)


def test_training_moved(runs):
    one = by_mesh(runs[0], "1x1")
    assert np.all(np.isfinite(one["losses"])) and len(one["losses"]) == 3


@pytest.mark.parametrize("mesh", ["8x1", "4x2"])
def test_eight_devices_equal_one(runs, mesh):
    assert_same_training(by_mesh(runs[0], "1x1"), by_mesh(runs[0], mesh))


def test_two_processes_equal_one(runs):
    assert_same_training(by_mesh(runs[0], "1x1"), by_mesh(runs[1], "2x1"))


def test_importing_leaves_jax_uninitialised():
    """jax.distributed.initialize must come before any backend use, so importing the package and
    the scripts may not touch the devices."""
    code = "import m2f_jax, train; from jax._src import xla_bridge as xb; assert not xb._backends, 'started'"
    root = os.path.join(os.path.dirname(__file__), "..")
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=300)
