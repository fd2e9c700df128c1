"""Fine-tuning a checkpoint onto another label set: a 133-label model trains on a 5-label folder data set
(the own-data format) with only its class head re-initialised, keeping the outputs of shared names."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from m2f_jax.data.synthetic import SyntheticDataset
from m2f_jax.training import experiment
from m2f_jax.training.finetune import matching_labels, transfer_class_head
from m2f_jax.training.mesh import global_batch, make_mesh
from m2f_jax.training.workdir import EXPERIMENT_FILE, record_resume, record_start
from m2f_jax.weights import model_from_params, model_params, param_shapes, save_model

from helpers import FAST_COMPILE
from tiny_experiment import get_config

# The folder's classes: the synthetic set's sky, grass and water regions and its circles and squares;
# its triangles and rings become unlabelled pixels.
FOLDER_CLASSES = [
    {"id": 0, "name": "sky", "isthing": False},
    {"id": 1, "name": "Grass", "isthing": False},
    {"id": 2, "name": "water", "isthing": False},
    {"id": 3, "name": "circle", "isthing": True},
    {"id": 4, "name": "square", "isthing": True},
]
# The checkpoint's 133 labels: two of the folder's names among placeholders-like names.
SOURCE_LABELS = {i: f"class_{i}" for i in range(133)} | {7: "grass", 40: "circle", 99: "LABEL_99"}


def write_folder(root, images: int = 8) -> None:
    """The synthetic images as a folder data set (labels.json, images/, semantic/, instances/)."""
    (root).mkdir(parents=True, exist_ok=True)
    (root / "labels.json").write_text(json.dumps({"classes": FOLDER_CLASSES, "ignore_index": 255}))
    shapes = SyntheticDataset(images, (32, 32), seed=3)
    for split in ("train", "val"):
        for folder in ("images", "semantic", "instances"):
            (root / split / folder).mkdir(parents=True)
        for i in range(images):
            sample = shapes[i]
            semantic = np.where(sample["semantic"] <= 4, sample["semantic"], 255).astype(np.uint8)
            things = np.isin(sample["semantic"], (3, 4))
            instances = np.where(things, sample["instances"] + 1, 0).astype(np.uint8)
            Image.fromarray(sample["image"]).save(root / split / "images" / f"{i}.png")
            Image.fromarray(semantic).save(root / split / "semantic" / f"{i}.png")
            Image.fromarray(instances).save(root / split / "instances" / f"{i}.png")


def random_model(config):
    """A model with random weights, built without the initialisers (eagerly they take ~15 s here): normal
    weights, unit norm scales, zero biases."""
    rng = np.random.default_rng(5)
    params = {
        name: np.ones(shape, np.float32) if name.endswith(".scale")
        else np.zeros(shape, np.float32) if name.endswith(".bias")
        else rng.normal(0, 0.05, shape).astype(np.float32)
        for name, shape in param_shapes(config).items()
    }  # fmt: skip
    return model_from_params(config, params)


@pytest.fixture(scope="module")
def finetune(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    write_folder(root / "data")
    c = get_config()
    c.data.source, c.data.options = "folder", {"root": str(root / "data")}
    c.optimizer.learning_rate = 2e-3
    c.loss.auxiliary = False  # the last prediction's loss only: a smaller step to compile
    data = experiment.dataset(c, "train")
    source_config = experiment.model_config(c, data).replace(id2label=SOURCE_LABELS)
    checkpoint = random_model(source_config)
    save_model(checkpoint, root / "checkpoint")
    c.model.init_from = str(root / "checkpoint")
    experiment.validate(c)
    config = experiment.model_config(c, data)
    opt_config, _ = experiment.optimizer_config(c)
    mesh = make_mesh(1, devices=jax.devices()[:1])
    report: list[str] = []
    graphdef, state = experiment.initial_state(c, config, opt_config, mesh, report=report)
    return c, config, model_params(checkpoint), graphdef, state, opt_config, mesh, report


def test_only_the_class_head_is_reinitialised(finetune):
    _, config, source, graphdef, state, *_, report = finetune
    assert config.num_labels == 5 and [config.id2label[i] for i in range(5)] == [c["name"] for c in FOLDER_CLASSES]
    loaded = model_params(nnx.merge(graphdef, state.params, state.rngs))
    assert set(loaded) == set(source)
    for name in loaded:
        if not name.startswith("class_predictor."):
            np.testing.assert_array_equal(loaded[name], source[name], err_msg=name)
    kernel, bias = loaded["class_predictor.kernel"], loaded["class_predictor.bias"]
    assert kernel.shape == (64, 6) and bias.shape == (6,)
    # "Grass" and "circle" keep the checkpoint's outputs 7 and 40, and the no-object output is kept.
    for target, source_label in ((1, 7), (3, 40), (5, 133)):
        np.testing.assert_array_equal(kernel[:, target], source["class_predictor.kernel"][:, source_label])
        assert bias[target] == source["class_predictor.bias"][source_label]
    for target in (0, 2, 4):  # new: initialised afresh (torch's Linear init, bound 1/sqrt(64))
        assert not np.any(np.all(kernel[:, target : target + 1] == source["class_predictor.kernel"], axis=0))
        assert np.abs(kernel[:, target]).max() <= 1 / 8 and np.abs(kernel[:, target]).std() > 0.02
    text = "\n".join(report)
    assert "except the class head (class_predictor)" in text and "133 labels are not the data's 5" in text
    assert "'Grass' (was 7), 'circle' (was 40)" in text and "'sky', 'water', 'square'" in text


def test_loss_falls(finetune):
    c, config, _, graphdef, state, opt_config, mesh, _ = finetune
    step = experiment.jitted_train_step(c, config, graphdef, opt_config, state, mesh, FAST_COMPILE)
    batch = next(experiment.train_batches(c, 0, 1))
    batch.pop("skipped")
    batch = global_batch(batch, mesh)
    losses = []
    for _ in range(8):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert all(np.isfinite(losses)), losses
    assert np.mean(losses[-3:]) < 0.88 * losses[0], losses  # e.g. 21.0 -> 17.7 on this one batch


def test_matching_by_name():
    source = {0: "person", 1: "Car ", 2: "LABEL_2", 3: "tree", 4: "tree"}
    target = {0: "car", 1: "LABEL_2", 2: "person", 3: "tree", 4: "bus"}
    # Case and spaces ignored; placeholders and names held twice (either side) match nothing.
    assert matching_labels(source, target) == {0: 1, 2: 0}
    kernel, bias = np.arange(12.0).reshape(2, 6), np.arange(6.0)
    fresh_kernel, fresh_bias = -np.ones((2, 4)), -np.ones(4)
    new_kernel, new_bias = transfer_class_head(kernel, bias, fresh_kernel, fresh_bias, {0: 1, 2: 0})
    np.testing.assert_array_equal(new_bias, [1, -1, 0, 5])  # the no-object output is kept too
    np.testing.assert_array_equal(new_kernel[:, 0], kernel[:, 1])
    new_kernel, new_bias = transfer_class_head(kernel, bias, fresh_kernel, fresh_bias, {})
    np.testing.assert_array_equal(new_bias, fresh_bias)  # no match: all fresh, no-object too


def test_the_run_records_its_initial_weights(tmp_path, finetune):
    c, config, *_, report = finetune
    record_start(str(tmp_path), c, config, report)
    record_resume(str(tmp_path), c, 3, [])
    assert json.loads((tmp_path / EXPERIMENT_FILE).read_text())["initial_weights"] == report
