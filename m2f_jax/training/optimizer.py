"""The optax recipe of the original Mask2Former: AdamW with a backbone learning-rate multiplier,
no weight decay on norms, embeddings and relative position bias tables, full-model gradient
clipping, poly or multi-step schedules with an optional linear warmup, optional accumulation.

Parameter groups come from the model's structure (`parameter_groups`):
- backbone: the parameters inside the backbone module, learning rate x `backbone_multiplier`
  (the weight decay is scaled with it, as torch's AdamW multiplies it by the group's rate);
- no weight decay: the parameters of norm layers (LayerNorm, GroupNorm) and embedding tables
  (nnx.Embed), and those a module lists in its `no_weight_decay` class attribute (the pixel
  decoder's level embedding, Swin's relative position bias tables). Linear and conv biases are
  decayed, as in detectron2.
ResNet's frozen BatchNorms hold no parameters (their weights are `Frozen`, not `nnx.Param`), so they
are in no group and never updated; its convs are backbone parameters that decay.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from m2f_jax.modeling.resnet import ResNetBackbone
from m2f_jax.modeling.swin import SwinBackbone

_BACKBONES = (SwinBackbone, ResNetBackbone)
_NO_DECAY_MODULES = (nnx.LayerNorm, nnx.GroupNorm, nnx.Embed)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = 1e-4
    weight_decay: float = 0.05
    backbone_multiplier: float = 0.1
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float | None = 0.01  # full-model global L2 norm; None turns clipping off
    schedule: str = "poly"  # "poly", "multistep" or "constant"
    total_steps: int = 160_000
    poly_power: float = 0.9
    milestones: tuple[float, ...] = (0.889, 0.963)  # fractions of total_steps (multistep)
    gamma: float = 0.1  # multistep factor at each milestone
    warmup_steps: int = 0
    warmup_factor: float = 1.0  # the rate multiplier at step 0 of the warmup, rising linearly to 1
    accumulation_steps: int = 1

    def __post_init__(self):
        if self.schedule not in ("poly", "multistep", "constant"):
            raise ValueError(f"schedule must be 'poly', 'multistep' or 'constant', got {self.schedule!r}")
        if self.total_steps < 1 or self.accumulation_steps < 1 or self.warmup_steps < 0:
            raise ValueError("total_steps and accumulation_steps must be >= 1 and warmup_steps >= 0")
        if any(not 0 < m < 1 for m in self.milestones):
            raise ValueError(f"milestones are fractions of total_steps in (0, 1), got {self.milestones}")


def learning_rate_schedule(config: OptimizerConfig) -> optax.Schedule:
    """The base rate at each optimizer step: poly (1 - t/T)^p, or x gamma at each milestone, times
    detectron2's linear warmup factor (warmup_factor -> 1 over warmup_steps)."""
    base, total = config.learning_rate, config.total_steps
    if config.schedule == "poly":

        def main(t):
            return base * jnp.maximum(1.0 - t / total, 0.0) ** config.poly_power

    elif config.schedule == "multistep":
        boundaries = {int(m * total): config.gamma for m in config.milestones}
        main = optax.piecewise_constant_schedule(base, boundaries)
    else:
        main = optax.constant_schedule(base)
    if config.warmup_steps == 0:
        return main

    def warmed(step):
        fraction = jnp.minimum(step / config.warmup_steps, 1.0)
        return main(step) * (config.warmup_factor + (1.0 - config.warmup_factor) * fraction)

    return warmed


def path_name(path) -> str:
    """Dotted name of a pytree path, as `m2f_jax.weights` names parameters (Variable `.value` left out)."""
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.GetAttrKey) and key.name == "value":
            continue
        parts.append(str(getattr(key, "key", getattr(key, "idx", getattr(key, "name", key)))))
    return ".".join(parts)


def parameter_groups(model: nnx.Module) -> tuple[Any, Any]:
    """Two trees like `nnx.state(model, nnx.Param)`: whether each parameter is in the backbone, and
    whether it decays, decided by the module that holds it (see the module docstring)."""
    backbone, no_decay_modules, no_decay = [], [], set()
    for path, node in nnx.iter_graph(model):
        prefix = ".".join(str(key) for key in path)
        if isinstance(node, _BACKBONES):
            backbone.append(prefix + ".")
        if isinstance(node, _NO_DECAY_MODULES):
            no_decay_modules.append(prefix + ".")
        no_decay.update(f"{prefix}.{name}" for name in getattr(type(node), "no_weight_decay", ()))

    def in_backbone(path, _):
        return path_name(path).startswith(tuple(backbone))

    def decays(path, _):
        name = path_name(path)
        return name not in no_decay and not name.startswith(tuple(no_decay_modules))

    params = nnx.state(model, nnx.Param)
    return jax.tree_util.tree_map_with_path(in_backbone, params), jax.tree_util.tree_map_with_path(decays, params)


def build_optimizer(config: OptimizerConfig, groups: tuple[Any, Any]) -> optax.GradientTransformation:
    """clip -> Adam moments -> decoupled weight decay (masked) -> x -lr(t) -> x group multiplier,
    wrapped in `optax.MultiSteps` when accumulating gradients over several micro-batches.
    groups: (in_backbone, decays), trees of booleans shaped like the parameters
    (`parameter_groups(model)`)."""
    in_backbone, decay_mask = groups
    multipliers = jax.tree.map(lambda b: config.backbone_multiplier if b else 1.0, in_backbone)
    chain = [
        optax.clip_by_global_norm(config.clip_norm) if config.clip_norm else optax.identity(),
        optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps),
        optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
        optax.scale_by_learning_rate(learning_rate_schedule(config)),
        _scale_by_tree(multipliers),
    ]
    optimizer = optax.chain(*chain)
    if config.accumulation_steps > 1:
        optimizer = optax.MultiSteps(optimizer, every_k_schedule=config.accumulation_steps)
    return optimizer


def _scale_by_tree(multipliers: Any) -> optax.GradientTransformation:
    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, multipliers), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def describe_groups(model: nnx.Module) -> Mapping[str, list[str]]:
    """Parameter names per group, for logging and tests."""
    in_backbone, decay = parameter_groups(model)
    groups: dict[str, list[str]] = {"backbone": [], "no_weight_decay": []}
    for (path, b), d in zip(jax.tree_util.tree_flatten_with_path(in_backbone)[0], jax.tree.leaves(decay), strict=True):
        if b:
            groups["backbone"].append(path_name(path))
        if not d:
            groups["no_weight_decay"].append(path_name(path))
    return groups
