"""Robustness of the data input: image modes and sizes, the pixel limit, EXIF orientation, tiny
images through the whole prediction path, `spatialflow predict` / `evaluate` on folders and data
sets with bad files (each reported, the others done), and hypothesis fuzzing of the COCO
panoptic reader and of ``load_json``: every fault is a ``DatasetError`` naming the file."""

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from panopticapi.utils import id2rgb, rgb2id

from spatialflow.cli import main
from spatialflow.data.coco_panoptic import CocoPanopticDataset
from spatialflow.data.panoptic_io import (MAX_PIXELS, load_json, read_image, read_panoptic_png,
                                          segment_stats)
from spatialflow.errors import DatasetError

from conftest import write_tiny_dataset

FUZZ = settings(max_examples=50, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- shared, made once: an oversized image, a tiny trained run and its data -----------------
@pytest.fixture(scope="module")
def big_png(tmp_path_factory):
    """A bilevel 10000 x 10000 PNG: 100 M pixels, above the default limit (~89.5 M), ~12 KB on
    disk and 12.5 MB when decoded."""
    path = tmp_path_factory.mktemp("big") / "big.png"
    Image.new("1", (10000, 10000)).save(path)
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """``(run folder, data root)``: tiny-cpu trained for one iteration on 64 px synthetic data
    (3 val images), shared by every model-based test here."""
    from spatialflow.config import load_config
    from spatialflow.data.synthetic import make_synthetic
    from spatialflow.engine.train import train

    root = tmp_path_factory.mktemp("robust")
    data = root / "data"
    make_synthetic(data, 2, 3, 64, 0, workers=1, progress=False)
    cfg = load_config("tiny-cpu", [
        f"data.root={data}", "data.synthetic.num_train=2", "data.synthetic.num_val=3",
        "data.synthetic.size=64", "data.min_size=[64]", "data.max_size=64", "data.test_size=64",
        "data.num_workers=0", "train.batch_size=2", "train.base_batch_size=2",
        "train.max_iters=1", "train.warmup_iters=1", "train.checkpoint_every=1000"])
    train(cfg, root / "run", progress=False, evaluate_at_end=False)
    return root / "run", data


# --- the pixel limit -----------------------------------------------------------------------
def test_oversized_image_is_refused_from_its_header(big_png, monkeypatch):
    decoded = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1) or real_load(self))
    from PIL import ImageFile
    real_file_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load",
                        lambda self: decoded.append(1) or real_file_load(self))
    assert MAX_PIXELS == Image.MAX_IMAGE_PIXELS
    limit = f"{MAX_PIXELS:,}"
    with pytest.raises(DatasetError, match=rf"big\.png: image of 10000x10000 pixels .*limit of "
                                           rf"{limit} pixels"):
        read_image(big_png)
    with pytest.raises(DatasetError, match=r"big\.png: panoptic PNG of 10000x10000 pixels"):
        read_panoptic_png(big_png)
    assert decoded == []                                      # refused before any decoding


def test_pixel_limit_is_a_keyword_and_counts_width_times_height(tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (4, 3), (10, 20, 30)).save(path)
    with pytest.raises(DatasetError, match=r"small\.png: image of 4x3 pixels \(12\) exceeds the "
                                           r"limit of 11 pixels"):
        read_image(path, max_pixels=11)
    assert read_image(path, max_pixels=12).shape == (3, 4, 3)
    Image.fromarray(id2rgb(np.full((3, 4), 5)).astype(np.uint8)).save(tmp_path / "pan.png")
    with pytest.raises(DatasetError, match=r"pan\.png: panoptic PNG of 4x3 pixels"):
        read_panoptic_png(tmp_path / "pan.png", max_pixels=5)
    assert (read_panoptic_png(tmp_path / "pan.png", max_pixels=None) == 5).all()


def test_pillows_bomb_warning_and_error_give_way_to_our_limit(tmp_path, monkeypatch):
    """Pillow warns above ``MAX_IMAGE_PIXELS`` and fails above twice that; our limit is the
    rule below Pillow's hard limit: no DecompressionBombWarning leaks; beyond it the file is a
    DatasetError naming it."""
    Image.new("L", (12, 12), 7).save(tmp_path / "warns.png")     # 144 px: Pillow would warn
    Image.new("L", (30, 20), 9).save(tmp_path / "fails.png")     # 600 px: Pillow would fail
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (read_image(tmp_path / "warns.png", max_pixels=1000) == 7).all()
        with pytest.raises(DatasetError, match=r"fails\.png: cannot decode image .*600 pixels"):
            read_image(tmp_path / "fails.png", max_pixels=None)
        Image.new("L", (15, 10), 9).save(tmp_path / "big.png")     # 150 px: Pillow would warn
        with pytest.raises(DatasetError, match=r"big\.png: image of 15x10 pixels \(150\) "
                                               r"exceeds the limit of 140"):
            read_image(tmp_path / "big.png", max_pixels=140)
    assert Image.MAX_IMAGE_PIXELS == 100                      # Pillow's setting is left alone


# --- image modes ---------------------------------------------------------------------------
GRAY = (np.arange(12, dtype=np.uint8).reshape(3, 4) * 21)           # 0 .. 231
RGB = np.dstack([GRAY, 255 - GRAY, np.full_like(GRAY, 77)])


def _gray3(g):
    return np.repeat(np.asarray(g, np.uint8)[..., None], 3, axis=2)


def _save(im, name, **kw):
    def write(folder):
        path = folder / name
        im().save(path, **kw)
        return path
    return write


MODES = {  # name: (writer, expected uint8[H,W,3], tolerance)
    "RGB": (_save(lambda: Image.fromarray(RGB), "rgb.png"), RGB, 0),
    "L": (_save(lambda: Image.fromarray(GRAY), "l.png"), _gray3(GRAY), 0),
    "LA": (_save(lambda: Image.fromarray(GRAY).convert("LA"), "la.png"), _gray3(GRAY), 0),
    "RGBA": (_save(lambda: Image.fromarray(np.dstack([RGB, GRAY])), "rgba.png"), RGB, 0),
    "P": (_save(lambda: Image.fromarray(GRAY).convert("P"), "p.png"), _gray3(GRAY), 0),
    "P+transparency": (_save(lambda: Image.fromarray(GRAY).convert("P"), "pt.png",
                             transparency=0), _gray3(GRAY), 0),
    "1 (bilevel)": (_save(lambda: Image.fromarray(GRAY > 100), "bilevel.png"),
                    _gray3(np.where(GRAY > 100, 255, 0)), 0),
    "I;16 (16-bit PNG)": (_save(lambda: Image.fromarray(GRAY.astype(np.uint16) * 257),
                                "g16.png"), _gray3(GRAY), 0),
    "I;16 full range": (_save(lambda: Image.fromarray(np.array([[0, 65535]], np.uint16)),
                              "g16max.png"), _gray3([[0, 255]]), 0),
    "I (32-bit, 8-bit values)": (_save(lambda: Image.fromarray(GRAY.astype(np.int32)), "i.tif"),
                                 _gray3(GRAY), 0),
    "I (32-bit, 16-bit values)": (_save(lambda: Image.fromarray(GRAY.astype(np.int32) * 257),
                                        "i16.tif"), _gray3(GRAY), 0),
    "F (TIFF, 0..255)": (_save(lambda: Image.fromarray(GRAY.astype(np.float32)), "f.tif"),
                         _gray3(GRAY), 0),
    "F (TIFF, 0..1)": (_save(lambda: Image.fromarray(GRAY.astype(np.float32) / 255), "f01.tif"),
                       _gray3(GRAY), 1),
    "CMYK (JPEG)": (_save(lambda: Image.fromarray(RGB).convert("CMYK"), "cmyk.jpg",
                          quality=100), RGB, 12),
    "1x1 RGB": (_save(lambda: Image.new("RGB", (1, 1), (1, 2, 3)), "one.png"),
                np.array([[[1, 2, 3]]], np.uint8), 0),
    "1x1 16-bit": (_save(lambda: Image.fromarray(np.array([[65535]], np.uint16)), "one16.png"),
                   _gray3([[255]]), 0),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_read_image_gives_uint8_rgb_for_every_mode(tmp_path, mode):
    writer, expected, tolerance = MODES[mode]
    path = writer(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                        # no Pillow warning either
        image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == expected.shape
    assert np.abs(image.astype(int) - expected.astype(int)).max() <= tolerance


def _exif_jpeg(path, orientation, array):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(array).save(path, exif=exif.tobytes(), quality=100)


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((2, 4, 3), np.uint8)                     # 4 wide, 2 high as stored
    stored[:, :2] = 255                                        # left half white
    _exif_jpeg(tmp_path / "turned.jpg", 6, stored)             # 6: show turned 90 deg clockwise
    shown = read_image(tmp_path / "turned.jpg")
    assert shown.shape == (4, 2, 3)                            # as viewers show it
    assert shown[:2].mean() > 200 and shown[2:].mean() < 50    # the white half is now on top
    assert read_image(tmp_path / "turned.jpg", exif_transpose=False).shape == (2, 4, 3)


def test_dataset_checks_its_pngs_against_the_turned_image(tmp_path):
    img_dir, js, png_dir = write_tiny_dataset(tmp_path, n=2)   # 48 wide x 40 high
    rgb = np.asarray(Image.open(img_dir / "0000.jpg"))
    _exif_jpeg(img_dir / "0000.jpg", 6, rgb)                   # now shown 40 wide x 48 high
    ds = CocoPanopticDataset(img_dir, js, png_dir)
    with pytest.raises(DatasetError, match=r"0000\.png: size 48x40 differs from its image "
                                           r".*0000\.jpg \(40x48; image id 1\); the image is "
                                           r"turned by its EXIF orientation tag"):
        ds[0]
    # a PNG made for the turned image is right (with the JSON's size turned too)
    pan = read_panoptic_png(png_dir / "0000.png")
    Image.fromarray(id2rgb(np.rot90(pan, -1)).astype(np.uint8)).save(png_dir / "0000.png")
    data = json.loads(js.read_text())
    data["images"][0].update(height=48, width=40)
    js.write_text(json.dumps(data))
    image, target = CocoPanopticDataset(img_dir, js, png_dir)[0]
    assert image.shape == (3, 48, 40) and target["sem_seg"].shape == (48, 40)


# --- tiny and extreme images through the whole prediction path ------------------------------
@pytest.mark.parametrize("h, w", [(1, 1), (1, 300), (300, 1), (2, 3)])
def test_predict_image_on_tiny_and_thin_images(tiny_run, h, w):
    from spatialflow.engine.predict import Predictor

    # every detection kept, so that boxes, masks and the merge all see the thin image
    predictor = Predictor.from_run(tiny_run[0], score_thresh=0, mask_conf=0, stuff_area=0)
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(h * 1000 + w))
    result = predictor(image, raw=True)
    out, pan, segments = result["raw"], result["panoptic"], result["segments_info"]
    assert pan.shape == (h, w) and out["sem_seg"].shape[-2:] == (h, w)
    assert set(np.unique(pan).tolist()) - {0} == {s["id"] for s in segments}
    assert len(out["boxes"]) > 0                               # detections were made and merged


# --- spatialflow predict on a folder with bad files -----------------------------------------
def test_predict_cli_goes_past_bad_files_and_lists_them(tiny_run, big_png, tmp_path, capsys):
    run, data = tiny_run
    inputs = tmp_path / "in"
    (inputs / "empty_sub").mkdir(parents=True)
    good = sorted((data / "val").glob("*.jpg"))[0]
    shutil.copy(good, inputs / "good.jpg")
    gray = np.asarray(Image.open(good).convert("L")).astype(np.uint16) * 257
    Image.fromarray(gray).save(inputs / "gray16.png")                   # 16-bit
    (inputs / "truncated.jpg").write_bytes(good.read_bytes()[:300])
    (inputs / "zero.png").write_bytes(b"")
    (inputs / "text.jpg").write_text("this is not a picture\n")
    shutil.copy(big_png, inputs / "huge.png")
    (inputs / "notes.txt").write_text("ignored: not an image extension")
    rc = main(["predict", str(run), str(inputs), "--out", str(tmp_path / "pred"), "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 2 and "2 image(s) predicted" in out
    lines = err.strip().splitlines()
    assert lines[-1] == ("spatialflow predict: error: 4 of 6 file(s) could not be read "
                         "(listed above)")
    listed = lines[:-1]
    assert len(listed) == 4 and all(line.startswith("skipped: ") for line in listed)
    for name, reason in [("truncated.jpg", "cannot decode image"),
                         ("zero.png", "cannot decode image"),
                         ("text.jpg", "cannot decode image"),
                         ("huge.png", "image of 10000x10000 pixels")]:
        assert any(f"{inputs / name}: {reason}" in line for line in listed), (name, err)
    assert "notes.txt" not in err
    result = json.loads((tmp_path / "pred" / "panoptic.json").read_text())
    assert sorted(im["file_name"] for im in result["images"]) == ["good.jpg", "gray16.png"]
    for im, ann in zip(result["images"], result["annotations"]):
        pan = rgb2id(np.asarray(Image.open(tmp_path / "pred" / "panoptic" / ann["file_name"])))
        assert pan.shape == (im["height"], im["width"])
        assert set(np.unique(pan).tolist()) - {0} == {s["id"] for s in ann["segments_info"]}


def test_predict_cli_on_an_empty_folder(tiny_run, tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    rc = main(["predict", str(tiny_run[0]), str(tmp_path / "empty"), "--out",
               str(tmp_path / "pred"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines() == [
        f"spatialflow predict: error: {tmp_path / 'empty'}: no image files in this folder"]


# --- evaluation goes past bad items -----------------------------------------------------------
def _val_copy(data, dest):
    """A copy of the run's data root (val split only) that a test may break."""
    shutil.copytree(data / "val", dest / "val")
    shutil.copytree(data / "panoptic_val", dest / "panoptic_val")
    shutil.copy(data / "panoptic_val.json", dest / "panoptic_val.json")
    return dest


def _break_two(root):
    """Item 1 (image id of the first JSON entry): truncated image; item 2: its PNG holds an id
    that is not in its segments_info. Returns the two image ids."""
    data = json.loads((root / "panoptic_val.json").read_text())
    im0, ann1 = data["images"][0], data["annotations"][1]
    img = root / "val" / im0["file_name"]
    img.write_bytes(img.read_bytes()[:200])
    png = root / "panoptic_val" / ann1["file_name"]
    pan = rgb2id(np.asarray(Image.open(png)))
    pan[0, 0] = 4321                                            # not in segments_info
    Image.fromarray(id2rgb(pan).astype(np.uint8)).save(png)
    return im0["id"], ann1["image_id"], img, png


def test_evaluate_skips_unreadable_items_and_reports_them(tiny_run, tmp_path):
    from spatialflow.engine.predict import Predictor
    from spatialflow.evaluation import SkippedItemWarning

    root = _val_copy(tiny_run[1], tmp_path / "data")
    bad_image_id, bad_png_id, img, png = _break_two(root)
    predictor = Predictor.from_run(tiny_run[0])
    ds = CocoPanopticDataset.from_root(root, "val")
    seen = []
    with pytest.warns(SkippedItemWarning) as caught:
        metrics = predictor.evaluate(ds, tmp_path / "eval", progress=False,
                                     on_skip=lambda *s: seen.append(s))
    assert len([w for w in caught if w.category is SkippedItemWarning]) == 2
    assert set(metrics) == {"panoptic", "bbox"}                 # the documented shape
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(saved) == {"panoptic", "bbox"}
    assert [(i, f) for i, f, _ in seen] == [(bad_image_id, str(img)), (bad_png_id, str(png))]
    assert "cannot decode image" in seen[0][2]
    assert f"(image id {bad_png_id}): PNG segment id(s) [4321] are not in" in seen[1][2]
    skipped = json.loads((tmp_path / "eval" / "skipped.json").read_text())
    assert [s["image_id"] for s in skipped] == [bad_image_id, bad_png_id]
    assert skipped[1] == {"image_id": bad_png_id, "file": str(png), "reason": seen[1][2]}
    pred = json.loads((tmp_path / "eval" / "panoptic_pred.json").read_text())
    assert len(pred["annotations"]) == 1                        # the good one was scored
    # evaluating only the good image into the same folder removes the stale skipped.json
    good = CocoPanopticDataset.from_root(root, "val")
    good.records = [r for r in good.records if r["image_id"] not in (bad_image_id, bad_png_id)]
    predictor.evaluate(good, tmp_path / "eval", progress=False)
    assert not (tmp_path / "eval" / "skipped.json").exists()
    # nothing readable: a DatasetError, with the list written
    for rec in ds.records:
        rec["image_path"].write_bytes(b"")
    with pytest.warns(SkippedItemWarning), pytest.raises(DatasetError,
                                                         match=r"no image to score: 3 could not"):
        predictor.evaluate(ds, tmp_path / "none", progress=False)
    assert len(json.loads((tmp_path / "none" / "skipped.json").read_text())) == 3


def test_evaluate_fills_missing_area_bbox_iscrowd_from_the_png(tiny_run, tmp_path):
    """panopticapi reads ``area`` and ``iscrowd`` of every ground-truth segment and the box
    ground truth its ``bbox``; the reader does not need them, so they are taken from the PNG."""
    from spatialflow.engine.predict import evaluate_run

    root = _val_copy(tiny_run[1], tmp_path / "data")
    js = root / "panoptic_val.json"
    data = json.loads(js.read_text())
    for ann in data["annotations"]:
        for seg in ann["segments_info"]:
            for key in ("area", "bbox", "iscrowd"):
                seg.pop(key, None)
    js.write_text(json.dumps(data))
    ds = CocoPanopticDataset.from_root(root, "val")
    metrics = evaluate_run(tiny_run[0], ds, tmp_path / "eval", progress=False)
    assert set(metrics) == {"panoptic", "bbox"} and metrics["panoptic"]["All"]["n"] > 0
    gt = json.loads((tmp_path / "eval" / "panoptic_gt_subset.json").read_text())
    rec = ds.annotation(0)
    stats = segment_stats(read_panoptic_png(rec["png_path"]))
    first = gt["annotations"][0]["segments_info"]
    assert {s["id"]: (s["area"], s["bbox"]) for s in first} == stats
    assert all(s["iscrowd"] == 0 for s in first)


def test_evaluate_cli_lists_skipped_items_after_the_metrics(tiny_run, tmp_path, capsys):
    root = _val_copy(tiny_run[1], tmp_path / "data")
    bad_image_id, bad_png_id, img, png = _break_two(root)
    rc = main(["evaluate", str(tiny_run[0]), "--data", str(root), "--out",
               str(tmp_path / "eval"), "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 2 and "PQ" in out and "metrics written to" in out
    lines = err.strip().splitlines()
    assert len(lines) == 3, err                                # no warning noise, no traceback
    assert lines[0].startswith(f"skipped: {img}: cannot decode image")
    assert lines[1].startswith(f"skipped: {png} (image id {bad_png_id}): PNG segment id(s)")
    assert lines[2].startswith("spatialflow evaluate: error: 2 of 3 image(s) could not be read")
    assert lines[2].endswith("the metrics cover the other 1")
    assert set(json.loads((tmp_path / "eval" / "metrics.json").read_text())) == {"panoptic",
                                                                                   "bbox"}


def test_evaluate_cli_refuses_other_categories(tiny_run, tmp_path, capsys):
    root = _val_copy(tiny_run[1], tmp_path / "data")
    js = root / "panoptic_val.json"
    data = json.loads(js.read_text())
    data["categories"].append({"id": 200, "name": "unicorn", "isthing": 1})
    js.write_text(json.dumps(data))
    rc = main(["evaluate", str(tiny_run[0]), "--data", str(root), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "are not those the model was trained on" in err
    assert str(js) in err and len(err.strip().splitlines()) == 1


# --- JSON faults that used to escape as TypeError / ValueError / KeyError ---------------------
def _set(path, value):
    def edit(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


JSON_FAULTS = {
    "images not a list": (_set(["images"], {"a": 1}), r"'images' must be a list"),
    "annotations null": (_set(["annotations"], None), r"'annotations' must be a list"),
    "image id a list": (_set(["images", 0, "id"], [1]), r"images\[0\] has invalid id \[1\]"),
    "image id repeated": (_set(["images", 1, "id"], 1), r"image id 1 appears twice"),
    "file_name a number": (_set(["images", 0, "file_name"], 5),
                           r"image id 1 has invalid file_name 5"),
    "height a string": (_set(["images", 0, "height"], "40"), r"image id 1 has invalid height"),
    "image_id a dict": (_set(["annotations", 0, "image_id"], {}),
                        r"annotations\[0\] has invalid image_id \{\}"),
    "png file_name null": (_set(["annotations", 0, "file_name"], None),
                           r"image id 1: invalid panoptic PNG file_name None"),
    "segments_info null": (_set(["annotations", 0, "segments_info"], None),
                           r"image id 1: segments_info must be a list, got NoneType"),
    "segment id a string": (_set(["annotations", 0, "segments_info", 0, "id"], "1100"),
                            r"image id 1: segment id '1100' is invalid"),
    "segment id 0": (_set(["annotations", 0, "segments_info", 0, "id"], 0),
                     r"segment id 0 is invalid .*0 is VOID"),
    "category_id a list": (_set(["annotations", 0, "segments_info", 0, "category_id"], [11]),
                           r"segment id 1100 has category_id \[11\], which is not in"),
    "iscrowd 2": (_set(["annotations", 0, "segments_info", 0, "iscrowd"], 2),
                  r"segment id 1100 has iscrowd=2, expected 0 or 1"),
    "annotation repeated": (lambda d: d["annotations"].append(dict(d["annotations"][0])),
                            r"image id 1: more than one annotation"),
    "colour of text": (_set(["categories", 0, "color"], ["r", "g", "b"]),
                       r"invalid 'categories' \(ValueError"),
}


@pytest.mark.parametrize("fault", list(JSON_FAULTS))
def test_json_faults_are_dataset_errors_naming_the_file(tmp_path, fault):
    img_dir, js, png_dir = write_tiny_dataset(tmp_path, n=2)
    edit, message = JSON_FAULTS[fault]
    data = json.loads(js.read_text())
    edit(data)
    js.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=message) as e:
        CocoPanopticDataset(img_dir, js, png_dir)
    assert str(e.value).startswith(str(js))


# --- load_json --------------------------------------------------------------------------------
@pytest.mark.parametrize("content, message", [
    (b"[" * 100_000, r"malformed JSON \(nested too deeply\)"),
    (b'{"a": ' + b"7" * 5000 + b"}", r"malformed JSON \(Exceeds the limit"),
    (b"\xff\xfe{}", r"not UTF-8 text"),
    (b"", r"malformed JSON"),
])
def test_load_json_faults(tmp_path, content, message):
    (tmp_path / "x.json").write_bytes(content)
    with pytest.raises(DatasetError, match=rf"x\.json: {message}"):
        load_json(tmp_path / "x.json")


def test_load_json_accepts_a_byte_order_mark(tmp_path):
    (tmp_path / "x.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"a": 1}).encode())
    assert load_json(tmp_path / "x.json") == {"a": 1}


JSON_ATOMS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(),
                       st.text(max_size=5))
JSON_VALUES = st.recursive(JSON_ATOMS, lambda kids: st.one_of(
    st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=4), kids, max_size=3)),
    max_leaves=8)


@FUZZ
@given(raw=st.one_of(st.binary(max_size=200),
                     JSON_VALUES.map(lambda v: json.dumps(v).encode()),
                     st.tuples(JSON_VALUES, st.integers(0, 40)).map(
                         lambda t: json.dumps(t[0]).encode()[:t[1]])))
def test_load_json_fuzz(raw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.json"
        path.write_bytes(raw)
        try:
            data = load_json(path, required=("images",))
        except DatasetError as e:
            assert str(e).startswith(str(path))
        else:
            assert isinstance(data, dict) and "images" in data


# --- fuzzing the COCO panoptic reader -----------------------------------------------------------
@st.composite
def valid_datasets(draw):
    """``(categories, items)``: random categories with ``isthing``, and per image a random id
    map with its consistent ``segments_info`` (some with ``area`` / ``bbox``, some without)."""
    cat_ids = draw(st.lists(st.integers(1, 60), min_size=1, max_size=4, unique=True))
    categories = []
    for cid in cat_ids:
        cat = {"id": cid, "name": f"c{cid}", "isthing": draw(st.integers(0, 1))}
        if draw(st.booleans()):
            cat["color"] = [cid, 2 * cid, 3 * cid]
        categories.append(cat)
    items = []
    for _ in range(draw(st.integers(1, 3))):
        h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
        ids = draw(st.lists(st.integers(1, 256**3 - 1), max_size=4, unique=True))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        pan = rng.choice(np.array([0] + ids, np.int64), size=(h, w))
        stats = segment_stats(pan)
        segments = []
        for sid in sorted(stats):
            cat = draw(st.sampled_from(categories))
            seg = {"id": sid, "category_id": cat["id"]}
            if draw(st.booleans()):
                seg["iscrowd"] = int(bool(cat["isthing"]) and draw(st.booleans()))
            if draw(st.booleans()):
                seg["area"], seg["bbox"] = stats[sid]
            segments.append(seg)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        items.append((pan, segments, image))
    return categories, items


def _write(root: Path, categories, items, image_ext):
    (root / "img").mkdir()
    (root / "pan").mkdir()
    images, annotations = [], []
    for k, (pan, segments, image) in enumerate(items):
        Image.fromarray(image).save(root / "img" / f"{k}{image_ext}")
        Image.fromarray(id2rgb(pan).astype(np.uint8)).save(root / "pan" / f"{k}.png")
        images.append({"id": k + 1, "file_name": f"{k}{image_ext}", "height": pan.shape[0],
                       "width": pan.shape[1]})
        annotations.append({"image_id": k + 1, "file_name": f"{k}.png",
                            "segments_info": segments})
    return {"images": images, "annotations": annotations, "categories": categories}


WEIRD = [None, "", "x", "7", [], {}, [1, 2], {"id": 1}, -1, 0, 1.5, True, 2**40,
         float("nan"), float("inf")]


def _slots(node, depth=0):
    """Every ``(container, key)`` of a JSON tree down to segments_info entries' fields."""
    out = []
    if depth > 4:
        return out
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        out.append((node, key))
        if isinstance(value, (dict, list)):
            out += _slots(value, depth + 1)
    return out


def _corrupt(draw, data: dict, root: Path):
    """Apply one random fault to the data set in ``root`` (JSON in ``data``, files on disk)."""
    files = sorted((root / "img").iterdir()) + sorted((root / "pan").iterdir())
    anns = [a for a in data["annotations"]
            if isinstance(a, dict) and isinstance(a.get("segments_info"), list)
            and a["segments_info"] and isinstance(a["segments_info"][0], dict)]
    kind = draw(st.sampled_from([
        "drop key", "weird value", "weird field", "weird field", "weird field", "weird field",
        "unknown category", "duplicate segment", "png id not in json", "segment without pixels",
        "wrong size in json", "truncated file", "garbage file", "missing file", "png mode",
        "png size"]))
    if kind == "weird field":  # a field the reader uses, given a wrong type or value
        what = draw(st.sampled_from(["images", "annotations", "categories", "segments"]))
        if what == "segments" and anns:
            node = draw(st.sampled_from(anns))["segments_info"][0]
            key = draw(st.sampled_from(["id", "category_id", "iscrowd"]))
        else:
            what = "images" if what == "segments" else what
            node = draw(st.sampled_from(data[what]))
            key = draw(st.sampled_from({
                "images": ["id", "file_name", "height", "width"],
                "annotations": ["image_id", "file_name", "segments_info"],
                "categories": ["id", "name", "isthing", "color"]}[what]))
        node[key] = draw(st.sampled_from(WEIRD))
    elif kind == "drop key":
        node, key = draw(st.sampled_from(_slots(data)))
        del node[key]
    elif kind == "weird value":
        node, key = draw(st.sampled_from(_slots(data)))
        node[key] = draw(st.sampled_from(WEIRD))
    elif kind == "unknown category" and anns:
        draw(st.sampled_from(anns))["segments_info"][0]["category_id"] = 999
    elif kind == "duplicate segment" and anns:
        segments = draw(st.sampled_from(anns))["segments_info"]
        segments.append(dict(segments[0]))
    elif kind == "png id not in json" and anns:
        draw(st.sampled_from(anns))["segments_info"].pop()
    elif kind == "segment without pixels":
        ann = draw(st.sampled_from(data["annotations"]))
        ann["segments_info"].append({"id": 256**3 - 1 - len(ann["segments_info"]),
                                     "category_id": data["categories"][0]["id"]})
    elif kind == "wrong size in json":
        im = draw(st.sampled_from(data["images"]))
        im[draw(st.sampled_from(["height", "width"]))] += draw(st.sampled_from([-1, 1, 100]))
    elif kind in ("truncated file", "garbage file", "missing file"):
        path = draw(st.sampled_from(files))
        raw = path.read_bytes()
        if kind == "truncated file":
            path.write_bytes(raw[:draw(st.integers(0, max(0, len(raw) - 1)))])
        elif kind == "garbage file":
            path.write_bytes(draw(st.binary(max_size=64)))
        else:
            path.unlink()
    elif kind == "png mode":
        path = draw(st.sampled_from(sorted((root / "pan").iterdir())))
        with Image.open(path) as im:
            im = im.convert(draw(st.sampled_from(["L", "RGBA", "P", "I;16"])))
        im.save(path)
    elif kind == "png size":
        path = draw(st.sampled_from(sorted((root / "pan").iterdir())))
        Image.new("RGB", (7, 7)).save(path)
    # otherwise the fault does not apply (e.g. no segment left to edit): nothing changes


def _check_item(image, t, ds):
    h, w = image.shape[-2:]
    assert image.shape[0] == 3 and image.dtype == torch.float32
    assert tuple(t["sem_seg"].shape) == (h, w) and t["orig_size"].tolist() == [h, w]
    for prefix in ("", "crowd_"):
        n = len(t[prefix + "labels"])
        assert t[prefix + "masks"].shape == (n, h, w)
        assert t[prefix + "boxes"].shape == (n, 4) and len(t[prefix + "segment_ids"]) == n
        assert all(int(m.sum()) > 0 for m in t[prefix + "masks"])
        assert all(0 <= int(label) < ds.categories.num_things for label in t[prefix + "labels"])
    sem = t["sem_seg"]
    assert ((sem <= ds.categories.other_index) | (sem == 255)).all()


@settings(FUZZ, max_examples=100)
@given(dataset=valid_datasets(), faults=st.sampled_from([0, 1, 1, 2, 3]), image_ext=st.sampled_from(
    [".png", ".jpg"]), on_error=st.sampled_from(["raise", "skip"]), data=st.data())
def test_reader_fuzz_only_dataset_errors(dataset, faults, image_ext, on_error, data):
    categories, items = dataset
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        coco = _write(root, categories, items, image_ext)
        for _ in range(faults):
            try:
                _corrupt(data.draw, coco, root)
            except (KeyError, TypeError, IndexError, AttributeError, ValueError, OSError):
                pass  # an earlier fault broke what this one edits: the data set stays broken
        js = root / "panoptic.json"
        js.write_text(json.dumps(coco))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = CocoPanopticDataset(root / "img", js, root / "pan", on_error=on_error)
            except DatasetError as e:
                assert faults > 0, e
                assert str(root) in str(e)                      # names the file
                return
            if faults == 0:
                assert len(ds) == len(items) and not ds.skipped
            for i in range(len(ds)):
                try:
                    image, t = ds[i]
                except DatasetError as e:
                    assert faults > 0, e
                    assert str(root) in str(e)
                    if on_error == "skip":                    # only when nothing is readable
                        assert "no item could be read" in str(e)
                    continue
                assert faults or not t["skipped"]
                _check_item(image, t, ds)
