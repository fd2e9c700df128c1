#!/usr/bin/env bash
# Sets up the environment (a .venv beside the code) on a fresh machine and runs the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k swin`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh test
exec python -m pytest "$@"
