"""Training throughput: images per second, GFLOP/s and peak memory of a preset's training step,
measured in fresh processes (one, or several side by side as a study's runs train)."""

from __future__ import annotations

import multiprocessing
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, Optional, Sequence

import torch

from spatialflow.benchmark.machine import precision_name
from spatialflow.benchmark.timing import median_time, peak_rss_mb
from spatialflow.config import config_to_dict, load_config
from spatialflow.data.coco_panoptic import CocoPanopticDataset
from spatialflow.model.inputs import collate_panoptic
from spatialflow.data.synthetic import make_synthetic
from spatialflow.data.transforms import build_transforms
from spatialflow.engine.cpu_step import StepFormat, tuned_format
from spatialflow.engine.train import amp_dtype, autocast, build_optimizer
from spatialflow.model import build_model
from spatialflow.model.summary import count_flops


def _training_child(preset: str, overrides: Sequence[str], size: int, batch: int, steps: int,
                    warmup: int, threads: Optional[int], device: str) -> dict:
    """In a fresh process (so that its peak resident memory is this model's): ``warmup`` +
    ``steps`` training steps (forward, backward, optimizer) on synthetic images of ``size``
    px, ``batch`` a step."""
    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(preset, [*overrides, f"data.min_size=[{size}]", f"train.batch_size={batch}",
                               f"train.base_batch_size={batch}"])
    with tempfile.TemporaryDirectory(prefix="bench_train_") as root:
        make_synthetic(root, num_train=batch * 2, num_val=1, size=size, seed=0, workers=1,
                       progress=False)
        data = CocoPanopticDataset.from_root(root, "train", transforms=build_transforms(
            [size], cfg.data.max_size, flip=False))
        items = [data[i] for i in range(len(data))]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frozen BN without pretrained weights
        model = build_model(cfg, data.categories).to(device).train()
    images, targets = collate_panoptic(items[:batch], cfg.data.size_divisibility)
    images = images.to(device)
    targets = [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
               for t in targets]
    dtype, fmt = amp_dtype(device, cfg.train.amp), torch.contiguous_format  # as train() does
    if device == "cpu":
        if cfg.train.cpu_tune:  # the format a long run measures (or remembers) and trains in
            step_format, _ = tuned_format(model, images, targets,
                                          config_to_dict(cfg)["model"], cfg.train.amp,
                                          cfg.train.channels_last)
        else:
            step_format = StepFormat(dtype, cfg.train.channels_last)
        dtype, fmt = step_format.dtype, step_format.memory_format
    model = model.to(memory_format=fmt)
    images.tensors = images.tensors.contiguous(memory_format=fmt)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg)

    def step():
        with autocast(device, dtype):
            loss = sum(v.float() for v in model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    t = median_time(step, steps, warmup, device)
    flops = count_flops(step, model)  # forward + backward (+ the optimizer's element-wise ops)
    peak_gpu = (torch.cuda.max_memory_allocated(torch.device(device)) / 2**20
                if device.startswith("cuda") else None)
    return {"preset": preset, "overrides": list(overrides), "size": list(images.tensors.shape[-2:]),
            "batch": batch, "precision": precision_name(dtype), "step_s": t["median"], "images_per_s": batch / t["median"],
            "gflops_per_step": flops / 1e9, "gflop_per_s": flops / 1e9 / t["median"],
            "peak_rss_mb": peak_rss_mb(),
            "peak_gpu_mb": peak_gpu, "threads": torch.get_num_threads(), "device": device}


def training_throughput(preset: str = "tiny-cpu", overrides: Sequence[str] = (),
                        size: int = 256, batch: int = 4, steps: int = 5, warmup: int = 1,
                        threads: Optional[int] = None, device: str = "cpu",
                        processes: int = 1) -> dict:
    """Training images per second (median step) and peak resident memory (MiB, of a fresh
    process that builds the model and trains it) of a preset at ``size`` px, ``batch`` images a
    step; on CUDA also the peak GPU memory allocated. ``processes`` > 1: that many processes
    train side by side (as a study's runs do), each with an equal share of this process's
    threads unless ``threads`` is given; the row is the slowest one's."""
    if processes > 1 and threads is None:
        threads = max(1, torch.get_num_threads() // processes)
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        rows = [f.result() for f in [pool.submit(_training_child, preset, tuple(overrides), size,
                                                 batch, steps, warmup, threads, device)
                                     for _ in range(processes)]]
    return max(rows, key=lambda r: r["step_s"])


#: a real run's iterations per second over those of :func:`schedule_for_minutes`'s probe (the
#: fastest of :data:`PROBES` fresh processes' median step): the loop also reads data, logs and
#: saves checkpoints, and the thing head's step grows as detections start to match
#: ground-truth boxes. Measured with tiny-cpu: on a 2-core Xeon without AMX whole 300-iteration
#: processes ran at about 0.95 of a 0.43-0.47 s probe step; on a 2-core AMD EPYC a 3152-iteration
#: demo ran at 0.199 s an iteration and 3118-iteration runs at 0.184-0.193 s, against a probe of
#: 0.148-0.152 s (a single fresh process measured 0.15-0.19 s there, hence the fastest of two):
#: 0.75-0.82. 0.78 sizes a long run to about its mark. (It was 0.6 before the step was
#: profiled: the loop then handed batches over from a worker process and ran RoIAlign's
#: backward on torchvision's kernel, which grow with training.)
LOOP_SHARE = 0.78
#: the probe of :func:`schedule_for_minutes`: the fastest of this many fresh processes, each the
#: median of ``PROBE_STEPS`` steps after ``PROBE_WARMUP`` warm-up steps
PROBES, PROBE_STEPS, PROBE_WARMUP = 2, 10, 3


def schedule_for_minutes(preset: str, overrides: Sequence[str], minutes: float,
                         rate: Optional[float] = None) -> tuple:
    """Config overrides that size ``preset``'s schedule to ``minutes`` of training on this
    machine, so that its warm-up and lr decay fit in the time: ``train.max_iters`` = the
    minutes times ``rate`` (iterations per second; by default :data:`LOOP_SHARE` over the
    fastest of :data:`PROBES` :func:`training_throughput` steps of the preset at its own size
    and batch), the warm-up at most a quarter of it. Returns ``(overrides, rate)``."""
    cfg = load_config(preset, list(overrides))
    if rate is None:
        step = min(training_throughput(preset, overrides, max(cfg.data.min_size),
                                       cfg.train.batch_size, steps=PROBE_STEPS,
                                       warmup=PROBE_WARMUP)["step_s"] for _ in range(PROBES))
        rate = LOOP_SHARE / step
    iters = max(1, int(rate * 60 * minutes))
    return ([f"train.max_iters={iters}",
             f"train.warmup_iters={min(cfg.train.warmup_iters, iters // 4)}"], rate)


#: the training configurations of the benchmark: (label, preset, overrides, size, batch)
TRAINING = (("tiny-cpu, 128 px, batch 8", "tiny-cpu", (), 128, 8),
            ("R50 (r50-coco), 512 px, batch 2", "r50-coco", ("data.max_size=1024",), 512, 2))


def format_training(rows: Sequence[dict], conv_rates: Optional[Dict[str, dict]] = None) -> str:
    """Markdown table of :func:`training_throughput` rows (with a ``label``); with the
    machine's convolution rates (``{precision: conv_peak row}``, :func:`conv_rate`) each
    step's GFLOP/s is also given as a share of the rate in the step's own precision."""
    lines = ["| training | input | precision | images/s | s/step | GFLOP/step | GFLOP/s | "
             "of conv rate | peak RSS (MiB) | peak GPU (MiB) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        gpu = "-" if r.get("peak_gpu_mb") is None else f"{r['peak_gpu_mb']:.0f}"
        precision = r.get("precision", "float32")
        rate = (conv_rates or {}).get(precision)
        share = "-" if rate is None else f"{100 * r['gflop_per_s'] / rate['gflop_per_s']:.0f}%"
        lines.append(f"| {r.get('label', r['preset'])} | {r['size'][0]}x{r['size'][1]} x "
                     f"{r['batch']} | {precision} | {r['images_per_s']:.2f} | {r['step_s']:.2f} | "
                     f"{r['gflops_per_step']:.1f} | {r['gflop_per_s']:.0f} | {share} | "
                     f"{r['peak_rss_mb']:.0f} | {gpu} |")
    for precision, rate in (conv_rates or {}).items():
        lines.append(f"\nThe machine's convolution rate in {precision}: {rate['gflop_per_s']:.0f} "
                     f"GFLOP/s (one 3x3 256->256 conv of a 256 x {rate['shape']} input, "
                     f"{rate['layout']}, forward).")
    return "\n".join(lines)
