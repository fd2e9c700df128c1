"""From a train.py run to a model: a checkpoint's parameters, read without its optimizer state, as a
model (run_model, from_pretrained) and as a model folder (export_model, its command, predict.py).

The run is built as train.py writes it (config.json, experiment.json, preprocessor_config.json,
orbax checkpoints of the TrainState) without training: random parameters that are not an
initialiser's (initialising costs half a minute on 2 cores), saved at steps 1 and 2.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

import m2f_jax
from m2f_jax.apps import predict
from m2f_jax.training import export
from m2f_jax.weights import model_params

from tiny_experiment import get_config

PROCESSOR = {"size": {"shortest_edge": 32, "longest_edge": 64}}  # small images: a fast forward on the CPU
FOLDER_FILES = ["config.json", "flax_model.safetensors", "preprocessor_config.json"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(the run folder, {step: its parameters by dotted name})."""
    import jax.numpy as jnp

    from m2f_jax.training import experiment
    from m2f_jax.training import workdir as run_record
    from m2f_jax.training.checkpoint import Checkpoints
    from m2f_jax.training.optimizer import build_optimizer, parameter_groups
    from m2f_jax.training.step import init_state
    from m2f_jax.weights import model_from_params, param_shapes

    c = get_config()
    config = experiment.model_config(c, experiment.dataset(c, "train"))
    opt_config, _ = experiment.optimizer_config(c)
    workdir = str(tmp_path_factory.mktemp("run"))
    run_record.record_start(workdir, c, config)
    m2f_jax.ImageProcessor(**PROCESSOR).save_pretrained(workdir)
    rng = np.random.default_rng(0)
    saved, checkpoints = {}, Checkpoints(workdir)
    for step in (1, 2):
        params = {n: rng.normal(0, 0.1, shape).astype(np.float32) for n, shape in param_shapes(config).items()}
        model = model_from_params(config, params, seed=c.seed)
        _, state = init_state(model, build_optimizer(opt_config, parameter_groups(model)), c.seed)
        checkpoints.save(step, state.replace(step=jnp.asarray(step, jnp.int32)), {"iterator": {}, "skipped": 0})
        saved[step] = params
    checkpoints.close()
    return workdir, saved


def assert_params(model, expected):
    got = model_params(model)
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and np.array_equal(got[name], value), name


def test_run_model_is_a_checkpoints_parameters(run):
    """The latest or a given checkpoint's parameters, exactly (nothing is computed on them)."""
    workdir, saved = run
    model = export.run_model(workdir)
    assert_params(model, saved[2])  # the latest
    assert model.name_or_path == workdir and model.config == m2f_jax.Mask2FormerConfig.load(workdir)
    model, step = export.load_run(workdir, 1)
    assert step == 1 and export.load_run(workdir)[1] == 2
    assert_params(model, saved[1])
    assert export.is_run(workdir) and not export.is_run(os.path.join(workdir, "checkpoints"))


def test_only_the_parameters_are_read(run, monkeypatch):
    """The restore asks orbax for the state's params alone (partial restore): the optimizer state is
    neither read nor allocated."""
    asked = []
    restore = ocp.CheckpointManager.restore

    def spy(self, step, *args, **kwargs):
        asked.append(kwargs["args"]["state"])
        return restore(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "restore", spy)
    export.run_model(run[0])
    (state,) = asked
    assert isinstance(state, ocp.args.PyTreeRestore) and state.partial_restore
    assert list(state.item) == ["params"] and list(state.restore_args) == ["params"]


def test_a_checkpoint_being_written_is_never_read(run, tmp_path):
    """A step orbax is still writing (its folder keeps the temporary suffix until committed) is not
    listed: the latest committed one is read, and the uncommitted step is not there."""
    workdir = str(tmp_path / "run")
    shutil.copytree(run[0], workdir)
    in_flight = os.path.join(workdir, "checkpoints", "3.orbax-checkpoint-tmp")
    shutil.copytree(os.path.join(workdir, "checkpoints", "1"), in_flight)
    assert_params(export.run_model(workdir), run[1][2])
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at step 3; its checkpoints: steps \[1, 2\]"):
        export.run_model(workdir, step=3)
    assert os.path.isdir(in_flight)  # left to the run that writes it


def test_what_is_not_a_run_or_has_no_such_checkpoint(run, tmp_path):
    workdir = run[0]
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at step 7; its checkpoints: steps \[1, 2\]"):
        export.run_model(workdir, step=7)
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(os.path.join(workdir, "config.json"), half)
    with pytest.raises(
        FileNotFoundError, match=r"half is not a train.py run folder: it has no checkpoints/, experiment.json"
    ):
        export.run_model(half)
    with pytest.raises(FileNotFoundError, match="nowhere is not a folder"):
        export.run_model(tmp_path / "nowhere")
    fresh = tmp_path / "fresh"  # started, but stopped before its first checkpoint
    (fresh / "checkpoints").mkdir(parents=True)
    for name in ("config.json", "experiment.json"):
        shutil.copy(os.path.join(workdir, name), fresh)
    with pytest.raises(FileNotFoundError, match=r"fresh has no checkpoint yet .*; train first"):
        export.run_model(fresh)
    assert not export.is_run(half) and not export.is_run(tmp_path / "nowhere")


def test_export_model_writes_a_model_folder(run, tmp_path):
    workdir, saved = run
    folder = tmp_path / "model"
    assert export.export_model(workdir, folder) == 2
    assert sorted(os.listdir(folder)) == FOLDER_FILES
    model = m2f_jax.from_pretrained(folder)
    assert_params(model, saved[2])
    with open(folder / "preprocessor_config.json") as f, open(os.path.join(workdir, "preprocessor_config.json")) as g:
        assert json.load(f) == json.load(g)
    assert m2f_jax.inference.default_processor(model).size == PROCESSOR["size"]

    with pytest.raises(FileExistsError, match="exists and is not empty"):
        export.export_model(workdir, folder, step=1)
    assert export.export_model(workdir, folder, step=1, overwrite=True) == 1
    assert_params(m2f_jax.from_pretrained(folder), saved[1])
    for holder in (workdir, os.path.dirname(workdir)):  # overwrite would delete the run
        with pytest.raises(ValueError, match="is or holds the run folder"):
            export.export_model(workdir, holder, overwrite=True)


def test_is_exported_follows_the_latest_checkpoint(run, tmp_path):
    """train.py, starting on a complete run, exports again only when WORKDIR/model is older than the
    latest checkpoint."""
    workdir = str(tmp_path / "run")
    shutil.copytree(run[0], workdir)
    folder = os.path.join(workdir, export.MODEL_FOLDER)
    assert not export.is_exported(workdir, folder)
    export.export_model(workdir, folder)
    assert export.is_exported(workdir, folder)
    later = os.path.getmtime(os.path.join(folder, "flax_model.safetensors")) + 10
    os.utime(os.path.join(workdir, "checkpoints", "2"), (later, later))  # a checkpoint saved after the export
    assert not export.is_exported(workdir, folder)


def test_from_pretrained_reads_a_run(run):
    workdir, saved = run
    model = m2f_jax.from_pretrained(workdir)
    assert_params(model, saved[2])
    assert model.name_or_path == workdir
    assert m2f_jax.inference.default_processor(model).size == PROCESSOR["size"]  # the run's processor


def test_a_run_exports_to_hugging_face(run, tmp_path):
    """m2f_jax.export_hf reads a run folder: its latest checkpoint's parameters and its image processor."""
    transformers = pytest.importorskip("transformers")
    workdir, saved = run
    m2f_jax.export_hf(workdir, tmp_path / "hf")
    model, info = transformers.Mask2FormerForUniversalSegmentation.from_pretrained(
        str(tmp_path / "hf"), output_loading_info=True
    )
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
    assert np.array_equal(model.class_predictor.weight.detach().numpy(), saved[2]["class_predictor.kernel"].T)
    processor = transformers.Mask2FormerImageProcessor.from_pretrained(str(tmp_path / "hf"))
    assert (processor.size.shortest_edge, processor.size.longest_edge) == (32, 64)


def test_the_export_command(run, tmp_path, capsys):
    workdir, saved = run
    folder = tmp_path / "out"
    assert export.main([workdir, str(folder), "--step", "1"]) == 0
    assert f"wrote the model of step 1 of {workdir} to {folder}" in capsys.readouterr().out
    assert_params(m2f_jax.from_pretrained(folder), saved[1])
    for args, message in [
        ([workdir, str(folder)], "exists and is not empty; pass overwrite=True (--overwrite)"),
        ([workdir, str(tmp_path / "other"), "--step", "5"], "no checkpoint at step 5"),
        ([str(tmp_path), str(tmp_path / "other")], "is not a train.py run folder"),
    ]:
        assert export.main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("export: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "other").exists()


def test_predict_with_a_run(run, tmp_path, capsys):
    """predict.py --model WORKDIR: the run's latest model, with the run's image processor."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for name, (h, w) in {"a.png": (40, 56), "b.png": (48, 32)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(photos / name)
    args = ["--model", run[0], "--task", "panoptic", "--input", str(photos), "--output", str(out), "--threshold", "0"]
    assert predict.main(args) == 0, capsys.readouterr().err
    assert "segmented 2 of 2 images" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == sorted(
        f"{stem}{suffix}" for stem in "ab" for suffix in ("_overlay.png", "_segmentation.png", ".json")
    )
    with open(out / "a.json") as f:
        assert json.load(f)["size"] == [40, 56]
