"""Routing for green-channel shipments: the offline gazetteer, the region graph and the planner."""

from .gazetteer import Gazetteer, OfflineGeocoder, Place
from .graph import RegionGraph
from .planner import Checkpoint, Route, RoutePlanner

__all__ = ["Place", "Gazetteer", "OfflineGeocoder", "RegionGraph", "Checkpoint", "Route", "RoutePlanner"]
