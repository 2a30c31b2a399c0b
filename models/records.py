"""Wire messages of the green channel: parsing, field validation and canonical JSON.

Inputs (shipment requests, checkpoint scans, risk levels, key-enterprise entries) are parsed
from raw bytes into frozen dataclasses. A value that is not a JSON object cannot be parsed
and belongs in the dead-letter topic; a JSON object with bad fields is parsed into a
`FieldError` list so the decision can name every bad field.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson

from .credential import DriverBinding

__all__ = [
    "CargoItem",
    "CheckpointScan",
    "EnterpriseEntry",
    "FieldError",
    "Location",
    "Party",
    "RegionRisk",
    "ShipmentRequest",
    "Unparseable",
    "canonical",
    "kept",
    "check_credit_code",
    "check_id_number",
    "format_time",
    "load_object",
    "parse_request",
    "request_shipment_id",
    "origin_refusal",
    "GATEWAY_PREFIX",
    "parse_scan",
    "parse_enterprise",
    "parse_risk",
    "parse_time",
    "record_time",
    "region_prefix",
    "effective_time",
    "RISK_LEVELS",
    "LEVEL_RANK",
]


class Unparseable(ValueError):
    """The bytes are not a JSON object of the expected message: dead-letter them."""


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    code: str
    text: str


# --- limits: each one, exceeded, is rejected with its reason code (README "Input limits") -----
MAX_MESSAGE_BYTES = 64 * 1024  # too_large: a dead letter; a real request is about 1 KB
MAX_TEXT = 256  # too_long: any text field of a request (names, addresses, descriptions)
MAX_ID = 128  # too_long: shipment, scan and checkpoint ids and plates
MAX_TOKEN = 4096  # too_long: a pass token (about 400 characters today)
MAX_CARGO_LINES = 100  # too_many_lines
# Shipment ids the firms' gateway gives its firms' requests (`gw:<firm id>:<the firm's own id>`),
# which only the gateway's topic may carry (`origin_refusal`).
GATEWAY_PREFIX = "gw:"


def load_object(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        raise Unparseable("empty message value")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise Unparseable(f"too_large: the message is {len(raw)} bytes, more than {MAX_MESSAGE_BYTES}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Unparseable(f"not valid UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise Unparseable(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def canonical(obj: Any) -> bytes:
    """One byte string per value: sorted keys, no whitespace (the determinism contract)."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def kept(raw: bytes) -> bytes:
    """`raw` in an allocation of its own size, for bytes a table keeps. orjson (3.13) returns its
    output in the buffer it grew while writing, about 2.8 times the length for a pass's state:
    kept as it is, a worker's 100,000 passes took 2 GB instead of 0.4 GB (tests/unit/test_records.py)."""
    return bytes(memoryview(raw))


# Every time an input carries must fall in these years: the calendar's ends (years 1 and 9999)
# overflow date arithmetic, and no pass of this system is valid outside them.
YEARS = (2000, 2099)
_EARLIEST = datetime(YEARS[0], 1, 1, tzinfo=UTC)
_LATEST = datetime(YEARS[1] + 1, 1, 1, tzinfo=UTC)
# A departure this far from its submission is an error, not a plan.
DEPARTURE_WINDOW = timedelta(days=366)


def parse_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 timestamp string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value[:64]!r} is not an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{value[:64]!r} has no UTC offset")
    utc: datetime | None
    try:
        utc = parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+14:00 is before the calendar's start in UTC
        utc = None
    if utc is None or not _EARLIEST <= utc < _LATEST:
        raise ValueError(f"{value[:64]!r} is outside the years {YEARS[0]}-{YEARS[1]}")
    return utc


def record_time(timestamp_ms: int | None) -> datetime:
    """A Kafka record's timestamp (milliseconds since the epoch) as a UTC time."""
    return datetime.fromtimestamp((timestamp_ms or 0) / 1000, tz=UTC)


def effective_time(obj: dict[str, Any], timestamp_ms: int | None) -> datetime:
    """When a reference entry (risk level, key-list entry) takes effect: its `effective_at`, or,
    when it has none, its record time, as operators expect of an entry sent "now". The worker,
    the projector and the replay all read it here. ValueError for a bad `effective_at`, or for a
    missing one where no record time is known."""
    value = obj.get("effective_at")
    if value is None and timestamp_ms is not None:
        return record_time(timestamp_ms)
    return parse_time(value)


def format_time(value: datetime) -> str:
    # isoformat is several times faster than strftime, and this runs many times per event.
    if value.utcoffset():
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat() + "Z"


# --- identifiers -------------------------------------------------------------------------

# GB 32100-2015: 31 characters, I O Z S V excluded so they cannot be misread.
_CREDIT_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_CREDIT_VALUE = {c: i for i, c in enumerate(_CREDIT_ALPHABET)}
_CREDIT_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
_CREDIT_RE = re.compile(r"^[0-9A-HJ-NPQRTUWXY]{2}\d{6}[0-9A-HJ-NPQRTUWXY]{10}$")


@lru_cache(maxsize=65536)  # firms send many requests; a code is checked once
def check_credit_code(code: str) -> str | None:
    """None when `code` is a valid unified social credit code, else what is wrong."""
    if len(code) != 18:
        return "must be 18 characters"
    if not _CREDIT_RE.match(code):
        return "has characters outside GB 32100-2015"
    total = sum(_CREDIT_VALUE[c] * w for c, w in zip(code[:17], _CREDIT_WEIGHTS))
    expected = _CREDIT_ALPHABET[(31 - total % 31) % 31]
    if code[17] != expected:
        return f"check character is {code[17]!r}, expected {expected!r}"
    return None


_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


@lru_cache(maxsize=65536)
def check_id_number(number: str) -> str | None:
    """None when `number` is a valid 18-digit resident ID (GB 11643-1999), else what is wrong."""
    if not re.fullmatch(r"\d{17}[\dX]", number):
        return "must be 17 digits and a digit or X"
    try:
        date(int(number[6:10]), int(number[10:12]), int(number[12:14]))
    except ValueError:
        return "has an impossible date of birth"
    total = sum(int(c) * w for c, w in zip(number[:17], _ID_WEIGHTS))
    expected = "10X98765432"[total % 11]
    if number[17] != expected:
        return f"check digit is {number[17]!r}, expected {expected!r}"
    return None


_PLATE_RE = re.compile(
    r"^[京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼][A-HJ-NP-Z][A-HJ-NP-Z0-9]{4,5}[A-HJ-NP-Z0-9挂学警]$"
)
_PHONE_RE = re.compile(r"^(\+86)?1[3-9]\d{9}$")


def normalise_plate(plate: str) -> str:
    return plate.replace("·", "").replace(" ", "").upper()


# --- messages -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Party:
    credit_code: str
    name: str


@dataclass(frozen=True, slots=True)
class CargoItem:
    hs_code: str
    description: str
    quantity: float
    unit: str


@dataclass(frozen=True, slots=True)
class Location:
    """Exactly one of: an adcode, a Chinese address, or coordinates."""

    adcode: str | None = None
    address: str | None = None
    lat: float | None = None
    lon: float | None = None


@dataclass(frozen=True, slots=True)
class ShipmentRequest:
    shipment_id: str
    submitted_at: datetime
    shipper: Party
    consignee: Party
    cargo: tuple[CargoItem, ...]
    plate: str
    vehicle_type: str
    driver_name: str
    driver_id_number: str
    driver_phone: str
    origin: Location
    destination: Location
    departure_at: datetime
    trip: str
    # The driver as the firm bound it, SHA-256(salt || ID number) (`models.credential.DriverBinding`),
    # when it sent that instead of the ID number.
    driver_binding: DriverBinding | None = None
    # The firm that asked, as the gateway authenticated it (None: the firms' Kafka route, which
    # names no one the channel could vouch for).
    requested_by: str | None = None


class _Errors:
    """Collects field errors while reading a message, so one pass names every bad field."""

    def __init__(self) -> None:
        self.items: list[FieldError] = []

    def add(self, field: str, code: str, text: str) -> None:
        self.items.append(FieldError(field, code, text))

    def text(self, obj: Any, field: str, path: str | None = None, *, required: bool = True) -> str:
        path = path or field
        value = obj.get(field) if isinstance(obj, dict) else None
        if isinstance(value, str) and len(value) > MAX_TEXT:
            self.add(path, "too_long", f"{path} is longer than {MAX_TEXT} characters")
            return value[:MAX_TEXT].strip()
        if isinstance(value, str) and value.strip():
            return value.strip()
        if not required and (value is None or value == ""):
            return ""
        self.add(path, "missing" if value is None else "invalid", f"{path} must be a non-empty string")
        return ""

    def time(self, obj: dict, field: str) -> datetime | None:
        try:
            return parse_time(obj.get(field))
        except ValueError as exc:
            self.add(field, "missing" if obj.get(field) is None else "invalid", f"{field} {exc}")
            return None

    def party(self, obj: dict, field: str) -> Party:
        sub = obj.get(field)
        if not isinstance(sub, dict):
            self.add(field, "missing", f"{field} must be an object {{credit_code, name}}")
            return Party("", "")
        code = self.text(sub, "credit_code", f"{field}.credit_code").upper()
        if code:
            problem = check_credit_code(code)
            if problem:
                self.add(f"{field}.credit_code", "bad_credit_code", f"{field}.credit_code {code!r} {problem}")
        return Party(code, self.text(sub, "name", f"{field}.name"))

    def location(self, obj: dict, field: str) -> Location:
        sub = obj.get(field)
        if not isinstance(sub, dict):
            self.add(field, "missing", f"{field} must be one of {{adcode}}, {{address}} or {{lat, lon}}")
            return Location()
        if "adcode" in sub:
            code = str(sub["adcode"])
            if not re.fullmatch(r"\d{6}(\d{6})?", code):
                self.add(f"{field}.adcode", "invalid", f"{field}.adcode must be a 6-digit division code")
                return Location()
            return Location(adcode=code[:6])
        if "address" in sub:
            return Location(address=self.text(sub, "address", f"{field}.address"))
        lat, lon = sub.get("lat"), sub.get("lon")
        if (
            isinstance(lat, (int, float))
            and isinstance(lon, (int, float))
            and not isinstance(lat, bool)
            and -90 <= lat <= 90
            and -180 <= lon <= 180
        ):
            return Location(lat=float(lat), lon=float(lon))
        self.add(field, "invalid", f"{field} must be one of {{adcode}}, {{address}} or {{lat, lon}}")
        return Location()

    # --- the parts of a shipment request (parse_request), in the order their errors are listed ---

    def departure_window(self, submitted_at: datetime | None, departure_at: datetime | None) -> None:
        if submitted_at and departure_at and abs(departure_at - submitted_at) > DEPARTURE_WINDOW:
            self.add(
                "departure_at",
                "out_of_window",
                f"departure_at must be within {DEPARTURE_WINDOW.days} days of submitted_at",
            )

    def cargo(self, obj: dict) -> list[CargoItem]:
        """The cargo lines, at most MAX_CARGO_LINES; a line that is not an object is left out."""
        items = obj.get("cargo")
        if not isinstance(items, list) or not items:
            self.add("cargo", "missing", "cargo must be a non-empty list of {hs_code, description, quantity, unit}")
            items = []
        if len(items) > MAX_CARGO_LINES:
            self.add("cargo", "too_many_lines", f"cargo has {len(items)} lines, more than {MAX_CARGO_LINES}")
            items = items[:MAX_CARGO_LINES]
        lines = (self.cargo_line(f"cargo[{i}]", item) for i, item in enumerate(items))
        return [line for line in lines if line is not None]

    def cargo_line(self, path: str, item: Any) -> CargoItem | None:
        if not isinstance(item, dict):
            self.add(path, "invalid", f"{path} must be an object")
            return None
        hs = str(item.get("hs_code", "")).replace(".", "").strip()
        if not re.fullmatch(r"\d{4,10}", hs):
            self.add(f"{path}.hs_code", "bad_hs_code", f"{path}.hs_code must be 4 to 10 digits")
        qty = item.get("quantity")
        if isinstance(qty, bool) or not isinstance(qty, (int, float)) or not qty > 0:
            self.add(f"{path}.quantity", "invalid", f"{path}.quantity must be a positive number")
            qty = 0
        return CargoItem(
            hs,
            self.text(item, "description", f"{path}.description", required=False),
            float(qty),
            self.text(item, "unit", f"{path}.unit", required=False),
        )

    def member(self, obj: dict, field: str, shape: str) -> dict:
        """The object at `field` (the vehicle, the driver), or {} when it is missing or empty."""
        sub = obj.get(field)
        if not isinstance(sub, dict):
            sub = {}
        if not sub:
            self.add(field, "missing", f"{field} must be an object {shape}")
        return sub

    def plate(self, vehicle: dict) -> str:
        plate = normalise_plate(self.text(vehicle, "plate", "vehicle.plate")) if vehicle else ""
        if plate and not _PLATE_RE.match(plate):
            self.add("vehicle.plate", "bad_plate", f"vehicle.plate {plate!r} is not a Chinese vehicle plate")
        return plate

    def id_number(self, driver: dict, *, required: bool = True) -> str:
        id_number = self.text(driver, "id_number", "driver.id_number", required=required).upper() if driver else ""
        if id_number and (problem := check_id_number(id_number)):
            self.add("driver.id_number", "bad_id_number", f"driver.id_number {problem}")
        return id_number

    def binding(self, driver: dict) -> DriverBinding | None:
        """The driver's binding the firm computed (its ID number then need not be sent at all)."""
        if not driver or driver.get("binding") is None:
            return None
        try:
            return DriverBinding.from_wire(driver["binding"])
        except ValueError as exc:
            self.add("driver.binding", "invalid", str(exc))
            return None

    def phone(self, driver: dict) -> str:
        phone = self.text(driver, "phone", "driver.phone").replace(" ", "").replace("-", "") if driver else ""
        if phone and not _PHONE_RE.match(phone):
            self.add("driver.phone", "bad_phone", "driver.phone must be a mainland mobile number")
        return phone

    def trip(self, obj: dict) -> str:
        trip = obj.get("trip", "single")
        if trip not in ("single", "multi"):
            self.add("trip", "invalid", "trip must be 'single' or 'multi'")
            return "single"
        return trip


def request_shipment_id(obj: dict[str, Any], fallback_id: str | None = None) -> str:
    """The shipment id a request is answered to: its `shipment_id`, else `fallback_id` (the message
    key). Raises Unparseable when there is none, or it is too long. The audit orders requests by it."""
    sid = obj.get("shipment_id")
    if not isinstance(sid, str) or not sid.strip():
        if not fallback_id:
            raise Unparseable("no shipment_id in the value and no message key")
        sid = fallback_id
    sid = sid.strip()
    if len(sid) > MAX_ID:
        raise Unparseable(f"too_long: shipment_id is longer than {MAX_ID} characters")
    return sid


def parse_request(obj: dict[str, Any], *, fallback_id: str | None = None) -> tuple[ShipmentRequest, list[FieldError]]:
    """Read a ShipmentRequest; the error list names each bad field (empty when valid).

    Raises Unparseable when there is no shipment id to answer to.
    """
    sid = request_shipment_id(obj, fallback_id)
    e = _Errors()
    submitted_at = e.time(obj, "submitted_at")
    departure_at = e.time(obj, "departure_at")
    e.departure_window(submitted_at, departure_at)
    shipper = e.party(obj, "shipper")
    consignee = e.party(obj, "consignee")
    cargo = e.cargo(obj)
    vehicle = e.member(obj, "vehicle", "{plate, type}")
    plate = e.plate(vehicle)
    driver = e.member(obj, "driver", "{name, id_number or binding, phone}")
    binding = e.binding(driver)
    id_number = e.id_number(driver, required=binding is None and not (driver and "binding" in driver))
    phone = e.phone(driver)
    trip = e.trip(obj)

    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    request = ShipmentRequest(
        shipment_id=sid,
        submitted_at=submitted_at or epoch,
        shipper=shipper,
        consignee=consignee,
        cargo=tuple(cargo),
        plate=plate,
        vehicle_type=str(vehicle.get("type", "")) if vehicle else "",
        driver_name=e.text(driver, "name", "driver.name") if driver else "",
        driver_id_number=id_number,
        driver_phone=phone,
        origin=e.location(obj, "origin"),
        destination=e.location(obj, "destination"),
        departure_at=departure_at or epoch,
        trip=trip,
        driver_binding=binding,
        requested_by=obj.get("requested_by") if isinstance(obj.get("requested_by"), str) else None,
    )
    return request, e.items


def origin_refusal(obj: dict[str, Any], shipment_id: str, *, via_gateway: bool) -> str | None:
    """Why a request cannot be taken from where it came, or None. `requested_by` names the firm the
    gateway authenticated, so only the gateway's topic may carry it, and the gateway's shipment ids
    (`GATEWAY_PREFIX`) are its firms' own: a request on the firms' topic naming either would claim
    another firm's identity or take its id first."""
    requested_by = obj.get("requested_by")
    if not via_gateway:
        if shipment_id.startswith(GATEWAY_PREFIX):
            return f"reserved: shipment ids beginning {GATEWAY_PREFIX!r} are given by the firms' gateway"
        if requested_by is not None:
            return "requested_by: written only by the firms' gateway, for the firm it authenticated"
        return None
    if not isinstance(requested_by, str) or not shipment_id.startswith(f"{GATEWAY_PREFIX}{requested_by}:"):
        return "requested_by: a gateway request names its firm, and its shipment id is that firm's"
    return None


@dataclass(frozen=True, slots=True)
class CheckpointScan:
    scan_id: str
    checkpoint_id: str
    pass_id: str | None
    token: str | None
    plate: str
    kind: str
    scanned_at: datetime


def parse_scan(obj: dict[str, Any]) -> CheckpointScan:
    """Scans are machine-made; any bad field makes the scan unusable (dead letter)."""
    problems = []
    for field in ("scan_id", "checkpoint_id", "plate"):
        if not isinstance(obj.get(field), str) or not obj[field].strip():
            problems.append(f"{field} must be a non-empty string")
        elif len(obj[field]) > MAX_ID:
            problems.append(f"too_long: {field} is longer than {MAX_ID} characters")
    pass_id, token = obj.get("pass_id"), obj.get("token")
    if isinstance(token, str) and len(token) > MAX_TOKEN:
        problems.append(f"too_long: token is longer than {MAX_TOKEN} characters")
    if pass_id is not None and not (isinstance(pass_id, str) and re.fullmatch(r"\d{12}", pass_id)):
        problems.append("pass_id must be 12 digits")
        pass_id = None
    if token is not None and not isinstance(token, str):
        # A token is text (a QR code's); anything else is a malformed scan, never a scan without one.
        problems.append(f"bad_token: token must be a string, not {type(token).__name__}")
        token = None
    if pass_id is None and token is None:
        problems.append("a scan needs pass_id or token")
    kind = obj.get("kind")
    if kind not in ("arrival", "departure"):
        problems.append("kind must be 'arrival' or 'departure'")
    try:
        scanned_at = parse_time(obj.get("scanned_at"))
    except ValueError as exc:
        problems.append(f"scanned_at {exc}")
        scanned_at = None
    if problems:
        raise Unparseable("; ".join(problems))
    assert kind is not None and scanned_at is not None  # else `problems` named them
    return CheckpointScan(
        obj["scan_id"].strip(),
        obj["checkpoint_id"].strip(),
        pass_id,
        token,
        normalise_plate(obj["plate"]),
        kind,
        scanned_at,
    )


@dataclass(frozen=True, slots=True)
class RegionRisk:
    adcode: str  # 2-, 4- or 6-digit prefix
    level: str
    effective_at: datetime


# The risk levels a region may be declared at, least risky first; a level's rank is its index.
RISK_LEVELS = ("low", "medium", "high")
LEVEL_RANK = {level: rank for rank, level in enumerate(RISK_LEVELS)}


def parse_risk(
    obj: dict[str, Any], *, timestamp_ms: int | None = None, is_region: Callable[[str], bool] | None = None
) -> RegionRisk:
    """A risk entry; `timestamp_ms` (its record time) stands in for a missing `effective_at`, and
    `is_region`, when given, says whether the adcode names a region (e.g. the gazetteer's)."""
    code = str(obj.get("adcode", ""))
    if not re.fullmatch(r"\d{2}|\d{4}|\d{6}", code):
        raise Unparseable("adcode must be a 2-digit province, 4-digit prefecture or 6-digit county code")
    if obj.get("level") not in RISK_LEVELS:
        raise Unparseable("level must be low, medium or high")
    try:
        at = effective_time(obj, timestamp_ms)
    except ValueError as exc:
        raise Unparseable(f"effective_at {exc}") from None
    # 420000 and 420100 name the province and the prefecture; store them as their prefix.
    code = region_prefix(code)
    if is_region is not None and not is_region(code):
        raise Unparseable(f"adcode {obj['adcode']} names no province, prefecture or county of the gazetteer")
    return RegionRisk(code, obj["level"], at)


def region_prefix(code: str) -> str:
    """The prefix a 2-, 4- or 6-digit adcode stands for: 420000 is 42, 420100 is 4201."""
    if len(code) == 6 and code.endswith("0000"):
        return code[:2]
    if len(code) == 6 and code.endswith("00"):
        return code[:4]
    return code


@dataclass(frozen=True, slots=True)
class EnterpriseEntry:
    credit_code: str
    name: str
    action: str
    effective_at: datetime


def parse_enterprise(obj: dict[str, Any], *, timestamp_ms: int | None = None) -> EnterpriseEntry:
    """A key-list entry; `timestamp_ms` (its record time) stands in for a missing `effective_at`."""
    code = str(obj.get("credit_code", "")).upper()
    if problem := check_credit_code(code):
        raise Unparseable(f"credit_code {problem}")
    if obj.get("action") not in ("add", "remove"):
        raise Unparseable("action must be 'add' or 'remove'")
    try:
        at = effective_time(obj, timestamp_ms)
    except ValueError as exc:
        raise Unparseable(f"effective_at {exc}") from None
    return EnterpriseEntry(code, str(obj.get("name", "")), obj["action"], at)
