"""Layout, install and the two entry points (make lab / make test) stay consistent."""
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def _names(requirements):
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def test_layout():
    for path in ("notebooks", "notebooks/solutions", "moe_tutorial", "tests", "environment.yml",
                 "README.md", "pyproject.toml", "Makefile", ".ci/run"):
        assert (ROOT / path).exists(), f"missing {path}"


def test_pyproject_dependencies():
    assert PROJECT["name"] == "moe-tutorial"
    assert PROJECT["requires-python"] == ">=3.10"
    deps = {canonicalize_name(Requirement(r).name): Requirement(r)
            for r in PROJECT["dependencies"]}
    assert set(deps) == {"numpy", "matplotlib", "ml-dtypes", "cuda-tile", "cupy-cuda13x",
                         "jupyterlab"}
    tile = deps["cuda-tile"]
    assert "tileiras" in tile.extras, "cuda-tile[tileiras] brings the compiler"
    assert "1.7.0" in tile.specifier and "1.8.0" not in tile.specifier, \
        "cuda-tile is pinned to a compatible range"
    test_extra = _names(PROJECT["optional-dependencies"]["test"])
    assert {"pytest", "nbmake", "pytest-xdist", "hypothesis", "ipykernel"} <= test_extra


def test_environment_yml_names_the_same_packages():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    conda, pip = [], []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip.extend(dep["pip"])
        else:
            conda.append(dep)
    editable = [p for p in pip if p.startswith("-e")]
    assert editable == ["-e .[test]"], "the pip section installs the project with its test extra"
    conda_names = {canonicalize_name(re.split(r"[<>=!~ ]", c, maxsplit=1)[0]) for c in conda}
    env_names = (conda_names | _names(p for p in pip if not p.startswith("-"))) - {"python", "pip"}
    wanted = _names(PROJECT["dependencies"]) | _names(PROJECT["optional-dependencies"]["test"])
    assert env_names == wanted, (f"only in environment.yml: {env_names - wanted}; "
                                 f"only in pyproject.toml: {wanted - env_names}")


def test_makefile_targets():
    make = (ROOT / "Makefile").read_text()
    for target in ("lab:", "test:", "$(STAMP): pyproject.toml"):
        assert re.search(rf"^{re.escape(target)}", make, re.M), f"Makefile lacks {target}"
    assert "jupyter lab $(LAB)/" in make and re.search(r"^LAB\s*\?=\s*lab$", make, re.M), \
        "make lab opens the working copy lab/, never the committed notebooks"
    assert re.search(r"^reset:", make, re.M), "make reset NB=... restores one notebook"
    assert "/lab/" in (ROOT / ".gitignore").read_text().splitlines()
    assert re.search(r"pytest -n \$\(JOBS\) --nbmake notebooks tests", make)
    assert "-m venv" in make and '-e ".[test]"' in make


def test_make_dry_run_plans_the_two_commands():
    """``make -n`` shows what would run, without running it."""
    for target, expected in (("test", "--nbmake notebooks tests"), ("lab", "jupyter lab")):
        out = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert expected in out.stdout


def test_ci_script():
    script = ROOT / ".ci" / "run"
    assert os.access(script, os.X_OK), ".ci/run must be executable"
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in text
    assert re.search(r"^make test\b", text, re.M)


def test_readme_starts_with_the_two_commands_and_lists_every_notebook():
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```")[1]
    assert "make lab" in first_block and "make test" in first_block
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        assert f"notebooks/{nb.name}" in readme, f"README's table lacks {nb.name}"


def test_installed_as_a_package_not_found_by_path(tmp_path):
    """nbmake runs notebooks from their own folder: the package must be installed."""
    code = "import moe_tutorial, os; print(os.path.dirname(moe_tutorial.__file__))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == ROOT / "moe_tutorial"
    from importlib.metadata import distribution
    assert distribution("moe-tutorial").metadata["Name"] == "moe-tutorial"


def test_notebook_kernel_is_this_interpreter():
    """nbmake starts the kernelspec named python3: it must be this virtual environment."""
    from jupyter_client.manager import KernelManager
    cmd = KernelManager(kernel_name="python3").format_kernel_cmd()
    assert Path(cmd[0]).resolve() == Path(sys.executable).resolve()


@pytest.mark.parametrize("name", ["launch", "to_numpy", "array_module", "backend", "describe",
                                  "get_xp", "vector_add", "vector_add_kernel", "check",
                                  "compile", "tiles", "device", "emulator"])
def test_public_api_at_top_level(name):
    import moe_tutorial as mt
    assert getattr(mt, name) is not None
    assert name in mt.__all__


def test_everything_in_all_resolves():
    import moe_tutorial as mt
    for name in mt.__all__:
        if name != "xp":  # xp resolves to the default backend's module, tested in test_device
            assert getattr(mt, name) is not None, name


def test_kernel_modules_importable_from_the_package():
    from moe_tutorial.compile import KERNEL_MODULES
    for name in KERNEL_MODULES:
        module = importlib.import_module(f"moe_tutorial.{name}")
        assert callable(module.compile_cases)
