"""Evaluation while training: every eval.every steps (and after the last), the validation split goes
through the inference path (`evaluate`), its numbers are logged with the training metrics, and the
best model by eval.metric is kept as WORKDIR/best (a model folder, with best.json saying its step
and score), beside the last checkpoints."""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any

import jax
from flax import nnx

from m2f_jax.evaluation.evaluate import evaluate, evaluation_tasks
from m2f_jax.evaluation.report import HEADLINE
from m2f_jax.inference import Predictor
from m2f_jax.processing.preprocess import CONFIG_NAME
from m2f_jax.training import experiment

BEST_FOLDER = "best"
BEST_FILE = "best.json"
TASK_OF_METRIC = {"PQ": "panoptic", "AP": "instance", "mIoU": "semantic"}


class PeriodicEvaluation:
    """Built before training starts, so that a missing validation split or a metric the data cannot
    give stops the run before any step."""

    def __init__(self, c: Any, workdir: str):
        settings = experiment.eval_settings(c)
        self.every, self.steps, self.workdir = settings["every"], c.steps, workdir
        self.metric, self.settings = settings["metric"], settings
        self.data = experiment.dataset(c, "val")
        task = TASK_OF_METRIC[self.metric]
        self.tasks = evaluation_tasks(self.data, None)
        if task not in self.tasks:
            raise ValueError(
                f"eval.metric={self.metric!r} needs {task} annotations; the validation split gives {list(self.tasks)}"
            )
        self.num_images = c.data.eval_images or None
        self.processor = experiment.processor(c)
        self.predictor: Predictor | None = None
        self.best = self._saved_best()

    def due(self, done: int) -> bool:
        return self.every > 0 and (done % self.every == 0 or done == self.steps)

    def _saved_best(self) -> float:
        path = os.path.join(self.workdir, BEST_FOLDER, BEST_FILE)
        if not os.path.isfile(path):
            return -math.inf
        with open(path) as f:
            record = json.load(f)
        return float(record["value"]) if record.get("metric") == self.metric else -math.inf

    def __call__(self, done: int, graphdef: nnx.GraphDef, state: Any) -> dict[str, float]:
        """Evaluates the state's parameters (every process takes part); returns the scalars to log
        and, on process 0, exports the model as WORKDIR/best when its score is the best so far."""
        params, rngs = state.params, state.rngs
        if jax.process_count() > 1:  # this process's devices need whole arrays (keys travel as their data)
            from jax.experimental import multihost_utils

            from m2f_jax.training.checkpoint import data_to_keys, keys_to_data

            params, rngs = data_to_keys(multihost_utils.process_allgather(keys_to_data((params, rngs)), tiled=True),
                                        (params, rngs))  # fmt: skip
        model = nnx.merge(graphdef, params, rngs)
        if self.predictor is None:
            self.predictor = Predictor(model, self.processor, batch_size=self.settings["batch_size"])
        else:
            self.predictor.set_model(model)  # the same shapes: no new compilation
        metrics, _ = evaluate(self.predictor, self.data, tasks=self.tasks, num_images=self.num_images)
        scalars = {f"eval/{task}/{name}": float(metrics[task][name]) for task in self.tasks for name in HEADLINE[task]}
        value = float(metrics[TASK_OF_METRIC[self.metric]][self.metric])
        if value > self.best:  # NaN never is
            self.best = value
            if jax.process_index() == 0:
                self._export_best(model, done, value)
        return scalars

    def _export_best(self, model, done: int, value: float) -> None:
        from m2f_jax.weights import save_model

        with tempfile.TemporaryDirectory() as scratch:
            record = os.path.join(scratch, BEST_FILE)
            with open(record, "w") as f:
                json.dump({"step": done, "metric": self.metric, "value": value}, f)
            carried = [record] + [p for p in [os.path.join(self.workdir, CONFIG_NAME)] if os.path.isfile(p)]
            save_model(model, os.path.join(self.workdir, BEST_FOLDER), overwrite=True, carried=tuple(carried))
