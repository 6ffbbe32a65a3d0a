"""Where a training step's time goes: ``torch.profiler`` self time of real training iterations
(the loop of :func:`spatialflow.engine.train.train`: its data loader, model, optimizer and
schedule), by operator and by part of the model.

Parts are found without touching the model's code: forward pre/post hooks (modules) and
wrappers on the instance (methods) open a ``record_function`` range per part, every operator
of the forward pass is charged to the innermost range around it, and each backward operator to
the part whose forward operator made its autograd node (the profiler's ``sequence_nr`` links
the two). The optimizer's own ``Optimizer.step`` range, the loader's ``next`` and what is left
of the iteration's wall time (Python between the operators, the profiler's own cost) complete
the table.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

#: (part, attributes of the model: submodules or methods) in the order of a step; the first
#: range that encloses an operator, innermost first, gets it
PARTS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("backbone (ResNet body)", ("backbone.body",)),
    ("FPN", ("backbone.fpn",)),
    ("towers and flows", ("subnets",)),
    ("cls / reg heads", ("head.classification_head", "head.regression_head")),
    ("anchors", ("anchor_generator",)),
    ("losses and matching (cls, reg)", ("compute_loss",)),
    ("detections for the thing head (decode, NMS)", ("detect",)),
    ("thing-head RoIs (matching)", ("mask_rois",)),
    ("thing head: RoIAlign", ("thing_head.roi_align",)),
    ("thing head: convs and mask loss", ("thing_head", "thing_loss")),
    ("stuff head and loss", ("stuff_head", "semantic_loss")),
)
PREFIX = "part: "
OPTIMIZER = "optimizer (step, zero_grad, schedule)"
DATA = "data loading (next batch)"
OTHER = "other (Python between operators, bookkeeping)"


@contextlib.contextmanager
def part_ranges(model: nn.Module, parts=PARTS):
    """While open, each forward call of the named submodules and each call of the named methods
    of ``model`` runs inside a ``record_function("part: NAME")`` range."""
    handles, wrapped = [], []

    def pre_for(name):
        def pre(module, args):
            rf = record_function(PREFIX + name)
            rf.__enter__()
            module.__dict__.setdefault("_profile_ranges", []).append(rf)
        return pre

    def post(module, args, output):
        module.__dict__["_profile_ranges"].pop().__exit__(None, None, None)

    def ranged(name, method):
        def call(*args, **kwargs):
            with record_function(PREFIX + name):
                return method(*args, **kwargs)
        return call

    for name, paths in parts:
        for path in paths:
            owner, _, attr = path.rpartition(".")
            holder = model.get_submodule(owner) if owner else model
            target = getattr(holder, attr, None)
            if target is None:  # a part this model has not (a detector's thing head)
                continue
            if isinstance(target, nn.Module):
                handles.append(target.register_forward_pre_hook(pre_for(name)))
                handles.append(target.register_forward_hook(post))
            else:
                wrapped.append((holder, attr, holder.__dict__.get(attr)))
                setattr(holder, attr, ranged(name, target))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for holder, attr, own in reversed(wrapped):  # the instance's own attribute, if any
            if own is None:
                delattr(holder, attr)
            else:
                setattr(holder, attr, own)


def _range_of(event) -> Optional[str]:
    """The innermost part range around ``event`` (itself included), or the optimizer's."""
    while event is not None:
        name = event.name
        if name.startswith(PREFIX):
            return name[len(PREFIX):]
        if name.startswith("Optimizer.step") or name.startswith("Optimizer.zero_grad") \
                or name == "lr_scheduler.step":
            return OPTIMIZER
        if name == "data: next":
            return DATA
        event = event.cpu_parent
    return None


def attribute(events) -> Dict[str, float]:
    """Self CPU time (µs) of the profiler's ``events`` per part: forward operators by the range
    around them, backward operators (``autograd::engine::evaluate_function: ...`` and what
    runs inside) by the part of the forward operator with the same ``sequence_nr``."""
    part_of_seq: Dict[int, str] = {}
    # Operators record the autograd sequence number they would give a node; the one that made
    # node N is the last to record N (the counter moves on when a node is made), so the last
    # forward operator with N, in time, names its part
    for e in sorted(events, key=lambda e: e.time_range.start):
        if getattr(e, "sequence_nr", -1) >= 0 and not e.name.startswith("autograd::"):
            part = _range_of(e)
            if part is not None:
                part_of_seq[e.sequence_nr] = part
    totals: Dict[str, float] = defaultdict(float)
    for e in events:
        if e.name.startswith(PREFIX) or e.name == "data: next" or e.name.startswith("step "):
            continue  # our ranges: their self time is Python between operators
        # a backward node: find the evaluate_function around it
        node, backward = e, None
        while node is not None:
            if node.name.startswith("autograd::engine::evaluate_function"):
                backward = node
                break
            node = node.cpu_parent
        if backward is not None:
            part = part_of_seq.get(getattr(backward, "sequence_nr", -1))
            key = f"{part} (backward)" if part else "backward, unattributed"
        else:
            key = _range_of(e) or OTHER
        totals[key] += e.self_cpu_time_total
    return dict(totals)


def _by_op(prof, top: int) -> List[dict]:
    rows = sorted(prof.key_averages(), key=lambda a: -a.self_cpu_time_total)
    return [{"op": a.key, "calls": a.count, "self_ms": a.self_cpu_time_total / 1e3}
            for a in rows if not a.key.startswith(PREFIX) and a.key != "data: next"
            and not a.key.startswith("step ")][:top]


def profile_training(preset: str = "tiny-cpu", overrides: Sequence[str] = (), steps: int = 5,
                     warmup: int = 3, threads: Optional[int] = 2, weights=None,
                     data_root=None, top: int = 15) -> dict:
    """Profile ``steps`` training iterations of ``preset`` (after ``warmup`` unprofiled ones)
    as :func:`~spatialflow.engine.train.train` runs them: the data loader's next batch, the
    step (forward under autocast, backward, clipping, optimizer, schedule) and the logging.

    ``weights``: a run folder or checkpoint whose model weights to start from (a trained
    model's step is dearer: the thing head then also trains on the detections that match a
    ground-truth box); by default a fresh model. ``data_root``: a ``make-data`` folder (default:
    the preset's synthetic data, made in a temporary folder). Returns ``{"step_ms" (unprofiled
    median, then profiled), "images_per_s", "parts": [{"part", "ms", "share"}], "ops": [...],
    "rois_per_step", "threads", ...}``; times are per iteration.
    """
    from spatialflow.benchmark.timing import machine_info
    from spatialflow.config import load_config
    from spatialflow.engine.runs import find_checkpoint, load_checkpoint
    from spatialflow.engine.train import _Loop, dist_info

    if dist_info()[1] > 1:
        raise RuntimeError("profile one process (not under torchrun)")
    if threads:
        torch.set_num_threads(threads)
    sets = list(overrides) + ([f"data.root={data_root}"] if data_root else [])
    cfg = load_config(preset, [*sets, "train.eval_every=null"])
    with tempfile.TemporaryDirectory(prefix="profile_train_") as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loop = _Loop(cfg, Path(tmp) / "run", False, "cpu", False, None)
        if weights is not None:
            state = load_checkpoint(find_checkpoint(weights))
            loop.model.load_state_dict(state["model"])
        batches = loop.batches()
        rois: List[int] = []
        count = loop.model.mask_rois

        def counting(*args, **kwargs):
            out = count(*args, **kwargs)
            rois.append(sum(len(r) for r in out[0]))
            return out

        loop.model.mask_rois = counting

        def iteration():
            with record_function("data: next"):
                images, targets = next(batches)
            losses, bad = loop.step(images, targets)
            if not bad:
                loop.log(losses)

        try:
            for _ in range(warmup):
                iteration()
            plain = []
            for _ in range(steps):
                start = time.perf_counter()
                iteration()
                plain.append(time.perf_counter() - start)
            rois.clear()
            walls = []
            with part_ranges(loop.model), \
                    profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
                for k in range(steps):
                    start = time.perf_counter()
                    with record_function(f"step {k}"):
                        iteration()
                    walls.append(time.perf_counter() - start)
        finally:
            loop.close(batches)
            loop.model.__dict__.pop("mask_rois", None)
    wall_us = sum(walls) * 1e6
    totals = attribute(prof.events())
    totals[OTHER] = totals.get(OTHER, 0.0) + max(0.0, wall_us - sum(totals.values()))
    parts = sorted(({"part": k, "ms": v / 1e3 / steps, "share": v / wall_us}
                    for k, v in totals.items()), key=lambda r: -r["ms"])
    plain.sort()
    median = plain[len(plain) // 2]
    return {"preset": preset, "overrides": list(overrides), "steps": steps, "warmup": warmup,
            "batch": cfg.train.batch_size, "size": cfg.data.synthetic.size,
            "weights": None if weights is None else str(weights),
            "step_ms": median * 1e3, "profiled_step_ms": wall_us / 1e3 / steps,
            "images_per_s": cfg.train.batch_size / median,
            "rois_per_step": sum(rois) / max(len(rois), 1),
            "parts": parts, "ops": [{**o, "self_ms": o["self_ms"] / steps,
                                     "share": o["self_ms"] * 1e3 / wall_us}
                                    for o in _by_op(prof, top)],
            "machine": machine_info("cpu")}


def format_profile(result: dict) -> str:
    """Markdown: the step's time, then the tables by part and by operator (per iteration)."""
    r = result
    head = (f"{r['preset']}{''.join(' ' + o for o in r['overrides'])}, batch {r['batch']} at "
            f"{r['size']} px, {r['machine']['threads']} threads, "
            f"{'weights of ' + r['weights'] if r['weights'] else 'a fresh model'}: "
            f"{r['step_ms']:.0f} ms an iteration ({r['images_per_s']:.1f} images/s; "
            f"{r['profiled_step_ms']:.0f} ms under the profiler), "
            f"{r['rois_per_step']:.0f} thing-head RoIs a step; {r['steps']} iterations "
            f"profiled after {r['warmup']}.")
    lines = [head, "", "| part | ms / iteration | share |", "|---|---:|---:|"]
    lines += [f"| {p['part']} | {p['ms']:.1f} | {100 * p['share']:.1f}% |" for p in r["parts"]]
    lines += ["", "| operator (self time) | calls / iteration | ms / iteration | share |",
              "|---|---:|---:|---:|"]
    lines += [f"| `{o['op']}` | {o['calls'] / r['steps']:.0f} | {o['self_ms']:.1f} | "
              f"{100 * o['share']:.1f}% |" for o in r["ops"]]
    return "\n".join(lines)
