"""model.backbone_init: a new run's backbone holds the checkpoint's weights and the rest the usual random
init; a resumed run does not read it; the config field is checked before any work."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from m2f_jax.conversion import imagenet
from m2f_jax.training import backbone_init, experiment, workdir
from m2f_jax.training.backbone_init import BACKBONE, replace_backbone
from m2f_jax.training.mesh import make_mesh
from m2f_jax.training.validation import problems

from tiny_experiment import get_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random HF SwinForImageClassification of the tiny experiment's backbone, saved with save_pretrained."""
    c = get_config()
    torch.manual_seed(0)
    config = transformers.SwinConfig(embed_dim=c.model.embed_dim, depths=list(c.model.depths),
                                     num_heads=list(c.model.num_heads), window_size=c.model.window_size)  # fmt: skip
    folder = tmp_path_factory.mktemp("swin")
    transformers.SwinForImageClassification(config).save_pretrained(str(folder))
    return str(folder)


def flat_params(state) -> dict[str, jax.Array]:
    return {".".join(str(p) for p in path): var[...] for path, var in nnx.to_flat_state(state.params)}


@pytest.fixture(scope="module")
def setup():
    c = get_config()
    config = experiment.model_config(c, experiment.dataset(c, "train"))
    return c, config, experiment.optimizer_config(c)[0], make_mesh(1, devices=jax.devices()[:1])


def test_new_run_loads_the_backbone(setup, checkpoint, monkeypatch):
    c, config, opt_config, mesh = setup
    randoms = []

    def spy(state, params):  # the random state, before its backbone is replaced
        randoms.append(state)
        return replace_backbone(state, params)

    monkeypatch.setattr(backbone_init, "replace_backbone", spy)
    c.model.backbone_init = checkpoint
    lines = []
    _, state = experiment.initial_state(c, config, opt_config, mesh, report=lines)
    assert lines[0].startswith(f"backbone weights from {checkpoint} (Hugging Face Swin): ")

    loaded, report = imagenet.load_backbone_weights(checkpoint, config.backbone_config)
    before, after = flat_params(randoms[0]), flat_params(state)
    assert before.keys() == after.keys()
    prefix = ".".join(BACKBONE) + "."
    replaced = 0
    for path, value in after.items():
        name = path.removeprefix(prefix) if path.startswith(prefix) else None
        assert value.sharding == before[path].sharding
        if name in loaded:
            np.testing.assert_array_equal(np.asarray(value), loaded[name])
            replaced += 1
        else:  # the heads, and the backbone's per-stage output norms (report.kept)
            np.testing.assert_array_equal(np.asarray(value), np.asarray(before[path]))
            assert name is None or name in report.kept
    assert replaced == len(loaded) == len(report.loaded)


class Built(Exception):
    pass


def test_read_before_the_init_and_not_on_resume(setup, monkeypatch):
    """A bad checkpoint fails before the random state is built; a resumed run reads neither backbone_init
    nor init_from (its checkpoint holds every weight)."""
    c, config, opt_config, mesh = setup

    def builder(*args):
        raise Built

    monkeypatch.setattr(experiment, "_state_builder", builder)
    c.model.backbone_init = "/nonexistent/swin.pth"
    with pytest.raises(FileNotFoundError, match="/nonexistent/swin.pth does not exist"):
        experiment.initial_state(c, config, opt_config, mesh)
    with pytest.raises(Built):
        experiment.initial_state(c, config, opt_config, mesh, load_weights=False)
    c.model.backbone_init, c.model.init_from = "", "/nonexistent/checkpoint"  # a resume reads neither
    with pytest.raises(Built):
        experiment.initial_state(c, config, opt_config, mesh, load_weights=False)


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"model.backbone_init": "/nonexistent/swin.pth"}, "model.backbone_init must be an existing checkpoint file"),
        ({"model.backbone_init": "swin_tiny.pth"}, "(swin_tiny.pth does not exist"),  # not a hub id
        ({"model.backbone_init": 3}, "model.backbone_init must be a checkpoint file, folder or hub id, or ''"),
        ({"model.backbone_init": "microsoft/swin-tiny-patch4-window7-224", "model.init_from": "CHECKPOINT"},
         "model.backbone_init and model.init_from are both set"),
    ],
)  # fmt: skip
def test_config_checks(fields, expected, checkpoint):
    c = ml_collections.ConfigDict(get_config().to_dict(), type_safe=False)
    for name, value in fields.items():
        c.model[name.split(".")[1]] = checkpoint if value == "CHECKPOINT" else value
    found = problems(c)
    assert len(found) == 1 and expected in found[0], found


def test_hub_id_is_accepted_without_download():
    c = get_config()
    c.model.backbone_init = "timm/swin_tiny_patch4_window7_224.ms_in1k"
    assert problems(c) == []


def test_may_change_on_resume():
    """Only a new run reads it, so a moved or removed checkpoint does not block a resume."""
    assert workdir.may_change("model.backbone_init")
