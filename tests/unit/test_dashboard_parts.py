"""The dashboard's parts without a broker: its map regions against the gazetteer's, and its refusal to serve
beyond loopback without a token (in a real browser, against the running system:
tests/integration/test_dashboard.py)."""

from __future__ import annotations

import subprocess
import sys

from models.mapregions import MAP_ALIASES, gazetteer_code
from models.records import parse_time
from models.reference import RiskBook
from routing import Gazetteer
from streams.dashboard import map_features
from tests.support.system import ROOT

WUHAN = "420100"


def test_every_map_region_shows_a_region_of_the_gazetteer():
    gazetteer = Gazetteer.default()
    features = map_features()
    assert len(features) > 360
    unknown = {f for f in features if not gazetteer.names_region(gazetteer_code(f))}
    assert unknown == {"659005", "659007"}  # 北屯, 双河: newer than the table; their province's level shows
    assert all(gazetteer.names_region(code) for code in MAP_ALIASES.values())


def test_a_prefecture_level_colours_its_map_region_and_no_other():
    from models.mapregions import feature_levels
    from models.records import RegionRisk

    book, at = RiskBook(), parse_time("2020-02-25T00:00:00Z")
    book.apply(RegionRisk("4201", "high", at))
    book.apply(RegionRisk("11", "medium", at))
    levels = feature_levels(book, map_features(), at)
    assert levels[WUHAN] == 2 and levels["110000"] == 1 and levels["420200"] == 0
    assert sorted(f for f, n in levels.items() if n) == ["110000", WUHAN]


def test_bound_beyond_loopback_the_dashboard_wants_a_token(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "GC_DATA_DIR": str(tmp_path),
        "GC_DATABASE_URL": f"sqlite:///{tmp_path}/gc.db",
        "GC_BROKER_URL": "kafka://127.0.0.1:9",
    }
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "dashboard", "--host", "0.0.0.0", "--port", "0"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "beyond loopback: set a token" in done.stdout, done.stdout + done.stderr
