"""Cityscapes as users get it: a Cityscapes-layout folder converted by cityscapesscripts'
own ``createPanopticImgs``, with and without ``--use-train-id``, read, trained and evaluated
as it is (no file edited)."""

import json
from pathlib import Path

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import name2label

from spatialflow.cli import main
from spatialflow.data.coco_panoptic import CocoPanopticDataset
from spatialflow.data.panoptic_io import read_panoptic_png
from cityscapes_data import convert, write_cityscapes


@pytest.fixture(scope="module", params=[False, True], ids=["labelIds", "trainIds"])
def cityscapes(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    ids = write_cityscapes(root)
    convert(root, use_train_id=request.param)
    return root, ids, request.param


def cs_id(name: str, train_id: bool) -> int:
    label = name2label[name]
    return label.trainId if train_id else label.id


def test_reads_the_converter_output_as_it_is(cityscapes):
    root, ids, train_id = cityscapes
    suffix = "_trainId" if train_id else ""
    js = json.loads((root / "gtFine" / f"cityscapes_panoptic_val{suffix}.json").read_text())
    # what the official converter writes: string ids and an image name that does not exist
    assert js["images"][0]["file_name"] == f"{ids['val'][0]}_gtFine_leftImg8bit.png"
    for split in ("train", "val"):
        ds = CocoPanopticDataset.from_root(root, split)
        assert sorted(r["image_id"] for r in ds.records) == sorted(ids[split])
        for rec in ds.records:  # found in its city folder as <id>_leftImg8bit.png
            city = rec["image_id"].split("_")[0]
            assert rec["image_path"] == (root / "leftImg8bit" / split / city
                                         / f"{rec['image_id']}_leftImg8bit.png")
    cats = ds.categories
    assert cats.name(cs_id("road", train_id)) == "road" and (0 in cats) == train_id
    assert cats.num_things == 8 and cats.num_stuff == 11  # the 19 evaluated classes
    things, crowd = set(), 0
    for split in ("train", "val"):
        ds = CocoPanopticDataset.from_root(root, split)
        for k in range(len(ds)):
            _, target = ds[k]
            things |= {cats.thing_id(int(x)) for x in target["labels"]}
            crowd += len(target["crowd_labels"])
            pan = read_panoptic_png(ds.annotation(k)["png_path"])
            assert (pan[-4:] == 0).all()  # 'ego vehicle' (ignored in evaluation) is void
    assert {cs_id("car", train_id), cs_id("person", train_id)} <= things
    assert crowd > 0  # thing-class pixels without an instance id


def test_trains_and_evaluates_as_converted(cityscapes, tmp_path, capsys):
    root, _, train_id = cityscapes
    run = tmp_path / "run"
    settings = [f"data.root={root}", "data.min_size=[96]", "data.max_size=192",
                "data.test_size=96", "data.num_workers=0", "train.batch_size=2",
                "train.base_batch_size=2", "train.max_iters=3", "train.warmup_iters=0",
                "train.log_every=1", "infer.stuff_area=0", "infer.mask_conf=0.0",
                "infer.score_thresh=0.0"]
    assert main(["train", "--preset", "tiny-cpu", "--out", str(run), "--set", *settings]) == 0
    assert main(["evaluate", str(run), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    per_class = metrics["panoptic"]["per_class"]
    assert str(cs_id("road", train_id)) in per_class  # id 0 with trainIds
    assert all(0 <= v["pq"] <= 1 for v in per_class.values())
    pred = json.loads((tmp_path / "eval" / "panoptic_pred.json").read_text())
    cats = {c["id"] for c in pred["categories"]}
    assert cats == {c["id"] for c in json.loads(
        (root / "gtFine" / f"cityscapes_panoptic_val{'_trainId' if train_id else ''}.json"
         ).read_text())["categories"]}
    used = {s["category_id"] for a in pred["annotations"] for s in a["segments_info"]}
    assert used and used <= cats
    image = next((root / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))
    assert main(["predict", str(run), str(image), "--out", str(tmp_path / "pred")]) == 0
    assert sorted(p.suffix for p in (tmp_path / "pred").rglob("*.png"))
    capsys.readouterr()


def test_r50_cityscapes_predicts_a_full_size_frame_with_its_thresholds(tmp_path, capsys):
    """The r50-cityscapes preset (random weights) through `spatialflow predict` on one
    1024x2048 frame: its merge runs with Cityscapes' thresholds (overlap 0.25, stuff area
    2048), the outputs have the frame's size, and time and peak memory are reported."""
    import resource
    import time
    import warnings

    import torch
    from cityscapesscripts.helpers.labels import labels
    from PIL import Image

    from spatialflow.config import config_to_dict, load_config
    from spatialflow.data.categories import CategoryMap
    from spatialflow.engine.predict import merge_kwargs
    from spatialflow.engine.runs import FINAL, save_checkpoint
    from spatialflow.model import build_model

    cats = CategoryMap.from_coco([{"id": l.id, "name": l.name, "isthing": int(l.hasInstances),
                                   "color": list(l.color)} for l in labels
                                  if not l.ignoreInEval])
    cfg = load_config("r50-cityscapes")
    assert merge_kwargs(cfg.infer)["overlap"] == 0.25
    assert merge_kwargs(cfg.infer)["stuff_area"] == 2048
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frozen BatchNorm without pretrained weights
        model = build_model(cfg, cats)
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / FINAL, {"model": model.state_dict(), "config": config_to_dict(cfg),
                                  "categories": cats.to_coco()})
    frame = tmp_path / "frame_leftImg8bit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1024, 2048, 3), np.uint8)
                    ).save(frame)
    start = time.perf_counter()
    assert main(["predict", str(run), str(frame), "--out", str(tmp_path / "pred"),
                 "--quiet"]) == 0
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    written = json.loads((tmp_path / "pred" / "panoptic.json").read_text())
    (ann,) = written["annotations"]
    pan = read_panoptic_png(tmp_path / "pred" / "panoptic" / ann["file_name"])
    assert pan.shape == (1024, 2048)
    assert all(s["area"] >= 2048 for s in ann["segments_info"]
               if not cats.is_thing(s["category_id"]))
    with capsys.disabled():
        print(f"\nr50-cityscapes predict, one 1024x2048 frame: {seconds:.1f} s, peak RSS "
              f"{peak:.0f} MiB (this test process)")
