"""Regenerate the pictures the README and docs/figures.md show, from the package's own code (``make figures``)::

    python -m viz.figures [--out docs/figures] [--study runs/studies] [--iters 500] [--seeds 0 1 2 3 4 5]

* ``overlay.png``: ground truth | prediction of the full model on val images;
* ``cam_pair.png``: paper Fig. 5, cls- and stuff-head Grad-CAM with and without spatial flows;
* ``ablation.png``: paper Table V on the synthetic data: each variant minus the baseline with
  the same seed, mean and 95% interval over the seeds, the paper's difference beside;
* ``flow_maps.png``: what each spatial flow adds to its receiving tower at P3-P5, beside the
  image with its ground-truth thing boxes; ``flow_maps.json`` holds the shares of each flow's
  magnitude inside the boxes and the sentence said about them;
* ``quality_per_minute.png``: PQ_Th and PQ against training minutes, from the bench's JSON.

The models come from :func:`spatialflow.studies.run_study` over Table V's variants in the
study folder that notebooks 02, 03, 05 and 06 share, with notebook 02's settings
(:func:`~spatialflow.studies.notebook_settings`): runs already there are re-used (notebook 02's
default study is the same 24 runs), missing ones are trained, two side by side. ``figures.json``
beside the pictures records the rows, the paired comparison and the command that made them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence


from spatialflow.engine.predict import Predictor, to_tensor
from spatialflow.engine.runs import run_dataset
from spatialflow.studies import (PAPER, QUICK_OVERRIDES, compare, components_variants,
                                 describe_plan, notebook_settings, plan_study, run_label,
                                 run_study, variant)
from viz.cam import cam_examples, flows_comparison_figure
from viz.flows import describe_flow_share, flow_box_share, flow_maps, flow_maps_figure, thing_boxes
from viz.overlay import overlay_figure, prediction_rows
from viz.plots import difference_bars

FIGURES = ("overlay.png", "cam_pair.png", "flow_maps.png", "ablation.png")


def make_figures(out, study="runs/studies", base: str = "tiny-cpu",
                 overrides: Sequence[str] = tuple(notebook_settings(False, 500)),
                 seeds: Sequence[int] = (0, 1, 2, 3, 4, 5), images: int = 2, split: Optional[str] = None,
                 progress: bool = True, dpi: int = 100, workers: int = 2,
                 only: Optional[Sequence[str]] = None) -> Dict[str, Path]:
    """Write :data:`FIGURES` (or those named in ``only``) into ``out`` from the Table V runs
    of ``study`` (trained there if missing, ``overrides`` applied to ``base``); the overlay
    and the CAMs show the first ``images`` images of ``split`` (default: the val split) that
    have a thing and a stuff segment, with the first seed's models; ``workers`` runs train
    side by side. Without ``ablation.png`` only the first seed's '+ both' and
    '+ sub-networks' runs are needed. Returns ``{name: path}``."""
    only = list(FIGURES) if only is None else list(only)
    unknown = sorted(set(only) - set(FIGURES))
    if unknown:
        raise ValueError(f"unknown figure(s) {unknown}; known: {list(FIGURES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    variants = components_variants()
    if "ablation.png" not in only:
        variants = [variant(variants, "+ both"), variant(variants, "+ sub-networks")]
        seeds = list(seeds)[:1]
    if progress:
        print(describe_plan(plan_study(variants, seeds, study, base, overrides, workers)))
    rows = run_study(variants, seeds, study, base, overrides, progress, workers=workers)
    run = {r["variant"]: r["run"] for r in rows if r["seed"] == seeds[0]}
    predictor = Predictor.from_run(run["+ both"])
    cfg, categories = predictor.config, predictor.categories
    without = Predictor.from_run(run["+ sub-networks"])
    data = run_dataset(run["+ both"], split, cfg=cfg)
    examples = cam_examples(data, images, at_least=1)

    paths = {name: out / name for name in only}
    iters = cfg.train.max_iters
    if "overlay.png" in paths:
        shown = prediction_rows(predictor, data, [index for index, _, _ in examples],
                                "SpatialFlow ('+ both')")
        overlay_figure(shown, categories, title=f"Synthetic val images: ground truth | "
                                                f"prediction after {iters} iterations "
                                                f"(seed {seeds[0]})").savefig(
            paths["overlay.png"], dpi=dpi)
    index, thing, stuff = examples[0]
    models = {"with spatial flows": predictor, "without flows": without}
    image, gt, record = data.load(index)
    if "flow_maps.png" in paths:
        flow_map_picture(predictor, image, record, paths["flow_maps.png"], dpi,
                         f"after {iters} iterations")
    if "cam_pair.png" in paths:
        flows_comparison_figure(to_tensor(image), models, categories, thing, stuff,
                                ground_truth=(gt, record["segments_info"])
                                ).savefig(paths["cam_pair.png"], dpi=dpi)
    if "ablation.png" not in paths:
        return paths
    comparison = compare(rows, "baseline", paper=PAPER["table_v"])
    difference_bars(comparison, title=f"Table V on the synthetic val split ({base}, {iters} "
                                      f"iterations)", ylabel="difference in PQ (points)"
                    ).savefig(paths["ablation.png"], dpi=dpi)
    (out / "figures.json").write_text(json.dumps(
        {"command": " ".join(["python -m viz.figures", *sys.argv[1:]]), "study": str(study),
         "overrides": list(overrides), "seeds": list(seeds), "rows": rows,
         "comparison": comparison}, indent=1))
    return paths


def flow_map_picture(predictor, image, record: dict, path, dpi: int = 100,
                     trained: str = "") -> dict:
    """``path`` (a PNG): :func:`~viz.flows.flow_maps_figure` of ``predictor``'s model on one
    data set item (``image``: ``uint8[H,W,3]``, ``record``: its record, whose thing segments
    give the boxes), titled with :func:`~viz.flows.describe_flow_share`'s sentence; and beside
    it ``<path>.json``: ``{"image_id", "shares", "sentence", "run"}``. Returns that dict."""
    tensor = to_tensor(image)
    maps = flow_maps(predictor, tensor)
    boxes = thing_boxes(record["segments_info"], predictor.categories)
    shares = flow_box_share(maps, boxes, image.shape[:2])
    sentence = describe_flow_share(shares)
    model = f"model {run_label(predictor.run)}" if predictor.run else "model"
    title = (f"What each flow adds to its receiving tower (L2 norm over channels), {model} "
             f"{trained}, image {record['image_id']}")
    fig = flow_maps_figure(tensor, maps, boxes, title=title)
    fig.text(0.5, -0.01, _wrap(sentence), ha="center", va="top", fontsize=9)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    info = {"image_id": record["image_id"], "run": str(predictor.run), "shares": shares,
            "sentence": sentence}
    Path(path).with_suffix(".json").write_text(json.dumps(info, indent=1))
    return info


def _wrap(text: str, width: int = 120) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def quality_figure(bench_json, out, dpi: int = 100) -> Path:
    """``quality_per_minute.png`` in ``out``: PQ_Th and PQ against training minutes, each run
    and the median over seeds, from a ``spatialflow bench`` JSON with a quality part, with
    the goals of the CPU runs (PQ_Th >= 20 after 2 minutes, >= 40 after 10)."""
    from viz.plots import quality_curve

    result = json.loads(Path(bench_json).read_text())
    runs = result.get("quality", result)["runs"]
    path = Path(out) / "quality_per_minute.png"
    quality_curve(runs, goals={"pq_th": [(2, 20), (10, 40)]},
                  title="tiny-cpu on 2 CPU cores: quality per minute of training"
                  ).savefig(path, dpi=dpi)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m viz.figures", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="docs/figures", help="folder of the PNGs")
    p.add_argument("--study", default="runs/studies", help="the study folder (runs re-used)")
    p.add_argument("--preset", default="tiny-cpu")
    p.add_argument("--iters", type=int, default=500, help="training iterations per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    p.add_argument("--workers", type=int, default=2, help="runs trained side by side")
    p.add_argument("--images", type=int, default=2, help="images in the overlay")
    p.add_argument("--split", default=None, help="split of the shown images (default val)")
    p.add_argument("--quality", default="benchmarks/results/quality_per_minute.json",
                   help="a `spatialflow bench` JSON with a quality part: also draw "
                        "quality_per_minute.png from it (skipped when the file is missing)")
    p.add_argument("--only", nargs="+", choices=FIGURES, default=None,
                   help="make only these (without ablation.png only the first seed's '+ both' "
                        "and '+ sub-networks' runs are needed)")
    p.add_argument("--quick", action="store_true",
                   help="2 iterations on 10 tiny images (a check that it works, not a result)")
    a = p.parse_args(argv)
    overrides = list(QUICK_OVERRIDES) if a.quick else notebook_settings(False, a.iters)
    paths = make_figures(a.out, a.study, a.preset, overrides, a.seeds, a.images, a.split,
                         progress=not a.quick, workers=a.workers, only=a.only)
    if a.quality and Path(a.quality).is_file() and not a.quick and a.only is None:
        paths["quality_per_minute.png"] = quality_figure(a.quality, a.out)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
