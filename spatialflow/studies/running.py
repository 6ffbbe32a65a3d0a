"""Training and evaluating a study's runs: one folder per (variant, seed) under the study folder,
cached by what the run trains (:func:`config_key`): a finished run is read back, an interrupted
one resumed, so re-running a notebook re-uses everything already computed."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import re
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import torch
from tqdm import tqdm

from spatialflow.config import config_to_dict, load_config
from spatialflow.engine.predict import evaluate_run
from spatialflow.engine.runs import CHECKPOINT, FINAL, find_checkpoint, prepare_data
from spatialflow.engine.train import train
from spatialflow.evaluation import metrics_row
from spatialflow.model.seeding import SCHEME
from spatialflow.studies.variants import QUICK_OVERRIDES, Variant


def slug(name: str) -> str:
    """A folder name for a variant name (``'+ reg-cls'`` -> ``'reg-cls'``)."""
    return re.sub(r"[^A-Za-z0-9.=_-]+", "_", name).strip("_") or "variant"


def run_label(run) -> str:
    """A short name of a run folder (or a checkpoint in it) for titles: a study's run
    ``<variant slug>-<config key>/seed<k>`` is ``'<variant slug> (seed <k>)'`` (e.g.
    ``'both (seed 0)'``), any other run its folder's name."""
    folder = Path(run) if Path(run).is_dir() or not Path(run).suffix else Path(run).parent
    match = re.fullmatch(r"seed(\d+)", folder.name)
    study = re.fullmatch(r"(.+)-[0-9a-f]{8}", folder.parent.name)
    if match and study:
        return f"{study.group(1)} (seed {match.group(1)})"
    return folder.name


def config_key(cfg) -> str:
    """Eight hex digits that name what a run trains: the config without its seed, the folder
    of its data and its fault handling, so variants of different studies that build the same model share
    their runs; and :data:`~spatialflow.model.seeding.SCHEME`, how initial weights are drawn."""
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
    d["init"] = SCHEME  # runs with weights drawn before model.seeding pair with none of these
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


def run_study(variants: Sequence[Variant], seeds: Sequence[int], out, base="tiny-cpu",
              overrides: Sequence[str] = (), progress: bool = True,
              train_fn: Optional[Callable] = None, workers: int = 1) -> List[dict]:
    """Train and evaluate each variant with each seed; returns one row per run: ``variant``,
    the variant's ``tags``, ``seed``, ``run`` (its folder) and :func:`metrics_row`'s keys.

    Runs go to ``out/<variant>-<config key>/seed<k>`` (:func:`config_key`), all on one data set
    (``data.root`` from ``overrides``, or the base config's synthetic data written once to
    the folder of ``out`` that :func:`data_folder` names). A variant whose config was already trained under another name in ``out`` (the
    Table IX row '-' is Table V's '+ sub-networks') re-uses that run. A run whose
    ``eval/final/metrics.json`` exists is read back instead of trained again; one with a
    checkpoint is resumed. ``base`` is a preset name or YAML file; ``overrides`` apply to every
    run before the variant's own.

    ``workers``: runs trained side by side, each in its own process with an equal share of
    this process's threads (on 2 CPU cores two runs of one thread each train tiny-cpu about
    1.3x faster in all than one run of two threads, as measured when workers came in, 0e39e64).
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
    name = data_folder(common)
    if write_data:
        out.mkdir(parents=True, exist_ok=True)
        root = Path(prepare_data(common, out, name=name)).resolve()  # runs open from any folder
    else:
        root = Path(common.data.root or out / name).resolve()
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


def data_folder(cfg) -> str:
    """The folder of a study's synthetic data in its study folder, named by its settings
    (``data-2000+500-128px-seed0-close``: train + val images, size, seed, scene), so that
    studies of other data settings in one folder each have their own."""
    s = cfg.data.synthetic
    size = s.size if isinstance(s.size, int) else "x".join(map(str, s.size))
    return f"data-{s.num_train}+{s.num_val}-{size}px-seed{s.seed}-{s.scene}"


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


def _progress(items, desc: str, enabled: bool, unit: str = "img", total: Optional[int] = None):
    return tqdm(items, desc=desc, unit=unit, total=total, disable=not enabled)
