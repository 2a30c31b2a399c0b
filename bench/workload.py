"""What the benchmarks send: realistic shipment requests and the reference data they need.

The request mix is `streams.dev.simulator.Scenario`'s (P0-P3 classes, Chinese addresses, adcodes
and coordinates, about 10% refused) with 1% malformed inputs, as in `make demo`. The
reference data is the demo's opening state: the key-enterprise list, Wuhan high risk and
Huangshi, Shenzhen, Hangzhou medium, so some routes have to go around Wuhan.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

import orjson

from models.records import format_time, parse_time
from streams.dev.simulator import Scenario

__all__ = ["Message", "requests", "request_stream", "approvable", "reference", "projection_log", "OPENING_RISK"]

OPENING_RISK = (("4201", "high"), ("4202", "medium"), ("4403", "medium"), ("3301", "medium"))


@dataclass(frozen=True, slots=True)
class Message:
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


def requests(count: int, *, seed: int = 2020, start: int = 0, tag: str = "") -> list[Message]:
    """Requests number start..start+count-1 of a seeded scenario; every 100th is malformed.

    `tag` goes into the shipment ids so two batches of one scenario never share an id.
    """
    return list(itertools.islice(request_stream(seed=seed, start=start, tag=tag), count))


def request_stream(
    *, seed: int = 2020, start: int = 0, tag: str = "", submitted: Callable[[int], datetime] | None = None
) -> Iterator[Message]:
    """`requests` without an end: number start, start+1, ... of one scenario. `submitted(n)`, when
    given, replaces request n's `submitted_at` (the scenario's is its start + n minutes) and moves its
    departure with it (a departure more than 366 days after the submission is refused)."""
    scenario = Scenario(seed=seed)
    for n in itertools.count(start):
        if n % 100 == 99:
            yield Message(f"BAD-{seed}{tag}-{n:07d}".encode(), scenario.malformed(n))
            continue
        body = scenario.request(n)
        if tag:
            body["shipment_id"] = f"SHP-{seed}{tag}-{n:07d}"
        if submitted is not None:  # the departure keeps its distance to the submission (2 h)
            shift = submitted(n) - parse_time(body["submitted_at"])
            for name in ("submitted_at", "departure_at"):
                body[name] = format_time(parse_time(body[name]) + shift)
        yield Message(body["shipment_id"].encode(), orjson.dumps(body))


def approvable(count: int, *, seed: int = 2024, tag: str = "P") -> list[Message]:
    """`count` well-formed requests that the decision core approves, shipment ids tagged `tag`:
    probes a worker has to answer with a pass (of another seed than the bench's batches)."""
    candidates = requests(4 * count + 10, seed=seed, tag=tag)
    picked = [m for n, m in enumerate(candidates) if not m.key.startswith(b"BAD-") and _decided(n, m)[1]["pass"]]
    if len(picked) < count:
        raise ValueError(f"only {len(picked)} of {len(candidates)} requests approved, {count} wanted")
    return picked[:count]


def reference(seed: int = 2020) -> tuple[list[Message], list[Message]]:
    """(enterprise entries, risk levels) to put on their topics before a worker starts."""
    scenario = Scenario(seed=seed)
    firms = [Message(e["credit_code"].encode(), orjson.dumps(e)) for e in scenario.enterprise_entries()]
    opening = format_time(scenario.start - timedelta(hours=1))
    risks = [
        Message(a.encode(), orjson.dumps({"adcode": a, "level": lv, "effective_at": opening})) for a, lv in OPENING_RISK
    ]
    return firms, risks


def projection_log(count: int, *, seed: int = 2020) -> list[tuple[str, Message]]:
    """`count` records ("decisions" or "statuses", message) as a worker publishes them, for the projector.

    A decision for each well-formed request of `requests(count // 2)`, from the decision core (the
    bench's own signing key and reference data); then statuses of the approved passes, one per pass
    in turn: `issued`, then arrival and departure (with a dwell) at each checkpoint of its route.
    """
    decisions = [_decided(n, m) for n, m in enumerate(requests(count // 2, seed=seed)) if not m.key.startswith(b"BAD-")]
    out = [("decisions", m) for m, _ in decisions]
    queues = [_statuses(d) for _, d in decisions if d["pass"]]
    depth = 0
    while len(out) < count and any(depth < len(q) for q in queues):
        out += [("statuses", q[depth]) for q in queues if depth < len(q)][: count - len(out)]
        depth += 1
    return out


@lru_cache(maxsize=1)
def _decider():
    """The bench's decision core (fixed signing key, the workload's reference data)."""
    from .suites import build_bench_pipeline

    return build_bench_pipeline().decider


def _decided(n: int, request: Message) -> tuple[Message, dict]:
    from models.records import canonical, load_object, parse_request
    from streams.handlers import cloudevent_headers

    parsed, errors = parse_request(load_object(request.value))
    decision = (
        _decider()
        .decide(parsed, errors, decided_at=parsed.submitted_at, allocate=lambda issuer: f"{issuer}{n:06d}")
        .message
    )
    sid = decision["shipment_id"]
    headers = cloudevent_headers(
        f"decision/{sid}", "cn.greenchannel.pass.decision", "/greenchannel/decider", decision["decided_at"]
    )
    return Message(sid.encode(), canonical(decision), headers), decision


def _statuses(decision: dict) -> list[Message]:
    """The statuses of a pass driven along its route, as the tracker publishes them."""
    the_pass = decision["pass"]
    sid = decision["shipment_id"]
    out = [_status(the_pass["pass_id"], sid, "issued", decision["decided_at"], f"decision:{sid}")]
    for i, cp in enumerate(the_pass["route"]["checkpoints"]):
        arrived, left = parse_time(cp["eta"]), parse_time(cp["eta"]) + timedelta(minutes=5 + 3 * i)
        out.append(
            _status(
                the_pass["pass_id"], sid, "at_checkpoint", format_time(arrived), f"scan:{sid}-{i}a", cp["checkpoint_id"]
            )
        )
        out.append(
            _status(
                the_pass["pass_id"],
                sid,
                "in_transit",
                format_time(left),
                f"scan:{sid}-{i}d",
                cp["checkpoint_id"],
                (left - arrived).total_seconds(),
            )
        )
    return out


def _status(
    pass_id: str, sid: str, status: str, at: str, cause: str, checkpoint: str | None = None, dwell: float | None = None
) -> Message:
    import hashlib

    from models.records import canonical
    from streams.handlers import cloudevent_headers

    body = {
        "pass_id": pass_id,
        "shipment_id": sid,
        "status": status,
        "at": at,
        "checkpoint_id": checkpoint,
        "reason": None,
        "dwell_seconds": dwell,
        "dwell_exceeded": bool(dwell and dwell > 900),
        "cause": cause,
    }
    ce_id = f"status/{pass_id}/{hashlib.sha1(cause.encode()).hexdigest()[:16]}"
    return Message(
        pass_id.encode(),
        canonical(body),
        cloudevent_headers(ce_id, "cn.greenchannel.pass.status", "/greenchannel/tracker", at),
    )
