"""The paper's published figures of each study, to set beside the measured ones."""

from __future__ import annotations


# The paper's figures (ResNet-50; COCO val unless the table says Cityscapes; PQ, PQ_Th, PQ_St,
# or box AP for Table XII), to show next to measured ones.
PAPER = {
    "table_iv": [{"lambda": lam, "pq": a, "pq_th": b, "pq_st": c} for lam, a, b, c in (
        (1.0, 37.5, 41.8, 30.9), (0.75, 38.2, 43.0, 31.1), (0.5, 38.8, 44.0, 31.0),
        (0.3, 39.1, 44.5, 30.9), (0.25, 39.3, 45.1, 30.5), (0.2, 39.0, 44.9, 30.0))],
    "table_v": [{"variant": v, "pq": a, "pq_th": b, "pq_st": c} for v, a, b, c in (
        ("baseline", 39.7, 46.0, 30.2), ("+ sub-networks", 40.3, 46.2, 31.4),
        ("+ spatial flows", 40.2, 46.5, 30.7), ("+ both", 40.9, 46.8, 31.9))],
    "table_ix": [{"variant": v, "pq": a, "pq_th": b, "pq_st": c} for v, a, b, c in (
        ("-", 40.3, 46.2, 31.4), ("+ reg-cls", 40.5, 46.6, 31.4),
        ("+ reg-stuff", 40.7, 46.3, 32.0), ("+ reg-thing", 40.7, 46.4, 31.8),
        ("+ stuff-thing", 40.9, 46.8, 31.9))],
    # Table VI: Table V on Cityscapes val
    "table_vi": [{"variant": v, "pq": a, "pq_th": b, "pq_st": c} for v, a, b, c in (
        ("baseline", 57.3, 53.5, 60.0), ("+ sub-networks", 57.5, 53.6, 60.3),
        ("+ spatial flows", 58.0, 54.3, 60.8), ("+ both", 58.6, 54.9, 61.4))],
    # Tables VII / VIII: stages of the thing / stuff sub-network, on the baseline model
    "table_vii": [{"stages": n, "pq": a, "pq_th": b, "pq_st": c} for n, a, b, c in (
        (0, 39.7, 46.0, 30.2), (1, 39.9, 46.3, 30.3), (2, 39.7, 46.0, 30.2),
        (3, 39.9, 46.2, 30.3), (4, 39.7, 45.9, 30.3))],
    "table_viii": [{"stages": n, "pq": a, "pq_th": b, "pq_st": c} for n, a, b, c in (
        (0, 39.7, 46.0, 30.2), (1, 39.9, 45.9, 30.9), (2, 40.1, 46.0, 31.1),
        (3, 40.2, 46.1, 31.4), (4, 40.3, 46.2, 31.5))],
    # Table X: Table IX on Cityscapes val
    "table_x": [{"variant": v, "pq": a, "pq_th": b, "pq_st": c} for v, a, b, c in (
        ("-", 57.5, 53.6, 60.3), ("+ reg-cls", 58.0, 55.1, 60.1),
        ("+ reg-stuff", 58.3, 54.6, 60.9), ("+ reg-thing", 58.5, 54.7, 61.3),
        ("+ stuff-thing", 58.6, 54.9, 61.4))],
    # Fig. 4 (600 px): the paper gives only differences, spatial flows minus cls flows; a row
    # with a "reference" is a difference to that row
    "fig_4": [{"variant": "spatial flows", "reference": "cls flows", "pq": 0.7, "pq_th": 0.8,
               "pq_st": 0.5}],
    # Table XII: RetinaNet R50 at 800 px, box AP on COCO val
    "table_xii": [{"variant": v, "ap": a, "ap50": b, "ap75": c} for v, a, b, c in (
        ("RetinaNet", 35.6, 55.5, 37.7), ("RetinaNet w/ flows", 36.7, 57.1, 39.4))],
    # Table XI: FPS on one V100
    "table_xi": [{"name": n, "scale": s, "pq": a, "pq_th": b, "pq_st": c, "fps": f}
                 for n, s, a, b, c, f in (
                     ("PanopticFPN R50", 800, 39.0, 45.9, 27.9, 18.9),
                     ("UPSNet R50", 800, 42.5, 48.5, 33.4, 9.1),
                     ("DeeperLab X71", 641, 34.3, 37.5, 29.6, 10.6),
                     ("SpatialFlow R50", 800, 40.9, 46.8, 31.9, 10.3),
                     ("SpatialFlow R50", 600, 40.3, 45.6, 32.2, 13.0),
                     ("SpatialFlow R50", 400, 37.4, 41.5, 31.4, 19.6))],
}
