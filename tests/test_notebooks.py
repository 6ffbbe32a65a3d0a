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
    """Run a notebook with papermill in quick mode; the tests inject only ``QUICK`` and ``OUT``
    (and ``RUN`` / ``DATA`` where they test another way in), so the quick defaults are those
    a user gets."""
    import papermill

    out_nb = tmp_path / f"{name}.out.ipynb"
    papermill.execute_notebook(str(Path(__file__).parent.parent / "notebooks" / f"{name}.ipynb"),
                               str(out_nb), parameters={"QUICK": True, **parameters},
                               cwd=str(tmp_path), progress_bar=False, kernel_name="python3")
    nb = nbformat.read(out_nb, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    return nb, "\n".join(o.get("text", "") + o.get("data", {}).get("text/markdown", "")
                         for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def images(nb):
    """The number of images each code cell shows."""
    return [sum(any(m.startswith("image/") for m in o.get("data", {})) for o in c.outputs)
            for c in nb.cells if c.cell_type == "code"]


def test_01_quickstart(tmp_path):
    out = tmp_path / "nb01"
    nb, text = run_quick("01_quickstart", tmp_path, OUT=str(out))
    assert (out / "data" / "panoptic_val.json").is_file()
    assert (out / "run" / "model_final.pt").is_file()
    metrics = json.loads((out / "run" / "eval" / "final" / "metrics.json").read_text())
    assert {"panoptic", "bbox"} <= set(metrics)
    assert "PQ" in text and "Things" in text and "box AP" in text
    logged = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in logged if "eval" in r] == [1]  # PQ during training, on the curves
    shown = images(nb)
    assert shown[-3] >= 1, shown  # the training curves
    assert shown[-1] == 1, shown  # one figure: ground truth | prediction, titled, with a legend


def widget_views(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]


def test_04_panoptic_explorer_with_a_run_and_without(tmp_path):
    out = tmp_path / "nb04"
    nb, text = run_quick("04_panoptic_explorer", tmp_path, OUT=str(out))
    assert len(widget_views(nb)) == 1
    assert "ground truth" in text and "PQ:" in text
    assert "'thresholds': {" in text  # a model's panel: the merge thresholds are live
    # no run, data given: the ground truth alone (the quick run's data, named by its settings)
    data = next(out.glob("data-*"))
    nb, text = run_quick("04_panoptic_explorer", tmp_path, OUT=str(out), RUN=str(tmp_path / "x"),
                         DATA=str(data), QUICK=False)
    assert len(widget_views(nb)) == 1
    assert "'thresholds': None" in text and "ground truth" in text


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """One study folder for notebooks 02, 03, 05 and 06, as they share it in use."""
    return tmp_path_factory.mktemp("studies")


def test_02_flows_ablation(studies, tmp_path):
    """Quick mode is a real, small study: Table V, two paired seeds of short training."""
    nb, text = run_quick("02_flows_ablation", tmp_path, OUT=str(studies))
    saved = json.loads((studies / "02_flows_ablation.json").read_text())
    assert list(saved) == ["Table V"] and len(saved["Table V"]["runs"]) == 8  # 4 variants x 2
    table_v = saved["Table V"]
    for r in table_v["runs"]:
        assert {"variant", "seed", "run", "pq", "pq_th", "pq_st", "ap"} <= set(r)
        log = Path(r["run"]) / "metrics.jsonl"
        assert max(json.loads(line)["iter"] for line in log.read_text().splitlines()
                   if '"iter"' in line) >= 100  # trained, not a smoke test
    # per compared row and metric: the paired difference, its interval and the per-seed values
    assert table_v["reference"] == "baseline" and len(table_v["rows"]) == 3
    both = next(r for r in table_v["rows"] if r["variant"] == "+ both")
    runs = [(r["variant"], r["seed"], r["pq_th"]) for r in table_v["runs"]]
    diffs = [v - b for (n, s, v) in runs if n == "+ both"
             for (m, t, b) in runs if m == "baseline" and t == s]
    assert both["pq_th"]["diff"] == pytest.approx(sum(diffs) / 2)
    assert both["pq_th"]["n"] == 2 and both["pq_th"]["paper"] == pytest.approx(0.8)
    assert both["pq_th"]["ci_low"] <= both["pq_th"]["diff"] <= both["pq_th"]["ci_high"]
    assert {"per_seed", "verdict"} <= set(both["pq_th"])
    assert "Quick mode: a preview, too small to conclude anything" in text
    assert "**Table V, measured**" in text and "Precision reached: the widest 95% half-width" in text
    assert "| variant | vs | seeds | PQ diff (95% CI) | paper |" in text
    assert "| + both | baseline | 2 |" in text
    assert "| + sub-networks | 40.3 | 46.2 | 31.4 |" in text  # the paper's table beside
    assert "| + sub-networks | 57.5 | 53.6 | 60.3 |" in text  # and its Cityscapes rows (VI)
    assert "- **+ both** vs **baseline** (2 seeds, paired): PQ " in text
    assert "Table IX and Fig. 4 are not run here" in text
    assert sum(images(nb)) == 1  # the difference chart


def test_03_cam_heatmaps(studies, tmp_path):
    nb, text = run_quick("03_cam_heatmaps", tmp_path, OUT=str(studies))
    assert "'spatial flows'" in text and "'base'" in text  # the two models' PQ
    assert "2 of the 2 val images shown" in text
    assert images(nb)[-3:] == [2, 2, 1]  # a with/without figure per image; cls and stuff
    # levels; the flow maps, with the share of each flow inside the thing boxes
    assert "**This image.** The ground-truth thing boxes cover" in text
    assert "**The first 20 val images** (those with a thing). The ground-truth" in text
    assert "reg->cls" in text and "stuff->thing" in text


def test_05_loss_balance(studies, tmp_path):
    nb, text = run_quick("05_loss_balance", tmp_path, OUT=str(studies))
    saved = json.loads((studies / "05_loss_balance.json").read_text())["Table IV"]
    assert sorted(r["lambda"] for r in saved["runs"]) == [0.75, 1.0]
    assert saved["by"] == "lambda" and saved["reference"] == 1.0
    assert [r["lambda"] for r in saved["rows"]] == [0.75]
    assert saved["rows"][0]["pq"]["paper"] == pytest.approx(0.7)  # 38.2 - 37.5
    assert "| lambda | seeds | pq | pq_th | pq_st |" in text  # the measured means
    assert "| 0.25 | 39.3 | 45.1 | 30.5 |" in text               # the paper's table
    assert "| lambda | vs | seeds | PQ diff (95% CI) | paper |" in text
    assert "- **lambda = 0.75** vs **lambda = 1.0** (one seed): PQ " in text
    assert sum(images(nb)) == 1  # the paired differences, the paper's beside them


def test_06_accuracy_vs_speed(studies, tmp_path):
    nb, text = run_quick("06_accuracy_vs_speed", tmp_path, OUT=str(studies))
    saved = json.loads((studies / "06_accuracy_vs_speed.json").read_text())
    assert [r["scale"] for r in saved["rows"]] == [64, 96, 128]  # Table XI scaled to 128 px
    assert all(r["images_per_s"] > 0 and r["images"] == 2 for r in saved["rows"])
    assert "| scale | padded | images | seconds | images_per_s | pq |" in text
    assert "At 64 px this machine runs" in text and "(paper, V100, 400 vs 800 px: 1.90x)" in text
    assert sum(images(nb)) == 2


def test_07_subnetworks_and_detection(studies, tmp_path):
    nb, text = run_quick("07_subnetworks_and_detection", tmp_path, OUT=str(studies))
    saved = json.loads((studies / "07_subnetworks_and_detection.json").read_text())
    runs = {k: v["runs"] for k, v in saved.items()}
    assert {k: len(v) for k, v in runs.items()} == {"Table VII": 2, "Table VIII": 2,
                                                    "Table XII": 2}
    assert [r["stages"] for r in runs["Table VII"]] == [0, 1]
    # 0 stages is the baseline: one run for both tables (and notebook 02's, when it ran first)
    assert runs["Table VII"][0]["run"] == runs["Table VIII"][0]["run"]
    for r in runs["Table XII"]:
        assert {"ap", "ap50", "ap75"} <= set(r) and "pq" not in r
    assert saved["Table XII"]["metrics"] == ["ap", "ap50", "ap75"]
    assert saved["Table VII"]["rows"][0]["stages"] == 1
    assert "| stages | vs | seeds | PQ diff (95% CI) | paper |" in text
    assert "| stages | seeds | pq | pq_th | pq_st |" in text
    assert "| 1 | 39.9 | 46.3 | 30.3 |" in text and "| 4 | 40.3 | 46.2 | 31.5 |" in text
    assert "- **stages = 1** vs **stages = 0** (one seed): PQ " in text
    assert "| RetinaNet w/ flows | 36.7 | 57.1 | 39.4 |" in text
    assert "- **RetinaNet w/ flows** vs **RetinaNet** (one seed): box AP " in text
    assert "AP50 " in text
    assert sum(images(nb)) == 3  # one difference chart per study
