"""Pictures and widgets for SpatialFlow Workbench (overlays, CAM heatmaps, explorers, plots).

Depends on :mod:`spatialflow`, never the other way round. Filled by a later issue.
"""
