"""Shared pieces of the benchmarks: the same random-weight model for HF and for us, interleaved
timing, the machine and versions, and JSON output.

The benchmarks import this as `common` (python puts bench/ on the path when a script there runs).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

# The checkout this file is in comes first: `python bench/x.py` puts bench/ on the path, and an
# installed (e.g. editable) m2f_jax elsewhere must not be the one measured.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path[:2]:
    sys.path.insert(0, REPO)

# PyTorch's OpenMP threads spin while they wait for work. On a machine shared with other jobs (more
# runnable threads than cores) a spinning thread holds a core that the thread it waits for needs: HF's
# tiny-model forward took 0.6-2.5 s instead of 0.02 s at a load average of 6 on 2 cores. Passive
# waiting (sleep) costs little when the machine is idle. Read when libgomp starts, so set before torch
# is imported; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


_THREADS: int | None = None


def set_threads(threads: int | None) -> None:
    """Both frameworks on `threads` CPU threads (None: their defaults, all cores). Call before jax is
    imported. On a shared machine one thread each gives steadier ratios: a multi-threaded operation
    waits for its slowest thread, which other jobs keep off a core."""
    global _THREADS
    _THREADS = threads
    if threads is None:
        return
    if "jax" in sys.modules:
        raise RuntimeError("set_threads must be called before jax is imported")
    flags = os.environ.get("XLA_FLAGS", "")
    single = " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" if threads == 1 else ""
    os.environ["XLA_FLAGS"] = (flags + single).strip()
    os.environ["OMP_NUM_THREADS"] = str(threads)


def add_thread_flag(parser) -> None:
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of each framework (default: all)")


def cpu_name() -> str:
    """lscpu's model name (e.g. "AMD EPYC"), else what platform knows."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def load_average() -> tuple[float, float, float]:
    """`uptime`'s 1, 5 and 15 minute load averages (other jobs share the machine)."""
    return tuple(round(v, 2) for v in os.getloadavg())


def environment() -> dict[str, Any]:
    """Machine, accelerator and versions, for the tables."""
    import flax
    import jax

    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "jax_device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
        "jax": jax.__version__,
        "flax": flax.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "m2f_jax": os.path.dirname(os.path.dirname(__import__("m2f_jax").__file__)),
    }
    with contextlib.suppress(ImportError):
        import torch
        import transformers

        if _THREADS is not None:
            torch.set_num_threads(_THREADS)
        info.update(
            torch=torch.__version__, transformers=transformers.__version__, torch_threads=torch.get_num_threads()
        )
        if torch.cuda.is_available():
            info["torch_device"] = torch.cuda.get_device_name(0)
    info["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    return info


def print_environment(info: dict[str, Any]) -> None:
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; jax on {info['jax_device']}"
        + (f"; torch on {info['torch_device']}" if "torch_device" in info else "")
    )
    versions = ", ".join(f"{k} {info[k]}" for k in ("jax", "flax", "torch", "transformers") if k in info)
    print(f"versions: {versions}; {info['date']}")


def interleaved(fns: dict[str, Callable[[], Any]], runs: int, warmup: int) -> dict[str, list[float]]:
    """Times each function `runs` times after `warmup` calls, alternating between them (A B A B ...),
    so that a change of load on a shared machine hits all of them alike. Seconds per call."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def timed_once(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def median(times: list[float]) -> float:
    return statistics.median(times)


def random_hf_model(config, seed: int = 0):
    """HF's Mask2FormerForUniversalSegmentation of `config`'s shape with its own random initialisation."""
    import torch
    import transformers

    torch.manual_seed(seed)
    hf_config = transformers.Mask2FormerConfig.from_dict(config.to_hf_dict())
    return transformers.Mask2FormerForUniversalSegmentation(hf_config).eval()


def same_weights(config, seed: int = 0):
    """(HF model, our model, the folder both were saved in) with the same random weights: HF's model
    saved with save_pretrained and read back with m2f_jax.from_pretrained. The folder is a temporary
    directory, removed at exit."""
    import atexit
    import shutil

    import m2f_jax

    hf_model = random_hf_model(config, seed)
    folder = tempfile.mkdtemp(prefix="m2f-bench-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    hf_model.save_pretrained(folder)
    return hf_model, m2f_jax.from_pretrained(folder), folder


def in_dtype(model, dtype):
    """A copy of our model computing in `dtype` (`set_dtype`: parameters stay float32)."""
    from flax import nnx

    copy = nnx.clone(model)
    copy.set_dtype(dtype)
    return copy


def compiled_flops(compiled) -> float | None:
    """XLA's count of floating-point operations of a compiled function (None when not reported)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):  # older jax: one dict per computation
        analysis = analysis[0] if analysis else None
    if not analysis:
        return None
    flops = analysis.get("flops")
    return float(flops) if flops is not None and flops > 0 else None


def memory_summary(compiled) -> dict[str, float] | None:
    """XLA's memory analysis of a compiled function, in MiB (temporaries, arguments, outputs, and their
    sum less the donated/aliased bytes: the peak it needs on the device)."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    mib = 2**20
    temp = analysis.temp_size_in_bytes
    args = analysis.argument_size_in_bytes
    out = analysis.output_size_in_bytes
    alias = analysis.alias_size_in_bytes
    return {
        "temp_mib": temp / mib,
        "argument_mib": args / mib,
        "output_mib": out / mib,
        "alias_mib": alias / mib,
        "peak_mib": (temp + args + out - alias) / mib,
    }


def check_json_path(path: str | None) -> None:
    """Refuses an existing --json file or a missing folder before any work (not after an hour of it)."""
    if not path:
        return
    if os.path.exists(path):
        raise SystemExit(f"{path} exists; choose another --json path")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise SystemExit(f"--json {path}: folder {folder} does not exist")


def write_json(path: str | None, record: dict[str, Any]) -> None:
    """Appends nothing, overwrites nothing silently: writes `record` to a new file at `path` (refuses an
    existing one)."""
    if not path:
        return
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists; choose another --json path")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, default=str)
    os.replace(tmp, path)
    print(f"wrote {path}")


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A markdown table of `rows`: columns are (key, header); floats as printed by `fmt`."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(k)) for k, _ in columns) + " |")
    return "\n".join(lines)


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.2g}" if abs(value) < 0.01 else f"{value:.3f}"
    return str(value)


TINY = "tiny"  # a few-hundred-thousand-parameter model with every feature of the real one (smoke runs)


def model_config(name: str):
    """A preset's config (m2f_jax.preset_names()), or "tiny"."""
    import m2f_jax

    if name != TINY:
        return m2f_jax.preset(name)
    backbone = m2f_jax.SwinConfig(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4)
    return m2f_jax.Mask2FormerConfig(
        backbone_config=backbone, id2label={i: f"class_{i}" for i in range(5)}, num_queries=12, hidden_dim=64,
        feature_size=64, mask_feature_size=64, encoder_feedforward_dim=128, dim_feedforward=128,
        encoder_layers=2, decoder_layers=5,
    )  # fmt: skip
