"""One real program per test session, its maps reset between cases."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from harness import Harness

from agent.datapath import loader
from agent.datapath.loader import BuildOptions, Capacity
from agent.datapath.maps import Maps

# Small maps: the tests need behaviour, not capacity; the bench uses full sizes.
TEST_CAPACITY = Capacity(
    src_entries=4096, hosts4=65536, prefixes6=1024, groups=16, sources4=4096, sources6=1024,
    destinations=1024, verified=1024, sample_pages=16,
)


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
