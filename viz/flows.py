"""Flow maps: what each spatial flow adds to its receiving tower, per pixel and FPN level.

For one image, forward hooks on the flows' adaptation convs record their outputs while the
model runs (the model is not changed): for reg->cls, reg->stuff and reg->thing the output of
psi (``psi(P_reg)``, eq 3), for stuff->thing that of zeta (``zeta(P_stuff)``). A flow's map at a
level is the per-pixel L2 norm of that output over the channels (for reg->cls and reg->stuff,
which feed every stage of their tower, the mean of the stages' norms). The paper's claim is
that the flows carry where the objects are (Section V); :func:`flow_box_share` measures it:
the share of a flow's magnitude inside the ground-truth thing boxes, against the share of the
image those boxes cover.

A flow that is switched off has no map; with deformable convolutions (eq 4) a flow steers the
offsets instead of adding features, and has no map either.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn

from spatialflow.data.categories import CategoryMap
from spatialflow.engine.predict import prepare_image
from spatialflow.engine.predict import Predictor
from spatialflow.engine.runs import unwrap
from spatialflow.model.backbone import FPN_LEVELS
from spatialflow.model.detection import LEVEL_STRIDES
from spatialflow.model.subnets import SEG_LEVELS

__all__ = ["flow_maps", "thing_boxes", "flow_box_share", "mean_shares", "dataset_shares",
           "describe_flow_share", "flow_maps_figure"]

#: the flows' modules in ``model.subnets`` and what their maps are the norm of
_FLOWS = (("reg_to_cls", "{src}->{peer}", "psi(P_{src})"),
          ("reg_to_stuff", "{src}->stuff", "psi(P_{src})"),
          ("reg_to_thing", "{src}->thing", "psi(P_{src})"),
          ("stuff_to_thing", "stuff->thing", "zeta(P_stuff)"))


def flow_maps(model, image: torch.Tensor) -> Dict[str, dict]:
    """What each flow of ``model`` (a :class:`~spatialflow.model.SpatialFlow` or a
    :class:`~spatialflow.engine.predict.Predictor`, whose test size the image is resized to)
    adds for ``image`` (``float[3,H,W]`` in [0, 1]).

    Returns ``{flow name: {"levels": [float32[h_l, w_l] per level P3-P5], "stride": [8, 16,
    32], "of": "psi(P_reg)" or "zeta(P_stuff)", "size": (h, w)}}``, one entry per flow that
    adds features, named as the paper (``"reg->cls"``, ``"reg->stuff"``, ``"reg->thing"``,
    ``"stuff->thing"``; ``"cls->reg"`` ... for the cls-flows control of Fig. 4). ``size`` is
    the image size the model saw; each map covers that image only (no padding)."""
    if isinstance(model, Predictor):
        image = prepare_image(image, model.test_size, model.max_size)
        model = model.model
    model = unwrap(model)
    subnets = model.subnets
    src = subnets.flows.source
    peer = "reg" if src == "cls" else "cls"
    h, w = (int(v) for v in image.shape[-2:])
    calls: Dict[str, List[List[torch.Tensor]]] = {}
    hooks = []
    for attr, name, _ in _FLOWS:
        convs = getattr(subnets, attr, None)
        if convs is None:
            continue
        convs = list(convs) if isinstance(convs, nn.ModuleList) else [convs]
        if not any(isinstance(c, nn.Conv2d) for c in convs):  # DCN: the flow steers offsets
            continue
        label = name.format(src=src, peer=peer)
        calls[label] = [[] for _ in convs]
        for stage, conv in enumerate(convs):
            hooks.append(conv.register_forward_hook(
                lambda mod, inp, out, label=label, stage=stage:
                    calls[label][stage].append(out[0].detach().float().norm(dim=0).cpu())))
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model.features([image.to(next(model.parameters()).device)])
    finally:
        for hook in hooks:
            hook.remove()
        model.train(training)
    out = {}
    for attr, name, of in _FLOWS:
        label = name.format(src=src, peer=peer)
        if label not in calls:
            continue
        levels = []
        for level in range(SEG_LEVELS):  # the k-th call of a stage's conv is level k
            stride = LEVEL_STRIDES[level]
            rows, cols = -(-h // stride), -(-w // stride)
            norms = [stage[level][:rows, :cols] for stage in calls[label] if len(stage) > level]
            levels.append(torch.stack(norms).mean(0).numpy())
        out[label] = {"levels": levels, "stride": list(LEVEL_STRIDES[:SEG_LEVELS]),
                      "of": of.format(src=src), "size": (h, w)}
    return out


def _at_image_size(level_map: np.ndarray, stride: int, size: Sequence[int],
                   out_size: Sequence[int]) -> np.ndarray:
    """A level's map brought to ``out_size``: each cell repeated over the ``stride x stride``
    pixels it stands for in the ``size`` image the model saw, then resized (nearest)."""
    h, w = size
    full = np.kron(level_map, np.ones((stride, stride), np.float32))[:h, :w]
    if tuple(out_size) == (h, w):
        return full
    t = torch.from_numpy(np.ascontiguousarray(full))[None, None]
    return F.interpolate(t, size=tuple(int(v) for v in out_size), mode="nearest")[0, 0].numpy()


def thing_boxes(segments: Sequence[Mapping], categories: CategoryMap) -> np.ndarray:
    """``float[N,4]`` xywh boxes of the thing segments of a ``segments_info`` (their
    ``bbox``), in the image's pixels."""
    boxes = [s["bbox"] for s in segments if categories.is_thing(s["category_id"])]
    return np.asarray(boxes, np.float64).reshape(-1, 4)


def _box_mask(boxes: np.ndarray, size: Sequence[int]) -> np.ndarray:
    mask = np.zeros(tuple(size), bool)
    for x, y, bw, bh in np.asarray(boxes).reshape(-1, 4):
        x0, y0 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
        mask[y0:int(np.ceil(y + bh)), x0:int(np.ceil(x + bw))] = True
    return mask


def flow_box_share(maps: Mapping[str, dict], boxes: np.ndarray,
                   image_size: Sequence[int]) -> Dict[str, dict]:
    """Per flow of :func:`flow_maps`: ``{"share": the share of its magnitude (P3-P5 pooled,
    each level brought to the image size) inside the union of ``boxes`` (xywh, pixels of the
    ``image_size = (H, W)`` image: e.g. :func:`thing_boxes`), "levels": that share per level,
    "area": the share of the image the boxes cover, "ratio": share / area}``. A ratio above 1:
    the flow puts more of its magnitude on the things than their area would."""
    mask = _box_mask(boxes, image_size)
    area = float(mask.mean())
    out = {}
    for name, entry in maps.items():
        ups = [_at_image_size(m, s, entry["size"], image_size)
               for m, s in zip(entry["levels"], entry["stride"])]
        per_level = [float(u[mask].sum() / u.sum()) if u.sum() > 0 else float("nan")
                     for u in ups]
        total = sum(float(u.sum()) for u in ups)
        share = sum(float(u[mask].sum()) for u in ups) / total if total > 0 else float("nan")
        out[name] = {"share": share, "levels": per_level, "area": area,
                     "ratio": share / area if area > 0 else float("nan")}
    return out


def describe_flow_share(shares: Mapping[str, dict]) -> str:
    """One sentence on :func:`flow_box_share` (or :func:`mean_shares` of several images): for
    each flow the share of its magnitude inside the ground-truth thing boxes against the share
    of the image they cover, and whether the flows concentrate on the things."""
    if not shares:
        return "This model has no flow that adds features (all off, or deformable), so no map."
    area = next(iter(shares.values()))["area"]
    images = next(iter(shares.values())).get("images", 1)
    where = "this image" if images == 1 else f"these {images} images"
    parts = [f"{name} {100 * s['share']:.0f}% ({s['ratio']:.1f}x)" for name, s in shares.items()]
    # judged as printed: a ratio that rounds to 1.0x is "about as much"
    groups = {"more": [], "about": [], "less": []}
    for name, s in shares.items():
        r = round(s["ratio"], 1)
        groups["more" if r > 1.0 else "less" if r < 1.0 else "about"].append(name)
    said = []
    if groups["more"]:
        said.append(f"{_names(groups['more'])} put{'s' if len(groups['more']) == 1 else ''} "
                    f"more of {'its' if len(groups['more']) == 1 else 'their'} magnitude on the "
                    f"things than the boxes' area would")
    if groups["about"]:
        said.append(f"{_names(groups['about'])} about as much as their area")
    if groups["less"]:
        said.append(f"{_names(groups['less'])} less")
    return (f"The ground-truth thing boxes cover {100 * area:.0f}% of {where}; the share of "
            f"each flow's magnitude inside them (and that share over their area) is "
            f"{', '.join(parts)}: {'; '.join(said)}.")


def _names(names: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def mean_shares(per_image: Sequence[Mapping[str, dict]]) -> Dict[str, dict]:
    """The mean of :func:`flow_box_share` results of several images, flow by flow (``ratio``
    is the mean share over the mean area; ``images``: how many)."""
    out = {}
    for name in per_image[0]:
        share = float(np.mean([s[name]["share"] for s in per_image]))
        area = float(np.mean([s[name]["area"] for s in per_image]))
        levels = [float(v) for v in np.mean([s[name]["levels"] for s in per_image], axis=0)]
        out[name] = {"share": share, "levels": levels, "area": area,
                     "ratio": share / area if area > 0 else float("nan"),
                     "images": len(per_image)}
    return out


def dataset_shares(predictor, dataset, indices: Sequence[int]) -> Dict[str, dict]:
    """:func:`mean_shares` of :func:`flow_box_share` over the items ``indices`` of a
    :class:`~spatialflow.data.CocoPanopticDataset` (each image's ground-truth thing boxes);
    items without a thing are left out (no box to measure against). Raises ``ValueError``
    when none has one."""
    from spatialflow.engine.predict import to_tensor

    per_image = []
    for index in indices:
        image, _, record = dataset.load(index)
        boxes = thing_boxes(record["segments_info"], predictor.categories)
        if len(boxes):
            maps = flow_maps(predictor, to_tensor(image))
            per_image.append(flow_box_share(maps, boxes, image.shape[:2]))
    if not per_image:
        raise ValueError("none of these images has a thing in its ground truth")
    return mean_shares(per_image) if per_image[0] else {}


def flow_maps_figure(image, maps: Mapping[str, dict], boxes: Optional[np.ndarray] = None,
                     title: Optional[str] = None) -> Figure:
    """One row per flow: the image with the ground-truth thing ``boxes`` (xywh, dashed), then
    the flow's map at P3, P4 and P5, each brought to the image size, with the boxes drawn over
    it and one colour bar per row (the norm's scale, 0 to the row's largest value)."""
    rgb = image.detach().cpu().permute(1, 2, 0).numpy() if isinstance(image, torch.Tensor) \
        else np.asarray(image, np.float32) / (255.0 if np.asarray(image).max() > 1 else 1.0)
    size = rgb.shape[:2]
    boxes = np.zeros((0, 4)) if boxes is None else np.asarray(boxes).reshape(-1, 4)
    rows = max(len(maps), 1)
    fig = Figure(figsize=(10.5, 2.5 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, 1 + SEG_LEVELS, squeeze=False)

    def draw_boxes(ax, color):
        for x, y, bw, bh in boxes:
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), bw, bh, fill=False, edgecolor=color,
                                   linestyle="--", linewidth=1.0))

    for row, (name, entry) in zip(axes, maps.items()):
        row[0].imshow(np.clip(rgb, 0, 1))
        draw_boxes(row[0], "white")
        row[0].set_title("image, thing boxes (ground truth)", fontsize=8)
        row[0].set_ylabel(name, fontsize=11)
        ups = [_at_image_size(m, s, entry["size"], size)
               for m, s in zip(entry["levels"], entry["stride"])]
        top = max(float(u.max()) for u in ups) or 1.0
        for ax, up, level, stride in zip(row[1:], ups, FPN_LEVELS, entry["stride"]):
            shown = ax.imshow(up, cmap="magma", vmin=0, vmax=top)
            draw_boxes(ax, "cyan")
            ax.set_title(f"{level.upper()} (stride {stride})", fontsize=8)
        fig.colorbar(shown, ax=row[1:], shrink=0.9, label=f"‖{entry['of']}‖ per pixel")
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    if not maps:
        axes[0, 0].imshow(np.clip(rgb, 0, 1))
        axes[0, 0].set_title("no flow adds features in this model", fontsize=9)
    fig.suptitle(title or "What each flow adds to its receiving tower (L2 norm over channels)",
                 fontsize=10)
    return fig
