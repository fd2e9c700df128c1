# Creates .venv (if missing) and installs the project with the given extras; meant to be sourced.
# torch is pinned to 2.13.0, the CPU build the tests need.
extras="${1:-}"
python_bin="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
source .venv/bin/activate
if [ -n "$extras" ]; then
  python -m pip install --quiet -e ".[${extras}]"
else
  python -m pip install --quiet -e .
fi
