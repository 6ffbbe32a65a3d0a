import pytest

from spatialflow.data.categories import CategoryMap
from spatialflow.errors import DatasetError

from conftest import TINY_CATEGORIES


def test_contiguous_ids_sorted_by_dataset_id():
    cm = CategoryMap.from_coco(TINY_CATEGORIES)
    assert cm.thing_ids == (3, 7) and cm.stuff_ids == (11, 20)
    assert [cm.thing_index(c) for c in (3, 7)] == [0, 1]
    assert [cm.thing_id(i) for i in (0, 1)] == [3, 7]
    assert cm.semantic_index(11) == 0 and cm.semantic_index(20) == 1
    assert cm.semantic_index(3) == cm.other_index == 2 == cm.num_stuff
    assert cm.num_sem_classes == 3 and cm.ignore_index == 255
    assert cm.stuff_id(1) == 20
    assert cm.colors()[7].tolist() == [200, 30, 30]


def test_coco_133_classes(coco_sample):
    import json
    cats = json.loads((coco_sample / "panoptic.json").read_text())["categories"]
    cm = CategoryMap.from_coco(cats)
    assert (cm.num_things, cm.num_stuff) == (80, 53)
    for k, cid in enumerate(cm.thing_ids):
        assert cm.thing_index(cid) == k and cm.is_thing(cid)
    assert all(cm.semantic_index(c) == 53 for c in cm.thing_ids)


def test_category_id_0_is_a_category():
    """COCO panoptic allows category id 0 (Cityscapes trainIds: road); only the segment id 0
    of a PNG means void."""
    cats = [dict(TINY_CATEGORIES[0], id=0)] + [dict(c) for c in TINY_CATEGORIES[1:]]
    cm = CategoryMap.from_coco(cats)
    assert cm.thing_ids == (0, 3) and cm.thing_index(0) == 0 and cm.thing_id(0) == 0
    assert cm.is_thing(0) and cm.name(0) == "ball" and cm.colors()[0].tolist() == [200, 30, 30]
    with pytest.raises(DatasetError, match="invalid id -1"):
        CategoryMap.from_coco([dict(TINY_CATEGORIES[0], id=-1)])


def test_messages_name_the_classes_that_differ(coco_sample):
    import json
    import warnings

    from spatialflow.errors import InputError

    coco = json.loads((coco_sample / "panoptic.json").read_text())["categories"]
    data = CategoryMap.from_coco(coco)
    text = data.describe()
    assert text.startswith("things (80): 1 person, 2 bicycle, 3 car, ") and "(74 more)" in text
    assert "stuff (53): 92 banner, " in text and len(text) < 250
    model = CategoryMap.from_coco([c for c in coco if c["id"] != 3]
                                  + [{"id": 300, "name": "unicorn", "isthing": 1}]
                                  + [{"id": 400 + k, "name": f"extra{k}", "isthing": 0}
                                     for k in range(9)])
    diffs = data.differences(model)
    assert diffs[0] == ("missing here (10): 300 unicorn, 400 extra0, 401 extra1, 402 extra2, "
                        "403 extra3, 404 extra4, ... (4 more)")
    assert diffs[1] == "only here (1): 3 car"
    with pytest.raises(InputError, match=r"^val.json: its categories are not those the model "
                                         r"was trained on .*missing here \(10\).*only here"):
        data.check_model(model, "val.json")
    flipped = [dict(c, isthing=1 - c["isthing"]) if c["id"] == 1 else c for c in coco]
    assert data.differences(CategoryMap.from_coco(flipped)) == [
        "thing in one, stuff in the other (1): 1 person"]
    renamed = [dict(c, name="human") if c["id"] == 1 else c for c in coco]
    assert data.differences(CategoryMap.from_coco(renamed)) == [
        "other names (1): 1 'person' here, 'human' there"]
    with pytest.warns(UserWarning, match="same ids but other names"):
        data.check_model(CategoryMap.from_coco(renamed))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.check_model(data)  # the same: silent


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c[0].pop("isthing"), "no 'isthing'"),
    (lambda c: c[1].update(id=7), "appears twice"),
    (lambda c: c[2].update(isthing=5), "isthing=5"),
    (lambda c: c[3].update(id="x"), "invalid id"),
    (lambda c: c.clear(), "non-empty"),
])
def test_bad_categories(mutate, message):
    cats = [dict(c) for c in TINY_CATEGORIES]
    mutate(cats)
    with pytest.raises(DatasetError, match=message):
        CategoryMap.from_coco(cats, source="x.json")


def test_missing_color_gets_a_stable_one():
    cats = [dict(c) for c in TINY_CATEGORIES]
    del cats[0]["color"]
    a, b = CategoryMap.from_coco(cats), CategoryMap.from_coco(cats)
    assert a[7]["color"] == b[7]["color"] and len(a[7]["color"]) == 3


def test_a_thing_of_category_id_0_through_train_evaluate_and_predict(tmp_path, capsys):
    """The synthetic data with 'person' renumbered to category id 0 (JSON only: PNG segment
    ids do not hold categories): trained, evaluated and predicted on, id 0 kept throughout."""
    import json

    from spatialflow.cli import main
    from spatialflow.data.synthetic import make_synthetic

    from conftest import FAST

    root = tmp_path / "data"
    make_synthetic(root, 8, 2, 128, 0, workers=1, progress=False)
    for split in ("train", "val"):
        for name in (f"panoptic_{split}.json", f"instances_{split}.json"):
            data = json.loads((root / name).read_text())
            for c in data["categories"]:
                c["id"] = 0 if c["id"] == 1 else c["id"]
            for a in data["annotations"]:
                for s in a.get("segments_info", [a]):
                    s["category_id"] = 0 if s["category_id"] == 1 else s["category_id"]
            (root / name).write_text(json.dumps(data))
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny-cpu", "--out", str(run), "--set", *FAST,
                 f"data.root={root}", "train.max_iters=2", "infer.mask_conf=0.0",
                 "infer.score_thresh=0.0"]) == 0
    assert main(["evaluate", str(run), "--out", str(tmp_path / "eval"), "--per-class"]) == 0
    assert "person" in capsys.readouterr().out
    pred = json.loads((tmp_path / "eval" / "panoptic_pred.json").read_text())
    assert {c["id"]: c["name"] for c in pred["categories"]}[0] == "person"
    used = {s["category_id"] for a in pred["annotations"] for s in a["segments_info"]}
    assert 0 in used  # a thing of category 0 predicted (every detection kept)
    image = next((root / "val").glob("*.jpg"))
    assert main(["predict", str(run), str(image), "--out", str(tmp_path / "pred")]) == 0
    written = json.loads(next((tmp_path / "pred").rglob("*.json")).read_text())
    assert 0 in {c["id"] for c in written["categories"]}
