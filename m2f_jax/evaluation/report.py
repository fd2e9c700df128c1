"""The evaluation results as text: one line per task, and per-class tables."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# The numbers each task's line shows, in order (all in percent).
HEADLINE = {
    "panoptic": ("PQ", "SQ", "RQ", "PQ_th", "PQ_st"),
    "instance": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
    "semantic": ("mIoU", "fwIoU", "mAcc", "pAcc"),
}
# Per-class columns of each task's table.
PER_CLASS = {"panoptic": ("PQ", "SQ", "RQ", "TP", "FP", "FN"), "semantic": ("IoU", "Acc")}


def _number(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    return "-" if value is None or math.isnan(value) else f"{value:.1f}"


def summary(metrics: Mapping[str, Any]) -> list[str]:
    """One line per evaluated task, e.g. "panoptic  PQ 59.4  SQ 80.1 ..."; instance adds box AP."""
    lines = []
    for task, names in HEADLINE.items():
        if task not in metrics:
            continue
        m = metrics[task]
        line = f"{task:<9} " + "  ".join(f"{name} {_number(m[name])}" for name in names)
        if task == "instance" and "box" in m:
            line += f"  | box AP {_number(m['box']['AP'])}"
        lines.append(line)
    return lines


def per_class_table(metrics: Mapping[str, Any], task: str) -> str:
    """A fixed-width table of the task's per-class numbers ("-": the class is absent from both the
    ground truth and the predictions, so the metric is undefined)."""
    per_class = metrics[task]["per_class"]
    if task == "instance":
        columns, rows = ("AP",), {name: {"AP": value} for name, value in per_class.items()}
    else:
        columns, rows = PER_CLASS[task], per_class
    width = max([len("class"), *(len(name) for name in rows)])
    lines = [f"{'class':<{width}}  " + "  ".join(f"{c:>6}" for c in columns)]
    for name, values in rows.items():
        lines.append(f"{name:<{width}}  " + "  ".join(f"{_number(values[c]):>6}" for c in columns))
    return "\n".join(lines)
