"""agent/control/port.py: the converters from the program's structures and the in-memory FakePort."""

from __future__ import annotations

import ctypes as ct
import ipaddress

import numpy as np
from fakes import FakePort

from agent.contract import abi
from agent.contract.keys import words
from agent.contract.specs import RuleSpec
from agent.control.port import DstSnapshot, PacketSample, sample_from_raw

V4 = ipaddress.ip_address("203.0.113.7")
V6 = ipaddress.ip_address("2001:db8:5::1:2")


def _key(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> abi.DstKey:
    k = abi.DstKey()
    k.addr[:] = words(addr.version, int(addr))
    k.family = addr.version
    return k


def _counter(base: int, group: int) -> abi.DstCounter:
    c = abi.DstCounter()
    for i in range(abi.LIMIT_CLASSES):
        c.packets[i] = base + i
        c.bytes[i] = 100 * (base + i)
        c.dropped[i] = i
    c.group = group
    return c


def test_dst_snapshot_from_a_raw_per_cpu_batch_read() -> None:
    # Two hosts, two CPUs; like the kernel, only the CPU that created the entry has the group.
    keys = bytes(_key(V4)) + bytes(_key(V6))
    per_cpu = [_counter(10, 3), _counter(1, 0), _counter(20, 4), _counter(2, 0)]
    values = b"".join(bytes(c) for c in per_cpu)
    assert ct.sizeof(abi.DstCounter) % 8 == 0, "values are read as 64-bit words"
    snap = DstSnapshot.from_raw(keys, values, n=2, ncpus=2)
    assert [snap.address(i) for i in range(2)] == [V4, V6]
    assert snap.group.tolist() == [3, 4]
    assert snap.counters[0, 0].tolist() == [11, 13, 15, 17, 19, 21]  # packets summed over CPUs
    assert snap.counters[1, 1].tolist() == [2200 + 200 * i for i in range(6)]  # bytes
    assert snap.counters[1, 2].tolist() == [2 * i for i in range(6)]  # dropped


def test_dst_snapshot_from_the_mapports_dict_matches_from_raw() -> None:
    snap = DstSnapshot.from_counters({(4, int(V4)): _counter(10, 3), (6, int(V6)): _counter(20, 4)})
    assert [snap.address(i) for i in range(len(snap))] == [V4, V6]
    assert snap.counters[1, 0].tolist() == [20, 21, 22, 23, 24, 25]
    assert DstSnapshot.empty().counters.shape == (0, 3, abi.LIMIT_CLASSES)


def test_sample_from_the_ring_buffer_structure() -> None:
    s = abi.Sample()
    s.src[:] = words(6, int(V6))
    s.dst[:] = words(6, int(ipaddress.ip_address("2001:db8:5::80")))
    s.family, s.proto, s.cls, s.sport, s.dport, s.group, s.len = 6, 17, abi.TrafficClass.UDP, 123, 4444, 2, 490
    s.reason, s.tcp_flags, s.monitor, s.action, s.ts = abi.Reason.RULE_DROP, 0, 1, abi.XDP_PASS, 77
    got = sample_from_raw(s)
    assert got == PacketSample(
        src=V6, dst=ipaddress.ip_address("2001:db8:5::80"), sport=123, dport=4444, group=2, length=490, proto=17,
        cls=abi.TrafficClass.UDP, reason=abi.Reason.RULE_DROP, tcp_flags=0, monitor=True, action=abi.XDP_PASS,
        ts_ns=77,
    )
    s4 = abi.Sample()
    s4.src[:] = words(4, int(V4))
    s4.family = 4
    assert sample_from_raw(s4).src == V4


def test_fake_port_keeps_state_and_a_history_of_writes() -> None:
    port = FakePort(groups=4)
    port.count_group(1, 2, 100, 10_000, dropped=5)
    port.count_group(1, 2, 100, 10_000)
    assert port.read_group_stats()[1, 2].tolist() == [200, 20_000, 5, 0, 0]
    port.count_host(V4, 1, 2, 7, 700)
    snap = port.read_dst_stats()
    assert snap.address(0) == V4 and snap.group.tolist() == [1] and int(snap.counters[0, 0, 2]) == 7
    port.forget_host(V4)
    assert len(port.read_dst_stats()) == 0

    port.set_syn_auth(1, port.now_ns() + 10)
    port.set_auto_rules([RuleSpec(dst=ipaddress.ip_network("203.0.113.7/32"))])
    net = ipaddress.ip_network("198.18.0.1/32")
    port.ban(net, port.now_ns() + 5, False, "why")
    assert port.live_bans().keys() == {net}
    port.advance(1.0)
    assert port.live_bans() == {}, "expired bans are not enforced"
    port.set_syn_auth(1, None)
    port.unban(net)
    assert port.syn_auth == {} and port.bans == {}
    assert [k for _, k, _ in port.writes] == ["syn_auth", "rules", "ban", "syn_auth", "unban"]
    assert port.written("syn_auth")[1] == (port.now_ns(), (1, None))
    assert port.drain_samples() == [] and np.all(port.read_group_stats()[0] == 0)
