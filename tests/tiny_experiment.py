"""configs/synthetic.py scaled down to compile and run in seconds (tests start train.py and
tests/train_worker.py with it)."""

from __future__ import annotations

import importlib.util
import os

import ml_collections

_SYNTHETIC = os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic.py")


def get_config(coco_root: str | None = None) -> ml_collections.ConfigDict:
    """coco_root (`--config tests/tiny_experiment.py:FOLDER`): read a COCO panoptic folder there
    (the synthetic set written by m2f_jax.data.synthetic) instead of the in-memory synthetic source."""
    spec = importlib.util.spec_from_file_location("synthetic_config", _SYNTHETIC)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.steps, c.batch_size = 3, 8
    c.data.eval_images, c.data.max_instances, c.data.workers = 8, 12, 0
    if coco_root:
        c.data.source, c.data.options = "coco_panoptic", ml_collections.ConfigDict({"root": coco_root})
    else:  # in memory: no files to write
        c.data.source = "synthetic"
        c.data.options = ml_collections.ConfigDict({"num_images": 32, "image_size": (32, 32)})
    c.data.augment.crop_size = (32, 32)
    c.model.update(depths=(1, 1, 1, 1), num_queries=12, encoder_layers=1, decoder_layers=2, drop_path_rate=0.1)
    c.loss.num_points = 64
    c.optimizer.warmup_steps = 0
    return c
