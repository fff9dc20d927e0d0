"""The program on a real interface: real packets across a veth pair between namespaces.

The program is attached (native mode) to the target end; the sender sends
UDP from two source addresses, one of them banned. The banned one must never
reach the target's stack, the other must arrive in full, and the counters of
the target's interface slot must equal what was sent — packets and bytes, per
reason — with nothing else counted (the lab's links are quiet).
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest
from wire import Sent, Track, Traffic, ban, udp_stats

from agent.contract import abi
from agent.datapath.attach import XdpMode, attach, xdp_state
from agent.datapath.loader import Program
from agent.datapath.mapport import MapPort
from agent.lab.topology import VethPair

SLOT = 1
COUNT = 300

SOURCES: dict[int, tuple[str, str]] = {
    socket.AF_INET: ("192.0.2.66", "192.0.2.1"),
    socket.AF_INET6: ("2001:db8::66", "2001:db8::1"),
}


def wait_for_counts(
    port: MapPort, expect: dict[tuple[abi.Reason, abi.TrafficClass], Sent], timeout: float = 3.0
) -> Any:
    """The slot's counters once they reach what was sent (NAPI runs after sendto returns)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = port.read_stats()[SLOT]
        done = all(int(stats[r, c, 0, 0]) >= s.packets for (r, c), s in expect.items())
        if done or time.monotonic() > deadline:
            return stats
        time.sleep(0.02)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_banned_source_dropped_other_source_arrives_counters_exact(
    family: int,
    veth_pair: VethPair,
    traffic: Traffic,
    fg_program: Program,
    fg_port: MapPort,
    detach_after: Track,
) -> None:
    target = veth_pair.target
    banned_src, legit_src = SOURCES[family]
    traffic.add_source(banned_src)
    # Counters for the target's ifindex under a slot of their own; the slot of
    # a namespace's ifindex is unique to this test, so start from zero.
    fg_port.set_ifslot(target.ifindex, SLOT)
    fg_port.maps["stats"].clear()
    ban(fg_port, f"{banned_src}/{128 if family == socket.AF_INET6 else 32}")

    detach_after(target.ifname, target.ns)
    result = attach(target.ifname, fg_program.fd, XdpMode.NATIVE, netns=target.ns)
    assert (result.mode, result.prog_id) == (XdpMode.NATIVE, fg_program.id)
    assert xdp_state(target.ifname, netns=target.ns).prog_id == fg_program.id

    rx = traffic.listen(family)
    udp_before = udp_stats(veth_pair, family)
    link_before = veth_pair.topology.link_stats(target.ns, target.ifname)
    banned_tx, legit_tx = traffic.sender(banned_src), traffic.sender(legit_src)
    banned, legit = Sent(), Sent()
    for _ in range(COUNT // 50):
        traffic.send(banned_tx, 50, banned)
        traffic.send(legit_tx, 50, legit)
    got: Counter[str] = Counter()
    traffic.drain(rx, got, until=lambda: got[legit_src] >= legit.packets, timeout=3.0)

    assert (banned.packets, legit.packets) == (COUNT, COUNT), "the sender lost datagrams before the wire"
    assert got[banned_src] == 0, "a banned source reached the target's socket"
    assert got[legit_src] == legit.packets
    assert set(got) == {legit_src}
    udp_after = udp_stats(veth_pair, family)
    assert udp_after["InDatagrams"] - udp_before["InDatagrams"] == legit.packets

    cls = abi.TrafficClass.UDP
    expect = {(abi.Reason.BANNED, cls): banned, (abi.Reason.PASSED, cls): legit}
    stats = wait_for_counts(fg_port, expect)
    assert int(stats[abi.Reason.BANNED, cls, 0, 0]) == banned.packets
    assert int(stats[abi.Reason.BANNED, cls, 0, 1]) == banned.bytes
    assert int(stats[abi.Reason.PASSED, cls, 0, 0]) == legit.packets
    assert int(stats[abi.Reason.PASSED, cls, 0, 1]) == legit.bytes
    # Nothing else was counted on this interface: no other reason, class or monitor flag.
    others = stats[..., 0].copy()
    others[abi.Reason.BANNED, cls, 0] = 0
    others[abi.Reason.PASSED, cls, 0] = 0
    # The interface received every frame sent (the program sees them all,
    # drops included), and the program counted each of them once.
    link_after = veth_pair.topology.link_stats(target.ns, target.ifname)
    assert link_after.rx_packets - link_before.rx_packets == banned.packets + legit.packets
    assert int(others.sum()) == 0, {
        f"{abi.Reason(r).label}/{abi.TrafficClass(c).label}/mon={m}": int(others[r, c, m])
        for r, c, m in np.argwhere(others)
    }
