"""Orbax checkpoints of the whole training state and the data iterator's position.

A checkpoint holds the TrainState (parameters, optimizer state, step, the model's RNG streams and
the loss key; typed PRNG keys are stored as their raw key data) and the iterator's state as JSON,
so a resumed run sees the same batches and the same randomness as an uninterrupted one.

Saves are asynchronous: `save` returns once the arrays are copied to host memory, and orbax writes
them in a background thread while training goes on (the next save, `wait` and `close` wait for
it). Orbax writes a step into `N.orbax-checkpoint-tmp` and renames it to `N` only after every
file, and a commit_success.txt marker, are written; a folder with the temporary suffix is never
listed as a step, so a run killed while saving restores its previous checkpoint. A leftover is
removed before the next save (orbax's cleanup_tmp_directories; saving that step again replaces it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def keys_to_data(tree: Any) -> Any:
    """Typed PRNG keys as their raw key data (what can be stored or sent between processes)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def data_to_keys(tree: Any, like: Any) -> Any:
    """Raw key data back to typed keys (of the default PRNG implementation, which made them)."""
    return jax.tree.map(lambda x, ref: jax.random.wrap_key_data(x) if _is_key(ref) else x, tree, like)


def _abstract(tree: Any) -> Any:
    """ShapeDtypeStructs (with the arrays' shardings) of the stored form of `tree` (arrays or
    ShapeDtypeStructs)."""
    stored = jax.eval_shape(keys_to_data, tree)
    shardings = jax.tree.map(lambda x: getattr(x, "sharding", None), tree)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), stored, shardings)


class Checkpoints:
    """The checkpoints of one run, under `workdir/checkpoints`, keeping the last `keep` (>= 1).
    create=False: read an existing run's checkpoints (nothing is created or cleaned up)."""

    def __init__(self, workdir: str, keep: int = 3, create: bool = True):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be >= 1 (0 would delete every checkpoint), got {keep!r}")
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        if not create and not os.path.isdir(self.directory):
            raise FileNotFoundError(f"no checkpoints in {workdir} (expected {self.directory})")
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=create, enable_async_checkpointing=True, cleanup_tmp_directories=create
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_state: Mapping[str, Any]) -> None:
        """Starts saving `step` (after the previous save has finished) and returns once the arrays
        are on the host, so the caller may donate them to the next step."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(keys_to_data(state)), data=ocp.args.JsonSave(dict(data_state))
            ),
            force=True,
        )

    def wait(self) -> None:
        """Blocks until the save in flight, if any, is committed (raises its error, if any)."""
        self.manager.wait_until_finished()

    def restore(self, like: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """The state saved at `step` (default: the latest), shaped and sharded like `like` (arrays
        or ShapeDtypeStructs with shardings), and the data iterator's state."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(like)), data=ocp.args.JsonRestore())
        )
        return data_to_keys(restored["state"], like), dict(restored["data"])

    def close(self) -> None:
        """Waits for the save in flight, then releases orbax's threads."""
        self.manager.close()
