# The two commands: `make demo` and `make test`. Both build the environment first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-kafka test-unit bench env clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(BIN)/greenchannel demo

test: $(STAMP)
	$(BIN)/python -m pytest

# The Apache Kafka (1 and 3 nodes, exactly_once) and PostgreSQL lanes. Not yet part of `make
# test`: the exactly-once fault test still finds a gap (see streams/eos.py).
test-kafka: $(STAMP)
	PYTHON=$(BIN)/python bash tests/services/lanes.sh

test-unit: $(STAMP)
	$(BIN)/python -m pytest -m "not integration"

$(VENV)/.bench-installed: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .greenchannel .pytest_cache
