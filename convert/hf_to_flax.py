#!/usr/bin/env python
"""Converts a Hugging Face Mask2Former checkpoint to m2f_jax's format (see --help)."""

import sys

from m2f_jax.conversion.cli import main

if __name__ == "__main__":
    sys.exit(main())
