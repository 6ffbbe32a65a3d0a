"""ipywidgets explorers for notebooks: a panoptic data set browser, live merge thresholds with
the image's PQ, and an A/B comparison of two models on the same image.

All drawing is done by pure functions (arrays in, arrays / PNG bytes / HTML out):

- :func:`visible_segments` - hide the thing or the stuff segments of an id map;
- :func:`render_panel` - one overlay (toggles, opacity, boxes, labels, optional caption);
- :func:`render_view` - the panels side by side, exactly the array an explorer shows;
- :func:`legend_items`, :func:`legend_html`, :func:`pq_html`, :func:`png_bytes`.

:class:`PanopticExplorer` only wires widgets to them. It runs a model once per image and keeps
the raw outputs, so moving a threshold slider re-runs :func:`spatialflow.panoptic.merge_outputs`
only; the PQ next to each prediction is :func:`spatialflow.evaluation.image_pq` (panopticapi's
code). Everything is reachable headless (``.state()``, ``.current()``, the widget attributes),
which is how the tests drive it.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import io
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw

from spatialflow.config import InferConfig
from spatialflow.data.categories import CategoryMap
from spatialflow.data.coco_panoptic import CocoPanopticDataset, check_segment_ids
from spatialflow.engine.predict import Predictor
from spatialflow.engine.runs import find_checkpoint, run_dataset
from spatialflow.errors import DatasetError, InputError
from spatialflow.evaluation import image_pq
from spatialflow.panoptic import merge_outputs
from spatialflow.render import panoptic_overlay, segment_colors, side_by_side
from spatialflow.studies import run_label

#: the merge thresholds an explorer exposes as sliders (fields of :class:`InferConfig`)
THRESHOLD_KEYS = ("mask_conf", "overlap", "stuff_area", "box_fill", "box_fill_enabled")
#: height in pixels of the caption strip :func:`render_panel` draws above a titled panel
CAPTION_HEIGHT = 14

PredictFn = Callable[[np.ndarray], dict]


# --- pure rendering --------------------------------------------------------------------------
def _is_thing(segment: dict, categories: CategoryMap) -> bool:
    if "isthing" in segment:
        return bool(segment["isthing"])
    return categories.is_thing(segment["category_id"])


def visible_segments(pan: np.ndarray, segments: Sequence[dict], categories: CategoryMap,
                     things: bool = True, stuff: bool = True) -> Tuple[np.ndarray, list]:
    """``(id map, segments)`` with the hidden group removed: the segments of a hidden group
    (things or stuff) are dropped and their pixels set to 0 (shown as the plain image)."""
    pan = np.asarray(pan)
    keep = [s for s in segments if (things if _is_thing(s, categories) else stuff)]
    if len(keep) == len(segments):
        return pan, list(segments)
    shown = np.isin(pan, np.asarray([s["id"] for s in keep], dtype=pan.dtype))
    return np.where(shown, pan, 0).astype(pan.dtype), keep


def caption(panel: np.ndarray, text: str, height: int = CAPTION_HEIGHT) -> np.ndarray:
    """``panel`` with a white strip of ``height`` pixels above it holding ``text`` in black."""
    strip = Image.new("RGB", (panel.shape[1], height), (255, 255, 255))
    ImageDraw.Draw(strip).text((2, 1), text, fill=(0, 0, 0))
    return np.concatenate([np.asarray(strip), np.asarray(panel, np.uint8)], axis=0)


def render_panel(image: np.ndarray, pan: np.ndarray, segments: Sequence[dict],
                 categories: CategoryMap, *, opacity: float = 0.55, things: bool = True,
                 stuff: bool = True, boxes: bool = False, labels: bool = False,
                 draw_boundaries: bool = True, title: Optional[str] = None) -> np.ndarray:
    """``uint8[H,W,3]`` (``H + CAPTION_HEIGHT`` rows with a ``title``): ``image`` overlaid with
    the visible segments (:func:`visible_segments`) at ``opacity``, with boundaries and,
    optionally, thing boxes and class labels (:func:`spatialflow.render.panoptic_overlay`).
    Hiding a group drops whole categories, so the other segments keep their colours."""
    shown_pan, shown = visible_segments(pan, segments, categories, things, stuff)
    out = panoptic_overlay(image, shown_pan, shown, categories, alpha=float(opacity),
                           draw_boundaries=draw_boundaries, boxes=boxes, labels=labels)
    return caption(out, title) if title is not None else out


def render_view(image: np.ndarray, panels: Sequence[Tuple[str, np.ndarray, Sequence[dict]]],
                categories: CategoryMap, *, opacity: float = 0.55, things: bool = True,
                stuff: bool = True, boxes: bool = False, labels: bool = False,
                draw_boundaries: bool = True, titles: bool = True, gap: int = 4) -> np.ndarray:
    """The array an explorer shows: one :func:`render_panel` per ``(title, id map, segments)``
    of ``panels``, side by side with a white ``gap``; captions when ``titles``."""
    if not panels:
        raise ValueError("render_view needs at least one panel")
    arrays = [render_panel(image, pan, segs, categories, opacity=opacity, things=things,
                           stuff=stuff, boxes=boxes, labels=labels,
                           draw_boundaries=draw_boundaries)
              for _, pan, segs in panels]
    return compose_panels(arrays, [name for name, _, _ in panels] if titles else None, gap)


def compose_panels(arrays: Sequence[np.ndarray], titles: Optional[Sequence[str]] = None,
                   gap: int = 4) -> np.ndarray:
    """Panels side by side (white ``gap``), each under its caption when ``titles`` given."""
    if titles is not None:
        arrays = [caption(a, t) for a, t in zip(arrays, titles)]
    return side_by_side(*arrays, gap=gap) if len(arrays) > 1 else np.asarray(arrays[0])


def png_bytes(array: np.ndarray) -> bytes:
    """PNG file contents of an ``uint8[H,W,3]`` array (for ``ipywidgets.Image``)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def legend_items(segments: Sequence[dict], categories: CategoryMap) -> List[dict]:
    """One entry per segment, in the colours of :func:`spatialflow.render.segment_colors`:
    ``{id, category_id, name, isthing, color (r, g, b), area, score (things of a prediction,
    else None)}``; things first, then stuff, each by decreasing area."""
    colors = segment_colors(segments, categories)
    items = [{"id": int(s["id"]), "category_id": int(s["category_id"]),
              "name": categories.name(s["category_id"]), "isthing": _is_thing(s, categories),
              "color": tuple(int(c) for c in colors[s["id"]]), "area": int(s.get("area", 0)),
              "score": float(s["score"]) if "score" in s else None} for s in segments]
    return sorted(items, key=lambda it: (not it["isthing"], -it["area"], it["id"]))


def legend_html(items: Sequence[dict]) -> str:
    """A compact HTML legend of :func:`legend_items` (colour swatch, class, score, area)."""
    rows = []
    for it in items:
        r, g, b = it["color"]
        score = f" {it['score']:.2f}" if it["score"] is not None else ""
        kind = "thing" if it["isthing"] else "stuff"
        rows.append(f"<div style='white-space:nowrap'><span style='display:inline-block;"
                    f"width:10px;height:10px;background:rgb({r},{g},{b});margin-right:4px'>"
                    f"</span>{html.escape(it['name'])}{score} <small>({kind}, "
                    f"{it['area']} px)</small></div>")
    return "".join(rows) or "<div><i>no segment</i></div>"


def pq_html(name: str, result: Optional[dict]) -> str:
    """A small HTML table of one image's PQ / SQ / RQ (x100) for All, Things and Stuff
    (``result`` as :func:`spatialflow.evaluation.image_pq` returns it); empty for ``None``. A
    group with no class in the image's ground truth or prediction (``n`` 0, e.g. Things on an
    image without things) shows "-": it was not measured, it did not score 0."""
    if result is None:
        return ""

    def row(g):
        r = result[g]
        if not r["n"]:
            return f"<tr><td>{g}</td><td>-</td><td>-</td><td>-</td><td>0</td></tr>"
        return (f"<tr><td>{g}</td><td>{100 * r['pq']:.1f}</td><td>{100 * r['sq']:.1f}</td>"
                f"<td>{100 * r['rq']:.1f}</td><td>{r['n']}</td></tr>")

    cells = "".join(row(g) for g in ("All", "Things", "Stuff"))
    return (f"<table><tr><th>{html.escape(name)}</th><th>PQ</th><th>SQ</th><th>RQ</th>"
            f"<th>n</th></tr>{cells}</table>")


# --- models as predict functions ---------------------------------------------------------------
def as_predict_fn(model, categories: CategoryMap, infer: InferConfig, test_size: int,
                  max_size: Optional[int], device: str) -> Optional[PredictFn]:
    """A predict function ``image uint8[H,W,3] -> raw output`` (``boxes``, ``scores``,
    ``labels``, ``masks`` of every detection, ``sem_seg``, at the image size; the explorer
    merges it with its sliders' thresholds): :meth:`Predictor.raw
    <spatialflow.engine.predict.Predictor.raw>` of a :class:`~spatialflow.engine.predict.Predictor`,
    or of a ``torch.nn.Module`` wrapped in one with ``infer``, ``test_size``, ``max_size`` and
    ``device``, with the masks as a :class:`~spatialflow.model.masks.BoxMasks` (each inside its
    box: the cached outputs stay small and a slider's merge reads the boxes only); any other
    callable is taken as a predict function itself; ``None`` for ``None``."""
    if model is None:
        return None
    if isinstance(model, torch.nn.Module):
        model = Predictor(model, categories, infer, test_size, max_size, device)
    if isinstance(model, Predictor):
        return functools.partial(model.raw, dense_masks=False)
    if callable(model):
        return model
    raise TypeError(f"model must be a torch.nn.Module or a predict function, got {type(model)}")


# --- data sets -------------------------------------------------------------------------------------
def resolve_splits(dataset, splits=None) -> "OrderedDict[str, object]":
    """``{split name: data set}`` for an explorer.

    ``dataset`` is a :class:`~spatialflow.data.CocoPanopticDataset` (named ``"data"``), a
    ``{name: data set}`` mapping, or a data folder opened with ``from_root`` for each name of
    ``splits`` (default: those of ``"val"``, ``"train"`` that exist). ``splits`` may also be
    the ``{name: data set}`` mapping itself (``dataset`` then picks the first one shown, or is
    ``None``), or, with a mapping, the names to show in that order.
    """
    if isinstance(splits, Mapping):
        named = OrderedDict(splits)
        first = next((k for k, v in named.items() if v is dataset), None)
        if dataset is not None and first is None:
            named = OrderedDict([("data", dataset)] + list(named.items()))
        elif first is not None:
            named.move_to_end(first, last=False)
    elif isinstance(dataset, Mapping):
        named = OrderedDict(dataset)
        if splits is not None:
            unknown = [s for s in splits if s not in named]
            if unknown:
                raise InputError(f"split(s) {unknown} not among the data sets given "
                                 f"({list(named)})")
            named = OrderedDict((s, named[s]) for s in splits)
    elif isinstance(dataset, (str, Path)):
        root = Path(dataset)
        named = OrderedDict()
        for s in (splits or ("val", "train")):
            try:
                named[s] = CocoPanopticDataset.from_root(root, s)
            except DatasetError:
                if splits is not None:
                    raise
        if not named:
            raise DatasetError(f"{root}: no 'val' or 'train' split found")
    elif dataset is not None:
        named = OrderedDict([("data", dataset)])
    else:
        named = OrderedDict()
    if not named:
        raise ValueError("PanopticExplorer needs a data set")
    return named


class _LRU:
    """A small least-recently-used cache."""

    def __init__(self, size: int):
        self.size, self.data = max(1, int(size)), OrderedDict()

    def get(self, key, make):
        if key in self.data:
            self.data.move_to_end(key)
            return self.data[key]
        value = self.data[key] = make()
        while len(self.data) > self.size:
            self.data.popitem(last=False)
        return value

    def clear(self):
        self.data.clear()


# --- checks ------------------------------------------------------------------------------------
def check_model_categories(data_categories: CategoryMap, model, model_categories:
                           Optional[CategoryMap] = None, data_name: str = "the data set",
                           model_name: str = "the model") -> None:
    """Refuse a model trained on other categories than the data set's.

    With ``model_categories`` (the :class:`CategoryMap` the model was trained on, as
    :class:`~spatialflow.engine.predict.Predictor` holds it) the dataset ids of things and
    stuff must be equal, as ``spatialflow evaluate`` requires; else a ``torch.nn.Module`` with
    ``num_things`` / ``num_sem_classes`` must have the data set's numbers of thing classes and
    stuff classes + 'other'. A predict function is not checked here (its labels are checked
    by the merge). Raises :class:`~spatialflow.errors.InputError` naming both category sets.
    """
    if model_categories is not None:
        data_categories.check_model(model_categories, data_name, model_name)
        return
    things, sem = getattr(model, "num_things", None), getattr(model, "num_sem_classes", None)
    if things is None or sem is None:
        return
    if (int(things), int(sem)) != (data_categories.num_things, data_categories.num_sem_classes):
        raise InputError(
            f"{data_name}: its categories ({data_categories.describe()}: "
            f"{data_categories.num_things} thing classes, {data_categories.num_stuff} stuff "
            f"classes + 'other') do not fit {model_name}, which has {int(things)} thing classes "
            f"and {int(sem) - 1} stuff classes + 'other'")


# --- the explorer -----------------------------------------------------------------------------
class PanopticExplorer:
    """Browse a panoptic data set and a model's (or two models') predictions in a notebook.

    Args:
        dataset: a :class:`~spatialflow.data.CocoPanopticDataset`, a ``{split: data set}``
            mapping, or a data folder (see :func:`resolve_splits`).
        model: ``None`` (ground-truth browser), a ``torch.nn.Module`` (a SpatialFlow model in
            eval mode, run as a :class:`~spatialflow.engine.predict.Predictor` with ``infer``,
            ``test_size``, ``max_size`` and ``device``), a ``Predictor``, or a
            predict function ``image uint8[H,W,3] -> raw output dict`` (``boxes``, ``scores``,
            ``labels``, ``masks`` (dense ``[M,1,H,W]`` or a
            :class:`~spatialflow.model.masks.BoxMasks`), ``sem_seg`` at the image size).
        infer: the merge thresholds the sliders start from (and the model's TTA settings).
        test_size, max_size, device: how a ``torch.nn.Module`` is run.
        model_b: a second model (same kinds as ``model``): A/B mode, both predictions side by
            side on the same image with their PQ.
        splits: split names or a ``{split: data set}`` mapping (see :func:`resolve_splits`).
        names: panel titles of ``model`` and ``model_b``.
        titles: draw the panel titles into the image.
        cache_size: images whose raw outputs / merges are kept.
        model_categories, model_b_categories: the categories ``model`` / ``model_b`` were
            trained on (:meth:`from_run` passes them). A model whose categories differ from a
            data set's is refused with an :class:`~spatialflow.errors.InputError` naming both
            (:func:`check_model_categories`; without them a ``torch.nn.Module``'s numbers of
            classes are compared).

    An item that cannot be shown (an unreadable or truncated image or PNG, PNG ids that do not
    match ``segments_info``, a model output the merge refuses) does not stop the explorer: the
    fault, naming the file, is shown in ``info`` (and kept in ``error`` and ``state()``), and
    moving to another item works as before.

    Widgets (attributes): ``split`` (Dropdown), ``index`` (IntSlider), ``show_gt``,
    ``show_things``, ``show_stuff``, ``show_boxes``, ``show_labels``, ``show_boundaries``
    (Checkboxes), ``opacity`` (FloatSlider), the thresholds ``mask_conf``, ``overlap``,
    ``stuff_area``, ``box_fill``, ``box_fill_enabled``; outputs ``image`` (an
    ``ipywidgets.Image`` with the PNG of :func:`render_view`) and ``info`` (HTML: PQ tables and
    legends); ``widget`` is the container to display.
    """

    def __init__(self, dataset=None, model=None, infer: InferConfig = InferConfig(),
                 test_size: int = 800, max_size: Optional[int] = 1333, model_b=None,
                 splits=None, names: Sequence[str] = ("A", "B"), device: str = "cpu",
                 titles: bool = True, opacity: float = 0.55, cache_size: int = 64,
                 model_categories: Optional[CategoryMap] = None,
                 model_b_categories: Optional[CategoryMap] = None):
        import ipywidgets as W

        self.datasets = resolve_splits(dataset, splits)
        self.infer, self.titles = infer, titles
        first = next(iter(self.datasets.values()))
        if model is None and model_b is not None:
            model, model_b = model_b, None
            model_categories, model_b_categories = model_b_categories, None
        for name, m, cats in zip(names, (model, model_b), (model_categories,
                                                           model_b_categories)):
            if m is None:
                continue
            inner = m.model if isinstance(m, Predictor) else m
            if not getattr(inner, "panoptic", True):
                raise InputError(f"model '{name}' is a detector alone (model.panoptic: false): "
                                 "it predicts boxes, not the panoptic segments the explorer "
                                 "shows; `spatialflow predict` draws its boxes")
            for split, data in self.datasets.items():
                source = getattr(data, "panoptic_json", None)
                check_model_categories(data.categories, m, cats,
                                       str(source) if source else f"data set '{split}'",
                                       f"model '{name}'")
        self.models: List[Tuple[str, PredictFn]] = []
        for name, m in zip(names, (model, model_b)):
            fn = as_predict_fn(m, first.categories, infer, test_size, max_size, device)
            if fn is not None:
                self.models.append((str(name), fn))
        self._items = _LRU(4)
        self._raw = _LRU(cache_size * max(1, len(self.models)))
        self._merged = _LRU(cache_size * max(1, len(self.models)))
        self._view = None
        self.error: Optional[str] = None
        self._hold = 0

        slider = dict(continuous_update=False, style={"description_width": "initial"})
        self.split = W.Dropdown(options=list(self.datasets), value=next(iter(self.datasets)),
                                description="split")
        self.index = W.IntSlider(value=0, min=0, max=len(first) - 1, description="image",
                                 **slider)
        self.show_gt = W.Checkbox(value=True, description="ground truth", indent=False)
        self.show_things = W.Checkbox(value=True, description="things", indent=False)
        self.show_stuff = W.Checkbox(value=True, description="stuff", indent=False)
        self.show_boxes = W.Checkbox(value=False, description="boxes", indent=False)
        self.show_labels = W.Checkbox(value=False, description="labels", indent=False)
        self.show_boundaries = W.Checkbox(value=True, description="boundaries", indent=False)
        self.opacity = W.FloatSlider(value=opacity, min=0.0, max=1.0, step=0.05,
                                     description="opacity", **slider)
        self.mask_conf = W.FloatSlider(value=infer.mask_conf, min=0.0, max=1.0, step=0.01,
                                       description="mask confidence", **slider)
        self.overlap = W.FloatSlider(value=infer.overlap, min=0.0, max=1.0, step=0.01,
                                     description="overlap", **slider)
        self.stuff_area = W.IntSlider(value=infer.stuff_area, min=0,
                                      max=max(4 * infer.stuff_area, 4096), step=1,
                                      description="stuff area", **slider)
        self.box_fill = W.FloatSlider(value=infer.box_fill, min=0.0, max=1.0, step=0.01,
                                      description="box fill", **slider)
        self.box_fill_enabled = W.Checkbox(value=infer.box_fill_enabled,
                                           description="box fill on", indent=False)
        self.image = W.Image(format="png")
        self.info = W.HTML()

        rows = [W.HBox([self.split, self.index]),
                W.HBox([self.show_gt, self.show_things, self.show_stuff, self.show_boxes,
                        self.show_labels, self.show_boundaries]),
                self.opacity]
        if len(self.datasets) < 2:
            self.split.layout.display = "none"
        if self.models:
            rows.append(W.HBox([W.VBox([self.mask_conf, self.overlap]),
                                W.VBox([self.stuff_area, self.box_fill]),
                                self.box_fill_enabled]))
        else:
            self.show_gt.layout.display = "none"
        # flex-start: the image keeps its own height next to a taller info column
        rows.append(W.HBox([self.image, self.info], layout=W.Layout(align_items="flex-start")))
        self.widget = W.VBox(rows)

        self.split.observe(self._on_split, names="value")
        for w in (self.index, self.show_gt, self.show_things, self.show_stuff, self.show_boxes,
                  self.show_labels, self.show_boundaries, self.opacity, self.mask_conf,
                  self.overlap, self.stuff_area, self.box_fill, self.box_fill_enabled):
            w.observe(self._on_change, names="value")
        self.refresh()

    @classmethod
    def from_run(cls, run, data=None, run_b=None, splits=None, names: Optional[Sequence[str]]
                 = None, device: str = "cpu", **kwargs) -> "PanopticExplorer":
        """An explorer of a trained run (folder or checkpoint, see
        :class:`~spatialflow.engine.predict.Predictor`) on ``data`` (default: the run's
        ``data.root``, else the synthetic data in ``<run>/data``), with the run's inference
        settings and test size; ``run_b``: a second run for A/B mode."""
        predictor = Predictor.from_run(run, device)
        cfg = predictor.config
        if data is None or isinstance(data, (str, Path)):  # the run's splits, as run_dataset
            root, data = data, OrderedDict()                # opens them
            for split in (splits or (cfg.data.val_split, cfg.data.train_split)):
                try:
                    data[split] = run_dataset(predictor.run, split, root, cfg)
                except DatasetError:
                    if splits is not None:
                        raise
            if not data:
                raise DatasetError(f"{root or predictor.run}: no '{cfg.data.val_split}' or "
                                   f"'{cfg.data.train_split}' split found")
            splits = None
        predictor_b = Predictor.from_run(run_b, device) if run_b is not None else None
        if names is None:  # the variants of study runs, else the folders' names
            names = (run_label(run), "B" if run_b is None else run_label(run_b))
            if names[0] == names[1]:  # two runs of folders with the same name
                names = (f"{names[0]} (A)", f"{names[1]} (B)")
        kwargs.setdefault("infer", cfg.infer)
        kwargs.setdefault("test_size", cfg.data.test_size)
        kwargs.setdefault("max_size", cfg.data.max_size)
        return cls(data, predictor, model_b=predictor_b, splits=splits, names=names,
                   device=device, model_categories=predictor.categories,
                   model_b_categories=None if predictor_b is None else predictor_b.categories,
                   **kwargs)

    @classmethod
    def open(cls, run=None, data=None, run_b=None, **kwargs) -> "PanopticExplorer":
        """:meth:`from_run` if ``run`` holds a trained model (a checkpoint file, or a run folder
        with ``model_final.pt`` or ``checkpoint_last.pt``), else the ground-truth browser of
        ``data`` with a warning that no run was found (``ValueError`` if ``data`` is ``None``
        too)."""
        if find_checkpoint(run) is not None:
            return cls.from_run(run, data=data, run_b=run_b, **kwargs)
        if data is None:
            raise ValueError(f"no trained run at {run} and no data given: pass a data folder to "
                             "browse its ground truth")
        warnings.warn(f"no trained run at {run}: showing the ground truth of {data} only")
        kwargs.pop("names", None)
        return cls(data, **kwargs)

    # --- what is shown --------------------------------------------------------------------
    @property
    def dataset(self):
        """The data set of the selected split."""
        return self.datasets[self.split.value]

    @property
    def categories(self) -> CategoryMap:
        """The categories of the selected split's data set."""
        return self.dataset.categories

    def thresholds(self) -> dict:
        """The merge thresholds of the sliders, as ``merge`` keyword arguments."""
        return dict(mask_conf=float(self.mask_conf.value), overlap=float(self.overlap.value),
                    stuff_area=int(self.stuff_area.value), box_fill=float(self.box_fill.value),
                    box_fill_enabled=bool(self.box_fill_enabled.value))

    def infer_config(self) -> InferConfig:
        """``infer`` with the sliders' thresholds (e.g. to save chosen values in a config)."""
        return dataclasses.replace(self.infer, **self.thresholds())

    def _item(self, split: str, index: int):
        def make():
            image, pan, rec = self.datasets[split].load(index)
            source = f"{rec.get('png_path', 'panoptic PNG')} (image id {rec.get('image_id')})"
            check_segment_ids(np.unique(pan).tolist(), rec["segments_info"], source)
            return image, pan, rec

        return self._items.get((split, index), make)

    def raw_output(self, slot: int, split: str, index: int) -> dict:
        """Model ``slot``'s raw output on an image (run once, then cached)."""
        return self._raw.get((slot, split, index),
                             lambda: self.models[slot][1](self._item(split, index)[0]))

    def prediction(self, slot: int, split: str, index: int, thresholds: Optional[dict] = None):
        """``(pan, segments_info, image_pq result)`` of model ``slot`` on an image with the
        given (default: the sliders') thresholds; cached per threshold set."""
        thresholds = self.thresholds() if thresholds is None else thresholds
        key = (slot, split, index, tuple(sorted(thresholds.items())))

        def make():
            cats = self.datasets[split].categories
            _, gt_pan, rec = self._item(split, index)
            raw = self.raw_output(slot, split, index)
            try:
                pan, segments = merge_outputs(raw, cats, **thresholds)
            except ValueError as e:  # e.g. labels of other categories: name image and model
                raise InputError(f"{rec.get('image_path', f'{split} #{index}')}: the output of "
                                 f"model '{self.models[slot][0]}' cannot be merged: {e}") from e
            return pan, segments, image_pq(gt_pan, rec["segments_info"], pan, segments, cats)

        return self._merged.get(key, make)

    def _panels(self, split: str, index: int) -> List[dict]:
        _, gt_pan, rec = self._item(split, index)
        panels = []
        if not self.models or self.show_gt.value:
            panels.append({"name": "ground truth", "pan": gt_pan,
                           "segments": list(rec["segments_info"]), "pq": None})
        for slot, (name, _) in enumerate(self.models):
            pan, segments, result = self.prediction(slot, split, index)
            panels.append({"name": name, "pan": pan, "segments": segments, "pq": result})
        return panels

    def _render(self) -> dict:
        split, index = self.split.value, int(self.index.value)
        image, _, rec = self._item(split, index)
        panels = self._panels(split, index)
        opts = dict(opacity=float(self.opacity.value), things=self.show_things.value,
                    stuff=self.show_stuff.value, boxes=self.show_boxes.value,
                    labels=self.show_labels.value, draw_boundaries=self.show_boundaries.value)
        cats = self.categories
        for p in panels:  # = render_view(image, panels, cats, titles=self.titles, **opts)
            p["overlay"] = render_panel(image, p["pan"], p["segments"], cats, **opts)
            p["shown"] = visible_segments(p["pan"], p["segments"], cats, opts["things"],
                                          opts["stuff"])[1]
        view = compose_panels([p["overlay"] for p in panels],
                              [p["name"] for p in panels] if self.titles else None)
        return {"split": split, "index": index, "image_id": rec["image_id"],
                "file": str(rec["image_path"]), "image": image, "view": view,
                "panels": panels, "thresholds": self.thresholds() if self.models else None}

    def _info_html(self, view: dict) -> str:
        parts = [f"<div><b>{html.escape(view['split'])}</b> #{view['index']} (image id "
                 f"{html.escape(str(view['image_id']))}, {html.escape(Path(view['file']).name)})"
                 f"</div>"]
        for p in view["panels"]:
            parts.append(f"<div style='margin-top:6px'><b>{html.escape(p['name'])}</b></div>")
            parts.append(pq_html("PQ x100", p["pq"]))
            parts.append(legend_html(legend_items(p["shown"], self.categories)))
        return "".join(parts)

    def refresh(self) -> None:
        """Recompute the view from the widgets' values and update ``image`` and ``info``.

        An item that cannot be shown (an :class:`~spatialflow.errors.InputError`, e.g. a
        :class:`~spatialflow.errors.DatasetError` for an unreadable image or PNG ids that do
        not match ``segments_info``) is reported in ``info``, ``error`` and ``state()``, and
        the image is cleared; the explorer stays usable. Any other failure is shown the same
        way and raised."""
        try:
            view = self._render()
        except Exception as e:  # shown in the notebook; a bug is raised for the caller / tests
            self._show_error(e)
            if isinstance(e, InputError):
                return
            raise
        self.error, self._view = None, view
        self.image.value = png_bytes(view["view"])
        self.info.value = self._info_html(view)

    def _show_error(self, e: Exception) -> None:
        split, index = self.split.value, int(self.index.value)
        self.error = f"{type(e).__name__}: {e}"
        self._view = {"split": split, "index": index, "error": self.error}
        self.image.value = b""
        self.info.value = (f"<div><b>{html.escape(split)}</b> #{index}: cannot be shown</div>"
                           f"<pre style='color:#b00;white-space:pre-wrap'>"
                           f"{html.escape(self.error)}</pre>")

    def _on_change(self, _change=None) -> None:
        if not self._hold:
            self.refresh()

    def _on_split(self, change) -> None:
        self._hold += 1
        try:
            self.index.value = 0
            self.index.max = len(self.datasets[change["new"]]) - 1
        finally:
            self._hold -= 1
        self.refresh()

    def current(self) -> dict:
        """What is shown, with arrays: ``split``, ``index``, ``image_id``, ``file``, ``image``,
        ``view`` (the array in ``self.image``), ``thresholds`` (``None`` without a model) and
        ``panels``: ``[{name, pan, segments, shown (the visible ones), pq (image_pq result,
        ``None`` for the ground truth), overlay (the panel without caption)}]``. When the item
        cannot be shown: ``{split, index, error}`` only (``error``: the message in ``info``)."""
        return self._view

    def state(self) -> dict:
        """:meth:`current` without the arrays (JSON-friendly): per panel its name, segments,
        visible segment ids and PQ; ``error`` is ``None``, or the message shown when the item
        cannot be shown (then ``panels`` is empty)."""
        v = self._view
        if v.get("error"):
            return {"split": v["split"], "index": v["index"], "error": v["error"],
                    "panels": []}
        return {"split": v["split"], "index": v["index"], "image_id": v["image_id"],
                "file": v["file"], "thresholds": v["thresholds"], "error": None,
                "shape": list(v["view"].shape),
                "panels": [{"name": p["name"], "segments": p["segments"],
                            "shown": [s["id"] for s in p["shown"]], "pq": p["pq"]}
                           for p in v["panels"]]}

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
