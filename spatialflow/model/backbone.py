"""Backbone: a torchvision ResNet and FPN giving P3-P7 (strides 8-128), P6 from C5 (RetinaNet)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torchvision import models
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from spatialflow.config import BACKBONES
from spatialflow.errors import InputError
from spatialflow.model.weights import load_state

FPN_LEVELS = ("p3", "p4", "p5", "p6", "p7")


def _norm_layer(kind: str):
    if kind == "frozen_bn":
        return FrozenBatchNorm2d
    if kind == "bn":
        return nn.BatchNorm2d
    if kind == "gn":
        return lambda channels: nn.GroupNorm(32, channels)
    raise ValueError(f"unknown backbone norm {kind!r}")


def load_backbone_weights(body: nn.Module, path) -> None:
    """Load ResNet weights (a torchvision ``state_dict`` file) from a local path into ``body``.

    Only tensors are read (``weights_only=True``); the classifier (``fc.*``) is ignored; any
    other missing or unexpected key is an error naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: pretrained backbone weights not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle with code, ...
        raise InputError(f"{path}: cannot read backbone weights ({e})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    load_state(body, state, f"{path} (ResNet weights)", ignore=("fc.",))


def resnet(name: str, norm_layer) -> models.ResNet:
    """torchvision's ResNet ``name`` without weights. ``"resnet10"`` is torchvision's
    :class:`~torchvision.models.ResNet` with one basic block per stage (ResNet-18 has two): the
    same stem, strides and widths at half of ResNet-18's FLOPs (0.58 against 1.19 GFLOPs for a
    128 px image)."""
    if name == "resnet10":
        return models.ResNet(models.resnet.BasicBlock, [1, 1, 1, 1], norm_layer=norm_layer)
    return getattr(models, name)(weights=None, norm_layer=norm_layer)


def build_backbone(name: str = "resnet50", fpn_channels: int = 256, norm: str = "frozen_bn",
                   pretrained: Optional[str] = None, freeze_stem: bool = False) -> BackboneWithFPN:
    """torchvision ResNet (``weights=None``; :func:`resnet`) + FPN with outputs ``p3..p7``.

    ``norm``: ``"frozen_bn"`` (the paper, with pretrained weights), ``"bn"`` or ``"gn"`` (for
    training from scratch). ``pretrained``: a local ``state_dict`` file for the ResNet.
    ``freeze_stem``: conv1 (and its norm) get no gradient.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}")
    if norm == "frozen_bn" and pretrained is None:
        warnings.warn("frozen BatchNorm without pretrained weights leaves the backbone "
                      "unnormalised; pass model.pretrained=PATH or use model.backbone_norm=gn",
                      stacklevel=2)
    body = resnet(name, _norm_layer(norm))
    if pretrained is not None:
        load_backbone_weights(body, pretrained)
    if freeze_stem:
        for module in (body.conv1, body.bn1):
            module.requires_grad_(False)
    expansion = 1 if name in ("resnet10", "resnet18", "resnet34") else 4
    c3, c4, c5 = (128 * expansion, 256 * expansion, 512 * expansion)
    fpn = BackboneWithFPN(
        body,
        return_layers={"layer2": "p3", "layer3": "p4", "layer4": "p5"},
        in_channels_list=[c3, c4, c5],
        out_channels=fpn_channels,
        extra_blocks=LastLevelP6P7(c5, fpn_channels),  # P6 from C5, P7 from P6 (RetinaNet)
    )
    return fpn
