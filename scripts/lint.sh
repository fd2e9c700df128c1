#!/usr/bin/env bash
# The linters CI runs before the tests: ruff's rules (pyproject.toml) and its formatter, in check mode.
# `bash scripts/lint.sh --fix` applies the safe fixes and formats instead.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh lint
if [ "${1:-}" = "--fix" ]; then
  ruff check --fix .
  ruff format .
else
  ruff check .
  ruff format --check .
fi
