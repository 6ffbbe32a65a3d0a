"""Runs and prediction (spatialflow.engine.runs, spatialflow.engine.predict): Predictor,
evaluate_run, run_dataset, build_model with a plain category list. (The one-writer lock:
tests/test_faults.py::test_one_writer_per_run_folder.)"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import spatialflow
from spatialflow.config import load_config
from spatialflow.data.coco_panoptic import CocoPanopticDataset
from spatialflow.data.panoptic_io import read_image
from spatialflow.engine.predict import Predictor, evaluate_run
from spatialflow.engine.runs import FINAL_EVAL, run_dataset
from spatialflow.engine.train import train
from spatialflow.errors import InputError
from spatialflow.model import build_model
from conftest import fast


@pytest.fixture(scope="module")
def run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    train(fast(data_root, "train.max_iters=3"), out, progress=False,
          evaluate_at_end=False)
    return out


def test_predictor_takes_arrays_tensors_and_paths(run, data_root, tmp_path):
    predictor = Predictor.from_run(run, score_thresh=0.0, stuff_area=0)
    path = sorted((data_root / "val").iterdir())[0]
    array = read_image(path)
    results = [predictor(array), predictor(path), predictor(str(path)),
               predictor(torch.from_numpy(array).permute(2, 0, 1).float() / 255)]
    for r in results:
        assert set(r) == {"panoptic", "segments_info"}
        assert r["panoptic"].shape == array.shape[:2]
        assert np.array_equal(r["panoptic"], results[0]["panoptic"])
        assert r["segments_info"] == results[0]["segments_info"]
        ids = {s["id"] for s in r["segments_info"]}
        assert set(np.unique(r["panoptic"]).tolist()) - {0} == ids
        assert {s["category_id"] for s in r["segments_info"]} <= {c["id"] for c in predictor.categories.to_coco()}
    raw = predictor(array, raw=True)["raw"]
    assert {"boxes", "scores", "labels", "masks", "sem_seg"} <= set(raw)
    assert len(raw["scores"]) > 0                    # score_thresh 0 reached the model


def test_predictor_settings_come_from_the_run_and_its_overrides(run):
    plain = Predictor.from_run(run)
    cfg = load_config(str(run / "config.yaml"))
    assert plain.infer == cfg.infer and plain.test_size == cfg.data.test_size
    assert plain.run == run and plain.config.name == cfg.name
    changed = Predictor.from_run(run, overrides=["infer.overlap=0.2"], mask_conf=0.6,
                                 nms_thresh=0.3, test_size=96)
    assert changed.infer.mask_conf == 0.6 and changed.infer.overlap == 0.2
    assert changed.test_size == 96 and changed.infer.nms_thresh == 0.3
    assert changed.at_size(64, 80).test_size == 64 and changed.test_size == 96
    with pytest.raises(InputError, match="unknown inference setting.*mask_confidence"):
        Predictor.from_run(run, mask_confidence=0.5)
    with pytest.raises(InputError, match="cannot change here"):
        Predictor.from_run(run, overrides=["model.fpn_channels=32"])


def test_the_predictors_thresholds_reach_the_model(run, data_root):
    """One home for thresholds: the detection thresholds of a predictor's settings decide what
    the model keeps, whether set by from_run or by with_settings on a predictor that shares the
    model with another."""
    image = read_image(sorted((data_root / "val").iterdir())[0])
    kept = {}
    everything = dict(score_thresh=0.0, detections_per_img=5000)  # no cap but the NMS's
    loose = Predictor.from_run(run, nms_thresh=0.9, **everything)
    for nms in (0.9, 0.3):
        kept[nms] = len(Predictor.from_run(run, nms_thresh=nms, **everything).raw(image)[
            "scores"])
    assert kept[0.3] < kept[0.9]
    tight = loose.with_settings(nms_thresh=0.3)
    assert tight.model is loose.model and tight.infer.nms_thresh == 0.3
    assert len(tight.raw(image)["scores"]) == kept[0.3]
    assert len(tight.with_settings(detections_per_img=5).raw(image)["scores"]) == 5
    assert len(loose.raw(image)["scores"]) == kept[0.9]  # its own thresholds, not the last ones
    assert loose.model.nms_thresh == 0.9
    from spatialflow.config import ConfigError
    with pytest.raises(ConfigError, match="infer.nms_thresh"):
        loose.with_settings(nms_thresh=1.5)


def test_run_dataset_opens_the_runs_data(run, data_root):
    val = run_dataset(run)
    assert len(val) == len(CocoPanopticDataset.from_root(data_root, "val"))
    assert len(run_dataset(run, "train", data_root)) == len(
        CocoPanopticDataset.from_root(data_root, "train"))
    with pytest.raises(InputError, match="not a trained run"):
        run_dataset(run.parent)


def test_evaluate_run_defaults_and_data(run, data_root, tmp_path):
    metrics = evaluate_run(run, progress=False)
    assert set(metrics) == {"panoptic", "bbox"}
    saved = json.loads((run / FINAL_EVAL / "metrics.json").read_text())
    assert saved["panoptic"]["All"] == metrics["panoptic"]["All"]
    val = CocoPanopticDataset.from_root(data_root, "val")
    again = evaluate_run(Predictor.from_run(run), val, tmp_path / "e", progress=False)
    assert again["panoptic"]["All"] == metrics["panoptic"]["All"]
    one = evaluate_run(run, data_root, tmp_path / "one", max_images=1, progress=False)
    assert len(json.loads((tmp_path / "one" / "panoptic_pred.json").read_text())[
        "annotations"]) == 1 and set(one) == {"panoptic", "bbox"}
    model = build_model(load_config("tiny-cpu"), val.categories)
    with pytest.raises(InputError, match="evaluate_run needs a run"):
        evaluate_run(Predictor(model, val.categories), val)


def test_build_model_takes_a_plain_coco_category_list(data_root):
    categories = json.loads((data_root / "panoptic_val.json").read_text())["categories"]
    torch.manual_seed(0)
    a = build_model(load_config("tiny-cpu"), categories)
    torch.manual_seed(0)
    b = spatialflow.build_model(load_config("tiny-cpu"),
                                CocoPanopticDataset.from_root(data_root, "val").categories)
    assert a.num_things == b.num_things and a.num_sem_classes == b.num_sem_classes
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values()))
    with pytest.raises(InputError, match="'isthing'"):
        build_model(load_config("tiny-cpu"), [{"id": 1, "name": "cat"}])


def test_train_or_resume(run, data_root, tmp_path):
    from spatialflow.engine.runs import CHECKPOINT, FINAL, load_checkpoint
    from spatialflow.engine.train import train_or_resume

    before = (run / FINAL).stat().st_mtime_ns
    assert train_or_resume(None, run) == run                # trained: left as it is
    assert (run / FINAL).stat().st_mtime_ns == before
    other = tmp_path / "other"
    train(fast(data_root, "train.max_iters=3"), other, progress=False, evaluate_at_end=False,
          stop_at=1)                                        # interrupted after one iteration
    assert not (other / FINAL).exists()
    train_or_resume(None, other, progress=False, evaluate_at_end=False)   # resumed to the end
    assert load_checkpoint(other / FINAL)["iteration"] == 3
    assert load_checkpoint(other / CHECKPOINT)["iteration"] == 3


class _Items:
    """A stand-in for a data set of images of several sizes (``predict_dataset`` only loads):
    item ``i`` is the ``i``-th array, or a ``DatasetError`` where the array is ``None``."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def load(self, idx):
        if self.images[idx] is None:
            raise spatialflow.errors.DatasetError(f"item {idx}: unreadable")
        return self.images[idx], None, {"image_id": idx}


def test_predict_dataset_batches_images_of_one_padded_size(run):
    """Consecutive images that the model runs at one padded size share a forward pass (up to
    ``batch_size``); each gets the output it gets alone, in order; unreadable items are passed
    to ``on_error`` and the others go on."""
    predictor = Predictor.from_run(run, score_thresh=0.0, stuff_area=0)
    g = np.random.default_rng(0)
    shapes = [(128, 128), (128, 128), (100, 150), None, (128, 128), (120, 128), (128, 128)]
    images = [None if s is None else g.integers(0, 255, s + (3,), dtype=np.uint8)
              for s in shapes]
    # the run tests at 128 px with the longer edge capped at 128
    assert predictor.padded_size(100, 150) == (96, 128)        # resized to 85 x 128: alone
    assert predictor.padded_size(120, 128) == (128, 128)       # as it is: with the 128 x 128
    batches, raw_batch = [], predictor.raw_batch

    def spy(ims, mask_conf=None, dense_masks=True):
        batches.append([im.shape[:2] for im in ims])
        return raw_batch(ims, mask_conf, dense_masks)

    predictor.raw_batch = spy
    errors = []
    got = list(predictor.predict_dataset(_Items(images), progress=False, batch_size=3,
                                         on_error=lambda i, e: errors.append((i, str(e)))))
    assert [idx for idx, *_ in got] == [0, 1, 2, 4, 5, 6]
    assert errors == [(3, "item 3: unreadable")]
    assert [len(b) for b in batches] == [2, 1, 3]
    for idx, rec, out, pan, segments in got:
        alone = predictor(images[idx], raw=True)
        assert rec == {"image_id": idx} and pan.shape == shapes[idx]
        out["masks"] = out["masks"].dense()   # a BoxMasks
        mine, theirs = out, alone["raw"]
        # the same detections (an untrained model's scores are near-ties: the order of equal
        # scores and which of them make the 100 may differ by rounding, so each detection
        # clear of the last kept score is matched by box, score and label)
        clear = mine["scores"] > mine["scores"][-1] + 1e-4
        assert clear.sum() >= 10
        for k in torch.nonzero(clear).flatten().tolist():
            near = ((theirs["boxes"] - mine["boxes"][k]).abs().amax(1) < 1e-3) & (
                (theirs["scores"] - mine["scores"][k]).abs() < 1e-4) & (
                theirs["labels"] == mine["labels"][k])
            assert near.any(), (idx, k)
            j = int(torch.nonzero(near)[0])
            if k < len(mine["masks"]) and j < len(theirs["masks"]):
                assert torch.allclose(mine["masks"][k], theirs["masks"][j], atol=1e-4), (idx, k)
        assert (pan == alone["panoptic"]).mean() > 0.999
    with pytest.raises(spatialflow.errors.DatasetError, match="item 3"):
        list(predictor.predict_dataset(_Items(images), progress=False))
