"""Risk levels and the key-enterprise list as of a moment."""

from datetime import UTC, datetime

from models.records import EnterpriseEntry, RegionRisk
from models.reference import EnterpriseBook, RiskBook


def t(day, hour=0):
    return datetime(2020, 2, day, hour, tzinfo=UTC)


def test_unknown_region_is_low():
    assert RiskBook().level_at("420111", t(25)) == "low"


def test_prefix_applies_to_counties_inside_and_levels_take_the_maximum():
    book = RiskBook()
    book.apply(RegionRisk("42", "medium", t(20)))
    book.apply(RegionRisk("4201", "high", t(21)))
    assert book.level_at("420111", t(20, 12)) == "medium"
    assert book.level_at("420111", t(22)) == "high"
    assert book.level_at("420602", t(22)) == "medium"  # another prefecture of the province
    assert book.level_at("430104", t(22)) == "low"


def test_levels_are_as_of_the_time_asked_whatever_the_arrival_order():
    early, late = RegionRisk("4201", "high", t(21)), RegionRisk("4201", "low", t(23))
    a, b = RiskBook(), RiskBook()
    a.apply(early)
    a.apply(late)
    b.apply(late)
    b.apply(early)
    for book in (a, b):
        assert [book.level_at("420111", t(d)) for d in (20, 22, 24)] == ["low", "high", "low"]


def test_redelivery_changes_nothing():
    book = RiskBook()
    assert book.apply(RegionRisk("4201", "high", t(21)))
    assert not book.apply(RegionRisk("4201", "high", t(21)))
    assert len(book) == 1


def test_blocked_nodes_are_cached_per_interval():
    book = RiskBook()
    book.apply(RegionRisk("4201", "high", t(21)))

    def nodes(prefix):
        return {prefix[:4]}

    first = book.blocked_at(t(22), nodes)
    assert first == {"4201"}
    assert book.blocked_at(t(23), nodes) is first
    assert book.blocked_at(t(20), nodes) == frozenset()


def test_enterprise_list_history():
    book = EnterpriseBook()
    code = "91330100799655058B"
    book.apply(EnterpriseEntry(code, "A", "add", t(20)))
    book.apply(EnterpriseEntry(code, "A", "remove", t(24)))
    assert not book.is_listed(code, t(19))
    assert book.is_listed(code, t(22))
    assert not book.is_listed(code, t(25))
