"""Flow maps (viz/flows.py): what each spatial flow adds to its receiving tower, measured with
forward hooks, and the share of it inside the ground-truth thing boxes."""

import math
import warnings

import numpy as np
import pytest
import torch

from spatialflow.config import NO_FLOWS, load_config
from spatialflow.data.categories import CategoryMap
from spatialflow.data.synthetic import SYNTHETIC_CATEGORIES
from spatialflow.model import build_model
from viz.flows import (describe_flow_share, flow_box_share, flow_maps, flow_maps_figure,
                       mean_shares, thing_boxes)

CATS = CategoryMap.from_coco(SYNTHETIC_CATEGORIES)
ALL = {"reg->cls", "reg->stuff", "reg->thing", "stuff->thing"}


def _model(*overrides):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_model(load_config("tiny-cpu", list(overrides)), CATS).eval()


@pytest.fixture(scope="module")
def image():
    return torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(0))


def test_one_map_per_flow_and_level_at_the_image_s_cells(image):
    model = _model()
    maps = flow_maps(model, image)
    assert set(maps) == ALL
    for entry in maps.values():
        assert [m.shape for m in entry["levels"]] == [(8, 10), (4, 5), (2, 3)]
        assert entry["stride"] == [8, 16, 32] and entry["size"] == (64, 80)
        assert all(np.isfinite(m).all() and (m >= 0).all() and m.max() > 0 for m in entry["levels"])
    assert maps["stuff->thing"]["of"] == "zeta(P_stuff)" and maps["reg->cls"]["of"] == "psi(P_reg)"
    # the hooks are gone and the model is as it was
    assert all(not m._forward_hooks for m in model.modules()) and not model.training


def test_maps_change_with_their_flow_s_conv_only(image):
    model = _model()
    before = flow_maps(model, image)
    with torch.no_grad():
        model.subnets.reg_to_thing.weight.mul_(3.0)  # (its bias is 0 at initialisation)
    after = flow_maps(model, image)
    for level in range(3):
        np.testing.assert_allclose(after["reg->thing"]["levels"][level],
                                   3 * before["reg->thing"]["levels"][level], rtol=1e-4)
        for name in ALL - {"reg->thing"}:
            np.testing.assert_array_equal(after[name]["levels"][level],
                                          before[name]["levels"][level])


def test_a_flow_that_is_off_has_no_map(image):
    assert set(flow_maps(_model("model.flows.reg_to_stuff=false"), image)) == ALL - {"reg->stuff"}
    assert flow_maps(_model(*NO_FLOWS), image) == {}
    assert set(flow_maps(_model("model.subnets=false"), image)) == {"reg->cls"}
    assert set(flow_maps(_model("model.flows.source=cls"), image)) == {
        "cls->reg", "cls->stuff", "cls->thing", "stuff->thing"}
    assert flow_maps(_model("model.dcn=true", "model.dcn_towers=[cls, stuff, thing]"),
                     image).keys() == {"stuff->thing"}  # the others steer DCN offsets
    assert "no flow" in describe_flow_share({})


def _entry(level_maps, size):
    return {"levels": level_maps, "stride": [8, 16, 32][:len(level_maps)], "size": size,
            "of": "psi(P_reg)"}


def test_box_share_against_box_area():
    size = (32, 32)
    boxes = np.array([[0, 0, 16, 16]])  # xywh: a quarter of the image
    flat = _entry([np.ones((4, 4), np.float32)], size)
    on_box = np.zeros((4, 4), np.float32)
    on_box[:2, :2] = 1.0  # the cells of the box only
    half = np.ones((4, 4), np.float32)
    half[:2, :2] = 3.0  # 12 of 24 units inside
    shares = flow_box_share({"flat": flat, "box": _entry([on_box], size),
                             "half": _entry([half], size)}, boxes, size)
    assert shares["flat"]["area"] == pytest.approx(0.25)
    assert shares["flat"]["share"] == pytest.approx(0.25) and shares["flat"]["ratio"] == pytest.approx(1)
    assert shares["box"]["share"] == pytest.approx(1.0) and shares["box"]["ratio"] == pytest.approx(4)
    assert shares["half"]["share"] == pytest.approx(0.5) and shares["half"]["levels"] == [pytest.approx(0.5)]
    # the original image may be larger than what the model saw: maps are brought to its size
    big = flow_box_share({"box": _entry([on_box], size)}, boxes * 2, (64, 64))
    assert big["box"]["share"] == pytest.approx(1.0) and big["box"]["area"] == pytest.approx(0.25)
    text = describe_flow_share(shares)
    assert "cover 25% of this image" in text
    assert "flat 25% (1.0x)" in text and "box 100% (4.0x)" in text and "half 50% (2.0x)" in text
    assert text.endswith(": box and half put more of their magnitude on the things than the "
                         "boxes' area would; flat about as much as their area.")
    one = describe_flow_share({"box": shares["box"], "off": dict(shares["flat"], ratio=0.4)})
    assert one.endswith(": box puts more of its magnitude on the things than the boxes' area "
                        "would; off less.")
    assert "(1.0x)" in describe_flow_share({"x": dict(shares["flat"], ratio=1.04)})
    assert "x about as much" in describe_flow_share({"x": dict(shares["flat"], ratio=1.04)})
    three = describe_flow_share({k: shares["box"] for k in ("a", "b", "c")})
    assert ": a, b and c put more of their magnitude" in three
    mean = mean_shares([shares, flow_box_share({"flat": flat, "box": _entry([on_box], size),
                                                "half": _entry([half], size)},
                                               np.array([[0, 0, 32, 32]]), size)])
    assert mean["box"]["area"] == pytest.approx(0.625) and mean["box"]["share"] == pytest.approx(1)
    assert mean["box"]["images"] == 2 and "these 2 images" in describe_flow_share(mean)


def test_thing_boxes_and_the_figure(image):
    segments = [{"id": 1, "category_id": 1, "bbox": [4, 5, 10, 12]},
                {"id": 2, "category_id": 10, "bbox": [0, 0, 80, 64]}]
    things = {c["id"] for c in CATS.thing_categories()}
    segments[0]["category_id"] = min(things)
    segments[1]["category_id"] = min(c["id"] for c in CATS.to_coco() if not c["isthing"])
    boxes = thing_boxes(segments, CATS)
    assert boxes.tolist() == [[4, 5, 10, 12]]
    maps = flow_maps(_model(), image)
    fig = flow_maps_figure(image, maps, boxes)
    images = [ax for ax in fig.axes if ax.get_images()]
    assert len(images) == 16  # 4 flows x (image + P3-P5)
    titles = [ax.get_title() for ax in images]
    assert titles[:4] == ["image, thing boxes (ground truth)", "P3 (stride 8)", "P4 (stride 16)",
                          "P5 (stride 32)"]
    assert [ax.get_ylabel() for ax in images[::4]] == ["reg->cls", "reg->stuff", "reg->thing",
                                                       "stuff->thing"]
    bars = [ax for ax in fig.axes if ax not in images]
    assert len(bars) == 4 and bars[-1].get_ylabel() == "‖zeta(P_stuff)‖ per pixel"
    assert not math.isnan(flow_box_share(maps, boxes, (64, 80))["reg->cls"]["share"])
