"""Timing helpers of the benchmarks: median times after warm-up, time per stage of a model,
peak memory, and what the figures were measured on."""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, Sequence, Tuple

import torch
from torch import nn


def image_shape(short: int, aspect: float = 4 / 3) -> Tuple[int, int]:
    """``(H, W)`` of a landscape image with shorter edge ``short`` (COCO's typical 4:3)."""
    return short, int(round(short * aspect))


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], repeat: int = 5, warmup: int = 1,
                device: str = "cpu") -> dict:
    """Run ``fn`` ``warmup`` times untimed, then ``repeat`` times: ``{"median", "min",
    "runs"}`` in seconds (CUDA work is waited for)."""
    dev = torch.device(device)
    for _ in range(warmup):
        fn()
    sync(dev)
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(dev)
        runs.append(time.perf_counter() - start)
    return {"median": statistics.median(runs), "min": min(runs), "runs": runs}


@contextmanager


def stage_timer(model: nn.Module, stages: Dict[str, Sequence[str]],
                device: str = "cpu") -> Iterator[Dict[str, float]]:
    """Seconds spent in the forward passes of named submodules (forward pre- and post-hooks)
    or in calls of named methods of ``model`` (wrapped on the instance), summed per stage while
    the context is open; CUDA work is waited for at each boundary."""
    dev = torch.device(device)
    totals = {name: 0.0 for name in stages}
    started: Dict[int, float] = {}
    handles = []

    def pre(module, args):
        sync(dev)
        started[id(module)] = time.perf_counter()

    def post_for(stage):
        def post(module, args, output):
            sync(dev)
            totals[stage] += time.perf_counter() - started.pop(id(module))
        return post

    def timed(stage, method):
        def call(*args, **kwargs):
            sync(dev)
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                sync(dev)
                totals[stage] += time.perf_counter() - start
        return call

    wrapped = []
    for stage, paths in stages.items():
        for path in paths:
            target = getattr(model, path) if "." not in path else model.get_submodule(path)
            if target is None:  # a part this model has not (a detector's stuff head)
                continue
            if isinstance(target, nn.Module):
                handles.append(target.register_forward_pre_hook(pre))
                handles.append(target.register_forward_hook(post_for(stage)))
            else:
                setattr(model, path, timed(stage, target))
                wrapped.append(path)
    try:
        yield totals
    finally:
        for h in handles:
            h.remove()
        for path in wrapped:
            delattr(model, path)


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: Linux's ``VmHWM`` (the high-water mark of
    this process image; ``ru_maxrss`` would also count the parent's memory at the fork of a
    spawned child), else ``ru_maxrss``."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, else kB


def cpu_model() -> str:
    """The CPU's model name (Linux's ``/proc/cpuinfo``), else what ``platform`` says."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict:
    """What the figures were measured on: device, threads, versions, the CPU's model and
    whether it has AMX (bfloat16 tiles) and AVX512-BF16."""
    flag = lambda name: bool(getattr(torch.cpu, name, lambda: False)())  # noqa: E731
    info = {"device": device, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "cpu_model": cpu_model(),
            "amx": flag("_is_amx_tile_supported"),
            "avx512_bf16": flag("_is_avx512_bf16_supported"),
            "python": platform.python_version()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
