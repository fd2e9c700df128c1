#!/usr/bin/env bash
# Re-resolves the newest releases that pyproject.toml's ranges admit, in a scratch venv, and writes
# them to constraints.txt. Run deliberately (not in CI), then run the suite and the demo, and commit
# constraints.txt with the versions in README.md's "Tested with" line only if both pass.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
"${PYTHON:-python3}" -m venv "$scratch/venv"
"$scratch/venv/bin/python" -m pip install --quiet --upgrade pip
"$scratch/venv/bin/python" -m pip install --quiet ".[test,lint]"
{
  echo "# Versions the suite and the demo are known to pass with; scripts/setup_env.sh installs these."
  echo "# Written by scripts/refresh_constraints.sh; pyproject.toml keeps the compatible ranges."
  # A local build tag (torch's +cpu) is dropped: '==2.13.0' admits the CPU build and no other.
  "$scratch/venv/bin/python" -m pip freeze --exclude-editable | grep -v -i '^m2f-jax' | sed -E 's/\+[a-z0-9.]+$//'
} > constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
