"""Packets through the real program with BPF_PROG_TEST_RUN.

One program is built per test session (tests/bpf/conftest.py); `Harness`
resets its maps between cases, offers set-up verbs that go through the same
datapath code the agent uses (MapPort, AddressTable), runs a packet and
reports the verdict with the reason and class the program counted.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.contract import abi
from agent.contract.capacity import Capacity
from agent.contract.keys import prefix_key
from agent.contract.rates import make_rate
from agent.contract.specs import ConfigSpec, GroupSpec, RuleSpec
from agent.datapath import bpfsys as sysbpf
from agent.datapath.mapport import MapPort
from agent.datapath.maps import Maps

# Small maps: the tests need behaviour, not capacity; the bench uses full sizes.
TEST_CAPACITY = Capacity(
    prefixes=4_095, hosts4=65536, prefixes6=1024, groups=16, sources=4096, sources6=1024,
    destinations=1024, verified=1024, sample_pages=16,
)

ACTIONS = {0: "aborted", 1: "drop", 2: "pass", 3: "tx", 4: "redirect"}


def eth() -> Any:
    """An Ethernet header with fixed MACs (scapy would otherwise resolve them)."""
    from scapy.layers.l2 import Ether

    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


@dataclass(frozen=True)
class Verdict:
    action: str
    reason: str
    cls: str
    monitor: bool
    slot: int
    data: bytes

    def __str__(self) -> str:
        mon = " (monitor)" if self.monitor else ""
        return f"{self.action}/{self.reason}/{self.cls}{mon}"


class Harness:
    def __init__(self, prog_fd: int, maps: Maps) -> None:
        self.prog_fd = prog_fd
        self.maps = maps
        self.port = MapPort(maps)
        self.port.addresses.sync(now_ns())

    # --- reset -------------------------------------------------------------

    def reset(self) -> None:
        t = self.port.addresses
        for origin in abi.Origin:
            t.replace_origin(origin, {}, {})
        t.set_destinations({})
        t.set_watch({})
        t.commit(now_ns())
        self.port.set_rules([])
        self.port.write_config(ConfigSpec(), syn_keys=[[0, 0], [0, 0]])
        for name in ("groups", "group_state", "challenge_state", "rule_state", "rule_stats", "ifslots", "watch_stats"):
            self.maps[name].clear()
        for name in ("buckets4", "buckets6", "dst_stats", "verified4", "verified6"):
            self.maps[name].clear()

    # --- set-up verbs --------------------------------------------------------

    def config(self, **kw: Any) -> None:
        self.port.write_config(ConfigSpec(**kw))

    def _record(self, prefix: str, kind: int, origin: abi.Origin, expires: int, monitor: bool) -> None:
        net = ipaddress.ip_network(prefix)
        if kind == abi.SRC_BAN:
            flags = abi.SRC_BAN_MONITOR if monitor else abi.SRC_BAN
        else:
            flags = abi.SRC_ALLOW_MONITOR if monitor else abi.SRC_ALLOW
        self.port.addresses.set_record(prefix_key(net), kind, origin, (expires, now_ns(), flags, 0))
        self.port.addresses.commit(now_ns())

    def ban(self, prefix: str, origin: abi.Origin = abi.Origin.OPERATOR, expires: int = 0,
            monitor: bool = False) -> None:
        self._record(prefix, abi.SRC_BAN, origin, expires, monitor)

    def unban(self, prefix: str, origin: abi.Origin = abi.Origin.OPERATOR) -> None:
        net = ipaddress.ip_network(prefix)
        self.port.addresses.set_record(prefix_key(net), abi.SRC_BAN, origin, None)
        self.port.addresses.commit(now_ns())

    def allow(self, prefix: str, origin: abi.Origin = abi.Origin.POLICY, expires: int = 0,
              monitor: bool = False) -> None:
        self._record(prefix, abi.SRC_ALLOW, origin, expires, monitor)

    def protect(self, prefixes: dict[str, int]) -> None:
        self.port.addresses.set_destinations(
            {prefix_key(ipaddress.ip_network(p)): g for p, g in prefixes.items()}
        )
        self.port.addresses.commit(now_ns())

    def limits(self, gid: int, limits: dict[abi.TrafficClass, tuple[int, int, int]], *,
               monitor: bool = False) -> None:
        base = [abi.Rate() for _ in range(abi.LIMIT_CLASSES)]
        for cls, (pps, bps, burst) in limits.items():
            base[cls] = make_rate(pps, bps, burst)
        self.port.set_group(gid, GroupSpec(base=base, monitor=monitor))

    def tighten(self, gid: int, limits: dict[abi.TrafficClass, tuple[int, int, int]], expires: int) -> None:
        tight = [abi.Rate() for _ in range(abi.LIMIT_CLASSES)]
        for cls, (pps, bps, burst) in limits.items():
            tight[cls] = make_rate(pps, bps, burst)
        self.port.tighten(gid, tight, expires, abi.Origin.AUTO)

    def watch(self, prefixes: dict[str, int]) -> None:
        self.port.addresses.set_watch({prefix_key(ipaddress.ip_network(p)): w for p, w in prefixes.items()})
        self.port.addresses.commit(now_ns())

    def rules(self, *rules: RuleSpec) -> None:
        self.port.set_rules(list(rules))

    def ifslot(self, ifindex: int, slot: int) -> None:
        self.port.set_ifslot(ifindex, slot)

    # --- running -----------------------------------------------------------

    def run_raw(self, data: bytes, ifindex: int = 0) -> sysbpf.TestRunResult:
        return sysbpf.prog_test_run(self.prog_fd, data, ingress_ifindex=ifindex)

    def run(self, pkt: Any, ifindex: int = 0) -> Verdict:
        data = bytes(pkt)
        before = self.port.read_stats()
        res = self.run_raw(data, ifindex)
        after = self.port.read_stats()
        delta = after[..., 0] - before[..., 0]
        hits = np.argwhere(delta)
        assert len(hits) == 1 and delta[tuple(hits[0])] == 1, f"expected one counted verdict, got {hits}"
        slot, reason, cls, mon = (int(x) for x in hits[0])
        bytes_delta = int(after[slot, reason, cls, mon, 1] - before[slot, reason, cls, mon, 1])
        assert bytes_delta == len(data), "the counter must count the frame's bytes"
        return Verdict(
            action=ACTIONS[res.retval],
            reason=abi.Reason(reason).label,
            cls=abi.TrafficClass(cls).label,
            monitor=bool(mon),
            slot=slot,
            data=res.data_out,
        )
