"""Fuzzing with hypothesis: the panoptic merge and the joint transforms on random valid and
invalid input. Valid input keeps every invariant; invalid input fails with the documented
``ValueError`` naming the argument or field, never with an ``IndexError``, ``RuntimeError`` or
``KeyError`` from deep inside (the valid-input property of ``merge`` is
``test_panoptic.py::test_merge_properties``)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spatialflow.data.categories import CategoryMap
from spatialflow.data.coco_panoptic import panoptic_to_target
from spatialflow.data.transforms import (Compose, RandomCrop, RandomHorizontalFlip, RandomScale,
                                         ResizeShortestEdge, boxes_from_masks, check_target,
                                         shortest_edge_size)
from spatialflow.panoptic import merge, merge_outputs

from conftest import TINY_CATEGORIES
from test_panoptic import raw_outputs

CM = CategoryMap.from_coco(TINY_CATEGORIES)   # 2 things, 2 stuff classes (+ 'other' = 2)
FUZZ = settings(max_examples=80, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# --- merge: invalid input ---------------------------------------------------------------------
BAD_NUMBERS = st.sampled_from([-0.5, -1e-9, 1.0 + 1e-6, 2.0, math.inf, -math.inf, math.nan])


def _t(a):
    return torch.as_tensor(np.asarray(a))


MERGE_FAULTS = ["boxes_shape", "scores_len", "labels_len", "scores_2d", "label_range",
                "label_float", "masks_dim", "masks_channels", "masks_too_many", "masks_size",
                "sem_dim", "sem_channels", "sem_range", "sem_nan", "score_nan", "box_nan",
                "mask_conf", "overlap", "box_fill", "mask_threshold", "stuff_area",
                "missing_mask", "not_numeric"]


@st.composite
def corrupted(draw, fault):
    """``(args, kwargs, argument name the error must name)``: a valid raw output (at least one
    detection) with the corruption ``fault``."""
    boxes, scores, labels, masks, sem, kw = draw(raw_outputs(min_k=1))
    boxes, scores, labels, masks, sem = (_t(a) for a in (boxes, scores, labels, masks, sem))
    kw = dict(kw)
    k, (h, w) = len(scores), sem.shape[-2:]
    name = fault.split("_")[0]
    if fault == "boxes_shape":
        boxes = draw(st.sampled_from([boxes[:, :3], torch.cat([boxes, boxes[:, :1]], 1),
                                      boxes.flatten(), boxes[None]]))
    elif fault == "scores_len":
        scores = draw(st.sampled_from([scores[1:], torch.cat([scores, scores[:1]])]))
    elif fault == "labels_len":
        labels = draw(st.sampled_from([labels[1:], torch.cat([labels, labels[:1]])]))
    elif fault == "scores_2d":
        scores = scores[:, None]
    elif fault == "label_range":  # a model trained on other categories
        labels = labels.clone()
        labels[draw(st.integers(0, k - 1))] = draw(st.sampled_from(
            [CM.num_things, CM.num_things + 5, -1, 10**6]))
        name = "labels"
    elif fault == "label_float":
        labels = labels.float() + 0.5
        name = "labels"
    elif fault == "masks_dim":
        masks = draw(st.sampled_from([torch.zeros(k, w), torch.zeros(k, 1, 1, h, w),
                                      torch.zeros(w)]))
    elif fault == "masks_channels":
        masks = torch.zeros(k, 2, h, w)
    elif fault == "masks_too_many":
        masks = torch.zeros(k + draw(st.integers(1, 3)), h, w)
    elif fault == "masks_size":
        masks = torch.zeros(k, h + draw(st.integers(1, 3)), w)
    elif fault == "sem_dim":
        sem = draw(st.sampled_from([sem.flatten(), sem[None, None], torch.tensor(0)]))
    elif fault == "sem_channels":
        sem = torch.rand(CM.num_sem_classes + draw(st.sampled_from([-2, -1, 1, 5])), h, w)
    elif fault == "sem_range":  # stuff map values outside 0..S (S = 'other')
        sem = torch.randint(0, CM.num_sem_classes, (h, w))
        sem[draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = draw(
            st.sampled_from([CM.num_sem_classes, 255, -1, -100]))
        name = "sem"
    elif fault == "sem_nan":
        sem = torch.randint(0, CM.num_sem_classes, (h, w)).float()
        sem[draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = draw(
            st.sampled_from([math.nan, math.inf, 0.5]))
        name = "sem"
    elif fault == "score_nan":  # a broken model
        scores = scores.float().clone()
        scores[draw(st.integers(0, k - 1))] = draw(st.sampled_from([math.nan, math.inf,
                                                                   -math.inf]))
        name = "scores"
    elif fault == "box_nan":
        boxes = boxes.float().clone()
        boxes[draw(st.integers(0, k - 1)), draw(st.integers(0, 3))] = draw(
            st.sampled_from([math.nan, math.inf, -math.inf]))
        name = "boxes"
    elif fault in ("mask_conf", "overlap", "box_fill", "mask_threshold"):
        kw[fault] = draw(BAD_NUMBERS)
        name = fault
    elif fault == "stuff_area":
        kw["stuff_area"] = draw(st.sampled_from([-1, -0.5, math.nan, "100"]))
        name = "stuff_area"
    elif fault == "missing_mask":  # a detection the merge uses without a mask
        kw["mask_conf"] = 0.0
        masks = masks[:k - 1]
        name = "has no mask"
    elif fault == "not_numeric":
        name = draw(st.sampled_from(["boxes", "scores", "labels", "masks", "sem"]))
        bad = draw(st.sampled_from([[[1.0, 2.0], [3.0]], "abc", {"a": 1}, object()]))
        boxes, scores, labels, masks, sem = (bad if n == name else a for n, a in zip(
            ("boxes", "scores", "labels", "masks", "sem"), (boxes, scores, labels, masks, sem)))
    return (boxes, scores, labels, masks, sem), kw, name


@pytest.mark.parametrize("fault", MERGE_FAULTS)
@settings(FUZZ, max_examples=12)
@given(data=st.data())
def test_merge_rejects_invalid_input_with_a_value_error_naming_it(fault, data):
    args, kw, name = data.draw(corrupted(fault))
    with pytest.raises(ValueError, match=name):
        merge(*args, CM, **kw)


@FUZZ
@given(raw=raw_outputs(), drop=st.sampled_from(["boxes", "scores", "labels", "masks", "sem"]))
def test_merge_outputs_names_a_missing_key(raw, drop):
    boxes, scores, labels, masks, sem, kw = raw
    output = {"boxes": boxes, "scores": scores, "labels": labels, "masks": masks,
              ("sem_seg" if sem.ndim == 2 else "sem_probs"): sem}
    merge_outputs(output, CM, **kw)                                     # complete: fine
    for key in [k for k in output if k.startswith(drop)]:
        del output[key]
    with pytest.raises(ValueError, match="missing key.*" + drop):
        merge_outputs(output, CM, **kw)


# --- joint transforms: valid input ------------------------------------------------------------
@st.composite
def targets(draw):
    """``(image, target)`` of a random panoptic map from 1x1 and one-pixel-thin images up to
    48 px, with zero or more thing instances (some crowd), stuff and VOID."""
    h, w = draw(st.sampled_from([(1, 1), (1, 40), (40, 1), (2, 3)]) | st.tuples(
        st.integers(1, 48), st.integers(1, 48)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pan = rng.choice([0, 1100, 2000], size=(h, w), p=[0.1, 0.45, 0.45]).astype(np.int64)
    segs = [{"id": 1100, "category_id": 11}, {"id": 2000, "category_id": 20}]
    for k in range(draw(st.integers(0, 5))):
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        y1, x1 = y0 + int(rng.integers(1, h + 1)), x0 + int(rng.integers(1, w + 1))
        pan[y0:y1, x0:x1] = 100 + k
        segs.append({"id": 100 + k, "category_id": int(rng.choice([3, 7])),
                     "iscrowd": int(rng.random() < 0.2)})
    present = set(np.unique(pan).tolist())
    target = panoptic_to_target(pan, [s for s in segs if s["id"] in present], CM)
    target["size"] = torch.tensor([h, w])
    image = torch.rand(3, h, w)
    return image, target


@st.composite
def steps(draw):
    """A pipeline of any transforms with extreme parameters: resizing to 1 px or far up, scale
    ranges from 0.05x, crops larger than the image."""
    ts = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["resize", "range", "scale", "crop", "flip"]))
        if kind == "resize":
            ts.append(ResizeShortestEdge(draw(st.integers(1, 96)),
                                         draw(st.none() | st.integers(1, 128))))
        elif kind == "range":
            lo = draw(st.integers(1, 64))
            ts.append(ResizeShortestEdge((lo, lo + draw(st.integers(0, 32))),
                                         draw(st.none() | st.integers(1, 128)), "range"))
        elif kind == "scale":
            lo = draw(st.floats(0.05, 2.0))
            ts.append(RandomScale(lo, lo + draw(st.floats(0, 1.0))))
        elif kind == "crop":
            ts.append(RandomCrop((draw(st.integers(1, 80)), draw(st.integers(1, 80)))))
        else:
            ts.append(RandomHorizontalFlip(draw(st.sampled_from([0.0, 0.5, 1.0]))))
    return ts


def expected_size(t, h, w, out_h, out_w):
    """Whether ``(out_h, out_w)`` is a size transform ``t`` can give an ``h x w`` image."""
    if isinstance(t, ResizeShortestEdge):
        shorts = (range(int(t.sizes[0]), int(t.sizes[1]) + 1) if t.sample == "range"
                  else t.sizes)
        return (out_h, out_w) in {shortest_edge_size(h, w, s, t.max_size) for s in shorts}
    if isinstance(t, RandomScale):
        lo_h, hi_h = max(1, round(h * t.min_scale)), max(1, round(h * t.max_scale))
        lo_w, hi_w = max(1, round(w * t.min_scale)), max(1, round(w * t.max_scale))
        return lo_h <= out_h <= hi_h and lo_w <= out_w <= hi_w
    if isinstance(t, RandomCrop):
        return (out_h, out_w) == (min(t.size[0], h), min(t.size[1], w))
    return (out_h, out_w) == (h, w)


def check_invariants(image, t, before):
    """The transforms' contract after each step; ``before`` is the target it started from."""
    h, w = image.shape[-2:]
    assert image.shape[0] == 3 and image.dtype == torch.float32 and h >= 1 and w >= 1
    assert t["sem_seg"].shape == (h, w) and t["size"].tolist() == [h, w]
    # nearest resizing, crops and flips invent no class
    assert set(t["sem_seg"].unique().tolist()) <= set(before["sem_seg"].unique().tolist())
    for prefix in ("", "crowd_"):
        masks = t[prefix + "masks"]
        n = masks.shape[0]
        assert masks.shape == (n, h, w) and masks.dtype == torch.uint8
        assert t[prefix + "labels"].shape == t[prefix + "segment_ids"].shape == (n,)
        assert t[prefix + "boxes"].shape == (n, 4)
        assert torch.equal(t[prefix + "boxes"], boxes_from_masks(masks))
        boxes = t[prefix + "boxes"]
        assert ((0 <= boxes[:, 0]) & (boxes[:, 0] < boxes[:, 2]) & (boxes[:, 2] <= w)).all()
        assert ((0 <= boxes[:, 1]) & (boxes[:, 1] < boxes[:, 3]) & (boxes[:, 3] <= h)).all()
        assert (masks.flatten(1).sum(1) > 0).all()          # instances that left are dropped
        # an instance keeps its label; none appears
        pairs = dict(zip(before[prefix + "segment_ids"].tolist(),
                         before[prefix + "labels"].tolist()))
        for sid, label in zip(t[prefix + "segment_ids"].tolist(), t[prefix + "labels"].tolist()):
            assert pairs[sid] == label


@FUZZ
@given(sample=targets(), ts=steps(), seed=st.integers(0, 2**31 - 1))
def test_transforms_on_extreme_sizes_keep_the_invariants(sample, ts, seed):
    image, target = sample
    torch.manual_seed(seed)
    original = target
    for t in ts:  # step by step, to check each output size
        h, w = image.shape[-2:]
        image, target = Compose([t])(image, target)
        assert expected_size(t, h, w, *image.shape[-2:]), (t, (h, w), image.shape)
        check_invariants(image, target, original)


# --- joint transforms: invalid input ----------------------------------------------------------
TRANSFORM_FAULTS = ["masks_size", "sem_size", "labels_len", "ids_len", "boxes_len",
                    "masks_missing", "channels", "dtype", "image_dim", "sem_missing", "size"]


@st.composite
def broken_samples(draw, fault):
    """``(image, target, the field the error must name)``: a valid sample with ``fault``."""
    image, target = draw(targets())
    target = dict(target)
    h, w = image.shape[-2:]
    prefix = draw(st.sampled_from(["", "crowd_"]))
    dh, dw = draw(st.sampled_from([(1, 0), (0, 1), (-1, 0), (3, 5)]))
    if dh < 0 and h == 1:
        dh = 1
    if fault == "masks_size":
        n = target[prefix + "masks"].shape[0]
        target[prefix + "masks"] = torch.zeros((n, h + dh, w + dw), dtype=torch.uint8)
        return image, target, prefix + "masks"
    if fault == "sem_size":
        target["sem_seg"] = torch.zeros((h + dh, w + dw), dtype=torch.int64)
        return image, target, "sem_seg"
    if fault in ("labels_len", "ids_len", "boxes_len"):
        key = prefix + {"labels_len": "labels", "ids_len": "segment_ids",
                        "boxes_len": "boxes"}[fault]
        v = target[key]
        longer = torch.cat([v, v.new_zeros((1,) + tuple(v.shape[1:]))])
        target[key] = longer if not len(v) or draw(st.booleans()) else v[1:]
        return image, target, key
    if fault == "masks_missing":
        del target[prefix + "masks"]
        return image, target, prefix + "masks"
    if fault == "channels":
        c = draw(st.sampled_from([1, 2, 4]))
        return torch.rand(c, h, w), target, "image"
    if fault == "dtype":
        dtype = draw(st.sampled_from([torch.uint8, torch.int64, torch.bool]))
        return (image * 255).to(dtype), target, "image"
    if fault == "image_dim":
        return draw(st.sampled_from([image[0], image[None], image.numpy()])), target, "image"
    if fault == "sem_missing":
        del target["sem_seg"]
        return image, target, "sem_seg"
    target["size"] = torch.tensor([h + dh, w + dw])
    return image, target, "size"


@pytest.mark.parametrize("fault", TRANSFORM_FAULTS)
@settings(FUZZ, max_examples=10)
@given(data=st.data())
def test_transforms_reject_invalid_input_up_front(fault, data):
    image, target, field = data.draw(broken_samples(fault))
    ts = data.draw(steps())
    before = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in target.items()}
    with pytest.raises(ValueError, match=field):
        Compose(ts)(image, target)
    with pytest.raises(ValueError, match=field):
        check_target(image, target)
    assert target.keys() == before.keys()                                 # input untouched
    assert all(torch.equal(v, before[k]) for k, v in target.items()
               if isinstance(v, torch.Tensor))


# --- shortest_edge_size -----------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(h=st.integers(1, 100_000), w=st.integers(1, 100_000), short=st.integers(1, 2000),
       max_size=st.none() | st.integers(1, 4000))
def test_shortest_edge_size_is_positive_and_capped(h, w, short, max_size):
    oh, ow = shortest_edge_size(h, w, short, max_size)
    assert isinstance(oh, int) and isinstance(ow, int) and oh >= 1 and ow >= 1
    if max_size is not None:
        assert max(oh, ow) <= max(max_size, 1)
    if max_size is None or max(h, w) * short / min(h, w) <= max_size:
        assert min(oh, ow) == short                                    # not capped: exact
    assert (oh >= ow) == (h >= w) or abs(oh - ow) <= 1                 # orientation kept


def test_shortest_edge_size_extreme_aspect_ratios():
    assert shortest_edge_size(1, 100_000, 800, 1333) == (1, 1333)
    assert shortest_edge_size(100_000, 1, 800, 1333) == (1333, 1)
    assert shortest_edge_size(1, 100_000, 800, None) == (800, 80_000_000)
    assert shortest_edge_size(1, 1, 800, 1333) == (800, 800)
    for bad in [(0, 5, 800, 1333), (5, 5, 0, 1333), (5, 5, 800, 0), (-1, 5, 800, None)]:
        with pytest.raises(ValueError):
            shortest_edge_size(*bad)
    with pytest.raises(ValueError, match="max_size"):
        ResizeShortestEdge(800, max_size=0)
    with pytest.raises(ValueError, match="min <= max"):
        ResizeShortestEdge((40, 20), sample="range")
