"""The command-line tools (m2f-train, m2f-eval, m2f-predict, m2f-convert), importable so that an
installed package runs them outside a checkout."""

import sys
from collections.abc import Callable


def run_absl(main: Callable, define_flags: Callable[[], None], doc: str | None) -> None:
    """Runs an absl command: defines its flags (not on import, so that commands can share a process),
    shows `doc` for --help (absl prints the __main__ module's docstring) and lets `--config NAME` name a
    shipped config."""
    from absl import app

    from m2f_jax import configs

    define_flags()
    sys.modules["__main__"].__doc__ = doc
    app.run(main, argv=configs.resolve_argv(sys.argv))
