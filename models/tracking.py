"""The live status of passes: issue, scans, and re-evaluation when reference data changes.

Pure functions over `PassState`; the stream processor keeps the states in a table and
publishes the events these functions return.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Container, Mapping
from datetime import datetime, timedelta
from sys import intern

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from msgspec.structs import replace

from routing import Place

from .decide import Decider
from .keyring import Keyring, SigningKeyMissing
from .passes import (
    ACTIVE,
    Claims,
    PassState,
    Signer,
    on_scan,
    refusal,
    scan_time_refusal,
    status_event,
    token_refusal,
    transition,
    verify_token,
)
from .passes import PassStatusKind as S
from .records import CheckpointScan, EnterpriseEntry, RegionRisk, format_time, parse_time

__all__ = ["Tracker", "PassIndex", "Lifetimes", "CheckpointBoard", "board_row", "epoch_seconds"]

_VERIFIED_MAX = 50_000  # tokens remembered as verified (about 30 MB)


class Tracker:
    def __init__(self, decider: Decider, keys: Ed25519PublicKey | Mapping[str, Ed25519PublicKey] | None = None) -> None:
        """`keys` verify tokens: by default every key of the decider's ring (the worker's), else one
        public key or a mapping by kid. Withdrawals are the ring's either way."""
        self.decider = decider
        self.keyring: Keyring = decider.keyring
        self.keys = self.keyring.public_keys if keys is None else keys
        self.dwell_target = int(decider.catalog.rules.get("dwell_target_seconds", 900))
        # token -> the claims of tokens that verified: a truck shows the same token at every
        # checkpoint, and an Ed25519 verification costs ~130 µs, more than the rest of a scan.
        self._verified: dict[str, Claims] = {}

    def _claims(self, token: object) -> Claims:
        """The claims of a genuine token; InvalidToken for anything else (a token not text included)."""
        found = self._verified.get(token) if isinstance(token, str) else None
        if found is None:
            found = verify_token(token, self.keys)
            assert isinstance(token, str)  # verify_token refuses anything else
            if len(self._verified) >= _VERIFIED_MAX:
                del self._verified[next(iter(self._verified))]  # the oldest
            self._verified[token] = found
        return found

    def issued(self, state: PassState, decided_at: str) -> dict:
        return status_event(
            state, S.ISSUED, decided_at, cause=f"decision:{state.shipment_id}", dwell_target=self.dwell_target
        )

    def scan(
        self, state: PassState | None, scan: CheckpointScan, pass_id: str, now: datetime | None = None
    ) -> tuple[PassState | None, dict]:
        """The new state (None: unknown pass, nothing stored) and the event answering the scan.
        A redelivered scan is the caller's to answer, with the answer it stored. A scan dated too far
        from the channel's time `now` (`scan_time_refusal`) is answered held and changes nothing;
        its answer says when the channel received it (`received_at`)."""
        late = scan_time_refusal(scan.scanned_at, now)
        if late is not None and now is not None:
            return state, {
                "pass_id": pass_id,
                "shipment_id": None if state is None else state.shipment_id,
                "status": str(S.HELD),
                "at": format_time(now),
                "checkpoint_id": scan.checkpoint_id,
                "reason": late,
                "dwell_seconds": None,
                "dwell_exceeded": False,
                "cause": f"scan:{scan.scan_id}",
                "received_at": format_time(now),
            }
        token_error = token_refusal(
            scan.token, pass_id, scan.plate, self._claims, at=scan.scanned_at, key_refusal=self.keyring.key_refusal
        )
        if state is None:
            reason = refusal(
                None, checkpoint_id=scan.checkpoint_id, plate=scan.plate, at=scan.scanned_at, token_error=token_error
            )
            return None, {
                "pass_id": pass_id,
                "shipment_id": None,
                "status": str(S.HELD),
                "at": format_time(scan.scanned_at),
                "checkpoint_id": scan.checkpoint_id,
                "reason": reason,
                "dwell_seconds": None,
                "dwell_exceeded": False,
                "cause": f"scan:{scan.scan_id}",
            }
        new, event = on_scan(state, scan, token_error=token_error, dwell_target=self.dwell_target)
        return new, event

    def expired(self, state: PassState) -> tuple[PassState, dict | None]:
        """The channel's clock passed the pass's validity: an active pass ends `expired`, at the
        moment its validity ended (so the event is the same bytes whichever tick found it)."""
        if S(state.status) not in ACTIVE:
            return state, None
        transition(S(state.status), S.EXPIRED)
        new = replace(state, status=S.EXPIRED)
        return new, status_event(
            state,
            S.EXPIRED,
            state.valid_until,
            reason="validity_ended",
            cause=f"clock:{state.valid_until}",
            dwell_target=self.dwell_target,
        )

    def risk_changed(self, state: PassState, risk: RegionRisk) -> tuple[PassState, dict | None]:
        """Re-evaluate one pass after a risk change: keep, reroute, suspend or reinstate. A change
        effective once the pass's validity has ended leaves it alone (in any order: a replay may
        meet it before a later-decided pass that it never touched live).

        A vehicle already scanned at a checkpoint of its route is rerouted from there: the
        regions behind it stay as they were, and only those ahead of it need to be safe. A
        multi-trip pass drives its whole route again, both ways, until it expires: every region
        of it lies ahead, and a new route is planned from the origin.
        """
        status = S(state.status)
        if status not in ACTIVE or parse_time(state.valid_until) <= risk.effective_at:
            return state, None  # a change effective once the pass has ended is not the pass's
        d = self.decider
        ends = {d.graph.node_of(state.origin), d.graph.node_of(state.destination)}
        if status is not S.SUSPENDED and not (d.graph.prefectures_in(risk.adcode) & self.regions_of(state)):
            return state, None
        at = risk.effective_at
        cause = f"risk:{risk.adcode}:{risk.level}:{format_time(at)}"
        levels = (d.risk.level_at(state.origin, at), d.risk.level_at(state.destination, at))
        allowed = d.catalog.rules["high_risk_allows"]
        if "high" in levels and state.priority not in allowed:
            return self._suspend(state, at, "high_risk_region", cause)
        blocked = d.risk.blocked_at(at, d.graph.prefectures_in)
        passed = None if state.trip == "multi" else self._passed(state)
        # Prefecture keys in the route are the graph's node keys (adcode[:4]); the ends are
        # counties, whose node may differ (municipalities), hence node_of.
        ahead = {d.graph.node_of(a) for a in state.route["adcodes"][passed[1] + 1 if passed else 0 :]}
        if status is not S.SUSPENDED and not ((ahead - ends) & blocked):
            return state, None
        route_dict = self._replan(state, passed, blocked, at)
        if route_dict is None:
            return self._suspend(state, at, "no_safe_route", cause)
        if status is not S.SUSPENDED and route_dict["adcodes"] == state.route["adcodes"]:
            return state, None
        signer = self._signer(state, at)
        if isinstance(signer, str):  # a new route needs a new token, and no key here may sign it
            return self._suspend(state, at, signer, cause)
        transition(status, S.REROUTED)
        token = signer.token(_claims_of(state, route_dict))
        new = replace(state, status=S.REROUTED, route=route_dict, kid=signer.key_id)
        reason = "reinstated_safe_route" if status is S.SUSPENDED else "route_crossed_high_risk_region"
        return new, status_event(
            new,
            S.REROUTED,
            at,
            reason=reason,
            cause=cause,
            route=route_dict,
            token=token,
            dwell_target=self.dwell_target,
        )

    def regions_of(self, state: PassState) -> frozenset[str]:
        """The regions (graph nodes) whose risk can change what a pass may do: those of its route
        and its two ends. `risk_changed` leaves a pass that is not suspended alone unless a change
        touches one of them, so `PassIndex` files the pass under exactly these."""
        g = self.decider.graph
        # Interned: a busy partition files 100,000s of passes under a few hundred regions, and a
        # slice is a new string each time (about 0.6 kB a pass).
        return frozenset(
            {intern(a[:4]) for a in state.route["adcodes"]}
            | {intern(g.node_of(state.origin)), intern(g.node_of(state.destination))}
        )

    @staticmethod
    def _passed(state: PassState) -> tuple[int, int] | None:
        """Where the vehicle is: (index of the last route checkpoint it was scanned at, index of
        the region that checkpoint leads into in the route's adcodes); None before the first
        checkpoint, or when its last scan was off the route."""
        ids = state.checkpoint_ids
        if state.checkpoint_id not in ids:
            return None
        k = ids.index(state.checkpoint_id)
        adcodes = state.route["adcodes"]
        region = state.route["checkpoints"][k]["adcode"]
        # A border into the destination's prefecture names the prefecture, not the county.
        at = adcodes.index(region) if region in adcodes else len(adcodes) - 1
        return k, at

    def _replan(self, state: PassState, passed: tuple[int, int] | None, blocked: frozenset[str], at) -> dict | None:
        """The route avoiding `blocked` from where the vehicle is; None when there is none."""
        d = self.decider
        destination = self._place(state.destination)
        if passed is None:
            route = d.planner.plan(
                self._place(state.origin), destination, blocked=blocked, departure=parse_time(state.departure_at)
            )
            return None if route is None else route.to_dict()
        k, i = passed
        adcodes, checkpoints = state.route["adcodes"], state.route["checkpoints"]
        if i == len(adcodes) - 1:
            return state.route  # in the destination's own region: nothing left to avoid
        # Leaving the checkpoint now, or when it was reached if that is later.
        departure = max(at, parse_time(state.arrived_at)) if state.arrived_at else at
        route = d.planner.plan(self._place(adcodes[i]), destination, blocked=blocked, departure=departure)
        if route is None:
            return None
        rest = route.to_dict()
        # The distance already driven, from the planned time to the checkpoint at the planner's speed.
        hours = (parse_time(checkpoints[k]["eta"]) - parse_time(state.departure_at)).total_seconds() / 3600
        return {
            "adcodes": adcodes[:i] + rest["adcodes"],
            "checkpoints": checkpoints[: k + 1] + rest["checkpoints"],
            "distance_km": round(hours * d.planner.speed_kmh + rest["distance_km"], 1),
            "eta": rest["eta"],
        }

    def _place(self, adcode: str) -> Place:
        """The place of an adcode of a pass (its origin, destination or a region of its route): one
        the gazetteer located when the pass was decided."""
        place = self.decider.gazetteer.locate(adcode)
        if place is None:
            raise KeyError(adcode)
        return place

    def _signer(self, state: PassState, at: datetime) -> Signer | str:
        """The signer of a new token for `state` at `at` (the key in force for its issuer, the pass
        number's first six digits), or why there is none: `no_signing_key`, or, when that key's
        private key is not here, `no_signing_key: KID` (the pass is suspended, never left waiting;
        the reason names the key so that a replay finds it missing too)."""
        try:
            signer = self.keyring.signer_at(at, state.pass_id[:6])
        except SigningKeyMissing as missing:
            if not self.keyring.may_lack(missing.kid):
                raise  # a replay without a key the worker had: the audit's to be given it
            return f"no_signing_key: {missing.kid}"
        return "no_signing_key" if signer is None else signer

    def _suspend(self, state: PassState, at, reason: str, cause: str) -> tuple[PassState, dict | None]:
        if state.status == S.SUSPENDED:
            return state, None
        transition(S(state.status), S.SUSPENDED)
        new = replace(state, status=S.SUSPENDED)
        return new, status_event(new, S.SUSPENDED, at, reason=reason, cause=cause, dwell_target=self.dwell_target)

    def key_withdrawn(self, state: PassState, kid: str, at: datetime) -> tuple[PassState, dict | None]:
        """Key `kid` was withdrawn at `at`: an active pass it signed gets a new token, signed by the
        key in force then (status unchanged, reason `token_reissued`, with its route and the token);
        suspended (`key_withdrawn`) when no other key is in force. A pass whose validity ended
        before `at` is left alone: its old token is refused as expired anyway."""
        status = S(state.status)
        if status not in ACTIVE or state.kid != kid or parse_time(state.valid_until) < at:
            return state, None
        cause = f"key:{kid}:withdrawn:{format_time(at)}"
        signer = self._signer(state, at)
        if isinstance(signer, str):
            return self._suspend(state, at, "key_withdrawn" if signer == "no_signing_key" else signer, cause)
        new = replace(state, kid=signer.key_id)
        return new, status_event(
            state,
            status,
            at,
            reason="token_reissued",
            checkpoint_id=state.checkpoint_id,
            cause=cause,
            route=state.route,
            token=signer.token(_claims_of(state, state.route)),
            dwell_target=self.dwell_target,
        )

    def reissued(self, state: PassState, applied: Container[str]) -> tuple[PassState, list[dict]]:
        """A pass just signed (issued, rerouted, reissued) by a key whose withdrawal was `applied`
        already (its passes reissued): a request or change from before the withdrawal, handled
        after it. The reissues it would have had, had it been there when the withdrawal was (what a
        replay in event-time order does)."""
        events = []
        while (
            state.kid is not None and state.kid in applied and (at := self.keyring.withdrawn_at(state.kid)) is not None
        ):
            state, event = self.key_withdrawn(state, state.kid, at)
            if event is None:
                break
            events.append(event)
        return state, events

    def enterprise_changed(self, state: PassState, entry: EnterpriseEntry) -> tuple[PassState, dict | None]:
        """A removal from the key-enterprise list revokes the P2/P3 passes that relied on it."""
        if entry.action != "remove" or S(state.status) not in ACTIVE:
            return state, None
        if parse_time(state.valid_until) <= entry.effective_at:  # effective once the pass has ended
            return state, None
        if entry.credit_code not in (state.shipper, state.consignee):
            return state, None
        if not self.decider.catalog.classes[state.priority].needs_key_enterprise:
            return state, None
        books, at = self.decider.enterprises, entry.effective_at
        if books.is_listed(state.shipper, at) or books.is_listed(state.consignee, at):
            return state, None
        transition(S(state.status), S.REVOKED)
        new = replace(state, status=S.REVOKED)
        return new, status_event(
            new,
            S.REVOKED,
            at,
            reason="key_enterprise_removed",
            cause=f"enterprise:{entry.credit_code}:remove:{format_time(at)}",
            dwell_target=self.dwell_target,
        )


def _claims_of(state: PassState, route: dict) -> dict:
    """What a pass's token says (and `models.decide` signs first): the pass, its plate, validity, the
    checkpoints of its route and its driver."""
    return {
        "pid": state.pass_id,
        "plate": state.plate,
        "nbf": state.valid_from,
        "exp": state.valid_until,
        "cp": [c["checkpoint_id"] for c in route["checkpoints"]],
        "drv": state.driver_binding,
    }


class PassIndex:
    """The active passes of one partition, filed by what can change them: the regions of
    `Tracker.regions_of`, the key enterprises (shipper, consignee) a pass may rely on, and the
    key that signed its token.

    A risk change visits the passes on the regions it touches, plus the suspended ones (any
    change may reinstate them); an enterprise removal, the passes of that firm; a key's
    withdrawal, the passes that key signed. Passes that are delivered, revoked or expired are
    not filed: nothing can change them any more.

    Passes are filed by their shape, the sorted tuple of their regions, one shared by every pass
    of the same regions (many passes run the same corridors), and each shape under its regions.
    So an active pass costs a set entry for its shape, one per firm and one for its key, and the
    tuple of what it is filed under: about 0.3 kB, whatever its route's length.
    """

    def __init__(self, regions_of) -> None:
        self._regions_of = regions_of
        self._shapes: dict[tuple[str, ...], tuple[tuple[str, ...], set[str]]] = {}  # shape -> (it, its passes)
        self._by_region: dict[str, set[tuple[str, ...]]] = {}  # region -> the shapes through it
        self._by_firm: dict[str, set[str]] = {}
        self._by_kid: dict[str, set[str]] = {}
        self._suspended: set[str] = set()
        # What each pass is filed under: its shape, its firms, its key.
        self._filed: dict[str, tuple[tuple[str, ...], str, str, str | None]] = {}

    def __len__(self) -> int:
        return len(self._filed)

    def put(self, state: PassState, pass_id: str | None = None) -> None:
        """File the pass as its new state says (or unfile it, once it cannot change any more).
        `pass_id`: the state's, as an object already held (the table's key), to share it."""
        pass_id = state.pass_id if pass_id is None else pass_id
        status = S(state.status)
        if status not in ACTIVE:
            self.remove(pass_id)
            return
        regions = tuple(sorted(self._regions_of(state)))
        shape = self._shapes.get(regions)
        kid = None if state.kid is None else intern(state.kid)
        filed = (regions if shape is None else shape[0], intern(state.shipper), intern(state.consignee), kid)
        if self._filed.get(pass_id) != filed:
            self.remove(pass_id)
            self._filed[pass_id] = filed
            self._shape(filed[0]).add(pass_id)
            for key, book in self._entries(filed):
                book.setdefault(key, set()).add(pass_id)
        if status is S.SUSPENDED:
            self._suspended.add(pass_id)
        else:
            self._suspended.discard(pass_id)

    def _shape(self, regions: tuple[str, ...]) -> set[str]:
        """The passes of a shape, the shape filed under its regions when new."""
        shape = self._shapes.get(regions)
        if shape is None:
            shape = self._shapes[regions] = (regions, set())
            for region in regions:
                self._by_region.setdefault(region, set()).add(regions)
        return shape[1]

    def remove(self, pass_id: str) -> None:
        filed = self._filed.pop(pass_id, None)
        if filed is None:
            return
        regions = filed[0]
        _, passes = self._shapes[regions]
        passes.discard(pass_id)
        if not passes:
            del self._shapes[regions]
            for region in regions:
                _discard(self._by_region, region, regions)
        for key, book in self._entries(filed):
            _discard(book, key, pass_id)
        self._suspended.discard(pass_id)

    def _entries(self, filed) -> list[tuple[str, dict[str, set[str]]]]:
        _, shipper, consignee, kid = filed
        entries = [(shipper, self._by_firm), (consignee, self._by_firm)]
        return entries if kid is None else [*entries, (kid, self._by_kid)]

    def touched_by_risk(self, regions: frozenset[str] | set[str]) -> list[str]:
        """The passes a risk change on `regions` may change, in pass-id order (deterministic)."""
        shapes = set().union(*(self._by_region.get(region, ()) for region in regions))
        found = set(self._suspended)
        for shape in shapes:
            found |= self._shapes[shape][1]
        return sorted(found)

    def of_firm(self, credit_code: str) -> list[str]:
        return sorted(self._by_firm.get(credit_code, ()))

    def signed_by(self, kid: str) -> list[str]:
        """The active passes whose current token key `kid` signed, in pass-id order."""
        return sorted(self._by_kid.get(kid, ()))


def _discard(book: dict, key, member) -> None:
    """`member` out of `book[key]`, and the key out of `book` once its set is empty."""
    members = book.get(key)
    if members is not None:
        members.discard(member)
        if not members:
            del book[key]


def epoch_seconds(at: datetime | str) -> int:
    """Whole seconds since 1970 (UTC) of a time or an RFC 3339 text: the clock's unit."""
    moment = parse_time(at) if isinstance(at, str) else at
    return int(moment.timestamp())


class Lifetimes:
    """When the entries of one partition's working state are due: validity ends, and departures.

    - `expiring`: each pass by the end of its validity; the clock expires the active ones.
    - `leaving`: what leaves the working state once the clock is `retention` past it: a pass (with
      its decision) and each scan answer of it at the end of the pass's validity, a decision
      without a pass at its decision time. So nothing leaves before `retention` after its decision,
      which is what lets a request be told apart as older than anything held
      (`streams.handlers.Pipeline._stale`).

    Entries are checked when they come due (a pass delivered early is skipped by the expiry, for
    instance), so an entry costs one append and is taken once, whatever the partition holds. They
    are kept by the second they come due (`_Due`): validity ends on the hour, so a second holds many
    passes, and an entry costs a list slot.
    """

    PASS, ANSWER, DECISION = 0, 1, 2

    def __init__(self, retention: timedelta) -> None:
        self.retention = int(retention.total_seconds())
        self._expiring = _Due()
        self._leaving = (_Due(), _Due(), _Due())  # by kind: PASS, ANSWER, DECISION

    def __len__(self) -> int:
        return sum(len(due) for due in self._leaving)

    def add_pass(self, pass_id: str, valid_until: str, decided_at: str) -> None:
        """A pass expires at the end of its validity and leaves `retention` after that, or after its
        decision if that is later (a departure before submission): never before its decision could."""
        end = epoch_seconds(valid_until)
        self._expiring.add(end, pass_id)
        self._leaving[self.PASS].add(max(end, epoch_seconds(decided_at)) + self.retention, pass_id)

    def add_answer(self, answer_key: str, valid_until: str) -> None:
        self._leaving[self.ANSWER].add(epoch_seconds(valid_until) + self.retention, answer_key)

    def add_decision(self, shipment_id: str, decided_at: str) -> None:
        self._leaving[self.DECISION].add(epoch_seconds(decided_at) + self.retention, shipment_id)

    def expiring(self, now: int) -> list[str]:
        """The passes whose validity ended by `now`, in (end, pass id) order; each once."""
        return [key for _, key in self._expiring.pop_due(now)]

    def leaving(self, now: int) -> list[tuple[int, str]]:
        """(kind, key) of the entries due to leave by `now`, in (due, kind, key) order; each once."""
        due = [(at, kind, key) for kind, book in enumerate(self._leaving) for at, key in book.pop_due(now)]
        return [(kind, key) for _, kind, key in sorted(due)]


class _Due:
    """Keys by the second they come due: a heap of the seconds, and the keys of each."""

    def __init__(self) -> None:
        self._seconds: list[int] = []
        self._keys: dict[int, list[str]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, at: int, key: str) -> None:
        keys = self._keys.get(at)
        if keys is None:
            keys = self._keys[at] = []
            heapq.heappush(self._seconds, at)
        keys.append(key)
        self._count += 1

    def pop_due(self, now: int) -> list[tuple[int, str]]:
        """(second, key) of every key due by `now`, in that order."""
        due = []
        while self._seconds and self._seconds[0] <= now:
            at = heapq.heappop(self._seconds)
            keys = self._keys.pop(at)
            self._count -= len(keys)
            due += [(at, key) for key in sorted(keys)]
        return due


class CheckpointBoard:
    """Live waiting times per checkpoint (as the EU Green Lanes app showed at every crossing).

    Fed with the status events the tracker publishes; keeps the vehicles now at each
    checkpoint and the last `window` dwell times, so the figure follows the present queue.
    """

    def __init__(self, window: int = 50, target_seconds: int = 900) -> None:
        self.window = window
        self.target = target_seconds
        self._present: dict[str, set[str]] = {}
        self._dwells: dict[str, deque[float]] = {}

    def observe(self, event: dict) -> None:
        checkpoint, pass_id = event.get("checkpoint_id"), event["pass_id"]
        if not checkpoint:
            return
        present = self._present.setdefault(checkpoint, set())
        if event["status"] in (S.AT_CHECKPOINT, S.HELD):
            present.add(pass_id)
        else:
            present.discard(pass_id)
        if event.get("dwell_seconds") is not None:
            self._dwells.setdefault(checkpoint, deque(maxlen=self.window)).append(event["dwell_seconds"])

    def snapshot(self) -> list[dict]:
        return [
            board_row(checkpoint, len(self._present.get(checkpoint, ())), self._dwells.get(checkpoint, ()), self.target)
            for checkpoint in sorted(set(self._present) | set(self._dwells))
        ]


def board_row(checkpoint: str, present: int, dwells, target: float) -> dict:
    """One checkpoint of the board: vehicles there now, the median of its recent dwell times
    (the upper one of an even count) and whether that is over the target."""
    dwells = sorted(dwells)
    median = dwells[len(dwells) // 2] if dwells else None
    return {
        "checkpoint_id": checkpoint,
        "vehicles_present": present,
        "recent_departures": len(dwells),
        "median_dwell_seconds": median,
        "over_target": median is not None and median > target,
    }
