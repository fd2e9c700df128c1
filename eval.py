#!/usr/bin/env python
"""`python eval.py --help` in a checkout; installed, the same command is `m2f-eval` (m2f_jax/apps/eval.py)."""

from m2f_jax.apps.eval import run

if __name__ == "__main__":
    run()
