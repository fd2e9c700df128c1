"""eval.py as a user runs it, on a random-weight model folder and 8 synthetic images in the COCO
panoptic layout: identical metrics.json on 1 device, 8 devices and 2 processes, with the predictions
written in the official formats. (Its own file: pytest-xdist runs it beside test_eval.py.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from flax import nnx

import m2f_jax

from helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = m2f_jax.ImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def converted_synthetic(tmp_path_factory):
    """A random-weight model folder with the synthetic data's 7 labels, and 8 synthetic val images in
    the COCO panoptic layout."""
    from m2f_jax.data.synthetic import write_coco_panoptic

    folder = tmp_path_factory.mktemp("model")
    data = tmp_path_factory.mktemp("data")
    write_coco_panoptic(data, "val", 8)
    model = m2f_jax.Mask2FormerForUniversalSegmentation(tiny_config(window_size=7, num_labels=7), rngs=nnx.Rngs(5))
    model.save_pretrained(folder / "model")
    SMALL.save_pretrained(folder / "model")
    return str(folder / "model"), str(data)


def test_eval_script_gives_the_same_numbers_on_1_and_8_devices_and_2_processes(converted_synthetic, tmp_path):
    model, data = converted_synthetic
    base = {k: v for k, v in os.environ.items() if not k.startswith(("M2F_", "SLURM_", "OMPI_", "XLA_FLAGS"))}

    def command(out, batch):
        return [
            sys.executable, os.path.join(ROOT, "eval.py"), "--config=configs/synthetic.py", f"--model={model}",
            f"--config.data.options.root={data}", f"--output={out}", f"--batch_size={batch}", "--overlays=1",
            "--write_predictions",
        ]  # fmt: skip

    port = _free_port()
    runs = {
        "one": (command(tmp_path / "one", 1), [{}]),
        "eight": (command(tmp_path / "eight", 8), [{"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}]),
        "two": (command(tmp_path / "two", 1), [
            {"M2F_COORDINATOR": f"127.0.0.1:{port}", "M2F_NUM_PROCESSES": "2", "M2F_PROCESS_ID": str(i)}
            for i in range(2)
        ]),
    }  # fmt: skip
    started = []
    for name, (cmd, envs) in runs.items():
        for i, extra in enumerate(envs):
            log = open(tmp_path / f"{name}.{i}.log", "w")  # noqa: SIM115 (closed below)
            started.append((subprocess.Popen(cmd, cwd=ROOT, env={**base, **extra}, stdout=log, stderr=log), log))
    for process, log in started:
        assert process.wait(timeout=600) == 0, open(log.name).read()[-3000:]
        log.close()
    results = {}
    for name in runs:
        with open(tmp_path / name / "metrics.json") as f:
            results[name] = json.load(f)
        results[name].pop("model")
    assert results["one"]["images"] == 8
    assert results["one"] == results["eight"] == results["two"]
    written = sorted(os.listdir(tmp_path / "one" / "predictions"))
    assert "panoptic.json" in written and "instances.json" in written, written
