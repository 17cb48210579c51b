# Entry points (README): `make demo` runs the seed scenario, `make test` runs the tests.
SHELL := /bin/bash
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup test demo cluster clean

setup:
	@scripts/setup.sh

test: setup
	$(VENV)/bin/python -m pytest

demo: setup
	$(VENV)/bin/python tools/demo.py

cluster: setup
	$(VENV)/bin/python tools/cluster.py

clean:
	rm -rf var
