"""Per-variant tables of a study: the statistics of each metric over a variant's seeds and
plain markdown tables. Comparisons between variants are :mod:`spatialflow.studies.statistics`'."""

from __future__ import annotations

import math
import statistics
from typing import Dict, List, Optional, Sequence


def _stats(values: Sequence) -> dict:
    """mean, sample std (0 for one value), min, max and n of the values that are not None/NaN."""
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    if not v:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
            "min": min(v), "max": max(v), "n": len(v)}


def group_rows(rows: Sequence[dict], key: str, order: Optional[Sequence] = None) -> Dict:
    """Rows grouped by ``row[key]``: the values of ``order`` first, then the others in order of
    first appearance. Raises ``ValueError`` for a row without ``key`` or an ``order`` value
    without rows."""
    groups: Dict = {}
    for r in rows:
        if key not in r:
            raise ValueError(f"a row has no '{key}': {r}")
        groups.setdefault(r[key], []).append(r)
    if order is None:
        return groups
    unknown = [v for v in order if v not in groups]
    if unknown:
        raise ValueError(f"no rows for {key} {unknown} (have: {list(groups)})")
    return {**{v: groups[v] for v in order}, **{v: g for v, g in groups.items() if v not in order}}


def summarize(rows: Sequence[dict], metrics: Sequence[str] = ("pq", "pq_th", "pq_st"),
              by: str = "variant", order: Optional[Sequence] = None) -> List[dict]:
    """Per value of ``by`` (a variant, a lambda), the statistics of each metric over its rows
    (seeds): ``[{by, "seeds": [...], <metric>: {"mean", "std", "min", "max", "n"}}, ...]``;
    ``std`` is the sample standard deviation (0 for one run); missing or NaN values are left
    out (none at all gives NaN with n = 0)."""
    out = []
    for value, group in group_rows(rows, by, order).items():
        entry = {by: value, "seeds": [r.get("seed") for r in group]}
        for m in metrics:
            entry[m] = _stats([r.get(m) for r in group])
        out.append(entry)
    return out


def format_table(rows: Sequence[dict], columns: Sequence[str], digits: int = 1,
                 exact: Sequence[str] = ()) -> str:
    """A markdown table of ``rows`` (dicts) with ``columns``; floats with ``digits`` decimals
    (e.g. the paper's rows in :data:`PAPER`, or :func:`speed_vs_scale`'s) except in the
    ``exact`` columns (a study's key, e.g. lambda 0.25), printed as they are; NaN (a quality
    that was not measured, :func:`~spatialflow.evaluation.metrics_row`) as "not measured"."""
    def cell(v, c):
        if isinstance(v, float) and c not in exact:
            return "not measured" if math.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, ""), c) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
