"""Rematerialisation of repeated layers: a layer called through `call_layer(..., remat=True)` keeps
only its inputs for the backward pass and recomputes its activations there, trading compute for
activation memory (a switch for large images or batches)."""

from __future__ import annotations

from typing import Any

from flax import nnx


def call_layer(layer: nnx.Module, *args: Any, remat: bool, static_argnums: tuple[int, ...] = ()) -> Any:
    """`layer(*args)`, under `nnx.remat` when `remat`; static_argnums index `args` (Python values
    such as shapes or the deterministic flag). RNG streams advance as without remat, and the
    recomputation in the backward pass draws the same dropout masks."""
    if not remat:
        return layer(*args)
    wrapped = nnx.remat(lambda module, *a: module(*a), static_argnums=tuple(i + 1 for i in static_argnums))
    return wrapped(layer, *args)
