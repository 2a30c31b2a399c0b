"""Simulated logistics firms and checkpoints: realistic requests and scans for demo, tests, bench.

Everything is drawn from a seeded `random.Random`, so a scenario is the same on every run.
Identifiers carry valid check characters (credit codes per GB 32100-2015, resident IDs per
GB 11643-1999), so the only invalid inputs are the ones made on purpose.

It ships in the product package, not with the tests, because `greenchannel demo` plays its firms
and checkpoints.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson

from models.records import format_time

__all__ = ["make_credit_code", "make_id_number", "Scenario", "scans_for", "PLACES", "GOODS"]

_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_CREDIT_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def make_credit_code(rng: random.Random, adcode: str = "420100") -> str:
    body = "91" + adcode + "".join(rng.choice(_ALPHABET[:10] + "ABCDEFGH") for _ in range(9))
    total = sum(_ALPHABET.index(c) * w for c, w in zip(body, _CREDIT_WEIGHTS))
    return body + _ALPHABET[(31 - total % 31) % 31]


def make_id_number(rng: random.Random, adcode: str = "420111") -> str:
    birth = datetime(1965, 1, 1) + timedelta(days=rng.randrange(0, 365 * 35))
    body = f"{adcode}{birth:%Y%m%d}{rng.randrange(1000):03d}"
    return body + "10X98765432"[sum(int(c) * w for c, w in zip(body, _ID_WEIGHTS)) % 11]


# Real county-level places: (adcode, address as a firm would type it, plate province character).
PLACES = [
    ("420111", "湖北省武汉市洪山区珞喻路1037号", "鄂"),
    ("420115", "湖北省武汉市江夏区庙山产业园", "鄂"),
    ("420602", "湖北省襄阳市襄城区檀溪路", "鄂"),
    ("440106", "广东省广州市天河区天河路385号", "粤"),
    ("440305", "广东省深圳市南山区科技园", "粤"),
    ("310115", "上海市浦东新区张江高科技园区", "沪"),
    ("320506", "江苏省苏州市吴中区吴中大道", "苏"),
    ("330106", "浙江省杭州市西湖区文三路", "浙"),
    ("110105", "北京市朝阳区酒仙桥路10号", "京"),
    ("120116", "天津市滨海新区第九大街", "津"),
    ("370202", "山东省青岛市市南区香港中路", "鲁"),
    ("410105", "河南省郑州市金水区花园路", "豫"),
    ("430104", "湖南省长沙市岳麓区麓谷大道", "湘"),
    ("360111", "江西省南昌市青山湖区高新大道", "赣"),
    ("340104", "安徽省合肥市蜀山区长江西路", "皖"),
    ("500112", "重庆市渝北区金开大道", "渝"),
    ("510107", "四川省成都市武侯区天府大道", "川"),
    ("610113", "陕西省西安市雁塔区科技路", "陕"),
    ("450103", "广西壮族自治区南宁市青秀区民族大道", "桂"),
    ("530102", "云南省昆明市五华区人民中路", "云"),
    ("210106", "辽宁省沈阳市铁西区北二路", "辽"),
    ("230103", "黑龙江省哈尔滨市南岗区红军街", "黑"),
    ("620102", "甘肃省兰州市城关区东岗西路", "甘"),
    ("350203", "福建省厦门市思明区湖滨南路", "闽"),
]

# (class, HS code, description, unit) — drawn from the catalog's classes, plus goods outside it.
GOODS = {
    "P0": [
        ("901920", "呼吸机 ventilators", "units"),
        ("630790", "医用口罩 medical masks", "boxes"),
        ("621010", "医用防护服 protective suits", "pieces"),
        ("560311", "熔喷布 melt-blown fabric", "tonnes"),
        ("300490", "治疗药品 medicines", "cases"),
        ("901811", "心电监护仪 ECG monitors", "units"),
    ],
    "P1": [
        ("310210", "尿素化肥 urea fertiliser", "tonnes"),
        ("392010", "农膜 agricultural film", "rolls"),
        ("843280", "农机零部件 farm machinery parts", "sets"),
        ("100630", "大米 rice", "tonnes"),
        ("040120", "牛奶 milk", "tonnes"),
        ("340111", "肥皂 soap", "cases"),
    ],
    "P2": [
        ("870829", "汽车零部件 auto parts", "pallets"),
        ("854231", "集成电路 integrated circuits", "reels"),
        ("850760", "锂离子电池 lithium-ion batteries", "pallets"),
        ("854143", "光伏组件 PV modules", "pallets"),
        ("847950", "工业机器人 industrial robots", "units"),
        ("845811", "数控机床 CNC lathes", "units"),
    ],
    "P3": [
        ("842952", "挖掘机 excavators", "units"),
        ("252329", "水泥 cement", "tonnes"),
        ("721049", "镀锌钢板 galvanised steel", "tonnes"),
        ("842619", "起重机 cranes", "units"),
    ],
    "none": [("950300", "玩具 toys", "cartons"), ("710812", "黄金 gold", "kg"), ("940161", "沙发 sofas", "pieces")],
}


@dataclass
class Scenario:
    """A seeded population of firms and the requests they send."""

    seed: int = 2020
    start: datetime = datetime(2020, 2, 25, 8, 0, tzinfo=UTC)
    key_enterprises: list[tuple[str, str]] = field(default_factory=list)
    suppliers: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        if not self.key_enterprises:
            self.key_enterprises = [
                (make_credit_code(self.rng, p[0]), f"重点企业{i:02d}") for i, p in enumerate(PLACES)
            ]
            self.suppliers = [(make_credit_code(self.rng, p[0]), f"中小供应商{i:02d}") for i, p in enumerate(PLACES)]

    def enterprise_entries(self) -> list[dict]:
        at = format_time(self.start - timedelta(days=1))
        return [{"credit_code": c, "name": n, "action": "add", "effective_at": at} for c, n in self.key_enterprises]

    def request(self, n: int, *, kind: str | None = None) -> dict:
        """Request number n. kind: P0..P3, 'none' (outside the catalog), 'unlisted' (P2, no key
        enterprise on either side), 'bad_fields'; None draws the realistic mix."""
        rng = self.rng
        if kind is None:
            kind = _draw_kind(rng)
        origin, destination = rng.sample(PLACES, 2)
        goods_class = "P2" if kind in ("unlisted", "bad_fields") else kind
        items = [rng.choice(GOODS[goods_class]) for _ in range(rng.randint(1, 2))]
        shipper, consignee = self._parties(kind)
        submitted = self.start + timedelta(minutes=n)
        # The draws below happen in the order the body's fields are written: keep it.
        body = {
            "shipment_id": f"SHP-{self.seed}-{n:07d}",
            "submitted_at": format_time(submitted),
            "shipper": {"credit_code": shipper[0], "name": shipper[1]},
            "consignee": {"credit_code": consignee[0], "name": consignee[1]},
            "cargo": [
                {"hs_code": hs, "description": d, "quantity": rng.randint(1, 400), "unit": u} for hs, d, u in items
            ],
            "vehicle": _vehicle(rng, origin),
            "driver": _driver(rng, origin),
            "origin": _place_as_given(rng, origin),
            "destination": _place_as_given(rng, destination),
            "departure_at": format_time(submitted + timedelta(hours=2)),
            "trip": rng.choice(["single", "single", "multi"]),
        }
        if kind == "bad_fields":
            _spoil_fields(body)
        return body

    def _parties(self, kind: str) -> tuple[tuple[str, str], tuple[str, str]]:
        """Shipper and consignee: two small suppliers for 'unlisted', else a supplier shipping to a
        key enterprise, which qualifies through that link (§4)."""
        rng = self.rng
        shipper = self.suppliers[rng.randrange(len(self.suppliers))]
        if kind == "unlisted":
            return shipper, self.suppliers[rng.randrange(len(self.suppliers))]
        return shipper, self.key_enterprises[rng.randrange(len(self.key_enterprises))]

    def malformed(self, n: int) -> bytes:
        return self.rng.choice([b"{not json", b"[1, 2, 3]", b"\xff\xfe binary", b'{"cargo": []}'])

    @staticmethod
    def encode(body: dict) -> bytes:
        return orjson.dumps(body)


def _draw_kind(rng: random.Random) -> str:
    """The realistic mix: a quarter each of P0, P1, P2, 15% P3, the rest odd requests."""
    roll = rng.random()
    if roll < 0.25:
        return "P0"
    if roll < 0.5:
        return "P1"
    if roll < 0.75:
        return "P2"
    if roll < 0.9:
        return "P3"
    return rng.choice(["none", "unlisted", "bad_fields"])


def _vehicle(rng: random.Random, origin: tuple[str, str, str]) -> dict:
    """A truck registered in the origin's province."""
    return {
        "plate": f"{origin[2]}{rng.choice('ABCDEFG')}{rng.randrange(10000, 99999)}",
        "type": rng.choice(["heavy truck", "van", "refrigerated truck"]),
    }


def _driver(rng: random.Random, origin: tuple[str, str, str]) -> dict:
    """A driver born in the origin's county."""
    return {
        "name": rng.choice(["张伟", "王芳", "李强", "刘洋", "陈杰"]),
        "id_number": make_id_number(rng, origin[0]),
        "phone": f"13{rng.randrange(10**8, 10**9)}",
    }


def _place_as_given(rng: random.Random, place: tuple[str, str, str]) -> dict:
    """A place as a firm gives it: its adcode, its address, or its coordinates."""
    style = rng.random()
    if style < 0.4:
        return {"adcode": place[0]}
    if style < 0.8:
        return {"address": place[1]}
    from routing import Gazetteer

    p = Gazetteer.default().locate(place[0])
    return {"lat": round(p.lat, 5), "lon": round(p.lon, 5)}


def _spoil_fields(body: dict) -> None:
    """A 'bad_fields' request: the driver's ID loses its check character, the first HS code is cut short."""
    id_number = body["driver"]["id_number"]
    body["driver"]["id_number"] = id_number[:-1] + ("0" if id_number[-1] != "0" else "1")
    body["cargo"][0]["hs_code"] = "12"


def scans_for(decision: dict, rng: random.Random, *, mismatch: bool = False) -> list[dict]:
    """The scans a truck makes along its pass's route: arrival and departure at each border
    checkpoint (dwell 2-25 min, so some exceed the 15-minute target), arrival at destination."""
    the_pass = decision["pass"]
    scans = []
    for i, cp in enumerate(the_pass["route"]["checkpoints"]):
        eta = datetime.fromisoformat(cp["eta"])
        plate = the_pass["plate"]
        if mismatch and i == 0:
            plate = plate[:-1] + ("1" if plate[-1] != "1" else "2")
        base = {"checkpoint_id": cp["checkpoint_id"], "pass_id": the_pass["pass_id"], "plate": plate}
        scans.append(
            {
                **base,
                "scan_id": f"{the_pass['pass_id']}-{i}-a",
                "kind": "arrival",
                "token": the_pass["token"],
                "scanned_at": format_time(eta),
            }
        )
        if i < len(the_pass["route"]["checkpoints"]) - 1:
            dwell = timedelta(seconds=rng.randint(120, 1500))
            scans.append(
                {
                    **base,
                    "scan_id": f"{the_pass['pass_id']}-{i}-d",
                    "kind": "departure",
                    "scanned_at": format_time(eta + dwell),
                }
            )
    return scans
