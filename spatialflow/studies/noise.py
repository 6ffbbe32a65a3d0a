"""Where a study's noise comes from: the spread of one model scored on disjoint val sets
(evaluation noise), the spread over seeds of one variant (seed noise), and how much of it a
paired difference leaves (the correlation of the two runs of a seed).

Measured by ``benchmarks/study_noise.py``; the figures it wrote are in ``docs/studies.md`` and
decide the val split's size and the default seeds of the notebooks."""

from __future__ import annotations

import math
import statistics
from typing import Dict, List, Sequence

from spatialflow.studies.statistics import half_width, paired, pairing_gain, seeds_for


def _sd(values: Sequence[float]) -> float:
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    return statistics.stdev(v) if len(v) > 1 else math.nan


def evaluation_noise(rows: Sequence[dict], metrics: Sequence[str], reference, variant,
                     by: str = "variant") -> Dict[str, dict]:
    """From rows ``{by, "val_set", "images", <metric>...}`` (one model of each of ``reference``
    and ``variant`` scored on several disjoint val sets of ``images`` images each): per
    ``images`` and metric, ``sd_<name>`` (each model's spread over the val sets) and
    ``sd_diff`` (the spread of their difference on the same set; scoring noise the two share
    leaves it), with ``sets`` (how many val sets)."""
    out: Dict[str, dict] = {}
    for images in sorted({r["images"] for r in rows}):
        sub = [dict(r, seed=r["val_set"]) for r in rows if r["images"] == images]
        entry: Dict[str, dict] = {}
        for m in metrics:
            pairs = paired(sub, variant, reference, m, by)
            entry[m] = {"sd_reference": _sd([p["reference"] for p in pairs]),
                        "sd_variant": _sd([p["variant"] for p in pairs]),
                        "sd_diff": _sd([p["diff"] for p in pairs]), "sets": len(pairs)}
        out[str(images)] = entry
    return out


def seed_noise(rows: Sequence[dict], metrics: Sequence[str], reference, variant,
               by: str = "variant", target: float = 1.0) -> Dict[str, dict]:
    """From a study's rows (one per variant and seed, all scored on one val split): per metric
    :func:`~spatialflow.studies.statistics.pairing_gain` (each variant's spread over seeds,
    the paired difference's, the unpaired one's and the correlation) with ``seeds_paired`` /
    ``seeds_unpaired``: the seeds a 95% interval of half-width ``target`` needs at those
    spreads (None: more than 100), and ``half_width``: the one reached by these seeds."""
    out = {}
    for m in metrics:
        pairs = paired(rows, variant, reference, m, by)
        g = pairing_gain(pairs)
        g["seeds_paired"] = seeds_for(g["sd_diff"], target)
        g["seeds_unpaired"] = seeds_for(g["sd_unpaired"], target)
        g["half_width"] = half_width(g["sd_diff"], g["n"])
        out[m] = g
    return out


def format_evaluation_noise(evaluation: Dict[str, dict], labels: Dict[str, str]) -> List[str]:
    """The lines of a markdown table of :func:`evaluation_noise`."""
    lines = ["| val images | metric | sets | sd, reference | sd, variant | sd of the difference |",
             "|---:|---|---:|---:|---:|---:|"]
    for images, entry in evaluation.items():
        for m, e in entry.items():
            lines.append(f"| {images} | {labels.get(m, m)} | {e['sets']} | "
                         f"{e['sd_reference']:.2f} | {e['sd_variant']:.2f} | {e['sd_diff']:.2f} |")
    return lines


def format_seed_noise(seeds: Dict[str, dict], labels: Dict[str, str]) -> List[str]:
    """The lines of a markdown table of :func:`seed_noise`."""
    lines = ["| metric | seeds | sd, reference | sd, variant | sd unpaired | sd paired | "
             "correlation | 95% half-width reached | seeds for +-1.0 paired | unpaired |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m, g in seeds.items():
        lines.append(f"| {labels.get(m, m)} | {g['n']} | {g['sd_reference']:.2f} | "
                     f"{g['sd_variant']:.2f} | {g['sd_unpaired']:.2f} | {g['sd_diff']:.2f} | "
                     f"{g['correlation']:.2f} | {g['half_width']:.2f} | "
                     f"{g['seeds_paired'] or '> 100'} | {g['seeds_unpaired'] or '> 100'} |")
    return lines
