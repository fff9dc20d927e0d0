"""agent/lab/traffic.py and agent/lab/scenarios.py on the real kernel: floods, clients, the server's backlog.

No floodguard here: these tests show that the lab's traffic is what it
claims to be, so that tests with floodguard can trust it. Every flood,
server and client started here is stopped again; an autouse fixture fails a
test that leaves a process behind.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from pyroute2 import IPRoute
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from scapy.utils import rdpcap

import agent
from agent.datapath import attach
from agent.lab import _trafgen
from agent.lab._trafgen import Template
from agent.lab.scenarios import SCENARIOS, run_scenario
from agent.lab.topology import Lab
from agent.lab.traffic import (
    DEFAULTS,
    RECIPES,
    REFLECTION_SERVICES,
    Flood,
    FloodError,
    LegitServer,
    LinkCounter,
    Probe,
    Recipe,
    attach_ceiling,
    attach_upstream_pass,
    connect_test,
    limit_server_link,
    listen_counters,
    make_recipe,
)

ETH_P_ALL = 0x0003
RATE = 20_000  # per-recipe checks: low enough for any recipe on a busy 2-core machine


@pytest.fixture(autouse=True)
def no_process_left() -> Iterator[None]:
    """Fail the test if it leaves a child process (trafgen, timeout, a client or server) running."""
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    deadline = time.monotonic() + 3.0
    while True:
        left = [p for p in me.children(recursive=True) if p.pid not in before and p.is_running()
                and p.status() != psutil.STATUS_ZOMBIE]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"processes left behind: {[(p.pid, p.cmdline()) for p in left]}"


def no_trafgen_on(lab: Lab) -> list[str]:
    """trafgen processes anywhere whose command line names one of this lab's interfaces."""
    prefix = lab.topology.prefix
    found = []
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "trafgen" in cmd and prefix in cmd:
            found.append(f"{p.info['pid']}: {cmd}")
    return found


# --- what the recipes send -----------------------------------------------------------------------


def checksums_valid(frame: Packet) -> bool:
    """Recompute every IPv4/UDP/TCP/ICMP checksum with scapy and compare with the frame's."""
    again = Ether(bytes(frame))
    for layer in (IP, UDP, TCP, ICMP):
        if layer in again:
            del again[layer].chksum
    return bytes(Ether(bytes(again))) == bytes(frame)


@dataclass(frozen=True)
class Shape:
    """What every packet of a recipe must look like (``check``) and what the sample as a whole must show."""

    check: Callable[[Lab, Packet], bool]
    overall: Callable[[Lab, list[Packet]], bool] = lambda lab, frames: True


def _l3(frame: Packet) -> Packet:
    return frame[IPv6] if IPv6 in frame else frame[IP]


def _foreign(lab: Lab, frame: Packet) -> bool:
    src = ipaddress.ip_address(_l3(frame).src)
    return src in (lab.foreign_v6 if src.version == 6 else lab.foreign_v4)


def _to_server(lab: Lab, frame: Packet) -> bool:
    return _l3(frame).dst in (str(lab.server_v4), str(lab.server_v6))


def _many(field: Callable[[Packet], object], n: int) -> Callable[[Lab, list[Packet]], bool]:
    return lambda lab, frames: len({field(f) for f in frames}) >= n


def _reflection(port: int) -> Shape:
    return Shape(
        lambda lab, f: UDP in f and f[UDP].sport == port and f[UDP].dport >= 1024 and _foreign(lab, f)
        and _to_server(lab, f),
        _many(lambda f: _l3(f).src, 40),
    )


SHAPES: dict[str, Shape] = {
    **{f"reflection_{svc}": _reflection(port) for svc, port in REFLECTION_SERVICES.items()},
    "syn_flood": Shape(
        lambda lab, f: TCP in f and f[TCP].flags == "S" and f[TCP].dport in DEFAULTS.http_ports
        and ("MSS", 1460) in f[TCP].options and _foreign(lab, f) and _to_server(lab, f),
        lambda lab, frames: {f[TCP].dport for f in frames} == set(DEFAULTS.http_ports)
        and len({(_l3(f).src, f[TCP].sport, f[TCP].seq) for f in frames}) >= 40,
    ),
    "icmp_flood": Shape(lambda lab, f: ICMP in f and f[ICMP].type == 8 and _foreign(lab, f) and _to_server(lab, f),
                        _many(lambda f: f[IP].src, 40)),
    "fragment_flood": Shape(
        lambda lab, f: IP in f and f[IP].proto == 17 and f[IP].frag > 0 and UDP not in f and _foreign(lab, f)
        and _to_server(lab, f),
        lambda lab, frames: {bool(f[IP].flags.MF) for f in frames} == {True, False},
    ),
    "heavy_hitter": Shape(
        lambda lab, f: UDP in f and f[UDP].dport == DEFAULTS.udp_port and _to_server(lab, f)
        and _l3(f).src in (str(lab.attackers[0].ipv4), str(lab.attackers[0].ipv6)),
    ),
    "carpet_bombing": Shape(
        lambda lab, f: UDP in f and _foreign(lab, f) and (
            ipaddress.ip_address(f[IP].dst) in lab.server_net_v4 and 1 <= int(f[IP].dst.split(".")[-1]) <= 254
            if IP in f else ipaddress.ip_address(f[IPv6].dst) in lab.server_net_v6),
        _many(lambda f: _l3(f).dst, 30),
    ),
    "mix": Shape(
        lambda lab, f: _foreign(lab, f) and _to_server(lab, f),
        lambda lab, frames: any(UDP in f and f[UDP].sport == 53 for f in frames)
        and any(TCP in f and f[TCP].flags == "S" for f in frames)
        and any(ICMP in f for f in frames) and any(IP in f and f[IP].frag > 0 for f in frames),
    ),
}

V6_RECIPES = ["reflection_dns", "reflection_ntp", "reflection_memcached", "syn_flood", "heavy_hitter",
              "carpet_bombing"]


def test_every_recipe_has_a_shape_check() -> None:
    assert set(SHAPES) == set(RECIPES)


@pytest.mark.parametrize(
    ("name", "ipv6"), [(n, False) for n in RECIPES] + [(n, True) for n in V6_RECIPES],
    ids=lambda v: v if isinstance(v, str) else ("v6" if v else "v4"),
)
def test_recipe_packets_are_well_formed(lab: Lab, name: str, ipv6: bool) -> None:
    """trafgen writes 64 packets of the recipe to a pcap: valid checksums, the intended shape, the stated sizes."""
    flood = Flood(lab, name, ipv6=ipv6)
    with tempfile.TemporaryDirectory() as tmp:
        cfg, pcap = os.path.join(tmp, "f.cfg"), os.path.join(tmp, "f.pcap")
        with open(cfg, "w") as f:
            f.write(flood.config_text)
        subprocess.run(_trafgen.pcap_argv(cfg, pcap, 64), cwd=tmp, check=True, capture_output=True, timeout=30)
        frames = list(rdpcap(pcap))
    assert len(frames) == 64
    shape = SHAPES[name]
    assert all(f[Ether].dst == flood.peer.mac and f[Ether].src == flood.iface.mac for f in frames)
    assert all((IPv6 in f) == ipv6 for f in frames)
    bad = [f.summary() for f in frames if not shape.check(lab, f)]
    assert not bad, f"{name}: packets of the wrong shape: {bad[:3]}"
    assert shape.overall(lab, frames), f"{name}: the sample lacks variety: {[f.summary() for f in frames[:4]]}"
    assert all(checksums_valid(f) for f in frames), f"{name}: a checksum is wrong"
    assert {len(f) for f in frames} == {t.frame_len for t in flood.recipe.templates}


def test_ipv4_only_recipes_refuse_ipv6(lab: Lab) -> None:
    for name in ("icmp_flood", "fragment_flood", "mix"):
        with pytest.raises(ValueError, match="IPv4 only"):
            make_recipe(lab, name, ipv6=True)


def test_scenarios_name_the_vectors_the_control_loop_uses() -> None:
    from agent.control.vectors import REFLECTION_PORTS, Vector

    known = {v.value for v in Vector}
    for sc in SCENARIOS.values():
        assert sc.recipe in RECIPES
        assert set(sc.vectors) <= known, sc
        if sc.service is not None:
            assert REFLECTION_PORTS[REFLECTION_SERVICES[sc.service]] == sc.service


# --- floods on the lab ---------------------------------------------------------------------------------


class Sniffer:
    """The first frames ``gw-in`` receives, through a packet socket in the gateway's namespace."""

    def __init__(self, lab: Lab, keep: int = 300) -> None:
        self.sock = lab.topology.socket(lab.gateway, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((lab.gateway_ingress.ifname, 0))
        self.sock.settimeout(0.2)
        self.frames: list[Packet] = []
        self.keep = keep
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.frames) < self.keep:
            try:
                data, meta = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            if meta[2] != socket.PACKET_OUTGOING:
                self.frames.append(Ether(data))

    def close(self) -> list[Packet]:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        return self.frames


@pytest.mark.parametrize("name", list(RECIPES))
def test_flood_is_smooth_and_reaches_the_gateway(lab: Lab, name: str) -> None:
    """Exactly the asked packets, spread over the second (no silent 100 ms), and all of them reach gw-in.

    The lanes' bursts are 10 ms apart: a window with no packet at all would
    mean the flood pulses again, whatever the machine's speed.
    """
    flood = Flood(lab, name, pps=RATE, duration=1.5)
    with LinkCounter(lab.topology, lab.gateway, lab.gateway_ingress.ifname) as gw:
        sniffer = Sniffer(lab)
        rx0 = gw.read().rx_packets
        try:
            flood.start()
            report = flood.wait(timeout=15.0)
        finally:
            flood.stop()
            frames = sniffer.close()
        time.sleep(0.05)  # the last packets cross three namespaces
        arrived = gw.read().rx_packets - rx0
    print(f"{report}; gw-in received {arrived}; trafgen says {report.trafgen_reported}")
    assert report.packets_sent == round(1.5 * RATE)
    assert report.trafgen_reported == report.packets_sent
    assert report.lanes == 100
    rates = report.smoothness.rates
    assert len(rates) >= 5 and min(rates) > 0, report.smoothness
    # A spoofed source that happens to be the upstream router's own address (2 in 131072) is a
    # martian there and dropped; nothing else may go missing.
    assert 0.999 * report.packets_sent <= arrived <= report.packets_sent + 50
    flood_frames = [f for f in frames if IP in f or IPv6 in f][:200]
    assert len(flood_frames) >= 100
    shape = SHAPES[name]
    assert all(shape.check(lab, f) for f in flood_frames)
    assert shape.overall(lab, flood_frames)
    assert not no_trafgen_on(lab)


def test_flood_at_the_default_rate_sends_its_count_evenly(lab: Lab) -> None:
    """Three seconds at the default rate: every packet leaves, and no 100 ms window is silent."""
    report = Flood(lab, "reflection_dns", duration=3.0).start().wait(timeout=20.0)
    print(report)
    assert report.packets_sent == 3 * DEFAULTS.flood_pps
    assert report.smoothness.rates and min(report.smoothness.rates) > 0, report.smoothness


def test_flood_with_a_duration_ends_by_itself(lab: Lab) -> None:
    flood = Flood(lab, "icmp_flood", pps=RATE, duration=1.0).start()
    report = flood.wait(timeout=10.0)
    assert report.packets_sent == RATE
    assert report.seconds >= 1.0  # the packets of the last lane's last burst, then the report
    assert not flood.running and not no_trafgen_on(lab)


def trafgen_processes(leader: psutil.Process) -> list[psutil.Process]:
    return [p for p in leader.children(recursive=True) if p.name() == "trafgen"]


def test_flood_stop_ends_every_lane_and_worker(lab: Lab) -> None:
    """Each lane is a trafgen process with a sending worker; stopping the flood ends all of them, and the config."""
    flood = Flood(lab, "syn_flood", pps=RATE, lanes=4).start()
    assert flood.pid is not None
    leader = psutil.Process(flood.pid)
    deadline = time.monotonic() + 5.0
    while len(trafgen_processes(leader)) < 8 and time.monotonic() < deadline:
        time.sleep(0.05)  # lanes start 1/4 s apart
    group = [leader, *leader.children(recursive=True)]
    assert len(trafgen_processes(leader)) == 8, [p.cmdline() for p in group]  # 4 lanes, each with its worker
    config_dir = flood.config_dir
    assert config_dir is not None and os.path.isdir(config_dir)
    flood.stop()
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in group)
    assert not os.path.exists(config_dir)
    assert flood.stop() is flood.stop()  # idempotent


def test_terminating_the_flood_process_stops_the_workers_too(lab: Lab) -> None:
    """A forgotten flood gets what lab teardown sends (SIGTERM to the process it started); every worker must go."""
    flood = Flood(lab, "syn_flood", pps=RATE, lanes=4).start()
    assert flood.pid is not None
    leader = psutil.Process(flood.pid)
    deadline = time.monotonic() + 10.0  # every lane started (the 4th 0.75 s after the 1st, plus start-up)
    while len(trafgen_processes(leader)) < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    group = [leader, *leader.children(recursive=True)]
    assert len(trafgen_processes(leader)) == 8
    leader.terminate()  # what Topology.teardown does to every process it started
    _, alive = psutil.wait_procs(group, timeout=5.0)
    assert not alive, [p.cmdline() for p in alive]
    flood.stop()
    assert not no_trafgen_on(lab)


_STARTER = """
import json, os, subprocess, sys, time
argvs = json.loads(sys.argv[1])
procs = [subprocess.Popen([a.replace("{PARENT}", str(os.getpid())) for a in argv], start_new_session=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for argv in argvs]
print(" ".join(str(p.pid) for p in procs), flush=True)
time.sleep(60)
"""


def test_a_killed_test_process_leaves_no_flood_or_client(lab: Lab) -> None:
    """SIGKILL the process that started a flood and a probe (as a killed test run would be): both end."""
    atk, cli = lab.attackers[0], lab.clients[0]
    flood = Flood(lab, "syn_flood", pps=RATE)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "f.cfg")
        with open(cfg, "w") as f:
            f.write(flood.config_text)
        trafgen = _trafgen.argv(device=atk.ifname, config=cfg, pps=RATE, count=None, seed=None, cap_seconds=600,
                                die_with_parent=True, lanes=1)
        probe = [sys.executable, "-m", "agent.lab._clients", "--parent", "{PARENT}", "probe", "--kind", "udp",
                 "--host", str(lab.server_v4), "--port", "7", "--rate", "20"]
        argvs = [lab.topology.nsenter_argv(atk.ns, trafgen), lab.topology.nsenter_argv(cli.ns, probe)]
        env = dict(os.environ, PYTHONPATH=str(Path(agent.__file__).resolve().parent.parent))
        starter = subprocess.Popen([sys.executable, "-c", _STARTER, json.dumps(argvs)], stdout=subprocess.PIPE,
                                   text=True, cwd=tmp, env=env)
        try:
            assert starter.stdout is not None
            leaders = [psutil.Process(int(pid)) for pid in starter.stdout.readline().split()]
            with LinkCounter(lab.topology, atk.ns, atk.ifname) as tx:
                sent0 = tx.read().tx_packets
                deadline = time.monotonic() + 5.0
                while tx.read().tx_packets == sent0 and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert tx.read().tx_packets > sent0, "the flood never started"
            group = [p for leader in leaders for p in (leader, *leader.children(recursive=True))]
            assert len(group) == 5  # timeout -> lane launcher -> trafgen -> its worker; the probe
        finally:
            starter.kill()
            starter.wait()
        _, alive = psutil.wait_procs(group, timeout=5.0)
    assert not alive, [p.cmdline() for p in alive]
    assert not no_trafgen_on(lab)


def test_a_broken_recipe_fails_with_trafgen_output(lab: Lab) -> None:
    broken = Recipe("broken", "not trafgen's language", (Template("ipv4(sa=nonsense)", 60),))
    with pytest.raises(FloodError, match="trafgen"):
        Flood(lab, broken, pps=RATE).start()
    assert not no_trafgen_on(lab)


# --- legitimate traffic ----------------------------------------------------------------------------------


def test_legit_clients_all_succeed_without_a_flood(lab: Lab) -> None:
    with LegitServer(lab):
        probes = [Probe(lab, "http"), Probe(lab, "udp"), Probe(lab, "http", ipv6=True), Probe(lab, "udp", ipv6=True)]
        try:
            for p in probes:
                p.start()
            time.sleep(1.5)
        finally:
            for p in probes:
                p.stop()
        connects = connect_test(lab, 20)
    for stats in [*(p.stats() for p in probes), connects]:
        print(stats)
        assert stats.attempts >= 20 and stats.success_pct == 100.0, stats
        assert stats.p95 is not None and stats.p95 < 0.5


def test_probe_windows_cover_every_request(lab: Lab) -> None:
    with LegitServer(lab), Probe(lab, "udp", rate=50) as probe:
        time.sleep(1.0)
    windows = probe.windows(0.25)
    assert sum(w.attempts for _, w in windows) == probe.stats().attempts >= 45
    assert all(w.success_pct == 100.0 for _, w in windows)


def test_server_restores_syncookies(lab: Lab) -> None:
    key = "net.ipv4.tcp_syncookies"
    before = lab.topology.sysctl(lab.server, key)
    with LegitServer(lab):
        assert lab.topology.sysctl(lab.server, key) == "0"
    assert lab.topology.sysctl(lab.server, key) == before


def test_unprotected_syn_flood_overflows_the_backlog_and_refuses_users(lab: Lab) -> None:
    """The default SYN flood against the server without protection: its SYN queue fills, users cannot connect."""
    result = run_scenario(lab, "syn_flood", duration=3.0, baseline=1.5)
    print(result.summary())
    print(f"listen counters during the flood: {result.listen}")
    assert result.baseline["http"].success_pct == 100.0
    # exactly its count (run_scenario waits for the last lanes): the achieved rate is printed, not judged
    assert result.flood.packets_sent == DEFAULTS.flood_pps * 3
    assert result.gateway_rx_packets >= result.flood.packets_sent
    assert result.listen.overflowed and result.listen.req_q_full_drop > 0.5 * result.flood.packets_sent
    assert result.during["http"].success_pct < 50.0
    assert result.during["connect"].success_pct < 50.0
    # Stopping the server dropped the half-open connections; a new one serves again at once.
    before = listen_counters(lab)
    with LegitServer(lab):
        assert connect_test(lab, 10).success_pct == 100.0
    assert not (listen_counters(lab) - before).overflowed


def test_reflection_fills_the_server_link_and_the_runner_calls_the_hook(lab: Lab) -> None:
    """DNS reflection at the default rate overfills the 50 Mbit/s server link: its queue drops most of it.

    Decided by the link's own counters: of what the gateway offers the link,
    most is dropped, because 50 kpps of 1242-byte answers is ten times what 50
    Mbit/s carries (a machine would have to forward five times slower than
    this one for that to change). (How many
    legitimate probes happened to get through is printed, not asserted.)

    The hook stands in for floodguard (it protects nothing): the runner enters
    it after the server started and leaves it after the probes finished.
    """
    events: list[str] = []

    @contextlib.contextmanager
    def hook() -> Iterator[None]:
        events.append("enter")
        yield
        events.append("exit")

    result = run_scenario(lab, "reflection_dns", duration=2.0, baseline=1.0, legit=("udp",), with_floodguard=hook,
                          on_phase=lambda phase, t: events.append(phase))
    print(result.summary())
    assert events == ["enter", "baseline", "flood", "flood_stopped", "done", "exit"]
    assert result.protected and result.label == "udp_reflection/dns"
    assert result.baseline["udp"].success_pct == 100.0
    link = result.server_link
    assert link is not None and link["drops"] >= 0.8 * (link["drops"] + link["packets"])
    assert result.server_rx_packets < 0.2 * result.gateway_rx_packets  # the link let through what fits
    assert result.flood.packets_sent == 2 * DEFAULTS.flood_pps
    with IPRoute(netns=lab.gateway, flags=0) as ipr:
        index = ipr.link_lookup(ifname=lab.gateway_internal.ifname)[0]
        assert "tbf" not in {q.get("TCA_KIND") for q in ipr.get_qdiscs(index=index)}  # the limit is lifted


def test_server_link_limit_counts_its_drops(lab: Lab) -> None:
    with limit_server_link(lab, 10) as link:
        assert link.stats() == {"packets": 0, "drops": 0, "overlimits": 0}
        report = Flood(lab, "reflection_memcached", pps=RATE, duration=0.5).start().wait(5.0)
        stats = link.stats()
    print(f"10 Mbit/s link, {report.packets_sent} memcached answers: {stats}")
    assert report.packets_sent == RATE // 2
    # Every answer either crossed the link or was dropped by its qdisc; what crossed is bounded by the
    # link's rate over the time the flood actually took (its lanes are staggered: slower machines
    # spread it wider, and the bound grows with it), plus the bucket's burst and the queue.
    frame_bits = 8 * (1400 + 8 + 20 + 14)
    carried = 10e6 / frame_bits * (report.seconds + 0.2) + 64
    assert stats["packets"] + stats["drops"] >= report.packets_sent - 64  # a few may still be queued
    assert 0 < stats["packets"] <= carried and stats["drops"] >= report.packets_sent - carried, (stats, report)
    link.remove()  # twice is fine


# --- XDP_PASS on up-gw ------------------------------------------------------------------------------------


def test_upstream_pass_attaches_natively_and_detaches(lab: Lab) -> None:
    link = lab.upstream_link
    with attach_upstream_pass(lab) as upstream:
        state = attach.xdp_state(link.ifname, netns=link.ns)
        assert state.mode_attached == "native" and state.prog_id == upstream.prog_id
        with LegitServer(lab):
            assert connect_test(lab, 10).success_pct == 100.0  # answers cross up-gw through the program
    assert not attach.xdp_state(link.ifname, netns=link.ns).attached
    upstream.detach()  # twice is fine



# --- the perfect filter of bench collateral ---------------------------------------------------------------


def test_the_ceiling_drops_every_foreign_packet_and_passes_the_clients(lab: Lab) -> None:
    """bench collateral's ``ceiling``: on gw-in, natively; no packet of a flood from the foreign range
    (IPv4 or IPv6) leaves the gateway towards the servers, and every client connection completes through it."""
    ingress, internal = lab.gateway_ingress, lab.gateway_internal
    with attach_ceiling(lab) as ceiling:
        state = attach.xdp_state(ingress.ifname, netns=ingress.ns)
        assert state.mode_attached == "native" and state.prog_id == ceiling.prog_id
        for ipv6 in (False, True):
            before = lab.topology.link_stats(lab.gateway, internal.ifname)
            report = Flood(lab, "reflection_dns", pps=RATE, duration=1.0, ipv6=ipv6).start().wait(timeout=20.0)
            after = lab.topology.link_stats(lab.gateway, internal.ifname)
            assert report.packets_sent == RATE
            assert after.tx_packets == before.tx_packets, (
                f"ipv6={ipv6}: {after.tx_packets - before.tx_packets} flood packets passed")
        with LegitServer(lab):
            assert connect_test(lab, 10).success_pct == 100.0
            assert connect_test(lab, 10, ipv6=True).success_pct == 100.0
    assert not attach.xdp_state(ingress.ifname, netns=ingress.ns).attached
