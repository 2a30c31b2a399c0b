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
    """Serve until SIGINT or SIGTERM; port 0: any free one. Prints its address once it listens."""
    import socket

    import uvicorn

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = build(settings)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", server_header=False))
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"gateway at http://{shown}:{bound}/ (API docs at http://{shown}:{bound}/docs)", flush=True)
    server.run(sockets=[sock])
    return 0
