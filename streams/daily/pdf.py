"""The day's report as a PDF (fpdf2): A4, the tables of `view` with Chinese and English headings, and
Debian's WenQuanYi Micro Hei embedded (subset) so that Chinese renders on any reader."""

from __future__ import annotations

from pathlib import Path

from models.daily import DayFigures

from ..pass_print import find_cjk_font
from .view import Column, Names, Table, summary, tables

__all__ = ["write_pdf", "report_pdf", "CJK_FONT"]

CJK_FONT = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"  # Debian's fonts-wqy-microhei
FONT = "cjk"
GREEN, GREY, LIGHT = (11, 90, 42), (95, 99, 104), (232, 241, 235)
WEIGHTS = {"text": 2.2, "int": 1.3, "seconds": 1.6, "share": 1.5, "action": 1.7}
ALIGN = {"text": "LEFT", "action": "LEFT"}


def _font_path() -> str:
    if Path(CJK_FONT).exists():
        return CJK_FONT
    found = find_cjk_font()
    if found is None:
        raise RuntimeError(f"no font with Chinese glyphs: install fonts-wqy-microhei ({CJK_FONT})")
    return found


def _cell(column: Column, value) -> str:
    if value is None or value == "":
        return ""
    if column.kind == "seconds":
        return f"{value / 60:.1f} min"
    if column.kind == "share":
        return f"{value:.0%}"
    if column.kind == "action":
        return {"add": "列入 added", "remove": "移出 removed"}.get(value, value)
    return str(value)


def _weight(column: Column) -> float:
    return 4.4 if column.key.endswith("name") else WEIGHTS.get(column.kind, 2.0)


def _document():
    from fpdf import FPDF

    class Report(FPDF):
        def footer(self) -> None:
            self.set_y(-12)
            self.set_font(FONT, size=8)
            self.set_text_color(*GREY)
            self.cell(0, 6, f"第 {self.page_no()} 页 / 共 {{nb}} 页  Page {self.page_no()} of {{nb}}", align="C")

    pdf = Report(format="A4")
    path = _font_path()
    pdf.add_font(FONT, fname=path)
    pdf.add_font(FONT, style="B", fname=path)  # the same face: the table headings ask for a bold style
    pdf.set_auto_page_break(True, margin=16)
    pdf.set_margins(15, 15, 15)
    return pdf


def _front(pdf, fig: DayFigures, names: Names, source: str, proof: str) -> None:
    pdf.set_font(FONT, size=18)
    pdf.set_text_color(*GREEN)
    pdf.cell(0, 10, "绿色通道日报", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(FONT, size=12)
    pdf.cell(0, 7, "Green logistics channel: daily report for the authorities", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_text_color(0, 0, 0)
    pdf.set_font(FONT, size=9)
    rows = [(heading, value) for _key, heading, value in summary(fig, names)]
    rows += [("数据来源 Source", source), ("日志核验 Proof by the log", proof or "未核验 not run (--verify)")]
    with pdf.table(
        col_widths=(1.4, 2.6), first_row_as_headings=False, line_height=5.5, borders_layout="HORIZONTAL_LINES"
    ) as t:
        for heading, value in rows:
            row = t.row()
            row.cell(heading)
            row.cell(value)


def _table(pdf, table: Table) -> None:
    from fpdf.fonts import FontFace

    if pdf.will_page_break(30):
        pdf.add_page()
    pdf.ln(5)
    pdf.set_text_color(*GREEN)
    pdf.set_font(FONT, size=12)
    pdf.cell(0, 7, f"{table.zh}  {table.en}", new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(*GREY)
    pdf.set_font(FONT, size=8)
    if table.note:
        pdf.cell(0, 5, table.note, new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    if not table.rows:
        pdf.set_font(FONT, size=9)
        pdf.cell(0, 6, "无  None", new_x="LMARGIN", new_y="NEXT")
        return
    pdf.set_font(FONT, size=8)
    headings = FontFace(emphasis="BOLD", color=(255, 255, 255), fill_color=GREEN)
    with pdf.table(
        col_widths=tuple(_weight(c) for c in table.columns),
        text_align=tuple(ALIGN.get(c.kind, "RIGHT") for c in table.columns),
        headings_style=headings,
        line_height=4.6,
        cell_fill_color=LIGHT,
        cell_fill_mode="ROWS",
        repeat_headings=1,
    ) as t:
        head = t.row()
        for c in table.columns:
            head.cell(f"{c.zh}\n{c.en}")
        for values in [*table.rows, *([table.footer] if table.footer else [])]:
            row = t.row()
            for c, v in zip(table.columns, values, strict=True):
                row.cell(_cell(c, v))


def report_pdf(fig: DayFigures, names: Names, *, source: str, proof: str = "") -> bytes:
    """The report as PDF bytes."""
    pdf = _document()
    pdf.set_title(f"绿色通道日报 Green channel daily report {fig.day.date.isoformat()}")
    pdf.set_author("greenchannel")
    pdf.add_page()
    _front(pdf, fig, names, source, proof)
    for table in tables(fig, names):
        _table(pdf, table)
    return bytes(pdf.output())


def write_pdf(fig: DayFigures, names: Names, path: Path, *, source: str, proof: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(report_pdf(fig, names, source=source, proof=proof))
    return path
