"""agent/control/kernel.py: the real port's conversions, checked against a recording MapPort stand-in.

The real maps are exercised by the BPF and integration tests; here we check
what the adapter asks of MapPort, in MapPort's own terms.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import numpy as np

from agent.contract import abi
from agent.contract.keys import words
from agent.contract.specs import RuleSpec
from agent.control.kernel import KernelPort


class Table:
    def __init__(self, keys: bytes, values: bytes, n: int, ncpus: int) -> None:
        self.raw, self.ncpus = (keys, values, n), ncpus

    def read_raw(self) -> tuple[bytes, bytes, int]:
        return self.raw


class Addresses:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def set_record(self, *args: Any) -> bool:
        self.calls.append(("set_record", *args))
        return True

    def commit(self, now: int) -> int:  # noqa: ARG002 — the fake keeps the real commit's signature
        self.calls.append(("commit",))
        return 1


class MapPortStandIn:
    def __init__(self, dst: Table) -> None:
        self.maps = {"dst_stats": dst}
        self.addresses = Addresses()
        self.calls: list[tuple[Any, ...]] = []

    def read_group_stats(self) -> np.ndarray:
        return np.zeros((4, 6, 5), dtype=np.uint64)

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.calls.append((name, *args))


def stand_in() -> MapPortStandIn:
    key = abi.DstKey()
    key.addr[:] = words(4, int(ipaddress.ip_address("203.0.113.9")))
    key.family = 4
    value = abi.DstCounter()
    value.packets[2], value.group = 5, 1
    return MapPortStandIn(Table(bytes(key), bytes(value), 1, 1))


def test_reads_become_arrays_and_samples() -> None:
    raw = abi.Sample()
    raw.family, raw.cls = 4, abi.TrafficClass.UDP
    raw.src[:] = words(4, int(ipaddress.ip_address("198.18.0.1")))
    port = KernelPort(stand_in(), drain=lambda: [raw])  # type: ignore[arg-type]
    snap = port.read_dst_stats()
    assert snap.address(0) == ipaddress.ip_address("203.0.113.9") and int(snap.counters[0, 0, 2]) == 5
    assert port.read_group_stats().shape == (4, 6, 5)
    (sample,) = port.drain_samples()
    assert sample.src == ipaddress.ip_address("198.18.0.1") and sample.cls == abi.TrafficClass.UDP
    assert port.now_ns() > 0


def test_writes_use_mapports_terms_with_origin_auto() -> None:
    maps = stand_in()
    policy_rule = RuleSpec(dst=ipaddress.ip_network("10.0.0.0/8"), origin=abi.Origin.POLICY)
    port = KernelPort(maps, reason_id=len, other_rules=lambda: [policy_rule])  # type: ignore[arg-type]
    auto = RuleSpec(dst=ipaddress.ip_network("203.0.113.9/32"), proto=17)
    port.set_auto_rules([auto])
    assert maps.calls[-1] == ("set_rules", [policy_rule, auto])
    port.set_syn_auth(3, None)
    assert maps.calls[-1] == ("set_syn_auth", 3, None)

    net = ipaddress.ip_network("198.18.0.1/32")
    port.ban(net, 1234, True, "why")
    (_, key, kind, origin, record), commit = maps.addresses.calls[-2:]
    assert key == (4, int(net.network_address), 32) and kind == abi.SRC_BAN and origin == abi.Origin.AUTO
    assert record[0] == 1234 and record[2] == abi.SRC_BAN_MONITOR and record[3] == 3 and commit == ("commit",)
    port.unban(net)
    assert maps.addresses.calls[-2][4] is None and maps.addresses.calls[-1] == ("commit",)
