"""A small Cityscapes folder as users have it, converted by the official scripts.

:func:`write_cityscapes` writes ``leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png``
and ``gtFine/<split>/<city>/..._gtFine_{instanceIds,labelIds}.png`` with real Cityscapes label
ids (instance ids ``label * 1000 + k``, crowd regions of a thing class as the bare label id, an
'ego vehicle' band that the evaluation ignores), drawn from the synthetic scenes; then
:func:`convert` runs cityscapesscripts' own ``createPanopticImgs`` on it, with or without
``--use-train-id``, exactly as the README tells users to.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

from spatialflow.data.synthetic import (BIRD, BOAT, CAR, GRASS, MOUNTAIN, PERSON, ROAD, SKY,
                                        WATER, render_scene)

#: synthetic class -> Cityscapes label name (the shapes do not matter to the reader)
CITYSCAPES_LABEL = {ROAD: "road", WATER: "sidewalk", SKY: "sky", MOUNTAIN: "building",
                    GRASS: "vegetation", PERSON: "person", CAR: "car", BOAT: "bus",
                    BIRD: "bicycle"}
CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt",)}


def write_cityscapes(root, images: dict = None, size=(96, 192), seed: int = 0) -> dict:
    """Write the raw Cityscapes layout under ``root`` (``images``: ``{split: count}``);
    returns ``{split: [image ids]}``."""
    from cityscapesscripts.helpers.labels import name2label

    root, images = Path(root), images or {"train": 4, "val": 2}
    written = {}
    for s, (split, count) in enumerate(sorted(images.items())):
        rng = np.random.default_rng([seed, s])
        written[split] = []
        for k in range(count):
            city = CITIES.get(split, ("zurich",))[k % len(CITIES.get(split, ("zurich",)))]
            image_id = f"{city}_{k:06d}_{19 + k:06d}"
            image, pan, segments = render_scene(rng, size)
            instance_ids = np.zeros(pan.shape, np.uint16)
            label_ids = np.zeros(pan.shape, np.uint8)
            counters = {}
            for seg in segments:
                label = name2label[CITYSCAPES_LABEL[seg["category_id"]]]
                mask = pan == seg["id"]
                label_ids[mask] = label.id
                if label.hasInstances and not seg.get("iscrowd", 0):
                    counters[label.id] = counters.get(label.id, -1) + 1
                    instance_ids[mask] = label.id * 1000 + counters[label.id]
                else:  # stuff, and crowd regions of a thing class: the label id alone
                    instance_ids[mask] = label.id
            if k == 0:  # a crowd: thing-class pixels with no instance id
                rider = name2label["rider"].id
                label_ids[:8, :12], instance_ids[:8, :12] = rider, rider
            ego = name2label["ego vehicle"].id  # ignored in evaluation: void in the PNGs
            label_ids[-4:], instance_ids[-4:] = ego, ego
            gt = root / "gtFine" / split / city
            img_dir = root / "leftImg8bit" / split / city
            gt.mkdir(parents=True, exist_ok=True)
            img_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(img_dir / f"{image_id}_leftImg8bit.png")
            Image.fromarray(instance_ids).save(gt / f"{image_id}_gtFine_instanceIds.png")
            Image.fromarray(label_ids).save(gt / f"{image_id}_gtFine_labelIds.png")
            written[split].append(image_id)
    return written


def convert(root, splits=("train", "val"), use_train_id: bool = False) -> None:
    """cityscapesscripts' ``createPanopticImgs`` on ``root/gtFine`` (its output next to it:
    ``gtFine/cityscapes_panoptic_<split>[_trainId].json`` and its PNG folder)."""
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    with contextlib.redirect_stdout(io.StringIO()):  # it prints a progress line per file
        convert2panoptic(str(Path(root) / "gtFine"), None, use_train_id, list(splits))
