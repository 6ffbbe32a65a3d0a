"""``make figures``: the pictures of the README and docs/figures.md regenerated from the package."""

import json

import numpy as np
import pytest
from PIL import Image

from viz.figures import FIGURES, main


def test_figures_are_written_from_study_runs(tmp_path, capsys):
    out, study = tmp_path / "figures", tmp_path / "study"
    assert main(["--out", str(out), "--study", str(study), "--quick", "--seeds", "0",
                 "--split", "train"]) == 0
    for name in FIGURES:
        image = np.asarray(Image.open(out / name).convert("RGB"))
        assert image.shape[0] > 100 and image.shape[1] > 200 and image.std() > 10, name
    printed = capsys.readouterr().out
    assert all(f"{name}: {out / name}" in printed for name in FIGURES)
    saved = json.loads((out / "figures.json").read_text())
    assert [r["variant"] for r in saved["rows"]] == ["baseline", "+ sub-networks",
                                                     "+ spatial flows", "+ both"]
    # the flow maps' sentence says what their numbers say
    flows = json.loads((out / "flow_maps.json").read_text())
    assert set(flows["shares"]) == {"reg->cls", "reg->stuff", "reg->thing", "stuff->thing"}
    for name, share in flows["shares"].items():
        assert f"{name} {100 * share['share']:.0f}% ({share['ratio']:.1f}x)" in flows["sentence"]
        assert share["ratio"] == pytest.approx(share["share"] / share["area"])
    area = next(iter(flows["shares"].values()))["area"]
    assert flows["sentence"].startswith(f"The ground-truth thing boxes cover {100 * area:.0f}%")
    overlay = Image.open(out / "overlay.png")
    assert overlay.height > 2 * 128  # two images, each ground truth | prediction
    assert len(list(study.glob("*/seed0/model_final.pt"))) == 4  # cached for the notebooks
    # the pictures of the first seed alone need its two runs only (here: cached)
    again = tmp_path / "again"
    assert main(["--out", str(again), "--study", str(study), "--quick", "--seeds", "0",
                 "--split", "train", "--only", "overlay.png", "cam_pair.png"]) == 0
    assert sorted(p.name for p in again.iterdir()) == ["cam_pair.png", "overlay.png"]


def test_overlay_figure_titles_and_legend():
    from spatialflow.data.categories import CategoryMap
    from spatialflow.data.synthetic import SYNTHETIC_CATEGORIES
    from viz.overlay import overlay_figure

    cats = CategoryMap.from_coco(SYNTHETIC_CATEGORIES)
    image = np.zeros((40, 60, 3), np.uint8)
    pan = np.zeros((40, 60), np.int32)
    pan[:20] = 1
    pan[25:35, 10:30] = 2
    segments = [{"id": 1, "category_id": 149, "area": 1200, "bbox": [0, 0, 60, 20]},
                {"id": 2, "category_id": 3, "area": 200, "bbox": [10, 25, 20, 10]}]
    fig = overlay_figure([(image, [("ground truth", pan, segments), ("prediction", pan, [])])],
                         cats, title="what it shows")
    assert [ax.get_title() for ax in fig.axes] == ["ground truth", "prediction"]
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["car (thing)", "road (stuff)"]
    assert fig._suptitle.get_text() == "what it shows"


def test_quality_figure_from_a_bench_json(tmp_path):
    from viz.figures import quality_figure

    runs = [{"minutes": t, "seed": s, "pq": 20.0 * t, "pq_th": 3.0 * t + s}
            for t in (2, 10) for s in (0, 1, 2)]
    (tmp_path / "bench.json").write_text(json.dumps({"quality": {"runs": runs}}))
    path = quality_figure(tmp_path / "bench.json", tmp_path)
    image = np.asarray(Image.open(path).convert("RGB"))
    assert path.name == "quality_per_minute.png" and image.shape[1] > 400 and image.std() > 10
