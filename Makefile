# Entry points (README): `make demo` runs the seed scenario, `make test` runs the tests.
# VENV= puts the venv elsewhere (default .venv; .ci/run uses a fresh one each run).
SHELL := /bin/bash
VENV ?= .venv
export VENV := $(abspath $(VENV))
export PATH := $(VENV)/bin:$(PATH)
MYPY_PATHS := shared/zeroslee services/router/router services/statestore/statestore services/sip-ra/sip_ra services/balancer/balancer bench

.PHONY: setup test lint demo upgrade-demo cluster bench lock outdated clean

# setup also makes the bus keys the default cluster file names, if missing (var/keys).
setup:
	@scripts/setup.sh
	@$(VENV)/bin/zeroslee-admin keygen --cluster

test: setup lint
	$(VENV)/bin/python -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy --strict $(MYPY_PATHS)

demo: setup
	$(VENV)/bin/python tools/demo.py

upgrade-demo: setup
	$(VENV)/bin/python tools/upgrade_demo.py

cluster: setup
	$(VENV)/bin/python tools/cluster.py

bench: setup
	$(VENV)/bin/python -m bench --readme

# Re-resolve requirements.lock from pyproject.toml's ranges and scripts/lock.in (newest
# versions that fit, for every Python that requires-python allows); commit the result.
# Plain `make lock` keeps every pin that still fits; `make lock UPGRADE=msgspec` moves one
# package to its newest release, `make lock UPGRADE=all` moves every package.
lock: setup
	$(VENV)/bin/uv pip compile pyproject.toml scripts/lock.in --all-extras --universal \
	  --python-version 3.11 --generate-hashes --quiet --output-file requirements.lock \
	  --custom-compile-command "make lock" \
	  $(if $(filter all,$(UPGRADE)),--upgrade,$(if $(UPGRADE),--upgrade-package $(UPGRADE)))

# What the newest releases would break: a scratch venv with them, lint and the unit tests
# there. Changes neither the lock nor $(VENV).
outdated: setup
	@scripts/outdated.sh

clean:
	rm -rf var
