"""The rows of the paper's studies as config overrides: Tables V / VI (components), IX / X (each
flow), Fig. 4 (the cls-flows control), VII / VIII (stages of a sub-network), XII (the detector
alone) and IV (the stuff loss weight lambda); and the overrides of a notebook's quick mode."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from spatialflow.config import NO_FLOWS


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


#: the val split of a study's synthetic data: scored on 500 images, one model's PQ_Th varies by
#: 0.4-0.5 between disjoint val sets (0.5-0.9 on 100 images) and a difference of two models by
#: 0.5, against 2.6 between seeds (docs/studies.md, benchmarks/results/study_noise.md)
STUDY_VAL_IMAGES = 500


def preview_settings(iters: int) -> List[str]:
    """The overrides of a study's classroom preview (notebook 02's quick mode): real training
    of ``iters`` iterations of 4 images on a smaller synthetic set (200 train and 50 val
    images of the preset's size), a short warm-up and no checkpoint but the last: a few
    minutes in all, too few seeds and iterations to conclude anything."""
    return ["data.synthetic.num_train=200", "data.synthetic.num_val=50",
            "train.batch_size=4", f"train.max_iters={iters}",
            f"train.warmup_iters={max(1, iters // 10)}", f"train.checkpoint_every={iters}",
            f"train.log_every={max(1, iters // 10)}"]


def notebook_settings(quick: bool, iters: int, eval_every: int = 0) -> List[str]:
    """The overrides of a notebook's runs: :data:`QUICK_OVERRIDES` in quick mode, else
    ``train.max_iters=iters`` on a val split of :data:`STUDY_VAL_IMAGES`; with ``eval_every``
    the run is also evaluated on the val split every that many iterations (every iteration in
    quick mode), for PQ curves during training."""
    settings = list(QUICK_OVERRIDES) if quick else [
        f"train.max_iters={iters}", f"data.synthetic.num_val={STUDY_VAL_IMAGES}"]
    if eval_every:
        settings.append(f"train.eval_every={1 if quick else eval_every}")
    return settings


def lambda_variants(lambdas: Sequence[float], model: Optional[Sequence[str]] = None
                    ) -> List[Variant]:
    """Table IV: one variant per value of lambda (the stuff loss weight of eq 6), on ``model``
    (overrides; default: the naive baseline, as the paper sweeps it)."""
    model = tuple(components_variants()[0].overrides if model is None else model)
    return [Variant(f"lambda={lam:g}", model + (f"model.stuff_loss_weight={lam}",),
                    (("lambda", float(lam)),)) for lam in lambdas]
