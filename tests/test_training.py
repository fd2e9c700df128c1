"""Data-parallel and sharded training give the same parameters as one device; so do two processes;
two SLURM tasks form one mesh.

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
ROOT = os.path.join(os.path.dirname(__file__), "..")
CLUSTER_VARIABLES = ("M2F_", "SLURM_", "OMPI_")  # the test's own processes only see the ones it sets


def start_worker(out, meshes, devices, env_extra=None) -> tuple[subprocess.Popen, str]:
    """The worker in a subprocess, its output in a log file beside `out` (no pipe to fill)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLUSTER_VARIABLES)}
    # Optimisation level 0: the runs compare meshes under the same compiler settings, and compile faster.
    flags = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    env.update(XLA_FLAGS=flags, **(env_extra or {}))
    command = [sys.executable, WORKER, str(out), "--steps", "3", "--meshes", meshes]
    log = f"{out}.{(env_extra or {}).get('M2F_PROCESS_ID', 0)}.log"
    with open(log, "w") as f:
        return subprocess.Popen(command, env=env, stdout=f, stderr=subprocess.STDOUT), log


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_runs(folder: str) -> tuple[list, str, str]:
    """One process on 1 device and on 4x2 devices ('data' x 'fsdp': both axes, so an 8x1 mesh adds no
    case, only a compilation); and two processes with 2 devices each (a 4-device 'data' mesh). All start
    at once: compiling is mostly single-threaded, so they share the cores."""
    one, two = os.path.join(folder, "one.npz"), os.path.join(folder, "two.npz")
    port = free_port()
    processes = [start_worker(one, "1x1,4x2", devices=8)] + [
        start_worker(two, "2x1", devices=2, env_extra={
            "M2F_COORDINATOR": f"127.0.0.1:{port}", "M2F_NUM_PROCESSES": "2", "M2F_PROCESS_ID": str(i)})
        for i in range(2)
    ]  # fmt: skip
    return processes, one, two


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    processes, one, two = start_runs(str(tmp_path_factory.mktemp("training")))
    for process, log in processes:
        process.wait(timeout=1800)
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


def test_eight_devices_equal_one(runs):
    assert_same_training(by_mesh(runs[0], "1x1"), by_mesh(runs[0], "4x2"))


def test_two_processes_equal_one(runs):
    assert_same_training(by_mesh(runs[0], "1x1"), by_mesh(runs[1], "2x1"))


# Each process: initialize_distributed() as train.py calls it, then a sum over the 4-device mesh of
# rows that each process holds (process 0: 1, 1; process 1: 2, 2).
SLURM_PROCESS = """
from m2f_jax.training.mesh import batch_sharding, initialize_distributed, make_mesh, replicated
how = initialize_distributed()
import jax, numpy as np
mesh = make_mesh(1)
rows = np.full((2,), jax.process_index() + 1.0, np.float32)
total = jax.jit(lambda x: x.sum(), out_shardings=replicated(mesh))(
    jax.make_array_from_process_local_data(batch_sharding(mesh), rows))
print(f"{how}|{jax.process_count()}|{len(jax.devices())}|{mesh.size}|{float(total)}")
"""


def test_slurm_tasks_form_one_mesh(tmp_path):
    """Two SLURM tasks (as srun starts them) with 2 CPU devices each: one 4-device mesh, through
    JAX's SLURM detection (JAX_COORDINATOR_PORT instead of the port JAX derives from the job id)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLUSTER_VARIABLES)}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               JAX_COORDINATOR_PORT=str(free_port()), SLURM_JOB_ID="4242", SLURM_NTASKS="2",
               SLURM_STEP_NODELIST="127.0.0.1", SLURM_NODELIST="127.0.0.1")  # fmt: skip
    processes = []
    for i in range(2):
        log = tmp_path / f"{i}.log"
        with open(log, "w") as f:
            task = {**env, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)}
            processes.append((subprocess.Popen([sys.executable, "-c", SLURM_PROCESS], cwd=ROOT, env=task,
                                               stdout=f, stderr=subprocess.STDOUT), log))  # fmt: skip
    for process, log in processes:
        process.wait(timeout=300)
        output = log.read_text()
        assert process.returncode == 0, output[-4000:]
        assert output.strip().splitlines()[-1] == "slurm cluster environment (2 processes)|2|4|4|6.0", output[-2000:]


def test_importing_leaves_jax_uninitialised():
    """jax.distributed.initialize must come before any backend use, so importing the package and
    the scripts may not touch the devices."""
    code = "import m2f_jax, train; from jax._src import xla_bridge as xb; assert not xb._backends, 'started'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=300)
