"""The station's offline store: one SQLite file of the passes crossing its checkpoints, the keys it
was given and the scan outbox (each scan recorded here first, sent by the forwarder in order).
"""

from __future__ import annotations

import logging
import sqlite3
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from models.keyring import ACTIVE, KeyEntry, Keyring, parse_key_entry
from models.passes import InvalidToken, unverified_claims, verify_token
from models.records import format_time, parse_time

from ..keys import public_pem

__all__ = ["Store", "station_path", "route_ids", "ARRIVALS_AHEAD", "ARRIVALS_LATE"]

log = logging.getLogger("greenchannel.station")

ARRIVALS_AHEAD = timedelta(hours=12)  # "expected arrivals": due within this
ARRIVALS_LATE = timedelta(hours=2)  # and those this late, not yet seen here

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pass (
    pass_id TEXT PRIMARY KEY, plate TEXT NOT NULL, priority TEXT, toll_exempt INTEGER,
    valid_from TEXT NOT NULL, valid_until TEXT NOT NULL, trip TEXT, route TEXT NOT NULL, token TEXT,
    origin TEXT, destination TEXT, status TEXT NOT NULL, status_at TEXT, reason TEXT, last_checkpoint TEXT,
    verified INTEGER);
CREATE INDEX IF NOT EXISTS pass_plate ON pass (plate);
CREATE TABLE IF NOT EXISTS stop (
    pass_id TEXT NOT NULL, position INTEGER NOT NULL, checkpoint_id TEXT NOT NULL, name TEXT, eta TEXT NOT NULL,
    eta_s REAL NOT NULL, PRIMARY KEY (pass_id, position));
CREATE INDEX IF NOT EXISTS stop_due ON stop (checkpoint_id, eta_s);
CREATE INDEX IF NOT EXISTS stop_of_pass ON stop (pass_id, checkpoint_id);
CREATE TABLE IF NOT EXISTS key (kid TEXT PRIMARY KEY, pem BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS key_record (body BLOB PRIMARY KEY, timestamp_ms INTEGER);
CREATE TABLE IF NOT EXISTS key_status (
    kid TEXT NOT NULL, status TEXT NOT NULL, effective_at TEXT NOT NULL, PRIMARY KEY (kid, status, effective_at));
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, scan_id TEXT UNIQUE NOT NULL, pass_id TEXT NOT NULL,
    checkpoint_id TEXT NOT NULL, kind TEXT NOT NULL, plate TEXT NOT NULL, scanned_at TEXT NOT NULL,
    body BLOB NOT NULL, sent_at TEXT, answer TEXT, set_aside_at TEXT, set_aside TEXT);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (sent_at, seq);
CREATE INDEX IF NOT EXISTS outbox_of_pass ON outbox (pass_id, checkpoint_id, seq);
CREATE TABLE IF NOT EXISTS station (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def station_path(data_dir: Path, checkpoint_ids: list[str]) -> Path:
    return Path(data_dir) / "stations" / f"{'+'.join(sorted(checkpoint_ids))}.db"


def route_ids(route: dict) -> list[str]:
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
        columns = {r["name"] for r in self.db.execute("PRAGMA table_info(outbox)")}
        for column in ("set_aside_at", "set_aside"):  # a file kept before scans could be set aside
            if column not in columns:
                self.db.execute(f"ALTER TABLE outbox ADD COLUMN {column} TEXT")
        if "verified" not in {r["name"] for r in self.db.execute("PRAGMA table_info(pass)")}:
            self.db.execute("ALTER TABLE pass ADD COLUMN verified INTEGER")  # a file kept before: verified when read
        self.refused = 0  # decisions and reroutes not stored: their token did not verify (logged)
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
        return any(c in self.ids for c in route_ids(route))

    # --- what the broker tells the station ------------------------------------------------------
    def take_decision(self, d: dict, keys: Mapping[str, Ed25519PublicKey] | None = None) -> bool:
        """Store an approval crossing the station, if its token is the pass's: signed by a key of `keys`
        (default: the keys cached here) and naming the pass's number, plate and checkpoints. A token
        of a key not known yet is stored pending (`verified` 0) and verified when read; anything
        else is not stored (`refused`, logged)."""
        p = d.get("pass")
        if d.get("decision") != "approved" or not p or not self.crosses(p["route"]):
            return False
        verified = self._verdict(p["token"], p["pass_id"], p["plate"], p["route"], keys)
        if verified is None:
            return False
        if self.db.execute(
            "INSERT INTO pass (pass_id, plate, priority, toll_exempt, valid_from, valid_until, trip, route, token,"
            " origin, destination, status, verified) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
            # A pending row (its key not known yet: perhaps not the pass's at all) gives way to a
            # verified decision of the same number; nothing else replaces a row.
            " ON CONFLICT (pass_id) DO UPDATE SET plate = excluded.plate, priority = excluded.priority,"
            " toll_exempt = excluded.toll_exempt, valid_from = excluded.valid_from,"
            " valid_until = excluded.valid_until, trip = excluded.trip, route = excluded.route,"
            " token = excluded.token, origin = excluded.origin, destination = excluded.destination,"
            " verified = 1 WHERE pass.verified = 0 AND excluded.verified = 1",
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
                verified,
            ),
        ).rowcount:
            self._stops(p["pass_id"], p["route"])
        return True

    def _verdict(
        self, token: object, pass_id: str, plate: str | None, route: dict, keys: Mapping[str, Ed25519PublicKey] | None
    ) -> int | None:
        """1: `token` verifies and is pass `pass_id`'s (plate, when given, and route's checkpoints); 0:
        it would be, and its key is not known here yet; None: it is not (counted and logged)."""
        ring = self.keyring().public_keys if keys is None else keys
        try:
            claims = unverified_claims(token)
            if claims.kid in ring:
                verify_token(token, ring)
        except InvalidToken as exc:
            return self._refuse(pass_id, str(exc))
        if claims.pid != pass_id or (plate is not None and claims.plate != plate):
            return self._refuse(pass_id, "its token names another pass or plate")
        if not claims.names_route(route_ids(route)):
            return self._refuse(pass_id, "its token names other checkpoints than its route")
        return int(claims.kid in ring)

    def _refuse(self, pass_id: str, why: str) -> None:
        self.refused += 1
        log.warning("not stored: pass %s, %s", pass_id, why)
        return None

    def take_status(self, e: dict, keys: Mapping[str, Ed25519PublicKey] | None = None) -> bool:
        """The pass's status as the tracker last said; a reroute brings its new route and token
        (and a pass rerouted onto this station, known from its token's claims), stored only when
        its token is the pass's (`take_decision`)."""
        cause = e.get("cause") or ""
        if cause.startswith("scan:"):
            self.db.execute("UPDATE outbox SET answer = ? WHERE scan_id = ?", (orjson.dumps(e).decode(), cause[5:]))
        if e.get("route") and e.get("token"):
            verified = self._verdict(e["token"], e["pass_id"], None, e["route"], keys)
            if verified is not None:
                self._take_route(e, verified)
        changed = self.db.execute(
            "UPDATE pass SET status = ?, status_at = ?, reason = ?, last_checkpoint = coalesce(?, last_checkpoint)"
            " WHERE pass_id = ?",
            (e["status"], e.get("at"), e.get("reason"), e.get("checkpoint_id"), e["pass_id"]),
        ).rowcount
        return bool(changed) or cause.startswith("scan:")

    def _take_route(self, e: dict, verified: int) -> None:
        route = orjson.dumps(e["route"]).decode()
        if self.db.execute(
            "UPDATE pass SET route = ?, token = ?, verified = ? WHERE pass_id = ?",
            (route, e["token"], verified, e["pass_id"]),
        ).rowcount:
            self._stops(e["pass_id"], e["route"])
            return
        if not self.crosses(e["route"]):
            return
        claims = unverified_claims(e["token"])
        self.db.execute(
            "INSERT INTO pass (pass_id, plate, valid_from, valid_until, route, token, origin, destination,"
            " status, verified) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                e["pass_id"],
                claims.plate,
                format_time(claims.nbf),
                format_time(claims.exp),
                route,
                e["token"],
                self._place(e["route"]["adcodes"][0]),
                e["route"]["checkpoints"][-1]["name"],
                e["status"],
                verified,
            ),
        )
        self._stops(e["pass_id"], e["route"])

    def verified_row(self, pass_id: str | None, keys: Mapping[str, Ed25519PublicKey]) -> dict | None:
        """The pass's row if its stored token verifies with `keys` (a row stored pending is verified
        now, and marked so); None when there is no such row, or its token does not verify yet."""
        row = self.row(pass_id)
        if row is None or row["verified"] == 1:
            return row
        if self._verdict(row["token"], row["pass_id"], row["plate"], row["route"], keys) != 1:
            return None
        self.db.execute("UPDATE pass SET verified = 1 WHERE pass_id = ?", (row["pass_id"],))
        return {**row, "verified": 1}

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
        """The pass of `plate` that runs longest (a vehicle has one pass at a time), a verified one first
        (a decision pending its key must not hide the plate's genuine pass)."""
        found = self.db.execute(
            "SELECT pass_id FROM pass WHERE plate = ? ORDER BY coalesce(verified, 0) DESC, valid_until DESC LIMIT 1",
            (plate,),
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

    # --- how fresh the view is (streams/station/freshness.py) --------------------------------------
    def fresh_as_of(self) -> dict[str, float]:
        """Each view's last noted moment of being read to the end (seconds since the epoch)."""
        rows = self.db.execute("SELECT name, value FROM station WHERE name LIKE 'fresh_as_of:%'")
        return {r["name"].removeprefix("fresh_as_of:"): float(r["value"]) for r in rows}

    def note_fresh(self, view: str, at: float) -> None:
        """Note that `view` was read to the end at `at`; an earlier moment than the one noted is ignored."""
        self.db.execute(
            "INSERT INTO station VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value "
            "WHERE CAST(excluded.value AS REAL) > CAST(station.value AS REAL)",
            (f"fresh_as_of:{view}", repr(float(at))),
        )

    # --- keys ----------------------------------------------------------------------------------------
    def cache_keys(self, ring: dict) -> None:
        """The keys given as files at this start, and no other: a key file taken away is no longer
        trusted, and a station file of before the root of trust, whose `key` table also held the keys
        topic's unsigned keys, trusts none of them any more."""
        with self.transaction():
            self.db.execute("DELETE FROM key")
            self.db.executemany("INSERT INTO key VALUES (?, ?)", [(k, public_pem(v)) for k, v in ring.items()])

    def take_key(self, record: dict, root, timestamp_ms: int | None = None) -> KeyEntry:
        """A record of the keys topic (a key active, or withdrawn, from a time), read as the worker
        reads it (`models.keyring.parse_key_entry`: Unparseable, a ValueError, unless the pinned
        `root` signed it and its kid is its key's own), kept whole (checked again at each start)."""
        entry = parse_key_entry(record, root, timestamp_ms=timestamp_ms)
        self.db.execute("INSERT OR IGNORE INTO key_record VALUES (?, ?)", (orjson.dumps(record), timestamp_ms))
        return entry

    def keyring(self, root=None) -> Keyring:
        """The keys given as files (active since ever, any pass number: the operator's own word),
        and every record of the keys topic kept, checked again against the pinned `root` (a record of
        another root, after the root is changed, is left out)."""
        from cryptography.hazmat.primitives import serialization

        ring = Keyring(root=root)
        for r in self.db.execute("SELECT * FROM key"):
            ring.add(r["kid"], serialization.load_pem_public_key(r["pem"]), ACTIVE)
        for r in self.db.execute("SELECT * FROM key_record"):
            try:
                ring.apply(ring.take(orjson.loads(r["body"]), timestamp_ms=r["timestamp_ms"]))
            except ValueError as exc:
                log.warning("a cached key record is not taken: %s", exc)
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
        """The oldest scan neither sent nor set aside: the head of the queue."""
        return self.db.execute(
            "SELECT * FROM outbox WHERE sent_at IS NULL AND set_aside_at IS NULL ORDER BY seq LIMIT 1"
        ).fetchone()

    def mark_sent(self, seq: int, at: str) -> None:
        self.db.execute("UPDATE outbox SET sent_at = ? WHERE seq = ?", (at, seq))

    def set_aside(self, seq: int, at: str, reason: str) -> None:
        """Take a scan that can never be sent out of the queue, with why (kept, shown on the page)."""
        self.db.execute("UPDATE outbox SET set_aside_at = ?, set_aside = ? WHERE seq = ?", (at, reason, seq))

    def queued(self) -> int:
        return self.db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL AND set_aside_at IS NULL").fetchone()[
            0
        ]

    def set_aside_scans(self, limit: int = 20) -> list[dict]:
        """The scans set aside, newest first, each with its reason."""
        rows = self.db.execute(
            "SELECT scan_id, pass_id, plate, kind, checkpoint_id, scanned_at, set_aside_at, set_aside FROM outbox"
            " WHERE set_aside_at IS NOT NULL ORDER BY seq DESC LIMIT ?",
            (limit,),
        )
        return [{**dict(r), "reason": r["set_aside"]} for r in rows]

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
                "set_aside": r["set_aside"],
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
