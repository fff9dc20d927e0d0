# floodguard — every target does its own set-up (idempotent), so a fresh
# Debian/Ubuntu machine needs nothing but `make demo` or `make test` as root.
VENV   ?= $(CURDIR)/.venv
PY     := $(VENV)/bin/python
FG     := $(VENV)/bin/floodguard
PYTEST_ARGS ?=

.PHONY: setup test test-faults test-repeat demo bench lint install uninstall clean

setup:
	@FLOODGUARD_VENV=$(VENV) ./scripts/setup.sh

# --durations: the 10 slowest tests, so a test that creeps towards the CI budget shows.
# COV_ARGS: branch coverage of agent/, printed at the end without the files at 100%;
# the daemon and the other Python processes the tests start are measured too
# ([tool.coverage.run] in pyproject.toml). `make test COV_ARGS=` runs without it.
COV_ARGS ?= --cov=agent --cov-branch --cov-report=term:skip-covered
test: setup
	$(PY) -m pytest --durations=10 $(COV_ARGS) $(PYTEST_ARGS)

# The fault suite alone (tests/faults.py): broken input and a broken environment, each a test.
test-faults: setup
	$(PY) -m pytest -m fault $(PYTEST_ARGS)

# Finds flaky tests: the suite N times, then every test that failed at least once.
# `make test-repeat N=5 PYTEST_ARGS=--random-order` shuffles the order in every run (seed printed).
# `make test-repeat N=2 STRESS=1` keeps one CPU busy with stress-ng the whole time.
N ?= 5
STRESS ?= 0
test-repeat: setup
	$(PY) scripts/test_repeat.py $(N) --stress $(STRESS) -- $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check agent tests scripts
	$(VENV)/bin/mypy

demo: setup
	$(FG) demo

bench: setup
	$(FG) bench datapath
	$(FG) bench prefixes
	$(FG) bench policy
	$(FG) bench detection
	$(FG) bench synauth
	$(FG) bench e2e
	$(FG) bench upstream
	$(FG) bench collateral

# As a systemd service: a venv under /opt/floodguard, the unit, /etc/floodguard
# (an existing policy is kept). `make uninstall PURGE=1` also removes policy and state.
install:
	@./scripts/install.sh

uninstall:
	@PURGE=$(PURGE) ./scripts/uninstall.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.*
