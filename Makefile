# The two commands: `make demo` and `make test`. Both build the environment first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The dashboard's ECharts and map files, fetched from the npm registry (scripts/vendor-echarts.sh).
ECHARTS := streams/static/vendor/echarts-4.9.0/.complete
# The station's in-browser QR reader (zxing-wasm's reader build), likewise (scripts/vendor-zxing.sh).
ZXING := streams/static/vendor/zxing-wasm-3.1.8/.complete

.PHONY: demo test lint test-embedded test-kafka test-unit fuzz bench soak env clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

$(ECHARTS): scripts/vendor-echarts.sh
	bash scripts/vendor-echarts.sh

$(ZXING): scripts/vendor-zxing.sh
	bash scripts/vendor-zxing.sh

env: $(STAMP) $(ECHARTS) $(ZXING)

demo: $(STAMP) $(ECHARTS) $(ZXING)
	$(BIN)/greenchannel demo --serve

# Every lane: embedded Tansu + SQLite, then Apache Kafka 1 node + PostgreSQL, Apache Kafka 3 nodes
# with the fault tests and the secure 1-node Apache Kafka (SASL_SSL, ACLs) with tests/faults/test_security.py
# (tests/services/lanes.sh; skipped, saying why, without java/mvn).
test: lint $(ECHARTS) $(ZXING)
	bash tests/services/browser.sh
	$(BIN)/python -m pytest
	PYTHON=$(BIN)/python bash tests/services/lanes.sh

# ruff (lint and format), mypy on the core (models/, routing/) and the function-size check; the
# configuration is pyproject.toml's. `make test` runs it first.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python scripts/function_lengths.py

test-embedded: $(STAMP) $(ECHARTS) $(ZXING)
	bash tests/services/browser.sh
	$(BIN)/python -m pytest

test-kafka: $(STAMP)
	PYTHON=$(BIN)/python bash tests/services/lanes.sh

# The broker-free tests of the core and the edge (tests/unit/; seconds, no broker, no browser).
test-unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

# The fuzz tests' long profile: 5,000 examples a property, drawn afresh (make test runs 150, fixed).
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=long $(BIN)/python -m pytest tests/unit/test_fuzz.py --timeout 0 -q

$(VENV)/.bench-installed: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/python -m bench

# 30 minutes of steady load on one worker (exactly_once, RocksDB) with risk changes and restarts (bench/soak.py; not in
# make test). SOAK_ARGS passes options, e.g. make soak SOAK_ARGS="--minutes 3 --restarts kill".
soak: $(VENV)/.bench-installed
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .greenchannel .pytest_cache streams/static/vendor
