"""The ``spatialflow`` command line.

Exit codes: 0 success, 2 bad usage or bad input (one line on stderr; ``--debug`` shows the
traceback; a diverged training run is one), 1 internal error, 128 + the signal number when
``train`` stops on SIGINT (130) or SIGTERM (143) after saving a checkpoint.
"""

from __future__ import annotations

import argparse
import platform
import sys
import traceback
from importlib import metadata
from pathlib import Path

from spatialflow.errors import InputError, TrainingInterrupted

DISTRIBUTIONS = ("torch", "torchvision", "numpy", "pillow", "pycocotools", "panopticapi-lite",
                 "grad-cam", "matplotlib", "tqdm", "pyyaml", "ipywidgets")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cmd_info(args) -> int:
    """Print versions, the compute device and the presets; with ``--model PRESET`` the
    parameters and GFLOPs of each part of that model instead."""
    if getattr(args, "model", None) is not None:
        from spatialflow.benchmark.info import describe_preset

        if args.size < 32:
            raise InputError("--size must be >= 32")
        print(describe_preset(args.model, args.size, args.set))
        return 0
    import torch

    from spatialflow import __version__
    from spatialflow.config import load_config, list_presets

    print(f"spatialflow {__version__}  (python {platform.python_version()}, "
          f"{platform.system()} {platform.machine()})")
    for dist in DISTRIBUTIONS:
        print(f"  {dist:<18} {_version(dist)}")
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        print(f"device: cuda ({torch.cuda.device_count()} GPU: {names})")
    else:
        print(f"device: cpu ({torch.get_num_threads()} threads; no CUDA GPU)")
    print("presets:")
    for name in list_presets():
        print(f"  {name:<16} {load_config(name).description}")
    return 0


def cmd_make_data(args) -> int:
    """Write a synthetic data set in COCO panoptic format and print its summary."""
    from spatialflow.data.synthetic import format_data_stats, make_synthetic, data_stats

    for key in ("num_train", "num_val"):
        if getattr(args, key) < 1:
            raise InputError(f"--{key.replace('_', '-')} must be >= 1")
    if args.size < 32:
        raise InputError("--size must be >= 32")
    make_synthetic(args.out, num_train=args.num_train, num_val=args.num_val, size=args.size,
                   seed=args.seed, workers=args.workers, progress=not args.quiet, scene=args.scene)
    print(format_data_stats(data_stats(args.out)))
    print(f"written to {Path(args.out).resolve()}")
    return 0




def cmd_bench(args) -> int:
    """The benchmarks of :mod:`spatialflow.benchmark` in one run: inference against
    torchvision's peers, training throughput and memory, quality per minute, evaluation
    speed. Prints the tables and writes ``bench.json`` and ``bench.md`` into ``--out``."""
    import json
    import tempfile

    from spatialflow.benchmark import inference, machine, quality, training

    if args.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise InputError(f"--device {args.device}: no CUDA device here")
    command = "spatialflow bench" + ("".join(f" {a}" for a in sys.argv[2:])
                                     if sys.argv[1:2] == ["bench"] else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result, parts = {"command": command}, [f"`{command}`"]

    def show(title, text):
        print(f"\n## {title}\n\n{text}", flush=True)
        parts.append(f"## {title}\n\n{text}")
        (out / "bench.json").write_text(json.dumps(result, indent=1))  # kept as it grows
        (out / "bench.md").write_text("\n\n".join(parts) + "\n")

    if not args.no_inference:
        result["inference"] = inference.run_inference_bench(
            args.sizes, args.repeat, args.threads, args.device, args.models, args.preset)
        show("Inference", inference.format_inference(result["inference"]))
    if args.options:
        from spatialflow.benchmark.options import bench_options, format_options

        size = max(args.sizes)
        result["options"] = bench_options(size, args.repeat, args.device, args.compile,
                                          args.preset)
        show(f"Inference options ({size} px)", format_options(result["options"]))
    if args.eval_run:
        print(f"evaluation: {args.eval_run} on {args.eval_images} synthetic val images",
              flush=True)
        with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
            result["evaluation"] = quality.evaluation_speed(args.eval_run, tmp, args.eval_images)
        result["evaluation"]["run"] = str(args.eval_run)
        show("Evaluation (panopticapi PQ + pycocotools box AP)",
             quality.format_evaluation(result["evaluation"]))
    if args.profile:
        from spatialflow.benchmark.profile import format_profile, profile_training

        result["profile"] = []
        for weights in [None, *args.profile_weights]:
            print(f"profile: tiny-cpu's training step, {weights or 'a fresh model'}",
                  flush=True)
            result["profile"].append(profile_training(
                steps=args.profile_steps, threads=args.threads or 2, weights=weights))
            show(f"Training step profile ({weights or 'a fresh model'})",
                 format_profile(result["profile"][-1]))
    if args.training != "none":
        result["conv_rates"], rows = {}, []  # per precision, as the training steps use them
        for label, preset, overrides, size, batch in training.TRAINING:
            if args.training == "tiny" and preset != "tiny-cpu":
                continue
            print(f"training: {label}", flush=True)
            rows.append({"label": label, **training.training_throughput(
                preset, overrides, size, batch, threads=args.threads, device=args.device)})
            precision = rows[-1]["precision"]
            if precision not in result["conv_rates"]:
                result["conv_rates"][precision] = machine.conv_rate(
                    800, args.repeat, args.device, machine.precision_dtype(precision))
            rows[-1]["conv_ratio"] = (rows[-1]["gflop_per_s"]
                                      / result["conv_rates"][precision]["gflop_per_s"])
        result["training"] = rows
        show("Training", training.format_training(rows, result["conv_rates"]))
    if args.minutes:
        with tempfile.TemporaryDirectory(prefix="bench_quality_") as tmp:
            seeds = ", ".join(map(str, args.seeds))
            print(f"quality per minute: tiny-cpu runs of {', '.join(f'{m:g}' for m in args.minutes)} "
                  f"minutes, seeds {seeds} ({sum(args.minutes) * len(args.seeds):g} minutes of "
                  f"training)", flush=True)
            result["quality"] = quality.quality_per_minute(tmp, args.minutes, seeds=args.seeds)
            show(f"Quality per minute (tiny-cpu, synthetic val; seeds {seeds})",
                 quality.format_quality(result["quality"]))
            if args.eval_images:
                longest = Path(tmp) / f"min{max(args.minutes):g}" / f"seed{args.seeds[0]}"
                print(f"evaluation: the {max(args.minutes):g}-minute run on {args.eval_images} "
                      "synthetic val images", flush=True)
                result["evaluation"] = quality.evaluation_speed(
                    longest, Path(tmp) / "speed", args.eval_images)
                show("Evaluation (panopticapi PQ + pycocotools box AP)",
                     quality.format_evaluation(result["evaluation"]))
    if args.memorise:
        from spatialflow.benchmark.memorisation import format_memorisation, memorise

        print(f"memorisation: tiny-cpu on the images of {args.memorise} for "
              f"{args.memorise_minutes:g} minutes, evaluated on the same images", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench_memorise_") as tmp:
            result["memorisation"] = memorise(args.memorise, tmp, args.memorise_minutes)
            result["memorisation"]["sample"] = str(args.memorise)
        show(f"Memorisation ({args.memorise})", format_memorisation(result["memorisation"]))
    print(f"written: {out / 'bench.json'}, {out / 'bench.md'}")
    return 0


def cmd_demo(args) -> int:
    """The main job on the built-in synthetic data (CPU): make the data, train the ``tiny-cpu``
    preset, evaluate PQ / SQ / RQ and box AP on the val split, write overlays and a report.
    An interrupted demo picks up where it stopped when run again."""
    import time

    from spatialflow.config import load_config
    from spatialflow.data.synthetic import data_stats, format_data_stats
    from spatialflow.engine.predict import evaluate_run
    from spatialflow.engine.runs import CONFIG, FINAL, eval_folder, run_dataset, synthetic_data
    from spatialflow.engine.train import train_or_resume
    from spatialflow.evaluation import format_metrics

    t_start = time.perf_counter()
    out = Path(args.out)
    data_dir = (out / "data").resolve()
    run = out / "run"
    overrides = list(args.set) + [f"data.root={data_dir}"]
    cfg = load_config(args.preset, overrides)
    sized = ""
    if (run / CONFIG).is_file():  # a demo run already there goes on with its own schedule
        cfg = load_config(run / CONFIG)
    elif args.minutes and not any(o.startswith("train.max_iters=") for o in args.set):
        # the schedule sized to the minutes on this machine (warm-up and lr decay included)
        from spatialflow.benchmark.training import schedule_for_minutes

        print(f"[0/4] timing the training step to size the schedule to {args.minutes:g} "
              "minutes", flush=True)
        schedule, rate = schedule_for_minutes(args.preset, overrides, args.minutes)
        cfg = load_config(args.preset, overrides + schedule)
        sized = (f" (sized to {args.minutes:g} minutes here: {1 / rate:.2f} s an iteration "
                 "measured)")
    if not cfg.model.panoptic:
        raise InputError("the demo trains and shows a panoptic model; train a detector alone "
                         "(model.panoptic=false) with `spatialflow train`")
    s = cfg.data.synthetic
    print(f"[1/4] synthetic data: {s.num_train} train + {s.num_val} val images of "
          f"{s.size}x{s.size} px (seed {s.seed}) -> {data_dir}")
    synthetic_data(cfg, data_dir)
    print(format_data_stats(data_stats(data_dir)))
    t_data = time.perf_counter()

    print(f"[2/4] training {cfg.name} for {cfg.train.max_iters} iterations of "
          f"{cfg.train.batch_size} images{sized} -> {run}")
    if (run / FINAL).is_file():
        print("  already trained: using it")
    else:
        train_or_resume(cfg, run, evaluate_at_end=False)
    t_train = time.perf_counter()

    print(f"[3/4] evaluating on the {cfg.data.val_split} split (panopticapi, pycocotools)")
    val = run_dataset(run, cfg=cfg)
    eval_dir = eval_folder(run)
    metrics = evaluate_run(run, val, eval_dir)
    table = format_metrics(metrics, val.categories, per_class=True)
    print(table)
    t_eval = time.perf_counter()

    print(f"[4/4] overlays and report -> {out}")
    overlays = _demo_overlays(val, eval_dir, out / "overlays", args.overlays)
    timings = {"data": t_data - t_start, "train": t_train - t_data, "evaluate": t_eval - t_train}
    command = ["spatialflow demo"] + (["--out", args.out] if args.out != "runs/demo" else [])
    command += ["--set", *args.set] if args.set else []
    _demo_report(out / "report.md", cfg, metrics, table, overlays, timings, " ".join(command))
    p = metrics["panoptic"]
    print(f"demo done in {time.perf_counter() - t_start:.0f} s: PQ {100 * p['All']['pq']:.1f} "
          f"(things {100 * p['Things']['pq']:.1f}, stuff {100 * p['Stuff']['pq']:.1f}), box AP "
          f"{100 * metrics['bbox']['AP']:.1f}; report: {(out / 'report.md').resolve()}")
    return 0


def _demo_overlays(dataset, eval_dir: Path, out_dir: Path, count: int) -> list:
    """Image | ground truth | prediction of the first ``count`` images of ``dataset`` that hold
    a thing, each panel titled, enlarged to about 384 px (nearest neighbour), with boxes and
    class names on the things and a legend of the classes shown."""
    import json

    import numpy as np

    from spatialflow.data.panoptic_io import read_panoptic_png
    from spatialflow.render import (captioned, enlarged, legend_strip, panoptic_overlay,
                                    save_png, side_by_side)

    out_dir.mkdir(parents=True, exist_ok=True)
    pred = {a["image_id"]: a for a in json.loads((eval_dir / "panoptic_pred.json").read_text())[
        "annotations"]}
    cats = dataset.categories

    def scaled(segments, f):
        return [dict(s, bbox=[v * f for v in s["bbox"]]) if "bbox" in s else s for s in segments]

    paths = []
    for i in range(len(dataset)):
        if len(paths) >= count:
            break
        rec = dataset.annotation(i)
        if not any(cats.is_thing(s["category_id"]) for s in rec["segments_info"]):
            continue  # an image without things shows nothing of what the model finds
        image, gt_pan, rec = dataset.load(i)
        p = pred[rec["image_id"]]
        pred_pan = read_panoptic_png(eval_dir / "panoptic_pred" / p["file_name"])
        f = max(1, 384 // max(image.shape[:2]))
        big = enlarged(image, f)
        gt = panoptic_overlay(big, enlarged(gt_pan, f), scaled(rec["segments_info"], f), cats,
                              boxes=True, labels=True)
        pr = panoptic_overlay(big, enlarged(pred_pan, f), scaled(p["segments_info"], f), cats,
                              boxes=True, labels=True)
        strip = side_by_side(captioned(big, f"image {rec['image_id']}"),
                             captioned(gt, "ground truth"),
                             captioned(pr, "prediction (boxes, classes)"))
        shown = sorted({s["category_id"] for s in rec["segments_info"] + p["segments_info"]},
                       key=lambda c: (not cats.is_thing(c), cats.name(c)))
        strip = np.concatenate([strip, legend_strip(shown, cats, strip.shape[1])], axis=0)
        path = out_dir / f"{Path(p['file_name']).stem}.png"
        save_png(path, strip)
        paths.append(path)
    return paths


def _demo_report(path: Path, cfg, metrics, table, overlays, timings, command) -> None:
    lines = ["# SpatialFlow Workbench demo", "",
             f"Command: `{command}` (preset `{cfg.name}`, {cfg.train.max_iters} iterations of "
             f"{cfg.train.batch_size} images, seed {cfg.train.seed}).", "",
             "Time on this machine: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
             + ".", "", "Metrics on the synthetic val split (panopticapi `pq_compute`, "
             "pycocotools `COCOeval` for boxes; x100):", "", "```", table, "```", "",
             "Overlays of the first val images that hold things (image | ground truth | "
             "prediction):", ""]
    lines += [f"![{p.stem}](overlays/{p.name})" for p in overlays]
    path.write_text("\n".join(lines) + "\n")


def cmd_train(args) -> int:
    """Train a model into a run folder (works under ``torchrun`` for several processes)."""
    from spatialflow.config import load_config
    from spatialflow.engine.train import train

    cfg = None if args.resume else load_config(args.config or args.preset, args.set)
    train(cfg, args.out, resume=args.resume, device=args.device, progress=not args.quiet)
    return 0


def cmd_evaluate(args) -> int:
    """PQ / SQ / RQ and box AP of a trained run or checkpoint on a data split. Images that
    cannot be read are left out, listed on stderr after the metrics (and in
    ``OUT/skipped.json``), and the exit code is then 2."""
    import warnings

    from spatialflow.engine.predict import Predictor, evaluate_run
    from spatialflow.engine.runs import eval_folder, run_dataset, run_folder
    from spatialflow.evaluation import SkippedItemWarning, format_metrics, present_categories

    predictor = Predictor.from_run(args.run, overrides=args.set)
    cfg, run = predictor.config, run_folder(args.run)
    ds = run_dataset(run, args.split, args.data, cfg)
    out = Path(args.out) if args.out else eval_folder(run)
    skipped = []

    def list_skipped():
        for _, _, reason in skipped:
            print(f"skipped: {reason}", file=sys.stderr)

    try:
        with warnings.catch_warnings():  # the skipped items are listed at the end instead
            warnings.simplefilter("ignore", SkippedItemWarning)
            metrics = evaluate_run(predictor, ds, out, max_images=args.max_images,
                                   progress=not args.quiet,
                                   on_skip=lambda *item: skipped.append(item))
    except InputError:  # e.g. no image could be read
        list_skipped()
        raise
    present = present_categories(ds, out) if args.per_class and predictor.panoptic else None
    print(format_metrics(metrics, ds.categories, per_class=args.per_class, present=present))
    print(f"metrics written to {out / 'metrics.json'}")
    if skipped:
        list_skipped()
        n = len(ds) if args.max_images is None else min(args.max_images, len(ds))
        raise InputError(f"{len(skipped)} of {n} image(s) could not be read (listed above, and "
                         f"in {out / 'skipped.json'}); the metrics cover the other "
                         f"{n - len(skipped)}")
    return 0


def cmd_predict(args) -> int:
    """Panoptic predictions for image files or folders: PNGs + JSON (COCO panoptic) and
    overlays. Unreadable files are skipped and listed at the end (exit code 2)."""
    from spatialflow.engine.predict import Predictor, list_images

    predictor = Predictor.from_run(args.run, overrides=args.set)
    files = list_images(args.inputs)
    n, failures = predictor.write(files, args.out, progress=not args.quiet)
    written = "panoptic.json, panoptic/" if predictor.panoptic else "detections.json"
    print(f"{n} image(s) predicted -> {Path(args.out).resolve()} ({written}, overlays/)")
    for path, reason in failures:
        print(f"skipped: {reason}", file=sys.stderr)
    if failures:
        raise InputError(f"{len(failures)} of {len(files)} file(s) could not be read "
                         f"(listed above)")
    return 0


INFER_SET_HELP = ("inference settings to change: infer.* (merge thresholds, e.g. "
                  "infer.mask_conf=0.5; test-time augmentation, e.g. "
                  "'infer.tta_scales=[[600,1000],[800,1333]]' infer.tta_flip=true), "
                  "data.test_size, data.max_size")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spatialflow",
        description="SpatialFlow Workbench: panoptic segmentation with spatial flows "
                    "(Chen et al.).")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    q = sub.add_parser("info", help="versions, device and presets; with --model, the size "
                                    "and FLOPs of a model")
    q.add_argument("--model", default=None, metavar="PRESET",
                   help="print parameters and GFLOPs per part of this preset's model "
                        "(or a YAML file) instead")
    q.add_argument("--size", type=int, default=800,
                   help="with --model: the input is one SIZE x SIZE image (default 800)")
    q.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="with --model: config overrides, e.g. model.subnets=false")
    q.set_defaults(func=cmd_info)

    q = sub.add_parser("make-data", help="write a data set in COCO panoptic format")
    q.add_argument("kind", choices=["synthetic"], help="which data set to make")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--num-train", type=int, default=2000, help="training images (default 2000)")
    q.add_argument("--num-val", type=int, default=100, help="validation images (default 100)")
    q.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    q.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    q.add_argument("--scene", choices=["close", "wide"], default="close",
                   help="close: things seen from near, a tenth to half of the image side "
                        "(default); wide: the first version's landscapes, with things down to "
                        "a few pixels")
    q.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_make_data)

    q = sub.add_parser("train", help="train a model into a run folder (torchrun for DDP)")
    q.add_argument("--preset", default="tiny-cpu", help="preset name (default tiny-cpu)")
    q.add_argument("--config", default=None, help="YAML config file (may name a preset)")
    q.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. train.max_iters=500 model.flows.reg_to_cls=false")
    q.add_argument("--out", required=True, help="run folder")
    q.add_argument("--resume", action="store_true", help="continue the run in --out")
    q.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if any)")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=cmd_train)

    q = sub.add_parser("evaluate", help="PQ and box AP of a run or checkpoint")
    q.add_argument("run", help="run folder or checkpoint file")
    q.add_argument("--data", default=None, help="data folder (default: the run's)")
    q.add_argument("--split", default=None, help="split (default: data.val_split)")
    q.add_argument("--out", default=None, help="output folder (default RUN/eval/final)")
    q.add_argument("--max-images", type=int, default=None, help="only the first N images")
    q.add_argument("--per-class", action="store_true", help="print PQ per class")
    q.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help=INFER_SET_HELP)
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=cmd_evaluate)

    q = sub.add_parser("predict", help="panoptic predictions and overlays for images")
    q.add_argument("run", help="run folder or checkpoint file")
    q.add_argument("inputs", nargs="+", help="image files or folders")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help=INFER_SET_HELP)
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_predict)

    q = sub.add_parser("bench", help="inference speed, FLOPs and GFLOP/s of SpatialFlow next "
                                     "to torchvision's Mask R-CNN and RetinaNet")
    q.add_argument("--sizes", type=int, nargs="+", default=[400, 600, 800],
                   help="shorter edges of the 4:3 test image (default 400 600 800, Table XI)")
    q.add_argument("--repeat", type=int, default=3, help="timed runs per figure (median)")
    q.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    q.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    q.add_argument("--models", nargs="+", default=None, help="only these models (names as "
                   "printed, e.g. 'SpatialFlow R50' 'Mask R-CNN R50-FPN')")
    q.add_argument("--preset", default="r50-coco", help="SpatialFlow's preset (default r50-coco)")
    q.add_argument("--training", choices=["all", "tiny", "none"], default="all",
                   help="training images/s and peak memory: tiny-cpu at 128 px and R50 at 512 "
                        "px (all), tiny-cpu only, or none")
    q.add_argument("--minutes", type=float, nargs="*", default=[1, 2, 5, 10],
                   help="quality per minute: PQ of tiny-cpu runs of these many minutes each, "
                        "their schedules sized to this machine, on the synthetic data (default "
                        "1 2 5 10; none to skip)")
    q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="quality per minute: one run per seed and mark; the table gives the "
                        "median (default 0 1 2)")
    q.add_argument("--eval-images", type=int, default=500,
                   help="then time the evaluation of that run on this many synthetic val "
                        "images (default 500; 0 to skip)")
    q.add_argument("--memorise", default=None, metavar="DIR",
                   help="the memorisation check: train tiny-cpu on the COCO panoptic images of "
                        "DIR (images/, panoptic/, panoptic.json, e.g. the COCO sample) and "
                        "evaluate on the same images; PQ >= 90 expected")
    q.add_argument("--memorise-minutes", type=float, default=5.0,
                   help="training minutes of the memorisation check (default 5)")
    q.add_argument("--options", action="store_true",
                   help="also time SpatialFlow R50's inference options one at a time at the "
                        "largest size (channels_last, one thread, masks for the 10 best "
                        "detections)")
    q.add_argument("--compile", action="store_true",
                   help="with --options: also torch.compile (minutes of compiling)")
    q.add_argument("--eval-run", default=None, metavar="RUN",
                   help="time the evaluation of this trained tiny-cpu run on --eval-images "
                        "fresh synthetic val images (no training)")
    q.add_argument("--profile", action="store_true",
                   help="profile tiny-cpu's training step (torch.profiler self time by part "
                        "of the model and by operator; batch 8 at 128 px, 2 threads)")
    q.add_argument("--profile-weights", nargs="+", default=[], metavar="RUN",
                   help="with --profile: also profile the step starting from these runs' "
                        "weights (a trained model trains its thing head on more RoIs)")
    q.add_argument("--profile-steps", type=int, default=10,
                   help="with --profile: iterations profiled, after 3 (default 10)")
    q.add_argument("--no-inference", action="store_true", help="skip the inference tables")
    q.add_argument("--out", default="benchmarks/results",
                   help="folder of bench.json and bench.md (default benchmarks/results)")
    q.set_defaults(func=cmd_bench)

    q = sub.add_parser("demo", help="the CPU demo on the built-in synthetic data")
    q.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    q.add_argument("--preset", default="tiny-cpu", help="preset or YAML file (default tiny-cpu)")
    q.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. train.max_iters=100 data.synthetic.num_train=50")
    q.add_argument("--overlays", type=int, default=4, help="overlay PNGs to write (default 4)")
    q.add_argument("--minutes", type=float, default=9.0,
                   help="training time: the schedule is sized to it from a timed step on this "
                        "machine (default 9; 0: the preset's own schedule; a train.max_iters "
                        "in --set wins)")
    q.set_defaults(func=cmd_demo)
    return p


def one_line(error: Exception) -> str:
    """The message of ``error`` on one line: an error re-raised from a DataLoader worker
    carries the worker's traceback in its message, of which its own last line is kept."""
    text = str(error)
    if "\nOriginal Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return text


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as e:
        if args.debug:
            traceback.print_exc()
        print(f"spatialflow {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:  # SIGINT / SIGTERM, after a checkpoint
        print(f"spatialflow {args.command}: stopped by {e}", file=sys.stderr)
        return 128 + int(e.signum)
    except KeyboardInterrupt:
        print(f"spatialflow {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # an internal error: a bug, not the user's input
        if args.debug:
            traceback.print_exc()
        print(f"spatialflow {args.command}: internal error: {type(e).__name__}: {e} "
              f"(run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
