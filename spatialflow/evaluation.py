"""Evaluation with the official tools: PQ / SQ / RQ (All, Things, Stuff, per class) with
panopticapi's ``pq_compute``, and box AP of the detector with pycocotools' ``COCOeval``
(paper Table XII). Results go to a dict, a printed table and ``metrics.json``:

``{"panoptic": <pq_compute's result, unchanged>, "bbox": {"AP", "AP50", "AP75", "APs", "APm",
"APl"}}`` with values as the tools return them (fractions in [0, 1]). A detector alone
(``model.panoptic: false``, Table XII) is scored by box AP only: ``{"bbox": {...}}``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from panopticapi.evaluation import pq_compute, pq_compute_multi_core, pq_compute_single_core
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from spatialflow.data.categories import CategoryMap
from spatialflow.data.coco_panoptic import check_segment_ids
from spatialflow.data.panoptic_io import attach_stats, load_json, segment_stats, write_panoptic_png
from spatialflow.errors import DatasetError

BOX_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _quiet(fn, *args, **kwargs):
    """Call one of the official tools with its console chatter captured: what it prints here,
    and what the worker processes of panopticapi's ``multiprocessing.Pool`` print (they write
    to file descriptor 1 when they are spawned, as in a process of a study's pool, not forked),
    so descriptor 1 points to ``os.devnull`` during the call."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        with contextlib.redirect_stdout(io.StringIO()):
            return fn(*args, **kwargs)
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def pq(gt_json, gt_dir, pred_json, pred_dir) -> dict:
    """panopticapi's ``pq_compute`` result (``All``, ``Things``, ``Stuff`` with ``pq``, ``sq``,
    ``rq``, ``n``, and ``per_class``).

    ``pq_compute`` divides by zero when a group has no class at all in ground truth and
    prediction (e.g. no thing anywhere in a small split); that group is then reported as
    ``{"pq": 0, "sq": 0, "rq": 0, "n": 0}`` from panopticapi's own per-class statistics.
    """
    try:
        return _quiet(pq_compute, str(gt_json), str(pred_json), str(gt_dir), str(pred_dir))
    except ZeroDivisionError:
        pass
    stat, categories = _pq_stat(gt_json, gt_dir, pred_json, pred_dir)
    return _pq_groups(stat, categories)


def _pq_stat(gt_json, gt_dir, pred_json, pred_dir):
    """panopticapi's ``PQStat`` (per category: matched IoU sum, TP, FP, FN) of a prediction,
    and the ground truth's categories by id."""
    gt, pred = json.loads(Path(gt_json).read_text()), json.loads(Path(pred_json).read_text())
    categories = {c["id"]: c for c in gt["categories"]}
    by_image = {a["image_id"]: a for a in pred["annotations"]}
    matched = [(a, by_image[a["image_id"]]) for a in gt["annotations"]]
    return _quiet(pq_compute_multi_core, matched, str(gt_dir), str(pred_dir), categories), categories


def pq_counts(gt_json, gt_dir, pred_json, pred_dir) -> Dict[int, dict]:
    """Per category present in the ground truth or the prediction: panopticapi's counts
    ``{"tp", "fp", "fn", "iou"}`` (``iou``: the mean IoU of the matched segments, 0 without
    any), the numbers behind PQ = SQ x RQ, to see where a prediction goes wrong."""
    stat, categories = _pq_stat(gt_json, gt_dir, pred_json, pred_dir)
    out = {}
    for cid in categories:
        c = stat[cid]
        if c.tp + c.fp + c.fn:
            out[cid] = {"tp": int(c.tp), "fp": int(c.fp), "fn": int(c.fn),
                        "iou": float(c.iou / c.tp) if c.tp else 0.0}
    return out


def _pq_groups(stat, categories: dict) -> dict:
    """All / Things / Stuff (and per class) of a panopticapi ``PQStat``; a group with no class
    is ``{"pq": 0, "sq": 0, "rq": 0, "n": 0}`` (``pq_average`` divides by zero there)."""
    results = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        try:
            results[name], per_class = stat.pq_average(categories, isthing=isthing)
        except ZeroDivisionError:
            results[name], per_class = {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}, {}
        results[name] = {k: (int(v) if k == "n" else float(v)) for k, v in results[name].items()}
        if name == "All":
            results["per_class"] = {c: {k: float(v) for k, v in r.items()}
                                    for c, r in per_class.items()}
    return results


def image_pq(gt_pan, gt_segments, pred_pan, pred_segments, categories) -> dict:
    """PQ / SQ / RQ of ONE image, scored by panopticapi's own code.

    Both id maps are written as COCO panoptic PNGs into a temporary folder and scored with
    ``panopticapi.evaluation.pq_compute_single_core``; ``PQStat.pq_average`` then gives the
    groups. A group without any class in this image (e.g. no thing in ground truth nor
    prediction) is ``{"pq": 0, "sq": 0, "rq": 0, "n": 0}``, as in :func:`pq`.

    Args:
        gt_pan, pred_pan: ``int[H,W]`` segment id maps (0 = VOID) of the same size.
        gt_segments, pred_segments: their ``segments_info`` (``id``, ``category_id``, optional
            ``iscrowd``); areas are taken from the maps, and segments without a pixel are left
            out (a ground-truth one would otherwise count as missed).
        categories: a :class:`CategoryMap`, a COCO ``categories`` list, or ``{id: category}``.

    Returns:
        ``{"All", "Things", "Stuff": {pq, sq, rq, n}, "per_class": {category id: {pq, sq, rq}}}``
        with values in [0, 1], like :func:`pq`.

    Raises:
        ValueError: the maps differ in size, or a map holds an id missing from its segments.
    """


    if isinstance(categories, CategoryMap):
        cats = {c["id"]: c for c in categories.to_coco()}
    elif isinstance(categories, dict):
        cats = {int(k): dict(v) for k, v in categories.items()}
    else:
        cats = {c["id"]: dict(c) for c in categories}
    gt_pan, pred_pan = np.asarray(gt_pan, np.int64), np.asarray(pred_pan, np.int64)
    if gt_pan.shape != pred_pan.shape:
        raise ValueError(f"ground truth is {gt_pan.shape}, the prediction {pred_pan.shape}")
    anns = []
    for what, pan, segments in (("ground truth", gt_pan, gt_segments),
                                ("prediction", pred_pan, pred_segments)):
        segs = [{"id": int(s["id"]), "category_id": int(s["category_id"]),
                 "iscrowd": int(s.get("iscrowd", 0))} for s in segments]
        missing = set(np.unique(pan).tolist()) - {0} - {s["id"] for s in segs}
        if missing:
            raise ValueError(f"{what}: id(s) {sorted(missing)[:10]} of the map are not in its "
                             f"segments")
        segs = attach_stats(pan, segs)
        for s in segs:
            if s["category_id"] not in cats:
                raise ValueError(f"{what}: segment {s['id']} has unknown category_id "
                                 f"{s['category_id']}")
        anns.append({"image_id": 0, "file_name": f"{what.replace(' ', '_')}.png",
                     "segments_info": segs})
    with tempfile.TemporaryDirectory(prefix="image_pq_") as tmp:
        for ann, pan in zip(anns, (gt_pan, pred_pan)):
            write_panoptic_png(Path(tmp) / ann["file_name"], pan)
        stat = _quiet(pq_compute_single_core, 0, [tuple(anns)], tmp, tmp, cats)
    return _pq_groups(stat, cats)


def gt_boxes_from_panoptic(panoptic: dict, categories: CategoryMap,
                           image_ids: Optional[Sequence] = None) -> dict:
    """A COCO detection ground truth (things only) made from panoptic ``segments_info``
    (``bbox``, ``area``, ``iscrowd``), for data sets without an instances JSON."""
    keep = None if image_ids is None else set(image_ids)
    anns = []
    for ann in panoptic["annotations"]:
        if keep is not None and ann["image_id"] not in keep:
            continue
        for s in ann["segments_info"]:
            if categories.is_thing(s["category_id"]):
                x, y, w, h = s["bbox"]
                anns.append({"id": len(anns) + 1, "image_id": ann["image_id"],
                             "category_id": s["category_id"], "bbox": [x, y, w, h],
                             "area": s.get("area", w * h), "iscrowd": s.get("iscrowd", 0)})
    images = [im for im in panoptic["images"] if keep is None or im["id"] in keep]
    return {"images": images, "annotations": anns, "categories": categories.thing_categories()}


def box_ap(gt: dict, detections: List[dict], image_ids: Optional[Sequence] = None) -> Dict[str, float]:
    """pycocotools ``COCOeval`` (bbox) of ``detections`` (COCO results: ``image_id``,
    ``category_id``, ``bbox`` xywh, ``score``) against the COCO detection dict ``gt``."""
    if not detections:  # pycocotools cannot load an empty result list; nothing detected = 0 AP
        return {k: 0.0 for k in BOX_KEYS}
    coco_gt = COCO()
    coco_gt.dataset = gt
    _quiet(coco_gt.createIndex)
    coco_dt = _quiet(coco_gt.loadRes, detections)
    ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
    if image_ids is not None:
        ev.params.imgIds = list(image_ids)
    _quiet(ev.evaluate)
    _quiet(ev.accumulate)
    _quiet(ev.summarize)
    return {k: float(v) for k, v in zip(BOX_KEYS, ev.stats[:6])}


def coco_detections(output: dict, categories: CategoryMap, image_id=None) -> List[dict]:
    """A model output's detections (``boxes`` xyxy, ``scores``, contiguous thing ``labels``)
    as COCO results: ``{"category_id" (the data set's id), "bbox" (xywh), "score"}``, with
    ``"image_id"`` when given."""
    out = []
    for box, score, label in zip(output["boxes"].tolist(), output["scores"].tolist(),
                                 output["labels"].tolist()):
        x0, y0, x1, y1 = box
        det = {"category_id": categories.thing_id(int(label)),
               "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)}
        out.append(det if image_id is None else {"image_id": image_id, **det})
    return out


class SkippedItemWarning(UserWarning):
    """An item left out of an evaluation because its image or panoptic PNG cannot be read or
    does not match its ``segments_info`` (see :attr:`PanopticEvaluator.skipped`)."""

def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


class PanopticEvaluator:
    """Collects predictions of a data set, writes them in COCO panoptic format under
    ``out_dir`` (``panoptic_pred/*.png`` + ``panoptic_pred.json``) and scores them.

    Items that cannot be scored (image or PNG unreadable, sizes that differ, PNG ids that do
    not match ``segments_info``) are passed to :meth:`skip`: they are kept in :attr:`skipped`
    as ``(image_id, file, reason)``, warned about (:class:`SkippedItemWarning`), written to
    ``out_dir/skipped.json`` by :meth:`compute`, and the others are scored.

    Args:
        dataset: the :class:`~spatialflow.data.CocoPanopticDataset` predicted on (its JSON and
            PNG folder are the ground truth).
        out_dir: where predictions and ``metrics.json`` go.
        instances_json: optional COCO instances JSON for box AP; by default the boxes of the
            panoptic ground truth are used.
        panoptic: ``False`` for a detector alone: only its boxes are collected (``add``
            takes ``pan`` and ``segments`` as ``None``), scored by box AP, and written as
            COCO detection results (``detections.json``).
    """
    def __init__(self, dataset, out_dir, instances_json=None, panoptic: bool = True):
        self.dataset, self.out_dir, self.panoptic = dataset, Path(out_dir), panoptic
        self.pred_dir = self.out_dir / "panoptic_pred"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if panoptic:
            self.pred_dir.mkdir(parents=True, exist_ok=True)
        self.instances_json = instances_json
        self.annotations: List[dict] = []
        self.detections: List[dict] = []
        self.records: List[dict] = []
        self.skipped: List[Tuple[object, str, str]] = []
        self._stats: Dict[object, dict] = {}  # image id -> {segment id: (area, bbox)} to fill in

    def check(self, pan: np.ndarray, record: dict) -> None:
        """Check one item's ground truth before it is predicted: the ids of its panoptic PNG
        ``pan`` must be those of ``record["segments_info"]`` (panopticapi would fail or
        miscount otherwise) and ``area`` / ``bbox``, where given, must be numbers. Missing
        ``area``, ``bbox`` and ``iscrowd`` are taken from the PNG (and 0) for scoring.

        Raises:
            DatasetError: naming the PNG, the image id and the fault.
        """
        where = f"{record['png_path']} (image id {record['image_id']})"
        segments = record["segments_info"]
        for seg in segments:
            area, bbox = seg.get("area"), seg.get("bbox")
            if "area" in seg and not _is_number(area):
                raise DatasetError(f"{where}: segment id {seg['id']} has invalid area {area!r}")
            if "bbox" in seg and not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
                                      and all(_is_number(v) for v in bbox)):
                raise DatasetError(f"{where}: segment id {seg['id']} has invalid bbox {bbox!r}")
        fill = any(k not in s for s in segments for k in ("area", "bbox"))
        present = segment_stats(pan) if fill else np.unique(pan).tolist()
        check_segment_ids(present, segments, where)
        if fill:
            self._stats[record["image_id"]] = present

    def skip(self, record: dict, error) -> None:
        """Leave one item out: keep ``(image id, file, reason)`` in :attr:`skipped` and warn.
        ``file`` is the PNG when the reason names it first, else the image."""
        reason = str(error)
        png, image = str(record["png_path"]), str(record["image_path"])
        file = png if reason.startswith(png) else image
        self.skipped.append((record["image_id"], file, reason))
        warnings.warn(f"evaluation skips image id {record['image_id']}: {reason}",
                      SkippedItemWarning, stacklevel=2)

    def add(self, record: dict, output: dict, pan: np.ndarray, segments: List[dict]) -> None:
        """One image: its dataset record, the model output at the original size, and the
        merged panoptic result (``None``, ``None`` for a detector alone)."""
        cats = self.dataset.categories
        png = Path(record["png_path"]).name
        self.records.append(record)
        if self.panoptic:
            write_panoptic_png(self.pred_dir / png, pan)
            self.annotations.append({"image_id": record["image_id"], "file_name": png,
                                     "segments_info": segments})
        self.detections += coco_detections(output, cats, record["image_id"])

    def _ground_truth(self) -> Tuple[dict, bool]:
        """The ground truth of the added images as a COCO panoptic dict (missing ``area``,
        ``bbox``, ``iscrowd`` filled in), and whether it differs from the dataset's JSON."""
        gt = load_json(self.dataset.panoptic_json)
        ids = [r["image_id"] for r in self.records]
        same = (sorted(map(str, ids)) == sorted(str(a["image_id"]) for a in gt["annotations"])
                and not self._stats
                and all("iscrowd" in s for r in self.records for s in r["segments_info"]))
        if same:
            return gt, False
        annotations = []
        for rec in self.records:
            stats = self._stats.get(rec["image_id"], {})
            segments = []
            for seg in rec["segments_info"]:
                seg = dict(seg, iscrowd=int(seg.get("iscrowd", 0)))
                if "area" not in seg or "bbox" not in seg:
                    area, bbox = stats[int(seg["id"])]
                    seg.setdefault("area", area)
                    seg.setdefault("bbox", bbox)
                segments.append(seg)
            file_name = str(Path(rec["png_path"]).relative_to(self.dataset.panoptic_dir))
            annotations.append({"image_id": rec["image_id"], "file_name": file_name,
                                "segments_info": segments})
        keep = set(ids)
        images = [im for im in gt["images"] if im["id"] in keep]
        return dict(gt, images=images, annotations=annotations), True

    def compute(self) -> dict:
        """Write the prediction JSON, run ``pq_compute`` and ``COCOeval``, write
        ``metrics.json`` (and ``skipped.json`` when items were skipped); return the metrics
        dict.

        The scored ground truth is the dataset's JSON, or, when only some of its images were
        added or fields had to be filled in, ``panoptic_gt_subset.json`` written next to the
        metrics. Raises :class:`DatasetError` when no image was added."""
        skipped_json = self.out_dir / "skipped.json"
        if self.skipped:
            skipped_json.write_text(json.dumps(
                [{"image_id": i, "file": f, "reason": r} for i, f, r in self.skipped], indent=1))
        elif skipped_json.is_file():
            skipped_json.unlink()  # from an earlier evaluation into the same folder
        if not self.records:
            first = f" (first: {self.skipped[0][2]})" if self.skipped else ""
            raise DatasetError(f"{self.dataset.panoptic_json}: no image to score: "
                               f"{len(self.skipped)} could not be read{first}")
        gt, differs = self._ground_truth()
        ids = {r["image_id"] for r in self.records}
        metrics = {}
        if self.panoptic:
            gt_json = Path(self.dataset.panoptic_json)
            if differs:  # a subset or filled-in fields: its own GT file
                gt_json = self.out_dir / "panoptic_gt_subset.json"
                gt_json.write_text(json.dumps(gt))
            pred_json = self.out_dir / "panoptic_pred.json"
            pred_json.write_text(json.dumps({"annotations": self.annotations,
                                             "categories": self.dataset.categories.to_coco()}))
            metrics["panoptic"] = pq(gt_json, self.dataset.panoptic_dir, pred_json,
                                     self.pred_dir)
        else:
            (self.out_dir / "detections.json").write_text(json.dumps(self.detections))
        if self.instances_json is not None:
            det_gt = json.loads(Path(self.instances_json).read_text())
        else:
            det_gt = gt_boxes_from_panoptic(gt, self.dataset.categories, ids)
        metrics["bbox"] = box_ap(det_gt, self.detections, sorted(ids))
        (self.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
        return metrics


def metrics_row(metrics: dict) -> dict:
    """PQ / SQ / RQ (All, Things, Stuff) and box AP (``ap``, ``ap50``, ``ap75``) of an
    evaluation, in percent. A group with no class in the ground truth or the predictions
    (``n`` 0: e.g. no thing anywhere in the images) was not measured: its values are NaN, not
    0; so is a box AP that pycocotools reports as -1 (no ground-truth box). A detector's
    evaluation (no ``"panoptic"``) gives the box AP keys only."""
    row = {}
    p = metrics.get("panoptic")
    for group, suffix in (("All", ""), ("Things", "_th"), ("Stuff", "_st")) if p else ():
        for k in ("pq", "sq", "rq"):
            row[k + suffix] = 100 * p[group][k] if p[group].get("n", 1) else math.nan
    for key, name in (("ap", "AP"), ("ap50", "AP50"), ("ap75", "AP75")):
        value = metrics["bbox"][name]  # pycocotools: -1 without a ground-truth box
        row[key] = 100 * value if value >= 0 else math.nan
    return row


def present_categories(dataset, eval_dir) -> set:
    """Category ids that appear in the ground truth or the predictions of an evaluation
    written to ``eval_dir`` (its ``panoptic_pred.json``) of images of ``dataset``. A class in
    neither is scored 0 by panopticapi's ``per_class`` but left out of its averages."""
    pred = load_json(Path(eval_dir) / "panoptic_pred.json", required=("annotations",))
    scored = {str(a["image_id"]) for a in pred["annotations"]}
    present = {s["category_id"] for a in pred["annotations"] for s in a["segments_info"]}
    present |= {s["category_id"] for r in dataset.records if str(r["image_id"]) in scored
                for s in r["segments_info"]}
    return present


def _ap(value: float) -> str:
    """A box AP of pycocotools x100; "n/a" for its -1, which means nothing to measure (e.g.
    APl where the split has no large object)."""
    return "n/a" if value < 0 else f"{100 * value:.1f}"


def format_metrics(metrics: dict, categories: Optional[CategoryMap] = None,
                   per_class: bool = False, present: Optional[set] = None) -> str:
    """The metrics as a text table: PQ / SQ / RQ (x100) for All, Things, Stuff, box AP, and
    optionally one row per class. With ``present`` (:func:`present_categories`) a class in
    neither the ground truth nor the predictions is shown as absent instead of 0.0 (it is
    not in the averages either: panopticapi leaves it out)."""
    p = metrics.get("panoptic")
    lines = []
    if p:
        lines.append(f"{'':10s} {'PQ':>6s} {'SQ':>6s} {'RQ':>6s} {'N':>4s}")
        for key in ("All", "Things", "Stuff"):
            r = p[key]
            lines.append(f"{key:10s} {100 * r['pq']:6.1f} {100 * r['sq']:6.1f} "
                         f"{100 * r['rq']:6.1f} {r['n']:4d}")
    b = metrics.get("bbox")
    if b:
        lines.append("box AP: " + "  ".join(f"{k} {_ap(b[k])}" for k in BOX_KEYS))
    if per_class and categories is not None and p:
        lines.append(f"{'class':16s} {'PQ':>6s} {'SQ':>6s} {'RQ':>6s}")
        absent = 0
        for cid, r in sorted(p["per_class"].items(), key=lambda kv: int(kv[0])):
            name = categories.name(int(cid)) if int(cid) in categories else str(cid)
            if present is not None and int(cid) not in present:
                absent += 1
                lines.append(f"{name[:16]:16s} {'absent':>6s} {'-':>6s} {'-':>6s}")
                continue
            lines.append(f"{name[:16]:16s} {100 * r['pq']:6.1f} {100 * r['sq']:6.1f} "
                         f"{100 * r['rq']:6.1f}")
        if absent:
            lines.append(f"absent: {absent} class(es) in neither the ground truth nor the "
                         f"predictions, left out of the averages (as panopticapi does)")
    return "\n".join(lines)


def evaluate(gt_json, gt_dir, pred_json, pred_dir, detections: Optional[List[dict]] = None,
             out_dir=None) -> dict:
    """Score panoptic predictions written in COCO panoptic format (``pred_json`` and its PNG
    folder ``pred_dir``, as ``spatialflow predict`` or :class:`PanopticEvaluator` write them)
    against the ground truth ``gt_json`` / ``gt_dir``, on the images the predictions cover.

    Returns ``{"panoptic": pq_compute's result, "bbox": box AP}`` (``metrics.json``'s shape);
    box AP is that of ``detections`` (COCO results: ``image_id``, ``category_id``, ``bbox``
    xywh, ``score``) against the things of the panoptic ground truth, and is left out when no
    ``detections`` are given. With ``out_dir`` the metrics go to ``out_dir/metrics.json`` too.
    To run a model and score it, use :func:`spatialflow.engine.predict.evaluate_run` or
    :meth:`~spatialflow.engine.predict.Predictor.evaluate`."""
    gt = load_json(gt_json, required=("annotations", "categories"))
    pred = load_json(pred_json, required=("annotations",))
    ids = {a["image_id"] for a in pred["annotations"]}
    missing = [a["image_id"] for a in gt["annotations"] if a["image_id"] not in ids]
    scored_gt = Path(gt_json)
    with contextlib.ExitStack() as stack:
        if missing:  # score the predicted images only: a ground truth of those

            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            scored_gt = folder / "panoptic_gt_subset.json"
            scored_gt.write_text(json.dumps(dict(
                gt, annotations=[a for a in gt["annotations"] if a["image_id"] in ids],
                images=[im for im in gt.get("images", []) if im["id"] in ids])))
        metrics = {"panoptic": pq(scored_gt, gt_dir, pred_json, pred_dir)}
    if detections is not None:
        categories = CategoryMap.from_coco(gt["categories"], source=str(gt_json))
        metrics["bbox"] = box_ap(gt_boxes_from_panoptic(gt, categories, ids), detections,
                                 sorted(ids))
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics
