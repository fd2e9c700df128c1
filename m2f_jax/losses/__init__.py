"""Training losses: Hungarian matching on sampled points, then CE + mask BCE + dice on every prediction."""

from m2f_jax.losses.criterion import (
    LayerPoints,
    LossConfig,
    check_targets,
    draw_points,
    lazy_points,
    loss_from_points,
    mask2former_loss,
    slot_points,
)
from m2f_jax.losses.matcher import assign, match, matching_cost
from m2f_jax.losses.points import point_sample, point_sample_shared, select_uncertain_points, uncertainty_points

__all__ = [
    "LayerPoints",
    "LossConfig",
    "assign",
    "check_targets",
    "draw_points",
    "lazy_points",
    "loss_from_points",
    "mask2former_loss",
    "match",
    "matching_cost",
    "point_sample",
    "point_sample_shared",
    "select_uncertain_points",
    "slot_points",
    "uncertainty_points",
]
