"""The composition root: the one place the decision core is wired.

The worker, the audit (replay), the bench and the tests all build their `Pipeline` here, so
that what the audit replays is what the worker ran. Nothing here imports Faust or Kafka.
"""

from __future__ import annotations

from datetime import timedelta

from models.decide import Decider
from models.keyring import Keyring, Signer
from models.policy import Catalog, load_catalog
from models.reference import EnterpriseBook, RiskBook
from models.tracking import Tracker
from routing import Gazetteer, RegionGraph, RoutePlanner

from .handlers import Pipeline, Topics
from .settings import Settings

__all__ = ["build_decider", "build_pipeline", "with_fresh_reference"]


def build_decider(
    settings: Settings, *, signer: Signer | Keyring | None = None, catalog: Catalog | None = None
) -> Decider:
    """The decider with empty risk levels and key-enterprise list (the reference topics fill them).
    `signer` defaults to the key folder's keyring (`GC_KEY_DIR`)."""
    catalog = catalog or load_catalog(settings.catalog)
    graph = RegionGraph.default()
    if signer is None:
        from .keys import KeyDir, pinned_root  # reads (and on first run writes) the key folder

        signer = KeyDir(settings.keys_path).seeded(*pinned_root(settings, create=True))
    return Decider(
        catalog=catalog,
        gazetteer=Gazetteer.default(),
        graph=graph,
        planner=RoutePlanner(graph, speed_kmh=float(catalog.rules.get("speed_kmh", 60))),
        risk=RiskBook(),
        enterprises=EnterpriseBook(),
        signer=signer,
        geocoder=_geocoder(settings),
    )


def build_pipeline(
    settings: Settings, *, signer: Signer | Keyring | None = None, keys=None, partitions: int | None = None
) -> Pipeline:
    """The decision core with its catalog, routing and signing keyring (which key signs when, the
    keys topic says). `keys` verify pass tokens at scans (default: the keyring's public keys)."""
    decider = build_decider(settings, signer=signer)
    return Pipeline(
        decider,
        Tracker(decider, keys),
        Topics.with_prefix(settings.topic_prefix),
        partitions=partitions or settings.partitions,
        retention=timedelta(days=settings.pass_retention_days),
    )


def with_fresh_reference(pipeline: Pipeline) -> Pipeline:
    """The same core (catalog, gazetteer, routes, tracker) with empty reference books and a keyring
    that signs as any of its keys ever did: the audit's scratch pipeline for deciding a request
    again with only the reference data known at some earlier time."""
    d = pipeline.decider
    decider = Decider(
        catalog=d.catalog,
        gazetteer=d.gazetteer,
        graph=d.graph,
        planner=d.planner,
        risk=RiskBook(),
        enterprises=EnterpriseBook(),
        signer=d.keyring.since_ever(),
        geocoder=d.geocoder,
    )
    return Pipeline(
        decider, pipeline.tracker, pipeline.topics, partitions=pipeline.partitions, retention=pipeline.retention
    )


def _geocoder(settings: Settings):
    if settings.geocoder == "offline":
        return None
    from geopy.geocoders import get_geocoder_for_service

    return get_geocoder_for_service(settings.geocoder)(user_agent=settings.geocoder_user_agent)
