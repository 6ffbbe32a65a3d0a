"""The command line: subcommands, exit codes and messages."""

import json
import subprocess
import sys


from spatialflow.cli import main


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "panopticapi-lite" in out and "device:" in out
    for preset in ("tiny-cpu", "r50-coco", "r101-dcn-coco", "r50-cityscapes"):
        assert preset in out


def test_set_collects_every_override():
    """``--set a b --set c`` (as detectron2's opts or a repeated flag) applies all three."""
    from spatialflow.cli import build_parser

    for command in (["train", "--out", "x"], ["evaluate", "run"], ["predict", "run", "a.png",
                                                                   "--out", "y"],
                    ["info", "--model", "tiny-cpu"], ["demo"]):
        args = build_parser().parse_args(command + ["--set", "a=1", "b=2", "--set", "c=3"])
        assert args.set == ["a=1", "b=2", "c=3"], command
        assert build_parser().parse_args(command).set == []


def test_make_data_writes_coco_panoptic(tmp_path, capsys):
    out = tmp_path / "synth"
    rc = main(["make-data", "synthetic", "--out", str(out), "--num-train", "3", "--num-val", "2",
               "--size", "96", "--seed", "1", "--quiet"])
    assert rc == 0
    for split, n in (("train", 3), ("val", 2)):
        data = json.loads((out / f"panoptic_{split}.json").read_text())
        assert len(data["images"]) == n == len(list((out / split).iterdir()))
        assert len(list((out / f"panoptic_{split}").glob("*.png"))) == n
        assert (out / f"instances_{split}.json").is_file()
        assert data["info"]["scene"] == "close"  # the default
    assert str(out.resolve()) in capsys.readouterr().out
    wide = tmp_path / "wide"  # the first version's scenes, same seed
    assert main(["make-data", "synthetic", "--out", str(wide), "--num-train", "3", "--num-val",
                 "2", "--size", "96", "--seed", "1", "--scene", "wide", "--quiet"]) == 0
    assert json.loads((wide / "panoptic_val.json").read_text())["info"]["scene"] == "wide"
    assert any((wide / "train" / f.name).read_bytes() != f.read_bytes()
               for f in (out / "train").iterdir())  # things drawn larger


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    rc = main(["make-data", "synthetic", "--out", str(tmp_path), "--num-train", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--num-train must be >= 1" in err
    rc = main(["demo", "--out", str(tmp_path), "--set", "model.flows.nope=true"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown config key 'model.flows.nope'" in err and "Traceback" not in err


def test_demo_trains_evaluates_and_reports(tmp_path, capsys):
    args = ["demo", "--out", str(tmp_path / "demo"), "--overlays", "2", "--set",
            "data.synthetic.num_train=4", "data.synthetic.num_val=2", "data.synthetic.size=96",
            "data.min_size=[96]", "data.max_size=96", "data.test_size=96", "data.num_workers=0",
            "train.max_iters=2", "train.warmup_iters=1", "train.batch_size=2",
            "train.base_batch_size=2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]", "demo done"):
        assert step in out
    assert "Things" in out and "box AP" in out
    demo = tmp_path / "demo"
    report = (demo / "report.md").read_text()
    assert "PQ" in report and "overlays/" in report
    # the overlays: the val images that hold a thing, enlarged, titled, with a legend
    val = json.loads((demo / "data" / "panoptic_val.json").read_text())
    thing_ids = {c["id"] for c in val["categories"] if c["isthing"]}
    with_things = [a for a in val["annotations"]
                   if any(s["category_id"] in thing_ids for s in a["segments_info"])]
    pngs = sorted((demo / "overlays").glob("*.png"))
    assert len(pngs) == min(2, len(with_things)) > 0
    from PIL import Image
    width, height = Image.open(pngs[0]).size
    assert width >= 3 * 384 and height > 384  # three 384 px panels, titles and a legend
    assert "first val images that hold things" in report
    metrics = json.loads((demo / "run" / "eval" / "final" / "metrics.json").read_text())
    assert set(metrics) == {"panoptic", "bbox"}
    # a second run reuses the trained model
    assert main(args) == 0 and "already trained" in capsys.readouterr().out


def test_demo_sizes_its_schedule_to_the_minutes(tmp_path, capsys, monkeypatch):
    """``demo --minutes M``: train.max_iters = M minutes at the measured rate (the probe's
    step over LOOP_SHARE); a demo run already there keeps its own schedule."""
    from spatialflow.benchmark import training
    from spatialflow.config import load_config

    step_s = []
    monkeypatch.setattr(training, "training_throughput",
                        lambda *a, **k: {"step_s": step_s[-1]})
    step_s.append(training.LOOP_SHARE * 6 / 3.5)  # 6 s at 3.5 iterations a 6 s: 3 iterations
    args = ["demo", "--out", str(tmp_path / "demo"), "--overlays", "1", "--minutes", "0.1",
            "--set", "data.synthetic.num_train=4", "data.synthetic.num_val=2",
            "data.synthetic.size=96", "data.min_size=[96]", "data.max_size=96",
            "data.test_size=96", "train.batch_size=2", "train.base_batch_size=2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "for 3 iterations of 2 images (sized to 0.1 minutes here: 1.71 s an iteration" in out
    cfg = load_config(tmp_path / "demo" / "run" / "config.yaml")
    assert cfg.train.max_iters == 3 and cfg.train.warmup_iters == 0  # a quarter of 3
    step_s.append(0.001)  # a faster machine later: the run there is kept as it is
    assert main(args) == 0 and "for 3 iterations of 2 images ->" in capsys.readouterr().out
    assert training.schedule_for_minutes("tiny-cpu", [], 2, rate=1.5)[0] == [
        "train.max_iters=180", "train.warmup_iters=45"]
    assert training.schedule_for_minutes("tiny-cpu", [], 10, rate=1.5)[0][1] == \
        "train.warmup_iters=50"  # the preset's warm-up, when it is under a quarter


def test_entry_point_help_and_usage_errors():
    run = lambda *a: subprocess.run([sys.executable, "-m", "spatialflow.cli", *a],
                                    capture_output=True, text=True)
    r = run("--help")
    assert r.returncode == 0
    for cmd in ("info", "make-data", "demo"):
        assert cmd in r.stdout
    r = run("make-data")
    assert r.returncode == 2 and "usage:" in r.stderr
    r = run("make-data", "cityscapes", "--out", "x")
    assert r.returncode == 2 and "invalid choice" in r.stderr
