"""Joint transforms of an image and its panoptic target (paper IV-B-1 training augmentation).

Every transform is a callable ``(image, target) -> (image, target)`` where ``image`` is
``float[3,H,W]`` and ``target`` is the dict of :class:`~spatialflow.data.CocoPanopticDataset`.
Geometry is done by torchvision's ``transforms.v2.functional`` (antialiased bilinear for the
image, nearest for masks and ``sem_seg``); after every geometric step the boxes are recomputed
from the masks and instances that no longer have a pixel are dropped, so image, boxes, masks
and ``sem_seg`` always agree. Randomness comes from torch's global generator (seeded per
DataLoader worker by PyTorch).

:class:`Compose` checks its input with :func:`check_target` first, so a malformed image or
target fails up front with a ``ValueError`` naming the field (the single transforms assume
valid input).
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Tuple, Union

import torch
from torchvision.ops import masks_to_boxes
from torchvision.transforms.v2 import functional as F

# Per-instance fields; the crowd group has the same fields with a ``crowd_`` prefix.
INSTANCE_FIELDS = ("boxes", "labels", "masks", "segment_ids")
INSTANCE_GROUPS = ("", "crowd_")
SPATIAL_MASKS = ("masks", "crowd_masks")


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """``float[N,4]`` xyxy boxes of ``masks[N,H,W]``, right/bottom edges exclusive (COCO's
    ``x + w``), so a one-pixel instance has a 1x1 box."""
    if masks.shape[0] == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    boxes = masks_to_boxes(masks.bool()).to(torch.float32)
    boxes[:, 2:] += 1.0
    return boxes


def _shape(t) -> list:
    return list(t.shape)


def check_target(image, target) -> None:
    """Check that ``image`` and ``target`` fit the transforms' contract; raise ``ValueError``
    naming the field and the fault otherwise.

    ``image`` must be a floating-point ``Tensor[3,H,W]`` with ``H, W >= 1``; ``target`` a dict
    whose ``sem_seg`` is an ``[H,W]`` tensor; for each instance group (``""`` and
    ``"crowd_"``) that has any of its fields, ``masks`` must be an ``[N,H,W]`` tensor,
    ``labels`` and ``segment_ids`` ``[N]`` and ``boxes`` ``[N,4]`` (those present); ``size``,
    if present, must be ``[H, W]``. The cost is a few shape comparisons (no pixel is read).
    """
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"image must be a torch.Tensor [3,H,W], got {type(image).__name__}")
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be [3,H,W] (RGB, channels first), got shape "
                         f"{_shape(image)}")
    if not image.is_floating_point():
        raise ValueError(f"image must be floating point (values in [0, 1]), got {image.dtype}")
    h, w = image.shape[-2:]
    if h < 1 or w < 1:
        raise ValueError(f"image is empty: shape {_shape(image)}")
    if not isinstance(target, Mapping):
        raise ValueError(f"target must be a dict, got {type(target).__name__}")
    sem = target.get("sem_seg")
    if not isinstance(sem, torch.Tensor):
        raise ValueError("target['sem_seg'] is missing or not a tensor")
    if tuple(sem.shape) != (h, w):
        raise ValueError(f"target['sem_seg'] is {_shape(sem)}, the image is {h}x{w} "
                         f"(expected [{h}, {w}])")
    for prefix in INSTANCE_GROUPS:
        present = [prefix + f for f in INSTANCE_FIELDS if prefix + f in target]
        if not present:
            continue
        key = prefix + "masks"
        masks = target.get(key)
        if not isinstance(masks, torch.Tensor):
            raise ValueError(f"target['{key}'] is missing or not a tensor, but the target has "
                             f"{', '.join(present)}")
        if masks.dim() != 3 or tuple(masks.shape[1:]) != (h, w):
            raise ValueError(f"target['{key}'] is {_shape(masks)}, expected [N, {h}, {w}] "
                             f"(the image is {h}x{w})")
        n = masks.shape[0]
        for name, tail in (("labels", ()), ("segment_ids", ()), ("boxes", (4,))):
            key = prefix + name
            if key not in target:
                continue
            t = target[key]
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != (n, *tail):
                got = _shape(t) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"target['{key}'] is {got}, expected {[n, *tail]} "
                                 f"(one per mask of target['{prefix}masks'])")
    size = target.get("size")
    if size is not None:
        try:
            got = [int(v) for v in torch.as_tensor(size).flatten()]
        except (TypeError, ValueError, RuntimeError):
            got = size
        if got != [h, w]:
            raise ValueError(f"target['size'] is {got!r}, the image is {h}x{w} (expected "
                             f"[{h}, {w}])")


def sanitize(target: dict) -> dict:
    """Recompute boxes from masks and drop instances (normal and crowd) without pixels."""
    for prefix in INSTANCE_GROUPS:
        masks = target.get(prefix + "masks")
        if masks is None:
            continue
        keep = masks.flatten(1).any(dim=1).bool()
        for name in INSTANCE_FIELDS:
            key = prefix + name
            if key in target and name != "boxes":
                target[key] = target[key][keep]
        target[prefix + "boxes"] = boxes_from_masks(target[prefix + "masks"])
    target["size"] = torch.tensor(target["sem_seg"].shape[-2:], dtype=torch.int64)
    return target


def _apply(image, target, image_fn, mask_fn):
    """Apply a geometric op to the image, every instance mask stack and ``sem_seg``."""
    image = image_fn(image)
    target = dict(target)
    for key in SPATIAL_MASKS:
        if key in target:
            target[key] = mask_fn(target[key])
    target["sem_seg"] = mask_fn(target["sem_seg"][None])[0]
    return image, sanitize(target)


def resize(image: torch.Tensor, target: dict, size: Tuple[int, int]):
    """Resize image and target to ``size = (height, width)`` (as they are when they have that
    size already)."""
    size = [int(size[0]), int(size[1])]
    if list(image.shape[-2:]) == size:
        return image, target
    return _apply(
        image,
        target,
        lambda im: F.resize_image(im, size, antialias=True),
        lambda m: F.resize_mask(m, size) if m.shape[0] else m.new_zeros((0, *size)),
    )


def shortest_edge_size(height: int, width: int, short: float, max_size: Optional[int]):
    """Output ``(h, w)`` when the shorter edge goes to ``short`` and the longer one stays
    ``<= max_size`` (torchvision / detectron2 rule). Both are at least 1, even for extreme
    aspect ratios (a 1 x 100000 image with ``max_size`` 1333 gives ``(1, 1333)``).

    Raises ``ValueError`` if ``height``, ``width``, ``short`` or ``max_size`` is not positive.
    """
    if not (height >= 1 and width >= 1):
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if not short > 0:
        raise ValueError(f"short edge must be positive, got {short!r}")
    if max_size is not None and not max_size >= 1:
        raise ValueError(f"max_size must be >= 1 or None, got {max_size!r}")
    scale = short / min(height, width)
    if max_size is not None and max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, image, target):
        """Apply the transforms; the input is checked first (:func:`check_target`, a
        ``ValueError`` naming the field when it is malformed)."""
        check_target(image, target)
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self):
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


class ResizeShortestEdge:
    """Resize so the shorter edge is ``short_edge`` (longer edge capped at ``max_size``).

    ``short_edge`` may be one size, a list to choose from (``sample="choice"``) or a
    ``(min, max)`` range sampled uniformly (``sample="range"``: COCO multi-scale [400, 1400]).
    """

    def __init__(self, short_edge: Union[int, Sequence[int]], max_size: Optional[int] = None,
                 sample: str = "choice"):
        sizes = [short_edge] if isinstance(short_edge, (int, float)) else list(short_edge)
        if not sizes or any(s <= 0 for s in sizes):
            raise ValueError(f"short_edge must be positive sizes, got {short_edge!r}")
        if sample not in ("choice", "range"):
            raise ValueError(f"sample must be 'choice' or 'range', got {sample!r}")
        if sample == "range" and (len(sizes) != 2 or sizes[0] > sizes[1]):
            raise ValueError(f"sample='range' needs (min, max) with min <= max, got "
                             f"{short_edge!r}")
        if max_size is not None and not max_size >= 1:
            raise ValueError(f"max_size must be >= 1 or None, got {max_size!r}")
        self.sizes, self.max_size, self.sample = sizes, max_size, sample

    def __call__(self, image, target):
        if self.sample == "range":
            lo, hi = int(self.sizes[0]), int(self.sizes[1])
            short = int(torch.randint(lo, hi + 1, ()).item())
        else:
            short = self.sizes[int(torch.randint(len(self.sizes), ()).item())]
        h, w = image.shape[-2:]
        return resize(image, target, shortest_edge_size(h, w, short, self.max_size))

    def __repr__(self):
        return f"ResizeShortestEdge({self.sizes}, max_size={self.max_size}, sample={self.sample!r})"


class RandomScale:
    """Rescale by a factor drawn uniformly from ``[min_scale, max_scale]`` (Cityscapes 0.5-2.0)."""

    def __init__(self, min_scale: float, max_scale: float):
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale, self.max_scale = min_scale, max_scale

    def __call__(self, image, target):
        s = self.min_scale + (self.max_scale - self.min_scale) * torch.rand(()).item()
        h, w = image.shape[-2:]
        return resize(image, target, (max(1, round(h * s)), max(1, round(w * s))))

    def __repr__(self):
        return f"RandomScale({self.min_scale}, {self.max_scale})"


class RandomCrop:
    """Crop a random ``(height, width)`` window (clipped to the image; padding is the collate's
    job). Instances that leave the window are dropped, boxes are recomputed from the masks."""

    def __init__(self, size: Union[int, Tuple[int, int]]):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        if min(self.size) <= 0:
            raise ValueError(f"crop size must be positive, got {size!r}")

    def __call__(self, image, target):
        h, w = image.shape[-2:]
        ch, cw = min(self.size[0], h), min(self.size[1], w)
        top = int(torch.randint(h - ch + 1, ()).item())
        left = int(torch.randint(w - cw + 1, ()).item())
        return _apply(
            image,
            target,
            lambda im: F.crop_image(im, top, left, ch, cw),
            lambda m: F.crop_mask(m, top, left, ch, cw),
        )

    def __repr__(self):
        return f"RandomCrop({self.size})"


class RandomHorizontalFlip:
    """Flip left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, target):
        if torch.rand(()).item() >= self.p:
            return image, target
        return _apply(image, target, F.horizontal_flip_image, F.horizontal_flip_mask)

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


def pad_to_divisible(height: int, width: int, divisor: int) -> Tuple[int, int]:
    """Smallest ``(H, W) >= (height, width)`` divisible by ``divisor``."""
    return (int(math.ceil(height / divisor) * divisor), int(math.ceil(width / divisor) * divisor))


def build_transforms(min_size: Sequence[int] = (800,), max_size: Optional[int] = 1333,
                     size_sample: str = "choice", scale_range: Optional[Sequence[float]] = None,
                     crop_size: Optional[Sequence[int]] = None, flip: bool = True):
    """The training pipeline of the paper: resize shorter edge (multi-scale choice or range),
    optional random scale (Cityscapes 0.5-2.0x), optional random crop, horizontal flip."""
    ts = [ResizeShortestEdge(min_size, max_size, size_sample)]
    if scale_range is not None:
        ts.append(RandomScale(*scale_range))
    if crop_size is not None:
        ts.append(RandomCrop(tuple(crop_size)))
    if flip:
        ts.append(RandomHorizontalFlip(0.5))
    return Compose(ts)


__all__ = [
    "Compose", "ResizeShortestEdge", "RandomScale", "RandomCrop", "RandomHorizontalFlip",
    "build_transforms", "boxes_from_masks", "sanitize", "resize", "pad_to_divisible",
    "shortest_edge_size", "check_target",
]
