"""Table XI on this machine: PQ and inference speed against the test scale."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

from spatialflow.evaluation import PanopticEvaluator, metrics_row
from spatialflow.studies.paper import PAPER
from spatialflow.studies.running import _progress
from spatialflow.studies.tables import _stats


def speed_vs_scale(predictor, dataset, scales: Sequence[int],
                   max_size_ratio: float = 1333 / 800, max_images: Optional[int] = None,
                   out=None, progress: bool = True) -> List[dict]:
    """Table XI on this machine: for each test scale (shorter edge; longer edge capped at
    ``max_size_ratio`` times it), PQ on ``dataset`` and images per second of inference
    (network + mask pasting + panoptic merge, after one warm-up image; reading and writing
    files not counted) with ``predictor`` (a :class:`~spatialflow.engine.predict.Predictor`, whose
    inference settings are kept). Rows: ``scale``, ``padded`` (the shorter edge the network
    sees: the model pads to a multiple of its ``size_divisibility``, so two scales can cost the
    same), ``images_per_s``, ``seconds``, ``images``, ``seconds_sd`` (the sample std of the
    per-image times, for the timing noise) and :func:`metrics_row`'s keys."""

    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    rows = []
    for scale in scales:
        at_scale = predictor.at_size(scale, int(round(scale * max_size_ratio)))
        folder = Path(out) / f"scale{scale}" if out else Path(tempfile.mkdtemp(prefix="speed"))
        evaluator = PanopticEvaluator(dataset, folder)
        times = []
        for k, idx in enumerate(_progress(range(n), f"{scale}px", progress)):
            image, _, rec = dataset.load(idx)
            if k == 0:  # warm-up
                at_scale(image)
            start = time.perf_counter()
            result = at_scale(image, raw=True)
            times.append(time.perf_counter() - start)
            evaluator.add(rec, result["raw"], result["panoptic"], result["segments_info"])
        metrics = evaluator.compute()
        div = getattr(predictor.model, "size_divisibility", 1)
        seconds = sum(times)
        rows.append({"scale": scale, "padded": -(-scale // div) * div, "images": n,
                     "seconds": seconds, "seconds_sd": _stats(times)["std"],
                     "images_per_s": n / max(seconds, 1e-9), **metrics_row(metrics)})
    return rows


def table_xi_scales(test_size: int) -> List[int]:
    """The shorter-edge sizes of Table XI (400, 600, 800 px against the paper's 800 px test
    size), scaled to a model tested at ``test_size`` (256 -> 128, 192, 256)."""
    return [int(round(test_size * s / 800)) for s in (400, 600, 800)]


def speed_points(rows: Sequence[dict], source: str = "measured") -> List[dict]:
    """Points ``{"name", "fps", "pq", "source", "group", "scale"}`` to plot: of
    :func:`speed_vs_scale` rows (named by scale, one group), or of ``PAPER["table_xi"]`` with
    ``source="paper"`` (a group per model); a plot joins a group's points in scale order."""
    if source == "paper":
        return [{"name": f"{r['name']} {r['scale']}", "fps": r["fps"], "pq": r["pq"],
                 "source": "paper", "group": r["name"], "scale": r["scale"]} for r in rows]
    return [{"name": f"{r['scale']} px", "fps": r["images_per_s"], "pq": r["pq"],
             "source": source, "group": "measured", "scale": r["scale"]} for r in rows]


def describe_speed(rows: Sequence[dict]) -> str:
    """Plain sentences on :func:`speed_vs_scale` rows: how much faster the smallest scale runs
    than the largest, and what it costs in PQ / PQ_Th / PQ_St, next to the paper's SpatialFlow
    R50 at 400 vs 800 px (Table XI). A speed ratio is called timing noise when both scales pad
    to the same size (the network does the same work) or when it lies within twice the
    standard error of the two mean times; a quality that was not measured (NaN) is said so."""
    if len(rows) < 2:
        raise ValueError("need rows of at least two scales")
    small, large = min(rows, key=lambda r: r["scale"]), max(rows, key=lambda r: r["scale"])
    paper = {r["scale"]: r for r in PAPER["table_xi"] if r["name"] == "SpatialFlow R50"}
    p_small, p_large = paper[400], paper[800]
    ratio = small["images_per_s"] / large["images_per_s"]
    timed = all(k in r for r in (small, large) for k in ("seconds_sd", "seconds", "images"))
    noise = 2 * math.sqrt(sum((r["seconds_sd"] / (r["seconds"] / r["images"])) ** 2
                              / r["images"] for r in (small, large))) if timed else 0.0
    speed = (f"- At {small['scale']} px this machine runs {small['images_per_s']:.2f} images/s, "
             f"{ratio:.2f}x the {large['images_per_s']:.2f} images/s at {large['scale']} px "
             f"(paper, V100, 400 vs 800 px: {p_small['fps'] / p_large['fps']:.2f}x)")
    if small.get("padded") is not None and small["padded"] == large.get("padded"):
        speed += (f". Both scales are padded to {small['padded']} px, so the network does the "
                  f"same work: the difference is timing noise.")
    elif abs(ratio - 1) <= noise:
        speed += f", within the timing noise (±{100 * noise:.0f}%): no measured difference."
    else:
        speed += "."
    d = {m: small[m] - large[m] for m in ("pq", "pq_th", "pq_st")}
    pd = {m: p_small[m] - p_large[m] for m in ("pq", "pq_th", "pq_st")}
    ours = [f"{name} by {d[m]:+.1f}" if not math.isnan(d[m]) else f"{name} not measured"
            for m, name in (("pq", "PQ"), ("pq_th", "PQ_Th"), ("pq_st", "PQ_St"))]
    return (f"{speed}\n- Going from {large['scale']} to {small['scale']} px changes "
            f"{ours[0]}, {ours[1]} and {ours[2]} "
            f"(paper: {pd['pq']:+.1f}, {pd['pq_th']:+.1f}, {pd['pq_st']:+.1f}).")
