"""Saying what a study will do before it starts (the runs to train, the time they take on this
machine, the interval half-width to expect at the measured noise) and the precision it reached
after."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

from spatialflow.config import load_config
from spatialflow.studies.running import _plan, run_study
from spatialflow.studies.statistics import LABELS, half_width, seeds_for
from spatialflow.studies.variants import Variant

#: the noise of a paired study as ``benchmarks/study_noise.py`` measured it (written there with
#: ``--package``): ``{"measurements": [...]}``, one per run length, each with the command, the
#: machine, ``iters``, ``val_images``, ``seeds`` and per metric ``sd_diff``, the spread over
#: seeds of a paired difference (+ both minus baseline)
MEASURED_NOISE = Path(__file__).with_name("measured_noise.json")


#: what a notebook's quick mode says of its study
PREVIEW = ("Quick mode: a preview, too small to conclude anything (few seeds of short runs); "
           "it shows how a study is run and read. Set QUICK = False for the study itself.")


def measured_noise(iters: Optional[int] = None, path=MEASURED_NOISE) -> dict:
    """The study noise measured by ``benchmarks/study_noise.py`` (:data:`MEASURED_NOISE`) for
    runs of ``iters`` iterations: the measurement of that length, else of the nearest one
    measured (the longest with ``iters=None``)."""
    found = json.loads(Path(path).read_text())["measurements"]
    if iters is None:
        return max(found, key=lambda m: m["iters"])
    return min(found, key=lambda m: (abs(m["iters"] - iters), -m["iters"]))


def package_noise(result: Mapping, path=MEASURED_NOISE) -> dict:
    """Add (or replace, for the same ``iters``) the paired spread of one result of
    ``benchmarks/study_noise.py`` in :data:`MEASURED_NOISE`; returns the entry written."""
    entry = {"command": result["command"], "iters": result["iters"],
             "val_images": result["val_images"], "seeds": len(result["seeds"]),
             "machine": f"{result['machine']['cpu_model']}, AMX {result['machine']['amx']}",
             "sd_diff": {m: g["sd_diff"] for m, g in result["seed"].items()}}
    path = Path(path)
    found = json.loads(path.read_text())["measurements"] if path.is_file() else []
    found = sorted([m for m in found if m["iters"] != entry["iters"]] + [entry],
                   key=lambda m: m["iters"])
    path.write_text(json.dumps({"measurements": found}, indent=1) + "\n")
    return entry


def expected_precision(seeds: int, noise: Optional[Mapping] = None,
                       metrics: Sequence[str] = ("pq", "pq_th", "pq_st")) -> Dict[str, float]:
    """Per metric, the 95% interval half-width a paired difference over ``seeds`` seeds will
    have at the spread ``noise["sd_diff"][metric]`` (default: :func:`measured_noise`);
    infinite for one seed, NaN for a metric not measured."""
    noise = measured_noise() if noise is None else noise
    sd = noise["sd_diff"]
    return {m: half_width(sd[m], seeds) if m in sd else math.nan for m in metrics}


def describe_precision(seeds: int, noise: Optional[Mapping] = None,
                       metrics: Sequence[str] = ("pq", "pq_th", "pq_st"),
                       target: Optional[float] = None) -> str:
    """One sentence on :func:`expected_precision`, with where the noise was measured; with
    ``target`` (a half-width in points), the seeds each metric that misses it would need."""
    noise = measured_noise() if noise is None else noise
    hw = expected_precision(seeds, noise, metrics)
    if seeds < 2:
        return ("With one seed a difference has no interval: this study is too small to "
                "conclude anything; it shows how one is read.")
    parts = ", ".join(f"±{hw[m]:.1f} {LABELS.get(m, m)}" for m in metrics if not math.isnan(hw[m]))
    if not parts:
        return (f"Expected precision: unknown, the noise of {', '.join(metrics)} was not "
                f"measured (`benchmarks/study_noise.py` measures PQ, PQ_Th, PQ_St and box AP).")
    text = (f"Expected precision: with {seeds} paired seeds the 95% intervals of the differences "
            f"should be about {parts} wide on each side (at the spread of a paired difference "
            f"measured by `{noise['command']}`: {noise['iters']} iterations, "
            f"{noise['val_images']} val images, {noise['machine']}; other lengths and variants "
            f"differ).")
    missed = [m for m in metrics if target is not None and hw[m] > target]
    if missed:
        need = [(LABELS.get(m, m), seeds_for(noise["sd_diff"][m], target)) for m in missed]
        text += (f" Reaching ±{target:.1f} would take " + ", ".join(
            f"{n or 'more than 100'} seeds for {label}" for label, n in need)
            + " at this spread.")
    return text


def reached_precision(comparison: Sequence[Mapping],
                      metrics: Sequence[str] = ("pq", "pq_th", "pq_st")) -> Dict[str, float]:
    """Per metric, the widest 95% half-width among a :func:`~spatialflow.studies.compare`'s
    rows (NaN where no row has an interval)."""
    out = {}
    for m in metrics:
        widths = [(c[m]["ci_high"] - c[m]["ci_low"]) / 2 for c in comparison
                  if c[m]["n"] > 1 and not math.isnan(c[m]["ci_low"])]
        out[m] = max(widths) if widths else math.nan
    return out


def describe_reached(comparison: Sequence[Mapping], metrics: Sequence[str] = ("pq", "pq_th",
                                                                              "pq_st"),
                     target: Optional[float] = None) -> str:
    """One sentence on :func:`reached_precision`; with ``target`` (a half-width in points),
    whether every difference reached it."""
    hw = reached_precision(comparison, metrics)
    if all(math.isnan(v) for v in hw.values()):
        return "Precision reached: no interval (one seed): too small to conclude anything."
    text = "Precision reached: the widest 95% half-width is " + ", ".join(
        f"±{hw[m]:.1f} {LABELS.get(m, m)}" for m in metrics if not math.isnan(hw[m]))
    if target is not None:
        missed = [LABELS.get(m, m) for m in metrics if not hw[m] <= target]
        text += (f"; every difference is at most ±{target:.1f}" if not missed else
                 f"; wider than ±{target:.1f} for {', '.join(missed)}: more seeds would narrow it")
    return text + "."


def plan_study(variants: Sequence[Variant], seeds: Sequence[int], out, base="tiny-cpu",
               overrides: Sequence[str] = (), workers: int = 1, measure: bool = True) -> dict:
    """What :func:`run_study` with the same arguments will do, before it starts: ``runs``
    (all of them), ``to_train`` (those not cached in ``out``), ``iterations`` (of those, in
    all), ``run_iters`` (the iterations of one run of the base config, None for an epoch
    schedule), ``workers`` and, with ``measure``, ``minutes``: the training time, estimated from
    a few training steps of the base config run here as the study runs them (``workers``
    processes side by side, one share of the threads each) and
    :data:`~spatialflow.benchmark.training.LOOP_SHARE`. Evaluation comes on top."""
    rows, jobs = _plan(variants, seeds, out, base, overrides, write_data=False)
    iters = [cfg.train.max_iters for cfg, _ in jobs]
    known = all(i is not None for i in iters)  # (an epoch schedule needs the data's length)
    plan = {"runs": len(rows), "to_train": len(jobs), "iterations": sum(iters) if known else None,
            "run_iters": load_config(base, list(overrides)).train.max_iters,
            "workers": workers, "minutes": None}
    if measure and jobs and known:
        from spatialflow.benchmark import training  # (it uses the study variants)

        cfg = jobs[0][0]
        step = training.training_throughput(
            base, list(overrides), max(cfg.data.min_size), cfg.train.batch_size, steps=3,
            processes=min(workers, len(jobs)))["step_s"]
        seconds = step / training.LOOP_SHARE * sum(iters) / min(workers, len(jobs))
        plan["minutes"] = seconds / 60
    return plan


def describe_plan(plan: dict) -> str:
    """One line on a :func:`plan_study`: how many runs, how many cached, how long."""
    if not plan["to_train"]:
        return f"All {plan['runs']} runs are already trained: reading them back."
    text = (f"{plan['to_train']} of {plan['runs']} runs to train ({plan['runs'] - plan['to_train']} "
            f"cached), {plan['workers']} at a time")
    if plan["iterations"] is not None:
        text += f", {plan['iterations']} iterations in all"
    if plan["minutes"] is not None:
        text += (f": about {plan['minutes']:.0f} minutes of training on this machine "
                 f"(measured by a few steps), plus each run's evaluation")
    return text + "."


def planned_study(variants: Sequence[Variant], seeds: Sequence[int], out, base="tiny-cpu",
                  overrides: Sequence[str] = (), workers: int = 1, quick: bool = False,
                  target: Optional[float] = None,
                  say: Optional[Callable[[str], None]] = print,
                  metrics: Sequence[str] = ("pq", "pq_th", "pq_st")) -> List[dict]:
    """:func:`run_study` after saying what it will do (:func:`describe_plan`: runs to train,
    cached ones and the measured time) and the precision to expect for ``metrics``
    (:func:`describe_precision`; box AP for a detector study), as the notebooks run their
    studies. ``quick``: a preview (time not measured, no progress bars), said to be too small
    to conclude. ``target``: a half-width in points, for the seeds a metric that misses it
    would need."""
    if say is not None:
        plan = plan_study(variants, seeds, out, base, overrides, workers, measure=not quick)
        say(describe_plan(plan))
        say(PREVIEW if quick else describe_precision(
            len(seeds), measured_noise(plan["run_iters"]), metrics, target=target))
    return run_study(variants, seeds, out, base, overrides, progress=not quick, workers=workers)
