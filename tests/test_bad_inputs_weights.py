"""Bad inputs to the converter and the loaders (issue 9): each is refused with an error that names the
file, tensor or path, before any expensive work; outputs are written whole or not at all; hub ids resolve
offline from the local cache. Weight-level checks only (no jit of the model), on one tiny checkpoint."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

import m2f_jax
from m2f_jax import hub, weights
from m2f_jax.conversion import cli, hf
from m2f_jax.modeling import Mask2FormerForUniversalSegmentation
from m2f_jax.processing.preprocess import ImageProcessor
from m2f_jax.weights import FLAX_WEIGHTS, model_params

from helpers import save_random_hf_model, tiny_config

pytest.importorskip("torch")
pytest.importorskip("transformers")
huggingface_hub = pytest.importorskip("huggingface_hub")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf")
    save_random_hf_model(tiny_config(), folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"size_divisor": 64}))
    return folder


@pytest.fixture(scope="module")
def reference(hf_folder):
    """The model and its parameters, loaded once from the raw folder."""
    model = m2f_jax.from_pretrained(str(hf_folder))
    return model, model_params(model)


@pytest.fixture(scope="module")
def converted(hf_folder, reference, tmp_path_factory):
    folder = tmp_path_factory.mktemp("converted") / "flax"
    weights.save_model(reference[0], folder)
    return folder


def block_work(monkeypatch):
    """Makes conversion, weight reading and any hub call fail the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("expensive work started before the bad input was refused")

    for target, name in ((weights, "_convert"), (hf, "read_state_dict"), (hub, "snapshot")):
        monkeypatch.setattr(target, name, refuse)
    for name in ("snapshot_download", "hf_hub_download"):
        monkeypatch.setattr(huggingface_hub, name, refuse)


@pytest.fixture
def no_work(monkeypatch):
    block_work(monkeypatch)


def folder_with(tmp_path, name, source, **files):
    """A folder holding `source`'s files (linked), some replaced: {file name: bytes, dict of arrays or None}."""
    folder = tmp_path / name
    folder.mkdir()
    for file in os.listdir(source):
        if file not in files:
            os.symlink(source / file, folder / file)
    for file, content in files.items():
        if isinstance(content, dict):
            save_file(content, str(folder / file))
        elif content is not None:
            (folder / file).write_bytes(content)
    return folder


def assert_same_params(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def listing(folder):
    return sorted(os.listdir(folder))


# ------------------------------------------------------------------------------ non-finite weights
def test_non_finite_weights_are_refused_naming_the_tensors(hf_folder, converted, tmp_path, capsys):
    state = load_file(str(hf_folder / "model.safetensors"))
    state["class_predictor.weight"][0, 0] = np.nan
    state["model.transformer_module.decoder.layernorm.weight"][:2] = np.inf
    bad = folder_with(tmp_path, "bad", hf_folder, **{"model.safetensors": state})
    for load in (lambda: m2f_jax.convert_hf(str(bad), str(tmp_path / "out")), lambda: m2f_jax.from_pretrained(bad)):
        with pytest.raises(ValueError, match="2 tensors hold non-finite values") as info:
            load()
        assert "class_predictor.weight: 1 NaN, 0 inf" in str(info.value)
        assert "model.transformer_module.decoder.layernorm.weight: 0 NaN, 2 inf" in str(info.value)
    assert cli.main([str(bad), str(tmp_path / "out")]) == 1
    assert "class_predictor.weight: 1 NaN" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    params = load_file(str(converted / FLAX_WEIGHTS))
    params["class_predictor.kernel"][3, 1] = -np.inf
    bad_converted = folder_with(tmp_path, "bad_converted", converted, **{FLAX_WEIGHTS: params})
    with pytest.raises(
        ValueError, match=r"flax_model.safetensors: 1 tensors .*\n  class_predictor.kernel: 0 NaN, 1 inf"
    ):
        m2f_jax.from_pretrained(str(bad_converted))


# ------------------------------------------------------------------------------ the destination
def test_existing_destination_needs_overwrite_and_is_then_replaced_whole(hf_folder, converted, tmp_path, monkeypatch):
    source = folder_with(tmp_path, "src", hf_folder, **{"preprocessor_config.json": None})
    destination = tmp_path / "dst"
    shutil.copytree(converted, destination)
    (destination / "preprocessor_config.json").write_text("{}")  # stale: the new source has none
    before = {f: (destination / f).read_bytes() for f in listing(destination)}
    with monkeypatch.context() as patch:
        block_work(patch)
        with pytest.raises(FileExistsError, match=f"{re.escape(str(destination))} exists and is not empty"):
            m2f_jax.convert_hf(str(source), str(destination))
        assert cli.main([str(source), str(destination)]) == 1
    assert {f: (destination / f).read_bytes() for f in listing(destination)} == before

    assert cli.main([str(source), str(destination), "--overwrite"]) == 0
    assert listing(destination) == ["config.json", FLAX_WEIGHTS]
    assert listing(tmp_path) == ["dst", "src"]  # no temporary or old folder left behind


@pytest.mark.parametrize("where", ["same", "inside", "holding"])
def test_destination_never_touches_the_source(hf_folder, tmp_path, where, no_work):
    source = tmp_path / "parent" / "src"
    source.mkdir(parents=True)
    for file in ("config.json", "model.safetensors"):
        shutil.copy(hf_folder / file, source / file)
    before = {f: (source / f).read_bytes() for f in listing(source)}
    destination = {"same": source, "inside": source / "flax", "holding": source.parent}[where]
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=re.escape(str(destination))):
            m2f_jax.convert_hf(str(source), str(destination), overwrite=overwrite)
    assert {f: (source / f).read_bytes() for f in listing(source)} == before


def test_bad_destination_is_refused_before_any_work(hf_folder, tmp_path, monkeypatch, no_work):
    (tmp_path / "file").write_text("not a folder")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="exists and is not a folder"):
            m2f_jax.convert_hf(str(hf_folder), str(tmp_path / "file"), overwrite=overwrite)
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        m2f_jax.convert_hf(str(hf_folder), str(tmp_path / "file" / "out"))
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        if os.access(read_only, os.W_OK):  # root ignores permissions: then the check sees what os.access says
            access = os.access
            monkeypatch.setattr(os, "access", lambda p, mode: access(p, mode) and os.fspath(p) != str(read_only))
        with pytest.raises(PermissionError, match=f"no permission to write in {re.escape(str(read_only))}"):
            m2f_jax.convert_hf(str(hf_folder), str(read_only / "new" / "out"))
        assert cli.main([str(hf_folder), str(read_only / "out")]) == 1
    finally:
        read_only.chmod(0o755)


# ------------------------------------------------------------------------------ paths and hub ids
def test_hub_id_rule():
    for name in ("facebook/mask2former-swin-tiny-coco-panoptic", "gpt2", "org_1/name.v2", "a/b"):
        assert hub.is_hub_id(name), name
    for name in ("./x", "../x", "/x", "~/x", "a/b/c", "a/", "org//name", "-org/name", "org/name.", "a--b/c", "a b"):
        assert not hub.is_hub_id(name), name


@pytest.mark.parametrize(
    "name", ["./nope", "../nope", "ABS", "~/m2f-jax-nope", "a/b/c", "converted/swin-tiny", "bad name", "org/name."]
)
def test_missing_local_path_is_refused_at_once_without_the_hub(name, tmp_path, monkeypatch, no_work):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "converted").mkdir()  # so converted/swin-tiny is a mistyped local path, not a hub id
    name = str(tmp_path / "nope") if name == "ABS" else name
    for load in (m2f_jax.from_pretrained, ImageProcessor.from_pretrained, lambda n: hub.find_file(n, "config.json")):
        with pytest.raises(FileNotFoundError, match=re.escape(f"{name} does not exist")):
            load(name)
    with pytest.raises(FileNotFoundError, match=re.escape(f"{name} does not exist")):
        m2f_jax.convert_hf(name, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ unreadable files
def test_corrupt_or_wrong_files_are_named(hf_folder, converted, tmp_path):
    weights_bytes = (hf_folder / "model.safetensors").read_bytes()
    cases = {
        "garbage_weights": ("model.safetensors", b"\x00garbage" * 8, "is not a readable safetensors file"),
        "truncated_weights": ("model.safetensors", weights_bytes[: len(weights_bytes) // 2], "not a readable"),
        "garbage_config": ("config.json", b"{not json", "is not valid JSON"),
        "list_config": ("config.json", b"[1, 2]", r"must hold a JSON object \{...\}, got a JSON array"),
        "wrong_field": ("config.json", json.dumps({"backbone_config": {"depths": 2}}).encode(), ": 'int' object"),
    }
    for name, (file, content, message) in cases.items():
        folder = folder_with(tmp_path, name, hf_folder, **{file: content})
        for load in (m2f_jax.from_pretrained, lambda f: m2f_jax.convert_hf(f, str(tmp_path / "out"))):
            with pytest.raises(ValueError, match=re.escape(str(folder / file)) + ".*" + message):
                load(str(folder))
    bin_folder = folder_with(
        tmp_path, "bin", hf_folder, **{"model.safetensors": None, "pytorch_model.bin": b"PK\x03\x04 not a zip"}
    )
    with pytest.raises(ValueError, match=re.escape(str(bin_folder / "pytorch_model.bin")) + " is not a readable"):
        m2f_jax.from_pretrained(str(bin_folder))
    flax_folder = folder_with(tmp_path, "flax", converted, **{FLAX_WEIGHTS: b"\x00" * 16})
    with pytest.raises(ValueError, match=re.escape(str(flax_folder / FLAX_WEIGHTS)) + " is not a readable"):
        m2f_jax.from_pretrained(str(flax_folder))
    for name, content, message in (("garbage", b"\xff\xfe", "is not valid JSON"), ("list", b"[]", "JSON array")):
        folder = folder_with(tmp_path, f"processor_{name}", hf_folder, **{"preprocessor_config.json": content})
        with pytest.raises(ValueError, match=re.escape(str(folder / "preprocessor_config.json")) + ".*" + message):
            ImageProcessor.from_pretrained(str(folder))
    with pytest.raises(NotADirectoryError, match="is a file; expected a folder"):
        m2f_jax.from_pretrained(str(hf_folder / "config.json"))
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ the hub cache, offline
@pytest.fixture(scope="module")
def hf_cache(hf_folder, tmp_path_factory):
    """A Hugging Face cache laid out as huggingface_hub writes it, holding org/name at COMMIT on main."""
    cache = tmp_path_factory.mktemp("hf_home") / "hub"
    repo = cache / "models--org--name"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "blobs").mkdir()
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    for file in ("config.json", "model.safetensors", "preprocessor_config.json"):
        blob = repo / "blobs" / f"blob-{file}"
        shutil.copy(hf_folder / file, blob)
        os.symlink(os.path.relpath(blob, repo / "snapshots" / COMMIT), repo / "snapshots" / COMMIT / file)
    return cache


def use_cache(monkeypatch, cache, offline: bool):
    """Points huggingface_hub at `cache`: the environment for new processes, and the constants it read at
    import for this one."""
    monkeypatch.setenv("HF_HOME", str(cache.parent))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_cached_hub_model_and_processor_load_offline(hf_cache, reference, monkeypatch):
    use_cache(monkeypatch, hf_cache, offline=True)
    model = Mask2FormerForUniversalSegmentation.from_pretrained("org/name")
    assert model.name_or_path == "org/name"
    assert_same_params(model_params(model), reference[1])
    assert ImageProcessor.from_pretrained("org/name").size_divisor == 64
    found = hub.find_file("org/name", "preprocessor_config.json")
    assert found.endswith(os.path.join("models--org--name", "snapshots", COMMIT, "preprocessor_config.json"))
    with pytest.warns(UserWarning, match="offline, so treated as absent"):
        assert hub.find_file("org/name", "missing.json") is None

    start = time.perf_counter()
    for load in (m2f_jax.from_pretrained, ImageProcessor.from_pretrained):
        with pytest.raises(FileNotFoundError, match="org/other is not a local path, offline mode is on"):
            load("org/other")
    assert time.perf_counter() - start < 5


def test_unreachable_hub_falls_back_to_the_cache(hf_cache, reference, monkeypatch):
    use_cache(monkeypatch, hf_cache, offline=False)
    with socket.socket() as s:  # a local port nothing listens on: connections are refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    assert_same_params(model_params(m2f_jax.from_pretrained("org/name")), reference[1])
    assert ImageProcessor.from_pretrained("org/name").size_divisor == 64
    with pytest.raises(FileNotFoundError, match="org/other is not a local path, the hub cannot be reached"):
        m2f_jax.from_pretrained("org/other")


# ------------------------------------------------------------------------------ name_or_path, save_pretrained
def test_name_or_path_is_static_through_split_merge_and_jit(reference, hf_folder):
    assert weights.abstract_model(tiny_config()).name_or_path is None  # built from a config
    model = reference[0]
    assert model.name_or_path == str(hf_folder) and type(model.name_or_path) is str
    graphdef, state = nnx.split(model)
    hash(graphdef)
    assert nnx.merge(graphdef, state).name_or_path == str(hf_folder)
    leaves, treedef = jax.tree_util.tree_flatten(model)
    assert jax.tree_util.tree_unflatten(treedef, leaves).name_or_path == str(hf_folder)
    total = jax.jit(lambda m: m.class_predictor.kernel[...].sum())(model)  # the full forward: test_converter
    np.testing.assert_allclose(total, reference[1]["class_predictor.kernel"].sum(), rtol=1e-5)


def test_save_pretrained_round_trip_atomic_and_no_silent_overwrite(reference, tmp_path, monkeypatch):
    model = reference[0]
    model.save_pretrained(tmp_path / "saved")
    assert listing(tmp_path / "saved") == ["config.json", FLAX_WEIGHTS]
    again = Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path / "saved")
    assert again.config == model.config and again.name_or_path == str(tmp_path / "saved")
    assert_same_params(model_params(again), reference[1])

    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        model.save_pretrained(tmp_path / "saved")
    (tmp_path / "saved" / "stale.txt").write_text("old")
    m2f_jax.save_model(model, tmp_path / "saved", overwrite=True)
    assert listing(tmp_path / "saved") == ["config.json", FLAX_WEIGHTS]
    (tmp_path / "empty").mkdir()
    model.save_pretrained(tmp_path / "empty")  # an empty folder holds nothing to lose
    assert listing(tmp_path / "empty") == ["config.json", FLAX_WEIGHTS]

    import safetensors.numpy

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", crash)
    saved = {f: (tmp_path / "saved" / f).read_bytes() for f in listing(tmp_path / "saved")}
    for folder, overwrite in (("new", False), ("saved", True)):
        with pytest.raises(RuntimeError, match="disk full"):
            model.save_pretrained(tmp_path / folder, overwrite=overwrite)
    assert listing(tmp_path) == ["empty", "saved"]  # no half-written folder, no temporary one
    assert {f: (tmp_path / "saved" / f).read_bytes() for f in listing(tmp_path / "saved")} == saved
