"""Every test here starts brokers of its own: marked `integration` (the directory decides)."""

import pytest


def pytest_itemcollected(item):
    item.add_marker(pytest.mark.integration)
