"""What a run records about itself in its workdir, and whether a new config may resume it.

A run writes `config.json` (the model's config, HF's format) and `experiment.json` (the whole
experiment config, and every change made on a resume). Resuming compares the new config with them
before anything is built or restored, so a checkpoint is never restored into a model, optimizer or
data stream it was not saved from (orbax would fail with pages of shape errors, or, worse, not).

May change on resume (reported, then recorded in experiment.json):
- steps (extend or shorten the run; the schedule follows the new length from the step reached),
  log_every, checkpoint_every, keep_checkpoints, data.eval_images (not used by training);
- data.workers (the batches do not depend on it), data.max_skipped, and where the data lies
  (data.options.root, data.options.data_dir: the same data set, moved);
- fsdp (the state is resharded when restored), remat and scan_layers (same values, other memory or speed),
  compute_dtype, loss.matcher (both solve the same assignment);
- optimizer.* except accumulation_steps: a deliberate change of the recipe from here on, e.g. a
  lower learning rate after a divergence;
- model.backbone_init (the starting backbone weights: a resumed run has them in its checkpoint and
  does not read it).
Everything else may not: the model (its shapes, labels and loss weights, which config.json
records), the data stream (seed, task, data.*, batch_size: which images each step sees) and
optimizer.accumulation_steps (the optimizer state's structure and what a step means).
eval.py reads the model from config.json and refuses only another accumulation_steps.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from m2f_jax.training.validation import as_dict, flatten

EXPERIMENT_FILE = "experiment.json"
MODEL_FILE = "config.json"
MAY_CHANGE_ON_RESUME = (
    "steps", "log_every", "checkpoint_every", "keep_checkpoints", "data.eval_images", "data.workers",
    "data.max_skipped", "data.options.root", "data.options.data_dir", "fsdp", "remat", "scan_layers", "compute_dtype",
    "loss.matcher", "optimizer.*", "eval.*", "model.keep_matching_labels", "model.backbone_init",
)  # fmt: skip
MAY_NOT_CHANGE_ON_RESUME = ("optimizer.accumulation_steps",)  # exceptions to the patterns above
_ABSENT = "(absent)"


def may_change(name: str) -> bool:
    """Whether the experiment field `name` may differ from the saved one when resuming."""
    if name in MAY_NOT_CHANGE_ON_RESUME:
        return False
    return any(name == p or (p.endswith(".*") and name.startswith(p[:-1])) for p in MAY_CHANGE_ON_RESUME)


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples become lists), so saved and new values compare equal."""
    return json.loads(json.dumps(value))


def differences(saved: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted name, saved value, new value) for every leaf that differs; a leaf only one side has
    shows `(absent)` on the other."""
    old, now = flatten(_plain(saved)), flatten(_plain(new))
    return [
        (name, old.get(name, _ABSENT), now.get(name, _ABSENT))
        for name in sorted(set(old) | set(now))
        if old.get(name, _ABSENT) != now.get(name, _ABSENT)
    ]


def _lines(changes: list[tuple[str, Any, Any]]) -> str:
    return "\n".join(f"  {name}: {old!r} -> {new!r}" for name, old, new in changes)


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _saved_experiment_changes(workdir: str, c: Any) -> list[tuple[str, Any, Any]]:
    path = os.path.join(workdir, EXPERIMENT_FILE)
    return differences(_read_json(path)["config"], as_dict(c)) if os.path.exists(path) else []


def check_resume(workdir: str, c: Any, model_config: Any, step: int) -> list[tuple[str, Any, Any]]:
    """The allowed changes between the run's saved configs and the new ones (experiment config `c`,
    model config `model_config`); raises ValueError naming each field that may not change (saved
    value, new value) before anything is restored from the checkpoint at `step`."""
    changes = _saved_experiment_changes(workdir, c)
    refused = [d for d in changes if not may_change(d[0])]
    model_path = os.path.join(workdir, MODEL_FILE)
    if not refused and os.path.exists(model_path):  # e.g. init_from's folder or a preset changed
        saved = type(model_config).load(model_path).to_hf_dict()  # defaults filled in as the new one's are
        refused = [(f"{MODEL_FILE} {k}", old, new) for k, old, new in differences(saved, model_config.to_hf_dict())]
    if refused:
        allowed, exceptions = ", ".join(MAY_CHANGE_ON_RESUME), ", ".join(MAY_NOT_CHANGE_ON_RESUME)
        _refuse("resume", workdir, step, refused, f"Fields that may change on resume: {allowed} (not {exceptions}).")
    return [d for d in changes if may_change(d[0])]


def _refuse(purpose: str, workdir: str, step: int, refused: list[tuple[str, Any, Any]], rules: str) -> None:
    raise ValueError(
        f"cannot {purpose} the checkpoint at step {step} in {workdir}: the run was started with other values of "
        f"fields that its checkpoint cannot be restored with (saved -> now):\n{_lines(refused)}\n"
        f"Use the saved values (in {os.path.join(workdir, EXPERIMENT_FILE)}), or start a new --workdir. {rules}"
    )


def describe_changes(changes: list[tuple[str, Any, Any]]) -> str:
    return f"resuming with changed settings (saved -> now):\n{_lines(changes)}"


def _write_json(path: str, value: Any, indent: int = 1) -> None:
    """Written to a temporary file and renamed, so a reader never sees half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=indent, sort_keys=True)
    os.replace(tmp, path)


def record_start(workdir: str, c: Any, model_config: Any, initial_weights: list[str] = ()) -> None:
    """A fresh run: its model config (config.json) and experiment config (experiment.json, with the lines
    saying where the initial weights came from, e.g. what `model.init_from` re-initialised)."""
    os.makedirs(workdir, exist_ok=True)
    _write_json(os.path.join(workdir, MODEL_FILE), model_config.to_hf_dict(), indent=2)  # as Mask2FormerConfig.save
    record = {"config": _plain(as_dict(c)), "resumes": [], "initial_weights": list(initial_weights)}
    _write_json(os.path.join(workdir, EXPERIMENT_FILE), record)


def record_resume(workdir: str, c: Any, step: int, changes: list[tuple[str, Any, Any]]) -> None:
    """A resumed run: experiment.json's config becomes the new one, and the changes are appended to
    its history (a workdir from before experiment.json gets one now)."""
    path = os.path.join(workdir, EXPERIMENT_FILE)
    record = _read_json(path) if os.path.exists(path) else {}
    resumes = record.get("resumes", [])
    if changes:
        resumes.append({"step": step, "changes": {name: [old, new] for name, old, new in changes}})
    _write_json(path, {**record, "config": _plain(as_dict(c)), "resumes": resumes})
