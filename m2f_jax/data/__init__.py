"""Data sources and the batching that feeds a jitted training step."""

from m2f_jax.data.batching import TASKS, TrainBatches
from m2f_jax.data.synthetic import SyntheticDataset

__all__ = ["TASKS", "SyntheticDataset", "TrainBatches"]
