"""The paper's studies as functions the notebooks call: the ablation variants of Tables V and IX
and Fig. 4, the stages of Tables VII and VIII, the detector alone of Table XII, the loss-balance
sweep of Table IV, accuracy against image scale and speed
(Table XI), and the paper's published figures to show next to ours.

:func:`run_study` trains every (variant, seed) into its own run folder under one study folder
and caches it there: a finished run is read back, an interrupted one resumed, so re-running a
notebook re-uses everything already computed.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import re
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from spatialflow.config import NO_FLOWS, config_to_dict, load_config
from spatialflow.engine.runs import CHECKPOINT, FINAL, evaluate_run, find_checkpoint, prepare_data
from spatialflow.engine.train import train
from spatialflow.evaluation import PanopticEvaluator, metrics_row

#: overrides that make any study or notebook run in seconds (CI and the notebooks' quick mode):
#: 8 + 2 synthetic images of 128 px, two images a batch, no worker processes; data seed 1 gives
#: things in every image of both splits (tested), so that the quick val split has things to
#: show and to score
QUICK_OVERRIDES = ("data.synthetic.num_train=8", "data.synthetic.num_val=2",
                   "data.synthetic.size=128", "data.synthetic.seed=1", "data.min_size=[128]", "data.test_size=128",
                   "data.num_workers=0", "train.batch_size=2", "train.base_batch_size=2",
                   "train.warmup_iters=1", "train.log_every=1", "train.max_iters=2",
                   "infer.stuff_area=0")


@dataclass(frozen=True)
class Variant:
    """One row of a study: a name, the config overrides that make it, and ``tags``
    (``(key, value)`` pairs copied into each of its result rows, e.g. ``("lambda", 0.25)``)."""
    name: str
    overrides: Tuple[str, ...] = ()
    tags: Tuple[Tuple[str, object], ...] = ()


def components_variants() -> List[Variant]:
    """Table V / VI: the naive baseline, + sub-networks, + spatial flows, + both.

    Without sub-networks only the reg->cls flow exists in this implementation (the thing and
    stuff heads then read the FPN levels directly), so the 'spatial flows' row is that flow.
    """
    return [Variant("baseline", ("model.subnets=false",) + NO_FLOWS),
            Variant("+ sub-networks", ("model.subnets=true",) + NO_FLOWS),
            Variant("+ spatial flows", ("model.subnets=false",)),
            Variant("+ both", ("model.subnets=true",))]


def flows_variants() -> List[Variant]:
    """Table IX / X: sub-networks without flows, then each flow added to the row above."""
    rows, on = [Variant("-", ("model.subnets=true",) + NO_FLOWS)], list(NO_FLOWS)
    for flow, name in (("reg_to_cls", "+ reg-cls"), ("reg_to_stuff", "+ reg-stuff"),
                       ("reg_to_thing", "+ reg-thing"), ("stuff_to_thing", "+ stuff-thing")):
        on = [o for o in on if f".{flow}=" not in o]
        rows.append(Variant(name, ("model.subnets=true",) + tuple(on)))
    return rows


def fig4_variants() -> List[Variant]:
    """Fig. 4: the base model (sub-networks, no flows), the cls-flows control and the spatial
    flows model."""
    return [Variant("base", ("model.subnets=true",) + NO_FLOWS),
            Variant("cls flows", ("model.subnets=true", "model.flows.source=cls")),
            Variant("spatial flows", ("model.subnets=true", "model.flows.source=reg"))]


def stages_variants(tower: str, stages: Sequence[int] = (0, 1, 2, 3, 4)) -> List[Variant]:
    """Tables VII (``tower="thing"``) and VIII (``"stuff"``): the number of stages of one
    sub-network, as the paper sweeps it, "based on the baseline model": no flows, the other
    segmentation tower at 0 stages (the paper's rows at 0 stages are its baseline, 39.7 PQ, in
    both tables), the cls and reg towers as always. The row of 0 stages is the naive baseline
    itself (:func:`components_variants`' first row: the same network, and the same run)."""
    if tower not in ("thing", "stuff"):
        raise ValueError(f"tower must be 'thing' or 'stuff', got {tower!r}")
    other = "stuff" if tower == "thing" else "thing"
    rows = []
    for n in stages:
        if n < 0:
            raise ValueError(f"stages must be >= 0, got {n}")
        overrides = components_variants()[0].overrides if n == 0 else (
            ("model.subnets=true",) + NO_FLOWS + (f"model.{other}_stages=0",
                                                   f"model.{tower}_stages={n}"))
        name = f"{n} {tower} stage{'' if n == 1 else 's'}"  # e.g. "1 thing stage"
        rows.append(Variant(name, overrides, (("stages", int(n)),)))
    return rows


def detection_variants() -> List[Variant]:
    """Table XII: RetinaNet alone (``model.panoptic=false``, scored by box AP), without and
    with the reg->cls flow."""
    return [Variant("RetinaNet", ("model.panoptic=false", "model.flows.reg_to_cls=false")),
            Variant("RetinaNet w/ flows", ("model.panoptic=false", "model.flows.reg_to_cls=true"))]


def variant(variants: Sequence[Variant], name: str) -> Variant:
    """The variant called ``name`` among ``variants`` (e.g. ``variant(fig4_variants(),
    "spatial flows")``); a ``KeyError`` lists the names there are."""
    for v in variants:
        if v.name == name:
            return v
    raise KeyError(f"no variant {name!r}; there are {[v.name for v in variants]}")


def notebook_settings(quick: bool, iters: int, eval_every: int = 0) -> List[str]:
    """The overrides of a notebook's runs: :data:`QUICK_OVERRIDES` in quick mode, else
    ``train.max_iters=iters``; with ``eval_every`` the run is also evaluated on the val split
    every that many iterations (every iteration in quick mode), for PQ curves during
    training."""
    settings = list(QUICK_OVERRIDES) if quick else [f"train.max_iters={iters}"]
    if eval_every:
        settings.append(f"train.eval_every={1 if quick else eval_every}")
    return settings


def planned_study(variants: Sequence[Variant], seeds: Sequence[int], out, base="tiny-cpu",
                  overrides: Sequence[str] = (), workers: int = 1, quick: bool = False,
                  say: Optional[Callable[[str], None]] = print) -> List[dict]:
    """:func:`run_study` after saying what it will do (:func:`describe_plan`: runs to train,
    cached ones and the measured time; ``quick``: not measured, and no progress bars), as the
    notebooks run their studies."""
    if say is not None:
        say(describe_plan(plan_study(variants, seeds, out, base, overrides, workers,
                                     measure=not quick)))
    return run_study(variants, seeds, out, base, overrides, progress=not quick, workers=workers)


def save_rows(path, rows) -> Path:
    """Write a study's results (rows, or a dict of them) as JSON to ``path``; returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1))
    return path


def run_or_data(run, data, out, base="tiny-cpu", quick: bool = False):
    """``(run, data)`` for an explorer (notebook 04): in quick mode a missing ``run`` is
    trained for 2 iterations on the quick data into ``out`` (so that the sliders have work to
    do); with no trained run and no ``data``, the synthetic data of ``base`` (made in
    ``out/data`` if needed) is browsed instead."""
    overrides = list(QUICK_OVERRIDES) if quick else []
    if quick and find_checkpoint(run) is None:
        run = run_study([Variant("quick")], [0], out, base, overrides, progress=False)[0]["run"]
    if data is None and find_checkpoint(run) is None:
        data = prepare_data(load_config(base, overrides), Path(out))
    return run, data


def lambda_variants(lambdas: Sequence[float], model: Optional[Sequence[str]] = None
                    ) -> List[Variant]:
    """Table IV: one variant per value of lambda (the stuff loss weight of eq 6), on ``model``
    (overrides; default: the naive baseline, as the paper sweeps it)."""
    model = tuple(components_variants()[0].overrides if model is None else model)
    return [Variant(f"lambda={lam:g}", model + (f"model.stuff_loss_weight={lam}",),
                    (("lambda", float(lam)),)) for lam in lambdas]


# The paper's figures (ResNet-50; COCO val unless the table says Cityscapes; PQ, PQ_Th, PQ_St,
# or box AP for Table XII), to show next to measured ones.
PAPER = {
    "table_iv": [{"lambda": lam, "pq": a, "pq_th": b, "pq_st": c} for lam, a, b, c in (
        (1.0, 37.5, 41.8, 30.9), (0.75, 38.2, 43.0, 31.1), (0.5, 38.8, 44.0, 31.0),
        (0.3, 39.1, 44.5, 30.9), (0.25, 39.3, 45.1, 30.5), (0.2, 39.0, 44.9, 30.0))],
    "table_v": [{"variant": v, "pq": a, "pq_th": b, "pq_st": c} for v, a, b, c in (
        ("baseline", 39.7, 46.0, 30.2), ("+ sub-networks", 40.3, 46.2, 31.4),
        ("+ spatial flows", 40.2, 46.5, 30.7), ("+ both", 40.9, 46.8, 31.9))],
    "table_ix": [{"variant": v, "pq": a, "pq_th": b, "pq_st": c} for v, a, b, c in (
        ("-", 40.3, 46.2, 31.4), ("+ reg-cls", 40.5, 46.6, 31.4),
        ("+ reg-stuff", 40.7, 46.3, 32.0), ("+ reg-thing", 40.7, 46.4, 31.8),
        ("+ stuff-thing", 40.9, 46.8, 31.9))],
    # Table VI: Table V on Cityscapes val
    "table_vi": [{"variant": v, "pq": a, "pq_th": b, "pq_st": c} for v, a, b, c in (
        ("baseline", 57.3, 53.5, 60.0), ("+ sub-networks", 57.5, 53.6, 60.3),
        ("+ spatial flows", 58.0, 54.3, 60.8), ("+ both", 58.6, 54.9, 61.4))],
    # Tables VII / VIII: stages of the thing / stuff sub-network, on the baseline model
    "table_vii": [{"stages": n, "pq": a, "pq_th": b, "pq_st": c} for n, a, b, c in (
        (0, 39.7, 46.0, 30.2), (1, 39.9, 46.3, 30.3), (2, 39.7, 46.0, 30.2),
        (3, 39.9, 46.2, 30.3), (4, 39.7, 45.9, 30.3))],
    "table_viii": [{"stages": n, "pq": a, "pq_th": b, "pq_st": c} for n, a, b, c in (
        (0, 39.7, 46.0, 30.2), (1, 39.9, 45.9, 30.9), (2, 40.1, 46.0, 31.1),
        (3, 40.2, 46.1, 31.4), (4, 40.3, 46.2, 31.5))],
    # Table X: Table IX on Cityscapes val
    "table_x": [{"variant": v, "pq": a, "pq_th": b, "pq_st": c} for v, a, b, c in (
        ("-", 57.5, 53.6, 60.3), ("+ reg-cls", 58.0, 55.1, 60.1),
        ("+ reg-stuff", 58.3, 54.6, 60.9), ("+ reg-thing", 58.5, 54.7, 61.3),
        ("+ stuff-thing", 58.6, 54.9, 61.4))],
    # Table XII: RetinaNet R50 at 800 px, box AP on COCO val
    "table_xii": [{"variant": v, "ap": a, "ap50": b, "ap75": c} for v, a, b, c in (
        ("RetinaNet", 35.6, 55.5, 37.7), ("RetinaNet w/ flows", 36.7, 57.1, 39.4))],
    # Table XI: FPS on one V100
    "table_xi": [{"name": n, "scale": s, "pq": a, "pq_th": b, "pq_st": c, "fps": f}
                 for n, s, a, b, c, f in (
                     ("PanopticFPN R50", 800, 39.0, 45.9, 27.9, 18.9),
                     ("UPSNet R50", 800, 42.5, 48.5, 33.4, 9.1),
                     ("DeeperLab X71", 641, 34.3, 37.5, 29.6, 10.6),
                     ("SpatialFlow R50", 800, 40.9, 46.8, 31.9, 10.3),
                     ("SpatialFlow R50", 600, 40.3, 45.6, 32.2, 13.0),
                     ("SpatialFlow R50", 400, 37.4, 41.5, 31.4, 19.6))],
}


def slug(name: str) -> str:
    """A folder name for a variant name (``'+ reg-cls'`` -> ``'reg-cls'``)."""
    return re.sub(r"[^A-Za-z0-9.=_-]+", "_", name).strip("_") or "variant"


def run_label(run) -> str:
    """A short name of a run folder (or a checkpoint in it) for titles: a study's run
    ``<variant slug>-<config key>/seed<k>`` is ``'<variant slug>, seed <k>'`` (e.g.
    ``'both, seed 0'``), any other run its folder's name."""
    folder = Path(run) if Path(run).is_dir() or not Path(run).suffix else Path(run).parent
    match = re.fullmatch(r"seed(\d+)", folder.name)
    study = re.fullmatch(r"(.+)-[0-9a-f]{8}", folder.parent.name)
    if match and study:
        return f"{study.group(1)}, seed {match.group(1)}"
    return folder.name


def config_key(cfg) -> str:
    """Eight hex digits that name what a run trains: the config without its seed, the folder
    of its data and its fault handling, so variants of different studies that build the same model share
    their runs."""
    d = config_to_dict(cfg)
    d["train"].pop("seed")
    d["train"].pop("max_bad_steps")  # how a run reacts to a fault, not what it trains
    d["data"].pop("root")
    m = d["model"]
    if m.pop("panoptic"):  # (the default, left out: keys of runs made before it stay)
        if not cfg.model.subnets:  # no stuff / thing tower: their flows are not built
            for flow in ("reg_to_stuff", "reg_to_thing", "stuff_to_thing"):
                m["flows"].pop(flow)
    else:  # a detector alone: only what RetinaNet builds, and the switch of its one flow
        for key in ("subnets", "stuff_stages", "thing_stages", "stuff_loss_weight",
                    "stuff_head_channels", "mask_head_channels"):
            m.pop(key)
        flows = m.pop("flows")
        m["detector"] = {k: flows[k] for k in ("reg_to_cls", "source")}
        for key in ("mask_conf", "overlap", "stuff_area", "box_fill", "box_fill_enabled"):
            d["infer"].pop(key)
    d.pop("name", None), d.pop("description", None)
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


def run_study(variants: Sequence[Variant], seeds: Sequence[int], out, base="tiny-cpu",
              overrides: Sequence[str] = (), progress: bool = True,
              train_fn: Optional[Callable] = None, workers: int = 1) -> List[dict]:
    """Train and evaluate each variant with each seed; returns one row per run: ``variant``,
    the variant's ``tags``, ``seed``, ``run`` (its folder) and :func:`metrics_row`'s keys.

    Runs go to ``out/<variant>-<config key>/seed<k>`` (:func:`config_key`), all on one data set
    (``data.root`` from ``overrides``, or the base config's synthetic data written once to
    ``out/data``). A variant whose config was already trained under another name in ``out`` (the
    Table IX row '-' is Table V's '+ sub-networks') re-uses that run. A run whose
    ``eval/final/metrics.json`` exists is read back instead of trained again; one with a
    checkpoint is resumed. ``base`` is a preset name or YAML file; ``overrides`` apply to every
    run before the variant's own.

    ``workers``: runs trained side by side, each in its own process with an equal share of
    this process's threads (on 2 CPU cores two runs of one thread each train tiny-cpu about
    1.3x faster in all than one run of two threads; README, "Studies in a class period").
    ``train_fn`` (default :func:`~spatialflow.engine.train.train`) must then be picklable.
    """
    rows, jobs = _plan(variants, seeds, out, base, overrides, write_data=True)
    if workers <= 1 or len(jobs) <= 1:
        for cfg, run in jobs:
            _train_and_evaluate(cfg, run, progress, train_fn)
    else:

        threads = max(1, torch.get_num_threads() // workers)
        with ProcessPoolExecutor(min(workers, len(jobs)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_train_and_evaluate, cfg, run, False, train_fn, threads)
                       for cfg, run in jobs]
            for future in _progress(as_completed(futures), f"runs ({workers} at a time)",
                                    progress, "run", len(futures)):
                future.result()
    for row in rows:
        row.update(metrics_row(json.loads((Path(row["run"]) / _DONE).read_text())))
    return rows


def _plan(variants, seeds, out, base, overrides, write_data: bool):
    """The rows of :func:`run_study` (without metrics) and its ``(config, run)`` jobs: the
    runs not yet trained and evaluated, each once. ``write_data``: generate the synthetic data
    (else its folder is only named)."""
    out = Path(out)
    common = load_config(base, list(overrides))
    if write_data:
        out.mkdir(parents=True, exist_ok=True)
        root = Path(prepare_data(common, out)).resolve()  # runs open from any folder
    else:
        root = Path(common.data.root or out / "data").resolve()
    rows, jobs = [], []
    for variant in variants:
        key = config_key(load_config(base, [*overrides, *variant.overrides, f"data.root={root}"]))
        folder = next(iter(sorted(out.glob(f"*-{key}"))), out / f"{slug(variant.name)}-{key}")
        for seed in seeds:
            run = folder / f"seed{seed}"
            rows.append({"variant": variant.name, **dict(variant.tags), "seed": seed,
                         "run": str(run)})
            if not (run / _DONE).is_file() and all(j[1] != run for j in jobs):
                jobs.append((load_config(base, [*overrides, *variant.overrides,
                                                f"train.seed={seed}", f"data.root={root}"]), run))
    return rows, jobs


def plan_study(variants: Sequence[Variant], seeds: Sequence[int], out, base="tiny-cpu",
               overrides: Sequence[str] = (), workers: int = 1, measure: bool = True) -> dict:
    """What :func:`run_study` with the same arguments will do, before it starts: ``runs``
    (all of them), ``to_train`` (those not cached in ``out``), ``iterations`` (of those, in
    all), ``workers`` and, with ``measure``, ``minutes``: the training time, estimated from
    a few training steps of the base config run here as the study runs them (``workers``
    processes side by side, one share of the threads each) and
    :data:`~spatialflow.benchmark.training.LOOP_SHARE`. Evaluation comes on top."""
    rows, jobs = _plan(variants, seeds, out, base, overrides, write_data=False)
    iters = [cfg.train.max_iters for cfg, _ in jobs]
    known = all(i is not None for i in iters)  # (an epoch schedule needs the data's length)
    plan = {"runs": len(rows), "to_train": len(jobs), "iterations": sum(iters) if known else None,
            "workers": workers, "minutes": None}
    if measure and jobs and known:
        from spatialflow.benchmark import training  # (it uses the study variants)

        cfg = jobs[0][0]
        step = training.training_throughput(
            base, list(overrides), max(cfg.data.min_size), cfg.train.batch_size, steps=3,
            processes=min(workers, len(jobs)))["step_s"]
        seconds = step / training.LOOP_SHARE * sum(iters) / min(workers, len(jobs))
        plan["minutes"] = seconds / 60
    return plan


def describe_plan(plan: dict) -> str:
    """One line on a :func:`plan_study`: how many runs, how many cached, how long."""
    if not plan["to_train"]:
        return f"All {plan['runs']} runs are already trained: reading them back."
    text = (f"{plan['to_train']} of {plan['runs']} runs to train ({plan['runs'] - plan['to_train']} "
            f"cached), {plan['workers']} at a time")
    if plan["iterations"] is not None:
        text += f", {plan['iterations']} iterations in all"
    if plan["minutes"] is not None:
        text += (f": about {plan['minutes']:.0f} minutes of training on this machine "
                 f"(measured by a few steps), plus each run's evaluation")
    return text + "."


#: a run's evaluation, written last: its presence means the run is done
_DONE = Path("eval") / "final" / "metrics.json"


def _train_and_evaluate(cfg, run: Path, progress: bool, train_fn: Optional[Callable] = None,
                        threads: Optional[int] = None) -> None:
    """Train ``run`` (resumed from its checkpoint, if any; skipped when its final weights
    exist) and evaluate it into ``run / _DONE``; ``threads``: this process's torch threads."""
    if threads is not None:
        torch.set_num_threads(threads)
    if not (run / FINAL).is_file():  # else interrupted while evaluating
        (train_fn or train)(cfg, run, resume=(run / CHECKPOINT).is_file(), progress=progress,
                            evaluate_at_end=False)
    evaluate_run(run, out=(run / _DONE).parent, progress=progress)


def speed_vs_scale(predictor, dataset, scales: Sequence[int],
                   max_size_ratio: float = 1333 / 800, max_images: Optional[int] = None,
                   out=None, progress: bool = True) -> List[dict]:
    """Table XI on this machine: for each test scale (shorter edge; longer edge capped at
    ``max_size_ratio`` times it), PQ on ``dataset`` and images per second of inference
    (network + mask pasting + panoptic merge, after one warm-up image; reading and writing
    files not counted) with ``predictor`` (a :class:`~spatialflow.engine.runs.Predictor`, whose
    inference settings are kept). Rows: ``scale``, ``padded`` (the shorter edge the network
    sees: the model pads to a multiple of its ``size_divisibility``, so two scales can cost the
    same), ``images_per_s``, ``seconds``, ``images``, ``seconds_sd`` (the sample std of the
    per-image times, for the timing noise) and :func:`metrics_row`'s keys."""

    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    rows = []
    for scale in scales:
        at_scale = predictor.at_size(scale, int(round(scale * max_size_ratio)))
        folder = Path(out) / f"scale{scale}" if out else Path(tempfile.mkdtemp(prefix="speed"))
        evaluator = PanopticEvaluator(dataset, folder)
        times = []
        for k, idx in enumerate(_progress(range(n), f"{scale}px", progress)):
            image, _, rec = dataset.load(idx)
            if k == 0:  # warm-up
                at_scale(image)
            start = time.perf_counter()
            result = at_scale(image, raw=True)
            times.append(time.perf_counter() - start)
            evaluator.add(rec, result["raw"], result["panoptic"], result["segments_info"])
        metrics = evaluator.compute()
        div = getattr(predictor.model, "size_divisibility", 1)
        seconds = sum(times)
        rows.append({"scale": scale, "padded": -(-scale // div) * div, "images": n,
                     "seconds": seconds, "seconds_sd": _stats(times)["std"],
                     "images_per_s": n / max(seconds, 1e-9), **metrics_row(metrics)})
    return rows


def table_xi_scales(test_size: int) -> List[int]:
    """The shorter-edge sizes of Table XI (400, 600, 800 px against the paper's 800 px test
    size), scaled to a model tested at ``test_size`` (256 -> 128, 192, 256)."""
    return [int(round(test_size * s / 800)) for s in (400, 600, 800)]


def speed_points(rows: Sequence[dict], source: str = "measured") -> List[dict]:
    """Points ``{"name", "fps", "pq", "source", "group", "scale"}`` to plot: of
    :func:`speed_vs_scale` rows (named by scale, one group), or of ``PAPER["table_xi"]`` with
    ``source="paper"`` (a group per model); a plot joins a group's points in scale order."""
    if source == "paper":
        return [{"name": f"{r['name']} {r['scale']}", "fps": r["fps"], "pq": r["pq"],
                 "source": "paper", "group": r["name"], "scale": r["scale"]} for r in rows]
    return [{"name": f"{r['scale']} px", "fps": r["images_per_s"], "pq": r["pq"],
             "source": source, "group": "measured", "scale": r["scale"]} for r in rows]


def describe_speed(rows: Sequence[dict]) -> str:
    """Plain sentences on :func:`speed_vs_scale` rows: how much faster the smallest scale runs
    than the largest, and what it costs in PQ / PQ_Th / PQ_St, next to the paper's SpatialFlow
    R50 at 400 vs 800 px (Table XI). A speed ratio is called timing noise when both scales pad
    to the same size (the network does the same work) or when it lies within twice the
    standard error of the two mean times; a quality that was not measured (NaN) is said so."""
    if len(rows) < 2:
        raise ValueError("need rows of at least two scales")
    small, large = min(rows, key=lambda r: r["scale"]), max(rows, key=lambda r: r["scale"])
    paper = {r["scale"]: r for r in PAPER["table_xi"] if r["name"] == "SpatialFlow R50"}
    p_small, p_large = paper[400], paper[800]
    ratio = small["images_per_s"] / large["images_per_s"]
    timed = all(k in r for r in (small, large) for k in ("seconds_sd", "seconds", "images"))
    noise = 2 * math.sqrt(sum((r["seconds_sd"] / (r["seconds"] / r["images"])) ** 2
                              / r["images"] for r in (small, large))) if timed else 0.0
    speed = (f"- At {small['scale']} px this machine runs {small['images_per_s']:.2f} images/s, "
             f"{ratio:.2f}x the {large['images_per_s']:.2f} images/s at {large['scale']} px "
             f"(paper, V100, 400 vs 800 px: {p_small['fps'] / p_large['fps']:.2f}x)")
    if small.get("padded") is not None and small["padded"] == large.get("padded"):
        speed += (f". Both scales are padded to {small['padded']} px, so the network does the "
                  f"same work: the difference is timing noise.")
    elif abs(ratio - 1) <= noise:
        speed += f", within the timing noise (±{100 * noise:.0f}%): no measured difference."
    else:
        speed += "."
    d = {m: small[m] - large[m] for m in ("pq", "pq_th", "pq_st")}
    pd = {m: p_small[m] - p_large[m] for m in ("pq", "pq_th", "pq_st")}
    ours = [f"{name} by {d[m]:+.1f}" if not math.isnan(d[m]) else f"{name} not measured"
            for m, name in (("pq", "PQ"), ("pq_th", "PQ_Th"), ("pq_st", "PQ_St"))]
    return (f"{speed}\n- Going from {large['scale']} to {small['scale']} px changes "
            f"{ours[0]}, {ours[1]} and {ours[2]} "
            f"(paper: {pd['pq']:+.1f}, {pd['pq_th']:+.1f}, {pd['pq_st']:+.1f}).")


def _progress(items, desc: str, enabled: bool, unit: str = "img", total: Optional[int] = None):
    return tqdm(items, desc=desc, unit=unit, total=total, disable=not enabled)


def _stats(values: Sequence) -> dict:
    """mean, sample std (0 for one value), min, max and n of the values that are not None/NaN."""
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    if not v:
        return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
            "min": min(v), "max": max(v), "n": len(v)}


def group_rows(rows: Sequence[dict], key: str, order: Optional[Sequence] = None) -> Dict:
    """Rows grouped by ``row[key]``: the values of ``order`` first, then the others in order of
    first appearance. Raises ``ValueError`` for a row without ``key`` or an ``order`` value
    without rows."""
    groups: Dict = {}
    for r in rows:
        if key not in r:
            raise ValueError(f"a row has no '{key}': {r}")
        groups.setdefault(r[key], []).append(r)
    if order is None:
        return groups
    unknown = [v for v in order if v not in groups]
    if unknown:
        raise ValueError(f"no rows for {key} {unknown} (have: {list(groups)})")
    return {**{v: groups[v] for v in order}, **{v: g for v, g in groups.items() if v not in order}}


def summarize(rows: Sequence[dict], metrics: Sequence[str] = ("pq", "pq_th", "pq_st"),
              by: str = "variant", order: Optional[Sequence] = None) -> List[dict]:
    """Per value of ``by`` (a variant, a lambda), the statistics of each metric over its rows
    (seeds): ``[{by, "seeds": [...], <metric>: {"mean", "std", "min", "max", "n"}}, ...]``;
    ``std`` is the sample standard deviation (0 for one run); missing or NaN values are left
    out (none at all gives NaN with n = 0)."""
    out = []
    for value, group in group_rows(rows, by, order).items():
        entry = {by: value, "seeds": [r.get("seed") for r in group]}
        for m in metrics:
            entry[m] = _stats([r.get(m) for r in group])
        out.append(entry)
    return out


def format_summary(table: Sequence[dict], metrics: Sequence[str] = ("pq", "pq_th", "pq_st"),
                   by: str = "variant") -> str:
    """A markdown table of :func:`summarize`: mean ± std over n runs per metric; the mean
    alone for one run (no spread is known), and "not measured" where no run measured it."""
    def cell(s):
        if not s["n"]:
            return "not measured"
        return f"{s['mean']:.1f}" if s["n"] == 1 else f"{s['mean']:.1f} ± {s['std']:.1f}"

    lines = [f"| {by} | n | " + " | ".join(metrics) + " |",
             "|---|---:|" + "---:|" * len(metrics)]
    for e in table:
        n = max(e[m]["n"] for m in metrics)
        cells = [cell(e[m]) for m in metrics]
        lines.append(f"| {e[by]} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_table(rows: Sequence[dict], columns: Sequence[str], digits: int = 1) -> str:
    """A markdown table of ``rows`` (dicts) with ``columns``; floats with ``digits`` decimals
    (e.g. the paper's rows in :data:`PAPER`, or :func:`speed_vs_scale`'s); NaN (a quality
    that was not measured, :func:`~spatialflow.evaluation.metrics_row`) as "not measured"."""
    def cell(v):
        if isinstance(v, float):
            return "not measured" if math.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def describe_differences(rows: Sequence[dict], reference: str,
                         metrics: Sequence[str] = ("pq", "pq_th", "pq_st"),
                         paper: Optional[Sequence[dict]] = None, by: str = "variant",
                         order: Optional[Sequence] = None) -> str:
    """Plain sentences, one per variant, of how its mean over seeds differs from
    ``reference``'s, set against the seed-to-seed spread (the larger sample std of the two):
    a difference no larger than the spread is called within it, and with one seed each no
    spread is known, which is said. ``paper``: rows (``{by, metric...}``) of the paper's table,
    whose differences are quoted next to ours, with whether the signs agree as printed (to one
    decimal: a difference that rounds to 0.0 is "one of them zero", never a sign)."""
    labels = {"pq": "PQ", "pq_th": "PQ_Th", "pq_st": "PQ_St", "sq": "SQ", "rq": "RQ",
              "ap": "box AP", "ap50": "AP50", "ap75": "AP75"}
    table = {e[by]: e for e in summarize(rows, metrics, by, order)}
    if reference not in table:
        raise ValueError(f"no rows for {by} {reference!r} (have: {list(table)})")
    ref = table[reference]
    theirs = {r[by]: r for r in (paper or [])}
    lines = []
    for name, e in table.items():
        if name == reference:
            continue
        parts, within, beyond = [], [], []
        for m in metrics:
            diff = e[m]["mean"] - ref[m]["mean"]
            if math.isnan(diff):
                parts.append(f"{labels.get(m, m)} not measured (nothing of it in the ground "
                             f"truth or the predictions)")
                continue
            shown = round(diff, 1) + 0.0                # as printed; -0.0 is printed as +0.0
            text = f"{labels.get(m, m)} {shown:+.1f}"
            if name in theirs and reference in theirs and m in theirs[name]:
                pd = round(theirs[name][m] - theirs[reference][m], 1) + 0.0
                agree = "same sign" if pd * shown > 0 else \
                    "opposite sign" if pd * shown < 0 else "one of them zero"
                text += f" (paper {pd:+.1f}, {agree})"
            parts.append(text)
            spread = max(e[m]["std"], ref[m]["std"])
            if math.isnan(spread):
                continue
            if min(e[m]["n"], ref[m]["n"]) > 1:
                (within if abs(diff) <= spread else beyond).append(labels.get(m, m))
        label = (lambda v: str(v)) if by == "variant" else (lambda v: f"{by} = {v}")
        line = f"- **{label(name)}** vs **{label(reference)}**: " + ", ".join(parts) + ". "
        if not within and not beyond:
            line += "One run each: no seed-to-seed spread to judge these differences by."
        else:
            spread = max(max(e[m]["std"], ref[m]["std"]) for m in metrics
                         if not math.isnan(e[m]["std"] + ref[m]["std"]))
            if beyond:
                line += f"Larger than the spread between seeds (std up to {spread:.1f}): " \
                        f"{', '.join(beyond)}. "
            if within:
                line += f"Within the spread between seeds: {', '.join(within)}."
        lines.append(line.rstrip())
    return "\n".join(lines)
