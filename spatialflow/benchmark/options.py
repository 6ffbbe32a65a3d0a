"""What the inference options of SpatialFlow give on this machine, each against the default at
one image size (``spatialflow bench --options``): the channels_last memory format, one thread
instead of all, masks for the 10 best detections instead of all 100 (what a trained model's
``mask_conf`` does: the thing head, the pasting and the merge follow the number of confident
detections), and, opt-in (``--compile``), ``torch.compile`` of the backbone and the towers
with its compile time. Each row gives the median time, its split into stages, the speed-up over
the default and whether the outputs stay the same."""

from __future__ import annotations

import time
from typing import Callable, List, Optional

import torch

from spatialflow.benchmark.inference import spatialflow_row
from spatialflow.benchmark.models import build_spatialflow
from spatialflow.benchmark.timing import image_shape, machine_info, sync

#: the row every option is compared with
DEFAULT = "default (NCHW, all threads, masks for all 100 detections)"


def _outputs(model, x, mask_conf: float) -> dict:
    with torch.inference_mode():
        out = model([x], mask_score_thresh=mask_conf)[0]
    return {k: v.detach().cpu() for k, v in out.items()}


def same_outputs(a: dict, b: dict, atol: float = 1e-3) -> bool:
    """Whether two raw outputs agree: the same labels and stuff map, boxes and scores within
    ``atol`` (a different memory format or compiled kernels sum in another order)."""
    if a["labels"].shape != b["labels"].shape or not torch.equal(a["labels"], b["labels"]):
        return False
    close = all(torch.allclose(a[k].float(), b[k].float(), atol=atol) for k in ("boxes", "scores"))
    return close and float((a["sem_seg"] == b["sem_seg"]).float().mean()) > 0.999


def bench_options(size: int = 800, repeat: int = 3, device: str = "cpu",
                  compile: bool = False, preset: str = "r50-coco",
                  progress: Optional[Callable[[str], None]] = print) -> dict:
    """Rows ``{"option", "seconds", "speedup", "split", "same", "note", ...}`` of SpatialFlow
    (``preset``, random weights, 100 detections) on one 4:3 image of shorter edge ``size``:
    :data:`DEFAULT`, then each option alone. Returns ``{"machine", "size", "repeat", "rows"}``."""
    h, w = image_shape(size)
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(size))
    x = image.to(device)
    rows: List[dict] = []

    def add(option, model, cfg, categories, note="", mask_conf=None, reference=None):
        if progress:
            progress(f"options, {size} px: {option}")
        row = spatialflow_row(option, model, cfg, categories, image, repeat, device, mask_conf)
        out = _outputs(model, x, cfg.infer.mask_conf if mask_conf is None else mask_conf)
        row.update(option=option, note=note,
                   same=None if reference is None else same_outputs(reference, out))
        row["speedup"] = rows[0]["seconds"] / row["seconds"] if rows else 1.0
        rows.append(row)
        return out

    model, cfg, cats = build_spatialflow((), preset)
    model.to(device)
    reference = add(DEFAULT, model, cfg, cats)

    # channels_last: the convolutions' preferred layout on CPUs with oneDNN
    model.to(memory_format=torch.channels_last)
    add("channels_last", model, cfg, cats, "model weights in channels_last", reference=reference)
    model.to(memory_format=torch.contiguous_format)

    threads = torch.get_num_threads()
    if device == "cpu" and threads > 1:
        torch.set_num_threads(1)
        try:
            add("1 thread", model, cfg, cats, f"instead of {threads}", reference=reference)
        finally:
            torch.set_num_threads(threads)

    top10 = float(reference["scores"][min(9, len(reference["scores"]) - 1)])
    add("masks for the 10 best detections", model, cfg, cats,
        "mask_conf at the 10th score: thing head, pasting and merge on 10 of 100",
        mask_conf=top10)

    if compile:
        compiled, ccfg, ccats = build_spatialflow((), preset)
        compiled.to(device)
        compiled.backbone = torch.compile(compiled.backbone, dynamic=False)
        compiled.subnets = torch.compile(compiled.subnets, dynamic=False)
        start = time.perf_counter()
        _outputs(compiled, x, ccfg.infer.mask_conf)
        sync(torch.device(device))
        seconds = time.perf_counter() - start
        add("torch.compile (backbone, towers)", compiled, ccfg, ccats,
            f"first call {seconds:.0f} s (compiling)", reference=reference)
        rows[-1]["compile_s"] = seconds
    return {"machine": machine_info(device), "size": [h, w], "repeat": repeat, "rows": rows}


def format_options(result: dict) -> str:
    """Markdown table of :func:`bench_options`."""
    stages = list(result["rows"][0]["split"])
    lines = ["| option | s/img | speed-up | " + " | ".join(stages) + " | same outputs | note |",
             "|---|---:|---:|" + "---:|" * len(stages) + "---|---|"]
    for r in result["rows"]:
        same = "" if r["same"] is None else ("yes" if r["same"] else "no")
        split = " | ".join(f"{r['split'].get(k, 0.0):.2f}" for k in stages)
        lines.append(f"| {r['option']} | {r['seconds']:.2f} | {r['speedup']:.2f}x | {split} | "
                     f"{same} | {r['note']} |")
    h, w = result["size"]
    m = result["machine"]
    lines += ["", f"SpatialFlow R50 (random weights, 100 detections) on one {h}x{w} image; "
                  f"{m['device']}, {m['threads']} threads, torch {m['torch']}; median of "
                  f"{result['repeat']} runs after one warm-up"]
    return "\n".join(lines)
