"""The text of ``spatialflow info --model``: a preset's parameters and GFLOPs per part
(:func:`spatialflow.model.summary.model_summary`), what is counted, and torchvision's RetinaNet
R50-FPN at the same size for reference."""

from __future__ import annotations

import warnings
from typing import Optional, Sequence, Union

import torch
from torch import nn

from spatialflow.benchmark.models import build_peer, summary_categories
from spatialflow.config import load_config
from spatialflow.model import build_model
from spatialflow.model.summary import (FlopCount, format_summary_table, image_hw, model_summary,
                                       param_count)


def reference_retinanet(image_size: Union[int, Sequence[int]] = 800, num_classes: int = 91,
                        flops: bool = True) -> dict:
    """torchvision's RetinaNet R50-FPN (``weights=None``) for comparison: ``{"part", "params",
    "bn_params", "gflops", "note"}`` with ``bn_params`` the BatchNorm affine parameters (built
    without backbone weights its ResNet has trainable BatchNorm; with pretrained weights they
    would be frozen buffers, like the presets' ``frozen_bn``) and its FLOPs for one
    ``image_size`` image under the same counter (``score_thresh`` 0, 100 detections; its
    transform is set not to resize the image, and pads it to a multiple of 32), or ``gflops``
    None with ``flops=False``. The global random state is left as it was."""
    h, w = image_hw(image_size)
    model = build_peer("RetinaNet R50-FPN", min(h, w), max(h, w), num_classes=num_classes)
    bn = sum(param_count(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    row = {"part": "torchvision RetinaNet R50-FPN", "params": param_count(model), "bn_params": bn,
           "gflops": None, "note": f"num_classes={num_classes}"}
    if flops:
        image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode(), FlopCount(model) as count:
            out = model([image])
        row["gflops"] = count.total / 1e9
        row["note"] = f"1 image {h}x{w}, {len(out[0]['boxes'])} detections"
    return row


PAPER_PRESETS = ("r50-coco", "r101-coco", "r101-dcn-coco", "r50-cityscapes")
COUNTING = ("params: all parameters, trainable or not (frozen BatchNorm holds buffers, not "
            "parameters). GFLOPs: FLOPs / 1e9 counted by torch.utils.flop_counter."
            "FlopCounterMode, a multiply-add = 2 FLOPs; convolutions and matrix products only. "
            "Deformable convs (not seen by the counter) are added as the equivalent plain conv. "
            "Not counted: RoIAlign, normalisation, activations and other element-wise ops, "
            "upsampling, NMS.")


def describe_preset(name_or_path, image_size: int = 800, overrides: Sequence[str] = (),
                    reference: Optional[bool] = None) -> str:
    """The text of ``spatialflow info --model``: the :func:`model_summary` table of a preset's
    model (random weights, :func:`summary_categories` classes) for one ``image_size`` square
    image, what is counted, and with ``reference`` (default: for the paper presets) a line
    with torchvision's RetinaNet R50-FPN at the same size. A bad preset or override raises
    :class:`~spatialflow.errors.ConfigError`."""
    cfg = load_config(name_or_path, overrides)
    cats = summary_categories(cfg)
    torch.manual_seed(0)
    with warnings.catch_warnings():  # frozen BN without weights: irrelevant for counting
        warnings.simplefilter("ignore")
        model = build_model(cfg, cats)
    rows = model_summary(model, image_size)
    title = (f"{cfg.name}: {cfg.model.backbone}, {cats.num_things} thing + {cats.num_stuff} "
             f"stuff classes, one {image_size}x{image_size} image (eval, score_thresh 0)")
    lines = [format_summary_table(rows, title), "", COUNTING]
    if reference is None:
        reference = str(name_or_path) in PAPER_PRESETS
    if reference:
        ref = reference_retinanet(image_size)
        lines.append(
            f"reference: {ref['part']} (weights=None, num_classes=91): "
            f"{ref['params'] / 1e6:.3f} M params ({ref['bn_params'] / 1e6:.3f} M of them "
            f"BatchNorm, frozen buffers with pretrained weights), {ref['gflops']:.2f} GFLOPs "
            f"({ref['note']}; its images are padded to a multiple of 32, as ours)")
    return "\n".join(lines)


