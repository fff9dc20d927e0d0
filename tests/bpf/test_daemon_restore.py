"""agent/daemon/restore.py against the real maps: saved records that do not all fit."""

from __future__ import annotations

import ipaddress

from harness import TEST_CAPACITY, Harness, now_ns

from agent.contract import abi
from agent.contract.keys import prefix_key
from agent.daemon import restore


def saved(n: int, origin: int, base: str, now: int, ttl_s: int = 3600) -> list[tuple]:
    net = ipaddress.ip_network(base)
    return [(prefix_key(ipaddress.ip_network((int(net.network_address) + i, 32))), abi.SRC_BAN, origin,
             (now + ttl_s * 10**9 + i, now, abi.SRC_BAN, 0)) for i in range(n)]


def test_saved_records_that_do_not_fit_are_left_out_not_fatal(h: Harness) -> None:
    t = h.port.addresses
    now = now_ns()
    operator = saved(50, abi.Origin.OPERATOR, "10.1.0.0/16", now)
    auto = saved(TEST_CAPACITY.prefixes + 500, abi.Origin.AUTO, "10.2.0.0/16", now)
    restored, left_out = restore.put_back(t, auto + operator, now)
    assert restored + left_out == len(auto) + len(operator) and left_out >= 500
    # The model lists exactly what the kernel holds: every restored record answers from the program.
    listed = {k for k, kind, _o, _r in t.records() if kind == abi.SRC_BAN}
    assert len(listed) == restored
    assert {k for k, *_ in operator} <= listed  # operator bans come first
    for key in list(listed)[:200]:
        addr = ipaddress.ip_address(key[1])
        idx, _group, _flags = t.kernel_answer(addr)
        assert idx == t.index_of(key) != 0 and t.entry(idx).flags & abi.SRC_BAN, f"{addr}: not banned by the kernel"
    # And the table still takes edits: nothing is stuck half-written.
    t.set_record(next(iter(listed)), abi.SRC_BAN, abi.Origin.AUTO, None)
    t.commit(now)


def test_everything_that_fits_is_restored_in_batches(h: Harness) -> None:
    t = h.port.addresses
    now = now_ns()
    records = saved(restore.BATCH * 2 + 7, abi.Origin.AUTO, "10.3.0.0/16", now)
    assert restore.put_back(t, records, now) == (len(records), 0)
    assert sum(1 for _ in t.records()) == len(records)
