"""Saying what a study will do before it starts: the runs to train, the time they take on this
machine."""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

from spatialflow.studies.running import _plan, run_study
from spatialflow.studies.variants import Variant


def plan_study(variants: Sequence[Variant], seeds: Sequence[int], out, base="tiny-cpu",
               overrides: Sequence[str] = (), workers: int = 1, measure: bool = True) -> dict:
    """What :func:`run_study` with the same arguments will do, before it starts: ``runs``
    (all of them), ``to_train`` (those not cached in ``out``), ``iterations`` (of those, in
    all), ``workers`` and, with ``measure``, ``minutes``: the training time, estimated from
    a few training steps of the base config run here as the study runs them (``workers``
    processes side by side, one share of the threads each) and
    :data:`~spatialflow.benchmark.training.LOOP_SHARE`. Evaluation comes on top."""
    rows, jobs = _plan(variants, seeds, out, base, overrides, write_data=False)
    iters = [cfg.train.max_iters for cfg, _ in jobs]
    known = all(i is not None for i in iters)  # (an epoch schedule needs the data's length)
    plan = {"runs": len(rows), "to_train": len(jobs), "iterations": sum(iters) if known else None,
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
                  say: Optional[Callable[[str], None]] = print) -> List[dict]:
    """:func:`run_study` after saying what it will do (:func:`describe_plan`: runs to train,
    cached ones and the measured time; ``quick``: not measured, and no progress bars), as the
    notebooks run their studies."""
    if say is not None:
        say(describe_plan(plan_study(variants, seeds, out, base, overrides, workers,
                                     measure=not quick)))
    return run_study(variants, seeds, out, base, overrides, progress=not quick, workers=workers)
