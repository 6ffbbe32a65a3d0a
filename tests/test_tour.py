"""docs/tour.md stays honest: everything it names exists.

What is checked (the doc's conventions, see its introduction):

- each of eq. (1)-(6), Tables IV-XII and Figs. 4-5 has a heading, and each table / figure
  section says how to reproduce it (a notebook, a ``spatialflow train`` command or
  ``run_study``);
- backticked repository paths exist;
- backticked dotted names ``spatialflow.x.y`` / ``viz.x.y`` (or ``path/to/file.py::Name.attr``)
  resolve by import + getattr, and ``PAPER["key"]`` keys exist;
- ``net.a.b`` paths (anywhere, the diagrams included) resolve on the ``tiny-cpu`` model and are
  not ``None``;
- config keys ``model.* / infer.* / train.* / data.*`` exist in the ``tiny-cpu`` config, and
  backticked ``key=value`` overrides are accepted by ``load_config``;
- ``spatialflow ...`` command lines parse with the real CLI parser, and their ``--preset`` /
  ``--set`` are accepted (``evaluate`` / ``predict``: only the keys a trained run may change);
- Python blocks import real names and call them with parameters they accept;
- every notebook the doc names exists, the doc names all of them, and the functions a walk-through
  step says a notebook calls appear in that notebook's code (checked for notebooks that exist);
- backticked snake_case identifiers occur in the code base; ``+ ...`` variant names are real.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "tour.md"
TEXT = DOC.read_text(encoding="utf-8")

NOTEBOOKS = ["01_quickstart", "02_flows_ablation", "03_cam_heatmaps", "04_panoptic_explorer",
             "05_loss_balance", "06_accuracy_vs_speed", "07_subnetworks_and_detection"]
EQUATIONS = {"1", "2", "3", "4", "5", "6"}
TABLES = {"IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII"}
FIGURES = {"4", "5"}

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
SPAN = re.compile(r"`([^`\n]+)`")
DOTTED = re.compile(r"^(?:spatialflow|viz)(?:\.[A-Za-z_]\w*)+$")
FILE_NAME = re.compile(r"^((?:[\w.-]+/)*[\w.-]+\.py)::([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")
PAPER_KEY = re.compile(r'^(?:spatialflow\.studies\.)?PAPER\["(\w+)"\]$')
NET_PATH = re.compile(r"\bnet(?:\.[A-Za-z_]\w*)+")
CONFIG_KEY = re.compile(r"(?<![\w/.\-])((?:model|infer|train|data)(?:\.[A-Za-z_]\w*)+)(\.\*)?"
                        r"(?![\w(])")
ASSIGNMENT = re.compile(r"^((?:model|infer|train|data)(?:\.[A-Za-z_]\w*)+)=(.+)$")
NOTEBOOK = re.compile(r"\b(\d\d_[a-z0-9_]+)\.ipynb\b")
PRESET_LIKE = re.compile(r"^(?:tiny-cpu|r\d+(?:-[a-z0-9]+)*-(?:coco|cityscapes))$")
REPO_TOP = ("spatialflow/", "viz/", "notebooks/", "tests/", "docs/", "benchmarks/")
FILE_EXT = (".py", ".ipynb", ".yaml", ".yml")


def _split(text: str):
    """(fenced blocks as (language, body), the text outside them)."""
    return FENCE.findall(text), FENCE.sub("", text)


BLOCKS, PROSE = _split(TEXT)
SPANS = SPAN.findall(PROSE)


def _sections(level: str = "###"):
    """{heading: body} of the headings of one level."""
    parts = re.split(rf"^{level} (.+)$", TEXT, flags=re.M)
    return {parts[i].strip(): re.split(r"^#{1,3} ", parts[i + 1], flags=re.M)[0]
            for i in range(1, len(parts), 2)}


SECTIONS = _sections()


def resolve(dotted: str):
    """Import the longest importable module prefix of ``dotted``, then getattr the rest."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)  # AttributeError names the missing part
        return obj
    raise ModuleNotFoundError(dotted)


def _names_in_doc():
    names = set()
    for span in SPANS:
        m = FILE_NAME.match(span)
        if DOTTED.match(span):
            names.add(span)
        elif m:
            names.add(m.group(1)[:-3].replace("/", ".") + "." + m.group(2))
    return sorted(names)


# --- structure ---------------------------------------------------------------------------------
def test_every_equation_table_and_figure_has_a_heading():
    eqs = set(re.findall(r"^### Eq\. \((\d)\)", TEXT, re.M))
    tables = set(re.findall(r"^### Table ([IVXL]+)\b", TEXT, re.M))
    figures = set(re.findall(r"^### Fig\. (\d+)\b", TEXT, re.M))
    assert eqs == EQUATIONS, f"equations with a heading: {sorted(eqs)}"
    assert tables == TABLES, f"tables with a heading: {sorted(tables)}"
    assert figures == FIGURES, f"figures with a heading: {sorted(figures)}"


def test_every_table_and_figure_says_how_to_reproduce_it():
    for heading, body in SECTIONS.items():
        if heading.startswith(("Table ", "Fig. ")):
            assert ("notebooks/" in body or "spatialflow train" in body
                    or "run_study(" in body), f"'{heading}': no notebook nor command"


def test_the_diagrams_are_there():
    langs = [lang for lang, _ in BLOCKS]
    assert "mermaid" in langs and "text" in langs
    mermaid = next(body for lang, body in BLOCKS if lang == "mermaid")
    assert mermaid.lstrip().startswith("flowchart")
    for flow in ("reg_to_cls", "reg_to_stuff", "reg_to_thing", "stuff_to_thing"):
        assert f"net.subnets.{flow}" in mermaid
        assert flow in next(body for lang, body in BLOCKS if lang == "text")


# --- files and Python names --------------------------------------------------------------------
def test_the_parser_finds_what_the_doc_names():
    """Guards the checks below against a parser that silently finds nothing."""
    assert len(_names_in_doc()) >= 20
    assert len(SPANS) >= 100 and len(BLOCKS) >= 5
    assert len(set(NET_PATH.findall(TEXT))) >= 10


def test_repository_paths_exist():
    paths = [s.rstrip("/") for s in SPANS if " " not in s and "::" not in s
             and (s.startswith(REPO_TOP) or s.endswith(FILE_EXT))]
    assert paths, "no path found in the doc"
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"paths named in docs/tour.md that do not exist: {missing}"
    for span in SPANS:
        m = FILE_NAME.match(span)
        if m:
            assert (ROOT / m.group(1)).is_file(), span


@pytest.mark.parametrize("name", _names_in_doc())
def test_python_names_resolve(name):
    resolve(name)


def test_paper_keys_exist():
    from spatialflow.studies import PAPER

    keys = [m.group(1) for m in map(PAPER_KEY.match, SPANS) if m]
    assert keys
    assert set(keys) <= set(PAPER), f"not in spatialflow.studies.PAPER: {set(keys) - set(PAPER)}"


@pytest.fixture(scope="module")
def net():
    import spatialflow
    from spatialflow.data.categories import CategoryMap
    from spatialflow.data.synthetic import SYNTHETIC_CATEGORIES

    return spatialflow.build_model(spatialflow.load_config("tiny-cpu"),
                                   CategoryMap.from_coco(SYNTHETIC_CATEGORIES))


def test_module_tree_paths_resolve_on_the_model(net):
    for path in sorted(set(NET_PATH.findall(TEXT))):
        obj = net
        for name in path.split(".")[1:]:
            assert hasattr(obj, name), f"{path}: the model has no '{name}' there"
            obj = getattr(obj, name)
        assert obj is not None, f"{path} is None in the tiny-cpu model"


def test_snake_case_identifiers_occur_in_the_code():
    corpus = "\n".join(p.read_text(encoding="utf-8") for d in ("spatialflow", "viz")
                       for p in (ROOT / d).rglob("*.py"))
    corpus += "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "notebooks").glob("*.ipynb"))
    words = {s for s in SPANS if re.fullmatch(r"[A-Za-z_]\w*", s) and "_" in s}
    assert words
    missing = sorted(w for w in words if not re.search(rf"\b{re.escape(w)}\b", corpus))
    assert not missing, f"identifiers named in docs/tour.md found nowhere in the code: {missing}"


def test_variant_names_are_real():
    from spatialflow import studies

    names = {v.name for f in (studies.components_variants, studies.flows_variants,
                              studies.fig4_variants) for v in f()}
    named = {s for s in SPANS if s.startswith("+ ")}
    assert named and named <= names, f"unknown variants: {named - names}"


# --- config keys, presets, commands ------------------------------------------------------------
@pytest.fixture(scope="module")
def config_tree():
    import spatialflow
    from spatialflow.config import config_to_dict

    return config_to_dict(spatialflow.load_config("tiny-cpu"))


def test_config_keys_exist(config_tree):
    keys = {m.group(1) for m in CONFIG_KEY.finditer(TEXT)}
    keys = {k for k in keys if not k.endswith((".py", ".ipynb", ".yaml", ".json", ".md"))}
    assert len(keys) >= 15
    for key in sorted(keys):
        node = config_tree
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"unknown config key '{key}'"
            node = node[part]


def test_config_overrides_are_accepted():
    import spatialflow

    overrides = [s for s in SPANS if ASSIGNMENT.match(s)]
    assert overrides
    for text in overrides:
        spatialflow.load_config("tiny-cpu", [text])


def test_presets_exist():
    from spatialflow.config import list_presets

    named = {s for s in SPANS if PRESET_LIKE.match(s)}
    assert named and named <= set(list_presets()), f"unknown presets: {named - set(list_presets())}"


def _command_lines():
    lines = []
    for lang, body in BLOCKS:
        if lang in ("bash", "sh", "shell", "console"):
            for line in body.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip()
                if line.startswith("spatialflow "):
                    lines.append(line)
    return lines


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_full_commands_parse_and_their_settings_are_accepted():
    from spatialflow.cli import build_parser
    from spatialflow.config import apply_overrides, load_config
    from spatialflow.engine.runs import INFERENCE_KEYS

    lines = _command_lines()
    assert len(lines) >= 8
    for line in lines:
        try:
            args = build_parser().parse_args(shlex.split(line)[1:])
        except SystemExit:
            pytest.fail(f"the CLI does not accept: {line}")
        if args.command == "train":
            load_config(args.config or args.preset, args.set)
        elif args.command in ("evaluate", "predict"):
            apply_overrides(load_config("tiny-cpu"), args.set, INFERENCE_KEYS)
        elif args.command == "info" and args.model:
            load_config(args.model, args.set)
        elif args.command == "demo":
            load_config(args.preset, args.set)


def test_inline_commands_name_real_subcommands_and_flags():
    from spatialflow.cli import build_parser

    commands = _subparsers(build_parser())
    spans = [s for s in SPANS if s.startswith("spatialflow ")]
    assert spans
    for span in spans:
        words = shlex.split(span)
        assert words[1] in commands, f"{span}: no command '{words[1]}'"
        options = {o for a in commands[words[1]]._actions for o in a.option_strings}
        for word in words[2:]:
            if word.startswith("--"):
                assert word.split("=")[0] in options, f"{span}: no option {word}"


# --- Python blocks -----------------------------------------------------------------------------
def test_python_blocks_import_real_names_and_call_them_correctly():
    import spatialflow

    blocks = [body for lang, body in BLOCKS if lang == "python"]
    assert blocks
    for body in blocks:
        tree = ast.parse(body)
        imported = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) \
                    and (node.module or "").split(".")[0] in ("spatialflow", "viz"):
                for alias in node.names:
                    imported[alias.asname or alias.name] = resolve(f"{node.module}.{alias.name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in imported:
                if any(isinstance(a, ast.Starred) for a in node.args) or any(
                        k.arg is None for k in node.keywords):
                    continue
                sig = inspect.signature(imported[node.func.id])
                sig.bind(*[None] * len(node.args), **{k.arg: None for k in node.keywords})
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and ASSIGNMENT.match(node.value):
                spatialflow.load_config("tiny-cpu", [node.value])


# --- notebooks ---------------------------------------------------------------------------------
MENTIONED = sorted(set(NOTEBOOK.findall(TEXT)))


def test_the_doc_names_every_notebook():
    assert MENTIONED == NOTEBOOKS


@pytest.mark.parametrize("name", MENTIONED)
def test_named_notebook_exists(name):
    assert (ROOT / "notebooks" / f"{name}.ipynb").is_file(), f"notebooks/{name}.ipynb is missing"


def _steps():
    """{notebook: [dotted names on its step's 'Calls:' line]} of the walk-through."""
    steps = {}
    for heading, body in SECTIONS.items():
        m = re.match(r"Step \d+ .*`notebooks/(\w+)\.ipynb`", heading)
        if m:
            calls = re.search(r"^Calls: (.+?)(?:\n\n|\Z)", body, re.M | re.S)
            assert calls, f"step '{heading}' has no 'Calls:' line"
            steps[m.group(1)] = SPAN.findall(calls.group(1))
    return steps


def test_every_notebook_has_a_walkthrough_step():
    assert sorted(_steps()) == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_calls_what_the_tour_says(name):
    path = ROOT / "notebooks" / f"{name}.ipynb"
    if not path.is_file():
        pytest.skip(f"{path.name} does not exist yet (test_named_notebook_exists fails for it)")
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    calls = _steps()[name]
    assert calls
    missing = [c for c in calls if not re.search(rf"\b{re.escape(c.split('.')[-1])}\b", code)]
    assert not missing, f"{path.name} does not use {missing}"
