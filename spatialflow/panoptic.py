"""Panoptic inference (paper IV-B-2): merge detections, instance masks and the stuff map into a
panoptic segmentation, then fill unassigned pixels with the detected boxes.

``merge(...)`` is a pure function of the model's raw outputs for one image. Steps:

1. instances with score >= ``mask_conf`` are pasted in score order (mask = probability >=
   ``mask_threshold``); an instance whose mask overlaps the already pasted pixels by more than
   ``overlap`` of its area is skipped, otherwise it takes its still free pixels;
2. the stuff map (argmax of the stuff head) fills the remaining pixels, things win; the 'other'
   class is dropped, and so is a stuff region smaller than ``stuff_area`` pixels;
3. box fill: for each detection (score order, score >= ``mask_conf``) whose box is still free
   on at least ``box_fill`` of its area, those free pixels join that detection's instance (a new
   segment if its mask was skipped). The authors' code runs this after the stuff pass, as here.

Thresholds default to the paper's COCO values (0.37 / 0.37 / 4900 / 0.6); Cityscapes uses
overlap 0.25 and stuff area 2048 (see the presets).
"""

from __future__ import annotations

from typing import List, Mapping, Sequence, Tuple, Union

import numpy as np
import torch

from spatialflow.data.categories import CategoryMap
from spatialflow.data.panoptic_io import attach_stats
from spatialflow.model.masks import BoxMasks, stuff_map


Masks = Union[torch.Tensor, BoxMasks]


def _mask_regions(masks: Masks) -> Sequence[Tuple[torch.Tensor, int, int]]:
    """``(values, row, column)`` of each mask: a :class:`BoxMasks` crop and its origin, or a
    dense mask from ``(0, 0)``."""
    if isinstance(masks, BoxMasks):
        return [(c, y, x) for c, (y, x) in zip(masks.crops, masks.origins)]
    return [(m, 0, 0) for m in masks]


def _as_tensor(x, name: str = "input") -> torch.Tensor:
    if isinstance(x, (torch.Tensor, BoxMasks)):
        return x
    try:
        t = torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name}: not a numeric array ({e})") from None
    return t


def _as_number(name: str, value) -> float:
    try:
        if isinstance(value, (str, bytes)):
            raise TypeError
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def _check_inputs(boxes, scores, labels, masks, sem, categories: CategoryMap,
                  thresholds: dict) -> Tuple[torch.Tensor, torch.Tensor]:
    """Validate :func:`merge`'s arguments (O(K) plus one min/max over a 2-D ``sem``); returns
    ``(boxes [K,4], masks [M,H,W])`` with an empty ``boxes``/``masks`` given any shape
    normalised."""
    for name in ("mask_conf", "overlap", "box_fill", "mask_threshold"):
        if not 0.0 <= _as_number(name, thresholds[name]) <= 1.0:  # False for NaN too
            raise ValueError(f"{name} must be in [0, 1], got {thresholds[name]!r}")
    if not _as_number("stuff_area", thresholds["stuff_area"]) >= 0:
        raise ValueError(f"stuff_area must be >= 0 (pixels), got {thresholds['stuff_area']!r}")
    if boxes.numel() == 0 and boxes.dim() < 2:
        boxes = boxes.reshape(0, 4)
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be [K,4] (xyxy), got shape {list(boxes.shape)}")
    k = boxes.shape[0]
    for name, t in (("scores", scores), ("labels", labels)):
        if t.dim() != 1 or t.shape[0] != k:
            raise ValueError(f"{name} must be [K] with K = {k} (the number of boxes), got "
                             f"shape {list(t.shape)}")
    for name, t in (("boxes", boxes), ("scores", scores), ("labels", labels)):
        if t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"{name}: expected real numbers, got dtype {t.dtype}")
    if k:
        if not bool(torch.isfinite(scores).all()):
            bad = int((~torch.isfinite(scores)).nonzero()[0])
            raise ValueError(f"scores: detection {bad} has the non-finite score "
                             f"{float(scores[bad])} (the model's output is broken)")
        if not bool(torch.isfinite(boxes).all()):
            bad = int((~torch.isfinite(boxes)).any(1).nonzero()[0])
            raise ValueError(f"boxes: detection {bad} has non-finite coordinates "
                             f"{boxes[bad].tolist()}")
        if labels.is_floating_point() and not bool((labels == labels.round()).all()
                                                   and torch.isfinite(labels).all()):
            raise ValueError(f"labels must be integer thing ids, got {labels.tolist()[:10]}")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= categories.num_things:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"labels: thing label {bad} is outside 0..{categories.num_things - 1}: the data "
                f"set has {categories.num_things} thing classes (was the model trained on "
                f"other categories?)")
    if isinstance(masks, BoxMasks):
        pass
    elif masks.numel() == 0 and masks.dim() < 3:
        masks = masks.reshape(0, 0, 0)
    elif masks.dim() == 4:
        if masks.shape[1] != 1:
            raise ValueError(f"masks must be [M,H,W] or [M,1,H,W], got shape "
                             f"{list(masks.shape)}")
        masks = masks[:, 0]
    if not isinstance(masks, BoxMasks) and masks.dim() != 3:
        raise ValueError(f"masks must be [M,H,W] or [M,1,H,W], got shape {list(masks.shape)}")
    if len(masks) > k:
        raise ValueError(f"masks: {len(masks)} masks for {k} detections (at most one mask "
                         f"per box)")
    if sem.dim() not in (2, 3):
        raise ValueError(f"sem must be a [H,W] stuff map or [S+1,H,W] stuff scores, got shape "
                         f"{list(sem.shape)}")
    if sem.dim() == 3 and sem.shape[0] != categories.num_sem_classes:
        raise ValueError(f"sem: {sem.shape[0]} stuff score channels, the data set has "
                         f"{categories.num_stuff} stuff classes + 'other' = "
                         f"{categories.num_sem_classes}")
    if sem.dtype == torch.bool or sem.is_complex():
        raise ValueError(f"sem: expected real numbers, got dtype {sem.dtype}")
    if len(masks) and tuple(masks.shape[-2:]) != tuple(sem.shape[-2:]):
        raise ValueError(f"masks are {tuple(masks.shape[-2:])}, the stuff map is "
                         f"{tuple(sem.shape[-2:])}: masks and sem must have the same H,W")
    if sem.dim() == 2 and sem.numel():
        lo, hi = torch.aminmax(sem)
        if sem.is_floating_point():
            if not bool(torch.isfinite(lo) & torch.isfinite(hi)):  # a NaN propagates to both
                raise ValueError("sem: the stuff map holds non-finite values")
            if not bool((sem == sem.round()).all()):
                raise ValueError("sem: a 2-D stuff map must hold integer class indices")
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi > categories.num_stuff:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"sem: stuff map value {bad} is outside 0..{categories.num_stuff} (the data set "
                f"has {categories.num_stuff} stuff classes, {categories.num_stuff} = 'other')")
    return boxes, masks




def merge(boxes, scores, labels, masks, sem, categories: CategoryMap, *,
          mask_conf: float = 0.37, overlap: float = 0.37, stuff_area: int = 4900,
          box_fill: float = 0.6, box_fill_enabled: bool = True,
          mask_threshold: float = 0.5) -> Tuple[np.ndarray, List[dict]]:
    """Panoptic segmentation of one image from the model's raw outputs.

    Args:
        boxes: ``[K,4]`` xyxy detections (pixels of this image), ``scores`` ``[K]``, ``labels``
            ``[K]`` contiguous thing ids.
        masks: ``[M,1,H,W]`` or ``[M,H,W]`` mask probabilities pasted at the image size, of
            the first ``M <= K`` detections (at least all those scoring ``mask_conf`` or more),
            or the same as a :class:`BoxMasks` (each read inside its box only: faster).
        sem: an ``[H,W]`` map of ``sem_seg`` values (stuff index, ``S`` = 'other'), as the
            model outputs it, or ``[S+1,H,W]`` stuff probabilities (or logits).
        categories: the data set's :class:`CategoryMap`.

    Returns:
        ``(pan int32[H,W], segments_info)``: segment ids ``1..n`` (0 = unassigned), and for each
        segment ``{id, category_id (dataset id), isthing, area, bbox [x,y,w,h], iscrowd: 0}``
        plus ``score`` for things. Areas and boxes are those of the returned map.

    Raises:
        ValueError: invalid input, with a message naming the argument and the fault:
            ``boxes`` not ``[K,4]`` (an empty array of any shape counts as ``[0,4]``);
            ``scores`` or ``labels`` not ``[K]``; non-finite (NaN / Inf) ``scores`` or
            ``boxes`` (a model that outputs them is broken); ``labels`` not integers or outside
            ``0..num_things-1`` (a model trained on other categories); ``masks`` not
            ``[M,H,W]`` / ``[M,1,H,W]``, or ``M > K``, or their ``H,W`` not those of ``sem``;
            ``sem`` not 2-D or 3-D, a 3-D ``sem`` without ``S+1`` channels, a 2-D ``sem``
            with values outside ``0..S`` (negative, or the ignore value 255) or, if floating
            point, not whole finite numbers; ``mask_conf``, ``overlap``, ``box_fill`` or
            ``mask_threshold`` outside ``[0, 1]``, ``stuff_area < 0``; a detection scoring
            ``mask_conf`` or more without a mask; an argument that is not a numeric array.
            The checks cost ``O(K)`` and one min/max over an integer 2-D ``sem``; mask and
            stuff score values are not checked (a NaN mask probability is never
            ``>= mask_threshold``). Boxes may reach outside the image: they are clipped.
    """
    boxes, scores, labels = (_as_tensor(boxes, "boxes"), _as_tensor(scores, "scores"),
                             _as_tensor(labels, "labels"))
    masks, sem = _as_tensor(masks, "masks"), _as_tensor(sem, "sem")
    boxes, masks = _check_inputs(boxes, scores, labels, masks, sem, categories, dict(
        mask_conf=mask_conf, overlap=overlap, box_fill=box_fill, mask_threshold=mask_threshold,
        stuff_area=stuff_area))
    boxes, scores, labels = boxes.float().cpu(), scores.float().cpu(), labels.long().cpu()
    masks, sem = masks.cpu(), sem.cpu()
    sem_map = stuff_map(sem) if sem.dim() == 3 else sem.long()
    h, w = sem_map.shape
    pan = torch.zeros((h, w), dtype=torch.int32)
    segments: List[dict] = []

    def new_segment(category_id: int, score=None) -> int:
        seg = {"id": len(segments) + 1, "category_id": int(category_id),
               "isthing": int(categories.is_thing(category_id)), "iscrowd": 0}
        if score is not None:
            seg["score"] = float(score)
        segments.append(seg)
        return seg["id"]

    # compared as Python floats: a float32 tensor against a float would round the threshold to
    # float32 first (1e-300 becomes 0, and a score of 0 would pass it)
    order = [int(k) for k in torch.argsort(scores, descending=True, stable=True)
             if float(scores[k]) >= mask_conf]
    missing = [k for k in order if k >= len(masks)]
    if missing:
        raise ValueError(f"detection {missing[0]} (score {float(scores[missing[0]]):.3f} >= "
                         f"mask_conf {mask_conf}) has no mask: masks are given for the first "
                         f"{len(masks)} of {len(scores)} detections")
    if isinstance(masks, BoxMasks) and mask_threshold <= 0:  # every pixel is in every mask
        masks = masks.dense()[:, 0]
    instance_of = {}
    regions = _mask_regions(masks)
    for k in order:  # 1. instances in score order, skipping heavily overlapped ones
        values, top, left = regions[k]
        if values.numel() == 0:  # a box outside the image
            continue
        m = values >= mask_threshold
        as_bytes = m.view(torch.uint8)  # amax of bytes: ~7x faster than any() here
        rows, cols = as_bytes.amax(1).nonzero(), as_bytes.amax(0).nonzero()
        if len(rows) == 0:
            continue
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        m = m[r0:r1, c0:c1]
        y0, y1, x0, x1 = top + r0, top + r1, left + c0, left + c1
        area = int(m.sum())
        taken = pan[y0:y1, x0:x1] != 0
        if int((m & taken).sum()) > overlap * area:
            continue
        free = m & ~taken
        if not free.any():
            continue
        sid = new_segment(categories.thing_id(int(labels[k])), scores[k])
        pan[y0:y1, x0:x1][free] = sid
        instance_of[k] = sid

    free = pan == 0  # 2. stuff on what is left; 'other' and small regions are dropped
    # free pixels per class, counted (bincount: ~3x faster than sorting them with unique)
    areas = torch.bincount(sem_map[free], minlength=categories.num_stuff)
    for c in range(categories.num_stuff):
        if int(areas[c]) == 0 or int(areas[c]) < stuff_area:
            continue
        pan[free & (sem_map == c)] = new_segment(categories.stuff_id(c))

    if box_fill_enabled:  # 3. fill free pixels inside the detected boxes
        # clamped first: a far-away coordinate (1e30) would overflow the conversion to long
        boxes = boxes.clamp(-1.0, float(max(h, w)) + 1.0)
        for k in order:
            x0, y0, x1, y1 = boxes[k].round().long().tolist()
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
            if x1 <= x0 or y1 <= y0:
                continue
            free = pan[y0:y1, x0:x1] == 0
            if int(free.sum()) < box_fill * (x1 - x0) * (y1 - y0) or not free.any():
                continue
            sid = instance_of.get(k)
            if sid is None:
                sid = instance_of[k] = new_segment(categories.thing_id(int(labels[k])),
                                                   scores[k])
            pan[y0:y1, x0:x1][free] = sid

    pan = pan.numpy()
    return pan, attach_stats(pan, segments)


def merge_outputs(output: dict, categories: CategoryMap, **thresholds):
    """:func:`merge` of one image's model output dict (``boxes``, ``scores``, ``labels``,
    ``masks``, and ``sem_seg``, or ``sem_probs`` ``[S+1,H,W]``).

    Raises:
        ValueError: ``output`` is not a dict or lacks one of these keys (the message names
            it), or any error of :func:`merge`.
    """
    if not isinstance(output, Mapping):
        raise ValueError(f"output must be a dict of the model's raw outputs, got "
                         f"{type(output).__name__}")
    missing = [k for k in ("boxes", "scores", "labels", "masks") if k not in output]
    if "sem_seg" not in output and "sem_probs" not in output:
        missing.append("sem_seg (or sem_probs)")
    if missing:
        raise ValueError(f"output: missing key(s) {', '.join(missing)} (has "
                         f"{sorted(map(str, output))})")
    sem = output["sem_seg"] if "sem_seg" in output else output["sem_probs"]
    return merge(output["boxes"], output["scores"], output["labels"], output["masks"], sem,
                 categories, **thresholds)
