"""The memorisation check: a model that cannot learn a couple of real images by heart has a
bug somewhere between the reader and the merge.

:func:`memorise` trains a CPU preset on a few COCO panoptic images (by default the two real
COCO images of ``../shared/data/coco_panoptic_sample``) for a fixed number of minutes, with
train = val, evaluates it on those same images with panopticapi and pycocotools, and, so that a
failure says where it is, gives panopticapi's per-class TP / FP / FN with the mean IoU of the
matches (:func:`~spatialflow.evaluation.pq_counts`), the box AP, and the pixel accuracy of the
stuff map. ``spatialflow bench --memorise DIR`` runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from spatialflow.benchmark.quality import train_and_evaluate
from spatialflow.benchmark.training import LOOP_SHARE
from spatialflow.config import load_config
from spatialflow.data.panoptic_io import load_json, read_panoptic_png
from spatialflow.engine.train import train
from spatialflow.errors import InputError
from spatialflow.evaluation import metrics_row, pq_counts

#: the CPU settings of the check, on top of the preset (tiny-cpu): 320 px images, two a batch,
#: no flip (the val images are the train images as they are)
MEMORISE_OVERRIDES = ("data.min_size=[320]", "data.max_size=640", "data.test_size=320",
                      "data.size_divisibility=128", "data.flip=false", "data.num_workers=0",
                      "train.batch_size=2", "train.base_batch_size=2", "train.warmup_iters=20",
                      "train.log_every=10", "train.checkpoint_every=100000")


def sample_root(sample, out) -> Path:
    """``out/data``: the images of ``sample`` laid out as ``spatialflow make-data`` writes a
    data set, with ``train`` = ``val`` (links, nothing copied). ``sample`` is a folder with
    ``images/``, ``panoptic/`` and ``panoptic.json`` (the layout of the COCO panoptic API's
    sample data) or one in ``make-data``'s layout (its ``val`` split is used)."""
    sample, root = Path(sample).resolve(), Path(out) / "data"
    layouts = [(sample / "images", sample / "panoptic.json", sample / "panoptic"),
               (sample / "val", sample / "panoptic_val.json", sample / "panoptic_val")]
    found = next((l for l in layouts if all(p.exists() for p in l)), None)
    if found is None:
        raise InputError(f"{sample}: expected images/, panoptic/ and panoptic.json (or "
                         f"val/, panoptic_val/ and panoptic_val.json)")
    images, js, pngs = found
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        for link, target in ((root / split, images), (root / f"panoptic_{split}", pngs),
                             (root / f"panoptic_{split}.json", js)):
            if not link.exists():
                os.symlink(target, link)
    return root


def stuff_accuracy(dataset, eval_dir) -> Optional[float]:
    """Share of the ground truth's stuff pixels whose predicted panoptic segment (in
    ``eval_dir``'s ``panoptic_pred``) has the same stuff class; ``None`` without stuff."""

    pred = load_json(Path(eval_dir) / "panoptic_pred.json", required=("annotations",))
    by_image = {str(a["image_id"]): a for a in pred["annotations"]}
    cats = dataset.categories
    right = total = 0
    for idx in range(len(dataset)):
        _, gt, rec = dataset.load(idx)
        ann = by_image.get(str(rec["image_id"]))
        if ann is None:
            continue
        pan = read_panoptic_png(Path(eval_dir) / "panoptic_pred" / ann["file_name"])
        gt_cls, pred_cls = np.full(gt.shape, -1), np.full(pan.shape, -2)
        for seg in rec["segments_info"]:
            if not cats.is_thing(seg["category_id"]):
                gt_cls[gt == seg["id"]] = seg["category_id"]
        for seg in ann["segments_info"]:
            pred_cls[pan == seg["id"]] = seg["category_id"]
        stuff = gt_cls >= 0
        total += int(stuff.sum())
        right += int((pred_cls[stuff] == gt_cls[stuff]).sum())
    return right / total if total else None


def memorise(sample, out, minutes: float = 5.0, preset: str = "tiny-cpu",
             overrides: Sequence[str] = (), rate: Optional[float] = None,
             progress: bool = False) -> dict:
    """Train ``preset`` (+ :data:`MEMORISE_OVERRIDES`, then ``overrides``) on the images of
    ``sample`` (:func:`sample_root`) for ``minutes``, its schedule sized to them at this
    machine's training ``rate`` (iterations per second; by default measured first by six
    iterations on these images, times :data:`~spatialflow.benchmark.training.LOOP_SHARE`), then
    evaluate it on the same images. Returns ``{"minutes", "iterations", "train_s", "metrics"
    (:func:`~spatialflow.evaluation.metrics_row`), "per_class" ({category id: tp, fp, fn, iou,
    name, isthing}), "stuff_accuracy", "run"}``."""
    out = Path(out)
    root = sample_root(sample, out)
    settings = [*MEMORISE_OVERRIDES, f"data.root={root}", *overrides]
    cfg = load_config(preset, settings)
    if rate is None:  # a few iterations of the real loop on these images
        records, probe = [], out / "probe"
        shutil.rmtree(probe, ignore_errors=True)
        train(load_config(preset, settings + ["train.max_iters=6", "train.log_every=1"]), probe,
              progress=False, evaluate_at_end=False, on_log=records.append)
        shutil.rmtree(probe, ignore_errors=True)
        step = statistics.median(cfg.train.batch_size / r["images_per_s"] for r in records[2:])
        rate = LOOP_SHARE / step
    iters = max(1, int(rate * 60 * minutes))
    cfg = load_config(preset, settings + [f"train.max_iters={iters}"])
    done = train_and_evaluate(cfg, out / "run", 60 * minutes, out / "eval",
                             progress)
    val, eval_dir, metrics = done["dataset"], out / "eval", done["metrics"]
    counts = pq_counts(val.panoptic_json, val.panoptic_dir, eval_dir / "panoptic_pred.json",
                       eval_dir / "panoptic_pred")
    cats = val.categories
    per_class = {cid: dict(c, name=cats.name(cid), isthing=int(cats.is_thing(cid)))
                 for cid, c in sorted(counts.items())}
    result = {"minutes": minutes, "iterations": done["iteration"], "max_iters": iters,
              "train_s": done["train_s"], "metrics": metrics_row(metrics),
              "per_class": per_class, "stuff_accuracy": stuff_accuracy(val, eval_dir),
              "run": str(out / "run")}
    (out / "memorisation.json").write_text(json.dumps(result, indent=1))
    return result


def format_memorisation(result: dict, goal: float = 90.0) -> str:
    """Markdown: the PQ table of :func:`memorise`, then, when PQ is under ``goal``, where it
    fails: the classes that are not perfect with panopticapi's TP / FP / FN and mean IoU, the
    box AP and the stuff map's pixel accuracy."""
    m = result["metrics"]
    acc = result["stuff_accuracy"]
    lines = ["| minutes | iterations | train s | PQ | PQ_Th | PQ_St | box AP | stuff pixels right |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| {result['minutes']:g} | {result['iterations']} | {result['train_s']:.0f} | "
             f"{m['pq']:.1f} | {m['pq_th']:.1f} | {m['pq_st']:.1f} | {m['ap']:.1f} | "
             + ("-" if acc is None else f"{100 * acc:.1f}%") + " |"]
    if m["pq"] >= goal:
        lines.append(f"\nPQ {m['pq']:.1f} >= {goal:g}: the images are learnt by heart.")
        return "\n".join(lines)
    lines.append(f"\nPQ {m['pq']:.1f} < {goal:g}: the model did not learn these images. Where "
                 f"it fails (panopticapi's counts per class; IoU: mean of the matched segments):")
    lines += ["", "| class | kind | TP | FP | FN | IoU |", "|---|---|---:|---:|---:|---:|"]
    for cid, c in result["per_class"].items():
        if c["fp"] or c["fn"] or c["iou"] < 0.9:
            lines.append(f"| {cid} {c['name']} | {'thing' if c['isthing'] else 'stuff'} | "
                         f"{c['tp']} | {c['fp']} | {c['fn']} | {c['iou']:.2f} |")
    lines.append(f"\nThings missed or extra point at the boxes and the cls head (box AP "
                 f"{m['ap']:.1f}); matched things of low IoU at the masks (SQ_Th "
                 f"{m['sq_th']:.1f}); stuff errors at the stuff map ("
                 + ("no stuff" if acc is None else f"{100 * acc:.1f}% of stuff pixels right")
                 + ").")
    return "\n".join(lines)
