"""The SpatialFlow network: backbone, sub-networks with spatial flows, heads."""

from spatialflow.model.spatialflow import SpatialFlow, build_model

__all__ = ["SpatialFlow", "build_model"]
