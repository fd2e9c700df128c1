"""`model.backbone_init`: a new run's backbone starts from a classification checkpoint's weights (the
rest of the model from its usual initialisation), as the original Mask2Former trains from ImageNet
Swin weights. Read and checked before the random state is built; a resumed run does not read it."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from absl import logging
from flax import nnx

from m2f_jax.conversion.imagenet import load_backbone_weights
from m2f_jax.training.step import TrainState

BACKBONE = ("model", "pixel_level_module", "encoder")  # where Mask2Former holds its backbone


def load(source: str, backbone_config) -> tuple[dict[str, np.ndarray], list[str]]:
    """(the backbone parameters of `source` (conversion.imagenet), lines saying what was loaded, ignored,
    resized and kept: train.py prints them and records them in experiment.json; logged here too)."""
    params, report = load_backbone_weights(source, backbone_config)
    text = report.summary()
    logging.info("%s", text)
    return params, text.splitlines()


def replace_backbone(state: TrainState, params: Mapping[str, np.ndarray]) -> TrainState:
    """`state` with the backbone weights named in `params` (paths relative to the backbone) replaced,
    each laid out with the sharding of the weight it replaces: trained ones in `state.params`, frozen
    ones (ResNet's BatchNorm) in `state.rngs`, the state's non-parameter part."""
    placed = set()

    def replaced(part):
        flat = []
        for path, var in nnx.to_flat_state(part):
            name = ".".join(str(p) for p in path[len(BACKBONE) :]) if path[: len(BACKBONE)] == BACKBONE else None
            if name in params:
                old = var[...]
                value = np.asarray(params[name], dtype=old.dtype)
                # from the host copy each process holds, shard by shard: works on one host and on many
                var = var.replace(
                    jax.make_array_from_callback(old.shape, old.sharding, lambda index, v=value: v[index])
                )
                placed.add(name)
            flat.append((path, var))
        return nnx.from_flat_state(flat)

    state = state.replace(params=replaced(state.params), rngs=replaced(state.rngs))
    if placed != set(params):
        raise ValueError(f"the model has no backbone parameters {sorted(set(params) - placed)[:5]} (of {len(params)})")
    return state
