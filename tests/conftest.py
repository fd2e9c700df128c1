"""Fixtures shared by several test files (helpers.py holds the plain functions)."""

from __future__ import annotations

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
