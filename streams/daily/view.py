"""The day's figures as named tables: their Chinese and English headings, their columns and their rows,
once for both writers (the PDF formats the values, the CSV files keep them raw)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from models.daily import CLASSES, DayFigures

__all__ = ["Column", "Table", "Names", "tables", "summary"]


@dataclass(frozen=True, slots=True)
class Column:
    key: str  # the CSV header
    zh: str
    en: str
    kind: str = "text"  # text | int | seconds (shown in minutes) | share (shown in %) | action (add, remove)


@dataclass(frozen=True)
class Table:
    key: str  # the CSV file name, without .csv
    zh: str
    en: str
    columns: tuple[Column, ...]
    rows: list[tuple] = field(default_factory=list)
    note: str = ""  # said under the heading (English; the PDF writes it as given)
    footer: tuple | None = None  # a totals row the PDF shows under the rows (not a CSV row)


@dataclass(frozen=True)
class Names:
    """Place and checkpoint names: the gazetteer's for adcode prefixes, the database's for checkpoints."""

    region: Callable[[str], str | None]
    checkpoint: Callable[[str], str] = lambda _c: ""

    def of(self, prefix: str) -> str:
        return (self.region(prefix) or "") if prefix else ""


def summary(fig: DayFigures, names: Names) -> list[tuple[str, str, str]]:
    """(CSV key, heading in both languages, value) of the report's front matter."""
    day = fig.day
    province = f"{fig.province} {names.of(fig.province)}" if fig.province else "全国 nationwide"
    rejected = "驳回申请（全国）Rejected, nationwide" if fig.rejections_nationwide else "驳回申请 Requests rejected"
    return [
        ("day", "日期 Day", day.date.isoformat()),
        ("time_zone", "时区 Time zone", day.zone),
        ("from_utc", "起 From (UTC)", day.start.isoformat().replace("+00:00", "Z")),
        ("until_utc", "止 Until (UTC, excl.)", day.end.isoformat().replace("+00:00", "Z")),
        ("province", "省份 Province", province),
        ("passes_issued", "签发通行证 Passes issued", str(fig.passes_issued)),
        ("rejected_requests", rejected, str(fig.rejected_requests)),
    ]


def _issued(fig: DayFigures, names: Names) -> Table:
    columns = (
        Column("province", "省份代码", "Province code"),
        Column("province_name", "省份", "Province"),
        *(Column(c.lower(), c, f"Class {c}", "int") for c in CLASSES),
        Column("total", "合计", "Total", "int"),
    )
    rows = [(r.province, names.of(r.province), *r.by_class, r.total) for r in fig.issued]
    totals = [sum(r.by_class[i] for r in fig.issued) for i in range(len(CLASSES))]
    return Table(
        "passes_issued",
        "按类别和省份签发的通行证",
        "Passes issued by class and province",
        columns,
        rows,
        "by the issuing county's province",
        footer=("", "合计 Total", *totals, sum(totals)) if rows else None,
    )


def _rejections(fig: DayFigures) -> Table:
    columns = (Column("reason", "驳回原因代码", "Reason code"), Column("requests", "申请数", "Requests", "int"))
    note = "a request counts once per reason it names"
    if fig.rejections_nationwide:
        note += "; nationwide (全国): a rejection names no county"
    return Table(
        "rejections",
        "按原因驳回的申请",
        "Rejections by reason",
        columns,
        [(r.code, r.requests) for r in fig.rejections],
        note,
    )


def _interventions(fig: DayFigures) -> Table:
    columns = (
        Column("status", "状态", "Status"),
        Column("cause", "原因代码", "Cause (reason code)"),
        Column("events", "事件数", "Events", "int"),
        Column("passes", "通行证数", "Passes", "int"),
    )
    rows = [(r.status, r.cause, r.events, r.passes) for r in fig.interventions]
    return Table(
        "interventions",
        "改道、暂停与撤销（按原因）",
        "Reroutes, suspensions and revocations by cause",
        columns,
        rows,
        "status events (a reissued token is no reroute)"
        + ("; by the issuing county's province" if fig.province else ""),
    )


def _dwell(fig: DayFigures, names: Names) -> Table:
    columns = (
        Column("checkpoint_id", "检查站", "Checkpoint"),
        Column("checkpoint_name", "名称", "Name"),
        Column("departures", "离站车辆", "Departures", "int"),
        Column("median_seconds", "中位停留", "Median dwell", "seconds"),
        Column("p90_seconds", "90%分位停留", "p90 dwell", "seconds"),
        Column("over_target", "超15分钟", "> 15 min", "int"),
        Column("share_over_target", "超时比例", "Share over", "share"),
    )
    rows = [
        (
            r.checkpoint_id,
            names.checkpoint(r.checkpoint_id),
            r.departures,
            r.median_seconds,
            r.p90_seconds,
            r.over_target,
            r.share_over_target,
        )
        for r in fig.dwell
    ]
    return Table(
        "dwell",
        "各检查站停留时间（目标15分钟）",
        "Dwell per checkpoint against the 15-minute target",
        columns,
        rows,
        "arrival to departure of the day's departures; p90 by nearest rank",
    )


def _corridors(fig: DayFigures, names: Names) -> Table:
    columns = (
        Column("origin", "起点地市代码", "Origin code"),
        Column("origin_name", "起点", "Origin"),
        Column("destination", "终点地市代码", "Destination code"),
        Column("destination_name", "终点", "Destination"),
        Column("passes", "通行证数", "Passes", "int"),
    )
    rows = [(r.origin, names.of(r.origin), r.destination, names.of(r.destination), r.passes) for r in fig.corridors]
    note = "prefecture to prefecture, by passes issued"
    if fig.province:
        note += "; either end in the province"
    return Table("corridors", "最繁忙通道", "Busiest corridors", columns, rows, note)


def _list_changes(fig: DayFigures) -> Table:
    columns = (
        Column("effective_at", "生效时间 (UTC)", "Effective (UTC)"),
        Column("action", "变更", "Change", "action"),
        Column("credit_code", "统一社会信用代码", "Credit code"),
        Column("name", "企业名称", "Name"),
    )
    rows = [(c.at.isoformat().replace("+00:00", "Z"), c.action, c.credit_code, c.name) for c in fig.list_changes]
    return Table(
        "list_changes",
        "重点企业名单变更",
        "Key-enterprise list changes",
        columns,
        rows,
        "by the registering authority's province in the credit code" if fig.province else "",
    )


def tables(fig: DayFigures, names: Names) -> list[Table]:
    return [
        _issued(fig, names),
        _rejections(fig),
        _interventions(fig),
        _dwell(fig, names),
        _corridors(fig, names),
        _list_changes(fig),
    ]
