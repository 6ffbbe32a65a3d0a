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
