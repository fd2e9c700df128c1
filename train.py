#!/usr/bin/env python
"""`python train.py --help` in a checkout; installed, the same command is `m2f-train` (m2f_jax/apps/train.py)."""

from m2f_jax.apps.train import run

if __name__ == "__main__":
    run()
