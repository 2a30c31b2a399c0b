"""The catalog and the eligibility rules of the guidance."""

from datetime import UTC, datetime

import pytest

from models.policy import assess, load_catalog
from models.records import CargoItem, EnterpriseEntry, parse_request
from models.reference import EnterpriseBook
from tests.support.factories import REAL_CREDIT_CODES, good_request

AT = datetime(2020, 2, 25, tzinfo=UTC)
catalog = load_catalog()


@pytest.mark.parametrize(
    "hs,description,expected",
    [
        ("901920", "", "P0"),  # ventilator (§2)
        ("560311", "", "P0"),  # melt-blown fabric: an input of masks (§2 whole chain)
        ("310210", "", "P1"),  # fertiliser (§5)
        ("100630", "", "P1"),  # rice
        ("870829", "", "P2"),  # auto parts (§6)
        ("842952", "", "P3"),  # excavator (§7)
        ("392310", "", "P2"),  # food packaging material (§6 supporting industries)
        ("9999", "一次性医用口罩", "P0"),  # unknown HS, keyword decides
        ("9999", "食品包装材料", "P2"),  # the longer keyword wins over 食品
    ],
)
def test_classification(hs, description, expected):
    assert catalog.classify(CargoItem(hs, description, 1, "x"))[0] == expected


def test_goods_outside_every_class():
    assert catalog.classify(CargoItem("950300", "toys", 1, "x")) is None


def test_no_prefix_in_two_classes():
    seen = {}
    for name, cls in catalog.classes.items():
        for prefix in cls.hs_prefixes:
            assert prefix not in seen, (prefix, seen.get(prefix), name)
            seen[prefix] = name


def request_with(hs, **over):
    body = good_request(**over)
    body["cargo"] = [{"hs_code": h, "description": "", "quantity": 1, "unit": "x"} for h in hs]
    request, errors = parse_request(body)
    assert errors == []
    return request


def listed(*codes):
    book = EnterpriseBook()
    for code in codes:
        book.apply(EnterpriseEntry(code, "", "add", AT.replace(day=1)))
    return book


def run(request, enterprises=None, origin="low", destination="low"):
    return assess(
        request,
        catalog=catalog,
        enterprises=enterprises or EnterpriseBook(),
        origin_level=origin,
        destination_level=destination,
        at=AT,
    )


def test_medical_needs_no_key_enterprise_and_is_toll_exempt():
    result = run(request_with(["630790"]))
    assert result.approved and result.priority == "P0" and result.toll_exempt
    assert result.validity_hours == catalog.validity_hours("single", "low")


def test_key_industry_needs_a_listed_party():
    assert run(request_with(["870829"])).reasons[0].code == "no_key_enterprise"
    by_consignee = run(request_with(["870829"]), listed(REAL_CREDIT_CODES[1]))
    assert by_consignee.approved and by_consignee.priority == "P2" and not by_consignee.toll_exempt
    assert any("supply-chain" in r.text for r in by_consignee.reasons)


def test_high_risk_admits_only_p0_and_p1():
    assert run(request_with(["310210"]), destination="high").approved
    refused = run(request_with(["842952"]), listed(REAL_CREDIT_CODES[0]), origin="high")
    assert not refused.approved and refused.reasons[0].code == "high_risk_region"


def test_medium_risk_shortens_validity():
    low = run(request_with(["630790"]))
    medium = run(request_with(["630790"]), destination="medium")
    assert medium.approved and medium.validity_hours < low.validity_hours


def test_mixed_cargo_takes_the_least_priority_class():
    result = run(request_with(["630790", "842952"]), listed(REAL_CREDIT_CODES[0]))
    assert result.priority == "P3" and not result.toll_exempt
    assert not run(request_with(["630790", "842952"]), listed(REAL_CREDIT_CODES[0]), origin="high").approved


def test_one_unclassified_line_rejects_the_whole_vehicle():
    result = run(request_with(["630790", "950300"]))
    assert not result.approved
    assert [r.field for r in result.reasons] == ["cargo[1].hs_code"]
