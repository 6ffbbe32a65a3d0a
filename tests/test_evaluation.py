"""Evaluation end to end with the official tools: an oracle scores 100, a degraded one less."""

import json

import pytest
import torch

from spatialflow.config import InferConfig
from spatialflow.data.coco_panoptic import CocoPanopticDataset
from spatialflow.data.synthetic import make_synthetic
from spatialflow.engine.predict import Predictor
from spatialflow.evaluation import (box_ap, evaluate, format_metrics, gt_boxes_from_panoptic,
                                    present_categories)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_synthetic(root, num_train=2, num_val=6, size=96, seed=2, workers=1, progress=False)
    return CocoPanopticDataset.from_root(root, "val")


class Oracle(torch.nn.Module):
    """Answers with the ground truth of the dataset items, in order (optionally degraded)."""

    def __init__(self, dataset, drop_things=False, shift=0):
        super().__init__()
        self.items = iter(range(len(dataset)))
        self.dataset, self.drop_things, self.shift = dataset, drop_things, shift

    def forward(self, images, output_sizes=None, mask_score_thresh=0.0, dense_masks=True):
        return [self.answer() for _ in images]   # one output per image, as the model

    def answer(self):
        _, t = self.dataset[next(self.items)]
        k = 0 if self.drop_things else len(t["labels"])
        return {"boxes": t["boxes"][:k] + self.shift, "scores": torch.ones(k),
                "labels": t["labels"][:k], "masks": t["masks"][:k, None].float(),
                "sem_seg": t["sem_seg"].clamp(max=self.dataset.categories.other_index)}


def score(model, synth, out, **kwargs):
    """Predict ``synth`` with ``model`` and score it (``Predictor.evaluate``)."""
    infer = InferConfig(stuff_area=0, box_fill_enabled=False)
    return Predictor(model, synth.categories, infer, test_size=96).evaluate(
        synth, out, progress=False, **kwargs)


def test_oracle_scores_100(synth, tmp_path):
    m = score(Oracle(synth), synth, tmp_path)
    for key in ("All", "Things", "Stuff"):
        assert m["panoptic"][key]["pq"] == pytest.approx(1.0)
    assert m["bbox"]["AP"] == pytest.approx(1.0) and m["bbox"]["AP50"] == pytest.approx(1.0)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["panoptic"]["All"]["pq"] == pytest.approx(1.0) and set(saved["bbox"]) == {
        "AP", "AP50", "AP75", "APs", "APm", "APl"}
    pred = json.loads((tmp_path / "panoptic_pred.json").read_text())
    assert len(pred["annotations"]) == len(synth)
    assert len(list((tmp_path / "panoptic_pred").glob("*.png"))) == len(synth)
    text = format_metrics(m, synth.categories, per_class=True)
    assert "Things" in text and "box AP" in text and "grass" in text
    # a class in neither the ground truth nor the predictions is absent, not 0.0
    gt = {s["category_id"] for r in synth.records for s in r["segments_info"]}
    assert present_categories(synth, tmp_path) == gt
    one = sorted(gt)[0]
    lines = format_metrics(m, synth.categories, per_class=True, present=gt - {one}).splitlines()
    name = synth.categories.name(one)
    assert [x.split() for x in lines if x.startswith(name)] == [[name, "absent", "-", "-"]]
    assert lines[-1].startswith("absent: 1 class(es) in neither the ground truth nor the "
                                "predictions, left out of the averages")


def test_degraded_predictions_score_lower(synth, tmp_path):
    m = score(Oracle(synth, drop_things=True), synth, tmp_path)
    assert m["panoptic"]["Things"]["pq"] == 0.0 and m["bbox"]["AP"] == 0.0
    assert m["panoptic"]["Stuff"]["pq"] == pytest.approx(1.0)
    m = score(Oracle(synth, shift=2.0), synth, tmp_path / "shift")
    assert m["bbox"]["AP"] < 1.0                                      # shifted boxes
    assert m["panoptic"]["All"]["pq"] == pytest.approx(1.0)          # masks untouched
    m = score(Oracle(synth), synth, tmp_path / "subset", max_images=3)  # a subset of the images
    assert m["panoptic"]["All"]["pq"] == pytest.approx(1.0) and m["bbox"]["AP"] == pytest.approx(1.0)
    assert (tmp_path / "subset" / "panoptic_gt_subset.json").is_file()


def test_evaluate_scores_written_predictions(synth, tmp_path):
    """``evaluate`` scores files only: predictions written by one evaluation score the same
    when read back, on the images they cover, with box AP given the detections."""
    model = Oracle(synth, shift=2.0)
    infer = InferConfig(stuff_area=0, box_fill_enabled=False)
    predictor = Predictor(model, synth.categories, infer, test_size=96)
    from spatialflow.evaluation import PanopticEvaluator

    written = PanopticEvaluator(synth, tmp_path / "run")
    for _, rec, out, pan, segments in predictor.predict_dataset(synth, range(4), False):
        written.add(rec, out, pan, segments)
    expected = written.compute()
    again = evaluate(synth.panoptic_json, synth.panoptic_dir, tmp_path / "run" / "panoptic_pred.json",
                     tmp_path / "run" / "panoptic_pred", written.detections, tmp_path / "again")
    assert again == expected and 0 < again["bbox"]["AP"] < 1
    assert json.loads((tmp_path / "again" / "metrics.json").read_text()) == json.loads(
        json.dumps(expected))
    masks_only = evaluate(synth.panoptic_json, synth.panoptic_dir,
                          tmp_path / "run" / "panoptic_pred.json", tmp_path / "run" / "panoptic_pred")
    assert masks_only == {"panoptic": expected["panoptic"]}     # no detections: no box AP


def test_box_ap_of_gt_against_itself(synth):
    gt = json.loads(synth.panoptic_json.read_text())
    det_gt = gt_boxes_from_panoptic(gt, synth.categories)
    dets = [dict(image_id=a["image_id"], category_id=a["category_id"], bbox=a["bbox"], score=1.0)
            for a in det_gt["annotations"] if not a["iscrowd"]]
    assert box_ap(det_gt, dets)["AP"] == pytest.approx(1.0)
    assert box_ap(det_gt, [])["AP"] == 0.0


def test_pq_with_an_empty_group(tmp_path):
    """panopticapi's pq_compute divides by zero when no thing exists anywhere: reported as n=0."""
    from spatialflow.evaluation import pq
    import numpy as np
    from conftest import write_tiny_dataset
    from spatialflow.data.panoptic_io import write_panoptic_png

    img_dir, js, png_dir = write_tiny_dataset(tmp_path, n=1)
    data = json.loads(js.read_text())
    pan = np.full((40, 48), 1100, np.int64)                          # only wall
    write_panoptic_png(png_dir / "0000.png", pan)
    data["annotations"][0]["segments_info"] = [{"id": 1100, "category_id": 11, "iscrowd": 0,
                                                "area": 40 * 48, "bbox": [0, 0, 48, 40]}]
    js.write_text(json.dumps(data))
    res = pq(js, png_dir, js, png_dir)
    assert res["Things"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    assert res["Stuff"]["pq"] == pytest.approx(1.0) and res["All"]["n"] == 1


def _pq_of_the_ground_truth_against_itself(gt_json, gt_dir):
    from spatialflow.evaluation import pq

    result = pq(gt_json, gt_dir, gt_json, gt_dir)
    print("scored", round(result["All"]["pq"], 3))


def test_panopticapis_prints_are_captured_in_a_spawned_process(synth, capfd):
    """A study trains and evaluates its runs in spawned processes, where panopticapi's
    multiprocessing pool is spawned too and prints to the file descriptor ("Core: 0, ... images
    processed"): none of it reaches the user."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(_pq_of_the_ground_truth_against_itself, str(synth.panoptic_json),
                    str(synth.panoptic_dir)).result()
    out = capfd.readouterr().out
    assert "scored 1.0" in out and "Core:" not in out and "images processed" not in out


def test_a_box_ap_with_nothing_to_measure_prints_as_n_a():
    b = {"AP": 0.25, "AP50": 0.5, "AP75": 0.125, "APs": 0.2, "APm": 0.3, "APl": -1.0}
    text = format_metrics({"bbox": b})
    assert "AP 25.0" in text and "APl n/a" in text and "-100" not in text
