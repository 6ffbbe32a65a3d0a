"""The machine's convolution rate: one 3x3 256->256 convolution at the P3 shape of an image,
in NCHW and channels_last, in float32 or under autocast; the yardstick of the inference and
training GFLOP/s."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from spatialflow.benchmark.timing import image_shape, median_time
from spatialflow.engine.train import autocast
from spatialflow.model.summary import count_flops


def conv_peak(height: int, width: int, channels: int = 256, repeat: int = 5,
              channels_last: bool = False, device: str = "cpu",
              dtype: Optional[torch.dtype] = None) -> dict:
    """This machine's rate on one 3x3 ``channels`` -> ``channels`` convolution of a
    ``[1, channels, height, width]`` input (e.g. P3 of an image), in float32 or under autocast
    to ``dtype``: ``{"gflops", "seconds", "gflop_per_s", "layout", "precision"}``."""
    conv = nn.Conv2d(channels, channels, 3, padding=1).to(device).eval()
    x = torch.randn(1, channels, height, width, device=device)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(
            memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device, dtype):
        flops = count_flops(lambda: conv(x))
        t = median_time(lambda: conv(x), repeat, 1, device)
    return {"layout": "channels_last" if channels_last else "NCHW", "shape": f"{height}x{width}",
            "precision": precision_name(dtype), "gflops": flops / 1e9,
            "seconds": t["median"], "gflop_per_s": flops / 1e9 / t["median"]}


def precision_name(dtype: Optional[torch.dtype]) -> str:
    """``"float32"``, or the autocast dtype's name (``"bfloat16"``, ``"float16"``)."""
    return "float32" if dtype is None else str(dtype).replace("torch.", "")


def precision_dtype(name: str) -> Optional[torch.dtype]:
    """The autocast dtype of a :func:`precision_name` (``None`` for ``"float32"``)."""
    return None if name == "float32" else getattr(torch, name)


def p3_shape(short: int) -> Tuple[int, int]:
    """``(H, W)`` of P3 (stride 8) for the 4:3 image of shorter edge ``short``."""
    h, w = image_shape(short)
    return -(-h // 8), -(-w // 8)


def conv_rate(short: int = 800, repeat: int = 5, device: str = "cpu",
              dtype: Optional[torch.dtype] = None) -> dict:
    """The machine's convolution rate: :func:`conv_peak` at the P3 shape of a ``short`` px
    image (in float32 or under autocast to ``dtype``), the faster of NCHW and channels_last."""
    return max((conv_peak(*p3_shape(short), repeat=repeat, channels_last=cl, device=device,
                          dtype=dtype) for cl in (False, True)), key=lambda r: r["gflop_per_s"])
