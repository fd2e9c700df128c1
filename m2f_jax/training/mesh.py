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


ENV_VARS = ("M2F_COORDINATOR", "M2F_NUM_PROCESSES", "M2F_PROCESS_ID")


def cluster_environment() -> tuple[str, int] | None:
    """(name, process count) of the cluster environment that `jax.distributed.initialize()` would
    take its settings from here (SLURM, Open MPI, Cloud TPU, Kubernetes: JAX's own detection, in
    JAX's order), or None outside any. Kubernetes counts only in an indexed Job (JOB_COMPLETION_INDEX
    set, as JAX requires), so that any other pod with the kubernetes package trains alone."""
    import warnings

    from jax._src import clusters  # JAX's detectors; no public API lists them

    with warnings.catch_warnings():  # "Kubernetes detected, but the kubernetes package is not installed"
        warnings.simplefilter("ignore")
        for env in clusters.ClusterEnv._cluster_types:
            if env.opt_in_only_method or (env.__name__ == "K8sCluster" and "JOB_COMPLETION_INDEX" not in os.environ):
                continue
            if env.is_env_present():
                return env.name or env.__name__, env.get_process_count()
    return None


def _explicit_settings() -> tuple[str | None, int | None, int | None]:
    """(coordinator, process count, process id) from the M2F_* variables, checked; a count of 1
    gives (None, 1, 0)."""
    present = {name: os.environ[name] for name in ENV_VARS if os.environ.get(name)}
    if not present:
        return None, None, None

    def integer(name: str) -> int | None:
        if name not in present:
            return None
        try:
            return int(present[name])
        except ValueError:
            raise ValueError(f"{name} must be an integer, got {present[name]!r}") from None

    count, index = integer("M2F_NUM_PROCESSES"), integer("M2F_PROCESS_ID")
    if count == 1 and index in (None, 0):
        return None, 1, 0
    missing = [name for name in ENV_VARS if name not in present]
    if missing:
        raise ValueError(f"several processes need all of {', '.join(ENV_VARS)}; got {present}, missing {missing}")
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"need M2F_NUM_PROCESSES >= 1 and 0 <= M2F_PROCESS_ID < M2F_NUM_PROCESSES, got {present}")
    return present["M2F_COORDINATOR"], count, index


def initialize_distributed(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> str | None:
    """Starts `jax.distributed` when several processes train together, before any device is used;
    returns how it found them (None: a single process, jax.distributed left alone).

    In order: the arguments, or the M2F_COORDINATOR / M2F_NUM_PROCESSES / M2F_PROCESS_ID environment
    variables (any machines); else a cluster environment JAX recognises (SLURM, Open MPI, Cloud TPU
    pods, Kubernetes), from which `jax.distributed.initialize()` reads its own settings; a cluster
    job of one process starts nothing. On CPUs the collectives use gloo."""
    if coordinator_address is None and num_processes is None and process_id is None:
        coordinator_address, num_processes, process_id = _explicit_settings()
        how = "M2F_* environment variables"
    else:
        how = "arguments"
    if num_processes == 1:
        return None
    if coordinator_address is None and num_processes is None and process_id is None:
        cluster = cluster_environment()
        if cluster is None or cluster[1] <= 1:
            return None
        how = f"{cluster[0]} cluster environment ({cluster[1]} processes)"
    if jax.distributed.is_initialized():
        return how
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return how


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


def count_everywhere(count: int) -> int:
    """The sum of `count` over all processes (each reads its own shard of the data); every process must
    call it at the same point, as any collective."""
    if jax.process_count() == 1:
        return count
    from jax.experimental import multihost_utils

    return int(np.sum(multihost_utils.process_allgather(np.int32(count))))


def gather_objects(value: Any) -> list[Any]:
    """Every process's `value` (any picklable object), in process order, on every process: e.g. the
    evaluators of each process's shard. A collective: every process must call it at the same point."""
    if jax.process_count() == 1:
        return [value]
    import pickle

    from jax.experimental import multihost_utils

    data = np.frombuffer(pickle.dumps(value), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int64(data.size))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)  # allgather needs one shape on every process
    padded[: data.size] = data
    everyone = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [pickle.loads(row[:size].tobytes()) for row, size in zip(everyone, sizes, strict=True)]
