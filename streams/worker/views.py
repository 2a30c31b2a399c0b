"""The worker's web views: a pass's live state, its metrics, its signing keyring, its checkpoints."""

from __future__ import annotations

from datetime import UTC, datetime

import faust
import orjson

from models.stored import load_pass

from ..metrics import CONTENT_TYPE, render
from .runtime import Runtime

__all__ = ["register_views"]


def register_views(app: faust.App, runtime: Runtime) -> None:
    """Every view of the worker's web server."""
    register_pass_view(app, runtime)
    register_metrics_view(app, runtime)
    register_keys_view(app, runtime)
    register_checkpoints_view(app, runtime)


def register_pass_view(app: faust.App, runtime: Runtime) -> None:
    passes = runtime.tables.passes

    @app.page("/passes/{pass_id}/")
    @app.table_route(table=passes.table, match_info="pass_id")
    async def pass_view(web, request, pass_id: str):
        """A pass's live state, answered by the worker that owns its partition."""
        raw = passes.get(pass_id)
        if raw is None:
            return web.json({"error": f"no pass {pass_id}"}, status=404)
        return web.json(orjson.loads(load_pass(raw).to_json()))  # its answers are beside it, not in it


def register_metrics_view(app: faust.App, runtime: Runtime) -> None:
    meter = runtime.meter

    @app.page("/metrics")
    async def metrics_view(web, request):
        """The worker's series in the Prometheus text format."""
        return web.bytes(render(meter.registry), content_type=CONTENT_TYPE)


def register_keys_view(app: faust.App, runtime: Runtime) -> None:
    pipeline = runtime.pipeline

    @app.page("/keys/")
    async def keys_view(web, request):
        """This worker's signing keyring now: each key's times and status, which one signs, and
        whether its private key is in GC_KEY_DIR (a worker without it waits: `runtime.signed`)."""
        return web.json({"keys": pipeline.decider.keyring.rows(datetime.now(UTC))})


def register_checkpoints_view(app: faust.App, runtime: Runtime) -> None:
    pipeline = runtime.pipeline

    @app.page("/checkpoints/")
    async def checkpoints_view(web, request):
        """Live waiting time at each checkpoint this worker tracks."""
        return web.json({"checkpoints": pipeline.board.snapshot()})
