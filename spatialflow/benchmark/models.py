"""The models the benchmarks and ``spatialflow info`` measure: SpatialFlow variants of a preset
with random weights and made-up categories of the preset's class counts, and torchvision's peers
(``weights=None``)."""

from __future__ import annotations

import warnings
from typing import Dict, Sequence, Tuple

import torch
from torch import nn
from torchvision.models import detection

from spatialflow.config import NO_FLOWS, load_config
from spatialflow.data.categories import CategoryMap
from spatialflow.data.synthetic import SYNTHETIC_CATEGORIES
from spatialflow.errors import InputError
from spatialflow.model import build_model


def spatialflow_variants() -> Dict[str, Tuple[str, ...]]:
    """The SpatialFlow models compared: all flows, without flows, the naive baseline (the
    rows '+ both', '+ sub-networks' and 'baseline' of Table V), and the detector alone with
    the reg->cls flow (Table XII's 'RetinaNet w/ flows', beside torchvision's RetinaNet)."""
    return {"SpatialFlow R50": (),
            "SpatialFlow R50, no flows": ("model.subnets=true",) + NO_FLOWS,
            "naive baseline R50": ("model.subnets=false",) + NO_FLOWS,
            "RetinaNet R50 w/ flows": ("model.panoptic=false",)}


def build_spatialflow(overrides: Sequence[str] = (), preset: str = "r50-coco",
                      seed: int = 0):
    """``(model in eval mode, config, categories)``: a preset's model with random weights,
    COCO's class counts, ``score_thresh`` 0 (always the full 100 detections) and
    ``mask_conf`` 0 (every detection gets a mask and goes through the merge: the worst case;
    random weights score below the preset's 0.37)."""
    cfg = load_config(preset, ["infer.score_thresh=0.0", "infer.mask_conf=0.0", *overrides])
    categories = summary_categories(cfg)
    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frozen BN without pretrained weights
        torch.manual_seed(seed)
        model = build_model(cfg, categories).eval()
    return model, cfg, categories


def build_peer(name: str, short: int, long: int, seed: int = 0,
               num_classes: int = 91) -> nn.Module:
    """torchvision's ``maskrcnn_resnet50_fpn`` or ``retinanet_resnet50_fpn`` (``weights=None``)
    in eval mode, set to keep the input size and to return the full 100 detections; the
    global random state is left as it was."""
    builders = {"Mask R-CNN R50-FPN": (detection.maskrcnn_resnet50_fpn, "box_score_thresh"),
                "RetinaNet R50-FPN": (detection.retinanet_resnet50_fpn, "score_thresh")}
    if name not in builders:
        raise InputError(f"unknown peer {name!r}; one of {sorted(builders)}")
    build, thresh = builders[name]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build(weights=None, weights_backbone=None, num_classes=num_classes,
                     min_size=short, max_size=long, **{thresh: 0.0}).eval()


PEERS = ("Mask R-CNN R50-FPN", "RetinaNet R50-FPN")


def summary_categories(config) -> CategoryMap:
    """Categories with the class counts of a config's data set, made up (no files read):
    80 things + 53 stuff for COCO presets, 8 + 11 for Cityscapes, otherwise the synthetic data's
    4 + 5. The choice goes by the preset name (``config.name``)."""
    name = getattr(config, "name", "") or ""
    if "cityscapes" in name:
        things, stuff = 8, 11
    elif "coco" in name:
        things, stuff = 80, 53
    else:
        return CategoryMap.from_coco(SYNTHETIC_CATEGORIES)
    return CategoryMap.from_coco(
        [{"id": i + 1, "name": f"thing{i}", "isthing": 1} for i in range(things)]
        + [{"id": 1000 + i, "name": f"stuff{i}", "isthing": 0} for i in range(stuff)])
