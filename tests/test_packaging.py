"""The install files agree with each other and with the README's commands."""

import re
from pathlib import Path

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    tomllib = None

ROOT = Path(__file__).resolve().parents[1]


def _pyproject():
    if tomllib is None:
        import pytest
        pytest.skip("tomllib needs Python 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def test_environment_yml_matches_pyproject():
    project = _pyproject()["project"]
    wanted = list(project["dependencies"])
    for extra in ("notebooks", "dev"):
        wanted += project["optional-dependencies"][extra]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = [p for p in pip_section if not p.startswith("-e")]
    assert sorted(map(_norm, listed)) == sorted(map(_norm, wanted))
    assert any(p.replace(" ", "") == "-e.[notebooks,dev]" for p in pip_section)
    assert any(str(d).startswith("python") for d in env["dependencies"] if isinstance(d, str))


def test_dependencies_are_ranges_not_pins():
    project = _pyproject()["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    pinned = [r for r in reqs if "==" in r]
    assert not pinned, f"pinned requirements: {pinned}"
    names = {re.split(r"[<>=!~ ]", r)[0].lower() for r in reqs}
    for needed in ("torch", "torchvision", "pycocotools", "panopticapi-lite", "grad-cam",
                   "matplotlib", "ipywidgets", "jupyterlab", "tqdm", "pyyaml", "pillow", "numpy"):
        assert needed in names


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in ci
    assert "make test" in readme and "make demo" in readme


def test_console_script_declared():
    scripts = _pyproject()["project"]["scripts"]
    assert scripts["spatialflow"] == "spatialflow.cli:main"


def test_spatialflow_never_imports_viz():
    """viz depends on spatialflow, never the other way (DESIGN)."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "spatialflow").rglob("*.py")
                 if re.search(r"^\s*(from|import)\s+viz\b", p.read_text(), re.M)]
    assert offenders == []


def test_the_fault_table_names_real_tests():
    """Every test named in the "What we test" table of docs/robustness.md exists (so the table
    cannot drift from the suite that CI runs)."""
    import ast
    import re

    doc = (ROOT / "docs" / "robustness.md").read_text()
    table = doc.split("## What we test", 1)[1].split("\n## ", 1)[0]
    named, current = [], None
    for cell in re.findall(r"`((?:test_\w+\.py)?::?\w+)`", table):
        if ".py" in cell:
            current, name = cell.split("::")
        else:
            name = cell.lstrip(":")
        named.append((current, name))
    assert len(named) >= 40, named
    defined = {}
    for path in (ROOT / "tests").glob("test_*.py"):
        tree = ast.parse(path.read_text())
        defined[path.name] = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    missing = [f"{f}::{n}" for f, n in named if n not in defined.get(f, ())]
    assert not missing, missing
