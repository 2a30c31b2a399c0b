"""Every test here drives the system through a broker: marked `integration` (the directory decides)."""

import pytest


def pytest_itemcollected(item):
    item.add_marker(pytest.mark.integration)
