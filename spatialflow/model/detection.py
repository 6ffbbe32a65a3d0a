"""RetinaNet's anchors for SpatialFlow, placed at each FPN level's true stride.

torchvision's :class:`~torchvision.models.detection.anchor_utils.AnchorGenerator` derives a
level's stride from ``padded_size // feature_size``. That is the level's stride only when the
padded size is a multiple of the coarsest stride (128, P7's). At a 32-padded size it is not: an
800x1088 batch gives a 13x17 P6 and 800 // 13 = 61, not 64, so the P6 and P7 anchors drift
away from the pixels their features see (torchvision's own RetinaNet has this at COCO sizes).
:class:`TrueStrideAnchorGenerator` is handed the strides instead, so images need only be padded
to a multiple of 32 (``config.PAD_MULTIPLE``: P5's stride, which the stuff head needs to sum
P3-P5 at 1/4 scale), as in torchvision's RetinaNet and detectron2. On sizes that are multiples of 128 its anchors are
torchvision's, bit for bit.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

#: the strides of P3-P7 in input pixels
LEVEL_STRIDES = (8, 16, 32, 64, 128)


class TrueStrideAnchorGenerator(AnchorGenerator):
    """torchvision's ``AnchorGenerator`` with level ``k``'s anchors centred on multiples of
    ``strides[k]``, whatever the padded image size.

    Args:
        sizes: per level, the anchor sizes (as ``AnchorGenerator``).
        aspect_ratios: per level, the aspect ratios (as ``AnchorGenerator``).
        strides: per level, its stride in input pixels (default P3-P7: 8 ... 128).
    """

    def __init__(self, sizes: Sequence[Sequence[int]], aspect_ratios: Sequence[Sequence[float]],
                 strides: Sequence[int] = LEVEL_STRIDES):
        super().__init__(tuple(map(tuple, sizes)), tuple(map(tuple, aspect_ratios)))
        if len(strides) != len(self.sizes):
            raise ValueError(f"{len(strides)} strides for {len(self.sizes)} levels of anchors")
        self.strides = tuple(int(s) for s in strides)

    def forward(self, image_list: ImageList, feature_maps: List[torch.Tensor]) -> List[torch.Tensor]:
        """Per image, the anchors of all levels (``float[A,4]``, xyxy, in the dtype of the
        feature maps), level after level, each level's grid row by row."""
        if len(feature_maps) != len(self.strides):
            raise ValueError(f"{len(feature_maps)} feature maps for {len(self.strides)} strides")
        grid_sizes = [f.shape[-2:] for f in feature_maps]
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        self.set_cell_anchors(dtype, device)
        levels = self.grid_anchors(grid_sizes, strides)
        return [torch.cat(levels) for _ in range(len(image_list.image_sizes))]


def anchor_generator(sizes: Sequence[int],
                     strides: Sequence[int] = LEVEL_STRIDES) -> TrueStrideAnchorGenerator:
    """RetinaNet anchors: 3 octave scales x 3 aspect ratios per level, base ``sizes`` on P3-P7,
    at the levels' true ``strides``."""
    scales = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in sizes)
    return TrueStrideAnchorGenerator(scales, ((0.5, 1.0, 2.0),) * len(sizes), strides)
