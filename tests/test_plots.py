"""The figures of viz.plots, checked by their contents (lines' data, bars, error bars, labels),
never by pixels."""

import base64
import json
import math

import ipywidgets
import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.figure import Figure

from viz.plots import (LiveCurves, accuracy_speed_plot, difference_bars,
                       read_metrics, training_curves)
from spatialflow.studies import summarize


def loss_record(it, loss=1.0, lr=0.01):
    return {"iter": it, "lr": lr, "loss": loss, "loss_cls": loss / 2, "loss_reg": loss / 4,
            "loss_thing": loss / 8, "loss_stuff": loss / 8, "images_per_s": 3.0, "skipped": 0}


def eval_record(it, pq, th, st):
    group = lambda v: {"pq": v, "sq": 0.8, "rq": 0.5, "n": 2}
    return {"iter": it, "eval": {"All": group(pq), "Things": group(th), "Stuff": group(st)},
            "bbox": {"AP": 0.1}}


RECORDS = [loss_record(10, 3.0, 0.001), loss_record(20, 2.0, 0.002), eval_record(20, 0.1, 0.05, 0.2),
           loss_record(30, 1.0, 0.002), eval_record(30, 0.3, 0.2, 0.4)]


def lines(ax):
    return {ln.get_label(): (list(ln.get_xdata()), list(ln.get_ydata())) for ln in ax.lines}


def bars(ax):
    return [c for c in ax.containers if isinstance(c, BarContainer)]


def series(ax):
    """``{label: (x, y)}`` of the errorbar plots of an axes."""
    return {c.get_label(): (list(c.lines[0].get_xdata()), list(c.lines[0].get_ydata()))
            for c in ax.containers if isinstance(c, ErrorbarContainer)}


def series_color(ax, label):
    container = next(c for c in ax.containers if c.get_label() == label)
    return container.lines[0].get_color()


def test_training_curves_from_records():
    fig = training_curves(RECORDS)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    ax_loss, ax_lr, ax_pq = fig.axes
    got = lines(ax_loss)
    assert set(got) == {"loss", "loss_cls", "loss_reg", "loss_thing", "loss_stuff"}
    assert got["loss"] == ([10, 20, 30], [3.0, 2.0, 1.0])
    assert got["loss_cls"][1] == [1.5, 1.0, 0.5]
    assert lines(ax_lr)["lr"] == ([10, 20, 30], [0.001, 0.002, 0.002])
    pq = lines(ax_pq)
    assert pq["PQ"][0] == [20, 30] and pq["PQ"][1] == pytest.approx([10.0, 30.0])  # percent
    assert pq["PQ_Th"][1] == pytest.approx([5.0, 20.0])
    assert pq["PQ_St"][1] == pytest.approx([20.0, 40.0])
    assert ax_loss.get_xlabel() == "iteration" and ax_pq.get_ylabel() == "PQ (%)"
    assert ax_lr.get_ylabel() == "learning rate"


def test_training_curves_from_a_run_dir_resumed_and_being_written(tmp_path):
    resumed = RECORDS[:3] + [loss_record(20, 5.0)] + RECORDS[3:]   # iteration 20 again
    text = "\n".join(json.dumps(r) for r in resumed) + '\n{"iter": 40, "lo'
    (tmp_path / "metrics.jsonl").write_text(text)
    assert len(read_metrics(tmp_path)) == len(resumed)
    fig = training_curves(tmp_path)
    assert lines(fig.axes[0])["loss"] == ([10, 20, 30], [3.0, 5.0, 1.0])   # the later one wins
    empty = training_curves(tmp_path / "nothing")
    assert not empty.axes[0].lines and not empty.axes[2].lines
    assert "no evaluation yet" in [t.get_text() for t in empty.axes[2].texts]


def test_live_curves_redraw_into_an_output_widget():
    live = LiveCurves(every=2)
    assert isinstance(live.widget, ipywidgets.Output)
    for r in RECORDS:
        live(r)
    # every 2nd loss record (the one of iteration 20) + both evaluations -> 3 draws
    assert live.draws == 3 and len(live.records) == len(RECORDS)
    (out,) = live.widget.outputs
    assert base64.b64decode(out["data"]["image/png"])[:4] == b"\x89PNG"
    assert lines(live.figure.axes[2])["PQ"][0] == [20, 30]
    live(loss_record(40, 0.5))
    live(loss_record(50, 0.4))
    assert live.draws == 4 and lines(live.figure.axes[0])["loss"][0] == [10, 20, 30, 40]
    live.redraw()                                             # the 5th loss record: not due
    assert live.draws == 5 and lines(live.figure.axes[0])["loss"][0] == [10, 20, 30, 40, 50]


def test_live_curves_update_a_display_handle():
    class Handle:
        def __init__(self):
            self.shown = []

        def update(self, obj):
            self.shown.append(obj)

    handle = Handle()
    live = LiveCurves(handle)
    for r in RECORDS[:2]:
        live(r)
    assert len(handle.shown) == 2 and handle.shown[-1].data[:4] == b"\x89PNG"


ROWS = [
    {"variant": "baseline", "seed": 0, "pq": 30.0, "pq_th": 25.0, "pq_st": 40.0},
    {"variant": "baseline", "seed": 1, "pq": 32.0, "pq_th": 27.0, "pq_st": 40.0},
    {"variant": "baseline", "seed": 2, "pq": 34.0, "pq_th": 29.0, "pq_st": 40.0},
    {"variant": "flows", "seed": 0, "pq": 36.0, "pq_th": 33.0, "pq_st": 41.0},
    {"variant": "flows", "seed": 1, "pq": 38.0, "pq_th": None, "pq_st": 43.0},
    {"variant": "subnets", "seed": 0, "pq": 33.0, "pq_th": 30.0, "pq_st": 39.0},
]


def test_summarize_numbers():
    s = summarize(ROWS)
    assert [e["variant"] for e in s] == ["baseline", "flows", "subnets"]
    base, flows, sub = s
    assert base["seeds"] == [0, 1, 2]
    assert base["pq"] == {"mean": 32.0, "std": 2.0, "min": 30.0, "max": 34.0, "n": 3}
    assert base["pq_st"]["std"] == 0.0
    assert flows["pq"]["mean"] == 37.0 and flows["pq"]["std"] == pytest.approx(math.sqrt(2))
    assert flows["pq_th"] == {"mean": 33.0, "std": 0.0, "min": 33.0, "max": 33.0, "n": 1}
    assert sub["pq"]["n"] == 1 and sub["pq"]["std"] == 0.0
    ordered = summarize(ROWS, order=["subnets", "baseline"])
    assert [e["variant"] for e in ordered] == ["subnets", "baseline", "flows"]
    with pytest.raises(ValueError, match="no rows"):
        summarize(ROWS, order=["typo"])
    assert math.isnan(summarize([{"variant": "x"}], metrics=("pq",))[0]["pq"]["mean"])


def test_accuracy_speed_plot():
    rows = [{"name": "ours r18", "fps": 2.5, "pq": 30.0, "source": "measured"},
            {"name": "SpatialFlow 800", "fps": 10.0, "pq": 40.9, "source": "paper"},
            {"name": "SpatialFlow 400", "fps": 19.6, "pq": 37.4, "source": "paper"}]
    ax = accuracy_speed_plot(rows).axes[0]
    by_label = {c.get_label(): c for c in ax.collections}
    assert set(by_label) == {"measured", "paper"}
    assert by_label["paper"].get_offsets().tolist() == [[10.0, 40.9], [19.6, 37.4]]
    assert by_label["measured"].get_offsets().tolist() == [[2.5, 30.0]]
    marker_paths = {k: c.get_paths()[0].vertices.tolist() for k, c in by_label.items()}
    assert marker_paths["measured"] != marker_paths["paper"]      # different markers
    assert [t.get_text() for t in ax.texts] == ["ours r18", "SpatialFlow 800", "SpatialFlow 400"]
    assert ax.get_xlabel().startswith("speed") and ax.get_ylabel() == "PQ"
    with pytest.raises(ValueError):
        accuracy_speed_plot([{"name": "x", "fps": 1, "pq": 1, "source": "guess"}])
    # points of a group are joined in the order of their scales, not of the rows
    grouped = [dict(r, group="g", scale=s) for r, s in zip(rows, (0, 800, 400))]
    line, = accuracy_speed_plot(grouped[1:] + grouped[:1]).axes[0].get_lines()
    assert list(line.get_xdata()) == [19.6, 10.0]


def test_quality_curve_medians_dots_and_goals():
    from viz.plots import quality_curve

    runs = [{"minutes": t, "seed": s, "pq_th": v + s, "pq": 2 * v}
            for t, v in ((10, 30.0), (2, 5.0)) for s in (0, 1, 2)]
    ax = quality_curve(runs, goals={"pq_th": [(2, 20), (10, 40)]}).axes[0]
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
             for line in ax.get_lines()}
    assert lines["PQ_Th (median of 3 seed(s); dots: each run)"] == ([2, 10], [6.0, 31.0])
    assert lines["PQ (median of 3 seed(s); dots: each run)"] == ([2, 10], [10.0, 60.0])
    dots = [c.get_offsets() for c in ax.collections]
    assert sorted(dots[0][:, 1].tolist()) == [5.0, 6.0, 7.0, 30.0, 31.0, 32.0]  # every run
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "goal PQ_Th >= 20 at 2 min" in labels and "goal PQ_Th >= 40 at 10 min" in labels
    assert ax.get_xlabel() == "training minutes" and list(ax.get_xticks()) == [2, 10]


def test_study_parts_differences_chart_sentences_means_and_paper():
    from spatialflow.studies import PAPER
    from viz.report import study_parts

    rows = [{"variant": v, "seed": s, "pq": pq + s * (1 + (v == "+ both")), "pq_th": 1.0,
             "pq_st": 2.0 * pq} for s in (0, 1, 2) for v, pq in (("baseline", 10.0),
                                                                ("+ both", 12.0))]
    parts = study_parts("Table V", rows, "baseline", PAPER["table_v"])
    assert len(parts) == 5
    # per-seed differences +2, +3, +4: mean 3, t(0.975, 2) * 1 / sqrt(3) = 2.48
    assert parts[0].startswith("**Table V, measured**: each variant minus baseline with the "
                               "same seed, mean and 95% CI over 3 seeds")
    assert "| + both | baseline | 3 | +3.0 (0.5 to 5.5) | +1.2 | +0.0 (0.0 to 0.0) | +0.8 |" \
        in parts[0]
    fig = parts[1]
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_title() == ("Table V\ndifference to 'baseline', paired by seed: mean and 95% CI "
                              "over 3 seeds")
    assert ax.get_ylabel() == "difference in PQ (points)" and ax.get_xlabel() == "variant"
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [b.get_height() for b in bars[0]] == pytest.approx([3.0])
    assert parts[2].startswith("- **+ both** vs **baseline** (3 seeds, paired): PQ higher by 3.0 "
                               "(95% CI 0.5 to 5.5; paper +1.2, inside the CI)")
    assert "PQ_Th no difference detectable: the 95% CI 0.0 to 0.0 includes 0 (paper +0.8, " \
        "outside the CI)" in parts[2]  # no spread: the interval is the point 0 itself
    assert parts[2].endswith("Precision reached: the widest 95% half-width is ±2.5 PQ, ±0.0 "
                             "PQ_Th, ±0.0 PQ_St.")
    assert study_parts("x", rows, "baseline", target=1.0)[2].endswith(
        "; wider than ±1.0 for PQ: more seeds would narrow it.")
    assert parts[3].startswith("**Table V, measured means**")
    assert "| baseline | 3 | 11.0 | 1.0 | 20.0 |" in parts[3]
    assert "| + sub-networks | 40.3 | 46.2 | 31.4 |" in parts[4]
    assert len(study_parts("x", rows, "+ both")) == 4  # no paper table


def test_study_parts_with_cityscapes_rows_stages_and_boxes():
    from spatialflow.studies import PAPER
    from viz.report import study_parts

    rows = [{"variant": v, "seed": s, "pq": pq + s, "pq_th": 1.0, "pq_st": 2.0}
            for s in (0, 1) for v, pq in (("baseline", 10.0), ("+ both", 12.0))]
    parts = study_parts("Table V", rows, "baseline",
                        {"COCO val": PAPER["table_v"], "Cityscapes val": PAPER["table_vi"]})
    assert "the paper's differences are those of COCO val" in parts[0]
    assert parts[4].startswith("**Table V, paper** (COCO val, ResNet-50)")
    assert parts[5].startswith("**Table V, paper** (Cityscapes val, ResNet-50)")
    assert "| + both | 58.6 | 54.9 | 61.4 |" in parts[5]
    assert "PQ higher by 2.0 (95% CI 2.0 to 2.0; paper +1.2, outside the CI)" in parts[2]
    # Tables VII / VIII: rows keyed by the number of stages, one seed
    stages = [{"variant": f"thing x{n}", "stages": n, "seed": 0, "pq": 20.0 + n, "pq_th": 5.0,
               "pq_st": 30.0} for n in (0, 1)]
    parts = study_parts("Table VII", stages, 0, PAPER["table_vii"], by="stages")
    assert "| 1 | 0 | 1 | +1.0 (one seed) | +0.2 |" in parts[0]
    assert parts[1].axes[0].get_title().endswith("difference to stages = 0, one seed: no interval")
    assert parts[2].startswith("- **stages = 1** vs **stages = 0** (one seed): PQ +1.0 with one "
                               "seed: no interval (paper +0.2)")
    assert "| stages | seeds | pq | pq_th | pq_st |" in parts[3] and "| 1 | 1 | 21.0 |" in parts[3]
    assert "| 1 | 39.9 | 46.3 | 30.3 |" in parts[4]
    # Table XII: box AP
    boxes = [{"variant": v, "seed": s, "ap": a + s, "ap50": 2 * a, "ap75": a / 2}
             for s in (0, 1) for v, a in (("RetinaNet", 10.0), ("RetinaNet w/ flows", 11.0))]
    parts = study_parts("Table XII", boxes, "RetinaNet", PAPER["table_xii"],
                        ("ap", "ap50", "ap75"), ylabel="box AP")
    assert "| RetinaNet w/ flows | 36.7 | 57.1 | 39.4 |" in parts[4]
    assert parts[1].axes[0].get_ylabel() == "difference in box AP (points)"
    assert "box AP higher by 1.0 (95% CI 1.0 to 1.0; paper +1.1, outside the CI)" in parts[2]
    # Fig. 4: the paper gives only its difference, shown as such
    fig4 = [{"variant": v, "seed": s, "pq": p + s, "pq_th": p, "pq_st": p}
            for s in (0, 1) for v, p in (("cls flows", 20.0), ("spatial flows", 21.0))]
    parts = study_parts("Fig. 4", fig4, "cls flows", PAPER["fig_4"])
    assert parts[4].startswith("**Fig. 4, paper's differences** (COCO val, ResNet-50)")
    assert "| spatial flows | cls flows | 0.7 | 0.8 | 0.5 |" in parts[4]
    assert "PQ higher by 1.0 (95% CI 1.0 to 1.0; paper +0.7, outside the CI)" in parts[2]


def test_difference_bars_draw_the_intervals_and_the_paper():
    from spatialflow.studies import compare

    rows = [{"variant": v, "seed": s, "pq": 10.0 + s + d * (1 + s), "pq_th": 5.0 - d}
            for s in range(4) for v, d in (("base", 0.0), ("a", 1.0), ("b", -0.5))]
    paper = [{"variant": "base", "pq": 40.0}, {"variant": "a", "pq": 40.5}]
    cmp_ = compare(rows, "base", ("pq", "pq_th"), paper=paper)
    fig = difference_bars(cmp_, ("pq", "pq_th"), title="T")
    ax = fig.axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [b.get_height() for b in bars[0]] == pytest.approx([2.5, -1.25])
    assert [b.get_height() for b in bars[1]] == pytest.approx([-1.0, 0.5])
    err = [c for c in ax.containers if isinstance(c, ErrorbarContainer)][0]
    segs = err.lines[2][0].get_segments()
    assert segs[0][:, 1] == pytest.approx([cmp_[0]["pq"]["ci_low"], cmp_[0]["pq"]["ci_high"]])
    diamonds = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(diamonds) == 1  # the paper has PQ only
    assert np.asarray(diamonds[0].get_offsets())[:, 1].tolist()[0] == pytest.approx(0.5)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(labels) == ["PQ", "PQ_Th", "paper's difference"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    with pytest.raises(ValueError, match="no compared variants"):
        difference_bars([])


def test_study_charts_are_drawn_from_the_saved_json_alone(tmp_path):
    from PIL import Image

    from spatialflow.studies import PAPER, save_rows, study_record
    from viz.study_charts import chart_name, main, study_charts

    stages = [{"variant": f"thing x{n}", "stages": n, "seed": s, "pq": 20.0 + n + s,
               "pq_th": 5.0, "pq_st": 30.0 - n} for n in (0, 1, 2) for s in (0, 1, 2)]
    boxes = [{"variant": v, "seed": s, "ap": a + s, "ap50": 2 * a, "ap75": a / 2}
             for s in (0, 1) for v, a in (("RetinaNet", 10.0), ("RetinaNet w/ flows", 11.0))]
    path = save_rows(tmp_path / "07.json", {
        "Table VII": study_record(stages, 0, by="stages", paper=PAPER["table_vii"]),
        "Table XII": study_record(boxes, "RetinaNet", ("ap", "ap50", "ap75"),
                                  paper=PAPER["table_xii"])})
    assert chart_name("Table VII") == "table_vii.png" and chart_name("Fig. 4") == "fig_4.png"
    written = study_charts(path, tmp_path / "png", note="6 seeds x 500 iterations")
    assert {k: v.name for k, v in written.items()} == {"Table VII": "table_vii.png",
                                                      "Table XII": "table_xii.png"}
    assert all(Image.open(p).size[0] > 300 for p in written.values())
    assert main([str(path), "--out", str(tmp_path / "cli")]) == 0
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["table_vii.png",
                                                                     "table_xii.png"]
    (tmp_path / "bad.json").write_text('[{"pq": 1}]')
    with pytest.raises(ValueError, match="bad.json: not a study JSON"):
        study_charts(tmp_path / "bad.json", tmp_path)
