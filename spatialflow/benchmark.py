"""Inference speed of SpatialFlow next to torchvision's peers, on this machine, in one run.

Every model runs in eval mode under ``torch.inference_mode`` with random weights on the same
input image, with the same number of threads, after warm-up; a figure is the median of the
repeated runs. SpatialFlow's time is split into backbone + FPN, the four towers (with the
flows), the heads (cls, reg, stuff, thing), box decoding (RetinaNet's top-k, decoding and NMS)
and post-processing (everything else: mask pasting, the stuff map at the image size and the
panoptic merge, which is timed as part of the run).
FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add = 2 FLOPs,
convolutions and matrix products), and the machine's peak is measured in the same run as one
3x3 256->256 convolution at the P3 shape, in NCHW and in channels_last.

``spatialflow bench`` prints the table and writes the JSON; the functions are also usable
from Python (``benchmarks/`` has the scripts).
"""

from __future__ import annotations

import platform
import statistics
import time
import warnings
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from spatialflow.errors import InputError

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


def image_shape(short: int, aspect: float = 4 / 3) -> Tuple[int, int]:
    """``(H, W)`` of a landscape image with shorter edge ``short`` (COCO's typical 4:3)."""
    return short, int(round(short * aspect))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], repeat: int = 5, warmup: int = 1,
                device: str = "cpu") -> dict:
    """Run ``fn`` ``warmup`` times untimed, then ``repeat`` times: ``{"median", "min",
    "runs"}`` in seconds (CUDA work is waited for)."""
    dev = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(dev)
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        _sync(dev)
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
        _sync(dev)
        started[id(module)] = time.perf_counter()

    def post_for(stage):
        def post(module, args, output):
            _sync(dev)
            totals[stage] += time.perf_counter() - started.pop(id(module))
        return post

    def timed(stage, method):
        def call(*args, **kwargs):
            _sync(dev)
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                _sync(dev)
                totals[stage] += time.perf_counter() - start
        return call

    wrapped = []
    for stage, paths in stages.items():
        for path in paths:
            target = getattr(model, path) if "." not in path else model.get_submodule(path)
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


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (``FlopCounterMode``; a multiply-add = 2)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def conv_peak(height: int, width: int, channels: int = 256, repeat: int = 5,
              channels_last: bool = False, device: str = "cpu",
              dtype: Optional[torch.dtype] = None) -> dict:
    """This machine's rate on one 3x3 ``channels`` -> ``channels`` convolution of a
    ``[1, channels, height, width]`` input (e.g. P3 of an image), in float32 or under autocast
    to ``dtype``: ``{"gflops", "seconds", "gflop_per_s", "layout", "precision"}``."""
    from spatialflow.engine.train import autocast

    conv = nn.Conv2d(channels, channels, 3, padding=1).to(device).eval()
    x = torch.randn(1, channels, height, width, device=device)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(
            memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device, dtype):
        flops = count_flops(lambda: conv(x))
        t = median_time(lambda: conv(x), repeat, 1, device)
    return {"layout": "channels_last" if channels_last else "NCHW", "shape": f"{height}x{width}",
            "precision": precision_name(dtype), "gflops": flops / 1e9,
            "seconds": t["median"], "gflop_per_s": flops / 1e9 / t["median"]}


def precision_name(dtype: Optional[torch.dtype]) -> str:
    """``"float32"``, or the autocast dtype's name (``"bfloat16"``, ``"float16"``)."""
    return "float32" if dtype is None else str(dtype).replace("torch.", "")


def precision_dtype(name: str) -> Optional[torch.dtype]:
    """The autocast dtype of a :func:`precision_name` (``None`` for ``"float32"``)."""
    return None if name == "float32" else getattr(torch, name)


def p3_shape(short: int) -> Tuple[int, int]:
    """``(H, W)`` of P3 (stride 8) for the 4:3 image of shorter edge ``short``."""
    h, w = image_shape(short)
    return -(-h // 8), -(-w // 8)


def conv_rate(short: int = 800, repeat: int = 5, device: str = "cpu",
              dtype: Optional[torch.dtype] = None) -> dict:
    """The machine's convolution rate: :func:`conv_peak` at the P3 shape of a ``short`` px
    image (in float32 or under autocast to ``dtype``), the faster of NCHW and channels_last."""
    return max((conv_peak(*p3_shape(short), repeat=repeat, channels_last=cl, device=device,
                          dtype=dtype) for cl in (False, True)), key=lambda r: r["gflop_per_s"])


# --- the models -------------------------------------------------------------------------------
def spatialflow_variants() -> Dict[str, Tuple[str, ...]]:
    """The SpatialFlow models compared: all flows, without flows, the naive baseline."""
    from spatialflow.studies import components_variants

    no_flows = components_variants()[1].overrides
    return {"SpatialFlow R50": (), "SpatialFlow R50, no flows": no_flows,
            "naive baseline R50": components_variants()[0].overrides}


def build_spatialflow(overrides: Sequence[str] = (), preset: str = "r50-coco",
                      seed: int = 0):
    """``(model in eval mode, config, categories)``: a preset's model with random weights,
    COCO's class counts and ``score_thresh`` 0 (always the full 100 detections)."""
    from spatialflow.config import load_config
    from spatialflow.model.spatialflow import build_model
    from spatialflow.model.summary import summary_categories

    cfg = load_config(preset, ["infer.score_thresh=0.0", *overrides])
    categories = summary_categories(cfg)
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frozen BN without pretrained weights
        torch.manual_seed(seed)
        model = build_model(cfg, categories).eval()
    return model, cfg, categories


def build_peer(name: str, short: int, long: int, seed: int = 0,
               num_classes: int = 91) -> nn.Module:
    """torchvision's ``maskrcnn_resnet50_fpn`` or ``retinanet_resnet50_fpn`` (``weights=None``)
    in eval mode, set to keep the input size and to return the full 100 detections; the
    global random state is left as it was."""
    from torchvision.models import detection

    builders = {"Mask R-CNN R50-FPN": (detection.maskrcnn_resnet50_fpn, "box_score_thresh"),
                "RetinaNet R50-FPN": (detection.retinanet_resnet50_fpn, "score_thresh")}
    if name not in builders:
        raise InputError(f"unknown peer {name!r}; one of {sorted(builders)}")
    build, thresh = builders[name]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build(weights=None, weights_backbone=None, num_classes=num_classes,
                     min_size=short, max_size=long, **{thresh: 0.0}).eval()


PEERS = ("Mask R-CNN R50-FPN", "RetinaNet R50-FPN")


# --- the benchmark ------------------------------------------------------------------------------
def bench_spatialflow(name: str, overrides: Sequence[str], image: torch.Tensor,
                      repeat: int, device: str, preset: str = "r50-coco") -> dict:
    """One row: median seconds of ``predict`` (network + pasting + merge) of one image, its
    split into :data:`STAGES` and post-processing (the rest), FLOPs and detections."""
    from spatialflow.engine.predict import merge_kwargs
    from spatialflow.panoptic import merge_outputs

    model, cfg, categories = build_spatialflow(overrides, preset)
    model.to(device)
    x = image.to(device)
    thresholds = merge_kwargs(cfg.infer)

    def run():
        out = model([x])[0]
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
                _sync(torch.device(device))
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


def machine_info(device: str = "cpu") -> dict:
    """What the figures were measured on."""
    info = {"device": device, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "python": platform.python_version()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


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


# --- training -------------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: Linux's ``VmHWM`` (the high-water mark of
    this process image; ``ru_maxrss`` would also count the parent's memory at the fork of a
    spawned child), else ``ru_maxrss``."""
    import resource
    import sys
    from pathlib import Path

    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, else kB


def _training_child(preset: str, overrides: Sequence[str], size: int, batch: int, steps: int,
                    warmup: int, threads: Optional[int], device: str) -> dict:
    """In a fresh process (so that its peak resident memory is this model's): ``warmup`` +
    ``steps`` training steps (forward, backward, optimizer) on synthetic images of ``size``
    px, ``batch`` a step."""
    import tempfile

    from spatialflow.config import load_config
    from spatialflow.data.coco_panoptic import CocoPanopticDataset, collate_panoptic
    from spatialflow.data.synthetic import make_synthetic
    from spatialflow.data.transforms import build_transforms
    from spatialflow.engine.train import amp_dtype, autocast, build_optimizer
    from spatialflow.model.spatialflow import build_model

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
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg)
    images, targets = collate_panoptic(items[:batch], cfg.data.size_divisibility)
    images = images.to(device)
    targets = [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
               for t in targets]

    dtype = amp_dtype(device, cfg.train.amp)  # as train() does

    def step():
        with autocast(device, dtype):
            loss = sum(v.float() for v in model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    t = median_time(step, steps, warmup, device)
    flops = count_flops(step)  # forward + backward (+ the optimizer's few element-wise ops)
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
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if processes > 1 and threads is None:
        threads = max(1, torch.get_num_threads() // processes)
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        rows = [f.result() for f in [pool.submit(_training_child, preset, tuple(overrides), size,
                                                 batch, steps, warmup, threads, device)
                                     for _ in range(processes)]]
    return max(rows, key=lambda r: r["step_s"])


#: a real run's iterations per second over those of :func:`training_throughput`'s step: the
#: loop also loads data and logs, and the thing head's step grows as detections start to match
#: ground-truth boxes (measured with tiny-cpu against a 0.26-0.29 s step: the demo, 1400
#: iterations in 547 s, 0.7; the bench's 10-minute runs 0.63-0.65, which 0.65 stopped short of
#: their schedules' ends; 0.6 leaves a margin so that a run ends its schedule by its mark)
LOOP_SHARE = 0.6


def train_and_evaluate(cfg, run, seconds: float, eval_dir, progress: bool = False) -> dict:
    """Train ``cfg`` into ``run`` (resumed if it has a checkpoint) until its schedule ends or
    ``seconds`` have passed, then evaluate it on ``cfg``'s val split into ``eval_dir``:
    ``{"iteration", "train_s" (set-up included), "metrics", "checkpoint", "dataset"}``."""
    from pathlib import Path

    from spatialflow.data.coco_panoptic import CocoPanopticDataset
    from spatialflow.engine.train import CHECKPOINT, FINAL, load_checkpoint, load_run, train
    from spatialflow.evaluation import evaluate

    run = Path(run)
    start = time.perf_counter()
    train(cfg, run, resume=(run / CHECKPOINT).is_file(), progress=progress,
          evaluate_at_end=False, stop_after_s=seconds)
    spent = time.perf_counter() - start
    found = run / FINAL if (run / FINAL).is_file() else run / CHECKPOINT
    ecfg, model, _ = load_run(found)
    val = CocoPanopticDataset.from_root(ecfg.data.root, ecfg.data.val_split)
    metrics = evaluate(model, val, eval_dir, ecfg.infer, ecfg.data.test_size,
                       ecfg.data.max_size, progress=progress)
    return {"iteration": int(load_checkpoint(found)["iteration"]), "train_s": spent,
            "metrics": metrics, "checkpoint": found, "dataset": val}


def quality_per_minute(out, minutes: Sequence[float] = (1, 2, 5, 10), preset: str = "tiny-cpu",
                       overrides: Sequence[str] = (), seeds: Sequence[int] = (0, 1, 2),
                       rate: Optional[float] = None, progress: bool = False) -> dict:
    """What ``minutes`` of training give: for each mark and seed, one run of ``preset`` whose
    schedule is sized to the mark (``train.max_iters`` = the mark times this machine's training
    rate, so that its warm-up and lr decay fit in the time), stopped at the mark if it is not
    done by then, and evaluated on the synthetic val split (the data in ``out/data``, shared).

    ``rate``: iterations per second; by default measured first with :func:`training_throughput`
    (the training step of the preset at its own size and batch, with a fresh model) times
    :data:`LOOP_SHARE`. Returns ``{"rate", "runs": [one row per run: "minutes",
    "seed", "max_iters", "iteration", "train_s" (set-up included) and
    :func:`~spatialflow.studies.metrics_row`'s keys], "median": [per mark: "minutes", "seeds"
    and the median over the seeds of each figure]}``.
    """
    from pathlib import Path

    from spatialflow.config import load_config
    from spatialflow.engine.train import prepare_data
    from spatialflow.studies import metrics_row

    out = Path(out)
    cfg = load_config(preset, list(overrides))
    root = prepare_data(cfg, out)
    if rate is None:
        probe = training_throughput(preset, overrides, max(cfg.data.min_size),
                                    cfg.train.batch_size)
        rate = LOOP_SHARE / probe["step_s"]
    runs = []
    for mark in sorted(minutes):
        for seed in seeds:
            iters = max(1, int(rate * 60 * mark))
            run = out / f"min{mark:g}" / f"seed{seed}"
            rcfg = load_config(preset, [*overrides, f"data.root={root}", f"train.seed={seed}",
                                        f"train.max_iters={iters}",
                                        f"train.warmup_iters={min(cfg.train.warmup_iters, iters // 4)}"])
            done = train_and_evaluate(rcfg, run, 60 * mark, run / "eval", progress)
            runs.append({"minutes": mark, "seed": seed, "max_iters": iters,
                         "iteration": done["iteration"], "train_s": done["train_s"],
                         **metrics_row(done["metrics"])})
    median = []
    for mark in sorted(minutes):
        rows = [r for r in runs if r["minutes"] == mark]
        keys = [k for k in rows[0] if k not in ("minutes", "seed")]
        median.append({"minutes": mark, "seeds": [r["seed"] for r in rows],
                       **{k: statistics.median(r[k] for r in rows) for k in keys}})
    return {"rate": rate, "runs": runs, "median": median}


def evaluation_speed(run, out, images: int = 500, progress: bool = False) -> dict:
    """Seconds to evaluate the trained ``run`` (folder or checkpoint) on ``images`` synthetic
    val images (made into ``out/data`` at the run's synthetic size and seed): predicting and
    merging every image (with the panoptic PNGs written), then panopticapi's PQ and
    pycocotools' box AP. Returns ``{"images", "size", "seconds", "images_per_s",
    "predict_s", "score_s", "pq"}``."""
    from pathlib import Path

    from spatialflow.data.coco_panoptic import CocoPanopticDataset
    from spatialflow.data.synthetic import make_synthetic
    from spatialflow.engine.predict import predict_dataset
    from spatialflow.engine.train import load_run
    from spatialflow.evaluation import PanopticEvaluator

    out = Path(out)
    cfg, model, _ = load_run(run)
    s = cfg.data.synthetic
    make_synthetic(out / "data", 0, images, s.size, s.seed + 1, progress=progress, scene=s.scene)
    val = CocoPanopticDataset.from_root(out / "data", "val")
    evaluator = PanopticEvaluator(val, out / "eval")
    start = time.perf_counter()
    for _, rec, output, pan, segments in predict_dataset(
            model, val, cfg.infer, cfg.data.test_size, cfg.data.max_size, progress=progress):
        evaluator.add(rec, output, pan, segments)
    predicted = time.perf_counter()
    metrics = evaluator.compute()
    end = time.perf_counter()
    return {"images": images, "size": s.size, "seconds": end - start,
            "images_per_s": images / (end - start), "predict_s": predicted - start,
            "score_s": end - predicted, "pq": 100 * metrics["panoptic"]["All"]["pq"]}


def format_evaluation(row: dict) -> str:
    """Markdown table of :func:`evaluation_speed`."""
    return "\n".join([
        "| images | size | total s | images/s | predict + merge s | PQ + box AP s | PQ |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {row['images']} | {row['size']} | {row['seconds']:.1f} | {row['images_per_s']:.1f} | "
        f"{row['predict_s']:.1f} | {row['score_s']:.1f} | {row['pq']:.1f} |"])


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


def format_quality(result: dict) -> str:
    """Markdown table of :func:`quality_per_minute`: the median over the seeds of each mark,
    then every run."""
    lines = ["| minutes | seeds | iterations | PQ | PQ_Th | PQ_St | box AP |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["median"]:
        lines.append(f"| {r['minutes']:g} | {len(r['seeds'])} (median) | {r['iteration']:.0f} | "
                     f"{r['pq']:.1f} | {r['pq_th']:.1f} | {r['pq_st']:.1f} | {r['ap']:.1f} |")
    lines += ["", "| minutes | seed | iterations (of) | training s | PQ | PQ_Th | PQ_St | box AP |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["runs"]:
        lines.append(f"| {r['minutes']:g} | {r['seed']} | {r['iteration']} ({r['max_iters']}) | "
                     f"{r['train_s']:.0f} | {r['pq']:.1f} | {r['pq_th']:.1f} | {r['pq_st']:.1f} | "
                     f"{r['ap']:.1f} |")
    return "\n".join(lines)
