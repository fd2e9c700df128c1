"""The serving artifact (m2f_jax.export_serving, `m2f-convert --to-serving`): the jitted forward pass
serialized with jax.export for a fixed padded size and any batch, run by m2f_jax.serving in a fresh process
that never imports the model's code, with the outputs of the jitted model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

import m2f_jax
from m2f_jax import weights
from m2f_jax.conversion import cli
from m2f_jax.conversion.stablehlo import export_serving
from m2f_jax.serving import ServedModel

from helpers import max_diff, tiny_config

HEIGHT, WIDTH = 64, 96
PROCESSOR = m2f_jax.ImageProcessor(size={"longest_edge": 96, "shortest_edge": 64}, pad_size={"height": 64, "width": 96})
FILES = [
    "config.json",
    "flax_model.safetensors",
    "model.jaxexport",
    "preprocessor_config.json",
    "serving.json",
]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A fresh interpreter: load the folder, run batches of 1 and 2, and report which modules it imported.
SERVER = """
import sys, numpy as np
from m2f_jax.serving import ServedModel
folder, inputs, out = sys.argv[1:]
served = ServedModel.load(folder)
data = np.load(inputs)
one = served(data["pixel_values"][:1], data["pixel_mask"][:1])
two = served(data["pixel_values"], data["pixel_mask"])
np.savez(out, **{f"one_{k}": v for k, v in one.items()}, **{f"two_{k}": v for k, v in two.items()})
print(sorted(m for m in ("m2f_jax.modeling", "m2f_jax.weights", "flax", "torch") if m in sys.modules))
print(served.manifest["processor"], served.id2label[4])
"""


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A model folder with random parameters (no initialiser: that costs seconds) and a processor."""
    rng = np.random.default_rng(0)
    config = tiny_config(decoder_layers=2, encoder_layers=1)  # every kind of layer; less to compile
    params = {n: rng.normal(0, 0.1, s).astype(np.float32) for n, s in weights.param_shapes(config).items()}
    model = weights.model_from_params(config, params)
    folder = tmp_path_factory.mktemp("model") / "flax"
    weights.save_model(model, folder)
    PROCESSOR.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def served(model_folder, tmp_path_factory):
    destination = tmp_path_factory.mktemp("serving") / "exported"
    assert cli.main(["--to-serving", "--size", f"{HEIGHT}x{WIDTH}", str(model_folder[0]), str(destination)]) == 0
    return destination


@pytest.fixture(scope="module")
def inputs():
    """Two images: one fills the canvas, the other (48 x 64) is padded into it, as the processor pads."""
    pixel_values = np.random.RandomState(0).randn(2, HEIGHT, WIDTH, 3).astype(np.float32)
    pixel_mask = np.zeros((2, HEIGHT, WIDTH), bool)
    pixel_mask[0] = True
    pixel_mask[1, :48, :64] = True
    pixel_values[1][~pixel_mask[1]] = 0.0
    return pixel_values, pixel_mask


def test_a_fresh_process_serves_any_batch_without_the_model_code(served, model_folder, inputs, tmp_path):
    assert sorted(os.listdir(served)) == FILES
    np.savez(tmp_path / "inputs.npz", pixel_values=inputs[0], pixel_mask=inputs[1])
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", SERVER, str(served), str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "preprocessor_config.json class_4"]
    got = np.load(tmp_path / "out.npz")
    reference = jax.jit(lambda m, x, mask: m(x, pixel_mask=mask))(model_folder[1], *inputs)
    for name in ("class_queries_logits", "masks_queries_logits"):
        expected = np.asarray(getattr(reference, name))
        assert got[f"two_{name}"].shape == expected.shape
        assert max_diff(got[f"two_{name}"], expected) < 1e-4, name
        assert max_diff(got[f"one_{name}"], expected[:1]) < 1e-4, name


def test_the_manifest_says_what_a_server_needs(served, model_folder):
    manifest = json.loads((served / "serving.json").read_text())
    assert manifest["inputs"] == [
        {"name": "pixel_values", "shape": [None, HEIGHT, WIDTH, 3], "dtype": "float32"},
        {"name": "pixel_mask", "shape": [None, HEIGHT, WIDTH], "dtype": "bool"},
    ]
    assert manifest["outputs"] == [
        {"name": "class_queries_logits", "shape": [None, 12, 6], "dtype": "float32"},
        {"name": "masks_queries_logits", "shape": [None, 12, HEIGHT // 4, WIDTH // 4], "dtype": "float32"},
    ]
    assert manifest["id2label"] == {str(i): f"class_{i}" for i in range(5)}
    assert manifest["postprocess"]["panoptic"] == {
        "threshold": 0.8,
        "mask_threshold": 0.5,
        "overlap_mask_area_threshold": 0.8,
        "label_ids_to_fuse": [],
    }
    assert manifest["platforms"] == ["cpu"]
    assert m2f_jax.ImageProcessor.from_pretrained(served) == PROCESSOR
    # The folder is a model folder too, with the model's parameters.
    back, original = weights.model_params(m2f_jax.from_pretrained(str(served))), weights.model_params(model_folder[1])
    assert sorted(back) == sorted(original)
    assert all(np.array_equal(back[k], v) for k, v in original.items())


def test_bad_inputs_to_the_served_model_are_named(served, inputs, model_folder):
    with pytest.raises(ValueError, match="empty dimension"):  # concrete dims are still checked
        model_folder[1](np.zeros((0, HEIGHT, WIDTH, 3), np.float32))
    model = ServedModel.load(served)
    pixel_values, pixel_mask = inputs
    wrong = re.escape("pixel_values must have shape (batch, 64, 96, 3), got (2, 64, 64, 3)")
    with pytest.raises(ValueError, match=wrong):
        model(pixel_values[:, :, :64], pixel_mask[:, :, :64])
    with pytest.raises(ValueError, match="pixel_values must be float32, got float64"):
        model(pixel_values.astype(np.float64), pixel_mask)
    with pytest.raises(ValueError, match="pixel_mask has 1 images, pixel_values 2"):
        model(pixel_values, pixel_mask[:1])
    with pytest.raises(ValueError, match="got \\(0, 64, 96, 3\\)"):
        model(pixel_values[:0], pixel_mask[:0])
    with pytest.raises(FileNotFoundError, match="no serving.json"):
        ServedModel.load(served.parent)


def test_bad_export_requests_are_refused_before_any_work(model_folder, served, tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was read before the bad request was refused")

    monkeypatch.setattr(weights, "from_pretrained", refuse)
    source = str(model_folder[0])
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        export_serving(source, served, (64, 96))
    for size in ((64,), (0, 96), (64.0, 96)):
        with pytest.raises(ValueError, match="size must be"):
            export_serving(source, tmp_path / "out", size)
    with pytest.raises(ValueError, match="batch must be"):
        export_serving(source, tmp_path / "out", (64, 96), batch=0)
    with pytest.raises(ValueError, match="unknown platforms \\['gpu'\\]"):
        export_serving(source, tmp_path / "out", (64, 96), platforms=["gpu"])
    with pytest.raises(ValueError, match="task must be"):
        export_serving(source, tmp_path / "out", (64, 96), task="depth")
    with pytest.raises(ValueError, match="is inside the source"):
        export_serving(source, model_folder[0] / "serving", (64, 96))
    assert cli.main(["--to-serving", "--size", "64by96", source, str(tmp_path / "out")]) == 1
    assert "--size must be HxW" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--to-serving", source, str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_public_names_load_lazily():
    assert sorted(m2f_jax.__all__) == sorted(m2f_jax._PUBLIC)
    for name in m2f_jax.__all__:
        assert getattr(m2f_jax, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        m2f_jax.nothing_here  # noqa: B018
