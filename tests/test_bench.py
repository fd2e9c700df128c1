"""Smoke tests of the benchmark helpers (bench/): what runs in seconds. The scripts' full paths at tiny
settings (`bash bench/gpu.sh --quick --no-install`, `python bench/inference.py --quick`, ...) take
minutes of compiling on a CPU and are run by hand (docs/benchmarks.md)."""

from __future__ import annotations

import importlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


@pytest.fixture(scope="module")
def bench_modules():
    sys.path.insert(0, BENCH)
    try:
        yield {name: importlib.import_module(name) for name in ("common", "hlo_profile", "micro")}
    finally:
        sys.path.remove(BENCH)


def test_interleaved_timing_and_tables(bench_modules):
    common = bench_modules["common"]
    calls = []
    times = common.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, runs=2, warmup=1)
    assert calls == ["a", "b"] * 3 and {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2}
    text = common.table([{"x": 1.23456, "y": None}], [("x", "X"), ("y", "Y")])
    assert text.splitlines() == ["| X | Y |", "|---|---|", "| 1.23 | - |"]


def test_flops_memory_and_where_the_time_goes(bench_modules, tmp_path):
    """XLA's FLOP count and memory analysis of a compiled function, and the profile's operation times
    attributed to kinds and source lines (forward and backward)."""
    common, hlo_profile = bench_modules["common"], bench_modules["hlo_profile"]

    def loss(w, x):
        return jnp.sum(jnp.tanh(x @ w) ** 2)

    w, x = jnp.ones((64, 64)), jnp.ones((32, 64))
    compiled = jax.jit(jax.grad(loss)).lower(w, x).compile()
    assert common.compiled_flops(compiled) >= 2 * 2 * 32 * 64 * 64  # two matmuls at least
    memory = common.memory_summary(compiled)
    assert memory["argument_mib"] > 0 and memory["peak_mib"] >= memory["output_mib"]
    instructions = hlo_profile.parse_hlo(compiled.as_text())
    assert any(i["opcode"] == "dot" or "dot" in i["fused"] for i in instructions.values())
    assert any(i["source"].startswith("test_bench.py") for i in instructions.values())
    totals, wall = hlo_profile.profile(compiled, (w, x), 2, str(tmp_path))
    assert wall > 0 and totals and set(totals) <= set(instructions)
    summary = hlo_profile.summarise(totals, instructions, top=5)
    assert {k["kind"] for k in summary["kinds"]} & {"matmul / convolution"}
    assert {k["direction"] for k in summary["kinds"]} <= {"forward", "backward", "?"}


def test_micro_matcher_quick(bench_modules):
    """micro.py's matcher table at tiny sizes: both solvers give assignments of the same total cost."""
    record = bench_modules["micro"].main(["--quick", "--only", "matcher"])
    rows = record["matcher"]
    assert rows and all(row["same_cost"] for row in rows)
    assert all(np.isfinite([row["hungarian_ms"], row["optax_ms"], row["scipy_ms"]]).all() for row in rows)


def test_json_path_is_checked_before_any_work(bench_modules, tmp_path):
    """An existing --json file or a missing folder stops a benchmark at its start, not after the run."""
    common = bench_modules["common"]
    existing = tmp_path / "done.json"
    existing.write_text("{}")
    with pytest.raises(SystemExit, match="exists"):
        common.check_json_path(str(existing))
    with pytest.raises(SystemExit, match="does not exist"):
        common.check_json_path(str(tmp_path / "missing" / "x.json"))
    common.check_json_path(str(tmp_path / "new.json"))
    common.check_json_path(None)
    assert existing.read_text() == "{}"
