"""The spatialflow.benchmark package: the inference comparison runs, its figures add up,
nothing leaks."""

import time

import pytest
import torch

from spatialflow.benchmark.inference import STAGES, format_inference, run_inference_bench
from spatialflow.benchmark.machine import (conv_peak, conv_rate, p3_shape, precision_dtype,
                                          precision_name)
from spatialflow.benchmark.models import build_spatialflow, spatialflow_variants
from spatialflow.benchmark.quality import (evaluation_speed, format_evaluation, format_quality,
                                          quality_per_minute)
from spatialflow.benchmark.timing import median_time, peak_rss_mb, stage_timer
from spatialflow.benchmark.training import format_training, training_throughput
from spatialflow.model.summary import count_flops


def hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_stage_timer_sums_module_time_and_removes_its_hooks():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with stage_timer(model, {"first": ("0",), "last": ("2",)}) as t:
        model(torch.rand(3, 4))
        model(torch.rand(3, 4))
    assert set(t) == {"first", "last"} and t["first"] > 0 and t["last"] > 0
    assert hooks(model) == 0


def test_median_time_and_flops():
    calls = []
    t = median_time(lambda: calls.append(1), repeat=4, warmup=2)
    assert len(calls) == 6 and len(t["runs"]) == 4 and t["min"] <= t["median"]
    lin = torch.nn.Linear(8, 16, bias=False)
    assert count_flops(lambda: lin(torch.rand(5, 8))) == 2 * 5 * 8 * 16
    peak = conv_peak(8, 8, channels=16, repeat=2, channels_last=True)
    assert peak["gflops"] == pytest.approx(2 * 16 * 16 * 9 * 64 / 1e9)
    assert peak["gflop_per_s"] > 0 and peak["layout"] == "channels_last"
    assert p3_shape(800) == (100, 134)  # 800 x 1067 at stride 8, rounded up
    rate = conv_rate(64, repeat=1)  # the faster layout at P3 of 64 x 85
    assert rate["shape"] == "8x11" and rate["layout"] in ("NCHW", "channels_last")
    assert rate["precision"] == "float32"
    half = conv_rate(64, repeat=1, dtype=torch.bfloat16)  # under autocast, as bf16 training
    assert half["precision"] == "bfloat16" and half["gflops"] == rate["gflops"]
    assert [precision_dtype(precision_name(d)) for d in (None, torch.bfloat16)] == [
        None, torch.bfloat16]


def test_stage_timer_times_modules_and_methods_and_unhooks():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(4, 4)

        def decode(self, x):
            time.sleep(0.01)
            return x * 2

        def forward(self, x):
            return self.decode(self.body(x))

    net, x = Net(), torch.rand(2, 4)
    with stage_timer(net, {"body": ("body",), "decode": ("decode",)}) as spent:
        y = net(x)
    assert spent["decode"] >= 0.01 and spent["body"] > 0
    assert torch.equal(y, net(x))
    # afterwards nothing is hooked or wrapped
    assert "decode" not in vars(net) and not net.body._forward_hooks
    with stage_timer(net, {"decode": ("decode",)}) as spent:
        pass
    assert spent == {"decode": 0.0}


def test_every_stage_of_spatialflow_is_timed():
    """Each module and method STAGES names runs in an eval forward (none is silently 0)."""
    model, _, _ = build_spatialflow(preset="tiny-cpu")
    each = {path: (path,) for paths in STAGES.values() for path in paths}
    with torch.inference_mode(), stage_timer(model, each) as spent:
        model([torch.rand(3, 64, 80)])
    assert all(v > 0 for v in spent.values()), spent


def test_inference_bench_on_tiny_models():
    result = run_inference_bench(sizes=[64], repeat=1, preset="tiny-cpu", progress=None,
                                   models=["SpatialFlow R50", "naive baseline R50",
                                           "RetinaNet R50 w/ flows", "Mask R-CNN R50-FPN"])
    rows = {r["model"]: r for r in result["rows"]}
    assert list(rows) == ["SpatialFlow R50", "naive baseline R50", "RetinaNet R50 w/ flows",
                          "Mask R-CNN R50-FPN"]
    for r in rows.values():
        assert r["size"] == [64, 85] and r["short"] == 64
        assert r["seconds"] > 0 and r["gflops"] > 0 and r["detections"] > 0
        assert all(v >= 0 for k, v in r["split"].items() if k not in ("post-processing", "rest"))
    sf = rows["SpatialFlow R50"]
    assert set(sf["split"]) == {"backbone+FPN", "towers", "heads", "box decoding",
                                "post-processing"}
    assert sf["split"]["box decoding"] > 0
    # the flows and sub-networks cost FLOPs: the naive baseline counts fewer
    assert rows["naive baseline R50"]["gflops"] < sf["gflops"]
    # the detector alone: no thing or stuff part, no merge
    detector = rows["RetinaNet R50 w/ flows"]
    assert detector["gflops"] < rows["naive baseline R50"]["gflops"]
    assert detector["split"]["heads"] > 0 and detector["split"]["box decoding"] > 0
    assert set(rows["Mask R-CNN R50-FPN"]["split"]) == {"backbone+FPN", "rest"}
    assert [q["short"] for q in result["ratios"]] == [64]
    assert result["ratios"][0]["time_ratio"] == pytest.approx(
        sf["seconds"] / rows["Mask R-CNN R50-FPN"]["seconds"])
    assert result["ratios"][0]["post_share"] == pytest.approx(
        sf["split"]["post-processing"] / sf["seconds"])
    assert [p["layout"] for p in result["peak"]] == ["NCHW", "channels_last"]
    text = format_inference(result)
    assert "| 64x85 | SpatialFlow R50 |" in text and "SpatialFlow / Mask R-CNN time" in text
    with pytest.raises(ValueError, match="unknown models"):
        run_inference_bench(sizes=[64], models=["nope"], progress=None)


def test_bench_cli_writes_json_and_markdown(tmp_path, capsys):
    import json

    from spatialflow.cli import main

    out = tmp_path / "bench"
    assert main(["bench", "--sizes", "64", "--repeat", "1", "--preset", "tiny-cpu", "--models",
                 "SpatialFlow R50", "--training", "none", "--minutes", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "## Inference" in printed and "| 64x85 | SpatialFlow R50 |" in printed
    result = json.loads((out / "bench.json").read_text())
    assert [r["model"] for r in result["inference"]["rows"]] == ["SpatialFlow R50"]
    assert set(result) == {"command", "inference"}
    assert (out / "bench.md").read_text().startswith("`spatialflow bench")
    assert main(["bench", "--sizes", "64", "--models", "nope", "--out", str(out)]) == 2
    assert "unknown models ['nope']" in capsys.readouterr().err
    # the inference options alone, at the largest size
    assert main(["bench", "--sizes", "48", "64", "--repeat", "1", "--preset", "tiny-cpu",
                 "--no-inference", "--options", "--training", "none", "--minutes",
                 "--out", str(out)]) == 0
    assert "## Inference options (64 px)" in capsys.readouterr().out
    result = json.loads((out / "bench.json").read_text())
    assert set(result) == {"command", "options"} and result["options"]["size"] == [64, 85]


def test_training_and_quality_tables():
    row = {"label": "x", "preset": "tiny-cpu", "size": [256, 256], "batch": 4,
           "precision": "bfloat16", "images_per_s": 2.5, "step_s": 1.6, "gflops_per_step": 92.8,
           "gflop_per_s": 58.0, "peak_rss_mb": 900.4, "peak_gpu_mb": None}
    rates = {"bfloat16": {"layout": "NCHW", "shape": "100x134", "gflop_per_s": 72.5},
             "float32": {"layout": "channels_last", "shape": "100x134", "gflop_per_s": 29.0}}
    text = format_training([row, dict(row, label="y", precision="float32")], rates)
    # each step against the rate in its own precision
    assert "| x | 256x256 x 4 | bfloat16 | 2.50 | 1.60 | 92.8 | 58 | 80% | 900 | - |" in text
    assert "| y | 256x256 x 4 | float32 | 2.50 | 1.60 | 92.8 | 58 | 200% | 900 | - |" in text
    assert "convolution rate in bfloat16: 72 GFLOP/s" in text
    assert "256 x 100x134 input, NCHW" in text and "in float32: 29 GFLOP/s" in text
    assert "| 58 | - | 900 |" in format_training([row])
    run = {"pq": 20.0, "pq_th": 0.0, "pq_st": 40.0, "ap": 0.1}
    text = format_quality({"runs": [
        {"minutes": 1, "seed": 0, "max_iters": 40, "iteration": 37, "train_s": 61.2, **run}],
        "median": [{"minutes": 1, "seeds": [0], "iteration": 37, "max_iters": 40,
                    "train_s": 61.2, **run}]})
    assert "| 1 | 1 (median) | 37 | 20.0 | 0.0 | 40.0 | 0.1 |" in text
    assert "| 1 | 0 | 37 (40) | 61 | 20.0 | 0.0 | 40.0 | 0.1 |" in text


def test_training_peak_memory_is_the_child_s_own():
    """A child spawned by a process that once held much memory reports its own peak."""
    import gc

    ballast = torch.ones(2**31, dtype=torch.uint8)  # 2 GiB touched in this process
    del ballast
    gc.collect()
    assert peak_rss_mb() >= 2048
    row = training_throughput("tiny-cpu", ["model.fpn_channels=16"], size=64, batch=2,
                                steps=1, warmup=0)
    assert 100 < row["peak_rss_mb"] < 1500


def test_training_throughput_in_a_fresh_process():
    row = training_throughput("tiny-cpu", ["model.fpn_channels=16"], size=64, batch=2, steps=2)
    assert row["batch"] == 2 and row["size"] == [64, 64]  # 64 px, a multiple of 32: no padding
    assert row["images_per_s"] > 0 and row["step_s"] > 0
    assert 100 < row["peak_rss_mb"] < 8000 and row["peak_gpu_mb"] is None
    assert row["precision"] in ("float32", "bfloat16")  # tiny-cpu: bf16 where the CPU has it


def test_training_throughput_side_by_side():
    """Two processes train at once, one thread each; the row is the slower one's."""
    row = training_throughput("tiny-cpu", ["model.fpn_channels=16", "train.amp=false"],
                                size=64, batch=2, steps=1, warmup=0, processes=2)
    assert row["threads"] == 1 and row["precision"] == "float32" and row["step_s"] > 0


def test_quality_per_minute_trains_one_run_per_mark_and_seed(tmp_path):
    """Each mark gets runs of its own, their schedules sized by the rate; a run still going at
    its mark is stopped there; the median row takes the median over the seeds."""
    from spatialflow.studies import QUICK_OVERRIDES

    quick = [o for o in QUICK_OVERRIDES if not o.startswith("train.max_iters")]
    result = quality_per_minute(tmp_path, minutes=[0.0001, 0.05], overrides=quick,
                                  seeds=[0, 1], rate=1.0)
    runs = result["runs"]
    assert [(r["minutes"], r["seed"]) for r in runs] == [(0.0001, 0), (0.0001, 1), (0.05, 0),
                                                         (0.05, 1)]
    assert [r["max_iters"] for r in runs] == [1, 1, 3, 3]  # 1 iteration/s: 0.006 s and 3 s
    assert all(r["iteration"] == 1 for r in runs[:2])
    assert all(1 <= r["iteration"] <= 3 for r in runs[2:])  # done, or stopped at 3 s
    assert all(0 <= r["pq"] <= 100 for r in runs)
    assert (tmp_path / "min0.05" / "seed1" / "eval" / "metrics.json").is_file()
    med = result["median"][1]
    assert med["minutes"] == 0.05 and med["seeds"] == [0, 1]
    assert med["pq"] == pytest.approx((runs[2]["pq"] + runs[3]["pq"]) / 2)
    assert "(median)" in format_quality(result)
    # the evaluation speed of one of those runs, on a fresh synthetic val split
    row = evaluation_speed(tmp_path / "min0.05" / "seed0", tmp_path / "speed", images=6)
    assert row["images"] == 6 and row["size"] == 128  # the run's synthetic size
    assert row["seconds"] == pytest.approx(row["predict_s"] + row["score_s"])
    assert row["images_per_s"] == pytest.approx(6 / row["seconds"]) and 0 <= row["pq"] <= 100
    assert len(list((tmp_path / "speed" / "eval" / "panoptic_pred").glob("*.png"))) == 6
    assert "| 6 | 128 |" in format_evaluation(row)
    # the same from the command line, for a run given
    from spatialflow.cli import main

    assert main(["bench", "--no-inference", "--training", "none", "--minutes", "--eval-run",
                 str(tmp_path / "min0.05" / "seed0"), "--eval-images", "3",
                 "--out", str(tmp_path / "b")]) == 0
    import json
    ev = json.loads((tmp_path / "b" / "bench.json").read_text())["evaluation"]
    assert ev["images"] == 3 and ev["run"].endswith("seed0")


def test_the_benchmarked_models_are_table_v_rows():
    """The benchmark builds its models from the same overrides as the Table V study."""
    from spatialflow.config import load_config
    from spatialflow.studies import components_variants

    rows = {v.name: v.overrides for v in components_variants()}
    ours = spatialflow_variants()
    for name, row in (("SpatialFlow R50", "+ both"), ("SpatialFlow R50, no flows",
                                                       "+ sub-networks"),
                      ("naive baseline R50", "baseline")):
        assert load_config("r50-coco", ours[name]) == load_config("r50-coco", rows[row]), name
    from spatialflow.studies import detection_variants

    assert load_config("r50-coco", ours["RetinaNet R50 w/ flows"]) == load_config(
        "r50-coco", detection_variants()[1].overrides)


def test_inference_options_on_a_tiny_model():
    from spatialflow.benchmark.options import DEFAULT, bench_options, format_options

    result = bench_options(64, repeat=1, preset="tiny-cpu", progress=None)
    rows = {r["option"]: r for r in result["rows"]}
    expected = [DEFAULT, "channels_last"] + (["1 thread"] if torch.get_num_threads() > 1
                                             else []) + ["masks for the 10 best detections"]
    assert list(rows) == expected and result["size"] == [64, 85]
    base = rows[DEFAULT]
    assert base["speedup"] == 1.0 and base["same"] is None and base["detections"] == 100
    for r in rows.values():
        assert r["seconds"] > 0 and r["speedup"] == pytest.approx(base["seconds"] / r["seconds"])
        assert set(r["split"]) == set(base["split"])
    assert rows["channels_last"]["same"] is True           # another layout, the same outputs
    assert torch.get_num_threads() == result["machine"]["threads"]  # threads set back
    text = format_options(result)
    assert "| channels_last |" in text and "same outputs" in text


def test_same_outputs():
    from spatialflow.benchmark.options import same_outputs

    a = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.5]),
         "labels": torch.tensor([1]), "sem_seg": torch.zeros(4, 4, dtype=torch.int64)}
    assert same_outputs(a, dict(a, boxes=a["boxes"] + 1e-4))
    assert not same_outputs(a, dict(a, boxes=a["boxes"] + 1))
    assert not same_outputs(a, dict(a, labels=torch.tensor([2])))
    assert not same_outputs(a, dict(a, sem_seg=torch.ones(4, 4, dtype=torch.int64)))
