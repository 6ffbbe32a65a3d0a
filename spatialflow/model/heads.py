"""The four task heads (paper III-A-3): box classification, box regression, thing (instance
mask) and stuff (semantic) heads.

The cls and reg heads are torchvision's RetinaNet heads with their conv towers removed (the
towers live in :mod:`spatialflow.model.subnets`), so their losses (sigmoid focal loss, L1 or
GIoU box loss) are torchvision's own. The thing head is Mask R-CNN's; the stuff head is
Panoptic FPN's semantic head.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead

from spatialflow.model.roi_align import SeparableMultiScaleRoIAlign


def detection_head(channels: int, num_anchors: int, num_classes: int,
                   box_loss: str = "l1") -> RetinaNetHead:
    """RetinaNet's cls head (one 3x3 conv to A*K sigmoid logits, prior 0.01) and reg head (one
    3x3 conv to A*4 deltas), fed by the sub-networks instead of their own towers."""
    head = RetinaNetHead(channels, num_anchors, num_classes)
    head.classification_head.conv = nn.Identity()
    head.regression_head.conv = nn.Identity()
    head.regression_head._loss_type = box_loss  # "l1" (the authors') or "giou"
    return head


class ThingHead(nn.Module):
    """Mask R-CNN's mask head on the thing sub-network: RoIAlign 14x14 on P3-P5 (level chosen by
    box size; torchvision's ``MultiScaleRoIAlign``, computed as matrix products on a CPU's
    small maps: :mod:`spatialflow.model.roi_align`), four 3x3 convs + ReLU, a 2x2 stride-2
    deconv + ReLU and a 1x1 conv giving 28x28 class-specific mask logits."""

    def __init__(self, channels: int, num_classes: int, hidden: int = 256):
        super().__init__()
        self.roi_align = SeparableMultiScaleRoIAlign(["p3", "p4", "p5"], output_size=14,
                                                     sampling_ratio=2)
        self.convs = MaskRCNNHeads(channels, [hidden] * 4, dilation=1)
        self.predictor = MaskRCNNPredictor(hidden, hidden, num_classes)

    def forward(self, features: Sequence[torch.Tensor], boxes: List[torch.Tensor],
                image_sizes: List[Tuple[int, int]]) -> torch.Tensor:
        """Mask logits ``[sum(len(b) for b in boxes), num_classes, 28, 28]``."""
        x = self.roi_align(OrderedDict(zip(("p3", "p4", "p5"), features)), boxes, image_sizes)
        return self.predictor(self.convs(x))


class StuffHead(nn.Module):
    """Panoptic FPN's semantic head: each of P3-P5 is brought to 1/4 scale by blocks of
    3x3 conv + GroupNorm + ReLU + 2x bilinear upsampling (1, 2 and 3 blocks), the three are
    summed, then a 1x1 conv and 4x bilinear upsampling give per-pixel logits (stuff classes +
    'other')."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 128):
        super().__init__()
        groups = 32 if channels % 32 == 0 and channels >= 64 else max(1, channels // 4)

        def block(cin):
            conv = nn.Conv2d(cin, channels, 3, padding=1, bias=False)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            return nn.Sequential(conv, nn.GroupNorm(groups, channels), nn.ReLU(inplace=True),
                                 nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))

        self.scale_heads = nn.ModuleList(
            nn.Sequential(*[block(in_channels if k == 0 else channels) for k in range(n)])
            for n in (1, 2, 3))
        self.predictor = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits ``[N, num_classes, 4 * H(P3) * 2, ...]``, i.e. at the (padded) input size."""
        x = self.scale_heads[0](features[0])
        for head, f in zip(self.scale_heads[1:], features[1:]):
            x = x + head(f)
        return F.interpolate(self.predictor(x), scale_factor=4, mode="bilinear",
                             align_corners=False)
