"""The firms' gateway under load: requests/s from HTTP to decisions, beside the Kafka route, and the
gateway's latency to its 202.

Each round, on fresh topics, one worker decides the same workload fed two ways:
- the **Kafka route**: the requests already on the firms' topic when the worker starts (the
  bench's `pipeline_run`: what the worker can decide);
- the **gateway route**: `greenchannel gateway` in front of the worker, `CONCURRENCY` clients
  POSTing the requests as fast as the gateway answers (closed loop), each timed to its 202.
Throughput counts decisions from the first to the last decision's record time. The requests the
gateway itself refuses (the workload's malformed ones, and driver ID numbers that cannot be bound)
are left out of both routes, so both decide the same requests.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import UTC, datetime

import aiohttp
import orjson
from sqlmodel import Session

from models.store import firms as rows
from models.store.db import init_db, make_engine
from streams.handlers import Topics
from streams.station.web import announced_url

from . import workload
from .harness import run_id, start_process
from .suites import (
    Context,
    _cleanup,
    _collect,
    _PipelineDone,
    _prepare_system,
    percentiles,
    pipeline_run,
    start_workers,
    worker_env,
)

__all__ = ["gateway_runs"]

CONCURRENCY = 32


async def gateway_runs(ctx: Context, requests: int, runs: int) -> dict:
    firms, risks = workload.reference()
    rounds = []
    for n in range(runs):
        batch = [m for m in workload.requests(requests, tag=f"G{n}") if _taken_by_the_gateway(m)]
        kafka = await pipeline_run(ctx, batch, firms, risks)
        gateway = await _gateway_run(ctx, batch, firms, risks)
        rounds.append({"kafka_route_per_s": kafka.rate, **gateway})
        ms = gateway["accepted_ms"]
        ctx.log(
            f"gateway round {n + 1}/{runs}: {gateway['gateway_route_per_s']:,.0f} decisions/s through the gateway, "
            f"{kafka.rate:,.0f} by Kafka; 202 p50 {ms['p50']:.1f} ms, p99 {ms['p99']:.1f} ms"
        )
    return {
        "requests": len(batch),
        "concurrency": CONCURRENCY,
        "rounds": rounds,
        "gateway_route_per_s": statistics.median(r["gateway_route_per_s"] for r in rounds),
        "kafka_route_per_s": statistics.median(r["kafka_route_per_s"] for r in rounds),
        "ratio": statistics.median(r["gateway_route_per_s"] / r["kafka_route_per_s"] for r in rounds),
        "accepted_p50_ms": statistics.median(r["accepted_ms"]["p50"] for r in rounds),
        "accepted_p99_ms": statistics.median(r["accepted_ms"]["p99"] for r in rounds),
    }


def _taken_by_the_gateway(m) -> bool:
    """Would the gateway take this request (202)? Its own checks, in process: both routes then
    decide the same requests (the workload's malformed ones and unbindable driver IDs are
    refused by the gateway itself)."""
    import copy

    from streams.firms import bind_driver, schema_fields
    from streams.gateway.requests import RequestRefused, read_client_request

    try:
        body = read_client_request(m.value, "bench").body
    except RequestRefused:
        return False
    return not schema_fields(body) and bind_driver(copy.deepcopy(body)) is None


async def _gateway_run(ctx: Context, batch, firms, risks) -> dict:
    rid = run_id()
    prefix = f"bench-{rid}."
    topics = Topics.with_prefix(prefix)
    await _prepare_system(ctx, topics, firms, risks)
    env = worker_env(ctx, rid, prefix)
    key = _firm(env["GC_DATABASE_URL"], [orjson.loads(m.value) for m in batch])
    procs = start_workers(ctx, env, rid, 1)
    gateway = start_process(["-m", "streams.cli", "gateway", "--port", "0"], env, ctx.out_dir / rid / "gateway.log")
    procs.append(gateway)
    try:
        url = await asyncio.to_thread(announced_url, gateway.log_path, gateway.alive, 60, prefix="gateway at ")
        posting = asyncio.create_task(_post_all(url, key, batch))
        pipeline_done = _PipelineDone(len(batch), topics)

        def done(stamps) -> bool:
            if posting.done() and posting.exception() is not None:
                raise posting.exception()  # a client stopped: no point waiting for its requests
            return pipeline_done(stamps)

        outputs = [topics.decisions, topics.deadletter, topics.status]
        stamps, _ = await _collect(ctx, outputs, procs, done, pipeline_done.kind)
        accepted_ms, wall = await posting
    finally:
        for p in procs:
            p.stop()
    await _cleanup(ctx, prefix, f"bench-{rid}")
    decided = sorted(s.timestamp_ms for s in stamps if s.topic == topics.decisions)
    span = (decided[-1] - decided[0]) / 1000 if len(decided) > 1 else float("nan")
    return {
        "gateway_route_per_s": len(decided) / span,
        "accepted_per_s": len(batch) / wall,
        "accepted_ms": {k: v for k, v in percentiles(accepted_ms).items()},
    }


def _firm(database_url: str, bodies: list[dict]) -> str:
    """A firm acting for every shipper of the workload, with no practical rate limit: its key."""
    engine = make_engine(database_url)
    init_db(engine)
    now = datetime.now(UTC)
    shippers = sorted({b["shipper"]["credit_code"] for b in bodies})
    with Session(engine) as s:
        rows.create_firm(s, firm_id="bench", name="bench", credit_code=shippers[0], acts_for=shippers,
                         requests_per_minute=10**9, now=now)  # fmt: skip
        key = rows.create_key(s, firm_id="bench", now=now)
    engine.dispose()
    return key.text


async def _post_all(url: str, key: str, batch) -> tuple[list[float], float]:
    """POST every request, CONCURRENCY at a time; the milliseconds to each 202, and the wall time."""
    queue = list(reversed(batch))
    times: list[float] = []
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    async def client(http: aiohttp.ClientSession) -> None:
        while queue:
            m = queue.pop()
            began = time.perf_counter()
            async with http.post(f"{url}v1/requests", data=m.value, headers=headers) as r:
                body = await r.read()
                if r.status != 202:
                    raise RuntimeError(f"the gateway answered {r.status}: {body[:300]!r}")
            times.append((time.perf_counter() - began) * 1000)

    began = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as http:
        await asyncio.gather(*(client(http) for _ in range(CONCURRENCY)))
    return times, time.perf_counter() - began
