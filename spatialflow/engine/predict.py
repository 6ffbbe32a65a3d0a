"""Inference over data sets and images: resize to the test size, run the model, merge."""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
from torchvision.transforms.v2 import functional as F

from spatialflow.config import InferConfig
from spatialflow.data.transforms import shortest_edge_size
from spatialflow.panoptic import merge_outputs


def merge_kwargs(infer: InferConfig) -> dict:
    """The merge thresholds of an :class:`InferConfig` as :func:`spatialflow.panoptic.merge`
    keyword arguments."""
    return dict(mask_conf=infer.mask_conf, overlap=infer.overlap, stuff_area=infer.stuff_area,
                box_fill=infer.box_fill, box_fill_enabled=infer.box_fill_enabled)


def prepare_image(image: torch.Tensor, test_size: int, max_size: Optional[int]) -> torch.Tensor:
    """Resize a ``float[3,H,W]`` image so its shorter edge is ``test_size`` (longer edge capped
    at ``max_size``), as in training."""
    h, w = image.shape[-2:]
    size = shortest_edge_size(h, w, test_size, max_size)
    if size == (h, w):
        return image
    return F.resize_image(image, list(size), antialias=True)


@torch.inference_mode()
def predict_image(model, image: torch.Tensor, categories, infer: InferConfig = InferConfig(),
                  test_size: int = 800, max_size: Optional[int] = 1333,
                  device: str = "cpu") -> Tuple[dict, "object", list]:
    """Run the model on one ``float[3,H,W]`` image (values in [0, 1]) and merge: returns
    ``(raw output at the original size, panoptic id map, segments_info)``."""
    model.eval()
    h, w = image.shape[-2:]
    x = prepare_image(image, test_size, max_size).to(device)
    out = model([x], output_sizes=[(h, w)])[0]
    out = {k: v.cpu() for k, v in out.items()}
    pan, segments = merge_outputs(out, categories, **merge_kwargs(infer))
    return out, pan, segments


def predict_dataset(model, dataset, infer: InferConfig = InferConfig(), test_size: int = 800,
                    max_size: Optional[int] = 1333, device: str = "cpu",
                    indices=None, progress: bool = True) -> Iterator[tuple]:
    """Yield ``(index, record, raw output, pan, segments_info)`` for the items of a
    :class:`~spatialflow.data.CocoPanopticDataset` (read without its transforms), at their
    original size."""
    from tqdm import tqdm

    indices = range(len(dataset)) if indices is None else list(indices)
    for idx in tqdm(indices, desc="predict", unit="img", disable=not progress):
        image, _, rec = dataset.load(idx)
        tensor = torch.from_numpy(image).permute(2, 0, 1).float().div_(255)
        out, pan, segments = predict_image(model, tensor, dataset.categories, infer, test_size,
                                           max_size, device)
        yield idx, rec, out, pan, segments
