"""Starting a run from a Mask2Former checkpoint trained on another label set (`model.init_from`).

Everything is loaded except the class head (`class_predictor`, one output per label plus the
no-object output), whose outputs mean the checkpoint's labels. When the label sets differ the head is
re-initialised as a new model's is; with `keep_matching_labels`, the outputs of labels present in
both sets (matched by name, ignoring case and surrounding spaces) and the no-object output keep their
trained weights, so e.g. "person" starts from what the COCO model learnt of persons. Placeholder
names (LABEL_i, what a config without names gets) match nothing: they say nothing about the class.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import numpy as np
from flax import nnx

from m2f_jax.config import Mask2FormerConfig
from m2f_jax.modeling import Mask2FormerForUniversalSegmentation
from m2f_jax.modeling.mask2former import class_predictor

HEAD = "class_predictor"
_PLACEHOLDER = re.compile(r"LABEL_\d+")


def _key(name: str) -> str | None:
    name = name.strip()
    return None if _PLACEHOLDER.fullmatch(name) else name.casefold()


def matching_labels(source: Mapping[int, str], target: Mapping[int, str]) -> dict[int, int]:
    """{target label: source label} for the names both label sets hold once (placeholders excluded)."""

    def unique(labels: Mapping[int, str]) -> dict[str, int]:
        keys = [(_key(name), i) for i, name in labels.items()]
        counts: dict[str | None, int] = {}
        for k, _ in keys:
            counts[k] = counts.get(k, 0) + 1
        return {k: i for k, i in keys if k is not None and counts[k] == 1}

    by_name = unique(source)
    return {t: by_name[k] for k, t in unique(target).items() if k in by_name}


def transfer_class_head(
    kernel: np.ndarray,
    bias: np.ndarray,
    fresh_kernel: np.ndarray,
    fresh_bias: np.ndarray,
    matches: Mapping[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """The new head (kernel (hidden, labels + 1), bias): `fresh_*` with the columns of the matched labels
    (and the last, no-object column when any label matches) copied from the checkpoint's head."""
    kernel_out, bias_out = np.array(fresh_kernel, copy=True), np.array(fresh_bias, copy=True)
    if matches:
        rows = [(t, s) for t, s in matches.items()] + [(fresh_bias.shape[0] - 1, bias.shape[0] - 1)]
        targets, sources = (np.array(x) for x in zip(*rows, strict=True))
        kernel_out[:, targets] = kernel[:, sources]
        bias_out[targets] = bias[sources]
    return kernel_out, bias_out


def load_for_labels(
    source: str | os.PathLike,
    config: Mask2FormerConfig,
    seed: int,
    keep_matching_labels: bool = True,
) -> tuple[Mask2FormerForUniversalSegmentation, list[str]]:
    """(the model of `config` with the weights of checkpoint `source`, lines saying what was loaded and
    what re-initialised). `config` is the checkpoint's architecture with the run's labels and loss
    settings (see experiment.model_config); anything else that differs is refused by the shape checks."""
    from m2f_jax.weights import from_pretrained, model_from_params, model_params

    pretrained = from_pretrained(source, seed=seed)
    params = model_params(pretrained)
    old, new = pretrained.config.id2label, config.id2label
    if old == new:
        return model_from_params(config, params, seed), [
            f"model.init_from: every weight loaded from {os.fspath(source)} (the same {len(new)} labels)"
        ]
    head = class_predictor(config, nnx.Rngs(params=seed))
    matches = matching_labels(old, new) if keep_matching_labels else {}
    kernel, bias = transfer_class_head(
        params[f"{HEAD}.kernel"], params[f"{HEAD}.bias"], np.asarray(head.kernel[...]), np.asarray(head.bias[...]),
        matches,
    )  # fmt: skip
    params[f"{HEAD}.kernel"], params[f"{HEAD}.bias"] = kernel, bias
    lines = [
        f"model.init_from: every weight loaded from {os.fspath(source)} except the class head ({HEAD}): the "
        f"checkpoint's {len(old)} labels are not the data's {len(new)}, so it is re-initialised",
    ]
    if matches:
        names = ", ".join(f"{new[t]!r} (was {s})" for t, s in sorted(matches.items()))
        lines.append(f"  kept the trained outputs of {len(matches)} labels present in both (by name): {names}")
        lines.append("  kept the trained no-object output")
        fresh = [new[t] for t in sorted(set(new) - set(matches))]
        if fresh:
            lines.append(f"  re-initialised the outputs of {len(fresh)} labels: {', '.join(map(repr, fresh))}")
    elif keep_matching_labels:
        lines.append("  no label name is in both sets: the whole head is re-initialised")
    else:
        lines.append("  model.keep_matching_labels=False: the whole head is re-initialised")
    return model_from_params(config, params, seed), lines
