"""Checks that run before any work, as plain Python (no model built, nothing compiled): the whole
experiment config, what may change when a workdir is resumed, the non-finite stop's message, and
how the processes find each other (jax.distributed only in a multi-process job)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from m2f_jax.training import experiment, mesh
from m2f_jax.training import workdir as run_record
from m2f_jax.training.step import all_finite, non_finite_message
from m2f_jax.training.validation import problems

from tiny_experiment import get_config

SYNTHETIC = os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic.py")


def changed(**fields):
    """The tiny config with dotted fields changed, e.g. changed(**{"optimizer.eps": 1e-3}); without
    ml_collections' type safety, so that values a config file could hold get through."""
    c = ml_collections.ConfigDict(get_config().to_dict(), type_safe=False)
    for name, value in fields.items():
        *groups, leaf = name.split(".")
        node = c
        for group in groups:
            node = node[group]
        node[leaf] = value
    return c


def test_shipped_configs_are_valid(tmp_path):
    """The demo's config, on its data written where it says (the recipes: tests/test_configs.py)."""
    import importlib.util

    from m2f_jax.data.synthetic import write_coco_panoptic

    spec = importlib.util.spec_from_file_location("synthetic_config", SYNTHETIC)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    assert c.data.options.root == "data/synthetic"  # where scripts/demo.sh writes it
    c.data.options.root = str(tmp_path / "coco")
    missing = f"data.options ('coco_panoptic' source): COCO root folder {c.data.options.root!r} does not exist"
    assert problems(c) == [missing]
    write_coco_panoptic(tmp_path / "coco", "train", 2, image_size=(64, 64))
    experiment.validate(c)
    experiment.validate(changed(**{"optimizer.eps": 1e-2, "optimizer.clip_norm": None}))  # optional fields


def test_every_problem_is_reported_at_once():
    """The issue's cases, each once failing late (ZeroDivisionError after compiling, or worse)."""
    c = changed(checkpoint_every=0, log_every=0, steps=-1, keep_checkpoints=0, **{
        "optimizer.accumulation_steps": 0, "data.augment.crop_size": (32,)})  # fmt: skip
    c.optimizer.learnig_rate = 1e-3  # a typo in a config file (the command line refuses it itself)
    with pytest.raises(ValueError) as error:
        experiment.validate(c)
    message = str(error.value)
    for expected in (
        "7 problem(s)",
        "checkpoint_every must be >= 1, got 0",
        "log_every must be >= 1, got 0",
        "steps must be >= 1, got -1",
        "keep_checkpoints must be >= 1, got 0",
        "optimizer.accumulation_steps must be >= 1, got 0",
        "data.augment.crop_size must be 2 integers >= 1, e.g. (2, 2), got (32,)",
        "optimizer.learnig_rate is not a known field (did you mean 'optimizer.learning_rate'?)",
    ):
        assert expected in message, message


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"steps": 1.5}, "steps must be an integer >= 1, got 1.5"),
        ({"batch_size": True}, "batch_size must be an integer >= 1, got True"),
        ({"optimizer.learning_rate": float("nan")}, "optimizer.learning_rate must be a number > 0, got nan"),
        ({"optimizer.learning_rate": 0.0}, "optimizer.learning_rate must be > 0, got 0.0"),
        ({"optimizer.clip_norm": -1.0}, "optimizer.clip_norm must be >= 0, got -1.0"),
        ({"optimizer.schedule": "cosine"}, "optimizer.schedule must be one of ['poly', 'multistep', 'constant']"),
        ({"model.drop_path_rate": 1.0}, "model.drop_path_rate must be in [0, 1), got 1.0"),
        ({"model.depths": (1, 1, 1)}, "model.depths must be 4 integers >= 1"),
        ({"task": "detection"}, "task must be one of ['panoptic', 'instance', 'semantic'], got 'detection'"),
        ({"model.init_from": "/nonexistent"}, "model.init_from must be a folder with config.json"),
        ({"model.preset": "swin-tiny-coco-panoptc"}, "(did you mean 'swin-tiny-coco-panoptic'?)"),
        ({"seed": -1}, "seed must be >= 0, got -1"),
        ({"steps": 7, "optimizer.accumulation_steps": 2}, "steps must be a multiple of optimizer.accumulation_steps=2"),
        ({"model.num_heads": (1, 2, 3, 8)}, "model.num_heads[2]=3 must divide stage 3's width 128"),
        ({"model.hidden_dim": 48}, "hidden_dim=48 must be a multiple of 32"),
        ({"data.max_instances": 13}, "every target needs its own query"),
    ],
)
def test_field_checks(fields, expected):
    found = problems(changed(**fields))
    assert len(found) == 1 and expected in found[0], found


def test_missing_field():
    c = get_config()
    del c.optimizer["warmup_factor"]
    assert problems(c) == ["optimizer.warmup_factor is missing"]


# ----------------------------------------------------------------------------------------------------
# Resuming a workdir with another config


@pytest.fixture
def started(tmp_path):
    """A workdir as a fresh run records it (config.json, experiment.json)."""
    c = get_config()
    config = experiment.model_config(c, experiment.dataset(c, "train"))
    run_record.record_start(str(tmp_path), c, config)
    return str(tmp_path), c, config


def test_resume_refuses_what_a_checkpoint_cannot_continue_with(started):
    workdir, _, _ = started
    c = changed(batch_size=16, steps=40, **{"model.hidden_dim": 32, "optimizer.accumulation_steps": 2})
    config = experiment.model_config(c, experiment.dataset(c, "train"))
    with pytest.raises(ValueError) as error:
        run_record.check_resume(workdir, c, config, step=3)
    message = str(error.value)
    assert "cannot resume the checkpoint at step 3" in message
    for line in ("  batch_size: 8 -> 16", "  model.hidden_dim: 64 -> 32", "  optimizer.accumulation_steps: 1 -> 2"):
        assert line in message.splitlines(), message
    assert "steps: 3 -> 40" not in message  # allowed changes are not listed as refused


def test_resume_allows_and_records_schedule_and_bookkeeping_changes(started):
    workdir, _, config = started
    c = changed(steps=40, log_every=5, keep_checkpoints=4, fsdp=2, **{"optimizer.learning_rate": 1e-4})
    changes = run_record.check_resume(workdir, c, config, step=3)
    assert changes == [("fsdp", 1, 2), ("keep_checkpoints", 2, 4), ("log_every", 25, 5),
                       ("optimizer.learning_rate", 1e-3, 1e-4), ("steps", 3, 40)]  # fmt: skip
    run_record.record_resume(workdir, c, 3, changes)
    with open(os.path.join(workdir, "experiment.json")) as f:
        saved = json.load(f)
    assert saved["config"]["steps"] == 40 and saved["resumes"][0]["changes"]["steps"] == [3, 40]
    assert run_record.check_resume(workdir, c, config, step=3) == []  # now the saved config


def test_resume_of_a_workdir_without_experiment_json(started):
    """Workdirs from before experiment.json: the model's config.json is compared."""
    workdir, _, _ = started
    os.remove(os.path.join(workdir, "experiment.json"))
    c = changed(**{"model.num_queries": 16})
    with pytest.raises(ValueError, match=r"config.json num_queries: 12 -> 16"):
        run_record.check_resume(workdir, c, experiment.model_config(c, experiment.dataset(c, "train")), step=3)


@pytest.mark.parametrize(
    "name, allowed",
    [("steps", True), ("optimizer.learning_rate", True), ("data.eval_images", True), ("loss.matcher", True),
     ("optimizer.accumulation_steps", False), ("model.hidden_dim", False), ("batch_size", False),
     ("data.augment.crop_size", False), ("seed", False), ("loss.dice_weight", False), ("data.workers", True),
     ("data.options.root", True), ("data.source", False), ("data.options.annotation_file", False)],
)  # fmt: skip
def test_may_change(name, allowed):
    assert run_record.may_change(name) is allowed


# ----------------------------------------------------------------------------------------------------
# The non-finite stop


def test_non_finite_message_says_only_what_is_known():
    message = non_finite_message(12, float("nan"), float("inf"), last_checkpoint=10)
    assert "good" not in message and "intact" not in message
    assert "at step 12 (loss nan, grad norm inf)" in message
    assert "The last checkpoint, step 10, was saved before the first non-finite step" in message
    assert "may already have diverged" in message and "lower optimizer.learning_rate" in message
    assert "No checkpoint was saved yet" in non_finite_message(2, float("nan"), 1.0, last_checkpoint=None)


def test_overflowing_weights_count_as_non_finite():
    """A learning rate of 1e40 overflows the weights while the loss and gradient were finite."""
    params = {"a": jnp.ones(3), "b": jnp.array([1.0, np.inf])}
    assert not bool(all_finite(jnp.float32(1.0), jnp.float32(2.0), params))
    assert bool(all_finite(jnp.float32(1.0), jnp.float32(2.0), {"a": jnp.ones(3)}))
    assert not bool(all_finite(jnp.float32(np.nan), jnp.float32(2.0), {"a": jnp.ones(3)}))


# ----------------------------------------------------------------------------------------------------
# How processes find each other


@pytest.fixture
def calls(monkeypatch):
    """No cluster variables; jax.distributed.initialize (and the gloo switch) recorded, not run."""
    for name in list(os.environ):
        if name.startswith(("M2F_", "SLURM_", "OMPI_", "TPU_", "MEGASCALE_", "JAX_COORDINATOR")) or name in (
            "KUBERNETES_SERVICE_HOST",
            "JOB_COMPLETION_INDEX",
        ):
            monkeypatch.delenv(name)
    recorded = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *args, **kwargs: recorded.append(args))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.config, "update", lambda *args: None)
    return recorded


def slurm(monkeypatch, tasks):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node[001-002]")
    monkeypatch.setenv("SLURM_NTASKS", str(tasks))
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_LOCALID", "0")


def test_a_plain_run_never_calls_jax_distributed(calls):
    assert mesh.initialize_distributed() is None and calls == []


def test_a_single_task_slurm_job_starts_no_coordinator(calls, monkeypatch):
    slurm(monkeypatch, tasks=1)
    assert mesh.initialize_distributed() is None and calls == []


def test_a_slurm_job_lets_jax_read_its_settings(calls, monkeypatch):
    """Before, only the M2F_* variables started jax.distributed: each SLURM task trained alone."""
    slurm(monkeypatch, tasks=4)
    assert mesh.initialize_distributed() == "slurm cluster environment (4 processes)"
    assert calls == [(None, None, None)]


def test_m2f_variables(calls, monkeypatch):
    monkeypatch.setenv("M2F_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match=r"missing \['M2F_COORDINATOR', 'M2F_PROCESS_ID'\]"):
        mesh.initialize_distributed()
    monkeypatch.setenv("M2F_COORDINATOR", "host0:1234")
    monkeypatch.setenv("M2F_PROCESS_ID", "1")
    slurm(monkeypatch, tasks=4)  # the explicit variables win
    assert mesh.initialize_distributed() == "M2F_* environment variables"
    assert calls == [("host0:1234", 2, 1)]
    monkeypatch.setenv("M2F_NUM_PROCESSES", "1")
    monkeypatch.setenv("M2F_PROCESS_ID", "0")
    assert mesh.initialize_distributed() is None and len(calls) == 1


def test_evaluation_does_not_check_the_model_fields():
    """eval.py reads the run's config.json: an init_from folder from the training machine is no problem."""
    c = changed(**{"model.init_from": "/elsewhere", "model.hidden_dim": 48, "data.max_instances": 99})
    assert problems(c, model=False) == []
    assert len(problems(c)) == 1 and "model.init_from" in problems(c)[0]


def test_a_kubernetes_pod_outside_an_indexed_job_trains_alone(calls, monkeypatch):
    """JAX's Kubernetes detector fails outside an indexed Job; a plain pod must not try it."""
    from jax._src.clusters import K8sCluster

    def not_a_job():
        raise RuntimeError("pod has no job-name label")

    monkeypatch.setattr(K8sCluster, "is_env_present", classmethod(lambda cls: True))
    monkeypatch.setattr(K8sCluster, "get_process_count", classmethod(lambda cls: not_a_job()))
    assert mesh.initialize_distributed() is None and calls == []
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    monkeypatch.setattr(K8sCluster, "get_process_count", classmethod(lambda cls: 2))
    assert mesh.initialize_distributed() == "K8sCluster cluster environment (2 processes)"
