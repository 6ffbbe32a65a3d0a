"""Anchors at each FPN level's true stride (``model.detection``) and 32-padding through the model:
the anchors are torchvision's where torchvision's are right (padded sizes that are multiples of
128), sit on the level's stride everywhere else, and runs padded to 128 keep their outputs."""

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from spatialflow.config import load_config
from spatialflow.data.categories import CategoryMap
from spatialflow.data.synthetic import SYNTHETIC_CATEGORIES
from spatialflow.model import build_model
from spatialflow.model.detection import LEVEL_STRIDES, anchor_generator
from spatialflow.model.spatialflow import SpatialFlow

CATS = CategoryMap.from_coco(SYNTHETIC_CATEGORIES)
SIZES = (32, 64, 128, 256, 512)


def level_shapes(h, w):
    """P3-P7 grid sizes of an ``h x w`` batch as the backbone makes them: every stride-2 layer
    rounds up (ResNet's stem and stages, then P6 and P7's 3x3 stride-2 convs)."""
    shapes = []
    for k in range(3, 8):
        shapes.append((-(-h // 2 ** k), -(-w // 2 ** k)))
    return shapes


def anchors_of(generator, h, w, n=2):
    maps = [torch.zeros(n, 1, gh, gw) for gh, gw in level_shapes(h, w)]
    return generator(ImageList(torch.zeros(n, 3, h, w), [(h, w)] * n), maps), maps


def torchvision_generator(sizes=SIZES):
    """What SpatialFlow used before: torchvision's generator, strides from the padded size."""
    scales = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in sizes)
    return AnchorGenerator(scales, ((0.5, 1.0, 2.0),) * len(sizes))


@pytest.mark.parametrize("h, w", [(128, 128), (256, 384), (896, 1152)])
def test_anchors_are_torchvisions_at_multiples_of_128(h, w):
    ours, _ = anchors_of(anchor_generator(SIZES), h, w)
    theirs, _ = anchors_of(torchvision_generator(), h, w)
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("h, w", [(800, 1088), (224, 288), (160, 96)])
def test_anchors_sit_at_each_levels_true_stride(h, w):
    generator = anchor_generator(SIZES)
    (anchors,), _ = anchors_of(generator, h, w, n=1)
    shapes = level_shapes(h, w)
    per_level = [9 * gh * gw for gh, gw in shapes]
    assert anchors.shape == (sum(per_level), 4)
    for level, stride, (gh, gw), base in zip(anchors.split(per_level), LEVEL_STRIDES, shapes,
                                             generator.cell_anchors):
        grid = level.view(gh, gw, 9, 4)
        cx, cy = (grid[..., 0] + grid[..., 2]) / 2, (grid[..., 1] + grid[..., 3]) / 2
        assert torch.equal(cx, (torch.arange(gw) * stride).float().view(1, gw, 1).expand_as(cx))
        assert torch.equal(cy, (torch.arange(gh) * stride).float().view(gh, 1, 1).expand_as(cy))
        # each cell holds the level's 9 base anchors, shifted
        assert torch.equal(grid[0, 0], base)
        assert torch.equal(grid[-1, -1] - grid[0, 0], torch.tensor(
            [(gw - 1) * stride, (gh - 1) * stride] * 2, dtype=torch.float32).expand(9, 4))


def test_torchvisions_strides_drift_at_32_padding():
    """The fault the true strides remove: at 800 x 1088 torchvision puts P6's anchors 61 px
    apart (800 // 13), not 64, so its last P6 row sits 36 px above its features' centre."""
    (theirs,), _ = anchors_of(torchvision_generator(), 800, 1088, n=1)
    (ours,), _ = anchors_of(anchor_generator(SIZES), 800, 1088, n=1)
    per_level = [9 * gh * gw for gh, gw in level_shapes(800, 1088)]
    p6_theirs, p6_ours = theirs.split(per_level)[3], ours.split(per_level)[3]
    assert float(p6_theirs[-1, 3] - p6_ours[-1, 3]) == (61 - 64) * 12   # 13 rows: 12 steps


def tiny(*overrides):
    torch.manual_seed(0)
    return build_model(load_config("tiny-cpu", list(overrides)), CATS)


def toy(h, w, n=2):
    g = torch.Generator().manual_seed(3)
    images, targets = [], []
    for i in range(n):
        sem = torch.zeros(h, w, dtype=torch.int64)
        mask = torch.zeros(1, h, w, dtype=torch.uint8)
        mask[0, 20:60, 30 + i:80] = 1
        sem[mask[0].bool()] = CATS.other_index
        images.append(torch.rand(3, h, w, generator=g))
        targets.append({"boxes": torch.tensor([[30.0 + i, 20, 80, 60]]),
                        "labels": torch.tensor([1]), "masks": mask, "sem_seg": sem})
    return images, targets


def test_model_pads_to_32_and_every_map_agrees():
    """A 200 x 150 and a 160 x 224 image: one 224 x 224 batch (not 256 x 256), P3-P7 at 28,
    14, 7, 4 and 2 cells, the stuff logits at the padded size, and training and inference
    both run on it."""
    model = tiny()
    assert model.size_divisibility == 32
    images = [torch.rand(3, 200, 150), torch.rand(3, 160, 224)]
    with torch.no_grad():
        batch, feats, towers = model.eval().features(images)
        assert batch.tensors.shape == (2, 3, 224, 224)
        assert [tuple(f.shape[-2:]) for f in feats] == [(28, 28), (14, 14), (7, 7), (4, 4),
                                                        (2, 2)]
        assert model.stuff_head(towers["stuff"]).shape[-2:] == (224, 224)
        out = model(images)
    assert [tuple(o["sem_seg"].shape) for o in out] == [(200, 150), (160, 224)]
    ims, targets = toy(160, 96)                            # 160 x 96: no padding at all
    losses = model.train()(ims, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    ims, targets = toy(100, 120)                           # padded to 128 x 128
    losses = model.train()(ims, targets)
    assert all(torch.isfinite(v) for v in losses.values())


def test_runs_padded_to_128_keep_their_outputs(tmp_path):
    """A run trained before the anchors took their true strides has
    ``data.size_divisibility: 128`` in its config: it is built padding to 128, its weights
    load (anchors hold no state) and it gives exactly the outputs of torchvision's anchors."""
    path = tmp_path / "config.yaml"
    path.write_text("preset: tiny-cpu\ndata: {size_divisibility: 128}\n")
    torch.manual_seed(0)
    model = build_model(load_config(path), CATS).eval()
    model.score_thresh = 0.0                                # all 100 detections
    assert model.size_divisibility == 128
    assert not [k for k in model.state_dict() if "anchor" in k]
    image = torch.rand(3, 100, 150)                         # padded to 128 x 256
    with torch.no_grad():
        ours = model([image])[0]
        model.anchor_generator = torchvision_generator(load_config("tiny-cpu").model.anchor_sizes)
        before = model([image])[0]
    assert set(ours) == set(before)
    for key in before:
        assert torch.equal(ours[key], before[key]), key


def test_padding_must_be_a_multiple_of_32():
    with pytest.raises(ValueError, match="multiple of 32"):
        SpatialFlow(tiny().backbone, tiny().subnets, CATS.num_things, CATS.num_sem_classes,
                    size_divisibility=48)
