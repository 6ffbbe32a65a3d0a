"""The memorisation check on the two real COCO images: a short run whose losses fall, and a
report that says where a model that did not learn them fails."""

import json

from spatialflow.benchmark.memorisation import format_memorisation, memorise, sample_root


def test_a_few_iterations_on_the_coco_sample_lower_the_losses(coco_sample, tmp_path):
    # rate 0.5 it/s for 0.5 minute: a 15-iteration schedule (stopped at 30 s if not done)
    result = memorise(coco_sample, tmp_path, minutes=0.5, rate=0.5,
                      overrides=["train.log_every=1", "train.warmup_iters=2"])
    assert result["max_iters"] == 15 and 2 <= result["iterations"] <= 15
    logs = [json.loads(line) for line in
            (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logs if "loss" in r]
    assert len(losses) == result["iterations"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # it learns
    # train = val: the two images, 133 categories, crowd segments included
    root = sample_root(coco_sample, tmp_path)
    assert (root / "train").resolve() == (root / "val").resolve() == (coco_sample / "images")
    per_class = result["per_class"]
    assert per_class and all(set(c) == {"tp", "fp", "fn", "iou", "name", "isthing"}
                             for c in per_class.values())
    assert per_class[1]["name"] == "person" and per_class[1]["isthing"] == 1
    assert 0.0 <= result["stuff_accuracy"] <= 1.0
    saved = json.loads((tmp_path / "memorisation.json").read_text())
    assert saved["metrics"] == result["metrics"]
    text = format_memorisation(result)
    assert text.splitlines()[2].startswith(f"| 0.5 | {result['iterations']} |")
    if result["metrics"]["pq"] < 90:  # after seconds: it says where it fails
        assert "did not learn these images" in text and "| 1 person | thing |" in text


def test_the_report_of_a_model_that_learnt_them():
    result = {"minutes": 5, "iterations": 300, "train_s": 290.0, "stuff_accuracy": 0.97,
              "metrics": {"pq": 92.3, "pq_th": 91.1, "pq_st": 94.0, "ap": 97.1, "sq_th": 93.0},
              "per_class": {1: {"tp": 4, "fp": 0, "fn": 0, "iou": 0.93, "name": "person",
                                "isthing": 1}}}
    text = format_memorisation(result)
    assert "| 5 | 300 | 290 | 92.3 | 91.1 | 94.0 | 97.1 | 97.0% |" in text
    assert text.endswith("PQ 92.3 >= 90: the images are learnt by heart.")
    result["metrics"] = dict(result["metrics"], pq=80.0)
    result["per_class"][149] = {"tp": 0, "fp": 1, "fn": 1, "iou": 0.0, "name": "road",
                                "isthing": 0}
    text = format_memorisation(result)
    assert "| 149 road | stuff | 0 | 1 | 1 | 0.00 |" in text
    assert "| 1 person |" not in text  # perfect classes are not listed
    assert "97.0% of stuff pixels right" in text


def test_coco_s_own_layout_trains_and_evaluates(coco_sample, tmp_path, capsys):
    """The real COCO sample laid out as COCO ships it (``{split}2017/``,
    ``annotations/panoptic_{split}2017.json`` and its PNG folder): trained and evaluated with
    the CLI, no file edited."""
    import os

    from spatialflow.cli import main

    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        os.symlink(coco_sample / "images", root / f"{split}2017")
        os.symlink(coco_sample / "panoptic", root / "annotations" / f"panoptic_{split}2017")
        os.symlink(coco_sample / "panoptic.json",
                   root / "annotations" / f"panoptic_{split}2017.json")
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny-cpu", "--out", str(run), "--set",
                 f"data.root={root}", "data.min_size=[160]", "data.test_size=160",
                 "data.num_workers=0", "train.batch_size=2", "train.base_batch_size=2",
                 "train.max_iters=2", "train.warmup_iters=0"]) == 0
    assert main(["evaluate", str(run), "--quiet", "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["panoptic"]["All"]["n"] > 0 and "AP" in metrics["bbox"]
    assert len(json.loads((tmp_path / "eval" / "panoptic_pred.json").read_text())[
        "annotations"]) == 2
    capsys.readouterr()
