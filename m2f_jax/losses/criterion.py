"""The Mask2Former training loss: matching, then class cross-entropy and point-sampled mask BCE + dice,
on every prediction of the decoder (the auxiliary ones and the final one, or with `auxiliary=False`
the final one alone), summed.

Per prediction:
- queries are matched to the valid target slots (`matcher.match`);
- cross-entropy over the K+1 classes of every query of the batch, the unmatched ones targeting
  "no object", weighted (weight `no_object_weight` on "no object") with torch's weighted mean
  sum(w * nll) / sum(w);
- for each matched (query, target) pair, sigmoid BCE (mean over points) and dice on points chosen by
  uncertainty (`points.select_uncertain_points`), summed and divided by the number of valid target
  masks in the batch (at least 1).
All sums are over the global batch, so the result does not depend on how the batch is split. Under
jit over a device mesh the loss runs per device inside `shard_map` (`axis_name`: the batch's mesh
axes): each device matches and samples its own images, and only the sums and counts are added up
over the devices (`jax.lax.psum`), as the original adds up its mask count. The random draws are
indexed by the image's place in the global batch, so each device draws what one device would.
Everything is computed in float32 whatever the logits' dtype; no gradient flows through the matching
or the choice of points.

The random points are drawn up front (`draw_points`) and `loss_from_points` is a pure function of
them, which is what the parity test against Hugging Face's `Mask2FormerLoss` feeds.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from m2f_jax.losses.chunks import CHUNK, map_live_chunks, valid_first
from m2f_jax.losses.matcher import SOLVERS, match
from m2f_jax.losses.points import point_sample, sampling_counts, select_uncertain_points
from m2f_jax.processing.targets import PaddedTargets

PART_NAMES = ("loss_cross_entropy", "loss_mask", "loss_dice")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The original recipe's loss settings (the matcher uses the same three weights).

    A model's `Mask2FormerConfig` holds the same settings under HF's names (`from_model_config`); a
    training run takes them from there, so a saved config.json records the loss it was trained with."""

    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    num_points: int = 12544  # 112 * 112, for the matcher and for the mask losses
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    matcher: str = "hungarian"  # or "scipy" (host callback; not on TPU)
    auxiliary: bool = True  # the loss of every earlier prediction too (HF: use_auxiliary_loss)

    @classmethod
    def from_model_config(cls, config, matcher: str = "hungarian") -> LossConfig:
        """The settings a `Mask2FormerConfig` holds under HF's field names."""
        return cls(
            class_weight=config.class_weight,
            mask_weight=config.mask_weight,
            dice_weight=config.dice_weight,
            no_object_weight=config.no_object_weight,
            num_points=config.train_num_points,
            oversample_ratio=config.oversample_ratio,
            importance_sample_ratio=config.importance_sample_ratio,
            matcher=matcher,
            auxiliary=config.use_auxiliary_loss,
        )

    def __post_init__(self):
        if self.matcher not in SOLVERS:
            raise ValueError(f"matcher must be one of {SOLVERS}, got {self.matcher!r}")
        if self.num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {self.num_points}")
        if not 0.0 <= self.importance_sample_ratio <= 1.0:
            raise ValueError(f"importance_sample_ratio must be in [0, 1], got {self.importance_sample_ratio}")
        weights = (self.class_weight, self.mask_weight, self.dice_weight, self.no_object_weight)
        if min(weights) < 0:
            raise ValueError(f"loss weights must be >= 0, got {weights}")
        _counts(self)


def _counts(config: LossConfig) -> tuple[int, int, int]:
    return sampling_counts(config.num_points, config.oversample_ratio, config.importance_sample_ratio)


class LayerPoints(NamedTuple):
    """The uniform draws one prediction's loss uses, all (x, y) in [0, 1].

    match: (B, P, 2), the matcher's points of each image. candidates: (B, M, C, 2) and random: (B, M, R, 2),
    per target slot, for the uncertainty-chosen points of the mask losses; or both None and `key`: each
    slot's are then drawn when needed (`slot_points`), for the valid slots alone.
    """

    match: jnp.ndarray
    candidates: jnp.ndarray | None
    random: jnp.ndarray | None
    key: jax.Array | None = None
    first_image: jax.Array | int = 0  # the global batch index of the first image here (see `slot_points`)


def slot_points(key: jax.Array, pairs: jnp.ndarray, config: LossConfig) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The candidates (N, C, 2) and uniform points (N, R, 2) of the flat slot indices `pairs` (N,)
    (image * M + slot, the image's index in the global batch), each slot's own draw from `key` whatever
    else is drawn."""
    num_candidates, _, num_random = _counts(config)

    def one(pair):
        slot_key = jax.random.fold_in(key, pair)
        return (
            jax.random.uniform(jax.random.fold_in(slot_key, 0), (num_candidates, 2)),
            jax.random.uniform(jax.random.fold_in(slot_key, 1), (num_random, 2)),
        )

    return jax.vmap(one)(pairs)


def draw_points(
    key: jax.Array, num_predictions: int, batch: int, num_slots: int, config: LossConfig
) -> tuple[LayerPoints, ...]:
    """Independent uniform draws for each of `num_predictions` predictions."""
    num_candidates, _, num_random = _counts(config)
    points = []
    for layer_key in jax.random.split(key, num_predictions):
        k_match, k_candidates, k_random = jax.random.split(layer_key, 3)
        points.append(
            LayerPoints(
                match=jax.random.uniform(k_match, (batch, config.num_points, 2)),
                candidates=jax.random.uniform(k_candidates, (batch, num_slots, num_candidates, 2)),
                random=jax.random.uniform(k_random, (batch, num_slots, num_random, 2)),
            )
        )
    return tuple(points)


def lazy_points(
    key: jax.Array, num_predictions: int, batch: int, config: LossConfig, first_image: jax.Array | int = 0
) -> tuple[LayerPoints, ...]:
    """`draw_points` with the slots' points left to be drawn by `slot_points` when the loss reaches them:
    drawing every slot's 3 x 12544 candidates up front, padded slots included, took longer than the
    rest of the loss on a CPU (bench/micro.py --only loss). Every draw is indexed by the image's place
    in the global batch (`first_image` + i), so a device holding part of the batch draws what one
    device holding all of it would."""
    images = first_image + jnp.arange(batch)
    points = []
    for layer_key in jax.random.split(key, num_predictions):
        k_match, k_slots = jax.random.split(layer_key)
        match = jax.vmap(lambda i, k=k_match: jax.random.uniform(jax.random.fold_in(k, i), (config.num_points, 2)))
        points.append(LayerPoints(match(images), None, None, key=k_slots, first_image=first_image))
    return tuple(points)


def _total(x: jnp.ndarray, axis_name) -> jnp.ndarray:
    """x summed over the devices of `axis_name` (the batch's mesh axes under shard_map), or x itself."""
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def _cross_entropy(
    class_logits: jnp.ndarray, labels: jnp.ndarray, query: jnp.ndarray, no_object_weight: float, axis_name=None
):
    """Weighted CE of every query; a query's target is its matched slot's label, else "no object" (K).
    An out-of-range label reads as NaN (gather fill), so it cannot pass unnoticed."""
    num_queries, num_classes = class_logits.shape[1:]
    no_object = num_classes - 1
    assigned = query[:, :, None] == jnp.arange(num_queries)  # (B, M, Q); slot -1 matches nothing
    target = jnp.where(assigned.any(1), jnp.sum(jnp.where(assigned, labels[:, :, None], 0), axis=1), no_object)
    log_probs = jax.nn.log_softmax(class_logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, target[..., None], axis=-1, mode="fill", fill_value=jnp.nan)[..., 0]
    weight = jnp.where(target == no_object, no_object_weight, 1.0)
    total_weight = _total(jnp.sum(weight), axis_name)
    return _total(jnp.sum(weight * nll), axis_name) / jnp.maximum(total_weight, jnp.finfo(jnp.float32).tiny)


def _pair_losses(logits: jnp.ndarray, labels: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Sigmoid BCE (mean over points) and dice of logits and 0/1 labels (N, P) -> (N,), (N,)."""
    bce = jnp.mean(jax.nn.softplus(logits) - logits * labels, axis=-1)
    probs = jax.nn.sigmoid(logits)
    dice = 1.0 - (2.0 * jnp.sum(probs * labels, -1) + 1.0) / (jnp.sum(probs, -1) + jnp.sum(labels, -1) + 1.0)
    return bce, dice


def _mask_losses(
    mask_logits: jnp.ndarray,
    targets: PaddedTargets,
    query: jnp.ndarray,
    points: LayerPoints,
    config: LossConfig,
    chunk: int = CHUNK,
    axis_name=None,
):
    """(BCE, dice) of the matched pairs on their uncertainty-chosen points, each summed over the valid
    slots of the batch and divided by their count (at least 1).

    Only the valid slots are computed, `chunk` at a time (`chunks.valid_first`): a padded slot's points,
    top-k and losses would be thrown away. The matched masks are gathered once, outside the loop, so the
    gradient flows back through one gather of whole maps. Points given as arrays are read per slot;
    given as a key, each valid slot's are drawn here (`slot_points`)."""
    batch, num_slots = query.shape
    n = batch * num_slots
    valid = jnp.asarray(targets.valid).reshape(n)
    pairs, live = valid_first(valid, chunk)  # (chunks, chunk)
    matched_query = jnp.maximum(query.reshape(n), 0)[pairs]  # padded slots read query 0, then count for nothing
    maps = jnp.asarray(mask_logits)[pairs // num_slots, matched_query]  # (chunks, chunk, h, w)
    masks = jnp.asarray(targets.masks).reshape(n, *targets.masks.shape[2:])
    _, num_uncertain, _ = _counts(config)
    if points.candidates is None:

        def draw(pairs_c):
            return slot_points(points.key, pairs_c + points.first_image * num_slots, config)

    else:
        candidates = jnp.asarray(points.candidates).reshape(n, *points.candidates.shape[2:])
        random = jnp.asarray(points.random).reshape(n, *points.random.shape[2:])

        def draw(pairs_c):
            return candidates[pairs_c], random[pairs_c]

    def losses(live_c, inputs):
        maps_c, pairs_c = inputs
        coords = select_uncertain_points(maps_c, *draw(pairs_c), num_uncertain)
        bce, dice = _pair_losses(point_sample(maps_c, coords), point_sample(masks[pairs_c], coords))
        return jnp.stack([jnp.sum(jnp.where(live_c, bce, 0.0)), jnp.sum(jnp.where(live_c, dice, 0.0))])

    sums = _total(jnp.sum(map_live_chunks(losses, live, (maps, pairs)), axis=0), axis_name)
    num_masks = jnp.maximum(_total(jnp.sum(valid).astype(jnp.float32), axis_name), 1.0)
    return sums[0] / num_masks, sums[1] / num_masks


def _mask_losses_reference(
    mask_logits: jnp.ndarray,
    targets: PaddedTargets,
    query: jnp.ndarray,
    points: LayerPoints,
    config: LossConfig,
    axis_name=None,
):
    """`_mask_losses` computed for every slot, padded ones included, from points given as arrays (the plain
    version it is tested against)."""
    _, num_uncertain, _ = _counts(config)
    batch, num_slots = query.shape
    index = jnp.maximum(query, 0)[:, :, None, None]  # padded slots read query 0, then count for nothing
    matched = jnp.take_along_axis(mask_logits, index, axis=1).reshape(batch * num_slots, *mask_logits.shape[2:])
    flat = lambda x: x.reshape(batch * num_slots, *x.shape[2:])  # noqa: E731
    coords = select_uncertain_points(matched, flat(points.candidates), flat(points.random), num_uncertain)
    bce, dice = _pair_losses(point_sample(matched, coords), point_sample(flat(targets.masks), coords))
    valid = targets.valid.reshape(-1)
    num_masks = jnp.maximum(_total(jnp.sum(valid).astype(jnp.float32), axis_name), 1.0)
    sums = _total(jnp.stack([jnp.sum(jnp.where(valid, bce, 0.0)), jnp.sum(jnp.where(valid, dice, 0.0))]), axis_name)
    return sums[0] / num_masks, sums[1] / num_masks


def prediction_loss(
    class_logits: jnp.ndarray,
    mask_logits: jnp.ndarray,
    targets: PaddedTargets,
    points: LayerPoints,
    config: LossConfig,
    axis_name=None,
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """(cross-entropy, mask BCE, dice), unweighted, of one prediction: class logits (B, Q, K+1), mask
    logits (B, Q, h, w)."""
    class_logits = class_logits.astype(jnp.float32)
    mask_logits = mask_logits.astype(jnp.float32)
    query = match(
        class_logits,
        mask_logits,
        targets,
        points.match,
        class_weight=config.class_weight,
        mask_weight=config.mask_weight,
        dice_weight=config.dice_weight,
        solver=config.matcher,
    )
    ce = _cross_entropy(class_logits, targets.labels, query, config.no_object_weight, axis_name)
    return (ce, *_mask_losses(mask_logits, targets, query, points, config, axis_name=axis_name))


def _predictions(outputs, config: LossConfig) -> list[tuple[jnp.ndarray, jnp.ndarray]]:
    """(class logits, mask logits) of every prediction the loss covers: the auxiliary ones in order (unless
    `config.auxiliary` is off), the final one last."""
    final = [(outputs.class_queries_logits, outputs.masks_queries_logits)]
    if not config.auxiliary:
        return final
    return [(a["class_queries_logits"], a["masks_queries_logits"]) for a in outputs.auxiliary_logits] + final


def loss_from_points(
    outputs, targets: PaddedTargets, points: tuple[LayerPoints, ...], config: LossConfig, axis_name=None
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """`mask2former_loss` with the random points given, one `LayerPoints` per prediction the loss covers
    (auxiliary first): arrays (`draw_points`) or keys (`lazy_points`)."""
    predictions = _predictions(outputs, config)
    if len(points) != len(predictions):
        raise ValueError(f"got points for {len(points)} predictions, the outputs have {len(predictions)}")
    parts, sums = {}, jnp.zeros(3, jnp.float32)
    for i, ((class_logits, mask_logits), layer_points) in enumerate(zip(predictions, points, strict=True)):
        values = prediction_loss(class_logits, mask_logits, targets, layer_points, config, axis_name)
        suffix = "" if i == len(predictions) - 1 else f"_{i}"  # Hugging Face's names
        parts.update({name + suffix: v for name, v in zip(PART_NAMES, values, strict=True)})
        sums = sums + jnp.stack(values)
    weighted = sums * jnp.array([config.class_weight, config.mask_weight, config.dice_weight], jnp.float32)
    parts.update(weighted_cross_entropy=weighted[0], weighted_mask=weighted[1], weighted_dice=weighted[2])
    return jnp.sum(weighted), parts


def mask2former_loss(
    outputs, targets: PaddedTargets, key: jax.Array, config: LossConfig, axis_name=None
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """The total loss (a float32 scalar) and its parts.

    outputs: a `Mask2FormerOutput` (class_queries_logits (B, Q, K+1), masks_queries_logits (B, Q, h, w),
    auxiliary_logits). targets: `PaddedTargets` at the padded input resolution, masks (B, M, H, W),
    labels (B, M), valid (B, M); M <= Q. key: draws the points of every prediction.

    parts: for the final prediction "loss_cross_entropy", "loss_mask", "loss_dice" (unweighted), the same
    with suffix "_i" for auxiliary prediction i, and "weighted_cross_entropy", "weighted_mask",
    "weighted_dice": weight x sum over all predictions; the total is the sum of these three.
    Eagerly (concrete labels), the targets are checked with `check_targets` first.
    axis_name: inside `shard_map`, the mesh axes the batch is split over (see the module docstring);
    outputs and targets are then this device's images.
    """
    if not isinstance(targets.labels, jax.core.Tracer):
        check_targets(targets, outputs.class_queries_logits.shape[-1] - 1)
    batch = targets.labels.shape[0]
    first_image = 0 if axis_name is None else jax.lax.axis_index(axis_name) * batch
    points = lazy_points(key, len(_predictions(outputs, config)), batch, config, first_image)
    return loss_from_points(outputs, targets, points, config, axis_name)


def check_targets(targets: PaddedTargets, num_labels: int) -> None:
    """Host-side check of padded targets: shapes agree and every valid slot's label is in [0, num_labels).
    Raises ValueError naming the first offending image and label."""
    shape = tuple(targets.masks.shape)  # the masks stay where they are: only their shape is checked
    labels, valid = np.asarray(targets.labels), np.asarray(targets.valid)
    if len(shape) != 4 or labels.shape != shape[:2] or valid.shape != labels.shape:
        raise ValueError(
            f"targets must be masks (B, M, H, W), labels (B, M), valid (B, M); got {shape}, {labels.shape}, "
            f"{valid.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    for b in range(labels.shape[0]):
        bad = labels[b][valid[b].astype(bool) & ((labels[b] < 0) | (labels[b] >= num_labels))]
        if bad.size:
            raise ValueError(f"image {b}: label {int(bad[0])} is outside [0, {num_labels}) (num_labels={num_labels})")
