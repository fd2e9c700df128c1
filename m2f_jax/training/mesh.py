"""The device mesh, shardings of the training state and the batch, and multi-process start-up.

The mesh has two axes: 'data' (replicas that see different images) and 'fsdp' (devices that also
see different images but hold only a slice of each parameter and optimizer moment). The batch is
split over both axes. With fsdp == 1 this is plain data parallelism.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def initialize_distributed(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """Starts `jax.distributed` when several processes train together (arguments, or the
    M2F_COORDINATOR / M2F_NUM_PROCESSES / M2F_PROCESS_ID environment variables; on TPU pods and
    SLURM clusters JAX finds them itself when all three are None). On CPU the collectives use gloo."""
    coordinator_address = coordinator_address or os.environ.get("M2F_COORDINATOR")
    if num_processes is None and "M2F_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["M2F_NUM_PROCESSES"])
    if process_id is None and "M2F_PROCESS_ID" in os.environ:
        process_id = int(os.environ["M2F_PROCESS_ID"])
    if num_processes in (None, 1) and coordinator_address is None:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def make_mesh(fsdp: int = 1, devices: list | None = None) -> Mesh:
    """A ('data', 'fsdp') mesh over all devices (of all processes)."""
    devices = list(devices if devices is not None else jax.devices())
    if fsdp < 1 or len(devices) % fsdp:
        raise ValueError(f"fsdp={fsdp} must divide the number of devices ({len(devices)})")
    return Mesh(np.asarray(devices).reshape(len(devices) // fsdp, fsdp), BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def state_sharding(mesh: Mesh, abstract_state: Any, min_size: int = 2**14) -> Any:
    """Shardings for a tree of arrays (parameters, optimizer moments): with an 'fsdp' axis, each
    array of at least `min_size` elements is split over it along its largest axis that the axis
    size divides; everything else is replicated. Moments get the sharding of their parameter,
    because the rule depends on the shape only."""
    n = mesh.shape["fsdp"]

    def spec(leaf) -> NamedSharding:
        shape = getattr(leaf, "shape", ())
        if n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
            return replicated(mesh)
        for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
            if shape[axis] % n == 0:
                return NamedSharding(mesh, P(*[None] * axis, "fsdp"))
        return replicated(mesh)

    return jax.tree.map(spec, abstract_state)


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows -> global arrays split over the mesh (the global batch is the
    concatenation of every process's rows in process order)."""
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value)) for name, value in local_batch.items()
    }
