"""Model size and FLOPs (spatialflow.model.summary, `spatialflow info --model`)."""

import warnings

import pytest
import torch

from spatialflow.cli import main
from spatialflow.config import load_config
from spatialflow.model import build_model
from spatialflow.benchmark.info import reference_retinanet
from spatialflow.benchmark.models import summary_categories
from spatialflow.model.summary import TOTAL, format_summary_table, model_summary

PARTS = {"backbone": "backbone.body", "fpn": "backbone.fpn", "cls tower": "subnets.cls_tower",
         "reg tower": "subnets.reg_tower", "stuff tower": "subnets.stuff_tower",
         "thing tower": "subnets.thing_tower", "flow reg->cls": "subnets.reg_to_cls",
         "flow reg->stuff": "subnets.reg_to_stuff", "flow reg->thing": "subnets.reg_to_thing",
         "flow stuff->thing": "subnets.stuff_to_thing", "cls head": "head.classification_head",
         "reg head": "head.regression_head", "thing head": "thing_head",
         "stuff head": "stuff_head"}
FLOWS = ("reg_to_cls", "reg_to_stuff", "reg_to_thing", "stuff_to_thing")


def model(preset="tiny-cpu", *overrides):
    cfg = load_config(preset, list(overrides))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_model(cfg, summary_categories(cfg))


def by_part(rows):
    return {r["part"]: r for r in rows}


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def check_sums(m, rows):
    """Parts sum to the total; params per part are the modules' own; no part left over."""
    parts, total = rows[:-1], rows[-1]
    assert total["part"] == TOTAL
    assert sum(r["params"] for r in parts) == total["params"] == n_params(m)
    assert sum(r["gflops"] for r in parts) == pytest.approx(total["gflops"], rel=1e-9)
    for r in parts:
        module = m.get_submodule(PARTS[r["part"]])
        assert r["params"] == n_params(module), r["part"]
    assert "other" not in " ".join(r["part"] for r in rows)  # everything counted is in a part


@pytest.fixture(scope="module")
def tiny_rows():
    m = model()
    return m, model_summary(m, 128)


def test_tiny_rows_sum_to_total_and_match_modules(tiny_rows):
    m, rows = tiny_rows
    check_sums(m, rows)
    assert set(by_part(rows)) == set(PARTS) | {TOTAL}
    assert "100 detections" in rows[-1]["note"]
    assert all(r["gflops"] > 0 for r in rows)
    # the pass leaves the model as it was
    assert m.training and m.score_thresh == pytest.approx(0.05)


def test_flows_off_and_naive_baseline_drop_their_rows():
    m = model("tiny-cpu", *(f"model.flows.{f}=false" for f in FLOWS))
    rows = model_summary(m, 128)
    check_sums(m, rows)
    assert not [r for r in rows if r["part"].startswith("flow")]
    m = model("tiny-cpu", "model.subnets=false")
    rows = by_part(model_summary(m, 128))
    assert "stuff tower" not in rows and "thing tower" not in rows
    assert "flow reg->stuff" not in rows and "flow stuff->thing" not in rows
    assert rows["thing head"]["gflops"] > 0 and rows["stuff head"]["gflops"] > 0


def test_tower_flops_scale_with_image_area(tiny_rows):
    m, rows = tiny_rows
    small, big = by_part(rows), by_part(model_summary(m, 256))
    for part in ("cls tower", "reg tower", "flow reg->cls"):
        assert big[part]["gflops"] / small[part]["gflops"] == pytest.approx(4.0, rel=0.02)
    # the thing head works on 100 RoIs of 14x14, whatever the image size
    assert big["thing head"]["gflops"] == pytest.approx(small["thing head"]["gflops"])


def test_deformable_convs_counted_as_plain_convs(tiny_rows):
    _, rows = tiny_rows
    m = model("tiny-cpu", "model.dcn=true")
    dcn = by_part(model_summary(m, 128))
    check_sums(m, list(dcn.values()))
    plain = by_part(rows)
    # plain 64 -> 64 3x3 conv (counted analytically) + psi_offset 64 -> 27 3x3 conv
    for part in ("cls tower", "stuff tower", "thing tower"):
        assert dcn[part]["gflops"] == pytest.approx(plain[part]["gflops"] * (64 + 27) / 64)
        assert "deformable" in dcn[part]["note"] and "psi_offset" in dcn[part]["note"]
    assert dcn["flow reg->cls"]["params"] == 0 and dcn["flow reg->cls"]["gflops"] == 0


def test_r50_coco_small_image():
    m = model("r50-coco")
    rows = model_summary(m, 128)
    check_sums(m, rows)
    parts = by_part(rows)
    assert "100 detections" in parts[TOTAL]["note"]
    # Mask R-CNN head on 100 RoIs: four 3x3 convs 256->256 at 14x14, a 2x2 deconv to 28x28
    # and a 1x1 conv to 80 classes, 2 FLOPs per multiply-add
    rois, c = 100, 256
    flops = rois * (4 * 2 * c * c * 9 * 14 * 14 + 2 * c * c * 4 * 14 * 14 + 2 * c * 80 * 28 * 28)
    assert parts["thing head"]["gflops"] == pytest.approx(flops / 1e9)
    assert 50e6 < parts[TOTAL]["params"] < 52e6


def test_reference_retinanet_params():
    ref = reference_retinanet(128, flops=False)
    # without backbone weights torchvision's ResNet keeps trainable BatchNorm
    assert ref["params"] - ref["bn_params"] == 34_014_999 and ref["gflops"] is None


def test_format_table(tiny_rows):
    text = format_summary_table(tiny_rows[1], "tiny")
    lines = text.splitlines()
    assert lines[0] == "tiny" and lines[2].startswith("| part | params | GFLOPs")
    assert lines[-1].startswith("| **total** |") and len(lines) == 4 + len(tiny_rows[1])


def test_cli_info_model(capsys):
    assert main(["info", "--model", "tiny-cpu", "--size", "128"]) == 0
    out = capsys.readouterr().out
    for part in ("| backbone |", "| cls tower |", "| flow stuff->thing |", "| thing head |",
                 "| **total** |", "FlopCounterMode", "128x128"):
        assert part in out
    assert "reference" not in out  # only for the paper presets
    assert main(["info", "--model", "tiny-cpu", "--size", "128", "--set",
                 "model.subnets=false"]) == 0
    assert "stuff tower" not in capsys.readouterr().out
    assert main(["info", "--model", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main(["info", "--model", "tiny-cpu", "--set", "model.flows.nope=1"]) == 2
    assert main(["info", "--model", "tiny-cpu", "--size", "8"]) == 2
