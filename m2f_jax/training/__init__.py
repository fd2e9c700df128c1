"""Training: the optax recipe, the device mesh and shardings, the jitted step, checkpoints."""
