"""Fixtures shared by several test files (helpers.py holds the plain functions), and the session's
persistent XLA compilation cache."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

# Most of the suite's time is XLA compiling tiny models, and the same programs (the model's eager
# ops, train steps, the scripts' steps) are compiled again in every xdist worker and in every train.py,
# eval.py and train_worker.py the tests start. One persistent compilation cache per session, empty at
# its start, shared by all of them: the process that starts the session (the xdist controller, or the
# only process with -n 0) makes it before anything imports jax; the workers and the subprocesses
# inherit the environment. Removed when the session ends.
CACHE_VARIABLES = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                   "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES")  # fmt: skip
_OWN_CACHE = None
if "PYTEST_XDIST_WORKER" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="m2f-jax-test-xla-cache-")
    # every compilation, however quick or small (the defaults skip those under 1 s)
    os.environ.update(dict(zip(CACHE_VARIABLES, (_OWN_CACHE, "0", "-1"), strict=True)))
    # XLA's backend (LLVM) at -O0: compiling is most of the suite's time and this cuts ~20% of it; the
    # values are the same up to float rounding, which every test's tolerance allows. Read when the
    # backend starts (first use, after this), by the workers and subprocesses too; a test's own
    # XLA_FLAGS for a subprocess replace it.
    if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    if "jax" in sys.modules:  # imported before this file (a plugin): its config read the environment already
        import jax

        jax.config.update("jax_compilation_cache_dir", _OWN_CACHE)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)

import pytest  # noqa: E402

from helpers import save_random_hf_model, tiny_config  # noqa: E402

SMALL_PROCESSOR = {"size": {"shortest_edge": 64, "longest_edge": 96}}


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def converted(tmp_path_factory) -> str:
    """A converted random-weight tiny model whose folder carries a small-image processor config."""
    import m2f_jax

    hf = tmp_path_factory.mktemp("hf")
    save_random_hf_model(tiny_config(window_size=7), hf, seed=4)
    m2f_jax.ImageProcessor(**SMALL_PROCESSOR).save_pretrained(hf)
    out = tmp_path_factory.mktemp("converted")
    m2f_jax.convert_hf(str(hf), str(out))
    return str(out)
