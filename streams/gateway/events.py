"""The firm's notifications over HTTP: its live event stream and its webhook deliveries."""

import asyncio
from typing import Annotated

from fastapi import FastAPI, Query
from fastapi.responses import StreamingResponse
from sqlmodel import Session, col, select

from models.store.tables import WebhookDelivery

from .views import DeliveryList, DeliveryView

__all__ = ["notification_routes"]

KEEP_ALIVE_S = 15.0


def notification_routes(app: FastAPI, gateway, Who) -> None:  # noqa: N803 — a type
    @app.get(
        "/v1/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
        summary="Your decisions and status changes as they happen (server-sent events)",
    )
    async def events(who: Who) -> StreamingResponse:
        """`event: decision` or `event: status`, `data:` {event_id, type, shipment_id (yours), pass_id,
        data}. Only events after you connect: read GET /v1/requests for the state first."""
        queue = gateway.hub.open(who.firm_id)

        async def stream():
            try:
                await gateway.hub.ready.wait()  # the feed at the end of every partition: nothing missed from here
                yield b": connected\n\n"
                while True:
                    try:
                        envelope = await asyncio.wait_for(queue.get(), KEEP_ALIVE_S)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    if envelope is None:  # fell too far behind: the page reconnects
                        return
                    head = f"id: {envelope.event_id}\nevent: {envelope.kind}\ndata: ".encode()
                    yield head + envelope.body() + b"\n\n"
            finally:
                gateway.hub.close(who.firm_id, queue)

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    @app.get("/v1/webhook/deliveries", response_model=DeliveryList, summary="Your webhook's deliveries, newest first")
    def deliveries(who: Who, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> DeliveryList:
        with Session(gateway.engine) as s:
            q = (
                select(WebhookDelivery)
                .where(WebhookDelivery.firm_id == who.firm_id)
                .order_by(col(WebhookDelivery.id).desc())
                .limit(limit)
            )
            return DeliveryList(deliveries=[DeliveryView.model_validate(d, from_attributes=True) for d in s.exec(q)])
