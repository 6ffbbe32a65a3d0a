"""SpatialFlow Workbench: the panoptic segmentation model of *SpatialFlow: Bridging All Tasks for
Panoptic Segmentation* (Chen et al.), its data layer, training, evaluation and notebooks.

The public names below are imported lazily so that ``spatialflow --help`` stays fast.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "load_config": "spatialflow.config",
    "save_config": "spatialflow.config",
    "list_presets": "spatialflow.config",
    "Config": "spatialflow.config",
    "CocoPanopticDataset": "spatialflow.data.coco_panoptic",
    "DatasetError": "spatialflow.data.coco_panoptic",
    "collate_panoptic": "spatialflow.model.inputs",
    "CategoryMap": "spatialflow.data.categories",
    "make_synthetic": "spatialflow.data.synthetic",
    "build_model": "spatialflow.model.spatialflow",
    "train": "spatialflow.engine.train",
    "load_run": "spatialflow.engine.runs",
    "load_weights": "spatialflow.engine.runs",
    "Predictor": "spatialflow.engine.predict",
    "evaluate_run": "spatialflow.engine.predict",
    "evaluate": "spatialflow.evaluation",
    "SpatialFlow": "spatialflow.model.spatialflow",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    import importlib

    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in ("panoptic", "evaluation", "config", "data", "model", "engine", "benchmark"):
        return importlib.import_module(f"spatialflow.{name}")
    raise AttributeError(f"module 'spatialflow' has no attribute {name!r}")
