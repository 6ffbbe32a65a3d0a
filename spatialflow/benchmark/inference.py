"""Inference speed of SpatialFlow next to torchvision's peers, on this machine, in one run.

Every model runs in eval mode under ``torch.inference_mode`` with random weights on the same
input image, with the same number of threads, after warm-up; a figure is the median of the
repeated runs. SpatialFlow's time is split into backbone + FPN, the four towers (with the
flows), the heads (cls, reg, stuff, thing), box decoding (RetinaNet's top-k, decoding and NMS)
and post-processing (everything else: mask pasting into the boxes, the stuff map at the image
size and the panoptic merge, which is timed as part of the run).
FLOPs are counted by :func:`spatialflow.model.summary.count_flops` (``FlopCounterMode``, a
multiply-add = 2 FLOPs, convolutions and matrix products), and the machine's peak is measured
in the same run (:mod:`spatialflow.benchmark.machine`).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from spatialflow.benchmark.machine import conv_peak, p3_shape
from spatialflow.benchmark.models import PEERS, build_peer, build_spatialflow, spatialflow_variants
from spatialflow.benchmark.timing import image_shape, machine_info, median_time, stage_timer, sync
from spatialflow.engine.predict import merge_kwargs
from spatialflow.errors import InputError
from spatialflow.model.summary import count_flops
from spatialflow.panoptic import merge_outputs


#: the paper's own speed ratio (Table XI): SpatialFlow 10.3 FPS vs Panoptic FPN 18.9 FPS on a
#: V100 at 800 px
PAPER_RATIO = 18.9 / 10.3


#: stages of SpatialFlow's inference time, and the modules (or methods) each one times
STAGES = {"backbone+FPN": ("backbone",), "towers": ("subnets",),
          "heads": ("head.classification_head", "head.regression_head", "stuff_head",
                    "thing_head"),
          "box decoding": ("detect",)}


#: shorter edges of Table XI
SIZES = (400, 600, 800)


def bench_spatialflow(name: str, overrides: Sequence[str], image: torch.Tensor,
                      repeat: int, device: str, preset: str = "r50-coco") -> dict:
    """One row: median seconds of ``predict`` (network + pasting + merge) of one image, its
    split into :data:`STAGES` and post-processing (the rest), FLOPs and detections. The model
    (:func:`~spatialflow.benchmark.models.build_spatialflow`) sends every one of its 100
    detections through the thing head, the pasting and the merge: the worst case."""
    model, cfg, categories = build_spatialflow(overrides, preset)
    return spatialflow_row(name, model.to(device), cfg, categories, image, repeat, device)


def spatialflow_row(name: str, model: nn.Module, cfg, categories, image: torch.Tensor,
                    repeat: int, device: str, mask_conf: Optional[float] = None) -> dict:
    """:func:`bench_spatialflow`'s row of a model already built: it runs as the
    :class:`~spatialflow.engine.predict.Predictor` does (masks only for the detections scoring
    at least ``mask_conf``, default the config's), then the merge (none for a detector
    alone)."""
    x = image.to(device)
    thresholds = merge_kwargs(cfg.infer)
    if mask_conf is not None:
        thresholds["mask_conf"] = mask_conf
    conf = thresholds["mask_conf"]

    def run():
        out = model([x], mask_score_thresh=conf, dense_masks=False)[0]
        if not getattr(model, "panoptic", True):  # a detector alone: boxes, no merge
            return {k: v.cpu() for k, v in out.items()}
        return merge_outputs({k: v.cpu() for k, v in out.items()}, categories, **thresholds)

    return _measure(name, model, x, run, STAGES, "post-processing", repeat, device)


def bench_peer(name: str, image: torch.Tensor, repeat: int, device: str) -> dict:
    """One row for a torchvision peer: median seconds of its forward (its own resizing is a
    no-op at this size; post-processing included), split into backbone+FPN and the rest."""
    h, w = image.shape[-2:]
    model = build_peer(name, min(h, w), max(h, w)).to(device)
    x = image.to(device)
    return _measure(name, model, x, lambda: model([x]), {"backbone+FPN": ("backbone",)}, "rest",
                    repeat, device)


def _measure(name: str, model: nn.Module, x: torch.Tensor, run: Callable[[], object],
             stages: Dict[str, Sequence[str]], rest: str, repeat: int, device: str) -> dict:
    """A row of one model: FLOPs and detections of its forward, the median time of ``run``,
    and the median split into ``stages`` and ``rest`` (what the stages do not cover)."""
    with torch.inference_mode():
        flops = count_flops(lambda: model([x]))
        detections = len(model([x])[0]["boxes"])
        total = median_time(run, repeat, 1, device)
        per_run = []
        for _ in range(repeat):
            with stage_timer(model, stages, device) as spent:
                start = time.perf_counter()
                run()
                sync(torch.device(device))
                elapsed = time.perf_counter() - start
            per_run.append({**spent, rest: elapsed - sum(spent.values())})
    split = {k: statistics.median(r[k] for r in per_run) for k in per_run[0]}
    return _row(name, x, total, flops, detections, split)


def _row(name, x, total, flops, detections, split) -> dict:
    return {"model": name, "size": list(x.shape[-2:]), "seconds": total["median"],
            "seconds_min": total["min"], "fps": 1 / total["median"], "gflops": flops / 1e9,
            "gflop_per_s": flops / 1e9 / total["median"], "detections": detections,
            "split": split}


def run_inference_bench(sizes: Sequence[int] = SIZES, repeat: int = 3,
                        threads: Optional[int] = None, device: str = "cpu",
                        models: Optional[Sequence[str]] = None, preset: str = "r50-coco",
                        progress: Optional[Callable[[str], None]] = print) -> dict:
    """The whole inference comparison: for each shorter edge in ``sizes`` (a 4:3 random
    image), every SpatialFlow variant (of ``preset``) and peer (``models``: names to keep,
    default all), plus the conv peak at each size's P3 shape. Returns ``{"machine", "rows", "peak",
    "ratios"}`` where ``ratios`` gives, per size, SpatialFlow R50's time over Mask R-CNN's
    and its GFLOP/s over Mask R-CNN's."""
    if threads:
        torch.set_num_threads(threads)
    variants = spatialflow_variants()
    names = list(variants) + list(PEERS)
    if models is not None:
        unknown = [m for m in models if m not in names]
        if unknown:
            raise InputError(f"unknown models {unknown}; known: {names}")
        names = [n for n in names if n in models]
    rows, peak = [], []
    for size in sizes:
        h, w = image_shape(size)
        image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(size))
        for layout in (False, True):
            peak.append({"size": size, **conv_peak(*p3_shape(size), repeat=repeat,
                                                    channels_last=layout, device=device)})
        for name in names:
            if progress:
                progress(f"{size} px: {name}")
            if name in variants:
                rows.append(bench_spatialflow(name, variants[name], image, repeat, device,
                                              preset))
            else:
                rows.append(bench_peer(name, image, repeat, device))
            rows[-1]["short"] = size
    return {"machine": machine_info(device), "repeat": repeat, "rows": rows, "peak": peak,
            "ratios": ratios(rows)}


def ratios(rows: Sequence[dict], model: str = "SpatialFlow R50",
           peer: str = "Mask R-CNN R50-FPN") -> List[dict]:
    """Per size where both ran: ``model``'s time over ``peer``'s (the paper's SpatialFlow vs
    Panoptic FPN: :data:`PAPER_RATIO`), its GFLOP/s over the peer's (>= 1: no less
    efficient per FLOP) and its post-processing share of its own time (target < 5%)."""
    out = []
    for size in sorted({r["short"] for r in rows}):
        a = next((r for r in rows if r["short"] == size and r["model"] == model), None)
        b = next((r for r in rows if r["short"] == size and r["model"] == peer), None)
        if a and b:
            out.append({"short": size, "time_ratio": a["seconds"] / b["seconds"],
                        "efficiency_ratio": a["gflop_per_s"] / b["gflop_per_s"],
                        "paper_time_ratio": PAPER_RATIO,
                        "post_share": a["split"].get("post-processing", 0.0) / a["seconds"]})
    return out


def format_inference(result: dict) -> str:
    """Markdown tables of :func:`run_inference_bench`: per model and size the median time,
    FPS, GFLOPs, GFLOP/s and the time split; then the conv peak and the ratios."""
    lines = ["| size | model | s/img | FPS | GFLOPs | GFLOP/s | split (s) |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        split = ", ".join(f"{k} {v:.3f}" for k, v in r["split"].items())
        lines.append(f"| {r['size'][0]}x{r['size'][1]} | {r['model']} | {r['seconds']:.3f} | "
                     f"{r['fps']:.2f} | {r['gflops']:.1f} | {r['gflop_per_s']:.1f} | {split} |")
    lines += ["", "| size | 3x3 conv 256->256 at P3 | GFLOPs | s | GFLOP/s |",
              "|---|---|---:|---:|---:|"]
    for p in result["peak"]:
        lines.append(f"| {p['size']} | {p['layout']} | {p['gflops']:.1f} | {p['seconds']:.4f} | "
                     f"{p['gflop_per_s']:.1f} |")
    if result["ratios"]:
        lines += ["", "| size | SpatialFlow / Mask R-CNN time | paper (vs Panoptic FPN) | "
                      "GFLOP/s ratio | post-processing share |", "|---|---:|---:|---:|---:|"]
        for q in result["ratios"]:
            lines.append(f"| {q['short']} | {q['time_ratio']:.2f}x | "
                         f"{q['paper_time_ratio']:.2f}x | {q['efficiency_ratio']:.2f} | "
                         f"{100 * q['post_share']:.1f}% |")
    m = result["machine"]
    lines += ["", f"{m['device']} ({m.get('gpu', m['cpu'])}), {m['threads']} threads, torch "
                  f"{m['torch']}; median of {result['repeat']} runs after one warm-up"]
    return "\n".join(lines)
