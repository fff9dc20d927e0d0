"""agent/control/rates.py: rates from cumulative counters, whatever the map does between reads."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest

from agent.control.meter import RateMeter, counter_delta
from agent.control.port import DstSnapshot

NS = 1_000_000_000
C = 6


def groups(packets: int, nbytes: int, rows: int = 3) -> np.ndarray:
    a = np.zeros((rows, C, 5), dtype=np.uint64)
    a[1, 2, 0], a[1, 2, 1] = packets, nbytes
    return a


def hosts(counts: dict[str, int]) -> DstSnapshot:
    """Hosts with `count` packets (and 100 bytes each) in class 2, in the given order."""
    keys = [(ipaddress.ip_address(h).version, int(ipaddress.ip_address(h))) for h in counts]
    blocks = []
    for n in counts.values():
        b = np.zeros((3, C), dtype=np.uint64)
        b[0, 2], b[1, 2] = n, 100 * n
        blocks.append(b)
    return DstSnapshot.build(keys, [1] * len(keys), blocks)


def rate_of(d, host: str) -> float:  # type: ignore[no-untyped-def]
    addrs = [str(d.address(i)) for i in range(len(d))]
    return float(d.pps[addrs.index(host), 2])


def test_counter_delta_takes_a_decrease_as_a_reset() -> None:
    cur = np.array([10, 5, 7], dtype=np.uint64)
    prev = np.array([4, 9, 7], dtype=np.uint64)
    assert counter_delta(cur, prev).tolist() == [6, 5, 0]


def test_the_first_read_is_only_a_starting_point() -> None:
    m = RateMeter()
    assert m.update(NS, groups(1_000_000, 10**8), hosts({"203.0.113.1": 10**6})) is None
    out = m.update(3 * NS, groups(1_000_600, 10**8 + 60_000), hosts({"203.0.113.1": 10**6 + 200}))
    assert out is not None
    g, d = out
    assert g.dt == 2.0
    assert g.pps[1, 2] == 300 and g.bps[1, 2] == 60_000 * 8 / 2
    assert rate_of(d, "203.0.113.1") == 100 and d.bps[0, 2] == 100 * 100 * 8


def test_a_clock_that_did_not_move_gives_no_rate_and_keeps_the_start() -> None:
    m = RateMeter()
    m.update(NS, groups(0, 0), hosts({}))
    assert m.update(NS, groups(500, 0), hosts({})) is None
    out = m.update(2 * NS, groups(1000, 0), hosts({}))
    assert out is not None and out[0].pps[1, 2] == 1000


def test_hosts_in_another_order_new_hosts_and_evicted_hosts() -> None:
    m = RateMeter()
    m.update(0, groups(0, 0), hosts({"203.0.113.1": 100, "203.0.113.2": 200, "2001:db8::1": 300}))
    # Read in another order; .2 was evicted; .3 and an IPv6 host are new since the last read.
    out = m.update(
        NS, groups(0, 0), hosts({"2001:db8::2": 40, "203.0.113.3": 50, "2001:db8::1": 330, "203.0.113.1": 110})
    )
    assert out is not None
    d = out[1]
    assert len(d) == 4
    assert rate_of(d, "203.0.113.1") == 10
    assert rate_of(d, "2001:db8::1") == 30
    assert rate_of(d, "203.0.113.3") == 50, "a host counted since the last read: all of it is new"
    assert rate_of(d, "2001:db8::2") == 40


def test_a_host_whose_counter_went_backwards_was_recounted() -> None:
    m = RateMeter()
    m.update(0, groups(0, 0), hosts({"203.0.113.1": 1_000_000}))
    out = m.update(NS, groups(0, 0), hosts({"203.0.113.1": 70}))
    assert out is not None and rate_of(out[1], "203.0.113.1") == 70


def test_ipv6_hosts_keep_their_keys_while_others_come_and_go() -> None:
    m = RateMeter()
    t = 0
    m.update(t, groups(0, 0), hosts({"2001:db8::1": 1000}))
    # Many IPv6 hosts pass through; the one that stays must never look new.
    for i in range(3000):
        t += NS
        out = m.update(t, groups(0, 0), hosts({"2001:db8::1": 1000 + 10 * (i + 1), f"2001:db8:1::{i + 1:x}": 5}))
        assert out is not None
        assert rate_of(out[1], "2001:db8::1") == 10


def test_a_resized_group_map_counts_from_zero() -> None:
    m = RateMeter()
    m.update(0, groups(10**9, 0, rows=3), hosts({}))
    out = m.update(NS, groups(500, 0, rows=5), hosts({}))
    assert out is not None and out[0].pps[1, 2] == 500 and out[0].groups == 5


def test_reset_forgets_the_starting_point() -> None:
    m = RateMeter()
    m.update(0, groups(0, 0), hosts({}))
    m.reset()
    assert m.update(NS, groups(100, 0), hosts({})) is None


@pytest.mark.parametrize("n", [1, 1000])
def test_the_same_hosts_in_the_same_order_join_without_a_search(n: int) -> None:
    m = RateMeter()
    names = {f"10.0.{i // 250}.{i % 250 + 1}": i for i in range(n)}
    m.update(0, groups(0, 0), hosts(names))
    out = m.update(NS, groups(0, 0), hosts({h: v + 3 for h, v in names.items()}))
    assert out is not None
    assert np.all(out[1].pps[:, 2] == 3)
