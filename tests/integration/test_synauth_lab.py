"""SYN authentication on the lab: new users connect through a spoofed SYN flood.

trafgen floods the protected web server with SYNs from spoofed sources
while a legitimate client opens new TCP connections with ordinary sockets,
each from a source address of its own, so that every one of them is a new,
unverified user (agent/bench/synauth.py says why). The server runs without
SYN cookies: its 128-entry SYN queue is what the flood fills.

- floodguard with ``syn_auth: always``: at least 95% connect within 3 s
  and the server's SYN backlog never overflows;
- floodguard off: success collapses and the backlog overflows;
- floodguard with SYN authentication off: per-source limits cannot help,
  every spoofed SYN is a new source under its limit and reaches the server.

floodguard is the real daemon in the gateway namespace with the lab policy
(etc/lab-policy.yaml, its own challenge cap). This is `floodguard bench
synauth` run short, at a lower flood rate, asserting the three outcomes above.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agent.bench import synauth
from agent.datapath import attach
from agent.lab.topology import Lab

pytestmark = pytest.mark.slow

PPS = 20_000
CONNECTS = 40
RATE = 20.0


@pytest.fixture(scope="module")
def result(lab: Lab) -> dict[str, Any]:
    return synauth.run(PPS, CONNECTS, RATE, lab=lab, progress=print)


def _show(result: dict[str, Any]) -> None:
    print(synauth.render(result))


def test_every_configuration_ran_the_flood_and_every_connection(result: dict[str, Any]) -> None:
    _show(result)
    assert list(result["configs"]) == list(synauth.CONFIG_NAMES)
    for name, r in result["configs"].items():
        assert r["connects"] == CONNECTS, name
        # trafgen's per-second budget: at least one second of flood went out in every configuration.
        assert r["flood_packets"] >= PPS, (name, r["flood_packets"])


def test_with_syn_auth_new_users_connect_and_the_backlog_never_overflows(result: dict[str, Any]) -> None:
    r = result["configs"]["syn_auth_always"]
    assert r["connect_success_pct"] >= 95.0, r
    assert r["listen_overflows"] == 0 and not any(r["listen"].values()), r["listen"]
    # Every spoofed SYN was answered from XDP (or dropped at the cap): none reached the server.
    # What passed are the clients' SYNs after their source was verified (a retransmission may add one).
    assert r["challenges_sent"] + r["challenge_limited"] >= 0.99 * r["flood_packets"], r
    assert r["syns_passed"] <= 2 * CONNECTS, r
    assert r["verified"] >= CONNECTS * r["connect_success_pct"] / 100, r


def test_without_floodguard_success_collapses(result: dict[str, Any]) -> None:
    off, on = result["configs"]["floodguard_off"], result["configs"]["syn_auth_always"]
    assert off["listen_overflows"] > 0, off
    assert off["connect_success_pct"] <= 20.0, off
    assert on["connect_success_pct"] - off["connect_success_pct"] >= 75.0


def test_per_source_limits_alone_do_not_stop_a_spoofed_flood(result: dict[str, Any]) -> None:
    r = result["configs"]["syn_auth_off"]
    assert r["syns_passed"] >= 0.9 * r["flood_packets"], r
    assert r["challenges_sent"] == 0 and r["listen_overflows"] > 0, r
    assert r["connect_success_pct"] <= 20.0, r


def test_the_lab_is_left_as_found(result: dict[str, Any], lab: Lab) -> None:
    client = lab.clients[0]
    with lab.topology.iproute(client.ns) as ipr:
        addrs = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2, index=client.ifindex)}
    assert addrs == {str(client.ipv4)}
    with lab.topology.iproute(client.peer_ns) as ipr:
        peer = ipr.link_lookup(ifname=client.peer_ifname)[0]
        neighbours = {n.get_attr("NDA_DST") for n in ipr.get_neighbours(family=2, ifindex=peer)}
    assert neighbours == {str(client.ipv4)}, "the upstream router knows the client's own address only"
    for iface in (lab.gateway_ingress, lab.upstream_link):
        assert not attach.xdp_state(iface.ifname, netns=iface.ns).attached, iface.ifname
    ours = f"floodguard-lab-{os.getpid()}-"  # LabAgent's pin roots
    assert not [p for p in Path("/sys/fs/bpf").iterdir() if p.name.startswith(ours)]
