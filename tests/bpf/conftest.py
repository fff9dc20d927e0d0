"""One real program per test session, its maps reset between cases."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from harness import TEST_CAPACITY, Harness

from agent.datapath import loader
from agent.datapath.loader import BuildOptions
from agent.datapath.maps import Maps


@pytest.fixture(scope="session")
def program() -> Iterator[loader.Program]:
    pin_dir = f"/sys/fs/bpf/fgtest-{os.getpid()}-bpf"
    loader.remove_pins(pin_dir)
    prog = loader.build(BuildOptions(pin_dir=pin_dir, capacity=TEST_CAPACITY))
    try:
        yield prog
    finally:
        prog.close()
        loader.remove_pins(pin_dir)


@pytest.fixture(scope="session")
def _session_harness(program: loader.Program) -> Iterator[Harness]:
    maps = Maps.from_program(program)
    h = Harness(program.fd, maps)
    try:
        yield h
    finally:
        h.port.close()
        maps.close()


@pytest.fixture
def h(_session_harness: Harness) -> Harness:
    _session_harness.reset()
    return _session_harness
