"""The operators' files and entries without a broker: the key-enterprise CSV and risk entries (the commands
through the running system: tests/integration/test_console_commands.py)."""

from __future__ import annotations

import pytest

from models.operators import EntryError, enterprise_csv, read_enterprise_csv, risk_entry
from models.records import parse_time
from routing import Gazetteer
from tests.support.factories import bad_check, codes

AT = parse_time("2020-02-25T08:00:00Z")


def test_the_csv_reader_names_each_bad_row_by_line_and_keeps_the_good_ones():
    a, b, c = codes(1, 3)
    text = (
        "\ufeffcredit_code,name,contact\n"
        f"{a},武汉某口罩厂,张\n"
        f"{bad_check(b)},坏校验码公司,李\n"
        "\n"
        f"{c},某汽车零部件厂,\n"
        f"{a},重复的公司,王\n"
        f"{b},,赵\n"
    )
    rows = read_enterprise_csv(text, at=AT)
    assert [(line, e["credit_code"], e["name"]) for line, e in rows.good] == [
        (2, a, "武汉某口罩厂"),
        (5, c, "某汽车零部件厂"),
    ]
    assert [line for line, _ in rows.bad] == [3, 6, 7]
    assert "check character" in rows.bad[0][1] and "repeats line 2" in rows.bad[1][1]
    assert rows.bad[2][1] == "name must not be empty"
    again = read_enterprise_csv(enterprise_csv([(e["credit_code"], e["name"]) for _, e in rows.good]), at=AT)
    assert [e for _, e in again.good] == [e for _, e in rows.good] and again.bad == []


def test_a_csv_without_the_columns_is_refused_whole():
    with pytest.raises(EntryError, match="line 1: the header must name credit_code, name"):
        read_enterprise_csv("code,company\n91330100799655058B,x\n", at=AT)


@pytest.mark.parametrize("adcode, stored", [("4201", "4201"), ("420100", "4201"), ("42", "42"), ("420111", "420111")])
def test_a_risk_entry_names_a_region_of_the_gazetteer(adcode, stored):
    entry = risk_entry(adcode, "high", at=AT, is_region=Gazetteer.default().names_region, note="通告第1号")
    assert entry == {"adcode": adcode, "level": "high", "effective_at": "2020-02-25T08:00:00Z", "note": "通告第1号"}
    for bad, why in (("999999", "names no province"), ("4201", "level must be")):
        with pytest.raises(EntryError, match=why):
            risk_entry(bad, "high" if bad == "999999" else "severe", at=AT, is_region=Gazetteer.default().names_region)
