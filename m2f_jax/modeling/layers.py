"""How repeated layers run: unrolled or scanned, and with which rematerialisation policy.

A stack of identical units (a pair of Swin blocks, a deformable encoder layer, a round of three
decoder layers) can run as a Python loop (one copy of the unit in the compiled program per layer)
or as one `jax.lax.scan` over the units' stacked parameters (one copy whatever the depth, so the
compile time stops growing with depth). The parameters stay stored per layer under HF's names;
only the computation stacks them, so checkpoints and converters see the same tree either way.
Both modes draw the same dropout masks: each unit's RNG streams are scanned with its parameters
and written back afterwards.

Rematerialisation keeps only each unit's inputs for the backward pass and recomputes the rest
there, under a named policy (`REMAT_POLICIES`) that says which intermediates may be kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

REMAT_POLICIES: dict[str, Callable[..., bool] | None] = {
    "full": None,  # keep nothing inside a unit: least memory, one more forward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep the weight matmuls' outputs
    "dots_saveable": jax.checkpoint_policies.dots_saveable,  # keep every matmul's output
}


@dataclasses.dataclass(frozen=True)
class LayerExecution:
    """`remat`: None or a name in REMAT_POLICIES; `scan`: run identical units with one lax.scan."""

    remat: str | None = None
    scan: bool = False

    def __post_init__(self):
        if self.remat is not None and self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be None or one of {sorted(REMAT_POLICIES)}, got {self.remat!r}")


UNROLLED = LayerExecution()  # the default: a Python loop, no rematerialisation


def run_units(
    units: Sequence[Any],
    apply: Callable[[Any, Any, Any], tuple[Any, Any]],
    carry: Any,
    execution: LayerExecution,
    inputs: Sequence[Any] | None = None,
) -> tuple[Any, list[Any]]:
    """Threads `carry` through `apply(unit, carry, input) -> (carry, output)` for each unit in
    order and returns the last carry and the outputs, one per unit. A unit is a module or a tuple
    of modules; `inputs` (default None each) are per-unit arrays such as a drop-path rate. `apply`
    must not depend on which unit it is given except through the unit's state and its input. With
    `execution.scan`, each run of consecutive units with the same structure is one lax.scan."""
    inputs = [None] * len(units) if inputs is None else list(inputs)
    if len(inputs) != len(units):
        raise ValueError(f"{len(units)} units but {len(inputs)} inputs")

    def pure(graphdef, state, carry, x):
        unit = nnx.merge(graphdef, state)
        carry, output = apply(unit, carry, x)
        return carry, output, nnx.state(unit, nnx.Not(nnx.Param))

    if execution.remat is not None:
        pure = jax.checkpoint(pure, static_argnums=(0,), policy=REMAT_POLICIES[execution.remat])

    outputs = []
    runs = _same_structure_runs(units) if execution.scan else [[i] for i in range(len(units))]
    for run in runs:
        group = [units[i] for i in run]
        if len(run) == 1 and execution.remat is None:
            carry, output = apply(group[0], carry, inputs[run[0]])
            outputs.append(output)
            continue
        graphdef = nnx.graphdef(group[0])
        states = [nnx.state(unit) for unit in group]
        if len(run) == 1:
            carry, output, rest = pure(graphdef, states[0], carry, inputs[run[0]])
            nnx.update(group[0], rest)
            outputs.append(output)
            continue

        def body(carry, state_and_input, graphdef=graphdef):
            state, x = state_and_input
            carry, output, rest = pure(graphdef, state, carry, x)
            return carry, (output, rest)

        stacked = _stack(states), _stack([inputs[i] for i in run])
        carry, (stacked_outputs, stacked_rest) = jax.lax.scan(body, carry, stacked)
        for k, unit in enumerate(group):
            nnx.update(unit, _index(stacked_rest, k))
            outputs.append(_index(stacked_outputs, k))
    return carry, outputs


def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _index(tree: Any, k: int) -> Any:
    return jax.tree.map(lambda leaf: leaf[k], tree)


def _same_structure_runs(units: Sequence[Any]) -> list[list[int]]:
    """Indices of consecutive units grouped while their graph definitions (structure and static
    attributes) agree."""
    runs: list[list[int]] = []
    previous = None
    for i, unit in enumerate(units):
        graphdef = nnx.graphdef(unit)
        if runs and graphdef == previous:
            runs[-1].append(i)
        else:
            runs.append([i])
        previous = graphdef
    return runs
