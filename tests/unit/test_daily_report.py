"""`greenchannel report`: the day's figures (models/daily.py) on constructed data, from a database made by
the migrations and from the log's records, equal from both sources on a worker's day; the PDF and CSV
writers; the command (through the broker: tests/integration/test_report_live.py)."""

from __future__ import annotations

import csv
from contextlib import ExitStack
from datetime import UTC, date, datetime

import pypdfium2 as pdfium
import pytest
from sqlalchemy import delete, func, select
from sqlmodel import Session, col

from models.daily import CHINA_STANDARD_TIME, Day, DwellRow, day_figures, differences, nearest_rank
from models.store.db import make_engine, project_batch, upgrade
from models.store.tables import PassEvent, Shipment
from routing import Gazetteer
from streams.audit.rebuild import _in_projector_order
from streams.cli import main
from streams.daily.csvs import write_csv
from streams.daily.pdf import report_pdf
from streams.daily.sources import database_facts, log_facts
from streams.daily.view import Names
from streams.projector import Item, shape, write
from streams.settings import get_settings
from tests.support.factories import T, make_pipeline
from tests.support.projections import ROUTE_A, ROUTE_B, checkpoint, decision, fresh_postgres_database, status
from tests.unit.test_db import BACKENDS, PG_URL
from tests.unit.test_replay import FakeLog, event_order, run_worker, scenario_inputs

DAY = Day(date(2020, 2, 20))  # China Standard Time: 2020-02-19T16:00Z to 2020-02-20T16:00Z
UTC_DAY = Day(date(2020, 2, 20), UTC)
CROSSING = "BX-4201-4403"  # a crossing between Wuhan (Hubei, 42) and Shenzhen (Guangdong, 44)
TO_WUHAN = {
    **ROUTE_A,
    "adcodes": ["440305", "420111"],
    "checkpoints": [
        checkpoint(CROSSING, "440305", 22.54, 113.93, "2020-02-20T09:00:00+08:00"),
        checkpoint("DST-420111", "420111", 30.5, 114.4, "2020-02-20T12:00:00+08:00"),
    ],
}
HUBEI_FIRM, GUANGDONG_FIRM = "91420100799655058B", "9144030071526726XG"  # registered in Hubei, Guangdong


def approved(sid: str, pid: str, priority: str, at: str, route: dict = ROUTE_A) -> dict:
    d = decision(sid, pid, priority=priority, route=route)
    d["decided_at"] = at
    return d


def rejected(sid: str, codes: list[str], at: str) -> dict:
    d = decision(sid, None)
    d["reasons"] = [{"code": c, "text": c} for c in codes]
    d["decided_at"] = at
    return d


def departure(pid: str, n: int, at: str, checkpoint_id: str, dwell: float) -> tuple[str, dict]:
    e = status(pid, "in_transit", at, checkpoint_id=checkpoint_id, dwell=dwell, exceeded=dwell > 900)
    return f"dep/{pid}/{n}", e


def constructed() -> dict[str, list]:
    """A day's decisions, statuses and list entries, with others on either side of its bounds."""
    decisions = [
        approved("S1", "440305000001", "P1", "2020-02-20T00:00:00Z"),
        approved("S2", "440305000002", "P1", "2020-02-20T15:59:59Z"),  # 23:59:59 in Beijing
        approved("S3", "420111000003", "P0", "2020-02-20T00:00:00+08:00"),  # the day's first instant
        approved("S4", "420111000004", "P2", "2020-02-20T16:00:00Z"),  # the next day in Beijing
        approved("S5", "110105000005", "P3", "2020-02-19T15:59:00Z", TO_WUHAN),  # the day before
        approved("S6", "440305000006", "P2", "2020-02-20T03:00:00Z", TO_WUHAN),
        rejected("R1", ["not_essential", "bad_id_number", "not_essential"], "2020-02-20T01:00:00Z"),
        rejected("R2", ["not_essential"], "2020-02-20T02:00:00Z"),
        rejected("R3", ["bad_hs_code"], "2020-02-21T02:00:00Z"),
    ]
    at = "2020-02-20T10:00:00+08:00"
    reroute = status(
        "440305000001", "rerouted", at, reason="route_crossed_high_risk_region", route=ROUTE_B, token="a.b"
    )
    statuses = [
        ("r1", reroute),
        ("r2", {**reroute, "at": "2020-02-20T11:00:00+08:00"}),
        ("r3", status("440305000006", "rerouted", at, reason="token_reissued", route=TO_WUHAN, token="c.d")),
        ("s1", status("420111000003", "suspended", at, reason="no_signing_key: 0123456789abcdef")),
        ("v1", status("110105000005", "revoked", at, reason="key_enterprise_removed")),
        ("v2", status("110105000005", "revoked", "2020-02-21T10:00:00+08:00", reason="key_enterprise_removed")),
        *(departure("440305000001", n, at, CROSSING, 120.0 * n) for n in range(1, 11)),
        departure("440305000002", 1, at, "DST-440106", 300.0),
        departure("440305000002", 2, "2020-02-20T16:30:00Z", "DST-440106", 2000.0),  # the next day in Beijing
    ]
    enterprises = [
        {"credit_code": HUBEI_FIRM, "name": "武汉医药", "action": "add", "effective_at": "2020-02-20T10:00:00+08:00"},
        {"credit_code": GUANGDONG_FIRM, "name": "深圳物流", "action": "remove", "effective_at": "2020-02-20T01:00:00Z"},
        {"credit_code": GUANGDONG_FIRM, "name": "深圳物流", "action": "add", "effective_at": "2020-02-18T01:00:00Z"},
    ]
    return {"decisions": decisions, "statuses": statuses, "enterprises": enterprises}


@pytest.fixture(params=BACKENDS)
def engine(request, tmp_path):
    """A database made by the migrations (0004 included): SQLite, and PostgreSQL when the lane has one."""
    with ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'greenchannel.db'}"
        else:
            url = stack.enter_context(fresh_postgres_database(PG_URL))
        upgrade(url)
        engine = make_engine(url)
        yield engine
        engine.dispose()


def project(engine, batch: dict[str, list]) -> None:
    with Session(engine) as session:
        project_batch(session, **batch)


def from_database(engine, day: Day, province: str | None = None):
    with Session(engine) as session:
        return day_figures(database_facts(session, day), day, province)


def items_of(batch: dict[str, list]) -> list[Item]:
    return [Item(kind, row, "test") for kind in ("decisions", "statuses", "enterprises") for row in batch[kind]]


# --- the figures --------------------------------------------------------------------------------------


def test_the_figures_of_a_constructed_day_from_the_database(engine):
    project(engine, constructed())
    fig = from_database(engine, DAY)
    assert [(r.province, r.by_class) for r in fig.issued] == [("42", (1, 0, 0, 0)), ("44", (0, 2, 1, 0))]
    assert fig.passes_issued == 4
    assert [(r.code, r.requests) for r in fig.rejections] == [("not_essential", 2), ("bad_id_number", 1)]
    assert fig.rejected_requests == 2
    assert [(r.status, r.cause, r.events, r.passes) for r in fig.interventions] == [
        ("rerouted", "route_crossed_high_risk_region", 2, 1),  # a reissued token is no reroute
        ("suspended", "no_signing_key", 1, 1),
        ("revoked", "key_enterprise_removed", 1, 1),
    ]
    assert fig.dwell == (
        DwellRow(CROSSING, 10, 660.0, 1080.0, 3),  # 120 s .. 1200 s: three over 15 minutes
        DwellRow("DST-440106", 1, 300.0, 300.0, 0),
    )
    assert fig.dwell[0].share_over_target == pytest.approx(0.3)
    assert [(c.origin, c.destination, c.passes) for c in fig.corridors] == [
        ("4403", "4401", 2),
        ("4201", "4401", 1),  # ties by origin, then destination
        ("4403", "4201", 1),
    ]
    assert [(c.credit_code, c.action, c.name) for c in fig.list_changes] == [
        (GUANGDONG_FIRM, "remove", "深圳物流"),
        (HUBEI_FIRM, "add", "武汉医药"),
    ]


def test_the_day_is_beijings_unless_asked_in_utc(engine):
    project(engine, constructed())
    assert from_database(engine, DAY).passes_issued == 4
    utc = from_database(engine, UTC_DAY)  # S3 (16:00Z the day before) out, S4 (16:00Z) in
    assert [(r.province, r.by_class) for r in utc.issued] == [("42", (0, 0, 1, 0)), ("44", (0, 2, 1, 0))]
    assert [r.departures for r in utc.dwell] == [10, 2]
    assert DAY.start == datetime(2020, 2, 19, 16, tzinfo=UTC) and DAY.end == datetime(2020, 2, 20, 16, tzinfo=UTC)
    assert Day(date(2020, 2, 20), CHINA_STANDARD_TIME).holds(datetime(2020, 2, 19, 16, tzinfo=UTC))


def test_a_province_restricts_each_figure_by_its_own_place(engine):
    project(engine, constructed())
    hubei = from_database(engine, DAY, "42")
    assert [(r.province, r.by_class) for r in hubei.issued] == [("42", (1, 0, 0, 0))]  # the issuing county's
    assert [(r.status, r.cause) for r in hubei.interventions] == [("suspended", "no_signing_key")]
    assert [r.checkpoint_id for r in hubei.dwell] == [CROSSING]  # a crossing counts in both provinces
    assert [(c.origin, c.destination) for c in hubei.corridors] == [("4201", "4401"), ("4403", "4201")]  # either end
    assert [c.credit_code for c in hubei.list_changes] == [HUBEI_FIRM]  # the registering authority's
    assert hubei.rejections_nationwide and hubei.rejected_requests == 2  # a rejection names no county
    guangdong = from_database(engine, DAY, "44")
    assert [r.checkpoint_id for r in guangdong.dwell] == [CROSSING, "DST-440106"]
    assert guangdong.passes_issued == 3 and not from_database(engine, DAY).rejections_nationwide


def test_a_redelivered_batch_changes_no_figure(engine):
    batch = constructed()
    project(engine, batch)
    before = from_database(engine, DAY)
    project(engine, batch)
    assert from_database(engine, DAY) == before


def test_the_log_gives_the_databases_figures_and_differences_name_what_the_database_lost(engine):
    batch = constructed()
    project(engine, batch)
    items = items_of(batch) + items_of({"decisions": batch["decisions"][:2], "statuses": [], "enterprises": []})
    for day in (DAY, UTC_DAY):
        for province in (None, "42", "44", "11"):
            assert differences(from_database(engine, day, province), day_figures(log_facts(items), day, province)) == []
    with Session(engine) as session:
        session.exec(delete(PassEvent).where(col(PassEvent.event_id) == "dep/440305000001/4"))
        session.commit()
    found = differences(from_database(engine, DAY), day_figures(log_facts(items), DAY))
    assert found == [
        "dwell: database DwellRow(checkpoint_id='BX-4201-4403', departures=9, median_seconds=720.0, "
        "p90_seconds=1200.0, over_target=3)",
        "dwell: log DwellRow(checkpoint_id='BX-4201-4403', departures=10, median_seconds=660.0, "
        "p90_seconds=1080.0, over_target=3)",
    ]


def test_nearest_rank_is_a_value_that_occurred():
    assert nearest_rank([5.0], 0.9) == 5.0
    assert nearest_rank([float(n) for n in range(10, 0, -1)], 0.9) == 9.0
    assert nearest_rank([float(n) for n in range(1, 12)], 0.9) == 10.0


# --- a worker's day: the database the projector writes, against the log ---------------------------------


@pytest.fixture(scope="module")
def worker_day(tmp_path_factory):
    """A worker's log (key enterprises, requests, Hunan raised to high risk between two waves, every truck's
    scans), projected with the projector's shape and writes into a database made by the migrations."""
    inputs, _decisions = scenario_inputs(seed=47)
    log = FakeLog()
    run_worker(make_pipeline(), log, event_order(inputs))
    topics = [T.decisions, T.status, T.enterprises]
    ordered = _in_projector_order({t: log.topic(t) for t in topics}, topics)
    items = shape(T, ordered).items
    url = f"sqlite:///{tmp_path_factory.mktemp('worker-day') / 'greenchannel.db'}"
    upgrade(url)
    engine = make_engine(url)
    write(engine, items)
    yield engine, items
    engine.dispose()


def test_a_worker_days_figures_are_the_databases_rows_and_the_logs(worker_day):
    engine, items = worker_day
    day = Day(date(2020, 3, 1))
    fig = from_database(engine, day)
    with Session(engine) as session:
        in_day = (col(Shipment.decided_at) >= day.start, col(Shipment.decided_at) < day.end)
        approved_rows = session.scalar(select(func.count()).where(Shipment.decision == "approved", *in_day))
        rejected_rows = session.scalar(select(func.count()).where(Shipment.decision == "rejected", *in_day))
        departures = session.scalar(
            select(func.count()).where(
                col(PassEvent.dwell_seconds).is_not(None), col(PassEvent.at) >= day.start, col(PassEvent.at) < day.end
            )
        )
    assert fig.passes_issued == approved_rows > 30 and fig.rejected_requests == rejected_rows > 0
    assert sum(r.departures for r in fig.dwell) == departures > 10
    assert {"rerouted", "suspended"} & {r.status for r in fig.interventions}  # Hunan raised to high risk
    assert sum(c.passes for c in fig.corridors) <= fig.passes_issued and fig.corridors[0].passes >= 1
    for d in (day, Day(date(2020, 3, 2)), Day(date(2020, 3, 1), UTC)):
        for province in (None, "42", "43", "44"):
            assert differences(from_database(engine, d, province), day_figures(log_facts(items), d, province)) == []


# --- the writers --------------------------------------------------------------------------------------


def names() -> Names:
    return Names(region=Gazetteer.default().region_name, checkpoint=lambda c: {CROSSING: "湖北—广东 border"}.get(c, ""))


def test_the_pdf_embeds_a_chinese_font_and_says_each_table_in_both_languages(engine):
    project(engine, constructed())
    data = report_pdf(from_database(engine, DAY), names(), source="sqlite:///test.db", proof="已核验 proven")
    doc = pdfium.PdfDocument(data)
    text = "".join(doc[i].get_textpage().get_text_range() for i in range(len(doc)))
    for heading in (
        "绿色通道日报",
        "按类别和省份签发的通行证",
        "Passes issued by class and province",
        "按原因驳回的申请",
        "改道、暂停与撤销",
        "各检查站停留时间",
        "最繁忙通道",
        "重点企业名单变更",
        "湖北省",
        "广东省深圳市",
        "武汉医药",
        "11.0 min",  # the crossing's median, 660 s
    ):
        assert heading in text, heading
    page = doc[0].render(scale=1).to_pil().convert("L")
    dark = sum(page.histogram()[:128])  # pixels darker than mid-grey
    assert dark > 5000  # glyphs drawn, not empty boxes or a blank page
    assert b"/FontFile2" in data and b"WenQuanYi" in data  # the TrueType font embedded


def test_the_csv_files_parse_with_one_header_row_each(engine, tmp_path):
    project(engine, constructed())
    fig = from_database(engine, DAY, "44")
    paths = write_csv(fig, names(), tmp_path / "csv")
    assert sorted(p.name for p in paths) == [
        "corridors.csv",
        "dwell.csv",
        "interventions.csv",
        "list_changes.csv",
        "passes_issued.csv",
        "rejections.csv",
        "summary.csv",
    ]

    def read(name: str) -> list[dict]:
        with (tmp_path / "csv" / name).open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))

    assert read("passes_issued.csv") == [
        {"province": "44", "province_name": "广东省", "p0": "0", "p1": "2", "p2": "1", "p3": "0", "total": "3"}
    ]
    dwell = read("dwell.csv")
    assert [(r["checkpoint_id"], r["checkpoint_name"], float(r["median_seconds"])) for r in dwell] == [
        (CROSSING, "湖北—广东 border", 660.0),
        ("DST-440106", "", 300.0),
    ]
    assert float(dwell[0]["share_over_target"]) == pytest.approx(0.3)
    assert read("list_changes.csv") == [
        {"effective_at": "2020-02-20T01:00:00Z", "action": "remove", "credit_code": GUANGDONG_FIRM, "name": "深圳物流"}
    ]
    summary = {r["key"]: r["value"] for r in read("summary.csv")}
    assert summary["province"] == "44 广东省" and summary["from_utc"] == "2020-02-19T16:00:00Z"


@pytest.fixture
def settings_of_the_environment():
    """`main` reads the process's settings once (`get_settings` is cached): from this test's environment."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_the_command_writes_both_and_refuses_a_bad_day_or_province(
    engine, tmp_path, monkeypatch, capsys, settings_of_the_environment
):
    project(engine, constructed())
    monkeypatch.setenv("GC_DATABASE_URL", str(engine.url))
    pdf, directory = tmp_path / "day.pdf", tmp_path / "csv"
    assert main(["report", "--day", "2020-02-20", "--pdf", str(pdf), "--csv", str(directory)]) == 0
    assert pdf.read_bytes().startswith(b"%PDF") and len(list(directory.glob("*.csv"))) == 7
    assert "4 passes issued" in capsys.readouterr().out
    for bad in (["--day", "2020-02-30"], ["--day", "2020-02-20", "--province", "99"]):
        with pytest.raises(SystemExit) as refused:
            main(["report", *bad, "--csv", str(directory)])
        assert refused.value.code == 2
    assert main(["report", "--day", "2020-02-20"]) == 2  # nothing asked for
