"""Fixtures shared by several test files (helpers.py holds the plain functions)."""

from __future__ import annotations

import tempfile

import pytest

from helpers import save_random_hf_model, tiny_config

SMALL_PROCESSOR = {"size": {"shortest_edge": 64, "longest_edge": 96}}


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


@pytest.hookimpl(trylast=True)  # after -k / -m have deselected what will not run
def pytest_collection_modifyitems(session, config, items):
    """Starts test_training.py's multi-device runs in the background when its tests will run (see there)."""
    if config.option.collectonly:
        return
    if any(item.path.name == "test_training.py" and "runs" in getattr(item, "fixturenames", ()) for item in items):
        import test_training

        test_training.STARTED.append(test_training.start_runs(tempfile.mkdtemp(prefix="m2f-training-")))
