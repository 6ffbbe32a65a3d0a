"""The layers point one way (../shared/DESIGN.md, "Layers"): data -> model -> panoptic ->
evaluation -> engine -> cli, with benchmark and viz on top. Every import is checked, those
inside functions included."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "spatialflow"


def imports(path: Path) -> set:
    """The modules a file imports anywhere in it (``from .x import y`` resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[:-node.level]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def reaches(files, forbidden) -> list:
    return sorted(f"{p.relative_to(ROOT)} imports {m}" for p in files for m in imports(p)
                  if any(m == f or m.startswith(f + ".") for f in forbidden))


def py(folder_or_file: Path):
    return [folder_or_file] if folder_or_file.is_file() else sorted(folder_or_file.rglob("*.py"))


RULES = [
    ("the model never imports the merge, the data readers, engine, benchmark, cli, "
     "evaluation or studies",
     py(PACKAGE / "model"), ["spatialflow.panoptic", "spatialflow.data.coco_panoptic",
                             "spatialflow.data.synthetic", "spatialflow.data.panoptic_io",
                             "spatialflow.engine", "spatialflow.benchmark", "spatialflow.cli",
                             "spatialflow.evaluation", "spatialflow.studies"]),
    ("data imports no layer above it", py(PACKAGE / "data"),
     ["spatialflow.model", "spatialflow.panoptic", "spatialflow.evaluation", "spatialflow.engine",
      "spatialflow.benchmark", "spatialflow.cli", "spatialflow.studies"]),
    ("evaluation only scores: it never imports the engine or the model",
     py(PACKAGE / "evaluation.py"), ["spatialflow.engine", "spatialflow.model",
                                     "spatialflow.benchmark", "spatialflow.cli"]),
    ("the engine never imports benchmark, cli or studies", py(PACKAGE / "engine"),
     ["spatialflow.benchmark", "spatialflow.cli", "spatialflow.studies"]),
    ("the benchmark never imports studies or cli", py(PACKAGE / "benchmark"),
     ["spatialflow.studies", "spatialflow.cli"]),
    ("spatialflow never imports viz", py(PACKAGE), ["viz"]),
]


@pytest.mark.parametrize("rule, files, forbidden", RULES, ids=[r[0] for r in RULES])
def test_layers_point_one_way(rule, files, forbidden):
    assert files, rule
    assert reaches(files, forbidden) == [], rule


def test_the_checker_sees_imports_inside_functions(tmp_path):
    """The rule would be worthless if a lazy import slipped through."""
    probe = ROOT / "spatialflow" / "model" / "_layer_probe.py"
    source = "def f():\n    from spatialflow.engine.runs import load_run\n    from ..cli import main\n"
    try:
        probe.write_text(source)
        found = reaches([probe], ["spatialflow.engine", "spatialflow.cli"])
    finally:
        probe.unlink()
    assert found == ["spatialflow/model/_layer_probe.py imports spatialflow.cli",
                     "spatialflow/model/_layer_probe.py imports spatialflow.cli.main",
                     "spatialflow/model/_layer_probe.py imports spatialflow.engine.runs",
                     "spatialflow/model/_layer_probe.py imports spatialflow.engine.runs.load_run"]


def test_viz_and_the_cli_load_runs_through_runs_only():
    """Only ``engine/runs.py`` reads checkpoints (``backbone.py`` reads a pretrained backbone
    file the user passes, not a run)."""
    readers = [p.name for p in py(PACKAGE) + py(ROOT / "viz")
               if p.name not in ("runs.py", "backbone.py") and "torch.load(" in p.read_text()]
    assert readers == []


def test_every_name_imported_from_the_project_exists():
    """Scripts (``benchmarks/``), notebooks and viz import only names that exist, so a moved
    function cannot leave a caller behind unnoticed."""
    import importlib
    import json

    sources = {p: p.read_text() for p in py(ROOT / "benchmarks") + py(ROOT / "viz")}
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        sources[nb] = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code"
                                and not "".join(c["source"]).lstrip().startswith("%"))
    missing = []
    for path, text in sources.items():
        text = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("%"))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
                    "spatialflow", "viz") and not node.level:
                module = importlib.import_module(node.module)
                missing += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                            if not hasattr(module, a.name)
                            and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
    assert missing == []


def layer(module: str):
    """The layer of a module: a subpackage or top-level module of spatialflow, or viz."""
    parts = module.split(".")
    if parts[0] == "viz":
        return "viz"
    if parts[0] == "spatialflow" and len(parts) > 1 and parts[1] not in ("errors", "config",
                                                                          "__init__"):
        return parts[1]   # (errors and config are read by every layer, and import none)
    return None


def test_the_layers_form_no_cycle():
    edges = {}
    for path in py(PACKAGE) + py(ROOT / "viz"):
        src = layer(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for module in imports(path):
            dst = layer(module)
            if src and dst and dst != src:
                edges.setdefault(src, set()).add(dst)
    seen, done = [], set()

    def visit(node):
        assert node not in seen, f"import cycle: {' -> '.join(seen[seen.index(node):] + [node])}"
        if node in done:
            return
        seen.append(node)
        for nxt in sorted(edges.get(node, ())):
            visit(nxt)
        seen.pop()
        done.add(node)

    for node in sorted(edges):
        visit(node)
    assert {"model", "engine", "evaluation", "benchmark"} <= set(edges)
