"""The shared fixtures, registered as plugins: brokers, the running system and its taps, the browser."""

pytest_plugins = ["tests.support.system", "tests.support.browser"]
