"""Asynchronous checkpoints: a process killed while a save is in flight leaves nothing that restores
as complete; the previous checkpoint restores, and the next run cleans up and saves on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")

# Saves step 1 and waits; starts saving step 2 (16 MiB) and kills itself with SIGKILL as soon as
# orbax's temporary folder for step 2 holds files, i.e. while the save is in flight.
KILLED_WHILE_SAVING = """
import os, signal, sys, time
import jax.numpy as jnp
from m2f_jax.training.checkpoint import Checkpoints

checkpoints = Checkpoints(sys.argv[1], keep=2)
checkpoints.save(1, {"w": jnp.full((4 << 20,), 1.0)}, {"step": 1})
checkpoints.wait()
checkpoints.save(2, {"w": jnp.full((4 << 20,), 2.0)}, {"step": 2})
deadline = time.time() + 60
while time.time() < deadline:
    names = os.listdir(checkpoints.directory)
    if "2" in names:
        sys.exit(3)  # committed before the kill: the save was not caught in flight
    for name in (n for n in names if n.startswith("2.")):  # step 2's files being written
        if any(files for _, _, files in os.walk(os.path.join(checkpoints.directory, name))):
            os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.0005)
sys.exit(4)
"""


def test_kill_during_an_asynchronous_save(tmp_path):
    workdir = str(tmp_path / "run")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("M2F_", "SLURM_", "OMPI_"))}
    result = subprocess.run([sys.executable, "-c", KILLED_WHILE_SAVING, workdir], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    folder = os.path.join(workdir, "checkpoints")
    leftovers = [n for n in os.listdir(folder) if n.startswith("2.")]
    assert "2" not in os.listdir(folder) and leftovers, os.listdir(folder)  # step 2 was in flight

    import jax.numpy as jnp

    from m2f_jax.training.checkpoint import Checkpoints

    checkpoints = Checkpoints(workdir, create=False)  # a reader (eval.py) sees step 1 only
    assert checkpoints.all_steps() == [1] and checkpoints.latest_step() == 1
    state, data = checkpoints.restore({"w": jnp.zeros((4 << 20,))})
    assert data == {"step": 1} and np.all(np.asarray(state["w"]) == 1.0)
    checkpoints.close()

    # The resumed run saves step 2 again, into the same temporary name (orbax removes the leftover).
    checkpoints = Checkpoints(workdir, keep=2)
    checkpoints.save(2, {"w": jnp.full((4,), 3.0)}, {"step": 2})
    checkpoints.close()
    assert sorted(os.listdir(folder)) == ["1", "2"]
    checkpoints = Checkpoints(workdir, create=False)
    state, data = checkpoints.restore({"w": jnp.zeros((4,))})
    assert data == {"step": 2} and np.all(np.asarray(state["w"]) == 3.0)
    checkpoints.close()


def test_keep_must_be_positive(tmp_path):
    """keep=0 would let orbax delete every checkpoint, the one being resumed too."""
    from m2f_jax.training.checkpoint import Checkpoints

    with pytest.raises(ValueError, match=r"keep must be >= 1 \(0 would delete every checkpoint\), got 0"):
        Checkpoints(str(tmp_path / "run"), keep=0)
    assert not os.path.exists(tmp_path / "run")
