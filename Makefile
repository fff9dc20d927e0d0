# floodguard — every target does its own set-up (idempotent), so a fresh
# Debian/Ubuntu machine needs nothing but `make demo` or `make test` as root.
VENV   ?= $(CURDIR)/.venv
PY     := $(VENV)/bin/python
FG     := $(VENV)/bin/floodguard
PYTEST_ARGS ?=

.PHONY: setup test demo bench lint install uninstall clean

setup:
	@FLOODGUARD_VENV=$(VENV) ./scripts/setup.sh

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check agent tests
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

# As a systemd service: a venv under /opt/floodguard, the unit, /etc/floodguard
# (an existing policy is kept). `make uninstall PURGE=1` also removes policy and state.
install:
	@./scripts/install.sh

uninstall:
	@PURGE=$(PURGE) ./scripts/uninstall.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
