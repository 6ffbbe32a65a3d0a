"""The notebook explorer, driven headless: widget values are set in code and what it shows
(``.state()``, ``.current()``, the PNG in ``.image``) is checked; plus the per-image PQ."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from spatialflow.config import InferConfig
from spatialflow.data.categories import CategoryMap
from spatialflow.data.coco_panoptic import CocoPanopticDataset
from spatialflow.errors import InputError
from spatialflow.evaluation import image_pq
from spatialflow.render import segment_colors
from viz.widgets import (CAPTION_HEIGHT, PanopticExplorer, legend_items, png_bytes,
                         render_panel, render_view, visible_segments)

from conftest import TINY_CATEGORIES, tiny_scene, write_tiny_dataset

CM = CategoryMap.from_coco(TINY_CATEGORIES)
H, W = 40, 48                                        # tiny_scene's size
SCORES = {301: 0.9, 302: 0.3, 701: 0.6}              # the stub's score of each GT thing
LOOSE = InferConfig(mask_conf=0.2, stuff_area=0, box_fill_enabled=False)


# --- image_pq -----------------------------------------------------------------------------------
def test_image_pq_identical_prediction_is_1():
    for crowd in (False, True):
        pan, segs = tiny_scene(crowd=crowd)
        r = image_pq(pan, segs, pan, segs, CM)
        for group in ("All", "Things", "Stuff"):
            assert r[group]["pq"] == pytest.approx(1.0) and r[group]["n"] == 2 + (group == "All") * 2


def test_image_pq_one_segment_removed():
    pan, segs = tiny_scene(crowd=False)
    pred = np.where(pan == 302, 0, pan)                   # box 302 missed: its pixels VOID
    r = image_pq(pan, segs, pred, [s for s in segs if s["id"] != 302], TINY_CATEGORIES)
    # class 'box': 1 TP (IoU 1) + 1 FN -> PQ = 1 / (1 + 0.5) = 2/3; every other class 1
    assert r["per_class"][3]["pq"] == pytest.approx(2 / 3)
    assert r["Things"]["pq"] == pytest.approx((2 / 3 + 1) / 2)
    assert r["Stuff"]["pq"] == pytest.approx(1.0)
    assert r["All"]["pq"] == pytest.approx((2 / 3 + 3) / 4)
    assert r["All"]["sq"] == pytest.approx(1.0) and r["All"]["rq"] == pytest.approx(11 / 12)


def test_image_pq_empty_group_and_bad_input():
    pan, segs = tiny_scene(crowd=False)
    stuff_only = np.where(np.isin(pan, [301, 302, 701]), 0, pan)
    stuff_segs = [s for s in segs if s["category_id"] in (11, 20)]
    r = image_pq(stuff_only, stuff_segs, stuff_only, stuff_segs, CM)
    assert r["Things"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0} and r["Stuff"]["pq"] == 1.0
    with pytest.raises(ValueError, match="not in its segments"):
        image_pq(pan, segs, pan, segs[:2], CM)


# --- a predict function whose raw outputs we control --------------------------------------------
class Stub:
    """Answers with the ground truth of the image it gets: each non-crowd thing a detection
    with the score ``scores[segment id]`` (left out when missing), the stuff map one-hot.
    Counts its calls."""

    def __init__(self, dataset, scores=SCORES):
        self.ds, self.scores, self.calls = dataset, scores, 0
        self.index = {dataset.load(i)[0].tobytes(): i for i in range(len(dataset))}

    def __call__(self, image):
        self.calls += 1
        _, pan, rec = self.ds.load(self.index[image.tobytes()])
        things = [s for s in rec["segments_info"]
                  if CM.is_thing(s["category_id"]) and not s["iscrowd"] and s["id"] in self.scores]
        masks = torch.stack([torch.from_numpy(pan == s["id"]).float()[None] for s in things]) \
            if things else torch.zeros(0, 1, *pan.shape)
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (s["bbox"] for s in things)],
                             dtype=torch.float32).reshape(-1, 4)
        sem = np.full(pan.shape, CM.other_index)
        for s in rec["segments_info"]:
            if not CM.is_thing(s["category_id"]):
                sem[pan == s["id"]] = CM.stuff_index(s["category_id"])
        sem_probs = torch.nn.functional.one_hot(torch.from_numpy(sem), CM.num_sem_classes)
        return {"boxes": boxes, "scores": torch.tensor([self.scores[s["id"]] for s in things]),
                "labels": torch.tensor([CM.thing_index(s["category_id"]) for s in things]),
                "masks": masks, "sem_probs": sem_probs.permute(2, 0, 1).float()}


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return CocoPanopticDataset(*write_tiny_dataset(root, n=3, image_ext=".png"))


def decoded(explorer):
    return np.asarray(Image.open(io.BytesIO(bytes(explorer.image.value))).convert("RGB"))


def descendants(widget):
    out = [widget]
    for child in getattr(widget, "children", ()):
        out += descendants(child)
    return out


def thing_ids(panel):
    return sorted(s["id"] for s in panel["segments"] if s["isthing"])


# --- the explorer -------------------------------------------------------------------------------
def test_ground_truth_browser(ds):
    ex = PanopticExplorer(ds, titles=False)
    st = ex.state()
    assert [p["name"] for p in st["panels"]] == ["ground truth"] and st["panels"][0]["pq"] is None
    assert st["thresholds"] is None and ex.mask_conf not in descendants(ex.widget)
    assert st["panels"][0]["segments"] == ds.annotation(0)["segments_info"]
    image, pan, rec = ds.load(0)
    expected = render_view(image, [("ground truth", pan, rec["segments_info"])], CM,
                           opacity=ex.opacity.value, titles=False)
    assert np.array_equal(ex.current()["view"], expected)
    assert np.array_equal(decoded(ex), expected)             # the PNG holds the view
    assert ex.split.layout.display == "none"                  # one split: no selector
    assert "floor" in ex.info.value                           # legend next to the image


def test_index_slider_changes_the_image_and_outputs_are_cached(ds):
    stub = Stub(ds)
    ex = PanopticExplorer(ds, stub, infer=LOOSE)
    first = bytes(ex.image.value)
    ex.index.value = 1
    assert ex.state()["index"] == 1 and ex.state()["image_id"] == ds.annotation(1)["image_id"]
    assert bytes(ex.image.value) != first
    assert np.array_equal(ex.current()["image"], ds.load(1)[0])
    ex.mask_conf.value = 0.5
    ex.overlap.value = 0.2
    ex.index.value = 0
    assert stub.calls == 2                                    # once per image, never per slider
    ex.mask_conf.value = 0.2
    ex.overlap.value = LOOSE.overlap
    assert bytes(ex.image.value) == first and stub.calls == 2


def test_mask_confidence_slider_removes_low_score_things_and_pq_follows(ds):
    ex = PanopticExplorer(ds, Stub(ds), infer=LOOSE, names=("model",))
    assert ex.mask_conf in descendants(ex.widget)
    ex.index.value = 1                                        # no crowd in this image
    pred = ex.state()["panels"][1]
    assert thing_ids(pred) == [1, 2, 3] and pred["pq"]["All"]["pq"] == pytest.approx(1.0)
    ex.mask_conf.value = 0.5                                  # drops the 0.3 box
    pred = ex.state()["panels"][1]
    assert sorted(s["score"] for s in pred["segments"] if s["isthing"]) == pytest.approx([0.6, 0.9])
    assert pred["pq"]["All"]["pq"] == pytest.approx(11 / 12)  # as the hand-computed image_pq
    ex.mask_conf.value = 0.7
    pred = ex.state()["panels"][1]
    assert [s["score"] for s in pred["segments"] if s["isthing"]] == pytest.approx([0.9])
    # the PQ shown is image_pq of what is shown
    cur = ex.current()
    _, gt_pan, rec = ds.load(1)
    p = cur["panels"][1]
    assert p["pq"] == image_pq(gt_pan, rec["segments_info"], p["pan"], p["segments"], CM)
    assert f"{100 * p['pq']['All']['pq']:.1f}" in ex.info.value
    assert ex.infer_config().mask_conf == pytest.approx(0.7)


def test_stuff_area_and_box_fill_sliders(ds):
    ex = PanopticExplorer(ds, Stub(ds, scores={301: 0.9}), infer=LOOSE)
    ex.index.value = 1
    cats = lambda: sorted(s["category_id"] for s in ex.state()["panels"][1]["segments"])
    assert cats() == [3, 11, 20]
    ex.stuff_area.value = 800                                 # floor has 760 px: dropped
    assert cats() == [3, 11]
    ex.stuff_area.value = 900                                 # wall has 876 px: dropped too
    assert cats() == [3]
    ex.stuff_area.value = 0
    ex.box_fill_enabled.value = True                          # box 301 is already whole
    assert cats() == [3, 11, 20]


def test_layer_toggles_and_opacity_change_the_pixels(ds):
    ex = PanopticExplorer(ds, titles=False)
    ex.show_boundaries.value = False
    ex.opacity.value = 1.0
    image = ex.current()["image"]
    colors = segment_colors(ds.annotation(0)["segments_info"], CM)
    view = ex.current()["view"]
    assert view[28, 8].tolist() == colors[301].tolist()       # box in its colour
    assert view[2, 2].tolist() == colors[1100].tolist()       # wall in its colour
    ex.show_things.value = False
    view = ex.current()["view"]
    assert view[28, 8].tolist() == image[28, 8].tolist()      # thing colour gone: the image
    assert view[2, 2].tolist() == colors[1100].tolist()       # stuff unchanged
    assert not any(CM.is_thing(s["category_id"]) for s in ex.current()["panels"][0]["shown"])
    ex.show_stuff.value = False
    assert np.array_equal(ex.current()["view"], image)
    ex.show_things.value = ex.show_stuff.value = True
    ex.opacity.value = 0.5
    half = ex.current()["view"][2, 2].astype(int)
    assert np.abs(half - (image[2, 2] * 0.5 + colors[1100] * 0.5)).max() <= 1
    ex.opacity.value = 0.0
    assert np.array_equal(ex.current()["view"], image)
    ex.show_boxes.value = True                                # boxes drawn over the image
    assert not np.array_equal(ex.current()["view"], image)


def test_ab_mode_shows_both_models_with_their_pq(ds):
    a = Stub(ds)
    b = Stub(ds, scores={301: 0.9, 701: 0.6})                 # misses one box
    ex = PanopticExplorer(ds, a, infer=LOOSE, model_b=b, names=("with flows", "without flows"))
    ex.index.value = 1
    st = ex.state()
    assert [p["name"] for p in st["panels"]] == ["ground truth", "with flows", "without flows"]
    assert st["shape"] == [H + CAPTION_HEIGHT, 3 * W + 2 * 4, 3]
    assert st["panels"][1]["pq"]["All"]["pq"] == pytest.approx(1.0)
    assert st["panels"][2]["pq"]["All"]["pq"] == pytest.approx(11 / 12)
    ex.show_gt.value = False
    st = ex.state()
    assert [p["name"] for p in st["panels"]] == ["with flows", "without flows"]
    assert st["shape"] == [H + CAPTION_HEIGHT, 2 * W + 4, 3]
    cur = ex.current()
    assert np.array_equal(cur["view"][CAPTION_HEIGHT:, :W], cur["panels"][0]["overlay"])
    assert np.array_equal(cur["view"][CAPTION_HEIGHT:, W + 4:], cur["panels"][1]["overlay"])
    assert "with flows" in ex.info.value and "without flows" in ex.info.value
    assert a.calls == 2 and b.calls == 2                      # images 0 and 1, once each


def test_split_selector(ds, tmp_path):
    other = CocoPanopticDataset(*write_tiny_dataset(tmp_path, n=2, image_ext=".png"))
    ex = PanopticExplorer(None, splits={"val": ds, "train": other})
    assert list(ex.split.options) == ["val", "train"] and ex.index.max == 2
    assert ex.split.layout.display != "none"
    ex.index.value = 2
    ex.split.value = "train"
    assert ex.index.max == 1 and ex.state()["split"] == "train" and ex.state()["index"] == 0
    assert ex.dataset is other
    ex2 = PanopticExplorer(tmp_path)                           # a data folder: its splits
    assert list(ex2.split.options) == ["train"]
    with pytest.raises(InputError, match=r"split\(s\) \['test'\] not among .*'val', 'train'"):
        PanopticExplorer({"val": ds, "train": other}, splits=["val", "test"])


def test_pure_helpers():
    pan, segs = tiny_scene(crowd=False)
    for s in segs:
        s["isthing"] = int(CM.is_thing(s["category_id"]))
    shown_pan, shown = visible_segments(pan, segs, CM, things=False)
    assert {s["id"] for s in shown} == {1100, 2000} and not np.isin(shown_pan, [301, 302, 701]).any()
    image = np.zeros((H, W, 3), np.uint8)
    panel = render_panel(image, pan, segs, CM, title="x")
    assert panel.shape == (H + CAPTION_HEIGHT, W, 3)
    items = legend_items(segs, CM)
    assert [it["isthing"] for it in items] == [True, True, True, False, False]
    colors = segment_colors(segs, CM)
    assert all(it["color"] == tuple(colors[it["id"]].tolist()) for it in items)
    assert items[0]["name"] == "box" and items[-1]["area"] <= items[-2]["area"]
    png = png_bytes(panel)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        render_view(image, [], CM)


def test_with_a_real_tiny_model_and_from_run(ds, tmp_path):
    from spatialflow.config import config_to_dict, load_config
    from spatialflow.engine.runs import FINAL, save_checkpoint
    from spatialflow.model.spatialflow import build_model

    cfg = load_config("tiny-cpu", ["model.fpn_channels=16", "model.stuff_head_channels=8",
                                   "data.test_size=64", "data.max_size=96"])
    torch.manual_seed(0)
    model = build_model(cfg, CM).eval()
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    ex = PanopticExplorer(ds, model, infer=cfg.infer, test_size=64, max_size=96)
    ex.mask_conf.value = 0.0
    ex.stuff_area.value = 10
    assert len(calls) == 1 and len(ex.state()["panels"]) == 2
    assert ex.state()["panels"][1]["pq"]["All"]["n"] >= 2

    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / FINAL, {"model": model.state_dict(), "config": config_to_dict(cfg),
                                  "categories": CM.to_coco()})
    ex = PanopticExplorer.from_run(run, data=ds.image_dir.parent, run_b=run / FINAL,
                                   splits=["train"])
    assert [p["name"] for p in ex.state()["panels"]] == ["ground truth", "run (A)", "run (B)"]
    assert ex.stuff_area.value == cfg.infer.stuff_area
    # A/B of two study runs: the panels carry the variants, not 'seed0' twice
    import shutil

    for variant in ("both-0123abcd", "sub-networks-89abcdef"):
        (tmp_path / "study" / variant).mkdir(parents=True)
        shutil.copytree(run, tmp_path / "study" / variant / "seed0")
    ex = PanopticExplorer.from_run(tmp_path / "study" / "both-0123abcd" / "seed0",
                                   data=ds.image_dir.parent, splits=["train"],
                                   run_b=tmp_path / "study" / "sub-networks-89abcdef" / "seed0")
    assert [p["name"] for p in ex.state()["panels"]] == ["ground truth", "both (seed 0)",
                                                          "sub-networks (seed 0)"]

    # open(): the run if it holds a model, else the ground truth with a warning
    ex = PanopticExplorer.open(run, data=ds.image_dir.parent, splits=["train"])
    assert [p["name"] for p in ex.state()["panels"]] == ["ground truth", "run"]
    with pytest.warns(UserWarning, match="no trained run at .*missing"):
        ex = PanopticExplorer.open(tmp_path / "missing", data=ds.image_dir.parent,
                                   splits=["train"], names=("x", "y"))
    assert [p["name"] for p in ex.state()["panels"]] == ["ground truth"]
    with pytest.raises(ValueError, match="no data given"):
        PanopticExplorer.open(None)


# --- bad input: unreadable items, models of other categories, folders that are not runs -----
OTHER_CM = CategoryMap.from_coco(TINY_CATEGORIES[:1] + [dict(TINY_CATEGORIES[1], id=8)]
                                 + TINY_CATEGORIES[2:])      # things 7, 8 instead of 3, 7


@pytest.fixture
def bad_ds(tmp_path):
    """Items: 0 fine, 1 a truncated image, 2 a PNG holding an id not in its segments_info,
    3 fine."""
    img_dir, js, png_dir = write_tiny_dataset(tmp_path, n=4, image_ext=".png")
    data = (img_dir / "0001.png").read_bytes()
    (img_dir / "0001.png").write_bytes(data[: len(data) // 2])
    pan, _ = tiny_scene(crowd=True)
    pan[pan == 302] = 303
    from spatialflow.data.panoptic_io import write_panoptic_png
    write_panoptic_png(png_dir / "0002.png", pan)
    return CocoPanopticDataset(img_dir, js, png_dir)


def shown_error(ex):
    st = ex.state()
    assert st["error"] is not None and st["panels"] == [] and ex.error == st["error"]
    assert ex.image.value == b"" and "cannot be shown" in ex.info.value
    return ex.info.value


def test_unreadable_items_are_reported_and_browsing_goes_on(bad_ds):
    calls = []

    def predict(image):                                       # a model answering 'nothing'
        calls.append(1)
        h, w = image.shape[:2]
        return {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                "labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 1, h, w),
                "sem_seg": torch.full((h, w), CM.other_index)}

    for model in (None, predict):
        ex = PanopticExplorer(bad_ds, model, infer=LOOSE)
        assert ex.state()["error"] is None
        ex.index.value = 1                                    # truncated image: no exception
        info = shown_error(ex)
        assert "0001.png" in info and "cannot decode image" in info and "DatasetError" in info
        ex.index.value = 2                                    # PNG ids != segments_info
        info = shown_error(ex)
        assert "0002.png" in info and "[303] are not in segments_info" in info
        ex.index.value = 3                                    # the next item is shown again
        st = ex.state()
        assert st["error"] is None and st["index"] == 3 and ex.error is None
        assert st["image_id"] == 4 and bytes(ex.image.value)[:4] == b"\x89PNG"
        assert "cannot be shown" not in ex.info.value and "floor" in ex.info.value
        ex.index.value = 1                                    # and the bad one again
        assert "cannot decode image" in shown_error(ex)
        ex.mask_conf.value = 0.5                              # sliders on a bad item: no crash
        assert "cannot decode image" in shown_error(ex)
        ex.index.value = 0
        assert ex.state()["error"] is None
    assert len(calls) == 2                                    # only the readable images ran


def test_a_bad_first_item_does_not_stop_the_explorer(bad_ds):
    ex = PanopticExplorer(None, splits={"val": bad_ds})
    ex.index.value = 1
    assert "0001.png" in shown_error(ex)
    # a new explorer on the bad item: constructed, showing the fault
    ex2 = PanopticExplorer(bad_ds)
    ex2.index.value = 2
    ex2.split.value = "data"                                  # no-op: one split
    assert "0002.png" in shown_error(ex2)


def test_a_model_answering_labels_of_other_categories_is_reported(ds):
    def predict(image):                                       # thing label 5: not in 0..1
        h, w = image.shape[:2]
        masks = torch.zeros(1, 1, h, w)
        masks[..., 2:8, 2:8] = 1.0
        return {"boxes": torch.tensor([[2.0, 2, 8, 8]]), "scores": torch.tensor([0.9]),
                "labels": torch.tensor([5]), "masks": masks,
                "sem_seg": torch.full((h, w), CM.other_index)}

    ex = PanopticExplorer(ds, predict, infer=LOOSE, names=("odd",))
    info = shown_error(ex)
    assert "0000.png" in info and "model &#x27;odd&#x27;" in info
    assert "thing label 5 is outside 0..1" in info and "2 thing classes" in info
    ex.index.value = 1                                        # every image: reported, no crash
    assert "0001.png" in shown_error(ex) and ex.state()["index"] == 1


class FakeModel(torch.nn.Module):
    """A module with a SpatialFlow's class counts (never run: refused before)."""

    def __init__(self, num_things, num_sem_classes):
        super().__init__()
        self.num_things, self.num_sem_classes = num_things, num_sem_classes


def test_a_model_of_other_categories_is_refused(ds):
    with pytest.raises(InputError, match=r"2 thing classes, 2 stuff.*model 'A'.*3 thing classes"):
        PanopticExplorer(ds, FakeModel(3, 3))
    with pytest.raises(InputError, match=r"model 'without'.*2 thing classes and 4 stuff"):
        PanopticExplorer(ds, FakeModel(2, 3), model_b=FakeModel(2, 5),
                         names=("with", "without"))              # A/B: B is checked too
    with pytest.raises(InputError, match=r"model 'A', which has 1 thing classes"):
        PanopticExplorer(ds, model_b=FakeModel(1, 3))            # model_b alone
    # with the categories it was trained on, the dataset ids are compared
    with pytest.raises(InputError, match=r"panoptic_train.json: its categories are not those "
                                         r"model 'A' was trained on \(here: the data; there: "
                                         r"the model\): missing here \(1\): 8 box; only here "
                                         r"\(1\): 3 box$"):
        PanopticExplorer(ds, FakeModel(2, 3), model_categories=OTHER_CM)
    with pytest.raises(InputError, match=r"model 'B' was trained on .*missing here \(1\): 8 box"):
        PanopticExplorer(ds, FakeModel(2, 3), model_b=FakeModel(2, 3), model_categories=CM,
                         model_b_categories=OTHER_CM)
    with pytest.raises(ValueError):                           # InputError is a ValueError
        PanopticExplorer(ds, FakeModel(3, 3))


def test_from_run_refuses_other_categories_and_folders_that_are_not_runs(ds, tmp_path):
    from spatialflow.config import config_to_dict, load_config
    from spatialflow.engine.runs import FINAL, save_checkpoint
    from spatialflow.model.spatialflow import build_model

    cfg = load_config("tiny-cpu", ["model.fpn_channels=16", "model.stuff_head_channels=8",
                                   "data.test_size=64", "data.max_size=96"])
    runs = {}
    for name, cats in (("same", CM), ("other", OTHER_CM)):
        runs[name] = tmp_path / name
        runs[name].mkdir()
        save_checkpoint(runs[name] / FINAL, {"model": build_model(cfg, cats).state_dict(),
                                             "config": config_to_dict(cfg),
                                             "categories": cats.to_coco()})
    data = ds.image_dir.parent
    with pytest.raises(InputError, match=r"not those model 'other' was trained on .*missing "
                                         r"here \(1\): 8 box; only here \(1\): 3 box"):
        PanopticExplorer.from_run(runs["other"], data=data, splits=["train"])
    with pytest.raises(InputError, match=r"model 'other' was trained on .*missing here \(1\): "
                                         r"8 box"):
        PanopticExplorer.from_run(runs["same"], data=data, run_b=runs["other"],
                                  splits=["train"])
    with pytest.raises(InputError, match=r"model 'other'"):
        PanopticExplorer.open(runs["other"], data=data, splits=["train"])
    # folders that are not runs
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"empty: not a trained run: no model_final.pt"):
        PanopticExplorer.from_run(empty, data=data)
    with pytest.raises(InputError, match=r"missing: no such run folder or checkpoint"):
        PanopticExplorer.from_run(tmp_path / "missing", data=data)
    with pytest.raises(InputError, match=r"empty: not a trained run"):
        PanopticExplorer.from_run(runs["same"], data=data, run_b=empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "checkpoint_last.pt").write_bytes(b"not a checkpoint")
    for open_ in (PanopticExplorer.from_run, PanopticExplorer.open):
        with pytest.raises(InputError, match=r"checkpoint_last.pt: not a readable checkpoint"):
            open_(broken, data=data)


def test_pq_table_says_not_measured_for_an_absent_group():
    from viz.widgets import pq_html

    result = {"All": {"pq": 0.5, "sq": 0.8, "rq": 0.625, "n": 2},
              "Things": {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0},
              "Stuff": {"pq": 0.5, "sq": 0.8, "rq": 0.625, "n": 2}}
    text = pq_html("A", result)
    assert "<tr><td>Things</td><td>-</td><td>-</td><td>-</td><td>0</td></tr>" in text
    assert "<tr><td>Stuff</td><td>50.0</td><td>80.0</td><td>62.5</td><td>2</td></tr>" in text
