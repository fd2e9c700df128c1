"""The optax recipe against torch's AdamW with detectron2's parameter groups, and the schedules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from m2f_jax.training.optimizer import OptimizerConfig, build_optimizer, describe_groups, learning_rate_schedule
from m2f_jax.weights import abstract_model

from helpers import tiny_config

torch = pytest.importorskip("torch")


def test_parameter_groups_of_the_model():
    groups = describe_groups(abstract_model(tiny_config()))
    backbone, no_decay = set(groups["backbone"]), set(groups["no_weight_decay"])
    swin = "model.pixel_level_module.encoder."
    assert all(name.startswith(swin) for name in backbone)
    assert swin + "embeddings.patch_embeddings.projection.kernel" in backbone
    assert "model.pixel_level_module.decoder.mask_projection.kernel" not in backbone
    for name in (
        swin + "encoder.layers.0.blocks.1.attention.relative_position_bias_table",
        swin + "encoder.layers.0.blocks.0.layernorm_before.scale",
        swin + "hidden_states_norms.stage2.bias",
        "model.pixel_level_module.decoder.input_projections.0.norm.scale",  # GroupNorm
        "model.pixel_level_module.decoder.level_embed",
        "model.transformer_module.queries_features.embedding",
        "model.transformer_module.queries_embedder.embedding",
        "model.transformer_module.level_embed.embedding",
        "model.transformer_module.decoder.layers.0.self_attn_layer_norm.bias",
    ):
        assert name in no_decay, name
    for name in (
        swin + "embeddings.patch_embeddings.projection.kernel",
        swin + "encoder.layers.0.blocks.0.attention.q_proj.bias",  # biases decay, as in detectron2
        "class_predictor.kernel",
        "model.transformer_module.decoder.layers.0.fc1.kernel",
    ):
        assert name not in no_decay, name


def _toy_params(rng):
    """A tree with one parameter of each group kind (backbone or not, decayed or not)."""
    return {
        "model": {
            "pixel_level_module": {
                "encoder": {
                    "blocks": {"fc": {"kernel": rng.randn(4, 3)}, "layernorm": {"scale": rng.randn(3)}},
                },
                "decoder": {"conv": {"kernel": rng.randn(3, 5), "bias": rng.randn(5)}},
            },
            "transformer_module": {"queries_features": {"embedding": rng.randn(6, 3)}},
        }
    }


def _names(params):
    return [".".join(str(k.key) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def is_backbone(name):
    return name.startswith("model.pixel_level_module.encoder.")


def decays(name):
    return not ("norm" in name or name.endswith("embedding"))


def _toy_groups(params):
    """The toy tree's (in_backbone, decays) trees, as `parameter_groups` gives them for a model."""
    structure = jax.tree.structure(params)
    return tuple(jax.tree.unflatten(structure, [f(n) for n in _names(params)]) for f in (is_backbone, decays))


@pytest.mark.parametrize("clip_norm", [None, 0.5])
def test_matches_torch_adamw_with_detectron2_groups(clip_norm):
    rng = np.random.RandomState(0)
    params = jax.tree.map(lambda x: x.astype(np.float32), _toy_params(rng))
    grads = [jax.tree.map(lambda x: rng.randn(*x.shape).astype(np.float32), params) for _ in range(4)]
    config = OptimizerConfig(learning_rate=0.01, weight_decay=0.05, backbone_multiplier=0.1, clip_norm=clip_norm,
                             schedule="poly", total_steps=10, warmup_steps=2, warmup_factor=0.1)  # fmt: skip

    tx = build_optimizer(config, _toy_groups(params))
    state, ours = tx.init(params), params
    names = _names(params)
    for g in grads:
        updates, state = tx.update(g, state, ours)
        ours = optax.apply_updates(ours, updates)

    tensors = [torch.tensor(np.asarray(v), requires_grad=True) for v in jax.tree.leaves(params)]
    groups = []
    for name, t in zip(names, tensors, strict=True):
        lr, weight_decay = 0.01 * (0.1 if is_backbone(name) else 1.0), 0.05 if decays(name) else 0.0
        groups.append({"params": [t], "lr": lr, "weight_decay": weight_decay})
    torch_opt = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)
    base_lrs = [g["lr"] for g in torch_opt.param_groups]
    for i, g in enumerate(grads):
        for t, leaf in zip(tensors, jax.tree.leaves(g), strict=True):
            t.grad = torch.tensor(np.asarray(leaf))
        if clip_norm:
            torch.nn.utils.clip_grad_norm_(tensors, clip_norm)
        warm = 0.1 * (1 - min(i / 2, 1.0)) + min(i / 2, 1.0)  # detectron2's linear warmup factor
        for group, base in zip(torch_opt.param_groups, base_lrs, strict=True):
            group["lr"] = base * warm * (1 - i / 10) ** 0.9
        torch_opt.step()
    for t, leaf in zip(tensors, jax.tree.leaves(ours), strict=True):
        np.testing.assert_allclose(np.asarray(leaf), t.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_schedules():
    poly = learning_rate_schedule(OptimizerConfig(learning_rate=1.0, schedule="poly", total_steps=100))
    for t in (0, 10, 50, 99):
        assert float(poly(t)) == pytest.approx((1 - t / 100) ** 0.9, rel=1e-6)
    steps = learning_rate_schedule(OptimizerConfig(learning_rate=1.0, schedule="multistep", total_steps=1000))
    assert float(steps(888)) == pytest.approx(1.0)
    assert float(steps(889)) == pytest.approx(0.1)
    assert float(steps(963)) == pytest.approx(0.01)
    warm = learning_rate_schedule(
        OptimizerConfig(learning_rate=1.0, schedule="constant", warmup_steps=10, warmup_factor=0.001)
    )
    assert float(warm(0)) == pytest.approx(0.001)
    assert float(warm(5)) == pytest.approx(0.001 + 0.999 * 0.5)
    assert float(warm(10)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="schedule"):
        OptimizerConfig(schedule="cosine")


def test_accumulation_equals_one_step_on_the_mean_gradient():
    rng = np.random.RandomState(1)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), _toy_params(rng))
    g1, g2 = (jax.tree.map(lambda x: jnp.asarray(rng.randn(*x.shape), jnp.float32), params) for _ in range(2))
    accumulate = build_optimizer(
        OptimizerConfig(learning_rate=0.01, accumulation_steps=2, total_steps=5), _toy_groups(params)
    )
    state = accumulate.init(params)
    u1, state = accumulate.update(g1, state, params)
    assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(u1))  # nothing applied yet
    u2, state = accumulate.update(g2, state, params)
    single = build_optimizer(OptimizerConfig(learning_rate=0.01, total_steps=5), _toy_groups(params))
    expected, _ = single.update(jax.tree.map(lambda a, b: (a + b) / 2, g1, g2), single.init(params), params)
    for a, b in zip(jax.tree.leaves(u2), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
