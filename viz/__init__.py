"""Pictures and widgets for SpatialFlow Workbench: panoptic overlays (:mod:`viz.overlay`), CAM
heatmaps of the cls and stuff heads (:mod:`viz.cam`), the ipywidgets explorer
(:mod:`viz.widgets`) and figures of runs and studies (:mod:`viz.plots`).

Depends on :mod:`spatialflow`, never the other way round.
"""
