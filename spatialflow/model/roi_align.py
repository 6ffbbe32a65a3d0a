"""RoIAlign as two matrix products per RoI: torchvision's values, faster on a CPU's small maps.

torchvision's ``roi_align`` (``aligned=False``, a fixed ``sampling_ratio``) averages, for each
output bin, ``g x g`` bilinear samples of the feature map. Bilinear interpolation at a point
``(y, x)`` is a product of a weight over the rows (from ``y`` alone) and one over the columns
(from ``x`` alone), the sample grid of a RoI is a product of ``g`` rows per bin row and ``g``
columns per bin column, and a sample outside the map (``y < -1``, ``y > H``, ``x < -1`` or
``x > W``: zero) is zero when either of its coordinates is out. So the whole RoIAlign of one
RoI is ``Wy @ F @ Wx^T`` per channel, ``Wy`` (``[P_h, H]``) and ``Wx`` (``[P_w, W]``) holding the
averaged bilinear weights of the bins' sample rows and columns, built with torchvision's own
rules (samples clamped at the border, the last row and column repeated). Forward and backward
are then batched matrix products instead of torchvision's per-sample loops on a CPU (whose
backward is a fifth of a ``tiny-cpu`` training step): measured in
``benchmarks/bench_roi_align.py``. It needs the map of a level in memory once per RoI, so it is
used for small maps on a CPU only (:data:`MAX_PIXELS`); elsewhere torchvision's kernel runs.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

#: the separable form runs on feature maps of at most this many pixels (H x W), on a CPU;
#: larger maps go to torchvision's kernel (its cost does not grow with the map's size)
MAX_PIXELS = 48 * 48


def bin_weights(start: Tensor, length: Tensor, size: int, bins: int, samples: int) -> Tensor:
    """``float[R, bins, size]``: per RoI, the bilinear weights over one axis of a map of
    ``size`` cells of each bin's ``samples`` sample points, averaged (torchvision's RoIAlign
    rules: a point below -1 or above ``size`` weighs nothing, one in ``[-1, 0]`` is read at 0,
    one past the last cell at the last cell). ``start`` and ``length``: the RoIs' extent on the
    axis, in cells (``float[R]``)."""
    r = start.shape[0]
    step = (length / bins).view(r, 1, 1)
    p = torch.arange(bins, dtype=start.dtype, device=start.device).view(1, bins, 1)
    i = torch.arange(samples, dtype=start.dtype, device=start.device).view(1, 1, samples)
    t = start.view(r, 1, 1) + p * step + (i + 0.5) * step / samples  # torchvision's order
    inside = ((t >= -1.0) & (t <= size)).to(start.dtype)
    t = t.clamp(min=0)
    low = t.floor().to(torch.int64)
    last = low >= size - 1
    low = low.clamp(max=size - 1)
    t = torch.where(last, low.to(t.dtype), t)
    high = (low + 1).clamp(max=size - 1)
    frac = t - low
    index = torch.cat([low, high], -1).view(r * bins, 2 * samples)
    value = (torch.cat([1 - frac, frac], -1) * torch.cat([inside, inside], -1)
             / samples).view(r * bins, 2 * samples)
    weights = torch.zeros(r * bins, size, dtype=start.dtype, device=start.device)
    return weights.scatter_add_(1, index, value).view(r, bins, size)


def roi_align_separable(input: Tensor, rois: Tensor, output_size: Tuple[int, int],
                        spatial_scale: float, sampling_ratio: int,
                        aligned: bool = False) -> Tensor:
    """``torchvision.ops.roi_align(input, rois, output_size, spatial_scale, sampling_ratio,
    aligned)`` for ``rois`` as ``float[K, 5]`` (batch index, x1, y1, x2, y2) and a
    ``sampling_ratio > 0``, computed as ``Wy @ F @ Wx^T`` per RoI (:func:`bin_weights`), in
    float32 whatever the autocast (as torchvision's kernel); the result in ``input``'s dtype.
    Differentiable in ``input`` (not in ``rois``, as torchvision's), and deterministic: the
    same inputs give the same bits, wherever they sit in memory."""
    if sampling_ratio <= 0:
        raise ValueError("the separable RoIAlign needs a fixed sampling_ratio > 0")
    ph, pw = output_size
    offset = 0.5 if aligned else 0.0
    with torch.autocast(input.device.type, enabled=False):
        r = rois.detach().float()
        x0 = r[:, 1] * spatial_scale - offset
        y0 = r[:, 2] * spatial_scale - offset
        w = r[:, 3] * spatial_scale - offset - x0
        h = r[:, 4] * spatial_scale - offset - y0
        if not aligned:  # torchvision: RoIs at least one cell wide and tall
            w, h = w.clamp(min=1.0), h.clamp(min=1.0)
        n, c, height, width = input.shape
        wy = bin_weights(y0, h, height, ph, sampling_ratio)        # [K, ph, H]
        wx = bin_weights(x0, w, width, pw, sampling_ratio)         # [K, pw, W]
        batch = r[:, 0].long()
        order = torch.argsort(batch, stable=True)
        counts = torch.bincount(batch, minlength=n).tolist()
        wy, wx = wy[order], wx[order]
        parts, at = [], 0
        for b, k in enumerate(counts):  # per image: its map read in place (no gather, whose
            if k == 0:                  # backward would add into the map in any order)
                continue
            f = input[b].float().reshape(c * height, width)
            cols = f @ wx[at:at + k].permute(2, 0, 1).reshape(width, k * pw)  # [C*H, k*pw]
            cols = cols.view(c, height, k, pw).permute(2, 1, 0, 3).reshape(k, height, c * pw)
            parts.append(torch.bmm(wy[at:at + k], cols).view(k, ph, c, pw).transpose(1, 2))
            at += k
        if not parts:
            return input.new_zeros((0, c, ph, pw))
        out = torch.cat(parts)[torch.argsort(order)]  # back to the RoIs' order
        return out.contiguous().to(input.dtype)


class SeparableMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's :class:`~torchvision.ops.MultiScaleRoIAlign` (the same levels for the same
    boxes, the same scales, the same values) whose per-level RoIAlign is
    :func:`roi_align_separable` where that is faster: on a CPU, for maps of at most
    :data:`MAX_PIXELS` pixels; torchvision's kernel elsewhere."""

    def _align(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        if feature.device.type == "cpu" and feature.shape[-2] * feature.shape[-1] <= MAX_PIXELS:
            return roi_align_separable(feature, rois, self.output_size, scale,
                                       self.sampling_ratio)
        return roi_align(feature, rois, self.output_size, scale, self.sampling_ratio)

    def forward(self, x: Dict[str, Tensor], boxes: List[Tensor],
                image_shapes: List[Tuple[int, int]]) -> Tensor:
        """As :meth:`MultiScaleRoIAlign.forward`: ``[K, C, P_h, P_w]`` for the boxes of all
        images, in order."""
        features = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(features, image_shapes,
                                                         self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        if len(features) == 1:
            return self._align(features[0], rois, self.scales[0])
        levels = self.map_levels(boxes)
        first = features[0]
        result = first.new_zeros((len(rois), first.shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            index = torch.where(levels == level)[0]
            if len(index):
                result[index] = self._align(feature, rois[index], scale).to(result.dtype)
        return result

