"""The structures the model makes and the panoptic merge consumes (below both, so the model
never imports :mod:`spatialflow.panoptic`): instance masks kept inside their boxes
(:class:`BoxMasks`), the pasting of the thing head's 28x28 masks into their boxes, and the
stuff map."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks


@dataclass(frozen=True)
class BoxMasks:
    """Instance mask probabilities of one image kept inside their boxes: mask ``i`` is
    ``crops[i]`` (``float[h, w]``) with its top-left pixel at row, column ``origins[i]`` of an
    image of ``size = (H, W)``, and 0 elsewhere.

    What the thing head's 28x28 masks pasted into their boxes are
    (:func:`paste_mask_crops`) without the ``M x H x W`` zeros
    of the dense form: :func:`spatialflow.panoptic.merge` then reads each mask's box only. :meth:`dense` gives the
    ``float[M,1,H,W]`` tensor.

    Raises:
        ValueError: ``crops`` and ``origins`` of different lengths, a crop that is not 2-D, or
            one reaching outside the image (the message names it).
    """
    crops: Tuple[torch.Tensor, ...]
    origins: Tuple[Tuple[int, int], ...]
    size: Tuple[int, int]

    def __post_init__(self):
        h, w = (int(v) for v in self.size)
        object.__setattr__(self, "size", (h, w))
        object.__setattr__(self, "crops", tuple(self.crops))
        object.__setattr__(self, "origins", tuple((int(y), int(x)) for y, x in self.origins))
        if len(self.crops) != len(self.origins):
            raise ValueError(f"BoxMasks: {len(self.crops)} crops for {len(self.origins)} "
                             f"origins")
        for i, (crop, (y, x)) in enumerate(zip(self.crops, self.origins)):
            if crop.dim() != 2:
                raise ValueError(f"BoxMasks: crop {i} must be [h,w], got shape "
                                 f"{list(crop.shape)}")
            if y < 0 or x < 0 or y + crop.shape[0] > h or x + crop.shape[1] > w:
                raise ValueError(f"BoxMasks: crop {i} ({crop.shape[0]}x{crop.shape[1]} at row "
                                 f"{y}, column {x}) reaches outside the {h}x{w} image")

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def shape(self) -> torch.Size:
        """``(M, 1, H, W)``, the shape of :meth:`dense`."""
        return torch.Size((len(self), 1, *self.size))

    def dense(self) -> torch.Tensor:
        """``float[M,1,H,W]``: each crop written into a zero image."""
        dtype = self.crops[0].dtype if self.crops else torch.float32
        device = self.crops[0].device if self.crops else None
        out = torch.zeros(self.shape, dtype=dtype, device=device)
        for i, (crop, (y, x)) in enumerate(zip(self.crops, self.origins)):
            out[i, 0, y:y + crop.shape[0], x:x + crop.shape[1]] = crop
        return out

    def cpu(self) -> "BoxMasks":
        return BoxMasks(tuple(c.cpu() for c in self.crops), self.origins, self.size)


def paste_mask_crops(masks: torch.Tensor, boxes: torch.Tensor, image_size: Sequence[int],
                     padding: int = 1) -> BoxMasks:
    """Each ``[K,1,28,28]`` mask resized bilinearly into its (xyxy, in-image) box and kept as
    a crop of the image (:class:`BoxMasks`): the values of torchvision's
    ``paste_masks_in_image`` (whose box and padding handling it reuses) inside the boxes,
    without writing the zeros around them."""
    masks, scale = expand_masks(masks, padding=padding)
    boxes = expand_boxes(boxes, scale).to(torch.int64).tolist()
    im_h, im_w = (int(v) for v in image_size)
    crops, origins = [], []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        a0, a1, b0, b1 = max(x0, 0), min(x1 + 1, im_w), max(y0, 0), min(y1 + 1, im_h)
        if a1 <= a0 or b1 <= b0:  # a box outside the image: an empty crop
            crops.append(masks.new_zeros((0, 0)))
            origins.append((0, 0))
            continue
        size = (max(y1 - y0 + 1, 1), max(x1 - x0 + 1, 1))
        m = F.interpolate(masks[i:i + 1], size=size, mode="bilinear", align_corners=False)
        crops.append(m[0, 0, b0 - y0:b1 - y0, a0 - x0:a1 - x0])
        origins.append((b0, a0))
    return BoxMasks(tuple(crops), tuple(origins), (im_h, im_w))


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, image_size: Sequence[int],
                padding: int = 1) -> torch.Tensor:
    """``float[K,1,H,W]``: each ``[K,1,28,28]`` mask resized bilinearly into its (xyxy,
    in-image) box, zero elsewhere. The values of torchvision's ``paste_masks_in_image``,
    written into one tensor instead of a zero image per mask stacked afterwards: half the
    memory traffic, about 2x faster for 100 masks (:func:`paste_mask_crops`, made dense)."""
    if len(masks) == 0:
        return masks.new_zeros((0, 1, *(int(v) for v in image_size)))
    return paste_mask_crops(masks, boxes, image_size, padding).dense()


def stuff_map(scores: torch.Tensor) -> torch.Tensor:
    """``long[H,W]``: per pixel, the index of the highest of ``scores`` ``[S+1,H,W]`` (stuff
    logits or probabilities; the first one on a tie, as ``argmax``, which is ~3x slower over
    the leading dimension)."""
    return scores.max(0).indices
