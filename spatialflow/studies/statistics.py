"""Paired differences between a study's variants and its reference, with 95% intervals.

The unit of every study is the per-seed difference ``d_s = m(variant, seed s) - m(reference,
seed s)``: the two runs of one seed see the same images in the same order with the same
augmentation and start from the same weights in every part both models have
(:mod:`spatialflow.model.seeding`), so their difference leaves out the noise they share.

The interval over the ``n`` seeds is Student's t, ``mean(d) +- t(0.975, n-1) sd(d) / sqrt(n)``
(:func:`scipy.stats.t.interval`). A study affords 3-10 seeds; at that size a bootstrap of the
``n`` differences is too narrow: simulated with normal differences (1000 draws each,
:func:`scipy.stats.bootstrap`, percentile, 999 resamples) its 95% interval held the true mean
76% of the time at ``n = 3``, 84% at 5 and 91% at 10, the t-interval 95-96% at each. The
t-interval is exact for normal differences. With one
seed no interval exists, and it is said.

Metrics are in points (x100), as the tables print them.
"""

from __future__ import annotations

import math
import statistics
from typing import Dict, List, Mapping, Optional, Sequence

from scipy import stats as _scipy_stats

#: how the metrics are called in sentences and charts
LABELS = {"pq": "PQ", "pq_th": "PQ_Th", "pq_st": "PQ_St", "sq": "SQ", "rq": "RQ",
          "ap": "box AP", "ap50": "AP50", "ap75": "AP75"}

CONFIDENCE = 0.95


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Dict[str, float]:
    """``{"mean", "low", "high", "sd", "n"}`` of ``values`` (None and NaN left out): the
    Student-t interval of the mean at ``confidence``; ``low`` = ``high`` = NaN with fewer than
    two values, and the interval is the point itself when all values are equal."""
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    n = len(v)
    if not n:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "sd": math.nan, "n": 0}
    mean = statistics.fmean(v)
    if n < 2:
        return {"mean": mean, "low": math.nan, "high": math.nan, "sd": math.nan, "n": 1}
    sd = statistics.stdev(v)
    if sd == 0:
        return {"mean": mean, "low": mean, "high": mean, "sd": 0.0, "n": n}
    low, high = _scipy_stats.t.interval(confidence, n - 1, loc=mean, scale=sd / math.sqrt(n))
    return {"mean": mean, "low": float(low), "high": float(high), "sd": sd, "n": n}


def half_width(sd: float, n: int, confidence: float = CONFIDENCE) -> float:
    """The half-width of the t-interval of a mean of ``n`` values of standard deviation
    ``sd``: ``t(0.5 + confidence / 2, n - 1) sd / sqrt(n)`` (infinite for ``n < 2``)."""
    if n < 2:
        return math.inf
    return float(_scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)


def seeds_for(sd: float, target: float, confidence: float = CONFIDENCE,
              most: int = 100) -> Optional[int]:
    """The fewest seeds (at least 2) whose :func:`half_width` at a per-seed difference spread
    ``sd`` is at most ``target``; ``None`` if more than ``most`` are needed."""
    for n in range(2, most + 1):
        if half_width(sd, n, confidence) <= target:
            return n
    return None


def paired(rows: Sequence[dict], name, reference, metric: str, by: str = "variant"
           ) -> List[dict]:
    """The seeds that ``name`` and ``reference`` (values of ``row[by]``) both have a value of
    ``metric`` for, in the order of the reference's rows: ``[{"seed", "variant", "reference",
    "diff"}, ...]``. A seed present twice for one of them raises ``ValueError``."""
    def by_seed(value):
        out = {}
        for r in rows:
            if r.get(by) == value:
                if r.get("seed") in out:
                    raise ValueError(f"two rows of {by} {value!r} for seed {r.get('seed')}")
                out[r.get("seed")] = r.get(metric)
        return out

    mine, ref = by_seed(name), by_seed(reference)
    pairs = []
    for seed, r in ref.items():
        v = mine.get(seed)
        if v is None or r is None or math.isnan(float(v)) or math.isnan(float(r)):
            continue
        pairs.append({"seed": seed, "variant": float(v), "reference": float(r),
                      "diff": float(v) - float(r)})
    return pairs


def compare(rows: Sequence[dict], reference, metrics: Sequence[str] = ("pq", "pq_th", "pq_st"),
            by: str = "variant", paper: Optional[Sequence[dict]] = None,
            confidence: float = CONFIDENCE) -> List[dict]:
    """For each value of ``row[by]`` other than ``reference`` (in the order of first
    appearance), the paired comparison with the reference: ``{by: value, "reference":
    reference, <metric>: {"diff", "ci_low", "ci_high", "n", "sd", "per_seed": [...
    :func:`paired` ...], "paper": the paper's difference or None, "verdict": :func:`verdict`},
    ...}``. ``paper``: the paper's rows of the study (``{by, <metric>...}``; a row with a
    ``"reference"`` holds the paper's differences to that row, as Fig. 4 gives them)."""
    names = list(dict.fromkeys(r[by] for r in rows))
    if reference not in names:
        raise ValueError(f"no rows for {by} {reference!r} (have: {names})")
    theirs = {r[by]: r for r in (paper or []) if "reference" not in r}
    their_diffs = {r[by]: r for r in (paper or []) if r.get("reference") == reference}
    out = []
    for name in names:
        if name == reference:
            continue
        entry = {by: name, "reference": reference}
        for m in metrics:
            pairs = paired(rows, name, reference, m, by)
            ci = t_interval([p["diff"] for p in pairs], confidence)
            their = None
            if name in theirs and reference in theirs and m in theirs[name]:
                their = round(theirs[name][m] - theirs[reference][m], 2)
            elif m in their_diffs.get(name, {}):
                their = their_diffs[name][m]
            entry[m] = {"diff": ci["mean"], "ci_low": ci["low"], "ci_high": ci["high"],
                        "n": ci["n"], "sd": ci["sd"], "per_seed": pairs, "paper": their,
                        "verdict": verdict(ci["mean"], ci["low"], ci["high"], ci["n"])}
        out.append(entry)
    return out


def verdict(diff: float, low: float, high: float, n: int) -> str:
    """What a paired difference says, to one decimal: ``"higher by 1.3 (95% CI 0.4 to 2.2)"``,
    ``"lower by 0.9 (95% CI -1.6 to -0.2)"``, ``"no difference detectable: the 95% CI -0.8 to
    1.1 includes 0"``, ``"+0.4 with one seed: no interval"`` or ``"not measured"``. An interval
    that touches 0 only as printed (e.g. 0.0 to 1.2) is called by its unrounded ends."""
    if not n or math.isnan(diff):
        return "not measured"
    if n < 2 or math.isnan(low):
        return f"{_num(diff, sign=True)} with one seed: no interval"
    ci = f"95% CI {_num(low)} to {_num(high)}"
    if low > 0:
        return f"higher by {_num(diff)} ({ci})"
    if high < 0:
        return f"lower by {_num(-diff)} ({ci})"
    return f"no difference detectable: the {ci} includes 0"


def describe_comparison(comparison: Sequence[dict], metrics: Sequence[str] = ("pq", "pq_th",
                                                                              "pq_st"),
                        by: str = "variant") -> str:
    """Plain sentences, one per compared variant (:func:`compare`): each metric's verdict with
    the paper's difference beside it and whether our interval holds it, e.g. ``- **+ both** vs
    **baseline** (3 seeds, paired): PQ higher by 1.3 (95% CI 0.4 to 2.2; paper +1.2, inside
    the CI); ...``."""
    def label(value) -> str:
        return str(value) if by == "variant" else f"{by} = {value}"

    lines = []
    for e in comparison:
        n = max(e[m]["n"] for m in metrics)
        parts = []
        for m in metrics:
            c = e[m]
            text = f"{LABELS.get(m, m)} {c['verdict']}"
            if c["paper"] is not None:
                paper = f"paper {_num(c['paper'], sign=True)}"
                if c["n"] > 1 and not math.isnan(c["ci_low"]):
                    inside = c["ci_low"] <= c["paper"] <= c["ci_high"]
                    paper += ", inside the CI" if inside else ", outside the CI"
                text = text[:-1] + f"; {paper})" if text.endswith(")") else f"{text} ({paper})"
            parts.append(text)
        seeds = "one seed" if n == 1 else f"{n} seeds, paired"
        lines.append(f"- **{label(e[by])}** vs **{label(e['reference'])}** ({seeds}): "
                     + "; ".join(parts) + ".")
    return "\n".join(lines)


def format_comparison(comparison: Sequence[dict], metrics: Sequence[str] = ("pq", "pq_th",
                                                                            "pq_st"),
                      by: str = "variant") -> str:
    """A markdown table of :func:`compare`: per variant and metric the paired difference to the
    reference with its 95% interval, and the paper's difference."""
    head = " | ".join(f"{LABELS.get(m, m)} diff (95% CI) | paper" for m in metrics)
    lines = [f"| {by} | vs | seeds | {head} |",
             "|---|---|---:|" + "---:|---:|" * len(metrics)]
    for e in comparison:
        cells = []
        for m in metrics:
            c = e[m]
            if not c["n"]:
                cells.append("not measured")
            elif c["n"] < 2:
                cells.append(f"{_num(c['diff'], sign=True)} (one seed)")
            else:
                cells.append(f"{_num(c['diff'], sign=True)} ({_num(c['ci_low'])} to "
                             f"{_num(c['ci_high'])})")
            cells.append("-" if c["paper"] is None else _num(c["paper"], sign=True))
        n = max(e[m]["n"] for m in metrics)
        lines.append(f"| {e[by]} | {e['reference']} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pairing_gain(pairs: Sequence[Mapping]) -> Dict[str, float]:
    """What pairing removed, from :func:`paired` output of at least 3 seeds: ``sd_variant``,
    ``sd_reference`` (the spread of each over seeds), ``sd_diff`` (of the paired differences),
    ``sd_unpaired`` (the spread a difference of two independent runs would have,
    ``sqrt(sd_v^2 + sd_r^2)``), and ``correlation`` (Pearson's r of the two over seeds;
    ``sd_diff^2 = sd_v^2 + sd_r^2 - 2 r sd_v sd_r``)."""
    if len(pairs) < 3:
        raise ValueError(f"need at least 3 paired seeds, got {len(pairs)}")
    v = [p["variant"] for p in pairs]
    r = [p["reference"] for p in pairs]
    sv, sr = statistics.stdev(v), statistics.stdev(r)
    corr = float(_scipy_stats.pearsonr(v, r).statistic) if sv > 0 and sr > 0 else math.nan
    return {"sd_variant": sv, "sd_reference": sr,
            "sd_diff": statistics.stdev([p["diff"] for p in pairs]),
            "sd_unpaired": math.sqrt(sv ** 2 + sr ** 2), "correlation": corr, "n": len(pairs)}


def study_record(rows: Sequence[dict], reference, metrics: Sequence[str] = ("pq", "pq_th",
                                                                         "pq_st"),
                 by: str = "variant", paper: Optional[Sequence[dict]] = None) -> dict:
    """What a study's JSON keeps under the study's name: ``reference``, ``by``, ``metrics``,
    ``rows`` (:func:`compare`: per compared variant and metric ``diff``, ``ci_low``,
    ``ci_high``, ``n``, the per-seed values and the verdict, in points) and ``runs`` (the
    per-run rows of :func:`~spatialflow.studies.running.run_study`)."""
    return {"reference": reference, "by": by, "metrics": list(metrics),
            "rows": compare(rows, reference, metrics, by, paper), "runs": list(rows)}


def _num(x: float, sign: bool = False) -> str:
    """``x`` to one decimal as printed; -0.0 as 0.0 (+0.0 with ``sign``)."""
    x = round(x, 1) + 0.0
    return f"{x:+.1f}" if sign else f"{x:.1f}"
