"""`greenchannel checkpoint`: a station for one checkpoint or a few, that keeps working offline.

The station reads the pass decisions, status events and the signing keyring (`gc.pass.keys`: the
public keys, with their withdrawals) in a consumer group of its own and keeps, in a local SQLite
file, the passes whose route crosses its checkpoints and every key it was given. It verifies a pass with
the core's one rule (`models.passes.scan_refusal`, the tracker's own) against that store and the
cached public keys: no broker needed. Every scan goes to a local outbox first (`Store.record`),
then a forwarder publishes the outbox in order, each scan with a stable scan_id, marked sent only
once the broker acknowledged it: with the broker gone the station keeps checking and recording,
and a station restarted mid-shift finds its queue where it left it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from models.keyring import ACTIVE, KeyEntry, Keyring, parse_key_entry
from models.passes import (
    REFUSALS,
    InvalidToken,
    PassTerms,
    claimed_pass_id,
    scan_refusal,
    unverified_claims,
    verify_token,
)
from models.policy import CLASS_NAMES
from models.records import CheckpointScan, format_time, normalise_plate, parse_time

from .handlers import Topics, cloudevent_headers
from .keys import public_pem
from .settings import Settings
from .web import Hub

__all__ = ["Store", "Link", "Station", "check", "keyring_of", "station_path"]

log = logging.getLogger("greenchannel.station")

ARRIVALS_AHEAD = timedelta(hours=12)  # "expected arrivals": due within this
ARRIVALS_LATE = timedelta(hours=2)  # and those this late, not yet seen here

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pass (
    pass_id TEXT PRIMARY KEY, plate TEXT NOT NULL, priority TEXT, toll_exempt INTEGER,
    valid_from TEXT NOT NULL, valid_until TEXT NOT NULL, trip TEXT, route TEXT NOT NULL, token TEXT,
    origin TEXT, destination TEXT, status TEXT NOT NULL, status_at TEXT, reason TEXT, last_checkpoint TEXT);
CREATE INDEX IF NOT EXISTS pass_plate ON pass (plate);
CREATE TABLE IF NOT EXISTS stop (
    pass_id TEXT NOT NULL, position INTEGER NOT NULL, checkpoint_id TEXT NOT NULL, name TEXT, eta TEXT NOT NULL,
    eta_s REAL NOT NULL, PRIMARY KEY (pass_id, position));
CREATE INDEX IF NOT EXISTS stop_due ON stop (checkpoint_id, eta_s);
CREATE INDEX IF NOT EXISTS stop_of_pass ON stop (pass_id, checkpoint_id);
CREATE TABLE IF NOT EXISTS key (kid TEXT PRIMARY KEY, pem BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS key_status (
    kid TEXT NOT NULL, status TEXT NOT NULL, effective_at TEXT NOT NULL, PRIMARY KEY (kid, status, effective_at));
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, scan_id TEXT UNIQUE NOT NULL, pass_id TEXT NOT NULL,
    checkpoint_id TEXT NOT NULL, kind TEXT NOT NULL, plate TEXT NOT NULL, scanned_at TEXT NOT NULL,
    body BLOB NOT NULL, sent_at TEXT, answer TEXT);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (sent_at, seq);
CREATE INDEX IF NOT EXISTS outbox_of_pass ON outbox (pass_id, checkpoint_id, seq);
CREATE TABLE IF NOT EXISTS station (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def station_path(data_dir: Path, checkpoint_ids: list[str]) -> Path:
    return Path(data_dir) / "stations" / f"{'+'.join(sorted(checkpoint_ids))}.db"


def _route_ids(route: dict) -> list[str]:
    return [c["checkpoint_id"] for c in route["checkpoints"]]


class Store:
    """The station's SQLite file: passes crossing its checkpoints, cached keys, the scan outbox."""

    def __init__(self, path: Path, checkpoint_ids: list[str], names=None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a recorded scan survives the machine too
        self.db.executescript(_SCHEMA)
        self.ids = list(checkpoint_ids)
        self._names = names or (lambda adcode: adcode)
        # This station's own id, made once: its consumer group, so that a restart resumes where it
        # was and a second station at the same checkpoint (another lane) still reads everything.
        self.db.execute("INSERT OR IGNORE INTO station VALUES ('uid', ?)", (uuid.uuid4().hex[:12],))
        self.uid = self.db.execute("SELECT value FROM station WHERE name = 'uid'").fetchone()[0]
        for r in self.db.execute(
            "SELECT pass_id, route FROM pass WHERE pass_id NOT IN (SELECT pass_id FROM stop)"
        ).fetchall():  # a file kept before stops were
            self._stops(r["pass_id"], orjson.loads(r["route"]))

    def crosses(self, route: dict) -> bool:
        return any(c in self.ids for c in _route_ids(route))

    # --- what the broker tells the station ------------------------------------------------------
    def take_decision(self, d: dict) -> bool:
        p = d.get("pass")
        if d.get("decision") != "approved" or not p or not self.crosses(p["route"]):
            return False
        if self.db.execute(
            "INSERT INTO pass VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,NULL) ON CONFLICT (pass_id) DO NOTHING",
            (
                p["pass_id"],
                p["plate"],
                p.get("priority"),
                int(bool(p.get("toll_exempt"))),
                p["valid_from"],
                p["valid_until"],
                p.get("trip"),
                orjson.dumps(p["route"]).decode(),
                p["token"],
                self._place(p["route"]["adcodes"][0]),
                p["route"]["checkpoints"][-1]["name"],
                "issued",
                None,
                None,
            ),
        ).rowcount:
            self._stops(p["pass_id"], p["route"])
        return True

    def take_status(self, e: dict) -> bool:
        """The pass's status as the tracker last said; a reroute brings its new route and token
        (and a pass rerouted onto this station, known from its token's claims)."""
        cause = e.get("cause") or ""
        if cause.startswith("scan:"):
            self.db.execute("UPDATE outbox SET answer = ? WHERE scan_id = ?", (orjson.dumps(e).decode(), cause[5:]))
        if e.get("route") and e.get("token"):
            self._take_route(e)
        changed = self.db.execute(
            "UPDATE pass SET status = ?, status_at = ?, reason = ?, last_checkpoint = coalesce(?, last_checkpoint)"
            " WHERE pass_id = ?",
            (e["status"], e.get("at"), e.get("reason"), e.get("checkpoint_id"), e["pass_id"]),
        ).rowcount
        return bool(changed) or cause.startswith("scan:")

    def _take_route(self, e: dict) -> None:
        route = orjson.dumps(e["route"]).decode()
        if self.db.execute(
            "UPDATE pass SET route = ?, token = ? WHERE pass_id = ?", (route, e["token"], e["pass_id"])
        ).rowcount:
            self._stops(e["pass_id"], e["route"])
            return
        if not self.crosses(e["route"]):
            return
        claims = unverified_claims(e["token"])
        self.db.execute(
            "INSERT INTO pass (pass_id, plate, valid_from, valid_until, route, token, origin, destination,"
            " status) VALUES (?,?,?,?,?,?,?,?,?)",
            (
                e["pass_id"],
                claims["plate"],
                claims["nbf"],
                claims["exp"],
                route,
                e["token"],
                self._place(e["route"]["adcodes"][0]),
                e["route"]["checkpoints"][-1]["name"],
                e["status"],
            ),
        )
        self._stops(e["pass_id"], e["route"])

    def _stops(self, pass_id: str, route: dict) -> None:
        """The pass's checkpoints in route order with their ETAs: what "expected arrivals" reads by
        ETA, and where the pass's last checkpoint lies on its route (derived from the route, kept
        with it)."""
        self.db.execute("DELETE FROM stop WHERE pass_id = ?", (pass_id,))
        self.db.executemany(
            "INSERT INTO stop VALUES (?,?,?,?,?,?)",
            [
                (pass_id, n, c["checkpoint_id"], c.get("name"), c["eta"], parse_time(c["eta"]).timestamp())
                for n, c in enumerate(route["checkpoints"])
            ],
        )

    def _place(self, adcode: str) -> str:
        try:
            return self._names(adcode)
        except KeyError:
            return adcode

    # --- what the station reads ------------------------------------------------------------------
    def row(self, pass_id: str | None) -> dict | None:
        found = self.db.execute("SELECT * FROM pass WHERE pass_id = ?", (pass_id,)).fetchone()
        if found is None:
            return None
        row = dict(found)
        row["route"] = orjson.loads(row["route"])
        row["toll_exempt"] = bool(row["toll_exempt"])
        return row

    def by_plate(self, plate: str) -> str | None:
        """The pass of `plate` that runs longest (a vehicle has one pass at a time)."""
        found = self.db.execute(
            "SELECT pass_id FROM pass WHERE plate = ? ORDER BY valid_until DESC LIMIT 1", (plate,)
        ).fetchone()
        return found and found["pass_id"]

    def expected(self, now: datetime) -> list[dict]:
        """Passes due at one of the station's checkpoints from ARRIVALS_LATE ago to ARRIVALS_AHEAD on,
        not ended or suspended, and neither scanned there by the station nor seen there or beyond
        by the system, by ETA: read through the ETA index, whatever the store holds."""
        marks = ",".join("?" * len(self.ids))
        rows = self.db.execute(
            f"SELECT p.pass_id, p.plate, p.priority, p.toll_exempt, p.origin, p.destination, s.checkpoint_id, s.eta,"
            f" p.status FROM stop s JOIN pass p ON p.pass_id = s.pass_id"
            f" WHERE s.checkpoint_id IN ({marks}) AND s.eta_s BETWEEN ? AND ?"
            f" AND p.status NOT IN ('delivered','revoked','expired','suspended')"
            f" AND s.position > coalesce((SELECT min(r.position) FROM stop r WHERE r.pass_id = p.pass_id"
            f"                            AND r.checkpoint_id = p.last_checkpoint), -1)"
            f" AND NOT EXISTS (SELECT 1 FROM outbox o"
            f" WHERE o.pass_id = s.pass_id AND o.checkpoint_id = s.checkpoint_id)"
            f" ORDER BY s.eta_s, s.pass_id",
            (*self.ids, (now - ARRIVALS_LATE).timestamp(), (now + ARRIVALS_AHEAD).timestamp()),
        )
        return [{**dict(r), "toll_exempt": bool(r["toll_exempt"])} for r in rows]

    def checkpoint_names(self) -> dict[str, str]:
        names = {i: i for i in self.ids}
        marks = ",".join("?" * len(self.ids))
        for r in self.db.execute(
            f"SELECT checkpoint_id, max(name) name FROM stop WHERE checkpoint_id IN ({marks})"
            f" AND name IS NOT NULL GROUP BY checkpoint_id",
            self.ids,
        ):
            names[r["checkpoint_id"]] = r["name"]
        return names

    # --- keys ----------------------------------------------------------------------------------------
    def cache_keys(self, ring: dict) -> None:
        self.db.executemany("INSERT OR IGNORE INTO key VALUES (?, ?)", [(k, public_pem(v)) for k, v in ring.items()])

    def take_key(self, record: dict, timestamp_ms: int | None = None) -> KeyEntry:
        """A record of the keys topic (a key active, or withdrawn, from a time), read as the worker
        reads it (`models.keyring.parse_key_entry`: ValueError unless its kid is its key's own), cached."""
        entry = parse_key_entry(record, timestamp_ms=timestamp_ms)
        self.cache_keys({entry.kid: entry.public_key})
        since = "" if entry.effective_at is None else format_time(entry.effective_at)  # "": since ever
        self.db.execute("INSERT OR IGNORE INTO key_status VALUES (?, ?, ?)", (entry.kid, entry.status, since))
        return entry

    def keyring(self) -> Keyring:
        """Every key cached (a key given as a file, or taken before withdrawals were recorded: active
        since ever), with each status the keys topic gave it."""
        from cryptography.hazmat.primitives import serialization

        ring = Keyring()
        for r in self.db.execute("SELECT * FROM key"):
            ring.add(r["kid"], serialization.load_pem_public_key(r["pem"]), ACTIVE)
        for r in self.db.execute("SELECT * FROM key_status"):
            ring.add(
                r["kid"],
                ring.public_keys[r["kid"]],
                r["status"],
                parse_time(r["effective_at"]) if r["effective_at"] else None,
            )
        return ring

    # --- the outbox ----------------------------------------------------------------------------------
    def record(self, scan: dict) -> None:
        self.db.execute(
            "INSERT INTO outbox (scan_id, pass_id, checkpoint_id, kind, plate, scanned_at, body)"
            " VALUES (?,?,?,?,?,?,?)",
            (
                scan["scan_id"],
                scan["pass_id"],
                scan["checkpoint_id"],
                scan["kind"],
                scan["plate"],
                scan["scanned_at"],
                orjson.dumps(scan),
            ),
        )

    def next_unsent(self) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM outbox WHERE sent_at IS NULL ORDER BY seq LIMIT 1").fetchone()

    def mark_sent(self, seq: int, at: str) -> None:
        self.db.execute("UPDATE outbox SET sent_at = ? WHERE seq = ?", (at, seq))

    def queued(self) -> int:
        return self.db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]

    def present(self) -> list[dict]:
        """Vehicles whose last scan here was an arrival: at the checkpoint now."""
        rows = self.db.execute(
            "SELECT o.* FROM outbox o JOIN (SELECT max(seq) seq FROM outbox GROUP BY pass_id, checkpoint_id) m"
            " ON o.seq = m.seq WHERE o.kind = 'arrival' ORDER BY o.seq"
        )
        return [{k: r[k] for k in ("pass_id", "plate", "checkpoint_id", "scanned_at")} for r in rows]

    def arrival(self, pass_id: str, checkpoint_id: str) -> sqlite3.Row | None:
        return self.db.execute(
            "SELECT * FROM outbox WHERE pass_id = ? AND checkpoint_id = ? ORDER BY seq DESC LIMIT 1",
            (pass_id, checkpoint_id),
        ).fetchone()

    def recent(self, limit: int = 12) -> list[dict]:
        rows = self.db.execute("SELECT * FROM outbox ORDER BY seq DESC LIMIT ?", (limit,))
        return [
            {
                "scan_id": r["scan_id"],
                "pass_id": r["pass_id"],
                "plate": r["plate"],
                "kind": r["kind"],
                "checkpoint_id": r["checkpoint_id"],
                "scanned_at": r["scanned_at"],
                "sent": r["sent_at"] is not None,
                "answer": r["answer"] and orjson.loads(r["answer"]),
            }
            for r in rows
        ]

    def transaction(self):
        return _Transaction(self.db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *_):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


# --- the check: the core's verification over the station's store -------------------------------------


def _claims_with(keys):
    def claims(token: str) -> tuple:
        c = verify_token(token, keys)
        return c.get("pid"), c.get("plate"), c.get("kid")

    return claims


def keyring_of(keys: Keyring | dict) -> Keyring:
    """A ring as given, or one of public keys by kid (active since ever, none withdrawn)."""
    return keys if isinstance(keys, Keyring) else Keyring.of(keys)


def check(
    store: Store,
    keys: Keyring | dict,
    *,
    checkpoint_id: str,
    at: datetime,
    token: str | None = None,
    plate: str | None = None,
) -> dict:
    """GREEN or GREY for the vehicle `plate` showing `token` (or, with no token, the pass of its
    plate) at `checkpoint_id`: `scan_refusal`, the tracker's rule, over the store's last status and
    the keyring (a token of a key withdrawn by `at` is refused, `key_withdrawn`)."""
    ring = keyring_of(keys)
    token = (token or "").strip() or None
    plate = normalise_plate(plate) if plate and plate.strip() else None
    if plate is None and token is None:
        raise ValueError("give a token, a QR photo or a plate")
    # The pass of the vehicle: the one its plate holds here, else the one the token names.
    pass_id = (plate and store.by_plate(plate)) or claimed_pass_id(token)
    if plate is None:  # the token alone: the plate it claims is the one to compare (shown to the officer)
        plate = _claimed_plate(token)
    row = store.row(pass_id)
    terms = _terms(row) if row else _token_terms(token, ring.public_keys)
    scan = CheckpointScan("check", checkpoint_id, pass_id, token, plate or "", "arrival", at)
    reason = scan_refusal(terms, scan, pass_id or "", _claims_with(ring.public_keys), ring.withdrawn)
    return {
        "green": reason is None,
        "reason": reason,
        **_reason_text(reason, row),
        "pass_id": pass_id,
        "plate": plate,
        "token": token,
        "checkpoint_id": checkpoint_id,
        "pass": row and _shown(row, checkpoint_id),
    }


def _terms(row: dict) -> PassTerms:
    return PassTerms(
        row["status"], row["plate"], row["valid_from"], row["valid_until"], tuple(_route_ids(row["route"]))
    )


def _token_terms(token: str | None, keys: dict) -> PassTerms | None:
    """A genuine pass the store does not hold (not crossing here, or decided while offline), on
    its signed claims; no status seen yet. None when there is no genuine token."""
    try:
        claims = verify_token(token, keys) if token else None
    except InvalidToken:
        return None
    return claims and PassTerms("issued", claims["plate"], claims["nbf"], claims["exp"], tuple(claims["cp"]))


def _claimed_plate(token: str) -> str | None:
    try:
        return normalise_plate(unverified_claims(token).get("plate") or "")
    except Exception:
        return None


def _reason_text(reason: str | None, row: dict | None) -> dict:
    if reason is None:
        return {"text_zh": "人、车、证一致，路线经过本站", "text_en": "pass, vehicle and route match"}
    code, _, detail = reason.partition(": ")
    zh, en = REFUSALS.get(code, (code, code))
    if code == "checkpoint_not_on_route" and row and row["status"] == "rerouted":
        zh, en = "通行证已改道，不再经过本检查站", "the pass was rerouted away from this checkpoint"
    return {"text_zh": zh, "text_en": f"{en} ({detail})" if detail else en}


def _shown(row: dict, checkpoint_id: str) -> dict:
    zh, en = CLASS_NAMES.get(row["priority"], ("", ""))
    return {
        "pass_id": row["pass_id"],
        "plate": row["plate"],
        "priority": row["priority"],
        "class_name": f"{zh} {en}".strip(),
        "toll_exempt": row["toll_exempt"],
        "valid_from": row["valid_from"],
        "valid_until": row["valid_until"],
        "trip": row["trip"],
        "status": row["status"],
        "origin": row["origin"],
        "destination": row["destination"],
        "checkpoints": [
            {
                "checkpoint_id": c["checkpoint_id"],
                "name": c["name"],
                "eta": c["eta"],
                "here": c["checkpoint_id"] == checkpoint_id,
            }
            for c in row["route"]["checkpoints"]
        ],
    }


# --- the link to the broker --------------------------------------------------------------------------


@dataclass
class Link:
    """What the page shows of the connection: reachable or not, and why not."""

    online: bool = False
    error: str | None = None
    since: float = field(default_factory=time.time)

    def set(self, online: bool, error: str | None = None) -> bool:
        changed = online != self.online
        if changed:
            self.since = time.time()
        self.online, self.error = online, error
        return changed


class Station:
    """The station process: store, keys, the broker links (consumer, forwarder, probe) and a clock."""

    def __init__(
        self,
        settings: Settings,
        checkpoint_ids: list[str],
        store: Store,
        keys: Keyring | dict,
        *,
        clock_start: datetime | None = None,
        dwell_target: int = 900,
    ) -> None:
        self.settings = settings
        self.ids = checkpoint_ids
        self.store = store
        self.keys = keyring_of(keys)
        self.topics = Topics.with_prefix(settings.topic_prefix)
        self.hub = Hub()
        self.link = Link()
        self.dwell_target = dwell_target
        self._offset = (clock_start - datetime.now(UTC)) if clock_start else timedelta(0)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset

    # --- what the page asks -------------------------------------------------------------------------
    def check(self, checkpoint_id: str, token: str | None, plate: str | None) -> dict:
        return check(
            self.store, self.keys, checkpoint_id=self._here(checkpoint_id), at=self.now(), token=token, plate=plate
        )

    def scan(
        self, kind: str, checkpoint_id: str, pass_id: str, plate: str | None = None, token: str | None = None
    ) -> dict:
        """Record an arrival or departure in the outbox (the forwarder publishes it)."""
        if kind not in ("arrival", "departure"):
            raise ValueError("kind must be arrival or departure")
        checkpoint_id = self._here(checkpoint_id)
        before = self.store.arrival(pass_id, checkpoint_id)
        plate = normalise_plate(plate) if plate else (before["plate"] if before else None)
        if not plate or not pass_id:
            raise ValueError("a scan needs the pass and the plate")
        at = self.now()
        body = {
            "scan_id": f"{checkpoint_id}-{uuid.uuid4().hex[:20]}",
            "checkpoint_id": checkpoint_id,
            "pass_id": pass_id,
            "plate": plate,
            "kind": kind,
            "scanned_at": format_time(at),
        }
        if token:
            body["token"] = token
        self.store.record(body)
        self._wake.set()
        self.publish()
        dwell = None
        if kind == "departure" and before is not None and before["kind"] == "arrival":
            dwell = round((at - parse_time(before["scanned_at"])).total_seconds(), 1)
        return {**body, "dwell_seconds": dwell, "dwell_exceeded": dwell is not None and dwell > self.dwell_target}

    def _here(self, checkpoint_id: str | None) -> str:
        if not checkpoint_id:
            return self.ids[0]
        if checkpoint_id not in self.ids:
            raise ValueError(f"this station is {', '.join(self.ids)}, not {checkpoint_id}")
        return checkpoint_id

    def state(self) -> dict:
        return {
            "checkpoints": self.store.checkpoint_names(),
            "now": format_time(self.now()),
            "online": self.link.online,
            "error": self.link.error,
            "queued": self.store.queued(),
            "dwell_target": self.dwell_target,
            "present": self.store.present(),
            "recent": self.store.recent(),
            "arrivals": self.store.expected(self.now()),
        }

    def publish(self) -> None:
        if self.hub.subscribers:
            self.hub.publish("state", self.state())

    # --- the broker ----------------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(c) for c in (self._consume(), self._forward(), self._probe())]
        for task in self._tasks:
            task.add_done_callback(_fatal)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _started(self, make):
        """A started aiokafka client, retried until the broker answers."""
        while True:
            client = make()
            try:
                await client.start()
                return client
            except KafkaError as exc:
                self._offline(exc)
                await client.stop()
                await asyncio.sleep(1)

    def _offline(self, exc: Exception) -> None:
        if self.link.set(False, f"{type(exc).__name__}: {exc}"):
            self.publish()

    async def _consume(self) -> None:
        s = self.settings
        consumer = await self._started(
            lambda: AIOKafkaConsumer(
                self.topics.decisions,
                self.topics.status,
                self.topics.keys,
                **s.connection.kwargs(),
                group_id=f"{s.app_id}-station-{'+'.join(sorted(self.ids))}-{self.store.uid}",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level=s.isolation_level,
            )
        )
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=2000)
                if not batch:
                    continue
                self._take(batch)
                try:
                    await consumer.commit()
                except KafkaError as exc:  # read again after a restart: the store's writes are idempotent
                    log.warning("offsets not committed: %s", exc)
                self.publish()
        finally:
            await consumer.stop()

    def _take(self, batch: dict) -> None:
        with self.store.transaction():
            for tp, records in batch.items():
                for r in records:
                    try:
                        obj = orjson.loads(r.value)
                        if tp.topic == self.topics.decisions:
                            self.store.take_decision(obj)
                        elif tp.topic == self.topics.keys:
                            self.keys.apply(self.store.take_key(obj, timestamp_ms=r.timestamp))
                        else:
                            self.store.take_status(obj)
                    except (ValueError, KeyError, TypeError, AttributeError, sqlite3.IntegrityError) as exc:
                        log.warning("skipped %s/%s@%s: %r", tp.topic, tp.partition, r.offset, exc)

    async def _forward(self) -> None:
        """Publish the outbox in order, one scan at a time, each marked sent once acknowledged."""
        s = self.settings
        # Idempotence (no duplicate on the producer's own retries) needs a broker with producer ids:
        # Apache Kafka, where the system runs exactly_once; Tansu has none.
        producer = await self._started(
            lambda: AIOKafkaProducer(
                **s.connection.kwargs(),
                acks="all",
                request_timeout_ms=15000,
                enable_idempotence=s.processing_guarantee == "exactly_once",
            )
        )
        try:
            while True:
                item = self.store.next_unsent()
                if item is None:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), 1.0)
                    except TimeoutError:
                        pass
                    continue
                try:
                    await producer.send_and_wait(
                        self.topics.scans, item["body"], key=item["pass_id"].encode(), headers=list(_scan_headers(item))
                    )
                except KafkaError as exc:
                    self._offline(exc)
                    await asyncio.sleep(1)
                    continue
                self.store.mark_sent(item["seq"], format_time(datetime.now(UTC)))
                self.link.set(True)
                self.publish()
        finally:
            await producer.stop()

    async def _probe(self) -> None:
        """Online is: a bootstrap server accepts a connection and the last send did not fail."""
        while True:
            reachable = await _reachable(self.settings.bootstrap)
            if not reachable:
                self._offline(ConnectionError("broker unreachable"))
            elif not self.link.online and self.store.queued() == 0:
                self.link.set(True)
                self.publish()
            await asyncio.sleep(1.0)


def _fatal(task: asyncio.Task) -> None:
    """A link task that dies would leave the page saying nothing: end the station, loudly."""
    if not task.cancelled() and task.exception() is not None:
        log.critical("station task failed", exc_info=task.exception())
        raise SystemExit(1)


def _scan_headers(item) -> tuple:
    return cloudevent_headers(
        f"scan/{item['scan_id']}",
        "cn.greenchannel.checkpoint.scan",
        f"/greenchannel/station/{item['checkpoint_id']}",
        item["scanned_at"],
    )


async def _reachable(bootstrap: str) -> bool:
    for server in bootstrap.split(","):
        host, _, port = server.rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 1.0)
        except (TimeoutError, OSError):
            continue
        writer.close()
        return True
    return False
