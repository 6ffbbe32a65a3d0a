"""The separable RoIAlign gives torchvision's values and gradients (it replaces torchvision's
kernel on a CPU's small maps, so the thing head must not see a difference)."""

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from spatialflow.model.roi_align import SeparableMultiScaleRoIAlign, roi_align_separable


def _rois(n, images, extent, generator):
    """Boxes of every kind: inside, across the border, outside, thinner than a cell."""
    xy = torch.rand(n, 2, generator=generator) * (extent + 16) - 8
    wh = torch.rand(n, 2, generator=generator) * extent * 0.6
    wh[: n // 8] *= 0.01  # degenerate: narrower than one cell
    batch = torch.randint(0, images, (n, 1), generator=generator).float()
    return torch.cat([batch, xy, xy + wh], 1)


@pytest.mark.parametrize("size,scale,ratio,aligned", [
    ((16, 16), 1 / 8, 2, False), ((8, 12), 1 / 16, 2, False), ((5, 7), 1 / 32, 1, False),
    ((16, 16), 1 / 8, 3, True), ((1, 1), 1 / 128, 2, False)])
def test_separable_roi_align_equals_torchvision(size, scale, ratio, aligned):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, *size, generator=g, dtype=torch.float64).float().requires_grad_()
    rois = _rois(64, 3, size[1] / scale, g)
    want = roi_align(x, rois, (7, 6), scale, ratio, aligned)
    got = roi_align_separable(x, rois, (7, 6), scale, ratio, aligned)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    grad_out = torch.randn(want.shape, generator=g)
    want_grad, = torch.autograd.grad(want, x, grad_out)
    got_grad, = torch.autograd.grad(got, x, grad_out)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-5)
    # the channels_last maps of inference on a CPU
    last = x.detach().contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(roi_align_separable(last, rois, (7, 6), scale, ratio, aligned),
                               want.detach(), rtol=1e-5, atol=1e-6)


def test_separable_roi_align_refuses_an_adaptive_sampling_ratio():
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align_separable(torch.zeros(1, 1, 4, 4), torch.zeros(1, 5), (2, 2), 1.0, 0)


def test_multiscale_equals_torchvision_in_autocast_and_empty_levels():
    """The same level for each box, the same values (bfloat16 autocast included: both compute
    in float32 and return the input's dtype) and an empty image or level."""
    g = torch.Generator().manual_seed(1)
    feats = OrderedDict((f"p{k}", torch.randn(2, 4, 128 // 2 ** k, 96 // 2 ** k, generator=g))
                        for k in (3, 4, 5))
    boxes = [torch.tensor([[2.0, 3.0, 40.0, 50.0], [0.0, 0.0, 127.0, 95.0],
                           [10.0, 10.0, 11.0, 12.0]]), torch.zeros(0, 4)]
    sizes = [(128, 96), (120, 90)]
    ours = SeparableMultiScaleRoIAlign(["p3", "p4", "p5"], 14, 2,
                                       canonical_scale=28, canonical_level=4)
    theirs = MultiScaleRoIAlign(["p3", "p4", "p5"], 14, 2, canonical_scale=28, canonical_level=4)
    torch.testing.assert_close(ours(feats, boxes, sizes), theirs(feats, boxes, sizes),
                               rtol=1e-5, atol=1e-6)
    assert len(set(ours.map_levels(boxes).tolist())) == 3  # the boxes span the three levels
    half = OrderedDict((k, v.bfloat16()) for k, v in feats.items())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = ours(half, boxes, sizes), theirs(half, boxes, sizes)
    assert a.dtype == b.dtype == torch.bfloat16
    torch.testing.assert_close(a.float(), b.float(), rtol=1e-2, atol=1e-2)


def test_separable_roi_align_is_deterministic():
    """The same bits for the same inputs wherever they sit in memory (a resumed run must
    continue exactly: a gather's backward, which adds into the map in any order, would not)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 8, 16, 16, generator=g)
    rois = _rois(60, 4, 128, g)
    grad_out = torch.randn(60, 8, 14, 14, generator=g)

    def run():
        leaf = x.clone().requires_grad_()
        out = roi_align_separable(leaf, rois, (14, 14), 1 / 8, 2)
        return out.detach(), torch.autograd.grad(out, leaf, grad_out)[0]

    first = run()
    junk = []
    for k in range(4):
        junk.append(torch.empty(997 * k + 3))  # move the next allocations elsewhere
        again = run()
        assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])
