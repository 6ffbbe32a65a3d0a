"""``make figures``: the README's pictures regenerated from the package."""

import json

import numpy as np
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
    overlay = Image.open(out / "overlay.png")
    assert overlay.height > 2 * 128  # two images, each ground truth | prediction
    assert len(list(study.glob("*/seed0/model_final.pt"))) == 4  # cached for the notebooks


def test_quality_figure_from_a_bench_json(tmp_path):
    from viz.figures import quality_figure

    runs = [{"minutes": t, "seed": s, "pq": 20.0 * t, "pq_th": 3.0 * t + s}
            for t in (2, 10) for s in (0, 1, 2)]
    (tmp_path / "bench.json").write_text(json.dumps({"quality": {"runs": runs}}))
    path = quality_figure(tmp_path / "bench.json", tmp_path)
    image = np.asarray(Image.open(path).convert("RGB"))
    assert path.name == "quality_per_minute.png" and image.shape[1] > 400 and image.std() > 10
