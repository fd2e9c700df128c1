#!/usr/bin/env python
"""Segments an image or a folder of images: `python predict.py --help` (installed: `m2f-predict`)."""

import sys

from m2f_jax.apps.predict import main

if __name__ == "__main__":
    sys.exit(main())
