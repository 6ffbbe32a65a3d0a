"""Panoptic overlays for notebooks and figures. The array rendering lives in
:mod:`spatialflow.render` (the CLI writes its PNGs with it); figures, legends and widgets built
on it belong here."""

from spatialflow.render import (boundaries, panoptic_overlay, save_png, segment_colors,
                                side_by_side)

__all__ = ["boundaries", "panoptic_overlay", "save_png", "segment_colors", "side_by_side"]
