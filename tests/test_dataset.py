"""CocoPanopticDataset on the real COCO sample and on hand-made data, including bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from panopticapi.utils import id2rgb

from spatialflow.data.coco_panoptic import CocoPanopticDataset, count_skipped, target_to_panoptic
from spatialflow.data.panoptic_io import read_panoptic_png, segment_stats
from spatialflow.errors import DatasetError
from spatialflow.model.inputs import collate_panoptic

from conftest import tiny_scene, write_tiny_dataset


# --- the real COCO sample -------------------------------------------------------------------
def _sample(coco_sample, **kw):
    return CocoPanopticDataset(coco_sample / "images", coco_sample / "panoptic.json",
                               coco_sample / "panoptic", **kw)


def test_coco_sample_segments_match_json(coco_sample):
    ds = _sample(coco_sample)
    assert len(ds) == 2 and ds.categories.num_things == 80 and ds.categories.num_stuff == 53
    for i in range(len(ds)):
        image, t = ds[i]
        rec = ds.annotation(i)
        h, w = image.shape[-2:]
        assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
        assert t["masks"].shape[1:] == (h, w) == tuple(t["sem_seg"].shape)
        by_id = {s["id"]: s for s in rec["segments_info"]}
        # every instance mask has the JSON's area and bbox
        for prefix in ("", "crowd_"):
            for m, sid, box, label in zip(t[prefix + "masks"], t[prefix + "segment_ids"],
                                          t[prefix + "boxes"], t[prefix + "labels"]):
                seg = by_id[int(sid)]
                assert int(m.sum()) == seg["area"]
                x, y, bw, bh = seg["bbox"]
                assert box.tolist() == [x, y, x + bw, y + bh]
                assert ds.categories.thing_id(int(label)) == seg["category_id"]
                assert bool(seg.get("iscrowd", 0)) == (prefix == "crowd_")
        n_things = sum(ds.categories.is_thing(s["category_id"]) for s in rec["segments_info"])
        assert len(t["labels"]) + len(t["crowd_labels"]) == n_things
        # stuff pixels carry their class, thing pixels 'other'
        pan = read_panoptic_png(rec["png_path"])
        for seg in rec["segments_info"]:
            values = t["sem_seg"][torch.from_numpy(pan == seg["id"])].unique().tolist()
            assert values == [ds.categories.semantic_index(seg["category_id"])]
        assert (t["sem_seg"][torch.from_numpy(pan == 0)] == 255).all()


def test_coco_sample_round_trip(coco_sample):
    ds = _sample(coco_sample)
    for i in range(len(ds)):
        _, t = ds[i]
        _, pan, rec = ds.load(i)
        rebuilt, segs = target_to_panoptic(t, ds.categories, rec["segments_info"])
        assert np.array_equal(rebuilt, pan)
        want = {s["id"]: (s["category_id"], s["area"], s["bbox"], s.get("iscrowd", 0))
                for s in rec["segments_info"]}
        got = {s["id"]: (s["category_id"], s["area"], s["bbox"], s["iscrowd"]) for s in segs}
        assert got == want


def test_coco_sample_self_evaluation_is_perfect(coco_sample, tmp_path):
    from panopticapi.evaluation import pq_compute
    js = str(coco_sample / "panoptic.json")
    res = pq_compute(js, js, str(coco_sample / "panoptic"), str(coco_sample / "panoptic"))
    for key in ("All", "Things", "Stuff"):
        assert res[key]["pq"] == pytest.approx(1.0) and res[key]["n"] > 0


# --- hand-made data ----------------------------------------------------------------------
def test_tiny_target_contents(tiny_dataset):
    ds = CocoPanopticDataset(*tiny_dataset)
    image, t = ds[0]
    cm = ds.categories
    assert image.shape == (3, 40, 48)
    assert t["labels"].tolist() == [cm.thing_index(3), cm.thing_index(3), cm.thing_index(7)]
    assert t["segment_ids"].tolist() == [301, 302, 701]
    assert t["boxes"][0].tolist() == [4, 24, 14, 34]          # right/bottom exclusive
    assert t["crowd_labels"].tolist() == [cm.thing_index(7)] and len(t["crowd_masks"]) == 1
    sem = t["sem_seg"]
    assert (sem[30:38, 34:46] == cm.other_index).all()          # crowd pixels are 'other'
    assert (sem[:, -1] == 255).all()                            # VOID is ignored
    assert sem[0, 0] == cm.stuff_index(11) and sem[-1, 0] == cm.stuff_index(20)
    assert t["image_id"] == 1 and t["orig_size"].tolist() == [40, 48]
    _, t1 = ds[1]
    assert len(t1["crowd_masks"]) == 0 and t1["crowd_masks"].shape[1:] == (40, 48)


def test_tiny_round_trip(tiny_dataset):
    ds = CocoPanopticDataset(*tiny_dataset)
    for i in range(len(ds)):
        _, t = ds[i]
        _, pan, rec = ds.load(i)
        rebuilt, segs = target_to_panoptic(t, ds.categories, rec["segments_info"])
        assert np.array_equal(rebuilt, pan)
        stats = segment_stats(pan)
        assert {s["id"]: (s["area"], s["bbox"]) for s in segs} == stats


def test_segment_stats_small_and_large_ids_agree():
    """Small ids are counted (bincount), large ones (RGB-encoded) sorted: the same stats."""
    rng = np.random.default_rng(0)
    pan = rng.integers(0, 7, size=(40, 60))
    pan[:, :3] = 0
    small = segment_stats(pan)
    large = segment_stats(np.where(pan > 0, pan + 2**20, 0))
    assert {i + 2**20: v for i, v in small.items()} == large and 0 not in small
    ys, xs = np.nonzero(pan == 5)
    assert small[5] == (len(ys), [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                  int(ys.max() - ys.min() + 1)])
    assert segment_stats(np.zeros((3, 4), dtype=np.int32)) == {}


def test_image_formats_are_converted(tmp_path):
    img_dir, js, png_dir = write_tiny_dataset(tmp_path, n=4, image_ext=".png")
    paths = sorted(img_dir.iterdir())
    rgb = np.asarray(Image.open(paths[0]))
    Image.fromarray(rgb[..., 0]).save(paths[0])                           # grayscale
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(paths[1])
    Image.fromarray(rgb).convert("P").save(paths[2])                      # palette
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(paths[3])  # 16-bit
    ds = CocoPanopticDataset(img_dir, js, png_dir)
    for i in range(4):
        image, _ = ds[i]
        assert image.shape == (3, 40, 48) and image.dtype == torch.float32
    g16, _ = ds[3]
    g8, _ = ds[0]
    assert torch.allclose(g16, g8, atol=1 / 255)


def test_any_extension_and_subfolders(tmp_path):
    img_dir, js, png_dir = write_tiny_dataset(tmp_path, n=2, image_ext=".png")
    city = img_dir / "frankfurt"
    city.mkdir()
    for p in list(img_dir.glob("*.png")):
        shutil.move(str(p), city / p.name)
    data = json.loads(js.read_text())
    for im in data["images"]:
        im["file_name"] = im["file_name"].replace(".png", ".jpg")  # JSON says .jpg
    js.write_text(json.dumps(data))
    ds = CocoPanopticDataset(img_dir, js, png_dir)
    assert len(ds) == 2 and ds[1][0].shape == (3, 40, 48)


def test_from_root_layouts(tmp_path):
    write_tiny_dataset(tmp_path)
    assert len(CocoPanopticDataset.from_root(tmp_path, "train")) == 3
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    shutil.copytree(tmp_path / "train", coco / "val2017")
    shutil.copytree(tmp_path / "panoptic_train", coco / "annotations" / "panoptic_val2017")
    shutil.copy(tmp_path / "panoptic_train.json", coco / "annotations" / "panoptic_val2017.json")
    assert len(CocoPanopticDataset.from_root(coco, "val")) == 3
    with pytest.raises(DatasetError, match="no panoptic JSON for split 'test'"):
        CocoPanopticDataset.from_root(tmp_path, "test")


def test_collate_pads_to_multiple_of_32(tiny_dataset):
    ds = CocoPanopticDataset(*tiny_dataset)
    images, targets = collate_panoptic([ds[0], ds[1]])
    assert images.tensors.shape == (2, 3, 64, 64)
    assert images.image_sizes == [(40, 48), (40, 48)]
    t = targets[0]
    assert t["sem_seg"].shape == (64, 64) and (t["sem_seg"][40:] == 255).all()
    assert (t["sem_seg"][:, 48:] == 255).all() and (images.tensors[0, :, 40:] == 0).all()
    assert t["masks"].shape == (3, 64, 64) and t["masks"][:, 40:].sum() == 0
    assert torch.equal(t["masks"][:, :40, :48], ds[0][1]["masks"])
    images, targets = collate_panoptic([ds[0]], size_divisibility=128)  # runs of before
    assert images.tensors.shape[-2:] == (128, 128) and targets[0]["sem_seg"].shape == (128, 128)


# --- bad input -----------------------------------------------------------------------------
def _edit_json(js, fn):
    data = json.loads(js.read_text())
    fn(data)
    js.write_text(json.dumps(data))


def _write_png(png_dir, name, pan):
    Image.fromarray(id2rgb(pan).astype(np.uint8)).save(png_dir / name)


OPEN_FAULTS = {
    "missing image": (lambda d, js, p: (d / "0001.jpg").unlink(), r"0001\.jpg: image file not found"),
    "missing png": (lambda d, js, p: (p / "0002.png").unlink(), r"0002\.png: panoptic PNG not found"),
    "unknown category": (
        lambda d, js, p: _edit_json(js, lambda x: x["annotations"][0]["segments_info"][2].update(
            category_id=99)), r"image id 1: segment id 301 has category_id 99"),
    "no isthing": (lambda d, js, p: _edit_json(js, lambda x: x["categories"][1].pop("isthing")),
                   r"category id 3 has no 'isthing'"),
    "duplicate segment": (
        lambda d, js, p: _edit_json(js, lambda x: x["annotations"][1]["segments_info"].append(
            dict(x["annotations"][1]["segments_info"][0]))), r"image id 2: segment id 1100 appears twice"),
    "image without annotation": (
        lambda d, js, p: _edit_json(js, lambda x: x["annotations"].pop(2)), r"image id 3 .* no annotation"),
}

READ_FAULTS = {
    "png id not in json": (
        lambda d, js, p: _write_png(p, "0000.png", np.where(tiny_scene()[0] == 701, 555, tiny_scene()[0])),
        r"0000\.png \(image id 1\): PNG segment id\(s\) \[555\] are not in segments_info"),
    "json id not in png": (
        lambda d, js, p: _edit_json(js, lambda x: x["annotations"][0]["segments_info"].append(
            {"id": 4242, "category_id": 3, "iscrowd": 0})),
        r"segments_info id\(s\) \[4242\] have no pixel in the PNG"),
    "truncated image": (
        lambda d, js, p: (d / "0000.jpg").write_bytes((d / "0000.jpg").read_bytes()[:200]),
        r"0000\.jpg: cannot decode image"),
    "not an image": (lambda d, js, p: (d / "0000.jpg").write_text("hello"),
                     r"0000\.jpg: cannot decode image"),
    "size mismatch": (lambda d, js, p: _write_png(p, "0000.png", tiny_scene()[0][:30]),
                      r"0000\.png: size 48x30 differs from its image"),
}


@pytest.mark.parametrize("fault", sorted(OPEN_FAULTS))
def test_open_faults_raise(tmp_path, fault):
    img_dir, js, png_dir = write_tiny_dataset(tmp_path)
    breaker, message = OPEN_FAULTS[fault]
    breaker(img_dir, js, png_dir)
    with pytest.raises(DatasetError, match=message):
        CocoPanopticDataset(img_dir, js, png_dir)


@pytest.mark.parametrize("fault", sorted(READ_FAULTS))
def test_read_faults_raise_when_item_is_read(tmp_path, fault):
    img_dir, js, png_dir = write_tiny_dataset(tmp_path)
    breaker, message = READ_FAULTS[fault]
    breaker(img_dir, js, png_dir)
    ds = CocoPanopticDataset(img_dir, js, png_dir)   # opening is fine
    ds[1]
    with pytest.raises(DatasetError, match=message):
        ds[0]


def test_skip_mode_warns_and_counts(tmp_path):
    img_dir, js, png_dir = write_tiny_dataset(tmp_path, n=4)
    (png_dir / "0003.png").unlink()                                    # found when opening
    (img_dir / "0000.jpg").write_bytes(b"\xff\xd8garbage")              # found when reading
    with pytest.warns(UserWarning, match="0003.png: panoptic PNG not found"):
        ds = CocoPanopticDataset(img_dir, js, png_dir, on_error="skip")
    assert len(ds) == 3 and len(ds.skipped) == 1
    with pytest.warns(UserWarning, match="0000.jpg: cannot decode image"):
        image, t = ds[0]
    assert t["image_id"] == 2 and len(t["skipped"]) == 1 and len(ds.skipped) == 2
    assert count_skipped([t, ds[1][1]]) == 1


@pytest.mark.parametrize("content, message", [
    ("{not json", r"malformed JSON \(.* line 1, column 2\)"),
    ("[1, 2]", "expected a JSON object"),
    ('{"images": []}', r"missing top-level key\(s\) \['annotations', 'categories'\]"),
])
def test_bad_json(tmp_path, content, message):
    img_dir, js, png_dir = write_tiny_dataset(tmp_path)
    js.write_text(content)
    with pytest.raises(DatasetError, match=message):
        CocoPanopticDataset(img_dir, js, png_dir)


def test_missing_folders_and_json(tmp_path):
    img_dir, js, png_dir = write_tiny_dataset(tmp_path)
    with pytest.raises(DatasetError, match="image folder not found"):
        CocoPanopticDataset(tmp_path / "nope", js, png_dir)
    with pytest.raises(DatasetError, match="JSON file not found"):
        CocoPanopticDataset(img_dir, tmp_path / "x.json", png_dir)


# --- the built-in synthetic data through the same reader -------------------------------------
@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    from spatialflow.data.synthetic import make_synthetic
    root = tmp_path_factory.mktemp("synth")
    make_synthetic(root, num_train=8, num_val=2, size=96, seed=5, workers=1, progress=False)
    return root


def test_synthetic_round_trip_and_crowd(synthetic_root):
    ds = CocoPanopticDataset.from_root(synthetic_root, "train")
    assert (ds.categories.num_things, ds.categories.num_stuff) == (4, 5)
    for i in range(len(ds)):
        _, t = ds[i]
        _, pan, rec = ds.load(i)
        rebuilt, segs = target_to_panoptic(t, ds.categories, rec["segments_info"])
        assert np.array_equal(rebuilt, pan)
        crowd = {s["id"] for s in rec["segments_info"] if s["iscrowd"]}
        assert set(t["crowd_segment_ids"].tolist()) == crowd
        assert not crowd & set(t["segment_ids"].tolist())      # crowd is never a training instance
    assert (synthetic_root / "instances_train.json").is_file()


def test_synthetic_batches_through_a_dataloader(synthetic_root):
    from spatialflow.data.transforms import build_transforms
    ds = CocoPanopticDataset.from_root(synthetic_root, "train",
                                       transforms=build_transforms((80, 112), 160, "range"))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2,
                                         collate_fn=collate_panoptic)
    seen = 0
    for images, targets in loader:
        assert images.tensors.shape[-1] % 32 == 0 and images.tensors.shape[-2] % 32 == 0
        for (h, w), t in zip(images.image_sizes, targets):
            assert t["size"].tolist() == [h, w] and 80 <= min(h, w) <= 112
            assert t["sem_seg"].shape == images.tensors.shape[-2:]
        seen += len(targets)
    assert seen == len(ds)


def test_cache_gives_the_same_items_and_reads_each_file_once(synthetic_root, monkeypatch):
    """``cache=True``: every item (random transforms included, under the same seed) equals the
    uncached reader's, dtypes and all; the files are decoded once; what a caller does to an
    item does not reach the cache."""
    from spatialflow.data.transforms import build_transforms
    tf = build_transforms((80, 112), 160, "range")
    plain = CocoPanopticDataset.from_root(synthetic_root, "train", transforms=tf)
    cached = CocoPanopticDataset.from_root(synthetic_root, "train", transforms=tf, cache=True)
    reads = []
    load = cached.load
    monkeypatch.setattr(cached, "load", lambda i: reads.append(i) or load(i))
    for rnd in range(2):
        for i in range(len(plain)):
            torch.manual_seed(100 * rnd + i)
            want_image, want = plain[i]
            torch.manual_seed(100 * rnd + i)
            image, got = cached[i]
            assert torch.equal(image, want_image)
            assert got.keys() == want.keys()
            for key, value in want.items():
                if isinstance(value, torch.Tensor):
                    assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
                else:
                    assert got[key] == value, key
            got["masks"].zero_()
            got["sem_seg"].fill_(7)
    assert sorted(reads) == list(range(len(plain)))  # decoded once each
    assert cached.cache[0][1]["sem_seg"].dtype == torch.uint8  # held compactly
    raw = CocoPanopticDataset.from_root(synthetic_root, "train", cache=True)
    first_image, first = raw[0]
    first_image.zero_()
    first["sem_seg"].fill_(3)
    again_image, again = raw[0]
    assert torch.equal(again_image, plain.decoded(0)[0].float() / 255)
    assert torch.equal(again["sem_seg"], plain.decoded(0)[1]["sem_seg"])
