"""agent/lab/topology.py against the real kernel: namespaces, veths, routes and packets."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyroute2 import IPRoute
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from agent.lab import _netns
from agent.lab._build import Builder
from agent.lab.topology import (
    End,
    InvalidNameError,
    Lab,
    Link,
    NamespaceCallError,
    Node,
    NotRootError,
    Route,
    Topology,
    TopologyBuildError,
    VethPair,
    build_lab,
    build_pair,
    cleanup_stale,
    pair_topology,
    run_prefix,
)

TIMEOUT = 2.0


def leftovers(prefix: str) -> list[str]:
    """Namespaces named ``prefix*`` and interfaces named ``prefix*`` anywhere."""
    found = [f"netns {ns}" for ns in _netns.list_namespaces() if ns.startswith(prefix)]
    with IPRoute() as ipr:
        found += [
            f"root/{n}" for n in (lk.get("IFLA_IFNAME") for lk in ipr.link("dump")) if n.startswith(prefix)
        ]
    for ns in _netns.list_namespaces():
        with IPRoute(netns=ns, flags=0) as ipr:
            names = [lk.get("IFLA_IFNAME") for lk in ipr.link("dump")]
        found += [f"{ns}/{n}" for n in names if n.startswith(prefix)]
    return found


def udp_echo(pair: VethPair, family: int) -> tuple[bytes, str]:
    """Send a datagram sender -> target, echo it back; return what the sender got and from where."""
    topo = pair.topology
    v4 = family == socket.AF_INET
    src = str(pair.sender.ipv4 if v4 else pair.sender.ipv6)
    dst = str(pair.target.ipv4 if v4 else pair.target.ipv6)
    with topo.socket(pair.target.ns, family) as server, topo.socket(pair.sender.ns, family) as client:
        server.settimeout(TIMEOUT)
        client.settimeout(TIMEOUT)
        server.bind((dst, 0))
        client.bind((src, 0))
        client.sendto(b"ping", server.getsockname()[:2])
        data, peer = server.recvfrom(64)
        assert peer[0] == src
        server.sendto(data.upper(), peer)
        echoed, origin = client.recvfrom(64)
    return echoed, origin[0]


# --- building and tearing down ---------------------------------------------------------


def test_pair_ends_are_exposed_as_seen_inside_their_namespaces() -> None:
    prefix = run_prefix("a")
    with build_pair(prefix) as pair:
        assert (str(pair.sender.ipv4), str(pair.sender.ipv6)) == ("192.0.2.1", "2001:db8::1")
        assert (str(pair.target.ipv4), str(pair.target.ipv6)) == ("192.0.2.2", "2001:db8::2")
        for end, peer in ((pair.sender, pair.target), (pair.target, pair.sender)):
            assert end.ns.startswith(prefix) and end.ns in _netns.list_namespaces()
            assert end.ifname.startswith(prefix) and len(end.ifname) <= 15
            with pair.topology.iproute(end.ns) as ipr:
                link = ipr.link("get", index=end.ifindex)[0]
                neighbours = {
                    n.get("NDA_DST"): n.get("NDA_LLADDR") for n in ipr.neigh("dump", ifindex=end.ifindex)
                }
            assert link.get("IFLA_IFNAME") == end.ifname
            assert link.get("IFLA_ADDRESS") == end.mac
            # Static entries for every peer address, nothing else (nothing was resolved).
            assert neighbours == {str(peer.ipv4): peer.mac, str(peer.ipv6): peer.mac}
    assert leftovers(prefix) == []


def test_lab_teardown_leaves_no_namespace_interface_or_holder_behind() -> None:
    prefix = run_prefix("b")
    lab = build_lab(prefix, attackers=2, clients=2)
    inodes = [_netns.inode(ns) for ns in lab.topology.namespaces]
    assert len(lab.topology.namespaces) == 7 and None not in inodes
    lab.teardown()
    assert leftovers(prefix) == []
    assert [_netns.holders(ino) for ino in inodes if ino is not None] == [[]] * 7
    lab.teardown()  # a second teardown is harmless


def test_exception_inside_the_context_still_tears_down() -> None:
    prefix = run_prefix("c")
    with pytest.raises(RuntimeError, match="boom"), build_pair(prefix) as pair:
        assert all(_netns.exists(ns) for ns in pair.topology.namespaces)
        raise RuntimeError("boom")
    assert leftovers(prefix) == []


def test_failed_build_removes_what_it_had_built_and_names_the_step() -> None:
    prefix = run_prefix("d")
    topo = Topology(
        prefix,
        [Node("a", routes=(Route("203.0.113.0/24", via="10.99.99.99"),)), Node("b")],
        [Link(End("a", "a0", ("10.0.0.1/24",)), End("b", "b0", ("10.0.0.2/24",)))],
    )
    with pytest.raises(TopologyBuildError, match=rf"add route failed in {prefix}a .*via 10.99.99.99.*unreachable"):
        topo.build()
    assert not topo.built
    assert leftovers(prefix) == []


def test_keyboard_interrupt_during_build_removes_what_it_had_built(monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = run_prefix("e")

    def interrupted(self: Builder, node: Node) -> None:
        assert _netns.exists(self.prefix + node.name)  # the namespaces are really there
        raise KeyboardInterrupt

    monkeypatch.setattr(Builder, "_build_routes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_pair(prefix)
    assert leftovers(prefix) == []


def test_building_twice_under_the_same_names_is_safe() -> None:
    prefix = run_prefix("f")
    first = build_pair(prefix)
    try:
        assert first.topology.build() is first.topology  # building a built topology does nothing
        old_inodes = {ns: _netns.inode(ns) for ns in first.topology.namespaces}
        second = build_pair(prefix)  # replaces the first one's namespaces
        try:
            assert {ns: _netns.inode(ns) for ns in second.topology.namespaces} != old_inodes
            assert udp_echo(second, socket.AF_INET) == (b"PING", "192.0.2.2")
            first.teardown()  # must not touch what the second build owns now
            assert all(_netns.exists(ns) for ns in second.topology.namespaces)
            assert udp_echo(second, socket.AF_INET6) == (b"PING", "2001:db8::2")
        finally:
            second.teardown()
    finally:
        first.teardown()
    assert leftovers(prefix) == []


CRASHING_RUN = """
import sys, time
from agent.lab.topology import build_pair
build_pair(sys.argv[1])
print("built", flush=True)
time.sleep(60)
"""


def test_cleanup_stale_removes_namespaces_of_dead_runs_only() -> None:
    prefix = run_prefix("g")
    repo = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_RUN, prefix], cwd=repo, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        seen: list[str] = []
        for line in child.stdout:  # its log lines, then "built" (or EOF if it failed)
            seen.append(line.strip())
            if seen[-1] == "built":
                break
        assert seen[-1:] == ["built"], f"the child run did not build its pair: {seen}"
        assert cleanup_stale(prefix) == []  # its builder is alive: not stale
        assert _netns.exists(prefix + "sender") and _netns.exists(prefix + "target")
    finally:
        child.kill()  # a crash: no teardown, no atexit
        child.wait()
    assert sorted(cleanup_stale(prefix)) == [prefix + "sender", prefix + "target"]
    assert leftovers(prefix) == []


def test_errors_say_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidNameError, match=r"'fg-a-rather-long-prefix-snd' is 27 characters.*at most 15"):
        pair_topology("fg-a-rather-long-prefix-")
    with pytest.raises(InvalidNameError, match="letters, digits"):
        pair_topology("fg x-")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(NotRootError, match="run as root"):
        build_pair(run_prefix("h"))
    assert leftovers(run_prefix("h")) == []


# --- kernel settings -------------------------------------------------------------------


def test_ipv6_is_on_only_where_configured_and_without_autoconfiguration() -> None:
    prefix = run_prefix("i")
    with build_pair(prefix) as dual, build_pair(run_prefix("j"), ipv6=False) as v4only:
        for end in (dual.sender, dual.target):
            conf = f"net.ipv6.conf.{end.ifname}"
            got = {
                k: dual.topology.sysctl(end.ns, f"{conf}.{k}")
                for k in ("disable_ipv6", "accept_ra", "autoconf")
            }
            assert got == {"disable_ipv6": "0", "accept_ra": "0", "autoconf": "0"}
            assert dual.topology.sysctl(end.ns, f"{conf}.addr_gen_mode") == "1"
            assert dual.topology.sysctl(end.ns, f"{conf}.accept_dad") == "0"
            with dual.topology.iproute(end.ns) as ipr:
                v6 = [
                    a.get("IFA_ADDRESS") for a in ipr.addr("dump", family=socket.AF_INET6, index=end.ifindex)
                ]
            assert v6 == [str(end.ipv6)]  # no link-local address, nothing tentative
        for end in (v4only.sender, v4only.target):
            assert v4only.topology.sysctl(end.ns, f"net.ipv6.conf.{end.ifname}.disable_ipv6") == "1"
            assert v4only.topology.sysctl(end.ns, "net.ipv6.conf.default.disable_ipv6") == "1"


def test_lab_routers_forward_and_accept_spoofed_sources(lab: Lab) -> None:
    topo = lab.topology
    for ns in (lab.upstream, lab.gateway):
        assert topo.sysctl(ns, "net.ipv4.ip_forward") == "1"
        assert topo.sysctl(ns, "net.ipv6.conf.all.forwarding") == "1"
    for ifc in (*lab.attackers, *lab.clients):
        assert topo.sysctl(ifc.ns, "net.ipv4.ip_forward") == "0"
    assert topo.sysctl(lab.server, "net.ipv4.ip_forward") == "0"
    for ns in lab.namespaces.values():
        assert topo.sysctl(ns, "net.ipv4.conf.all.rp_filter") == "0"
        assert topo.sysctl(ns, "net.ipv4.conf.default.rp_filter") == "0"


def test_offloads_match_what_xdp_on_veth_needs(veth_pair: VethPair) -> None:
    sender = veth_pair.topology.features(veth_pair.sender.ns, veth_pair.sender.ifname)
    target = veth_pair.topology.features(veth_pair.target.ns, veth_pair.target.ifname)
    assert sender["rx-gro"], "the sender needs GRO (NAPI) so XDP_TX on the target can hand frames back"
    assert not target["rx-gro"]
    # Complete checksums on the wire (no CHECKSUM_PARTIAL across the veth).
    assert not sender["tx-checksum-ip-generic"] and not target["tx-checksum-ip-generic"]


def test_lab_names_and_attach_point(lab: Lab) -> None:
    prefix = lab.topology.prefix
    assert lab.gateway == prefix + "gw" and lab.upstream == prefix + "up" and lab.server == prefix + "srv"
    ingress = lab.gateway_ingress
    assert (ingress.ns, ingress.ifname, str(ingress.ipv4), str(ingress.ipv6)) == (
        prefix + "gw",
        prefix + "gw-in",
        "192.0.2.2",
        "2001:db8:1::2",
    )
    assert (ingress.peer_ns, ingress.peer_ifname) == (lab.upstream_link.ns, lab.upstream_link.ifname)
    assert lab.upstream_link.gro and lab.server_link.gro
    assert lab.attackers[0].ipv4 in lab.foreign_v4 and lab.attackers[0].ipv6 in lab.foreign_v6
    assert lab.clients[0].ipv4 in lab.domestic_v4 and lab.clients[0].ipv6 in lab.domestic_v6
    assert lab.server_v4 in lab.server_net_v4 and lab.server_v6 in lab.server_net_v6
    with lab.topology.iproute(lab.gateway) as ipr:
        assert ipr.link_lookup(ifname=ingress.ifname) == [ingress.ifindex]
    for ifc in lab.topology.ifaces:
        assert ifc.ifname.startswith(prefix) and len(ifc.ifname) <= 15


# --- entering namespaces ---------------------------------------------------------------


def test_run_and_popen_enter_with_nsenter_and_keep_bpffs_visible() -> None:
    with build_pair(run_prefix("k")) as pair:
        topo = pair.topology
        assert topo.nsenter_argv("sender", ["true"])[1:] == [
            f"--net=/run/netns/{pair.sender.ns}",
            "--",
            "true",
        ]
        dev = topo.run(pair.sender.ns, ["cat", "/proc/net/dev"]).stdout.decode()
        assert pair.sender.ifname in dev and pair.target.ifname not in dev
        fs = topo.run("target", ["stat", "-f", "-c", "%T", "/sys/fs/bpf"]).stdout.decode().strip()
        assert fs == "bpf_fs", (
            "bpffs is not mounted on /sys/fs/bpf inside the namespace (make setup mounts it)"
        )
        sleeper = topo.popen("sender", ["sleep", "30"])
        assert sleeper.poll() is None
    assert sleeper.wait(timeout=1) != 0  # teardown stopped it


def test_call_runs_python_inside_the_namespace(veth_pair: VethPair) -> None:
    topo, target = veth_pair.topology, veth_pair.target
    in_thread = topo.call(target.ns, lambda: Path("/proc/thread-self/net/dev").read_text())
    in_child = topo.call_in_child(target.ns, lambda: Path("/proc/self/net/dev").read_text())
    for dev in (in_thread, in_child):
        assert target.ifname in dev and veth_pair.sender.ifname not in dev
    with pytest.raises(NamespaceCallError, match="ZeroDivisionError"):
        topo.call_in_child(target.ns, lambda: 1 // 0)


# --- traffic -----------------------------------------------------------------------------


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_udp_echo_between_the_pair(veth_pair: VethPair, family: int) -> None:
    target = veth_pair.target
    expected = str(target.ipv4 if family == socket.AF_INET else target.ipv6)
    assert udp_echo(veth_pair, family) == (b"PING", expected)


@pytest.mark.parametrize(
    ("family", "address"),
    [
        (socket.AF_INET, "203.0.113.10"),
        (socket.AF_INET, "203.0.113.200"),  # any address of the /24 (carpet bombing)
        (socket.AF_INET6, "2001:db8:5::10"),
        (socket.AF_INET6, "2001:db8:5::beef"),
    ],
)
def test_tcp_connect_from_client_to_server_across_the_gateway(lab: Lab, family: int, address: str) -> None:
    topo, client = lab.topology, lab.clients[0]
    before_in = topo.link_stats(lab.gateway, lab.gateway_ingress.ifname)
    before_out = topo.link_stats(lab.gateway, lab.gateway_internal.ifname)
    with (
        topo.socket(lab.server, family, socket.SOCK_STREAM) as listener,
        topo.socket(client.ns, family, socket.SOCK_STREAM) as conn,
    ):
        listener.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        listener.listen()
        conn.settimeout(TIMEOUT)
        conn.connect((address, listener.getsockname()[1]))
        listener.settimeout(TIMEOUT)
        accepted, peer = listener.accept()
        with accepted:
            assert accepted.getsockname()[0] == address
            accepted.sendall(b"hello")
            assert conn.recv(16) == b"hello"
    expected_client = str(client.ipv4 if family == socket.AF_INET else client.ipv6)
    assert peer[0] == expected_client
    # The connection really went through the gateway, both ways.
    after_in = topo.link_stats(lab.gateway, lab.gateway_ingress.ifname)
    after_out = topo.link_stats(lab.gateway, lab.gateway_internal.ifname)
    assert after_in.rx_packets - before_in.rx_packets >= 3  # SYN, ACK, ACK of the data
    assert after_out.rx_packets - before_out.rx_packets >= 2  # SYN-ACK, data


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_spoofed_source_crosses_the_gateway_and_replies_die_upstream(lab: Lab, family: int) -> None:
    topo, attacker = lab.topology, lab.attackers[0]
    if family == socket.AF_INET:
        spoofed, target = "198.18.77.5", "203.0.113.77"
        assert attacker.ipv4 != spoofed
    else:
        spoofed, target = "2001:db8:f:77::5", "2001:db8:5::77"
    any_addr = "::" if family == socket.AF_INET6 else "0.0.0.0"
    with (
        topo.socket(lab.server, family) as server,
        topo.socket(attacker.ns, family, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw,
    ):
        server.bind((any_addr, 0))
        server.settimeout(TIMEOUT)
        port = server.getsockname()[1]
        layer3 = IP(src=spoofed, dst=target) if family == socket.AF_INET else IPv6(src=spoofed, dst=target)
        raw.sendto(bytes(layer3 / UDP(sport=4444, dport=port) / b"spoofed"), (target, 0))
        data, origin = server.recvfrom(64)
        assert (data, origin[0], origin[1]) == (b"spoofed", spoofed, 4444)
        before_upstream = topo.link_stats(lab.upstream, lab.upstream_link.ifname)
        before_attacker = topo.link_stats(attacker.ns, attacker.ifname)
        server.sendto(b"reply", origin)  # towards a host that does not exist
        deadline = time.monotonic() + TIMEOUT
        while (
            topo.link_stats(lab.upstream, lab.upstream_link.ifname).rx_packets == before_upstream.rx_packets
        ):
            assert time.monotonic() < deadline, (
                "the reply to the spoofed source never reached the upstream router"
            )
            time.sleep(0.01)
        time.sleep(0.05)
        assert topo.link_stats(attacker.ns, attacker.ifname).rx_packets == before_attacker.rx_packets
        with topo.iproute(lab.upstream) as ipr:
            routes = ipr.route("dump", family=family, table=254)
        covering = {
            (f"{r.get('RTA_DST') or any_addr}/{r['dst_len']}", r["type"])
            for r in routes
            if ipaddress.ip_address(spoofed)
            in ipaddress.ip_network(f"{r.get('RTA_DST') or any_addr}/{r['dst_len']}")
        }
        assert covering == {(f"{any_addr}/0", 6)}, (
            f"{spoofed} should only match upstream's blackhole: {covering}"
        )


# --- quiet links ------------------------------------------------------------------------------


def test_links_stay_quiet_after_build() -> None:
    with build_pair(run_prefix("q")) as pair, build_lab(run_prefix("r"), attackers=2, clients=2) as lab:
        ifaces = [*pair.topology.ifaces, *lab.topology.ifaces]
        topologies = [pair.topology] * len(pair.topology.ifaces) + [lab.topology] * len(lab.topology.ifaces)
        time.sleep(0.6)  # MLD reports, DAD, router solicitations would all have gone out by now
        noisy = {
            ifc.ifname: stats
            for topo, ifc in zip(topologies, ifaces, strict=True)
            if (stats := topo.link_stats(ifc.ns, ifc.ifname)).packets != 0
        }
    assert len(ifaces) == 14
    assert noisy == {}, f"unsolicited packets since the links came up: {noisy}"
