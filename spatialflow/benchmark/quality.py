"""What training buys: quality (PQ, PQ_Th, box AP) after N minutes of training on this machine,
and the time to evaluate a run."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Optional, Sequence

from spatialflow.benchmark.training import schedule_for_minutes
from spatialflow.config import load_config
from spatialflow.data.coco_panoptic import CocoPanopticDataset
from spatialflow.data.synthetic import make_synthetic
from spatialflow.engine.predict import Predictor, evaluate_run
from spatialflow.engine.runs import find_checkpoint, load_checkpoint, prepare_data, run_dataset
from spatialflow.engine.train import train_or_resume
from spatialflow.evaluation import PanopticEvaluator, metrics_row


def train_and_evaluate(cfg, run, seconds: float, eval_dir, progress: bool = False) -> dict:
    """Train ``cfg`` into ``run`` (resumed if it has a checkpoint) until its schedule ends or
    ``seconds`` have passed, then evaluate it on ``cfg``'s val split into ``eval_dir``:
    ``{"iteration", "train_s" (set-up included), "metrics", "checkpoint", "dataset"}``."""
    run = Path(run)
    start = time.perf_counter()
    train_or_resume(cfg, run, progress=progress, evaluate_at_end=False, stop_after_s=seconds)
    spent = time.perf_counter() - start
    found = find_checkpoint(run)  # the final weights, or the checkpoint of the stop
    val = run_dataset(run, cfg=cfg)
    metrics = evaluate_run(found, val, eval_dir, progress=progress)
    return {"iteration": int(load_checkpoint(found)["iteration"]), "train_s": spent,
            "metrics": metrics, "checkpoint": found, "dataset": val}


def quality_per_minute(out, minutes: Sequence[float] = (1, 2, 5, 10), preset: str = "tiny-cpu",
                       overrides: Sequence[str] = (), seeds: Sequence[int] = (0, 1, 2),
                       rate: Optional[float] = None, progress: bool = False) -> dict:
    """What ``minutes`` of training give: for each mark and seed, one run of ``preset`` whose
    schedule is sized to the mark (``train.max_iters`` = the mark times this machine's training
    rate, so that its warm-up and lr decay fit in the time), stopped at the mark if it is not
    done by then, and evaluated on the synthetic val split (the data in ``out/data``, shared).

    ``rate``: iterations per second; by default measured first with :func:`training_throughput`
    (the training step of the preset at its own size and batch, with a fresh model) times
    :data:`LOOP_SHARE`. Returns ``{"rate", "runs": [one row per run: "minutes",
    "seed", "max_iters", "iteration", "train_s" (set-up included) and
    :func:`~spatialflow.evaluation.metrics_row`'s keys], "median": [per mark: "minutes", "seeds"
    and the median over the seeds of each figure]}``.
    """
    out = Path(out)
    cfg = load_config(preset, list(overrides))
    root = prepare_data(cfg, out)
    if rate is None:
        rate = schedule_for_minutes(preset, overrides, 1.0)[1]
    runs = []
    for mark in sorted(minutes):
        schedule = schedule_for_minutes(preset, overrides, mark, rate)[0]
        for seed in seeds:
            run = out / f"min{mark:g}" / f"seed{seed}"
            rcfg = load_config(preset, [*overrides, f"data.root={root}", f"train.seed={seed}",
                                        *schedule])
            done = train_and_evaluate(rcfg, run, 60 * mark, run / "eval", progress)
            runs.append({"minutes": mark, "seed": seed, "max_iters": rcfg.train.max_iters,
                         "iteration": done["iteration"], "train_s": done["train_s"],
                         **metrics_row(done["metrics"])})
    median = []
    for mark in sorted(minutes):
        rows = [r for r in runs if r["minutes"] == mark]
        keys = [k for k in rows[0] if k not in ("minutes", "seed")]
        median.append({"minutes": mark, "seeds": [r["seed"] for r in rows],
                       **{k: statistics.median(r[k] for r in rows) for k in keys}})
    return {"rate": rate, "runs": runs, "median": median}


def format_quality(result: dict) -> str:
    """Markdown table of :func:`quality_per_minute`: the median over the seeds of each mark,
    then every run."""
    lines = ["| minutes | seeds | iterations | PQ | PQ_Th | PQ_St | box AP |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["median"]:
        lines.append(f"| {r['minutes']:g} | {len(r['seeds'])} (median) | {r['iteration']:.0f} | "
                     f"{r['pq']:.1f} | {r['pq_th']:.1f} | {r['pq_st']:.1f} | {r['ap']:.1f} |")
    lines += ["", "| minutes | seed | iterations (of) | training s | PQ | PQ_Th | PQ_St | box AP |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["runs"]:
        lines.append(f"| {r['minutes']:g} | {r['seed']} | {r['iteration']} ({r['max_iters']}) | "
                     f"{r['train_s']:.0f} | {r['pq']:.1f} | {r['pq_th']:.1f} | {r['pq_st']:.1f} | "
                     f"{r['ap']:.1f} |")
    return "\n".join(lines)


def evaluation_speed(run, out, images: int = 500, progress: bool = False) -> dict:
    """Seconds to evaluate the trained ``run`` (folder or checkpoint) on ``images`` synthetic
    val images (made into ``out/data`` at the run's synthetic size and seed): predicting and
    merging every image (with the panoptic PNGs written), then panopticapi's PQ and
    pycocotools' box AP. Returns ``{"images", "size", "seconds", "images_per_s",
    "predict_s", "score_s", "pq"}``."""
    out = Path(out)
    predictor = Predictor.from_run(run)
    s = predictor.config.data.synthetic
    make_synthetic(out / "data", 0, images, s.size, s.seed + 1, progress=progress, scene=s.scene)
    val = CocoPanopticDataset.from_root(out / "data", "val")
    evaluator = PanopticEvaluator(val, out / "eval")
    start = time.perf_counter()
    for _, rec, output, pan, segments in predictor.predict_dataset(val, progress=progress):
        evaluator.add(rec, output, pan, segments)
    predicted = time.perf_counter()
    metrics = evaluator.compute()
    end = time.perf_counter()
    return {"images": images, "size": s.size, "seconds": end - start,
            "images_per_s": images / (end - start), "predict_s": predicted - start,
            "score_s": end - predicted, "pq": 100 * metrics["panoptic"]["All"]["pq"]}


def format_evaluation(row: dict) -> str:
    """Markdown table of :func:`evaluation_speed`."""
    return "\n".join([
        "| images | size | total s | images/s | predict + merge s | PQ + box AP s | PQ |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {row['images']} | {row['size']} | {row['seconds']:.1f} | {row['images_per_s']:.1f} | "
        f"{row['predict_s']:.1f} | {row['score_s']:.1f} | {row['pq']:.1f} |"])
