"""Fixtures for tests that run the real program on real interfaces.

Each section belongs to the module it serves; the lab fixtures (veth_pair,
lab) live in tests/conftest.py, helpers in wire.py. Everything built here is
removed again: pins at module teardown, attached programs after each test,
sockets after each test (and with them their namespaces).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest
from wire import Track, Traffic, build_program, now_ns

from agent.contract.specs import ConfigSpec
from agent.datapath import attach, loader
from agent.datapath.errors import DatapathError
from agent.datapath.loader import Program
from agent.datapath.mapport import MapPort
from agent.datapath.maps import Maps
from agent.lab.topology import VethPair

# =====================================================================================
# The program (agent/datapath/loader.py): built once per module, own pin directory.
# =====================================================================================


@pytest.fixture(scope="module")
def fg_pin_dir(request: pytest.FixtureRequest) -> Iterator[str]:
    """A pin directory unique to this run and module, removed at module teardown."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    pin_dir = f"/sys/fs/bpf/fgtest-{os.getpid()}-{module}"
    loader.remove_pins(pin_dir)
    try:
        yield pin_dir
    finally:
        loader.remove_pins(pin_dir)


@pytest.fixture(scope="module")
def fg_program(fg_pin_dir: str) -> Iterator[Program]:
    prog = build_program(fg_pin_dir)
    try:
        yield prog
    finally:
        prog.close()


@pytest.fixture(scope="module")
def fg_port(fg_program: Program) -> Iterator[MapPort]:
    """The program's maps through the agent's own port, with a default config."""
    maps = Maps.from_program(fg_program)
    port = MapPort(maps)
    try:
        port.write_config(ConfigSpec())
        port.addresses.sync(now_ns())
        yield port
    finally:
        port.close()
        maps.close()


# =====================================================================================
# Attached programs (agent/datapath/attach.py): whatever a test attached is detached.
# =====================================================================================

@pytest.fixture
def detach_after() -> Iterator[Track]:
    """Call with (ifname, netns) for every interface a test attaches to.

    At teardown any program still there is removed (whoever's it is: the
    test put it there); an interface or namespace that is gone already is
    fine, its program went with it.
    """
    tracked: list[tuple[str, str]] = []
    try:
        yield lambda ifname, netns: tracked.append((ifname, netns))
    finally:
        for ifname, netns in tracked:
            with contextlib.suppress(DatapathError):
                attach.detach(ifname, netns=netns, only_floodguard=False)


# =====================================================================================
# UDP traffic across the veth pair (wire.Traffic).
# =====================================================================================


@pytest.fixture
def traffic(veth_pair: VethPair) -> Iterator[Traffic]:
    t = Traffic(veth_pair)
    try:
        yield t
    finally:
        t.close()
