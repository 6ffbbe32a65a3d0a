"""Joint transforms keep image, boxes, masks and sem_seg consistent."""

import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spatialflow.data.categories import CategoryMap
from spatialflow.data.coco_panoptic import panoptic_to_target
from spatialflow.data.transforms import (Compose, RandomCrop, RandomHorizontalFlip, RandomScale,
                                         ResizeShortestEdge, boxes_from_masks, build_transforms,
                                         check_target, shortest_edge_size)
from conftest import TINY_CATEGORIES, tiny_scene

CM = CategoryMap.from_coco(TINY_CATEGORIES)


def scene_sample(pan, segs):
    """Image whose channel 0 marks thing pixels and channel 1 the stuff class."""
    target = panoptic_to_target(pan, segs, CM)
    target["size"] = torch.tensor(pan.shape)
    image = torch.zeros((3,) + pan.shape)
    sem = target["sem_seg"]
    image[0] = (sem == CM.other_index).float()
    image[1] = torch.where(sem < CM.num_stuff, sem.float() + 1, torch.zeros(())) / 4
    return image, target


@st.composite
def scenes(draw):
    h, w = draw(st.integers(16, 80)), draw(st.integers(16, 80))
    pan = np.full((h, w), 1100, np.int64)
    pan[draw(st.integers(0, h)):] = 2000
    segs = [{"id": 1100, "category_id": 11}, {"id": 2000, "category_id": 20}]
    for k in range(draw(st.integers(0, 6))):
        y0, x0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        y1, x1 = y0 + draw(st.integers(8, h)), x0 + draw(st.integers(8, w))
        sid = 100 + k
        pan[y0:y1, x0:x1] = sid
        segs.append({"id": sid, "category_id": draw(st.sampled_from([3, 7])),
                     "iscrowd": int(draw(st.integers(0, 5)) == 0)})
    present = set(np.unique(pan).tolist())
    return pan, [s for s in segs if s["id"] in present]


@st.composite
def pipelines(draw):
    ts = []
    if draw(st.booleans()):
        # sizes keep the down-scaling moderate so that no object falls below ~3 pixels
        ts.append(ResizeShortestEdge(draw(st.integers(40, 120)),
                                     draw(st.one_of(st.none(), st.integers(120, 200)))))
    if draw(st.booleans()):
        ts.append(RandomScale(0.75, 2.0))
    if draw(st.booleans()):
        ts.append(RandomCrop((draw(st.integers(4, 90)), draw(st.integers(4, 90)))))
    ts.append(RandomHorizontalFlip(draw(st.sampled_from([0.0, 0.5, 1.0]))))
    return Compose(ts)


def erode(region, radius=2):
    """Pixels whose whole (2r+1)^2 neighbourhood lies in ``region`` (outside counts as out)."""
    outside = torch.nn.functional.max_pool2d((~region).float()[None, None], 2 * radius + 1,
                                             stride=1, padding=radius)[0, 0]
    inner = outside == 0
    inner[:radius] = inner[-radius:] = False
    inner[:, :radius] = inner[:, -radius:] = False
    return inner


def check_consistent(image, t):
    h, w = image.shape[-2:]
    assert t["sem_seg"].shape == (h, w) and t["size"].tolist() == [h, w]
    for prefix in ("", "crowd_"):
        masks = t[prefix + "masks"]
        n = masks.shape[0]
        assert masks.shape[1:] == (h, w) and masks.dtype == torch.uint8
        assert len(t[prefix + "labels"]) == len(t[prefix + "segment_ids"]) == n
        assert torch.equal(t[prefix + "boxes"], boxes_from_masks(masks))
        assert (masks.flatten(1).sum(1) > 0).all()                     # no empty instance
        if n:
            assert (t["sem_seg"][masks.any(0).bool()] == CM.other_index).all()
            assert int(masks.sum(0).max()) <= 1                         # disjoint
    values = set(t["sem_seg"].unique().tolist())
    assert values <= set(range(CM.num_sem_classes)) | {255}
    # image and labels stay aligned: away from edges, the image marks the thing pixels (resizing
    # blurs the image but not the nearest-resized labels, so a few thin details may disagree)
    marks = image[0].numpy() > 0.5
    for region, want in ((t["sem_seg"] == CM.other_index, True),
                         (t["sem_seg"] < CM.num_stuff, False)):
        inner = erode(region).numpy()
        if inner.sum() >= 20:
            assert (marks[inner] == want).mean() > 0.95


@settings(max_examples=int(os.environ.get("SF_HYPOTHESIS_EXAMPLES", 60)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scene=scenes(), pipeline=pipelines(), seed=st.integers(0, 2**31 - 1))
def test_transforms_keep_everything_consistent(scene, pipeline, seed):
    image, target = scene_sample(*scene)
    torch.manual_seed(seed)
    out_image, out = pipeline(image, target)
    check_consistent(out_image, out)
    # segment ids and labels keep their pairing; nothing new appears
    pairs = dict(zip(target["segment_ids"].tolist(), target["labels"].tolist()))
    for sid, label in zip(out["segment_ids"].tolist(), out["labels"].tolist()):
        assert pairs[sid] == label
    assert set(out["crowd_segment_ids"].tolist()) <= set(target["crowd_segment_ids"].tolist())


def test_flip_twice_is_identity_and_flips_boxes():
    image, target = scene_sample(*tiny_scene())
    flip = RandomHorizontalFlip(1.0)
    im1, t1 = flip(image, target)
    w = image.shape[-1]
    assert torch.equal(t1["boxes"][:, [0, 2]], w - target["boxes"][:, [2, 0]])
    im2, t2 = flip(im1, t1)
    assert torch.equal(im2, image)
    for k in ("masks", "sem_seg", "boxes", "crowd_masks", "labels"):
        assert torch.equal(t2[k], target[k])


def test_crop_drops_instances_that_leave():
    pan, segs = tiny_scene()              # ball at rows 6-13, boxes at rows 24-33
    image, target = scene_sample(pan, segs)
    crop = RandomCrop((8, 100))           # wider than the image: clipped to its width
    torch.manual_seed(0)
    seen = set()
    for _ in range(30):
        im, t = crop(image, target)
        check_consistent(im, t)
        assert im.shape[-2:] == (8, 48)
        kept = frozenset(t["segment_ids"].tolist())
        assert not (kept & {301, 302} and 701 in kept)   # 8 rows can't hold rows 13 and 24
        seen.add(kept)
    assert frozenset() in seen and frozenset({701}) in seen and frozenset({301, 302}) in seen


def test_resize_shortest_edge_sizes():
    assert shortest_edge_size(400, 600, 800, 1333) == (800, 1200)
    assert shortest_edge_size(400, 1000, 800, 1333) == (533, 1333)
    image, target = scene_sample(*tiny_scene())
    im, t = ResizeShortestEdge(80)(image, target)
    assert im.shape[-2:] == (80, 96) and t["masks"].shape[-2:] == (80, 96)
    # nearest resize by exactly 2x doubles areas and box coordinates
    assert torch.equal(t["boxes"], target["boxes"] * 2)
    assert torch.equal(t["masks"].flatten(1).sum(1), target["masks"].flatten(1).sum(1) * 4)
    torch.manual_seed(0)
    sizes = {ResizeShortestEdge((20, 30), sample="range")(image, target)[0].shape[-2]
             for _ in range(30)}
    assert min(sizes) >= 20 and max(sizes) <= 30 and len(sizes) > 3
    with pytest.raises(ValueError):
        ResizeShortestEdge((20, 30, 40), sample="range")


def test_build_transforms_follows_config():
    t = build_transforms((400, 1400), 1600, "range", (0.5, 2.0), (512, 1024), True)
    kinds = [type(x).__name__ for x in t.transforms]
    assert kinds == ["ResizeShortestEdge", "RandomScale", "RandomCrop", "RandomHorizontalFlip"]
    assert [type(x).__name__ for x in build_transforms(flip=False).transforms] == [
        "ResizeShortestEdge"]


def test_compose_checks_its_input_up_front():
    """A malformed sample is a ValueError naming the field before any transform runs (every
    fault is fuzzed in test_fuzz.py)."""
    image, target = scene_sample(*tiny_scene())              # 40 x 48, 3 instances
    check_target(image, target)
    pipeline = Compose([RandomCrop(16), RandomHorizontalFlip(1.0)])
    cases = [
        (image, dict(target, masks=target["masks"][:, 1:]),
         r"target\['masks'\] is \[3, 39, 48\], expected \[N, 40, 48\]"),
        (image, dict(target, crowd_masks=target["crowd_masks"][..., :-1]),
         r"target\['crowd_masks'\] is \[1, 40, 47\]"),
        (image, dict(target, sem_seg=target["sem_seg"].T), r"target\['sem_seg'\] is \[48, 40\]"),
        (image, dict(target, labels=target["labels"][:2]),
         r"target\['labels'\] is \[2\], expected \[3\] \(one per mask"),
        (image, dict(target, segment_ids=target["segment_ids"][None]),
         r"target\['segment_ids'\] is \[1, 3\]"),
        (image, {k: v for k, v in target.items() if k != "masks"},
         r"target\['masks'\] is missing"),
        (image[:1], target, r"image must be \[3,H,W\].*\[1, 40, 48\]"),
        ((image * 255).to(torch.uint8), target, r"image must be floating point.*uint8"),
        (image.numpy(), target, r"image must be a torch.Tensor"),
        (image, dict(target, size=torch.tensor([48, 40])), r"target\['size'\] is \[48, 40\]"),
    ]
    for im, t, message in cases:
        with pytest.raises(ValueError, match=message):
            pipeline(im, t)
    with pytest.raises(ValueError, match="min <= max"):
        ResizeShortestEdge((30, 20), sample="range")
