"""Experiment configs shipped with the package (ml_collections files with `get_config()`).

In a checkout, `configs/` links here, so `--config configs/synthetic.py` works; an installed package's
tools also take a bare name: `m2f-train --config synthetic --workdir runs/x`.
"""

from __future__ import annotations

import os

FOLDER = os.path.dirname(os.path.abspath(__file__))


def names() -> list[str]:
    return sorted(n[:-3] for n in os.listdir(FOLDER) if n.endswith(".py") and not n.startswith("_"))


def resolve_argv(argv: list[str]) -> list[str]:
    """`--config NAME` / `--config=NAME` (a shipped config's name, no path) -> that config's file path;
    everything else, paths included, unchanged ("NAME:arg" suffixes are kept)."""

    def resolve(value: str) -> str:
        name, colon, rest = value.partition(":")
        if os.path.sep in name or name.endswith(".py") or name not in names():
            return value
        return os.path.join(FOLDER, name + ".py") + colon + rest

    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-config") and i + 1 < len(argv):
            out += [arg, resolve(argv[i + 1])]
            i += 2
            continue
        for prefix in ("--config=", "-config="):
            if arg.startswith(prefix):
                arg = prefix + resolve(arg[len(prefix) :])
        out.append(arg)
        i += 1
    return out
