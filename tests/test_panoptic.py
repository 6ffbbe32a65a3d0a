"""The panoptic merge (paper IV-B-2): each rule on hand-made cases, and a property test."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spatialflow.data.categories import CategoryMap
from spatialflow.panoptic import merge, stuff_map

from conftest import TINY_CATEGORIES

CM = CategoryMap.from_coco(TINY_CATEGORIES)   # things 3 (box), 7 (ball); stuff 11 (wall), 20 (floor)
WALL, FLOOR, OTHER = CM.stuff_index(11), CM.stuff_index(20), CM.other_index
H, W = 40, 50


def box_mask(y0, x0, y1, x1, p=0.9):
    m = torch.zeros(H, W)
    m[y0:y1, x0:x1] = p
    return m


def run(dets, sem=None, **kw):
    """``dets``: list of (mask, score, label, box)."""
    if sem is None:
        sem = torch.full((H, W), WALL)
    masks = torch.stack([d[0] for d in dets]) if dets else torch.zeros(0, H, W)
    scores = torch.tensor([d[1] for d in dets], dtype=torch.float32)
    labels = torch.tensor([d[2] for d in dets], dtype=torch.int64)
    boxes = torch.tensor([d[3] for d in dets], dtype=torch.float32).reshape(-1, 4)
    kw.setdefault("stuff_area", 0)
    return merge(boxes, scores, labels, masks, sem, CM, **kw)


def seg_of(pan, segs, y, x):
    sid = int(pan[y, x])
    return next((s for s in segs if s["id"] == sid), None)


def test_instances_below_confidence_are_dropped():
    dets = [(box_mask(5, 5, 15, 15), 0.36, 0, [5, 5, 15, 15]),
            (box_mask(20, 20, 30, 30), 0.38, 1, [20, 20, 30, 30])]
    pan, segs = run(dets, mask_conf=0.37, box_fill_enabled=False)
    assert seg_of(pan, segs, 10, 10)["category_id"] == 11        # wall, no instance
    s = seg_of(pan, segs, 25, 25)
    assert s["category_id"] == 7 and s["isthing"] == 1 and s["score"] == pytest.approx(0.38)


def test_overlap_rule_and_score_order():
    a = (box_mask(0, 0, 20, 20), 0.6, 0, [0, 0, 20, 20])        # area 400
    b = (box_mask(10, 10, 30, 30), 0.9, 1, [10, 10, 30, 30])    # higher score, pasted first
    pan, segs = run([a, b], overlap=0.37, box_fill_enabled=False)
    assert seg_of(pan, segs, 15, 15)["category_id"] == 7          # contested pixels: b
    assert seg_of(pan, segs, 5, 5)["category_id"] == 3            # a keeps its free part (25%)
    assert sum(s["isthing"] for s in segs) == 2
    pan, segs = run([a, b], overlap=0.2, box_fill_enabled=False)  # 25% > 20%: a is skipped
    assert seg_of(pan, segs, 5, 5)["category_id"] == 11
    assert sum(s["isthing"] for s in segs) == 1


def test_things_win_over_stuff_and_other_is_dropped():
    sem = torch.full((H, W), FLOOR)
    sem[:, 25:] = OTHER
    pan, segs = run([(box_mask(10, 10, 20, 20), 0.9, 0, [10, 10, 20, 20])], sem,
                    box_fill_enabled=False)
    assert seg_of(pan, segs, 15, 15)["category_id"] == 3
    assert seg_of(pan, segs, 5, 5)["category_id"] == 20
    assert (pan[:, 25:] == 0).all()                                 # 'other' is unassigned


def test_small_stuff_regions_are_dropped():
    sem = torch.full((H, W), FLOOR)
    sem[:5, :5] = WALL                                              # 25 pixels of wall
    pan, segs = run([], sem, stuff_area=26)
    assert (pan[:5, :5] == 0).all() and [s["category_id"] for s in segs] == [20]
    pan, segs = run([], sem, stuff_area=25)
    assert sorted(s["category_id"] for s in segs) == [11, 20]


def test_box_fill():
    sem = torch.full((H, W), OTHER)                     # nothing from the stuff map
    mask = box_mask(10, 10, 20, 15)                     # left half of its box
    det = (mask, 0.9, 0, [10, 10, 20, 20])
    pan, segs = run([det], sem, box_fill=0.5)           # free part = 50% of the box
    s = seg_of(pan, segs, 15, 17)
    assert s is not None and s["id"] == seg_of(pan, segs, 15, 12)["id"]   # same instance
    assert s["area"] == 100 and s["bbox"] == [10, 10, 10, 10]
    pan, segs = run([det], sem, box_fill=0.6)           # 50% < 60%: no fill
    assert pan[15, 17] == 0 and seg_of(pan, segs, 15, 12)["area"] == 50
    pan, _ = run([det], sem, box_fill=0.1, box_fill_enabled=False)
    assert pan[15, 17] == 0


def test_box_fill_gives_a_skipped_instance_its_own_segment():
    sem = torch.full((H, W), OTHER)
    a = (box_mask(0, 0, 20, 20), 0.9, 0, [0, 0, 20, 20])
    b = (box_mask(0, 0, 20, 20), 0.8, 1, [0, 0, 40, 20])   # mask fully covered: skipped
    pan, segs = run([a, b], sem, box_fill=0.4)
    assert seg_of(pan, segs, 10, 30)["category_id"] == 7    # b's free box half (50%)
    assert seg_of(pan, segs, 10, 10)["category_id"] == 3
    assert len({s["id"] for s in segs}) == len(segs) == 2


def test_sem_probabilities_or_labels_and_dataset_ids():
    sem = torch.full((H, W), FLOOR)
    sem[:10] = WALL
    probs = torch.nn.functional.one_hot(sem, CM.num_sem_classes).permute(2, 0, 1).float()
    dets = [(box_mask(20, 20, 30, 30), 0.9, 1, [20, 20, 30, 30])]
    a, sa = run(dets, sem)
    b, sb = run(dets, probs)
    assert np.array_equal(a, b) and sa == sb
    assert {s["category_id"] for s in sa} == {7, 11, 20} and a.dtype == np.int32


def test_stuff_map_is_argmax_first_on_ties():
    scores = torch.randn(7, 30, 40)
    scores[3, :5] = scores[5, :5] = scores[:, :5].max(0).values + 1  # ties: the first wins
    assert torch.equal(stuff_map(scores), scores.argmax(0))
    assert (stuff_map(scores)[:5] == 3).all()


def test_masks_of_the_first_detections_only():
    """Masks may cover the first detections only; one the merge needs but lacks is an error."""
    masks = torch.zeros(1, 1, 20, 20)
    masks[0, 0, 2:8, 2:8] = 0.9
    boxes = torch.tensor([[2.0, 2, 8, 8], [10, 10, 18, 18]])
    sem = torch.full((20, 20), CM.num_stuff)
    args = (boxes, torch.tensor([0.9, 0.2]), torch.tensor([0, 1]), masks, sem, CM)
    pan, segments = merge(*args, box_fill_enabled=False)
    assert len(segments) == 1 and (pan != 0).sum() == 36
    with pytest.raises(ValueError, match="detection 1 .* has no mask"):
        merge(*args, mask_conf=0.1)


def test_empty_everything():
    pan, segs = run([], torch.full((H, W), OTHER))
    assert (pan == 0).all() and segs == []


@st.composite
def raw_outputs(draw):
    h, w = draw(st.integers(1, 30)), draw(st.integers(1, 30))
    k = draw(st.integers(0, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    masks = rng.random((k, 1, h, w)).astype(np.float32) * draw(st.floats(0, 2))
    x0 = rng.uniform(-5, w, k); y0 = rng.uniform(-5, h, k)
    boxes = np.stack([x0, y0, x0 + rng.uniform(0, w, k), y0 + rng.uniform(0, h, k)], 1)
    scores = rng.random(k).astype(np.float32)
    labels = rng.integers(0, CM.num_things, k)
    sem = rng.random((CM.num_sem_classes, h, w)).astype(np.float32)
    kw = dict(mask_conf=draw(st.floats(0, 1)), overlap=draw(st.floats(0, 1)),
              stuff_area=draw(st.integers(0, 50)), box_fill=draw(st.floats(0, 1)),
              box_fill_enabled=draw(st.booleans()))
    return boxes.reshape(-1, 4), scores, labels, masks, sem, kw


@settings(max_examples=150, deadline=None)
@given(raw=raw_outputs())
def test_merge_properties(raw):
    boxes, scores, labels, masks, sem, kw = raw
    pan, segs = merge(boxes, scores, labels, masks, sem, CM, **kw)
    assert pan.shape == sem.shape[1:]
    ids = [s["id"] for s in segs]
    assert len(ids) == len(set(ids)) and 0 not in ids                 # unique, non-VOID
    assert set(np.unique(pan).tolist()) - {0} == set(ids)             # one segment per pixel
    for s in segs:
        ys, xs = np.nonzero(pan == s["id"])
        assert s["area"] == len(ys) > 0
        assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert s["category_id"] in CM and s["isthing"] == CM.is_thing(s["category_id"])
        if s["isthing"]:
            assert s["score"] >= kw["mask_conf"]
        else:
            assert s["area"] >= kw["stuff_area"]
    stuff = [s["category_id"] for s in segs if not s["isthing"]]
    assert len(stuff) == len(set(stuff))                              # one segment per stuff class
