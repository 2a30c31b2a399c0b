"""Parsing and field validation of the wire messages."""

import orjson
import pytest

from models.records import (
    Unparseable,
    canonical,
    check_credit_code,
    check_id_number,
    load_object,
    parse_request,
    parse_risk,
    parse_scan,
)
from tests.support.factories import REAL_CREDIT_CODES, allocated, good_request


@pytest.mark.parametrize("code", REAL_CREDIT_CODES)
def test_real_credit_codes_pass(code):
    assert check_credit_code(code) is None


@pytest.mark.parametrize(
    "code,problem",
    [
        ("91330100799655058C", "check character"),
        ("9133010079965505", "18 characters"),
        ("91330100799655058I", "outside GB 32100"),
    ],
)
def test_bad_credit_codes_say_why(code, problem):
    assert problem in check_credit_code(code)


def test_id_numbers():
    assert check_id_number("11010519491231002X") is None
    assert check_id_number("440524188001010014") is None
    assert "check digit" in check_id_number("110105194912310021")
    assert "date of birth" in check_id_number("110105194913310029")


def test_valid_request_parses_clean():
    request, errors = parse_request(good_request())
    assert errors == []
    assert request.plate == "鄂A12345"
    assert request.cargo[0].hs_code == "630790"
    assert request.submitted_at.isoformat() == "2020-02-25T00:00:00+00:00"


def test_every_bad_field_is_named():
    body = good_request(
        submitted_at="yesterday",
        trip="twice",
        vehicle={"plate": "XX12345"},
        driver={"name": "x", "id_number": "110105194912310021", "phone": "123"},
    )
    body["shipper"]["credit_code"] = "91330100799655058C"
    body["cargo"][0]["hs_code"] = "63"
    _, errors = parse_request(body)
    assert {e.field for e in errors} == {
        "submitted_at",
        "trip",
        "vehicle.plate",
        "driver.id_number",
        "driver.phone",
        "shipper.credit_code",
        "cargo[0].hs_code",
    }


def test_request_without_any_id_is_unparseable():
    body = good_request()
    del body["shipment_id"]
    with pytest.raises(Unparseable):
        parse_request(body)
    request, _ = parse_request(body, fallback_id="from-key")
    assert request.shipment_id == "from-key"


@pytest.mark.parametrize("raw", [b"{oops", b"[1]", b"\xff\xfe", None])
def test_non_objects_are_unparseable(raw):
    with pytest.raises(Unparseable):
        load_object(raw)


def test_risk_prefixes_normalised():
    assert parse_risk({"adcode": "420000", "level": "high", "effective_at": "2020-02-25T00:00:00Z"}).adcode == "42"
    assert parse_risk({"adcode": "420100", "level": "high", "effective_at": "2020-02-25T00:00:00Z"}).adcode == "4201"
    with pytest.raises(Unparseable):
        parse_risk({"adcode": "420100", "level": "severe", "effective_at": "2020-02-25T00:00:00Z"})


def test_scan_needs_pass_or_token():
    with pytest.raises(Unparseable, match="pass_id or token"):
        parse_scan(
            {
                "scan_id": "x",
                "checkpoint_id": "c",
                "plate": "鄂A12345",
                "kind": "arrival",
                "scanned_at": "2020-02-25T00:00:00Z",
            }
        )


# --- bytes a table keeps -------------------------------------------------------------------------


def test_orjson_output_holds_more_than_its_length_and_kept_holds_its_own():
    """The premise of `kept`: orjson returns its output in the buffer it grew while writing."""
    from models.records import kept

    state = {f"field{i}": "湖北省武汉市" * 4 for i in range(60)}
    size, raw = allocated(lambda: canonical(state))
    assert size > 2 * len(raw)
    size, copy = allocated(lambda: kept(raw))
    assert copy == raw and size < len(raw) + 200


def test_what_the_worker_tables_keep_takes_about_its_length():
    """A worker's 100,000 passes took 2 GB of memory kept as orjson returned them (0.4 GB recovered
    from the changelog): the tables keep right-sized copies."""
    from streams.dev.simulator import Scenario
    from streams.handlers import RecordMeta, Tables
    from tests.support.factories import make_pipeline

    pipeline, scenario = make_pipeline(), Scenario(seed=3)
    requests = [orjson.dumps(scenario.request(n, kind="P0")) for n in range(150)]

    def decide_all(tables):
        for offset, value in enumerate(requests):
            pipeline.on_request(None, value, RecordMeta(pipeline.topics.requests, 0, offset, 0), tables=tables)
        return tables

    decide_all(Tables.empty())  # routes and the rest cached: the second run allocates what it keeps
    size, tables = allocated(lambda: decide_all(Tables.empty()))
    stored = sum(len(v) for t in (tables.passes, tables.decided) for v in t.values())
    assert len(tables.passes) > 100
    assert size < 1.5 * stored, (size, stored)
