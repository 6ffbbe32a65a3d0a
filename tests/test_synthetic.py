"""Tests of the synthetic COCO panoptic dataset (spatialflow/data/synthetic.py)."""

import hashlib
import json
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image
from panopticapi.utils import rgb2id
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from spatialflow.data.synthetic import (
    SYNTHETIC_CATEGORIES,
    format_data_stats,
    make_synthetic,
    render_scene,
    data_stats,
)
from spatialflow.errors import InputError

CATS = {c["id"]: c for c in SYNTHETIC_CATEGORIES}
THINGS = {c["id"] for c in SYNTHETIC_CATEGORIES if c["isthing"]}
STUFF = {c["id"] for c in SYNTHETIC_CATEGORIES if not c["isthing"]}
NAME = {c["name"]: c["id"] for c in SYNTHETIC_CATEGORIES}
ARGS = dict(num_train=12, num_val=6, size=128, seed=3, progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "data"
    result = make_synthetic(out, workers=2, **ARGS)
    return out, result


def _digests(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _load(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module", params=["close", "wide"])
def scenes(request):
    """(style, 60 scenes of that style at 128 px rendered directly, no I/O)."""
    return request.param, [render_scene(np.random.default_rng([11, i]), 128, request.param)
                           for i in range(60)]


def test_categories_are_coco_panoptic():
    expected = {1: ("person", 1), 3: ("car", 1), 9: ("boat", 1), 16: ("bird", 1), 149: ("road", 0),
                155: ("water", 0), 187: ("sky", 0), 192: ("mountain", 0), 193: ("grass", 0)}
    assert {c["id"]: (c["name"], c["isthing"]) for c in SYNTHETIC_CATEGORIES} == expected
    assert CATS[1]["color"] == [220, 20, 60] and CATS[187]["color"] == [70, 130, 180]
    assert all({"id", "name", "isthing", "color", "supercategory"} <= set(c) for c in SYNTHETIC_CATEGORIES)


def test_layout_and_images(data):
    out, result = data
    ids = set()
    for split, n in (("train", 12), ("val", 6)):
        pan = _load(out / f"panoptic_{split}.json")
        assert set(pan) >= {"info", "licenses", "images", "annotations", "categories"}
        assert pan["categories"] == SYNTHETIC_CATEGORIES
        assert len(pan["images"]) == len(pan["annotations"]) == n == result["splits"][split]["num_images"]
        names = sorted(i["file_name"] for i in pan["images"])
        assert sorted(p.name for p in (out / split).iterdir()) == names
        for img, ann in zip(pan["images"], pan["annotations"]):
            assert img["id"] == ann["image_id"] and img["id"] not in ids
            ids.add(img["id"])
            assert img["file_name"] == f"{img['id']:012d}.jpg" and ann["file_name"] == f"{img['id']:012d}.png"
            jpg = Image.open(out / split / img["file_name"])
            png = Image.open(out / f"panoptic_{split}" / ann["file_name"])
            assert jpg.format == "JPEG" and png.format == "PNG" and png.mode == "RGB"
            assert jpg.size == png.size == (img["width"], img["height"]) == (128, 128)
        assert result["splits"][split]["panoptic_json"] == str(out / f"panoptic_{split}.json")


def test_png_ids_match_segments_info(data):
    out, _ = data
    for split in ("train", "val"):
        for ann in _load(out / f"panoptic_{split}.json")["annotations"]:
            ids = rgb2id(np.array(Image.open(out / f"panoptic_{split}" / ann["file_name"]), np.uint32))
            segs = {s["id"]: s for s in ann["segments_info"]}
            assert len(segs) == len(ann["segments_info"]), "duplicate segment ids"
            assert set(np.unique(ids)) - {0} == set(segs)
            stuff_cats = [s["category_id"] for s in segs.values() if s["category_id"] in STUFF]
            assert len(stuff_cats) == len(set(stuff_cats)), "one segment per stuff class"
            for sid, s in segs.items():
                assert 0 < sid < 256**3 and s["category_id"] in CATS and s["iscrowd"] in (0, 1)
                assert s["iscrowd"] == 0 or s["category_id"] in THINGS
                ys, xs = np.nonzero(ids == sid)
                assert s["area"] == ys.size
                assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_pq_of_ground_truth_against_itself_is_one(data):
    from panopticapi.evaluation import pq_compute

    out, _ = data
    gt_json, gt_dir = str(out / "panoptic_train.json"), str(out / "panoptic_train")
    res = pq_compute(gt_json, gt_json, gt_dir, gt_dir)
    for key in ("All", "Things", "Stuff"):
        assert res[key]["n"] > 0
        assert res[key]["pq"] == pytest.approx(1.0)
        assert res[key]["sq"] == pytest.approx(1.0) and res[key]["rq"] == pytest.approx(1.0)


def test_instances_json_matches_panoptic(data):
    out, _ = data
    for split in ("train", "val"):
        coco = COCO(str(out / f"instances_{split}.json"))
        pan = _load(out / f"panoptic_{split}.json")
        assert {c["id"] for c in coco.dataset["categories"]} == THINGS
        ann_ids = [a["id"] for a in coco.dataset["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids) and min(ann_ids) >= 1
        assert sorted(coco.getImgIds()) == sorted(i["id"] for i in pan["images"])
        for pan_ann in pan["annotations"]:
            ids = rgb2id(np.array(Image.open(out / f"panoptic_{split}" / pan_ann["file_name"]), np.uint32))
            things = [s for s in pan_ann["segments_info"] if s["category_id"] in THINGS]
            dets = coco.loadAnns(coco.getAnnIds(imgIds=[pan_ann["image_id"]], iscrowd=None))
            assert len(dets) == len(things)
            unmatched = {s["id"]: s for s in things}
            for det in dets:
                assert isinstance(det["segmentation"]["counts"], str)
                m = coco.annToMask(det).astype(bool)
                assert int(mask_utils.area(det["segmentation"])) == det["area"] == m.sum()
                sid = int(np.bincount(ids[m]).argmax())
                seg = unmatched.pop(sid)  # each panoptic thing segment matched exactly once
                assert np.array_equal(m, ids == sid)
                assert (det["category_id"], det["iscrowd"], det["bbox"]) == (
                    seg["category_id"], seg["iscrowd"], seg["bbox"])
            assert not unmatched


def test_deterministic_for_any_worker_count_and_seed_dependent(data, tmp_path):
    out, _ = data
    again = tmp_path / "again"
    make_synthetic(again, **{**ARGS, "num_train": 14}, workers=1)  # leaves stale files behind ...
    make_synthetic(again, **ARGS, workers=1)  # ... which this run must remove
    assert _digests(again) == _digests(out)
    other = tmp_path / "other"
    make_synthetic(other, **{**ARGS, "seed": 4}, workers=2)
    a, b = _digests(out), _digests(other)
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a)


def test_render_scene_is_pure_and_typed():
    a = render_scene(np.random.default_rng(5), (96, 160))
    b = render_scene(np.random.default_rng(5), (96, 160))
    assert a[0].shape == (96, 160, 3) and a[0].dtype == np.uint8 and a[1].shape == (96, 160)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert [s["id"] for s in a[2]] == sorted(set(np.unique(a[1])) - {0})
    c = render_scene(np.random.default_rng(6), (96, 160))
    assert not np.array_equal(a[0], c[0])


def test_scene_statistics(scenes):
    style, scenes = scenes
    cats, roots, crowd, empty = Counter(), [], 0, 0
    for _, _, segs in scenes:
        cats.update({s["category_id"] for s in segs})
        roots += [np.sqrt(s["area"]) for s in segs if s["category_id"] in THINGS and not s["iscrowd"]]
        crowd += sum(s["iscrowd"] for s in segs)
        empty += not any(s["category_id"] in THINGS for s in segs)
        assert all(s["area"] >= 6 for s in segs if s["category_id"] in THINGS)
    assert len(set(cats) & STUFF) >= 4 and len(set(cats) & THINGS) >= 3
    # a range of sizes: 8x in the wide scenes, 4x in the close ones (a tenth to half the side)
    assert max(roots) / min(roots) >= {"wide": 8, "close": 4}[style]
    assert 1 <= empty <= 0.3 * len(scenes)
    assert crowd >= 1
    # every stuff class is common but not everywhere (sky excepted)
    for name in ("road", "water", "mountain"):
        assert 0.2 * len(scenes) <= cats[NAME[name]] < len(scenes)


def test_same_class_instances_touch_or_overlap(scenes):
    style, scenes = scenes
    touching = 0
    for _, pan, _ in scenes:
        found = False
        for a, b in ((pan[:, :-1], pan[:, 1:]), (pan[:-1], pan[1:])):  # 4-adjacent pixel pairs
            same = (a != b) & (a // 1000 == b // 1000) & np.isin(a // 1000, list(THINGS))
            found |= bool(same.any())
        touching += found
    assert touching >= 0.3 * len(scenes)


def test_things_are_placed_where_they_belong(scenes):
    style, scenes = scenes
    below, ring = defaultdict(Counter), Counter()
    for _, pan, segs in scenes:
        H = pan.shape[0]
        for s in segs:
            if s["iscrowd"] or s["category_id"] not in THINGS:
                continue
            m = pan == s["id"]
            if s["category_id"] == NAME["bird"]:  # the stuff around a bird
                d = m.copy()
                d[1:] |= m[:-1]; d[:-1] |= m[1:]; d[:, 1:] |= m[:, :-1]; d[:, :-1] |= m[:, 1:]  # noqa: E702
                around = pan[d & ~m]
                ring.update((around[np.isin(around // 1000, list(STUFF))] // 1000).tolist())
                continue
            cols = np.flatnonzero(m.any(0))  # the stuff just below the lowest pixel of each column
            rows = H - np.argmax(m[::-1, cols], 0)
            keep = rows < H
            under = pan[rows[keep], cols[keep]]
            below[s["category_id"]].update((under[np.isin(under // 1000, list(STUFF))] // 1000).tolist())

    def frac(counter, cat):
        assert sum(counter.values()) > 20
        return counter[cat] / sum(counter.values())

    assert frac(below[NAME["car"]], NAME["road"]) > 0.8
    assert frac(below[NAME["boat"]], NAME["water"]) > 0.7
    assert frac(below[NAME["person"]], NAME["grass"]) > 0.8
    assert frac(ring, NAME["sky"]) > 0.8


def test_perspective_far_cars_are_smaller(scenes):
    style, scenes = scenes
    bottoms, widths = [], []
    for _, _, segs in scenes:
        for s in segs:
            if s["category_id"] == NAME["car"]:
                bottoms.append(s["bbox"][1] + s["bbox"][3])
                widths.append(s["bbox"][2])
    assert len(widths) > 20 and np.corrcoef(bottoms, widths)[0, 1] > 0.4


def test_summarize_and_format(data):
    out, _ = data
    summary = data_stats(out)
    assert set(summary) == {"train", "val"}
    for split, n in (("train", 12), ("val", 6)):
        s = summary[split]
        pan = _load(out / f"panoptic_{split}.json")
        assert s["images"] == n
        total = sum(c["normal"] + c["crowd"] for c in s["segments"].values())
        assert total == sum(len(a["segments_info"]) for a in pan["annotations"])
        assert s["segments"]["sky"] == {"isthing": 0, "normal": n, "crowd": 0}
        assert s["thing_scale_ratio"] == pytest.approx(s["thing_sqrt_area_max"] / s["thing_sqrt_area_min"])
        assert 1 <= s["stuff_classes_present"] <= 5
    text = format_data_stats(summary)
    assert "train" in text and "val" in text and "person" in text and "mountain" in text
    assert len(text.splitlines()) >= 10


def test_close_scenes_show_larger_things_than_wide_ones():
    """The close style draws things twice as large, none under a tenth of the side (but for
    what occlusion hides); the wide style keeps the first version's tiny distant things."""
    def box_sides(style):
        return [max(s["bbox"][2:]) for i in range(40)
                for s in render_scene(np.random.default_rng([12, i]), 128, style)[2]
                if s["category_id"] in THINGS and not s["iscrowd"]]

    close, wide = box_sides("close"), box_sides("wide")
    assert len(close) > 100 and len(wide) > 100
    assert np.median(close) >= 1.6 * np.median(wide)
    assert np.percentile(close, 10) >= 12 > np.percentile(wide, 10)
    assert max(close) <= 128


def test_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="scene"):
        make_synthetic(tmp_path / "x", num_train=1, num_val=1, size=64, scene="far", progress=False)
    with pytest.raises(InputError, match="scene"):
        render_scene(np.random.default_rng(0), 64, "far")
    with pytest.raises(InputError):
        make_synthetic(tmp_path / "x", num_train=1, num_val=0, size=8, progress=False)
    with pytest.raises(InputError):
        make_synthetic(tmp_path / "x", num_train=-1, num_val=0, size=64, progress=False)
    with pytest.raises(InputError):
        data_stats(tmp_path / "missing")
