"""`greenchannel pass print`: the driver's pass, a page to print or carry (PNG or PDF).

Pass number, plate, class, the toll-exempt mark of P0 (三不一优先), validity, the route with its
checkpoints and a QR code of the signed token (segno) that any station decodes and verifies
offline. The pass comes from the database the projector writes, or from a decision JSON file.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import orjson
import segno
from PIL import Image, ImageDraw, ImageFont

from models.credential import PREFIX
from models.policy import CLASS_NAMES
from models.records import format_time, parse_time

__all__ = [
    "pass_qr",
    "pass_from_decision",
    "pass_from_database",
    "pass_from_row",
    "pass_document",
    "render_pass",
    "cmd_pass_print",
    "find_cjk_font",
]

WIDTH, HEIGHT = 1240, 1754  # A4 at 150 dpi
GREEN, INK, GREY, GOLD = (11, 90, 42), (29, 31, 33), (95, 99, 104), (253, 226, 147)
_FONT_PATHS = [
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "C:/Windows/Fonts/msyh.ttc",
]


@functools.cache  # fc-match is a process: once, not once per font size
def find_cjk_font() -> str | None:
    """A font file that has Chinese glyphs: fontconfig's choice, else a list of usual places."""
    if shutil.which("fc-match"):
        found = subprocess.run(["fc-match", "-f", "%{file}", ":lang=zh-cn"], capture_output=True, text=True).stdout
        if found and Path(found).exists():
            return found
    return next((p for p in _FONT_PATHS if Path(p).exists()), None)


def _font(size: int):
    path = find_cjk_font()
    return ImageFont.truetype(path, size) if path else ImageFont.load_default(size)


def pass_from_decision(decision: dict) -> dict:
    if not decision.get("pass"):
        raise ValueError(f"decision {decision.get('shipment_id')} is {decision.get('decision')}: it has no pass")
    return {**decision["pass"], "shipment_id": decision.get("shipment_id")}


def pass_from_database(url: str, pass_id: str) -> dict | None:
    """The pass as the projector last wrote it: a rerouted pass has its new route and token."""
    from sqlmodel import Session

    from models.store.db import get_pass, make_engine

    with Session(make_engine(url)) as session:
        row = get_pass(session, pass_id=pass_id)
        return None if row is None or not row.token else pass_from_row(row)


def pass_from_row(row) -> dict:
    """The pass of a projected `Pass` row (one with a token), as `render_pass` draws it."""
    return {
        "pass_id": row.pass_id,
        "shipment_id": row.shipment_id,
        "plate": row.plate,
        "priority": row.priority,
        "toll_exempt": row.toll_exempt,
        "valid_from": format_time(row.valid_from),
        "valid_until": format_time(row.valid_until),
        "trip": row.trip,
        "route": row.route,
        "token": row.token,
        "issuer": row.issuer,
    }


def _beijing(value: str) -> str:
    return (parse_time(value) + timedelta(hours=8)).strftime("%Y-%m-%d %H:%M")


def pass_qr(token: str) -> segno.QRCode:
    """The pass's QR code as printed."""
    # Level Q (25% of the code may be soiled or torn); boost_error off, so the version is the
    # smallest that holds the token at Q: 10 for every GC1: token (models.credential.QR_CHARS).
    mode = "alphanumeric" if token.startswith(PREFIX) else None
    return segno.make(token, error="q", mode=mode, micro=False, boost_error=False)


def _qr(token: str, size: int) -> Image.Image:
    code = pass_qr(token)
    buffer = io.BytesIO()
    code.save(buffer, kind="png", scale=max(1, size // (code.symbol_size()[0])), border=4)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _wrapped(draw: ImageDraw.ImageDraw, xy, text: str, font, width: int, fill=INK, gap: int = 8) -> int:
    """Draw `text` wrapped to `width` pixels; returns the y below it."""
    x, y = xy
    line = ""
    for ch in text:
        if draw.textlength(line + ch, font=font) > width:
            draw.text((x, y), line, font=font, fill=fill)
            y, line = y + font.size + gap, ch
        else:
            line += ch
    if line:
        draw.text((x, y), line, font=font, fill=fill)
        y += font.size + gap
    return y


def render_pass(p: dict) -> Image.Image:
    img = Image.new("RGB", (WIDTH, HEIGHT), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, WIDTH, 170], fill=GREEN)
    d.text((60, 34), "绿色通道车辆通行证", font=_font(68), fill="white")
    d.text((64, 118), "Green channel vehicle pass · 一车一证一线路", font=_font(30), fill=(207, 230, 214))
    qr = _qr(p["token"], 520)
    d.text((60, 220), "通行证号 Pass No.", font=_font(28), fill=GREY)
    d.text((60, 258), p["pass_id"], font=_font(64), fill=INK)
    d.text((60, 360), "车牌 Plate", font=_font(28), fill=GREY)
    d.rounded_rectangle([56, 398, 560, 510], radius=14, outline=INK, width=5)
    d.text((84, 412), p["plate"], font=_font(78), fill=INK)
    d.text((60, 540), "类别 Class", font=_font(28), fill=GREY)
    zh, en = CLASS_NAMES.get(p["priority"], ("", ""))
    d.text((60, 576), f"{p['priority']}  {zh}", font=_font(44), fill=INK)
    d.text((60, 634), en, font=_font(28), fill=GREY)
    y = 690
    if p.get("toll_exempt"):
        mark, font = "三不一优先 · 免收通行费 toll-exempt", _font(32)
        d.rounded_rectangle([56, y, 96 + d.textlength(mark, font=font), y + 64], radius=12, fill=GOLD)
        d.text((76, y + 12), mark, font=font, fill=(92, 60, 0))
        y += 90
    y = max(y, 210 + qr.height + 30)
    trip = "多次有效 multi-trip" if p.get("trip") == "multi" else "单次有效 single trip"
    d.text((60, y), "有效期 Valid (北京时间 UTC+8)", font=_font(28), fill=GREY)
    d.text(
        (60, y + 38), f"{_beijing(p['valid_from'])}  →  {_beijing(p['valid_until'])}   {trip}", font=_font(40), fill=INK
    )
    y += 120
    d.line([60, y, WIDTH - 60, y], fill=(221, 225, 228), width=3)
    d.text(
        (60, y + 20),
        f"路线与检查站 Route and checkpoints  ({p['route'].get('distance_km', '?')} km)",
        font=_font(30),
        fill=GREY,
    )
    y += 70
    font, small = _font(32), _font(26)
    for i, cp in enumerate(p["route"]["checkpoints"], 1):
        y = _wrapped(d, (70, y), f"{i}. {cp['name']}  [{cp['checkpoint_id']}]", font, WIDTH - 140)
        d.text((110, y), f"预计到达 ETA {_beijing(cp['eta'])}", font=small, fill=GREY)
        y += small.size + 18
        if y > HEIGHT - 160:
            d.text((70, y), "…", font=font, fill=INK)
            break
    d.rectangle([0, HEIGHT - 110, WIDTH, HEIGHT], fill=(242, 244, 243))
    d.text(
        (60, HEIGHT - 92),
        "人、车、证一致方可通行 · Driver, vehicle and pass must match. 检查站扫码离线核验",
        font=_font(28),
        fill=INK,
    )
    d.text(
        (60, HEIGHT - 50),
        f"签发 issuer {p.get('issuer', '')} · shipment {p.get('shipment_id') or ''}",
        font=_font(24),
        fill=GREY,
    )
    img.paste(qr, (WIDTH - qr.width - 50, 210))  # last: nothing may cover the code
    return img


def cmd_pass_print(settings, args) -> int:
    if args.from_decision:
        the_pass = pass_from_decision(orjson.loads(Path(args.from_decision).read_bytes()))
        if the_pass["pass_id"] != args.pass_id:
            raise SystemExit(f"{args.from_decision} holds pass {the_pass['pass_id']}, not {args.pass_id}")
    else:
        the_pass = pass_from_database(settings.database_url, args.pass_id)
        if the_pass is None:
            raise SystemExit(f"no pass {args.pass_id} with a token in the database")
    out = args.pdf or args.png or Path(f"pass-{args.pass_id}.png")
    out.write_bytes(pass_document(the_pass, "pdf" if args.pdf else "png"))
    print(out)
    return 0


def pass_document(the_pass: dict, kind: str) -> bytes:
    """The printed pass as a PNG or a one-page PDF (150 dpi): what `pass print` and the gateway give."""
    image, buffer = render_pass(the_pass), io.BytesIO()
    if kind == "pdf":
        image.save(buffer, "PDF", resolution=150)
    else:
        image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()
