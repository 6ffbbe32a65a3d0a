"""Panoptic overlays as image arrays (numpy + PIL): segments in their category colours (instances
of one class told apart), segment boundaries, optional boxes with class names; the boxes of a
detector alone. The CLI writes
its PNGs with these; :mod:`viz` builds figures and widgets on them."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from spatialflow.data.categories import CategoryMap


def segment_colors(segments: Sequence[dict], categories: CategoryMap) -> dict:
    """``{segment id: rgb}``: the category colour, shifted for each instance of a thing class
    (deterministic in the segment's rank among its class) so neighbours of one class differ."""
    colors, seen = {}, {}
    for s in segments:
        base = np.array(categories[s["category_id"]]["color"], np.int32)
        k = seen.get(s["category_id"], 0)
        seen[s["category_id"]] = k + 1
        if categories.is_thing(s["category_id"]) and k:
            rng = np.random.default_rng(k)
            base = np.clip(base + rng.integers(-60, 61, 3), 0, 255)
        colors[s["id"]] = base.astype(np.uint8)
    return colors


def boundaries(pan: np.ndarray) -> np.ndarray:
    """``bool[H,W]``: pixels whose right or lower neighbour belongs to another segment."""
    edge = np.zeros(pan.shape, bool)
    edge[:, :-1] |= pan[:, :-1] != pan[:, 1:]
    edge[:-1, :] |= pan[:-1, :] != pan[1:, :]
    return edge


def panoptic_overlay(image: np.ndarray, pan: np.ndarray, segments: Sequence[dict],
                     categories: CategoryMap, alpha: float = 0.55, draw_boundaries: bool = True,
                     boxes: bool = False, labels: bool = False) -> np.ndarray:
    """``uint8[H,W,3]``: ``image`` blended with the segments' colours (unassigned pixels keep
    the image), with boundaries in white and, optionally, thing boxes and class names."""
    image = np.asarray(image, np.uint8)
    out = image.astype(np.float32)
    colors = segment_colors(segments, categories)
    for s in segments:
        m = pan == s["id"]
        out[m] = (1 - alpha) * out[m] + alpha * colors[s["id"]]
    if draw_boundaries:
        out[boundaries(pan)] = 255
    result = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    if boxes or labels:
        things = [s for s in segments
                  if s.get("isthing", categories.is_thing(s["category_id"]))]
        _draw_boxes(result, things, [colors[s["id"]] for s in things], categories, boxes,
                    labels)
    return np.asarray(result)


def detection_overlay(image: np.ndarray, detections: Sequence[dict], categories: CategoryMap,
                      min_score: float = 0.3) -> np.ndarray:
    """``uint8[H,W,3]``: ``image`` with the boxes of ``detections`` (COCO results:
    ``category_id``, ``bbox`` xywh, ``score``) scoring at least ``min_score``, each in its
    class colour with its class name and score (what a detector alone predicts)."""
    shown = [d for d in detections if d["score"] >= min_score]
    result = Image.fromarray(np.asarray(image, np.uint8))
    _draw_boxes(result, shown, [categories[d["category_id"]]["color"] for d in shown],
                categories, True, True)
    return np.asarray(result)


def _draw_boxes(image: Image.Image, items: Sequence[dict], colors, categories: CategoryMap,
                boxes: bool, labels: bool) -> None:
    """Draw each item's ``bbox`` (xywh) and / or its class name (and ``score``, if any)."""
    draw = ImageDraw.Draw(image)
    for item, color in zip(items, colors):
        x, y, w, h = item["bbox"]
        if boxes:
            draw.rectangle([x, y, x + w - 1, y + h - 1], outline=tuple(int(c) for c in color))
        if labels:
            text = categories.name(item["category_id"])
            if "score" in item:
                text += f" {item['score']:.2f}"
            draw.text((x + 1, max(0, y - 10)), text, fill=(255, 255, 255))


def side_by_side(*panels: np.ndarray, gap: int = 4) -> np.ndarray:
    """Panels of equal height next to each other, with a white gap."""
    h = max(p.shape[0] for p in panels)
    cols = []
    for i, p in enumerate(panels):
        if p.shape[0] < h:
            p = np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)), constant_values=255)
        cols.append(p)
        if i < len(panels) - 1:
            cols.append(np.full((h, gap, 3), 255, np.uint8))
    return np.concatenate(cols, axis=1)


def enlarged(image: np.ndarray, factor: int) -> np.ndarray:
    """``image`` (``[H,W]`` or ``[H,W,C]``) drawn ``factor`` times larger by nearest neighbour,
    so that its pixels stay honest."""
    return np.repeat(np.repeat(np.asarray(image), factor, 0), factor, 1)


def captioned(panel: np.ndarray, title: str, height: int = 16) -> np.ndarray:
    """``panel`` under a white strip ``height`` pixels tall holding ``title``."""
    strip = Image.new("RGB", (panel.shape[1], height), (255, 255, 255))
    ImageDraw.Draw(strip).text((3, 2), title, fill=(0, 0, 0))
    return np.concatenate([np.asarray(strip), np.asarray(panel, np.uint8)], axis=0)


def legend_strip(category_ids: Sequence[int], categories: CategoryMap, width: int,
                 row: int = 16) -> np.ndarray:
    """``uint8[h, width, 3]``: a white strip naming each of ``category_ids`` beside a square of
    its colour, wrapped onto as many rows as it needs."""
    names = [(categories.name(c), tuple(int(v) for v in categories[c]["color"]))
             for c in category_ids]
    rows, x = 1, 4
    for name, _ in names:  # (a character of PIL's default font is about 6 px wide)
        step = 16 + 6 * len(name) + 10
        if x + step > width and x > 4:
            rows, x = rows + 1, 4
        x += step
    strip = Image.new("RGB", (width, rows * row), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    x, y = 4, 0
    for name, color in names:
        step = 16 + 6 * len(name) + 10
        if x + step > width and x > 4:
            x, y = 4, y + row
        draw.rectangle([x, y + 3, x + 10, y + 13], fill=color, outline=(0, 0, 0))
        draw.text((x + 14, y + 2), name, fill=(0, 0, 0))
        x += step
    return np.asarray(strip)


def save_png(path, array: np.ndarray) -> None:
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
