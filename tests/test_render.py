import numpy as np

from spatialflow.data.categories import CategoryMap
from spatialflow.render import boundaries, panoptic_overlay, segment_colors, side_by_side

from conftest import TINY_CATEGORIES, tiny_scene

CM = CategoryMap.from_coco(TINY_CATEGORIES)


def test_overlay_colours_segments_and_keeps_unassigned_pixels():
    pan, segs = tiny_scene()
    image = np.full(pan.shape + (3,), 100, np.uint8)
    out = panoptic_overlay(image, pan, segs, CM, alpha=1.0, draw_boundaries=False)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out[0, 0].tolist() == CM[11]["color"]                  # wall in its colour
    assert out[5, -1].tolist() == [100, 100, 100]                  # VOID keeps the image
    assert out[28, 8].tolist() != out[28, 18].tolist()             # two touching boxes differ
    colors = segment_colors(segs, CM)
    assert colors[301].tolist() == CM[3]["color"]                  # first instance: class colour


def test_boundaries_and_boxes():
    pan, segs = tiny_scene()
    edge = boundaries(pan)
    assert edge[23, 10] and not edge[0, 0]                         # wall/floor... box edge
    image = np.zeros(pan.shape + (3,), np.uint8)
    a = panoptic_overlay(image, pan, segs, CM)
    b = panoptic_overlay(image, pan, segs, CM, boxes=True, labels=True)
    assert (a[edge] == 255).all() and not np.array_equal(a, b)
    assert side_by_side(a, b[:30]).shape == (40, 48 * 2 + 4, 3)
