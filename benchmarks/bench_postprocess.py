"""Time SpatialFlow's post-processing pieces against what they replace, at one image size.

    python benchmarks/bench_postprocess.py [--size 800] [--detections 100] [--repeat 5]

- mask pasting: ``spatialflow.model.masks.paste_masks`` (dense) and ``paste_mask_crops``
  (a ``BoxMasks``: each mask inside its box, what the ``Predictor`` merges) vs torchvision's
  ``paste_masks_in_image`` (the same values are checked);
- the stuff map: ``spatialflow.model.masks.stuff_map`` of the stuff logits vs the softmax over the
  classes followed by ``argmax`` (what the model output before);
- the panoptic merge with every detection above ``mask_conf``, of the dense masks and of the
  ``BoxMasks`` (the same result is checked).

Random 28x28 masks in random in-image boxes and random logits of COCO's 54 stuff classes at a
4:3 image whose shorter edge is ``--size``. Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torchvision.models.detection.roi_heads import paste_masks_in_image  # noqa: E402

from spatialflow.benchmark.timing import image_shape, median_time  # noqa: E402
from spatialflow.data.categories import CategoryMap  # noqa: E402
from spatialflow.model.masks import paste_mask_crops, paste_masks, stuff_map  # noqa: E402
from spatialflow.panoptic import merge  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=800, help="shorter edge (default 800)")
    ap.add_argument("--detections", type=int, default=100, help="masks (default 100)")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs (median)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = image_shape(args.size)
    k = args.detections
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(k, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
    boxes = torch.cat([xy, xy + 20 + torch.rand(k, 2, generator=g) * (min(h, w) / 3)], 1)
    boxes[:, 0::2], boxes[:, 1::2] = boxes[:, 0::2].clamp(max=w), boxes[:, 1::2].clamp(max=h)
    probs = torch.rand(k, 1, 28, 28, generator=g)
    logits = torch.randn(54, h, w, generator=g)
    coco_like = CategoryMap.from_coco(
        [{"id": i + 1, "name": f"thing{i}", "isthing": 1} for i in range(80)]
        + [{"id": 100 + i, "name": f"stuff{i}", "isthing": 0} for i in range(53)])
    masks = paste_masks(probs, boxes, (h, w))
    if not torch.equal(masks, paste_masks_in_image(probs, boxes, (h, w), padding=1)):
        raise SystemExit("paste_masks differs from torchvision's paste_masks_in_image")
    crops = paste_mask_crops(probs, boxes, (h, w))
    sem = stuff_map(logits)
    scores = torch.linspace(1.0, 0.5, k)
    labels = torch.randint(0, 80, (k,), generator=g)
    dense_pan, dense_segments = merge(boxes, scores, labels, masks, sem, coco_like)
    crops_pan, crops_segments = merge(boxes, scores, labels, crops, sem, coco_like)
    if not ((dense_pan == crops_pan).all() and dense_segments == crops_segments):
        raise SystemExit("the merge of the BoxMasks differs from the merge of the dense masks")
    rows = [
        ("paste masks: torchvision paste_masks_in_image",
         lambda: paste_masks_in_image(probs, boxes, (h, w), padding=1)),
        ("paste masks: spatialflow paste_masks", lambda: paste_masks(probs, boxes, (h, w))),
        ("paste masks: spatialflow paste_mask_crops (BoxMasks)",
         lambda: paste_mask_crops(probs, boxes, (h, w))),
        ("stuff map: softmax + argmax", lambda: logits.softmax(0).argmax(0)),
        ("stuff map: spatialflow stuff_map", lambda: stuff_map(logits)),
        (f"merge, {k} detections above mask_conf, dense masks",
         lambda: merge(boxes, scores, labels, masks, sem, coco_like)),
        (f"merge, {k} detections above mask_conf, BoxMasks",
         lambda: merge(boxes, scores, labels, crops, sem, coco_like)),
    ]
    result = {"size": [h, w], "detections": k, "threads": torch.get_num_threads(),
              "seconds": {}}
    print(f"| {h}x{w}, {k} detections, {torch.get_num_threads()} threads | median s |")
    print("|---|---:|")
    for name, fn in rows:
        t = median_time(fn, args.repeat, 1)["median"]
        result["seconds"][name] = t
        print(f"| {name} | {t:.3f} |")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
