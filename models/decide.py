"""From a shipment request to a pass decision: locate, assess, route, sign.

`Decider.decide` depends only on the request, its decision time, the catalog, and the reference
data the decider knows (the signing key too: `models.keyring`). The decision records what that was
(`known`: how far each reference topic had been applied), and `Decider.as_known` rebuilds a decider
that knew exactly that, so the live worker and an audit replay produce the same bytes.

A decision looks from its decision time to the end of the pass's validity: a region high at any
moment of that window is avoided (or, at an end, refuses the classes that may not go there), and a
key enterprise must stay listed throughout. An earlier decision time therefore never gives a more
favourable decision, only a longer window (tests/unit/test_trusted_time.py).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from routing import Gazetteer, Place, RegionGraph, RoutePlanner

from .credential import SALT_BYTES, DriverBinding
from .keyring import Keyring, SigningKeyMissing
from .passes import PassState, Signer
from .policy import Catalog, Reason, assess
from .records import FieldError, Location, ShipmentRequest, format_time
from .reference import EnterpriseBook, RiskBook, Vector

__all__ = ["Decider", "Decision"]

# A pass must outlast the drive it covers; this margin covers rest stops and queues.
_ROUTE_MARGIN = timedelta(hours=12)


@dataclass(frozen=True, slots=True)
class Decision:
    message: dict  # the PassDecision as published
    state: PassState | None  # the tracker's initial state, on approval


class Decider:
    def __init__(
        self,
        *,
        catalog: Catalog,
        gazetteer: Gazetteer,
        graph: RegionGraph,
        planner: RoutePlanner,
        risk: RiskBook,
        enterprises: EnterpriseBook,
        signer: Signer | Keyring,
        geocoder=None,
    ) -> None:
        self.catalog = catalog
        self.gazetteer = gazetteer
        self.graph = graph
        self.planner = planner
        self.risk = risk
        self.enterprises = enterprises
        # Which key signs a pass is the ring's, as of its decision time; one fixed Signer is the
        # ring of that key alone (the tests, the bench).
        self.keyring = signer if isinstance(signer, Keyring) else Keyring.single(signer)
        # An online geopy geocoder may stand in for addresses; the offline gazetteer stays
        # the default because decisions must not depend on a remote service's mood.
        self.geocoder = geocoder
        self._located: dict[Location, Place | None] = {}

    def known(self) -> dict[str, dict[str, int]]:
        """How far each reference topic had been applied to this decider's books: per topic, per
        partition, the next offset (the decision's `known`)."""
        books = (
            ("enterprises", self.enterprises.provenance),
            ("keys", self.keyring.provenance),
            ("risk", self.risk.provenance),
        )
        return {name: {str(p): o for p, o in sorted(prov.known.items())} for name, prov in books}

    def as_known(self, known: dict[str, Any]) -> Decider:
        """A decider that knows what a decision's `known` names, and nothing after it: the same
        catalog, routes and locations, its books rebuilt from this one's."""

        def vector(name: str) -> Vector:
            return {int(p): int(o) for p, o in known.get(name, {}).items()}

        other = Decider(
            catalog=self.catalog,
            gazetteer=self.gazetteer,
            graph=self.graph,
            planner=self.planner,
            risk=self.risk.as_known(vector("risk")),
            enterprises=self.enterprises.as_known(vector("enterprises")),
            signer=self.keyring.as_known(vector("keys")).as_missing(frozenset(known.get("missing_keys", ()))),
            geocoder=self.geocoder,
        )
        other._located = self._located
        return other

    def locate(self, location: Location) -> Place | None:
        # Firms ship from the same depots again and again: locating is a cache lookup.
        try:
            return self._located[location]
        except KeyError:
            pass
        place = self._locate(location)
        if len(self._located) < 200_000:
            self._located[location] = place
        return place

    def _locate(self, location: Location) -> Place | None:
        if location.adcode:
            return self.gazetteer.locate(location.adcode)
        if location.address:
            if self.geocoder is not None:
                found = self.geocoder.geocode(location.address)
                return self.gazetteer.nearest(found.latitude, found.longitude) if found else None
            return self.gazetteer.from_address(location.address)
        if location.lat is not None and location.lon is not None:
            return self.gazetteer.nearest(location.lat, location.lon)
        return None

    def _reject(
        self, request: ShipmentRequest, decided_at: datetime, reasons, priority=None, *, missing: str | None = None
    ) -> Decision:
        """A rejection. `missing`: the kid of the key in force whose private key was not at hand,
        recorded in `known` (what the decision knew), so that a replay finds it missing too."""
        known: dict[str, Any] = dict(self.known())
        if missing is not None:
            known["missing_keys"] = [missing]
        message = {
            "shipment_id": request.shipment_id,
            "decision": "rejected",
            "priority": priority,
            "reasons": [r.to_dict() for r in reasons],
            "rules_version": self.catalog.version,
            "decided_at": format_time(decided_at),
            "known": known,
            "pass": None,
        }
        return Decision(_asked_by(message, request), None)

    def decide(
        self,
        request: ShipmentRequest,
        errors: list[FieldError],
        *,
        decided_at: datetime,
        allocate: Callable[[str], str | None],
    ) -> Decision:
        """`allocate(issuer adcode)` gives the pass number (`models.passes.allocate_pass_id`), None
        when the issuer has no serial left."""
        if errors:
            return self._reject(request, decided_at, [Reason(e.code, e.text, e.field) for e in errors])

        ends: list[Place] = []
        problems = []
        for name, where in (("origin", request.origin), ("destination", request.destination)):
            place = self.locate(where)
            if place is None:
                problems.append(Reason(f"{name}_unresolved", f"{name} could not be located in the gazetteer", name))
            elif not self.gazetteer.is_finest(place):
                problems.append(
                    Reason(
                        f"{name}_not_county",
                        f"{name} resolves only to {place.name} ({place.adcode}); give a county",
                        name,
                    )
                )
            else:
                ends.append(place)
        if problems:
            return self._reject(request, decided_at, problems)
        origin, destination = ends

        at, until = decided_at, self._horizon(request)
        verdict = assess(
            request,
            catalog=self.catalog,
            enterprises=self.enterprises,
            origin_level=self.risk.level_during(origin.adcode, at, until),
            destination_level=self.risk.level_during(destination.adcode, at, until),
            at=at,
            until=until,
        )
        if not verdict.approved:
            return self._reject(request, decided_at, verdict.reasons, verdict.priority)

        route = self._route(request, verdict, origin, destination, at, until)
        if route is None:
            return self._reject(
                request,
                decided_at,
                [Reason("no_safe_route", "every route between origin and destination crosses a high-risk region")],
                verdict.priority,
            )
        return self._approve(request, verdict, origin, destination, route, decided_at=decided_at, allocate=allocate)

    def _horizon(self, request: ShipmentRequest) -> datetime:
        """The end of the window a decision looks at: the departure plus the longest validity its
        trip can have (a drive longer than that is checked again in `_route`)."""
        longest = max(int(h) for h in self.catalog.rules["validity_hours"][request.trip].values())
        return request.departure_at + timedelta(hours=longest)

    def _route(self, request: ShipmentRequest, verdict, origin: Place, destination: Place, at, until):
        """The route around every region high at some moment from `at` until the pass's validity
        ends; None when there is none. A route whose pass outlasts `until` is planned again around
        what is high until its own end, until that changes nothing."""
        route = None
        for _ in range(4):
            blocked = self.risk.blocked_during(at, until, self.graph.prefectures_in)
            route = self.planner.plan(origin, destination, blocked=blocked, departure=request.departure_at)
            if route is None:
                return None
            ends = _pass_validity(request, verdict, route)[1]
            if ends <= until or self.risk.blocked_during(at, ends, self.graph.prefectures_in) is blocked:
                return route
            until = ends
        return route

    def _approve(
        self,
        request: ShipmentRequest,
        verdict,
        origin: Place,
        destination: Place,
        route,
        *,
        decided_at: datetime,
        allocate: Callable[[str], str | None],
    ) -> Decision:
        """The pass on `route`, numbered by `allocate` and signed by the key in force at `decided_at`."""
        try:  # the key in force for the issuer (the pass number's first six digits are its adcode)
            signer = self.keyring.signer_at(decided_at, origin.adcode)
        except SigningKeyMissing as missing:
            if not self.keyring.may_lack(missing.kid):
                raise  # a replay without a key the worker had: the audit's to be given it
            reason = Reason("no_signing_key", f"{missing}; the request may be sent again under another shipment id")
            return self._reject(request, decided_at, [reason], verdict.priority, missing=missing.kid)
        if signer is None:
            return self._reject(request, decided_at, [_no_signing_key(origin.adcode)], verdict.priority)
        pass_id = allocate(origin.adcode)
        if pass_id is None:
            return self._reject(request, decided_at, [_serials_exhausted(origin.adcode)], verdict.priority)
        return self._issue(request, verdict, origin, destination, route, pass_id, signer, decided_at)

    def _issue(
        self,
        request: ShipmentRequest,
        verdict,
        origin: Place,
        destination: Place,
        route,
        pass_id: str,
        signer: Signer,
        decided_at: datetime,
    ) -> Decision:
        """The approval carrying pass `pass_id`, signed by `signer`, and the tracker's initial state of that pass."""
        route_dict = route.to_dict()
        valid_from, valid_until = _pass_validity(request, verdict, route)
        claims = _token_claims(pass_id, request, valid_from, valid_until, route_dict, driver_binding(request))
        the_pass = _pass_document(pass_id, origin, request, verdict, claims, route_dict, signer.token(claims))
        message = {
            "shipment_id": request.shipment_id,
            "decision": "approved",
            "priority": verdict.priority,
            "reasons": [r.to_dict() for r in verdict.reasons],
            "rules_version": self.catalog.version,
            "decided_at": format_time(decided_at),
            "known": self.known(),
            "pass": the_pass,
        }
        message = _asked_by(message, request)
        state = _initial_state(pass_id, request, verdict, origin, destination, claims, route_dict, signer.key_id)
        return Decision(message, state)


def _asked_by(message: dict, request: ShipmentRequest) -> dict:
    """The decision names the firm that asked when the gateway authenticated one (and only then:
    the Kafka route's decisions keep their bytes)."""
    return message if request.requested_by is None else message | {"requested_by": request.requested_by}


def _no_signing_key(issuer: str) -> Reason:
    return Reason(
        "no_signing_key",
        f"no pass-signing key in force at the decision time may issue passes of {issuer} (none on the ring "
        "covers it, or each that does is withdrawn or past its end); the request may be sent again under "
        "another shipment id once one is",
    )


def _serials_exhausted(issuer: str) -> Reason:
    return Reason(
        "serials_exhausted",
        f"issuer {issuer} has no pass number left on this partition; "
        "the request may be sent again under another shipment id",
    )


def _pass_validity(request: ShipmentRequest, verdict, route) -> tuple[datetime, datetime]:
    """(valid from, valid until) of the pass: from departure, for the class's validity or the drive
    with its margin, whichever is longer, in whole hours."""
    valid_from = request.departure_at
    drive = route.eta - valid_from + _ROUTE_MARGIN
    hours = max(verdict.validity_hours, math.ceil(drive.total_seconds() / 3600))
    return valid_from, valid_from + timedelta(hours=hours)


def driver_binding(request: ShipmentRequest) -> DriverBinding | None:
    """The driver the pass binds: the binding the firm computed (the ID number never sent), else one
    of the ID number the request carries, salted by a hash of the shipment id (the same in a replay)."""
    if request.driver_binding is not None:
        return request.driver_binding
    if not request.driver_id_number:
        return None
    salt = hashlib.sha256(f"greenchannel/driver/{request.shipment_id}".encode()).digest()[:SALT_BYTES]
    return DriverBinding.of(request.driver_id_number, salt)


def _token_claims(
    pass_id: str,
    request: ShipmentRequest,
    valid_from: datetime,
    valid_until: datetime,
    route_dict: dict,
    driver: DriverBinding | None,
) -> dict:
    """What the pass's signed token asserts: number, plate, validity, the route's checkpoints, the driver."""
    return {
        "pid": pass_id,
        "plate": request.plate,
        "nbf": format_time(valid_from),
        "exp": format_time(valid_until),
        "cp": [c["checkpoint_id"] for c in route_dict["checkpoints"]],
        "drv": driver,
    }


def _pass_document(
    pass_id: str, origin: Place, request: ShipmentRequest, verdict, claims: dict, route_dict: dict, token: str
) -> dict:
    """The pass as the approval carries it, issued by the origin's county."""
    return {
        "pass_id": pass_id,
        "issuer": origin.adcode,
        "plate": request.plate,
        "priority": verdict.priority,
        "valid_from": claims["nbf"],
        "valid_until": claims["exp"],
        "trip": request.trip,
        "toll_exempt": verdict.toll_exempt,
        "route": route_dict,
        "token": token,
    }


def _initial_state(
    pass_id: str,
    request: ShipmentRequest,
    verdict,
    origin: Place,
    destination: Place,
    claims: dict,
    route_dict: dict,
    kid: str,
) -> PassState:
    """The tracker's state of the pass as issued."""
    return PassState(
        pass_id=pass_id,
        shipment_id=request.shipment_id,
        plate=request.plate,
        priority=verdict.priority,
        shipper=request.shipper.credit_code,
        consignee=request.consignee.credit_code,
        origin=origin.adcode,
        destination=destination.adcode,
        trip=request.trip,
        valid_from=claims["nbf"],
        valid_until=claims["exp"],
        departure_at=format_time(request.departure_at),
        route=route_dict,
        kid=kid,
        driver=None if claims["drv"] is None else claims["drv"].to_wire(),
    )
