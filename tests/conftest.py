"""Fixtures shared by every test directory.

Each section belongs to the module it serves; add new fixtures in a section of
their own rather than inside another one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from agent.lab.topology import Lab, VethPair, build_lab, build_pair, cleanup_stale, run_prefix

# =====================================================================================
# Lab topology (agent/lab/topology.py): network namespaces and veth pairs.
# Every fixture here tears down what it built, whatever the test did.
# =====================================================================================


@pytest.fixture(scope="session", autouse=True)
def _lab_cleanup_stale() -> None:
    """Remove namespaces left by earlier runs that crashed (their builder process is dead).

    Namespaces of runs that are still alive (parallel sessions) are left alone.
    Without root there is nothing this run could have built or could remove.
    """
    if os.geteuid() == 0:
        cleanup_stale()


@pytest.fixture
def veth_pair() -> Iterator[VethPair]:
    """Namespaces ``sender`` and ``target`` joined by one veth pair, fresh for each test.

    Fields: ``sender`` and ``target`` are :class:`agent.lab.topology.Iface`
    (``ns``, ``ifname``, ``ifindex``, ``mac``, ``ipv4`` 192.0.2.1/.2,
    ``ipv6`` 2001:db8::1/::2, ``addresses``); ``topology`` runs things in them
    (``socket``, ``popen``, ``run``, ``call``, ``call_in_child``, ``link_stats``).
    GRO is on at the sender, so XDP_TX on the target does not fail.
    """
    with build_pair(run_prefix("p")) as pair:
        yield pair


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """The lab of :func:`agent.lab.topology.build_lab` (one attacker, one client).

    Module scope: tests of one module share it (keep it as you found it: close
    sockets, detach programs); each module gets a fresh one.
    """
    with build_lab(run_prefix("l"), attackers=1, clients=1) as built:
        yield built


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests of the fault suite (tests/faults.py) as ``fault``: ``pytest -m fault``."""
    from faults import FAULT_TESTS

    for item in items:
        if item.nodeid.split("[", 1)[0] in FAULT_TESTS:
            item.add_marker(pytest.mark.fault)
