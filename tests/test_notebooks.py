"""The notebooks: committed without outputs, each with a parameters cell, and each runs top to
bottom in quick mode (papermill) producing what it promises."""

import json
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebook in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_and_with_parameters(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "QUICK" in params[0].source and "OUT" in params[0].source


def run_quick(name, tmp_path, **parameters):
    import papermill

    out_nb = tmp_path / f"{name}.out.ipynb"
    papermill.execute_notebook(str(Path(__file__).parent.parent / "notebooks" / f"{name}.ipynb"),
                               str(out_nb), parameters={"QUICK": True, **parameters},
                               cwd=str(tmp_path), progress_bar=False, kernel_name="python3")
    nb = nbformat.read(out_nb, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    return nb, "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                         for o in c.outputs)


def test_01_quickstart(tmp_path):
    out = tmp_path / "nb01"
    nb, text = run_quick("01_quickstart", tmp_path, OUT=str(out), SHOW=2)
    assert (out / "data" / "panoptic_val.json").is_file()
    assert (out / "run" / "model_final.pt").is_file()
    metrics = json.loads((out / "run" / "eval" / "final" / "metrics.json").read_text())
    assert {"panoptic", "bbox"} <= set(metrics)
    assert "PQ" in text and "Things" in text and "box AP" in text
    images = [sum(any(m.startswith("image/") for m in o.get("data", {})) for o in c.outputs)
              for c in nb.cells if c.cell_type == "code"]
    assert images[-3] >= 1, images  # the training curves
    assert images[-1] == 2, images  # SHOW=2 ground truth | prediction pairs


def widget_views(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]


def test_04_panoptic_explorer_with_a_run_and_without(tmp_path):
    out = tmp_path / "nb04"
    nb, text = run_quick("04_panoptic_explorer", tmp_path, OUT=str(out), RUN=None)
    assert len(widget_views(nb)) == 1
    assert "ground truth" in text and "PQ:" in text
    assert "'thresholds': {" in text  # a model's panel: the merge thresholds are live
    # no run, data given: the ground truth alone
    data = out / "data"
    nb, text = run_quick("04_panoptic_explorer", tmp_path, OUT=str(out), RUN=str(tmp_path / "x"),
                         DATA=str(data), QUICK=False)
    assert len(widget_views(nb)) == 1
    assert "'thresholds': None" in text and "ground truth" in text
