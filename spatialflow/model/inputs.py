"""The model's input handling: images batched into one padded tensor (a torchvision
``ImageList``) and training targets padded alike, so that padding is never trained as a class.
The model batches what it is given itself; :func:`collate_panoptic` is the same batching as a
DataLoader's ``collate_fn``."""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torchvision.models.detection.image_list import ImageList

from spatialflow.config import PAD_MULTIPLE
from spatialflow.data.categories import IGNORE_INDEX
from spatialflow.data.transforms import pad_to_divisible


def batch_images(images: Sequence[torch.Tensor],
                 size_divisibility: int = PAD_MULTIPLE) -> ImageList:
    """Zero-pad ``[3,H,W]`` images bottom/right to one size divisible by ``size_divisibility``
    (32 = the stride of P5, :data:`spatialflow.config.PAD_MULTIPLE`) and stack them as a torchvision ``ImageList`` whose
    ``image_sizes`` are the unpadded sizes."""
    max_h = max(int(im.shape[-2]) for im in images)
    max_w = max(int(im.shape[-1]) for im in images)
    ph, pw = pad_to_divisible(max_h, max_w, size_divisibility)
    tensor = images[0].new_zeros((len(images), images[0].shape[0], ph, pw))
    for i, im in enumerate(images):
        tensor[i, :, :im.shape[-2], :im.shape[-1]] = im
    return ImageList(tensor, [(int(im.shape[-2]), int(im.shape[-1])) for im in images])


def pad_target(target: dict, height: int, width: int) -> dict:
    """A copy of ``target`` with masks padded by 0 and ``sem_seg`` by 255 to ``(height, width)``,
    so padding is never trained as a class."""
    t = dict(target)
    h, w = t["sem_seg"].shape[-2:]
    if (h, w) == (height, width):
        return t
    t["sem_seg"] = F.pad(t["sem_seg"], (0, width - w, 0, height - h), value=IGNORE_INDEX)
    for key in ("masks", "crowd_masks"):
        if key in t:
            t[key] = F.pad(t[key], (0, width - w, 0, height - h), value=0)
    return t


def collate_panoptic(batch: Sequence, size_divisibility: int = PAD_MULTIPLE):
    """Batch ``(image, target)`` pairs for the model: images as :func:`batch_images`, targets
    padded alike (:func:`pad_target`)."""
    images, targets = zip(*batch)
    image_list = batch_images(images, size_divisibility)
    ph, pw = image_list.tensors.shape[-2:]
    return image_list, [pad_target(t, ph, pw) for t in targets]
