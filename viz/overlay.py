"""Panoptic overlays for notebooks and figures. The array rendering lives in
:mod:`spatialflow.render` (the CLI writes its PNGs with it); figures, legends and widgets built
on it belong here."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from spatialflow.data.categories import CategoryMap
from spatialflow.render import (boundaries, panoptic_overlay, save_png, segment_colors,
                                side_by_side)

__all__ = ["boundaries", "overlay_figure", "panoptic_overlay", "save_png", "segment_colors",
           "side_by_side"]

#: one panel: (title, panoptic id map, segments_info)
Panel = Tuple[str, np.ndarray, Sequence[dict]]


def prediction_rows(predictor, dataset, indices: Sequence[int],
                    name: str = "prediction") -> list:
    """Rows for :func:`overlay_figure`: for each item ``indices`` of ``dataset`` (a
    :class:`~spatialflow.data.CocoPanopticDataset`), the image with its ground truth and the
    panoptic result of ``predictor`` (a :class:`~spatialflow.engine.predict.Predictor`)."""
    rows = []
    for index in indices:
        image, gt, record = dataset.load(index)
        result = predictor(image)
        rows.append((image, [("ground truth", gt, record["segments_info"]),
                             (name, result["panoptic"], result["segments_info"])]))
    return rows


def overlay_figure(rows: Sequence[Tuple[np.ndarray, Sequence[Panel]]], categories: CategoryMap,
                   title: Optional[str] = None, boxes: bool = True,
                   panel_inches: float = 2.6) -> Figure:
    """Overlays that stand alone: one row per image (``(uint8[H,W,3] image, panels)``), one
    column per panel (e.g. ground truth, prediction) under its title, thing boxes and class
    labels on each, and a legend of the classes shown, in their colours (instances of a thing
    class in shades of it), things first. ``title`` over all."""
    if not rows:
        raise ValueError("overlay_figure needs at least one image")
    cols = max(len(panels) for _, panels in rows)
    h, w = rows[0][0].shape[:2]
    fig = Figure(figsize=(panel_inches * cols + 1.8, panel_inches * h / w * len(rows) + 0.6),
                 layout="constrained")
    axes = fig.subplots(len(rows), cols, squeeze=False)
    shown = set()
    for row_axes, (image, panels) in zip(axes, rows):
        for ax, (name, pan, segments) in zip(row_axes, panels):
            ax.imshow(panoptic_overlay(image, pan, segments, categories, boxes=boxes,
                                       labels=True))
            ax.set_title(name, fontsize=9)
            shown |= {s["category_id"] for s in segments}
        for ax in row_axes:
            ax.set_xticks([])
            ax.set_yticks([])
            if not ax.images:
                ax.set_axis_off()
    order = sorted(shown, key=lambda c: (not categories.is_thing(c), categories.name(c)))
    handles = [Patch(color=np.array(categories[c]["color"]) / 255,
                     label=f"{categories.name(c)} ({'thing' if categories.is_thing(c) else 'stuff'})")
               for c in order]
    if handles:
        fig.legend(handles=handles, loc="outside right center", fontsize="small",
                   title="classes", title_fontsize="small")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
