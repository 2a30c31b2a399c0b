"""The gateway's composition root: database, Kafka publisher, the app, uvicorn."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

__all__ = ["build", "serve"]


def build(settings):
    """The gateway app for these settings, its publisher started and stopped with it."""
    from models.store.db import init_db, make_engine

    from ..handlers import Topics
    from .app import Gateway, create_gateway
    from .publisher import KafkaPublisher

    engine = make_engine(settings.database_url)
    init_db(engine)
    publisher = KafkaPublisher(settings.connection, Topics.with_prefix(settings.topic_prefix).gateway_requests)

    @asynccontextmanager
    async def lifespan(app):
        await publisher.start()
        try:
            yield
        finally:
            await publisher.stop()

    return create_gateway(Gateway(engine=engine, publisher=publisher), lifespan=lifespan)


def serve(settings, *, host: str, port: int) -> int:
    import uvicorn

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = build(settings)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", server_header=False)
    server = uvicorn.Server(config)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"gateway at http://{shown}:{port}/ (API docs at http://{shown}:{port}/docs)", flush=True)
    server.run()
    return 0
