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

from typing import List, Tuple

import numpy as np
import torch

from spatialflow.data.categories import CategoryMap
from spatialflow.data.panoptic_io import attach_stats


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def stuff_map(scores: torch.Tensor) -> torch.Tensor:
    """``long[H,W]``: per pixel, the index of the highest of ``scores`` ``[S+1,H,W]`` (stuff
    logits or probabilities; the first one on a tie, as ``argmax``, which is ~3x slower over
    the leading dimension)."""
    return scores.max(0).indices


def merge(boxes, scores, labels, masks, sem, categories: CategoryMap, *,
          mask_conf: float = 0.37, overlap: float = 0.37, stuff_area: int = 4900,
          box_fill: float = 0.6, box_fill_enabled: bool = True,
          mask_threshold: float = 0.5) -> Tuple[np.ndarray, List[dict]]:
    """Panoptic segmentation of one image from the model's raw outputs.

    Args:
        boxes: ``[K,4]`` xyxy detections (pixels of this image), ``scores`` ``[K]``, ``labels``
            ``[K]`` contiguous thing ids.
        masks: ``[M,1,H,W]`` or ``[M,H,W]`` mask probabilities pasted at the image size, of
            the first ``M <= K`` detections (at least all those scoring ``mask_conf`` or more).
        sem: an ``[H,W]`` map of ``sem_seg`` values (stuff index, ``S`` = 'other'), as the
            model outputs it, or ``[S+1,H,W]`` stuff probabilities (or logits).
        categories: the data set's :class:`CategoryMap`.

    Returns:
        ``(pan int32[H,W], segments_info)``: segment ids ``1..n`` (0 = unassigned), and for each
        segment ``{id, category_id (dataset id), isthing, area, bbox [x,y,w,h], iscrowd: 0}``
        plus ``score`` for things. Areas and boxes are those of the returned map.
    """
    boxes, scores, labels = (_as_tensor(boxes).float().cpu(), _as_tensor(scores).float().cpu(),
                             _as_tensor(labels).long().cpu())
    masks, sem = _as_tensor(masks).cpu(), _as_tensor(sem).cpu()
    if masks.dim() == 4:
        masks = masks[:, 0]
    sem_map = stuff_map(sem) if sem.dim() == 3 else sem.long()
    h, w = sem_map.shape
    if masks.shape[0] and tuple(masks.shape[-2:]) != (h, w):
        raise ValueError(f"masks are {tuple(masks.shape[-2:])}, the stuff map is {(h, w)}")
    pan = torch.zeros((h, w), dtype=torch.int32)
    segments: List[dict] = []

    def new_segment(category_id: int, score=None) -> int:
        seg = {"id": len(segments) + 1, "category_id": int(category_id),
               "isthing": int(categories.is_thing(category_id)), "iscrowd": 0}
        if score is not None:
            seg["score"] = float(score)
        segments.append(seg)
        return seg["id"]

    order = [int(k) for k in torch.argsort(scores, descending=True, stable=True)
             if scores[k] >= mask_conf]
    missing = [k for k in order if k >= len(masks)]
    if missing:
        raise ValueError(f"detection {missing[0]} (score {float(scores[missing[0]]):.3f} >= "
                         f"mask_conf {mask_conf}) has no mask: masks are given for the first "
                         f"{len(masks)} of {len(scores)} detections")
    instance_of = {}
    for k in order:  # 1. instances in score order, skipping heavily overlapped ones
        m = masks[k] >= mask_threshold
        as_bytes = m.view(torch.uint8)  # amax of bytes: ~7x faster than any() here
        rows, cols = as_bytes.amax(1).nonzero(), as_bytes.amax(0).nonzero()
        if len(rows) == 0:
            continue
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        m = m[y0:y1, x0:x1]
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
    for c in torch.unique(sem_map[free]).tolist():
        if not 0 <= c < categories.num_stuff:
            continue
        region = free & (sem_map == c)
        if int(region.sum()) < stuff_area:
            continue
        pan[region] = new_segment(categories.stuff_id(c))

    if box_fill_enabled:  # 3. fill free pixels inside the detected boxes
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
    ``masks``, and ``sem_seg``, or ``sem_probs`` ``[S+1,H,W]``)."""
    sem = output["sem_seg"] if "sem_seg" in output else output["sem_probs"]
    return merge(output["boxes"], output["scores"], output["labels"], output["masks"], sem,
                 categories, **thresholds)
