# Creates .venv (if missing) and installs the project with the given extras (comma-separated), at the
# versions in constraints.txt (known to pass; scripts/refresh_constraints.sh renews them). Meant to be
# sourced. torch is pinned to 2.13.0, the CPU build the tests need.
extras="${1:-}"
python_bin="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
source .venv/bin/activate
target="."
if [ -n "$extras" ]; then
  target=".[${extras}]"
fi
python -m pip install --quiet --constraint constraints.txt -e "$target"
if [[ ",$extras," == *",test,"* ]]; then
  # timm without torchvision (see pyproject.toml's test extra): its other needs come with the above.
  python -m pip install --quiet --no-deps --constraint constraints.txt timm
fi
