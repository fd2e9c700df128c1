"""What `pip install m2f-jax` gives: the four commands, the shipped configs, and a dependency list that
names every package the code imports."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import os
import subprocess
import sys
import tomllib

import pytest

from m2f_jax import configs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    PROJECT = tomllib.load(f)["project"]


def requirement_name(requirement: str) -> str:
    name = requirement.split(";")[0]
    for stop in "<>=!~[ ":
        name = name.split(stop)[0]
    return name.strip().lower().replace("_", "-")


@pytest.mark.parametrize("command", ["m2f-train", "m2f-eval", "m2f-predict", "m2f-convert"])
def test_console_scripts_point_at_callables(command):
    module, _, function = PROJECT["scripts"][command].partition(":")
    assert callable(getattr(importlib.import_module(module), function))


def test_installed_commands_run_outside_a_checkout(tmp_path):
    """The README's set-up installs the package; its commands then work from any folder."""
    bin_dir = os.path.dirname(sys.executable)
    # argparse's --help exits with 0, absl's (train, eval) with 1; each prints its command's docstring.
    commands = [
        ("m2f-predict", 0, "Segments an image"),
        ("m2f-convert", 0, "Convert a Hugging"),
        ("m2f-train", 1, "Trains Mask2Former"),
        ("m2f-eval", 1, "Evaluates a model"),
    ]
    for command, status, says in commands:
        path = os.path.join(bin_dir, command)
        assert os.path.exists(path), f"{command} is not installed: reinstall with `pip install -e .`"
        result = subprocess.run([path, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert result.returncode == status, result.stderr
        assert says in result.stdout, result.stdout


def test_shipped_configs_by_name():
    assert "synthetic" in configs.names()
    path = os.path.join(configs.FOLDER, "synthetic.py")
    assert configs.resolve_argv(["x", "--config", "synthetic", "--workdir", "w"]) == [
        "x",
        "--config",
        path,
        "--workdir",
        "w",
    ]
    assert configs.resolve_argv(["x", "--config=synthetic:arg"]) == ["x", f"--config={path}:arg"]
    unchanged = ["x", "--config", "configs/synthetic.py", "--config=elsewhere", "--config.steps=3"]
    assert configs.resolve_argv(unchanged) == unchanged
    assert os.path.samefile(os.path.join(REPO, "configs", "synthetic.py"), path)  # the checkout's configs/ link


def third_party_imports() -> set[str]:
    """Top-level names of every module the package imports, at any depth of its code."""
    names = set()
    for folder, _, files in os.walk(os.path.join(REPO, "m2f_jax")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name)) as f:
                    tree = ast.parse(f.read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        names.update(alias.name.split(".")[0] for alias in node.names)
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("m2f_jax", "__future__")}


def test_every_imported_package_is_declared():
    declared = {requirement_name(r) for r in PROJECT["dependencies"]}
    optional = {requirement_name(r) for extra in PROJECT["optional-dependencies"].values() for r in extra}
    distributions = importlib.metadata.packages_distributions()
    for module in sorted(third_party_imports()):
        names = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        # jaxlib comes with jax; torch and transformers are optional (imported only where used).
        assert names & (declared | optional), f"{module} ({names}) is imported but not declared in pyproject.toml"
