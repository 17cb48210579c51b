# Entry points (README): `make demo` runs the seed scenario, `make test` runs the tests.
SHELL := /bin/bash
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup test lint demo cluster bench clean

setup:
	@scripts/setup.sh

test: setup lint
	$(VENV)/bin/python -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy --strict shared/zeroslee services/router/router services/statestore/statestore services/sip-ra/sip_ra services/balancer/balancer bench

demo: setup
	$(VENV)/bin/python tools/demo.py

cluster: setup
	$(VENV)/bin/python tools/cluster.py

bench: setup
	$(VENV)/bin/python -m bench --readme

clean:
	rm -rf var
