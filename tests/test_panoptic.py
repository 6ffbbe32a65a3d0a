"""The panoptic merge (paper IV-B-2): each rule on hand-made cases, and a property test."""

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from spatialflow.data.categories import CategoryMap
from spatialflow.model.masks import BoxMasks, stuff_map
from spatialflow.panoptic import merge, merge_outputs

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


def test_box_fill_with_far_away_coordinates():
    """A box reaching far outside the image is clipped to it (no overflow to a wrong box)."""
    sem = torch.full((H, W), OTHER)
    for box in ([-1e30, 0, 1e30, 10], [-1e6, 0, 1e6, 10], [-5, 0, W + 5, 10]):
        pan, segs = run([(torch.zeros(H, W), 0.9, 0, box)], sem, box_fill=0.5)
        assert [s["bbox"] for s in segs] == [[0, 0, W, 10]], box


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
    pan, segs = merge([], [], [], [], torch.full((H, W), WALL), CM, stuff_area=0)  # plain lists
    assert (pan == 1).all() and [s["category_id"] for s in segs] == [11]


def test_invalid_input_is_a_value_error_naming_argument_and_fault():
    """The documented errors of ``merge`` (every fault is fuzzed in test_fuzz.py)."""
    det = [(box_mask(5, 5, 15, 15), 0.9, 0, [5, 5, 15, 15])]
    cases = [
        (dict(labels=[5]), r"labels: thing label 5 is outside 0\.\.1: the data set has 2 thing "
                           r"classes \(was the model trained on other categories\?\)"),
        (dict(labels=[-1]), r"labels: thing label -1 is outside"),
        (dict(scores=[float("nan")]), r"scores: detection 0 has the non-finite score nan"),
        (dict(boxes=[[5, 5, float("inf"), 15]]), r"boxes: detection 0 has non-finite"),
        (dict(boxes=[[5, 5, 15]]), r"boxes must be \[K,4\].*\[1, 3\]"),
        (dict(scores=[0.9, 0.8]), r"scores must be \[K\] with K = 1.*\[2\]"),
        (dict(masks=torch.zeros(2, H, W)), r"masks: 2 masks for 1 detections"),
        (dict(masks=torch.zeros(1, H, W + 1)),
         r"masks are \(40, 51\), the stuff map is \(40, 50\)"),
        (dict(sem=torch.full((H, W), 3)),
         r"sem: stuff map value 3 is outside 0\.\.2 .*2 = 'other'"),
        (dict(sem=torch.full((H, W), -1)), r"sem: stuff map value -1 is outside"),
        (dict(sem=torch.zeros(5, H, W)), r"sem: 5 stuff score channels.*= 3"),
        (dict(sem=torch.zeros(H)), r"sem must be a \[H,W\] stuff map or \[S\+1,H,W\]"),
        (dict(mask_conf=1.5), r"mask_conf must be in \[0, 1\], got 1\.5"),
        (dict(mask_threshold=float("nan")), r"mask_threshold must be in \[0, 1\], got nan"),
        (dict(stuff_area=-1), r"stuff_area must be >= 0"),
    ]
    for change, message in cases:
        args = dict(boxes=[d[3] for d in det], scores=[d[1] for d in det],
                    labels=[d[2] for d in det], masks=torch.stack([d[0] for d in det]),
                    sem=torch.full((H, W), WALL))
        kw = {k: change.pop(k) for k in list(change) if k not in args}
        args.update(change)
        with pytest.raises(ValueError, match=message):
            merge(args["boxes"], args["scores"], args["labels"], args["masks"], args["sem"], CM,
                  **kw)
    with pytest.raises(ValueError, match=r"output: missing key\(s\) masks"):
        merge_outputs({"boxes": [], "scores": [], "labels": [], "sem_seg": torch.zeros(H, W)}, CM)


@st.composite
def raw_outputs(draw, min_k=0):
    """Random valid raw outputs of one image: K detections in any order (NumPy or torch),
    masks ``[M,1,H,W]`` or ``[M,H,W]`` of the first ``M`` of them (at least all that reach
    ``mask_conf``), ``sem`` as stuff scores ``[S+1,H,W]`` or a 2-D map of 0..S, and random
    thresholds; images down to 1x1 and one pixel thin."""
    h, w = draw(st.integers(1, 30)), draw(st.integers(1, 30))
    k = draw(st.integers(min_k, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x0 = rng.uniform(-5, w, k); y0 = rng.uniform(-5, h, k)
    boxes = np.stack([x0, y0, x0 + rng.uniform(0, w, k), y0 + rng.uniform(0, h, k)], 1)
    if k and draw(st.booleans()):                                      # far outside the image
        boxes[rng.integers(0, k)] *= draw(st.sampled_from([1e6, 1e30, -1e30]))
    scores = rng.random(k).astype(np.float32)
    if draw(st.booleans()):
        scores = np.round(scores, 1)                                   # ties
    if draw(st.booleans()):
        scores = -np.sort(-scores)                                     # as the model sorts them
    labels = rng.integers(0, CM.num_things, k)
    mask_conf = draw(st.floats(0, 1))
    reach = (torch.from_numpy(scores) >= mask_conf).tolist()         # as merge compares
    needed = max([i + 1 for i in range(k) if reach[i]], default=0)
    m = draw(st.integers(needed, k))
    masks = rng.random((m, 1, h, w)).astype(np.float32) * draw(st.floats(0, 2))
    if draw(st.booleans()):
        masks = masks[:, 0]
    if draw(st.booleans()):
        sem = rng.random((CM.num_sem_classes, h, w)).astype(np.float32)
    else:
        sem = rng.integers(0, CM.num_sem_classes, (h, w))
        sem = sem.astype(draw(st.sampled_from([np.int64, np.int32, np.uint8, np.float32])))
    kw = dict(mask_conf=mask_conf, overlap=draw(st.floats(0, 1)),
              stuff_area=draw(st.integers(0, 50)), box_fill=draw(st.floats(0, 1)),
              box_fill_enabled=draw(st.booleans()),
              mask_threshold=draw(st.sampled_from([0.0, 0.25, 0.5, 0.9, 1.0])))
    out = [boxes.reshape(-1, 4), scores, labels, masks, sem]
    if draw(st.booleans()):
        out = [torch.from_numpy(np.ascontiguousarray(a)) for a in out]
    return (*out, kw)


def check_merge(raw, pan, segs):
    """Every property a merge result must have (see :func:`merge`)."""
    boxes, scores, labels, masks, sem, kw = (np.asarray(a) if not isinstance(a, dict) else a
                                             for a in raw)
    sem_map = sem.argmax(0) if sem.ndim == 3 else sem.astype(np.int64)
    h, w = sem_map.shape
    assert pan.shape == (h, w) and pan.dtype == np.int32
    ids = [s["id"] for s in segs]
    assert ids == list(range(1, len(segs) + 1))                       # 1..n in list order
    assert set(np.unique(pan).tolist()) - {0} == set(ids)             # one segment per pixel
    if masks.ndim == 4:
        masks = masks[:, 0]
    for s in segs:
        region = pan == s["id"]
        ys, xs = np.nonzero(region)
        assert s["area"] == len(ys) > 0
        assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert s["category_id"] in CM and s["isthing"] == CM.is_thing(s["category_id"])
        assert s["iscrowd"] == 0
        if s["isthing"]:
            assert s["score"] >= kw["mask_conf"]
            # its pixels lie in the mask or the box of a detection of its class and score
            allowed = np.zeros((h, w), bool)
            for k in range(len(scores)):
                if (CM.thing_id(int(labels[k])) != s["category_id"]
                        or float(np.float32(scores[k])) != s["score"]):
                    continue
                if k < len(masks):
                    allowed |= masks[k] >= kw["mask_threshold"]
                if kw["box_fill_enabled"]:
                    x0, y0, x1, y1 = (int(v) for v in torch.tensor(boxes[k]).float().round())
                    allowed[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
            assert allowed[region].all()
        else:
            assert s["area"] >= kw["stuff_area"]
            assert (sem_map[region] == CM.stuff_index(s["category_id"])).all()
    stuff = [s["category_id"] for s in segs if not s["isthing"]]
    assert len(stuff) == len(set(stuff))                              # one segment per stuff class
    # things are pasted in score order; without box fill every thing precedes the stuff
    first_stuff = next((i for i, s in enumerate(segs) if not s["isthing"]), len(segs))
    pasted = [s["score"] for s in segs[:first_stuff]]
    filled = [s["score"] for s in segs[first_stuff:] if s["isthing"]]
    assert filled == sorted(filled, reverse=True)  # box fill also goes in score order
    if not kw["box_fill_enabled"]:
        assert pasted == sorted(pasted, reverse=True)
        assert not filled
    elif first_stuff < len(segs):
        assert pasted == sorted(pasted, reverse=True)
    else:  # no stuff segment: the box-filled things follow the pasted ones, each in order
        assert sum(a < b for a, b in zip(pasted, pasted[1:])) <= 1


@settings(max_examples=150, deadline=None)
@given(raw=raw_outputs())
@example(raw=(np.array([[-4.98650486, 0.07661931, -3.9931635, 0.82272609]]),  # found by
              np.array([0.0], np.float32), np.array([1]),                      # hypothesis:
              np.zeros((1, 1, 1, 1), np.float32),                             # a score of 0
              np.array([[[0.265]], [[0.579]], [[0.675]]], np.float32),        # against a
              {"mask_conf": 7.672048291311845e-242, "overlap": 0.0,          # threshold that
               "stuff_area": 0, "box_fill": 0.0, "box_fill_enabled": False,  # float32 rounds
               "mask_threshold": 0.0}))                                      # to 0
def test_merge_properties(raw):
    boxes, scores, labels, masks, sem, kw = raw
    pan, segs = merge(boxes, scores, labels, masks, sem, CM, **kw)
    check_merge(raw, pan, segs)


@settings(max_examples=100, deadline=None)
@given(raw=raw_outputs(), seed=st.integers(0, 2**16))
def test_box_masks_merge_as_their_dense_form(raw, seed):
    """Masks given as crops (a BoxMasks) merge exactly as the same masks written into zero
    images, for every threshold (0 included: then every pixel is in every mask)."""
    boxes, scores, labels, masks, sem, kw = raw
    masks = torch.as_tensor(np.asarray(masks))
    masks = masks[:, 0] if masks.dim() == 4 else masks
    h, w = sem.shape[-2:]
    rng = np.random.default_rng(seed)
    crops, origins = [], []
    for m in masks:
        y0, x0 = int(rng.integers(0, h + 1)), int(rng.integers(0, w + 1))
        y1, x1 = int(rng.integers(y0, h + 1)), int(rng.integers(x0, w + 1))
        crops.append(m[y0:y1, x0:x1])
        origins.append((y0, x0))
    box_masks = BoxMasks(crops, origins, (h, w))
    dense = box_masks.dense()
    assert dense.shape == box_masks.shape == (len(masks), 1, h, w)
    expected = merge(boxes, scores, labels, dense, sem, CM, **kw)
    got = merge(boxes, scores, labels, box_masks, sem, CM, **kw)
    assert np.array_equal(got[0], expected[0]) and got[1] == expected[1]


def test_box_masks_refuse_crops_that_do_not_fit():
    one = torch.ones(2, 2)
    with pytest.raises(ValueError, match=r"crop 1 \(3x3 at row 2, column 3\) reaches outside "
                                         r"the 4x5 image"):
        BoxMasks([one, torch.ones(3, 3)], [(0, 0), (2, 3)], (4, 5))
    with pytest.raises(ValueError, match="2 crops for 1 origins"):
        BoxMasks([one, one], [(0, 0)], (4, 5))
    with pytest.raises(ValueError, match=r"crop 0 must be \[h,w\], got shape \[1, 2, 2\]"):
        BoxMasks([one[None]], [(0, 0)], (4, 5))
    with pytest.raises(ValueError, match="masks are"):     # not the stuff map's size
        merge(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([0.9]), torch.tensor([0]),
              BoxMasks([one], [(0, 0)], (4, 5)), torch.zeros(6, 5, dtype=torch.long), CM)
