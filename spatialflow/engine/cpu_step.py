"""How a CPU runs the training step fastest: float32 or bfloat16 autocast, NCHW or
channels_last, measured on the run's first batch and remembered per machine.

No CPU flag tells which one wins. Measured with ``tiny-cpu`` (batch 8 at 128 px, 2 threads,
docs/training_speed.md): on a 2-core Xeon with AVX512-BF16 but no AMX, bfloat16 was slower
than float32 (707 against 628 ms) and channels_last faster than NCHW (543 ms); on a 2-core AMD
EPYC with AVX512-BF16, bfloat16 in NCHW was the fastest (185-190 ms against 218-257 ms for
float32 in channels_last); on Xeons with AMX bfloat16 is about 1.3x float32. So a long run
on a CPU times the formats its config allows (:func:`candidates`) on its first batch, a few
forward and backward passes each, and trains in the fastest (:func:`choose`). The choice is
kept in the run's checkpoint (a resumed run goes on in it) and in a small cache file per
machine, model and batch shape (``$SPATIALFLOW_CACHE`` or ``~/.cache/spatialflow``), so that
the runs of a study on one machine train alike and measure once.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

#: runs shorter than this many iterations are not worth the measurement (about 16 forward and
#: backward passes): they train as :func:`default_format` says
TUNE_MIN_ITERS = 200

#: a format other than the first candidate (plain float32 in the config's memory format) is
#: chosen only when it is faster by at least this share: a near tie keeps the plain one
MARGIN = 0.05


@dataclass(frozen=True)
class StepFormat:
    """A way to run the training step on a CPU: the autocast dtype (``None``: float32) and
    the memory format of the model and images."""
    dtype: Optional[torch.dtype] = None
    channels_last: bool = False

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def name(self) -> str:
        """``"float32, NCHW"``, ``"bfloat16, channels_last"``, ..."""
        dtype = "float32" if self.dtype is None else str(self.dtype).replace("torch.", "")
        return f"{dtype}, {'channels_last' if self.channels_last else 'NCHW'}"

    @classmethod
    def from_name(cls, name: str) -> "StepFormat":
        """The inverse of :attr:`name`."""
        dtype, layout = (s.strip() for s in name.split(","))
        if dtype not in ("float32", "bfloat16") or layout not in ("NCHW", "channels_last"):
            raise ValueError(f"not a CPU step format: {name!r} (expected e.g. "
                             f"'bfloat16, NCHW')")
        return cls(None if dtype == "float32" else torch.bfloat16, layout == "channels_last")


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (bfloat16 matrix units)."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check is not None and check())


def default_format(amp: bool, channels_last: bool) -> StepFormat:
    """The format of a run that does not measure: bfloat16 with ``amp`` on a CPU with AMX
    (about 1.3x float32 there), float32 elsewhere; channels_last as the config says."""
    return StepFormat(torch.bfloat16 if amp and cpu_has_amx() else None, channels_last)


def candidates(amp: bool, channels_last: bool) -> List[StepFormat]:
    """The formats a config allows, plain float32 first: bfloat16 only with ``train.amp``,
    channels_last only with ``train.channels_last`` (NCHW is always a candidate)."""
    layouts = [channels_last, not channels_last] if channels_last else [False]
    dtypes = [None, torch.bfloat16] if amp else [None]
    return [StepFormat(d, cl) for d in dtypes for cl in layouts]


def choose(timings: Dict[str, float], formats: Sequence[StepFormat],
           margin: float = MARGIN) -> StepFormat:
    """The fastest of ``formats`` by ``timings`` (seconds, by :attr:`StepFormat.name`); the
    first format unless another is faster by at least ``margin`` of its time."""
    first = formats[0]
    best = min(formats, key=lambda f: timings[f.name])
    return best if timings[best.name] <= (1 - margin) * timings[first.name] else first


def time_formats(model: torch.nn.Module, images, targets, formats: Sequence[StepFormat],
                 repeat: int = 3, warmup: int = 1) -> Dict[str, float]:
    """Median seconds of a forward and backward pass of ``model`` (training mode) on one
    batch in each format. The model's weights are untouched (no optimizer step), its
    gradients are cleared, the torch RNG is restored, and the model is left in the last
    format (convert it to the chosen one)."""
    rng = torch.get_rng_state()
    timings = {}
    try:
        for fmt in formats:
            model.to(memory_format=fmt.memory_format)
            images.tensors = images.tensors.contiguous(memory_format=fmt.memory_format)
            runs = []
            for k in range(warmup + repeat):
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=fmt.dtype or torch.bfloat16,
                                    enabled=fmt.dtype is not None):
                    loss = sum(v.float() for v in model(images, targets).values())
                loss.backward()
                if k >= warmup:
                    runs.append(time.perf_counter() - start)
                model.zero_grad(set_to_none=True)
            timings[fmt.name] = sorted(runs)[len(runs) // 2]
    finally:
        model.zero_grad(set_to_none=True)
        torch.set_rng_state(rng)
    return timings


def cache_file() -> Path:
    """Where choices are remembered: ``$SPATIALFLOW_CACHE/cpu_step.json``, else
    ``~/.cache/spatialflow/cpu_step.json``."""
    root = os.environ.get("SPATIALFLOW_CACHE") or Path.home() / ".cache" / "spatialflow"
    return Path(root) / "cpu_step.json"


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else :func:`platform.processor`."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key(model_config: dict, batch_shape: Sequence[int],
              formats: Sequence[StepFormat]) -> str:
    """One key per machine (CPU model, threads, torch version), model config, padded batch
    shape and set of candidates."""
    text = json.dumps({"cpu": cpu_name(), "threads": torch.get_num_threads(),
                       "torch": torch.__version__, "model": model_config,
                       "batch": list(batch_shape), "formats": [f.name for f in formats]},
                      sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def remembered(key: str) -> Optional[dict]:
    """The cached ``{"choice", "timings_ms"}`` of ``key``, if any (an unreadable cache is
    ignored)."""
    try:
        entry = json.loads(cache_file().read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return entry if isinstance(entry, dict) and "choice" in entry else None


def remember(key: str, entry: dict) -> None:
    """Add ``entry`` to the cache (written atomically; a cache that cannot be written is
    skipped: the next run measures again)."""
    path = cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text())
            data = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            data = {}
        data[key] = entry
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass


def tuned_format(model: torch.nn.Module, images, targets, model_config: dict, amp: bool,
                 channels_last: bool) -> tuple:
    """The fastest allowed format for this model and batch on this machine, measured (or
    remembered): ``(StepFormat, {"choice", "timings_ms", "cached"})``. The model is left in
    the chosen memory format."""
    formats = candidates(amp, channels_last)
    key = cache_key(model_config, images.tensors.shape, formats)
    entry = remembered(key)
    if entry is None or entry["choice"] not in [f.name for f in formats]:
        timings = time_formats(model, images, targets, formats)
        entry = {"choice": choose(timings, formats).name,
                 "timings_ms": {k: round(1000 * v, 1) for k, v in timings.items()}}
        remember(key, entry)
        cached = False
    else:
        cached = True
    fmt = StepFormat.from_name(entry["choice"])
    model.to(memory_format=fmt.memory_format)
    return fmt, {**entry, "cached": cached}


def describe(info: dict) -> str:
    """One line about a :func:`tuned_format` choice, for the log."""
    times = ", ".join(f"{k} {v:.0f} ms" for k, v in info["timings_ms"].items())
    how = "remembered from an earlier run" if info["cached"] else "measured on the first batch"
    return (f"CPU training step in {info['choice']} ({how}: forward + backward {times}; "
            f"train.cpu_tune=false to skip)")
