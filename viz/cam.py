"""Class activation maps (CAM) of the box classification head and of the stuff head, drawn with
pytorch-grad-cam (paper Fig. 5: the spatial flows sharpen both heatmaps).

The library needs a model whose output is one tensor, so :class:`ClsScores` and
:class:`StuffLogits` wrap a :class:`~spatialflow.model.SpatialFlow`. The natural target layers
are the last stages of the cls and stuff towers. Their weights are shared across FPN levels, so
a hooked stage runs once per level in one forward pass (5 times for cls, 3 for stuff). The
library appends one activation per call and prepends one gradient per call, but it makes one CAM
per *entry of its* ``target_layers`` *list*, pairing entry ``i`` with the ``i``-th activation:
hooked once and listed once, a shared stage would silently give the P3 map only.
:func:`compute_cam` therefore registers the hooks once per module and then lists the module once
per level, so that the library makes one CAM per level (each min-max normalised and resized to
the input) and averages them (``aggregate_multi_layers``).

Class indices here are the model's contiguous ones (``CategoryMap.thing_index`` /
``CategoryMap.stuff_index``); :func:`flows_comparison_figure` takes dataset category ids.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from pytorch_grad_cam import EigenCAM, GradCAM
from pytorch_grad_cam.utils.image import scale_cam_image, show_cam_on_image
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import boxes as box_ops

from spatialflow.data.categories import CategoryMap
from spatialflow.model.inputs import batch_images
from spatialflow.engine.predict import Predictor
from spatialflow.errors import InputError
from spatialflow.model.backbone import FPN_LEVELS
from spatialflow.model.subnets import SEG_LEVELS

__all__ = ["ClsScores", "StuffLogits", "ClassScoreTarget", "DetectionTarget",
           "detection_anchor_index", "stuff_target", "cls_target_layer", "stuff_target_layer",
           "compute_cam", "cam_overlay", "flows_comparison_figure", "METHODS"]

#: CAM methods by name: pytorch-grad-cam classes (EigenCAM ignores the target).
METHODS = {"gradcam": GradCAM, "eigencam": EigenCAM}
HEADS = ("cls", "stuff")


# --- model wrappers (pytorch-grad-cam needs one tensor as the model output) -----------------
class _HeadWrapper(nn.Module):
    """Runs the backbone and sub-networks of ``model`` on ``x: float[N,3,H,W]`` in [0, 1].

    ``x`` is zero-padded to ``model.size_divisibility`` as the model itself does. With
    ``image_size=(h, w)`` the pixels outside the top-left ``h x w`` of ``x`` count as padding
    (normalised to 0, as in the model's own forward), so an image padded by the caller gives the
    same outputs as the unpadded image.
    """

    def __init__(self, model: nn.Module, image_size: Optional[Tuple[int, int]] = None):
        super().__init__()
        self.model = model
        self.image_size = image_size

    def _towers(self, x: torch.Tensor) -> Dict[str, List[torch.Tensor]]:
        images = batch_images(list(x), self.model.size_divisibility)
        if self.image_size is not None:
            images = ImageList(images.tensors, [tuple(self.image_size)] * len(x))
        return self.model.features(images)[2]


class ClsScores(_HeadWrapper):
    """``forward(x) -> float[N, num_anchors_total, num_things]``: the sigmoid scores of the box
    classification head for every anchor (levels P3..P7 concatenated, RetinaNet's order)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.head.classification_head(self._towers(x)["cls"]).sigmoid()


class StuffLogits(_HeadWrapper):
    """``forward(x) -> float[N, S+1, H, W]``: the stuff head's logits (stuff classes and
    'other') cropped to the input size ``H x W`` (to ``image_size`` when that is given)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.image_size or x.shape[-2:]
        return self.model.stuff_head(self._towers(x)["stuff"])[:, :, :h, :w]


# --- targets: called by pytorch-grad-cam on one image's model output -------------------------
class ClassScoreTarget:
    """A thing class's box scores: the sum of its ``top_k`` highest anchor scores (all anchors
    with ``top_k=None``), for a :class:`ClsScores` output ``[num_anchors, num_things]``."""

    def __init__(self, class_index: int, top_k: Optional[int] = 10):
        self.class_index, self.top_k = int(class_index), top_k

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        s = scores[:, self.class_index]
        if self.top_k is None:
            return s.sum()
        return s.topk(min(self.top_k, len(s))).values.sum()


class DetectionTarget:
    """One detection: the score of class ``class_index`` at anchor ``anchor_index`` (see
    :func:`detection_anchor_index`) in a :class:`ClsScores` output."""

    def __init__(self, anchor_index: int, class_index: int):
        self.anchor_index, self.class_index = int(anchor_index), int(class_index)

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        return scores[self.anchor_index, self.class_index]


def stuff_target(model: nn.Module, image: torch.Tensor,
                 stuff_index: int) -> SemanticSegmentationTarget:
    """The library's ``SemanticSegmentationTarget`` for the stuff head: the summed logits of class
    ``stuff_index`` (a ``sem_seg`` value, ``CategoryMap.stuff_index``) over the pixels where the
    model predicts it, at the size of ``image`` (``[3,H,W]``); the whole image when the class is
    predicted nowhere."""
    mask = _stuff_prediction(model, image) == stuff_index
    if not mask.any():
        mask = torch.ones_like(mask)
    return SemanticSegmentationTarget(int(stuff_index), mask.float().cpu().numpy())


def _stuff_prediction(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """``long[H,W]``: the stuff head's argmax (eval mode, no gradient)."""
    with _untouched(model), torch.no_grad():
        model.eval()
        return StuffLogits(model)(image[None].to(_device(model)))[0].argmax(0)


@torch.no_grad()
def detection_anchor_index(model: nn.Module, image: torch.Tensor, box: Sequence[float],
                           label: int, score: Optional[float] = None, atol: float = 1e-2) -> int:
    """The anchor (index into :class:`ClsScores`' anchor axis) behind a detection that ``model``
    returned for ``image`` (``[3,H,W]``): the anchor whose regression, decoded with
    ``model.box_coder`` and clipped to the image as in RetinaNet's post-processing, gives ``box``
    (xyxy, within ``atol`` pixels); among several, the one whose ``label`` score is closest to
    ``score`` (the highest without ``score``). Raises ``ValueError`` when none matches."""
    with _untouched(model):
        model.eval()
        images, _, _, head, anchors, _ = model.run_heads([image.to(_device(model))])
    boxes = model.box_coder.decode_single(head["bbox_regression"][0], anchors[0])
    boxes = box_ops.clip_boxes_to_image(boxes, images.image_sizes[0])
    box = torch.as_tensor(box, dtype=boxes.dtype, device=boxes.device)
    candidates = torch.nonzero((boxes - box).abs().amax(dim=1) <= atol).flatten()
    if len(candidates) == 0:
        raise ValueError(f"no anchor of this model decodes to the box {box.tolist()}")
    scores = head["cls_logits"][0, candidates, label].sigmoid()
    best = (scores - score).abs().argmin() if score is not None else scores.argmax()
    return int(candidates[best])


# --- target layers ---------------------------------------------------------------------------
def cls_target_layer(model: nn.Module) -> List[nn.Module]:
    """Target layers (the library's ``target_layers`` list) of the cls head: ``[the last Stage
    of the cls tower]``, a module shared by P3..P7 (it runs 5 times per forward pass)."""
    return [model.subnets.cls_tower[-1]]


def stuff_target_layer(model: nn.Module) -> List[nn.Module]:
    """Target layers of the stuff head: ``[the last Stage of the stuff tower]`` (shared by
    P3..P5). The naive baseline (``model.subnets=false``) has no stuff tower and its stuff head
    reads P3-P5 themselves: then the FPN's three output convs that make P3, P4 and P5
    (``backbone.fpn.layer_blocks[:3]``, one module per level, run top-down P5, P4, P3)."""
    tower = model.subnets.stuff_tower
    if tower is not None:
        return [tower[-1]]
    return list(model.backbone.fpn.layer_blocks[:SEG_LEVELS])


# --- CAMs ------------------------------------------------------------------------------------
def compute_cam(model: nn.Module, image: torch.Tensor, head: str = "cls",
                target: Union[None, int, Callable] = None, method: str = "gradcam",
                per_level: bool = False) -> Union[np.ndarray, List[np.ndarray]]:
    """CAM of the ``head`` (``"cls"`` or ``"stuff"``) of ``model`` (a :class:`SpatialFlow`, or
    a :class:`~spatialflow.engine.predict.Predictor`: its model) for ``image`` (``float[3,H,W]``
    in [0, 1]) with ``method`` (``"gradcam"`` or ``"eigencam"``).

    ``target``: a callable target (e.g. :class:`ClassScoreTarget`, :class:`DetectionTarget`, or
    the result of :func:`stuff_target`), or a class index (contiguous thing index for ``"cls"``:
    :class:`ClassScoreTarget`; stuff index for ``"stuff"``: :func:`stuff_target`), or ``None``
    for the highest-scoring thing class / the stuff class predicted on most pixels.

    Returns ``float32[H,W]`` in [0, 1]: the library's mean of the per-level maps, each min-max
    normalised, upsampled to the image and renormalised. With ``per_level=True``, the list of
    per-level maps (P3 first: 5 for cls, 3 for stuff), each ``float32[H,W]`` in [0, 1].

    The image is padded to ``model.size_divisibility`` (as the model pads it) and the maps are
    cropped back. The CAM is taken in eval mode (the library switches to it); afterwards the
    model's train/eval modes and its parameters' ``.grad`` are as they were. Gradients are
    enabled even when called under ``torch.no_grad()`` (``torch.inference_mode()`` is refused).
    """
    if isinstance(model, Predictor):
        model = model.model
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if head == "stuff" and not getattr(model, "panoptic", True):
        raise InputError("a detector alone (model.panoptic: false) has no stuff head; its "
                         "cls head has a CAM (head='cls')")
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("compute_cam needs gradients: do not call it under "
                           "torch.inference_mode()")
    image = _check_image(image).to(_device(model))
    h, w = image.shape[-2:]
    target = _resolve_target(model, image, head, target)
    d = model.size_divisibility
    x = F.pad(image, (0, -w % d, 0, -h % d))[None]
    x.requires_grad_(True)  # a graph to the target layers even if every parameter is frozen
    wrapper = (ClsScores if head == "cls" else StuffLogits)(model, image_size=(h, w))
    layers = cls_target_layer(model) if head == "cls" else stuff_target_layer(model)
    levels = len(FPN_LEVELS) if head == "cls" else SEG_LEVELS
    maps = None
    with _untouched(model), torch.enable_grad():
        with METHODS[method](model=wrapper, target_layers=layers) as cam:
            # hooks are registered per listed module; listing a shared module once per level
            # afterwards makes the library compute one CAM per captured call
            cam.target_layers = layers * (levels // len(layers))
            combined = cam(x, [target])[0]
            order = _level_order(cam, levels)
            if per_level:
                per = cam.compute_cam_per_layer(x, [target], False)
                maps = [per[i][0, 0] for i in order]
            else:
                maps = combined
    if maps is None:  # the library's context manager swallows an IndexError (it prints it)
        raise RuntimeError("pytorch-grad-cam failed to compute the CAM")
    if per_level:
        return list(scale_cam_image(np.stack(maps)[:, :h, :w]))
    return scale_cam_image(maps[None, :h, :w])[0]


def _level_order(cam, levels: int) -> List[int]:
    """Indices of the captured calls from the finest level to the coarsest, after checking that
    there is one activation (and, for gradient methods, one gradient of the same shape) per
    level: the library pairs them by position only (the gradients come in the order autograd
    reaches the levels, which is the reverse of the forward order here)."""
    acts = cam.activations_and_grads.activations
    grads = cam.activations_and_grads.gradients
    if len(acts) != levels:
        raise RuntimeError(f"expected {levels} activations (one per level), got {len(acts)}")
    if cam.uses_gradients and [g.shape for g in grads] != [a.shape for a in acts]:
        raise RuntimeError("activations and gradients of the levels do not pair up: "
                           f"{[tuple(a.shape) for a in acts]} vs {[tuple(g.shape) for g in grads]}")
    return sorted(range(levels), key=lambda i: -acts[i].shape[-2] * acts[i].shape[-1])


def _resolve_target(model, image, head, target):
    """A pytorch-grad-cam target from ``compute_cam``'s ``target`` argument."""
    if callable(target):
        return target
    if head == "stuff":
        if target is None:
            pred = _stuff_prediction(model, image)
            counts = torch.bincount(pred.flatten(), minlength=model.num_sem_classes)
            target = int(counts[:model.num_sem_classes - 1].argmax())  # not 'other'
        return stuff_target(model, image, int(target))
    if target is None:
        with _untouched(model), torch.no_grad():
            model.eval()
            scores = ClsScores(model)(image[None])[0]
        target = int(scores.max(dim=0).values.argmax())
    return ClassScoreTarget(int(target))


@contextmanager
def _untouched(model: nn.Module):
    """Restore every module's train/eval flag and every parameter's ``.grad`` on exit
    (pytorch-grad-cam calls ``model.eval()`` and ``model.zero_grad()``)."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, g in grads:
            p.grad = g


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_image(image) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError("image must be a float tensor [3, H, W] with values in [0, 1]")
    return image.detach().float()


# --- pictures --------------------------------------------------------------------------------
def _rgb(image) -> np.ndarray:
    """``float32[H,W,3]`` in [0, 1] from a ``[3,H,W]`` tensor or an ``[H,W,3]`` array."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    image = np.asarray(image, dtype=np.float32)
    if image.max() > 1:  # uint8-like
        image = image / 255.0
    return np.clip(image, 0, 1)


def cam_overlay(image, cam: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """``uint8[H,W,3]``: the heatmap ``cam`` (``[H,W]`` in [0, 1]) in the jet colormap blended
    over ``image`` (``[3,H,W]`` tensor or ``[H,W,3]`` array) with the library's
    ``show_cam_on_image``."""
    return show_cam_on_image(_rgb(image), np.clip(cam, 0, 1).astype(np.float32), use_rgb=True,
                             image_weight=image_weight)


def largest_classes(segments: Sequence[Mapping], categories: CategoryMap
                    ) -> Tuple[Optional[int], Optional[int]]:
    """``(thing category id, stuff category id)`` covering the most area among an image's
    ``segments_info`` (COCO panoptic dicts with ``category_id`` and ``area``), the classes to
    take CAMs of; ``None`` where the image has no thing (or no stuff) segment."""
    area: Dict[int, float] = {}
    for s in segments:
        if s["category_id"] in categories:
            area[s["category_id"]] = area.get(s["category_id"], 0) + s.get("area", 0)
    best = [None, None]
    for cat, a in sorted(area.items(), key=lambda kv: (-kv[1], kv[0])):
        slot = 0 if categories.is_thing(cat) else 1
        if best[slot] is None:
            best[slot] = cat
    return best[0], best[1]


def cam_examples(dataset, count: int, at_least: int = 0) -> List[Tuple[int, int, int]]:
    """``(index, thing category id, stuff category id)`` of the first ``count`` items of
    ``dataset`` (a :class:`~spatialflow.data.CocoPanopticDataset`) that have both a thing and
    a stuff segment, with their :func:`largest_classes`; read from the annotations only.
    Fewer than ``at_least`` found: an :class:`~spatialflow.errors.InputError` naming the data
    set."""
    found = []
    for i in range(len(dataset)):
        if len(found) == count:
            break
        thing, stuff = largest_classes(dataset.annotation(i)["segments_info"],
                                       dataset.categories)
        if thing is not None and stuff is not None:
            found.append((i, thing, stuff))
    if len(found) < at_least:
        raise InputError(f"{dataset.panoptic_json}: {len(found)} of its {len(dataset)} images "
                         f"have both a thing and a stuff segment; {at_least} needed for the CAMs")
    return found


def class_mask(panoptic: np.ndarray, segments: Sequence[Mapping], category_id: int
               ) -> np.ndarray:
    """``bool[H,W]``: the pixels of the segments of ``category_id`` in a panoptic id map."""
    ids = [s["id"] for s in segments if s["category_id"] == category_id]
    return np.isin(panoptic, ids)


def _outline(ax, mask: Optional[np.ndarray]) -> None:
    """Where the object is: the outline of ``mask`` over a CAM panel (white, dashed)."""
    if mask is not None and mask.any() and not mask.all():
        ax.contour(mask.astype(float), levels=[0.5], colors="white", linewidths=1.2,
                   linestyles="--")


def flows_comparison_figure(image: torch.Tensor, models: Mapping[str, nn.Module],
                            categories: CategoryMap, thing_class: int, stuff_class: int,
                            method: str = "gradcam",
                            ground_truth: Optional[Tuple[np.ndarray, Sequence[Mapping]]] = None
                            ) -> Figure:
    """Paper Fig. 5: one row per model or :class:`~spatialflow.engine.predict.Predictor` (e.g.
    ``{"with flows": m1, "without flows": m2}``),
    columns = the image, the cls-head CAM of thing ``thing_class`` and the stuff-head CAM of
    ``stuff_class`` (dataset category ids of ``categories``), with a colour bar.
    ``ground_truth``: the image's ``(panoptic id map, segments_info)``; the ground-truth
    outline of the class (dashed white) is then drawn on each CAM, so one sees whether the
    heat falls on the object."""
    thing, stuff = categories.thing_index(thing_class), categories.stuff_index(stuff_class)
    outlines = [None, None, None]
    if ground_truth is not None:
        pan, segments = ground_truth
        outlines[1:] = [class_mask(pan, segments, c) for c in (thing_class, stuff_class)]
    fig = Figure(figsize=(9, 3 * len(models)), layout="constrained")
    axes = fig.subplots(len(models), 3, squeeze=False)
    for row, (name, model) in zip(axes, models.items()):
        cls_cam = compute_cam(model, image, "cls", ClassScoreTarget(thing), method)
        stuff_cam = compute_cam(model, image, "stuff", stuff, method)
        panels = [(_rgb(image), "image"),
                  (cam_overlay(image, cls_cam), f"cls CAM: {categories.name(thing_class)}"),
                  (cam_overlay(image, stuff_cam), f"stuff CAM: {categories.name(stuff_class)}")]
        for ax, (picture, title), outline in zip(row, panels, outlines):
            ax.imshow(picture)
            _outline(ax, outline)
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(name)
    _cam_colorbar(fig, axes[:, 1:])
    if ground_truth is not None:
        fig.suptitle("dashed white: the class in the ground truth", fontsize=9)
    return fig


#: the colour bar's label: what the heatmap colours mean
CAM_SCALE = "CAM, each map scaled to [0, 1]"


def _cam_colorbar(fig: Figure, axes) -> None:
    """The jet scale of :func:`cam_overlay`'s heatmaps, beside ``axes``."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig.colorbar(ScalarMappable(Normalize(0, 1), cmap="jet"), ax=axes, shrink=0.8,
                 label=CAM_SCALE)


def levels_figure(image: torch.Tensor, model: nn.Module, head: str = "cls",
                  target: Union[None, int, Callable] = None, method: str = "gradcam",
                  title: Optional[str] = None, outline: Optional[np.ndarray] = None) -> Figure:
    """One row: the combined CAM of ``head`` and then its map at each FPN level (P3 first:
    5 for cls, 3 for stuff), each over the image (see :func:`compute_cam` for ``target``),
    with a colour bar; ``outline``: a ``bool[H,W]`` mask (e.g. :func:`class_mask` of the
    target's class) drawn dashed on every map."""
    maps = [compute_cam(model, image, head, target, method)]
    maps += compute_cam(model, image, head, target, method, per_level=True)
    names = ["combined"] + [name.upper() for name in FPN_LEVELS[:len(maps) - 1]]
    fig = Figure(figsize=(2.2 * len(maps) + 0.8, 2.6), layout="constrained")
    axes = fig.subplots(1, len(maps), squeeze=False)
    for ax, cam, name in zip(axes[0], maps, names):
        ax.imshow(cam_overlay(image, cam))
        _outline(ax, outline)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    _cam_colorbar(fig, axes)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
