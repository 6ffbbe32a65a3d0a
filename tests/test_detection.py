"""The detector alone (``model.panoptic: false``, paper Table XII) and the sub-networks of 0
stages (Tables VII, VIII): building, training, evaluation, prediction, loading into a panoptic
model, and the study variants that run them."""

import json
import warnings

import numpy as np
import pytest
import torch

from spatialflow.cli import main
from spatialflow.config import load_config
from spatialflow.data.categories import CategoryMap
from spatialflow.data.synthetic import SYNTHETIC_CATEGORIES
from spatialflow.engine.predict import Predictor, evaluate_run
from spatialflow.engine.runs import load_run, load_weights
from spatialflow.engine.train import train
from spatialflow.errors import ConfigError, InputError
from spatialflow.model import build_model
from spatialflow.studies import (components_variants, config_key, detection_variants,
                                 stages_variants)
from conftest import fast

CATS = CategoryMap.from_coco(SYNTHETIC_CATEGORIES)
DETECTOR = "model.panoptic=false"


def _model(*overrides):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_model(load_config("tiny-cpu", list(overrides)), CATS)


def _targets(size=64):
    masks = torch.zeros(1, size, size, dtype=torch.uint8)
    masks[0, 8:40, 10:50] = 1
    sem = torch.zeros(size, size, dtype=torch.int64)
    return [{"boxes": torch.tensor([[10.0, 8.0, 50.0, 40.0]]), "labels": torch.tensor([1]),
             "masks": masks, "sem_seg": sem}]


def test_the_detector_is_retinanet_with_its_one_flow():
    every = "infer.score_thresh=0.0"  # (random weights score below the preset's threshold)
    det, panoptic = _model(DETECTOR, every), _model(every)
    flows_off = _model(DETECTOR, "model.flows.reg_to_cls=false")
    assert det.panoptic is False and det.thing_head is None and det.stuff_head is None
    assert det.subnets.stuff_tower is None and det.subnets.thing_tower is None
    assert det.subnets.reg_to_cls is not None and flows_off.subnets.reg_to_cls is None
    names = set(det.state_dict())
    assert names < set(panoptic.state_dict())  # a part of the panoptic model, nothing new
    assert not any(k.startswith(("thing_head", "stuff_head", "subnets.stuff", "subnets.thing",
                                 "subnets.reg_to_stuff", "subnets.reg_to_thing")) for k in names)
    # training: RetinaNet's losses only; eval: boxes, scores and labels
    images = [torch.rand(3, 64, 64)]
    det.train()
    losses = det(images, _targets())
    assert set(losses) == {"loss_cls", "loss_reg"} and all(v.isfinite() for v in losses.values())
    sum(losses.values()).backward()
    assert det.subnets.reg_to_cls[0].weight.grad.abs().sum() > 0  # the flow is trained
    det.eval()
    with torch.no_grad():
        out = det(images, output_sizes=[(128, 128)])[0]
        small = det(images)[0]
    assert set(out) == {"boxes", "scores", "labels"} and len(out["boxes"]) == 100
    assert torch.allclose(out["boxes"], 2 * small["boxes"])  # scaled to the output size
    # the same detector outputs as the panoptic model of the same weights
    panoptic.load_state_dict(det.state_dict(), strict=False)
    panoptic.eval()
    with torch.no_grad():
        full = panoptic(images)[0]
    for k in ("boxes", "scores", "labels"):
        assert torch.equal(full[k], small[k])


def test_towers_of_zero_stages_pass_the_fpn_level_on():
    none = _model("model.thing_stages=0", "model.stuff_stages=0")
    assert len(none.subnets.thing_tower) == 0 and len(none.subnets.stuff_tower) == 0
    # no stage to receive a flow: those flows are not built; reg->cls is
    s = none.subnets
    assert s.reg_to_thing is None and s.stuff_to_thing is None and s.reg_to_stuff is None
    assert s.reg_to_cls is not None
    c = none.backbone.out_channels
    feats = [torch.rand(1, c, max(8 >> i, 1), max(8 >> i, 1)) for i in range(5)]
    towers = s(feats)
    for level in range(3):
        assert towers["thing"][level] is feats[level] and towers["stuff"][level] is feats[level]
    one = _model("model.thing_stages=0")  # stuff tower on: its stuff->thing flow has no target
    assert one.subnets.stuff_to_thing is None and len(one.subnets.stuff_tower) == 4
    with pytest.raises(ConfigError, match="model.thing_stages"):
        load_config("tiny-cpu", ["model.thing_stages=-1"])
    with pytest.raises(ConfigError, match="model.cls_stages"):
        load_config("tiny-cpu", ["model.cls_stages=0"])


@pytest.fixture(scope="module")
def things_root(tmp_path_factory):
    """8 + 2 synthetic images of 128 px with things in both val images (data seed 1)."""
    from spatialflow.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("things")
    make_synthetic(root, 8, 2, 128, 1, workers=1, progress=False)
    return root


def test_detector_trains_evaluates_predicts_and_loads_into_a_panoptic_model(
        things_root, tmp_path, capsys):
    data_root = things_root
    cfg = fast(data_root, DETECTOR, "train.max_iters=2", "infer.score_thresh=0.0")
    run = tmp_path / "retinanet"
    train(cfg, run, progress=False, evaluate_at_end=False)
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_cls", "loss_reg"} <= set(log[-1]) and "loss_thing" not in log[-1]
    # evaluation: box AP with pycocotools, no PQ, the detections as COCO results
    metrics = evaluate_run(run, progress=False)
    assert set(metrics) == {"bbox"} and 0 <= metrics["bbox"]["AP"] <= 1
    out = run / "eval" / "final"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == metrics and not (out / "panoptic_pred").exists()
    results = json.loads((out / "detections.json").read_text())
    assert results and {"image_id", "category_id", "bbox", "score"} <= set(results[0])
    assert {r["category_id"] for r in results} <= {c["id"] for c in CATS.thing_categories()}
    rc = main(["evaluate", str(run), "--quiet", "--per-class", "--out", str(tmp_path / "ev")])
    text = capsys.readouterr().out
    assert rc == 0 and "box AP" in text and "PQ" not in text.replace("box AP", "")
    # prediction: detections (no panoptic map), boxes drawn on the overlays
    predictor = Predictor.from_run(run)
    image = np.asarray(__import__("PIL.Image").Image.open(sorted((data_root / "val").glob("*.jpg"))[0]))
    result = predictor(image)
    assert set(result) == {"detections"} and "raw" in predictor(image, raw=True)
    tta = Predictor.from_run(run, tta_flip=True)(image)["detections"]
    assert tta and all(d["score"] >= 0 for d in tta)
    rc = main(["predict", str(run), str(data_root / "val"), "--out", str(tmp_path / "pred"),
               "--quiet"])
    assert rc == 0 and "detections.json" in capsys.readouterr().out
    written = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert len(written["images"]) == 2 and written["annotations"]
    assert len(list((tmp_path / "pred" / "overlays").glob("*.png"))) == 2
    assert not (tmp_path / "pred" / "panoptic").exists()
    # its weights load into the panoptic model of the same backbone, the rest reported
    panoptic = build_model(load_config(cfg.name, [f"data.root={data_root}"]), CATS)
    before = {k: v.clone() for k, v in panoptic.state_dict().items()}
    with pytest.warns(UserWarning, match="left as built: .*subnets.stuff_tower.*thing_head"):
        state = load_weights(panoptic, run)
    assert any(m.startswith("stuff_head") for m in state["missing"])
    _, detector, _ = load_run(run)
    for k, v in detector.state_dict().items():
        assert torch.equal(panoptic.state_dict()[k], v), k
    assert torch.equal(panoptic.state_dict()["thing_head.predictor.mask_fcn_logits.weight"],
                       before["thing_head.predictor.mask_fcn_logits.weight"])
    # a detector without the flow does not fit a panoptic model with it only the other way
    no_flow = build_model(load_config("tiny-cpu", ["model.flows.reg_to_cls=false"]), CATS)
    with pytest.raises(InputError, match="unexpected"):
        load_weights(no_flow, run)


def test_study_variants_of_tables_vii_viii_and_xii():
    key = lambda *o: config_key(load_config("tiny-cpu", list(o)))  # noqa: E731
    baseline = components_variants()[0]
    for tower in ("thing", "stuff"):
        rows = stages_variants(tower)
        assert [dict(v.tags)["stages"] for v in rows] == [0, 1, 2, 3, 4]
        assert rows[0].overrides == baseline.overrides  # the same network: the same run
        assert len({key(*v.overrides) for v in rows}) == 5
        cfg = load_config("tiny-cpu", list(rows[2].overrides))
        other = "stuff" if tower == "thing" else "thing"
        assert getattr(cfg.model, f"{tower}_stages") == 2
        assert getattr(cfg.model, f"{other}_stages") == 0
        assert not any(vars(cfg.model.flows)[f] for f in ("reg_to_cls", "reg_to_stuff",
                                                           "reg_to_thing", "stuff_to_thing"))
    with pytest.raises(ValueError, match="tower"):
        stages_variants("cls")
    plain, flows = detection_variants()
    assert key(*plain.overrides) != key(*flows.overrides)
    assert not load_config("tiny-cpu", list(plain.overrides)).model.flows.reg_to_cls
    # what a detector does not build does not name its run
    assert key(*flows.overrides) == key(*flows.overrides, "model.flows.reg_to_stuff=false",
                                        "model.thing_stages=3", "infer.mask_conf=0.5")
    assert key(*flows.overrides) != key()


def test_info_counts_the_detector_s_parts():
    from spatialflow.benchmark.info import describe_preset

    text = describe_preset("tiny-cpu", 64, [DETECTOR])
    parts = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")]
    assert {"backbone", "fpn", "cls tower", "reg tower", "flow reg->cls", "cls head",
            "reg head"} <= set(parts)
    assert not any(p in parts for p in ("thing head", "stuff head", "stuff tower", "thing tower"))


def test_views_of_segments_refuse_a_detector_with_one_line(data_root, tmp_path, capsys):
    from spatialflow.data.coco_panoptic import CocoPanopticDataset
    from viz.cam import compute_cam
    from viz.widgets import PanopticExplorer

    det = _model(DETECTOR)
    image = torch.rand(3, 64, 64)
    with pytest.raises(InputError, match="no stuff head"):
        compute_cam(det, image, "stuff")
    assert compute_cam(det, image, "cls").shape == (64, 64)  # its cls head has a CAM
    data = CocoPanopticDataset.from_root(data_root, "val")
    with pytest.raises(InputError, match="detector alone"):
        PanopticExplorer(data, det)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--set", DETECTOR]) == 2
    assert "the demo trains and shows a panoptic model" in capsys.readouterr().err
    assert not (tmp_path / "demo" / "data").exists()  # refused before any work
