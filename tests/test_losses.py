"""The Mask2Former loss: parity with Hugging Face's Mask2FormerLoss on the same points, and behaviour
under jit and grad, with empty images, low precision and bad labels."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m2f_jax.losses import (
    LayerPoints,
    LossConfig,
    check_targets,
    draw_points,
    lazy_points,
    loss_from_points,
    mask2former_loss,
    match,
    select_uncertain_points,
    slot_points,
    uncertainty_points,
)
from m2f_jax.modeling import Mask2FormerOutput
from m2f_jax.processing.targets import PaddedTargets, pad_targets_batch

B, Q, K, M, SIZE, PREDICTIONS = 2, 8, 5, 4, 32, 3
CONFIG = LossConfig(num_points=64)
jitted_loss = jax.jit(loss_from_points, static_argnums=3)  # one compilation per shape for the whole module


def random_outputs(seed: int, dtype=np.float32) -> Mask2FormerOutput:
    rng = np.random.default_rng(seed)
    layers = [
        {
            "class_queries_logits": jnp.asarray(rng.normal(size=(B, Q, K + 1)), dtype),
            "masks_queries_logits": jnp.asarray(2 * rng.normal(size=(B, Q, SIZE // 4, SIZE // 4)), dtype),
        }
        for _ in range(PREDICTIONS)
    ]
    return Mask2FormerOutput(layers[-1]["class_queries_logits"], layers[-1]["masks_queries_logits"], tuple(layers[:-1]))


def random_targets(seed: int, counts=(3, 2)) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Rectangles with random labels, `counts[i]` for image i, as HF's lists."""
    rng = np.random.default_rng(seed)
    masks, labels = [], []
    for count in counts:
        image = np.zeros((count, SIZE, SIZE), np.float32)
        for m in image:
            y0, x0 = rng.integers(0, SIZE - 4, 2)
            m[y0 : y0 + rng.integers(3, SIZE - y0), x0 : x0 + rng.integers(3, SIZE - x0)] = 1
        masks.append(image)
        labels.append(rng.integers(0, K, count))
    return masks, labels


def random_points(seed: int, config: LossConfig = CONFIG) -> tuple[LayerPoints, ...]:
    return draw_points(jax.random.key(seed), PREDICTIONS, B, M, config)


def hf_loss_parts(outputs, masks, labels, points, class_weight, monkeypatch):
    """HF's Mask2FormerLoss on the same logits, with torch.rand answering our points (the matcher's
    per image, then the candidates and uniform points of each matched pair in HF's order), and the
    matcher's assignments of every prediction, in HF's order (final first, then auxiliaries)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

    hf_config = transformers.Mask2FormerConfig(
        num_labels=K, class_weight=class_weight, mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1,
        train_num_points=CONFIG.num_points, oversample_ratio=CONFIG.oversample_ratio,
        importance_sample_ratio=CONFIG.importance_sample_ratio,
    )  # fmt: skip
    criterion = Mask2FormerLoss(hf_config, weight_dict={})
    recorded = []
    matcher_forward = criterion.matcher.forward

    def recording_matcher(*args, **kwargs):
        recorded.append(matcher_forward(*args, **kwargs))
        return recorded[-1]

    monkeypatch.setattr(criterion.matcher, "forward", recording_matcher)

    def draws():
        for layer in [PREDICTIONS - 1, *range(PREDICTIONS - 1)]:
            p = jax.tree.map(np.asarray, points[layer])
            for b in range(B):
                yield p.match[b][None]
            pairs = [(b, j) for b, (_, tgt) in enumerate(recorded[-1]) for j in tgt.tolist()]
            yield np.stack([p.candidates[b, j] for b, j in pairs])
            yield np.stack([p.random[b, j] for b, j in pairs])

    answers = draws()

    def fake_rand(*size, **kwargs):
        out = torch.from_numpy(np.array(next(answers), np.float32))
        assert tuple(out.shape) == tuple(size[0] if len(size) == 1 else size)
        return out

    monkeypatch.setattr(torch, "rand", fake_rand)
    t = lambda x: torch.from_numpy(np.array(x, np.float32))  # noqa: E731
    aux = [{k: t(v) for k, v in a.items()} for a in outputs.auxiliary_logits]
    with torch.no_grad():
        parts = criterion(
            masks_queries_logits=t(outputs.masks_queries_logits),
            class_queries_logits=t(outputs.class_queries_logits),
            mask_labels=[torch.from_numpy(m) for m in masks],
            class_labels=[torch.from_numpy(np.asarray(lab, np.int64)) for lab in labels],
            auxiliary_predictions=aux,
        )
    return {k: float(v) for k, v in parts.items()}, recorded, criterion.matcher.cost_class


@pytest.mark.parametrize("counts, solver", [((3, 2), "hungarian"), ((4, 1), "scipy")])
def test_parts_equal_hf_mask2former_loss(counts, solver, monkeypatch):
    outputs = random_outputs(0)
    masks, labels = random_targets(1, counts)
    targets = pad_targets_batch(masks, labels, M)
    points = random_points(2)
    hf_parts, hf_matches, hf_class_weight = hf_loss_parts(outputs, masks, labels, points, 2.0, monkeypatch)
    # HF's matcher class weight (the configured one in recent transformers; 1.0 in those with #38559):
    # the unweighted parts compared here do not depend on the class weight otherwise.
    config = LossConfig(num_points=64, class_weight=hf_class_weight, matcher=solver)
    total, parts = jitted_loss(outputs, targets, points, config)
    assert set(hf_parts) <= set(parts) and len(hf_parts) == 3 * PREDICTIONS
    for name, value in hf_parts.items():
        assert float(parts[name]) == pytest.approx(value, abs=1e-4), name
    weights = {"loss_cross_entropy": config.class_weight, "loss_mask": 5.0, "loss_dice": 5.0}
    hf_total = sum(v * weights[k.rsplit("_", 1)[0] if k[-1].isdigit() else k] for k, v in hf_parts.items())
    assert float(total) == pytest.approx(hf_total, abs=1e-3)

    predictions = [(a["class_queries_logits"], a["masks_queries_logits"]) for a in outputs.auxiliary_logits]
    predictions.append((outputs.class_queries_logits, outputs.masks_queries_logits))
    weights = dict(class_weight=config.class_weight, mask_weight=5.0, dice_weight=5.0)
    our_match = jax.jit(functools.partial(match, solver=solver, **weights))
    for hf_match, layer in zip(hf_matches, [PREDICTIONS - 1, *range(PREDICTIONS - 1)], strict=True):
        query = np.asarray(our_match(*predictions[layer], targets, points[layer].match))
        for b, (src, tgt) in enumerate(hf_match):
            np.testing.assert_array_equal(query[b, tgt.numpy()], src.numpy())
            assert np.all(query[b, len(tgt) :] == -1)


def test_uncertainty_points_equal_hf(monkeypatch):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(5, 8, 8)).astype(np.float32)
    candidates = rng.uniform(size=(5, 192, 2)).astype(np.float32)
    uniform = rng.uniform(size=(5, 16, 2)).astype(np.float32)
    answers = iter([candidates, uniform])
    monkeypatch.setattr(torch, "rand", lambda *size, **kw: torch.from_numpy(next(answers)))
    criterion = Mask2FormerLoss(transformers.Mask2FormerConfig(num_labels=K), weight_dict={})
    expected = criterion.sample_points_using_uncertainty(
        torch.from_numpy(logits)[:, None], lambda x: -x.abs(), 64, 3.0, 0.75
    )
    ours = np.asarray(select_uncertain_points(logits, candidates, uniform, 48))
    np.testing.assert_array_equal(np.sort(ours[:, :48], axis=1), np.sort(expected.numpy()[:, :48], axis=1))
    np.testing.assert_array_equal(ours[:, 48:], uniform)
    drawn = uncertainty_points(jax.random.key(0), logits, 64, 3.0, 0.75)
    assert drawn.shape == (5, 64, 2) and float(drawn.min()) >= 0 and float(drawn.max()) < 1


def padded(seed: int, counts=(3, 2)) -> PaddedTargets:
    return pad_targets_batch(*random_targets(seed, counts), M)


def test_jit_and_grad_give_finite_gradients():
    outputs, targets = random_outputs(4), padded(5)
    check_targets(targets, K)
    loss_fn = lambda out, key: mask2former_loss(out, targets, key, CONFIG)[0]  # noqa: E731
    value, grads = jax.jit(jax.value_and_grad(loss_fn))(outputs, jax.random.key(0))
    assert np.isfinite(float(value))
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert all(float(jnp.abs(g).sum()) > 0 for g in leaves)  # every prediction is supervised


def test_images_without_targets():
    """One image empty: finite, the other image's masks still count. All empty: mask parts 0 and
    CE = mean -log p(no object)."""
    outputs = random_outputs(6)
    loss = jax.jit(mask2former_loss, static_argnums=3)
    total, parts = loss(outputs, padded(7, counts=(3, 0)), jax.random.key(1), CONFIG)
    assert np.isfinite(float(total)) and float(parts["loss_mask"]) > 0
    total, parts = loss(outputs, padded(7, counts=(0, 0)), jax.random.key(1), CONFIG)
    log_probs = jax.nn.log_softmax(outputs.class_queries_logits, -1)
    assert float(parts["loss_cross_entropy"]) == pytest.approx(-float(log_probs[..., K].mean()), rel=1e-5)
    assert float(parts["loss_mask"]) == 0 and float(parts["loss_dice"]) == 0
    assert float(total) == pytest.approx(float(parts["weighted_cross_entropy"]), rel=1e-6)


def test_low_precision_logits_are_lost_in_float32():
    targets, points = padded(8), random_points(9)
    ours = jitted_loss(random_outputs(10), targets, points, CONFIG)
    half = jitted_loss(random_outputs(10, jnp.bfloat16), targets, points, CONFIG)
    assert half[0].dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in half[1].values())
    assert float(half[0]) == pytest.approx(float(ours[0]), rel=2e-2)


@pytest.mark.parametrize("bad", [K, -2])
def test_labels_out_of_range_raise(bad):
    masks, labels = random_targets(11)
    labels[1][1] = bad
    targets = pad_targets_batch(masks, labels, M)
    with pytest.raises(ValueError, match=f"image 1: label {bad} is outside"):
        check_targets(targets, K)
    with pytest.raises(ValueError, match="image 1"):
        mask2former_loss(random_outputs(0), targets, jax.random.key(0), CONFIG)
    check_targets(padded(11), K)  # padded slots (-1) are not labels


def test_auxiliary_off_scores_the_final_prediction_alone():
    outputs, targets, points = random_outputs(14), padded(12), random_points(13)
    _, full = jitted_loss(outputs, targets, points, CONFIG)
    final_only = dataclasses.replace(CONFIG, auxiliary=False)
    total, parts = jitted_loss(outputs, targets, points[-1:], final_only)
    names = ("loss_cross_entropy", "loss_mask", "loss_dice")
    assert sorted(parts) == sorted([*names, "weighted_cross_entropy", "weighted_mask", "weighted_dice"])
    for name in names:
        assert float(parts[name]) == pytest.approx(float(full[name]), rel=1e-6), name
    weights = (CONFIG.class_weight, CONFIG.mask_weight, CONFIG.dice_weight)
    assert float(total) == pytest.approx(sum(w * float(full[n]) for w, n in zip(weights, names, strict=True)), rel=1e-6)
    with pytest.raises(ValueError, match="points for 3 predictions, the outputs have 1"):
        loss_from_points(outputs, targets, points, final_only)
    total, _ = mask2former_loss(outputs, targets, jax.random.key(0), final_only)  # draws one prediction's points
    assert np.isfinite(float(total))


def test_settings_come_from_the_model_config():
    from helpers import tiny_config

    config = tiny_config(class_weight=1.5, no_object_weight=0.2, train_num_points=99, use_auxiliary_loss=False)
    loss = LossConfig.from_model_config(config, matcher="scipy")
    assert (loss.class_weight, loss.mask_weight, loss.dice_weight, loss.no_object_weight) == (1.5, 5.0, 5.0, 0.2)
    assert (loss.num_points, loss.oversample_ratio, loss.importance_sample_ratio) == (99, 3.0, 0.75)
    assert (loss.matcher, loss.auxiliary) == ("scipy", False)


def test_config_is_checked():
    with pytest.raises(ValueError, match="matcher"):
        LossConfig(matcher="greedy")
    with pytest.raises(ValueError, match="candidates"):
        LossConfig(oversample_ratio=0.5)


@pytest.mark.parametrize("pattern", ["first", "scattered", "none", "all"])
def test_mask_losses_of_valid_chunks_equal_every_slot(pattern):
    """The mask losses computed chunk by chunk on the valid slots alone equal the plain version that
    computes every slot (values and gradients), wherever the valid slots lie."""
    from m2f_jax.losses.criterion import _mask_losses, _mask_losses_reference

    slots, chunk, size = 11, 4, 32
    rng = np.random.default_rng(7)
    mask_logits = jnp.asarray(2 * rng.normal(size=(B, Q + 4, size // 4, size // 4)), jnp.float32)
    valid = {
        "first": np.arange(slots)[None, :] < np.array([[5], [2]]),
        "scattered": rng.uniform(size=(B, slots)) < 0.4,
        "none": np.zeros((B, slots), bool),
        "all": np.ones((B, slots), bool),
    }[pattern]
    masks = (rng.uniform(size=(B, slots, size, size)) > 0.5) & valid[..., None, None]
    targets = PaddedTargets(masks, np.where(valid, 1, -1).astype(np.int32), valid)
    query = np.where(valid, np.stack([rng.permutation(Q + 4)[:slots] for _ in range(B)]), -1).astype(np.int32)
    points = draw_points(jax.random.key(3), 1, B, slots, CONFIG)[0]

    def run(fn):
        def total(logits):
            bce, dice = fn(logits, targets, query, points, CONFIG)
            return bce + 2 * dice, (bce, dice)

        return jax.jit(jax.value_and_grad(total, has_aux=True))(mask_logits)

    chunked = run(functools.partial(_mask_losses, chunk=chunk))
    (_, (bce, dice)), grad = run(_mask_losses_reference)
    np.testing.assert_allclose(chunked[0][1], (bce, dice), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked[1], grad, rtol=1e-5, atol=1e-7)


def test_points_drawn_per_slot_equal_the_same_points_given():
    """mask2former_loss draws each valid slot's points when it reaches it (`lazy_points`); the loss is
    the one computed from the same draws given as arrays for every slot."""
    outputs, targets = random_outputs(8), padded(9)
    key = jax.random.key(4)
    lazy = lazy_points(key, PREDICTIONS, B, CONFIG)
    pairs = jnp.arange(B * M)
    given = []
    for layer in lazy:
        candidates, uniform = slot_points(layer.key, pairs, CONFIG)
        given.append(
            LayerPoints(layer.match, candidates.reshape(B, M, *candidates.shape[1:]), uniform.reshape(B, M, -1, 2))
        )
    total, parts = jax.jit(mask2former_loss, static_argnums=3)(outputs, targets, key, CONFIG)
    expected_total, expected = jitted_loss(outputs, targets, tuple(given), CONFIG)
    # two graphs (points drawn per slot, points given as arrays): they may differ by float rounding only
    assert float(total) == pytest.approx(float(expected_total), rel=1e-5)
    for name, value in expected.items():
        assert float(parts[name]) == pytest.approx(float(value), rel=1e-5, abs=1e-6), name


@pytest.mark.parametrize("k", [1, 5, 48, 191, 192])
def test_smallest_k_is_the_top_k_set(k):
    """The bisection selection picks the set XLA's top-k picks, ties (many equal values) included."""
    from m2f_jax.losses.points import smallest_k

    rng = np.random.default_rng(k)
    values = np.abs(rng.normal(size=(6, 192))).astype(np.float32)
    values[1] = np.round(values[1], 1)  # many ties
    values[2] = 0.0  # all equal
    values[3, ::3] = np.inf
    ours = np.asarray(jax.jit(smallest_k, static_argnums=1)(values, k))
    _, expected = jax.lax.top_k(-values, k)
    np.testing.assert_array_equal(ours, np.sort(np.asarray(expected), axis=1))
    assert np.all(np.diff(ours, axis=1) > 0)


def test_uncertain_points_are_the_reference_set():
    from m2f_jax.losses.points import select_uncertain_points_reference

    rng = np.random.default_rng(11)
    logits = rng.normal(size=(4, 8, 8)).astype(np.float32)
    candidates = rng.uniform(size=(4, 96, 2)).astype(np.float32)
    uniform = rng.uniform(size=(4, 8, 2)).astype(np.float32)
    ours = np.asarray(select_uncertain_points(logits, candidates, uniform, 24))
    reference = np.asarray(select_uncertain_points_reference(logits, candidates, uniform, 24))
    key = lambda x: np.lexsort((x[..., 1], x[..., 0]))  # noqa: E731
    for a, b in zip(ours, reference, strict=True):
        np.testing.assert_array_equal(a[:24][key(a[:24])], b[:24][key(b[:24])])
        np.testing.assert_array_equal(a[24:], b[24:])
