"""The command-line tools (m2f-train, m2f-eval, m2f-predict, m2f-convert), importable so that an
installed package runs them outside a checkout."""
