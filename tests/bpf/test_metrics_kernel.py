"""Metrics over the real program: packets through BPF_PROG_TEST_RUN, then a live
HTTP scrape that must show exactly what was counted and pass `promtool check
metrics`."""

from __future__ import annotations

import ipaddress
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from harness import TEST_CAPACITY, Harness, eth, now_ns
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP
from scapy.packet import Raw

from agent import metrics
from agent.contract import abi
from agent.contract.specs import RuleSpec
from agent.datapath import bpfsys as sysbpf
from agent.datapath.loader import Program
from agent.datapath.mapport import MapPort
from agent.datapath.maps import MAP_TYPES, Maps

C = abi.TrafficClass
LO = 1  # test-run packets may claim the loopback interface's ifindex
BANNED, CLIENT, OTHER = "198.51.100.7", "192.0.2.7", "192.0.2.9"
WEB, RULE_DST = "203.0.113.10", "203.0.113.99"


class KernelSource:
    """A MetricsSource over the harness's maps, as the daemon would give it."""

    def __init__(self, port: MapPort, build_seconds: float) -> None:
        self._port = port
        self._build = build_seconds
        self.loaded_at = time.time()
        self.rules = 0  # the daemon keeps this count; it never reads the kernel for it
        self.attacks = metrics.AttackStats()

    @property
    def port(self) -> MapPort | None:
        return self._port

    def interfaces(self) -> Mapping[int, str]:
        return {1: "lo"}

    def group_names(self) -> Mapping[int, str]:
        return {0: "default", 1: "web"}

    def watch_names(self) -> Mapping[int, str]:
        return {1: "cgnat"}

    def xdp_modes(self) -> Mapping[str, str]:
        return {"lo": "generic"}

    def reloads(self) -> tuple[int, int]:
        return (1, 0)

    def policy_loaded_at(self) -> float:
        return self.loaded_at

    def build_seconds(self) -> float:
        return self._build

    def bans_by_origin(self) -> Mapping[str, int]:
        return metrics.count_bans(self._port.addresses.records(), now_ns())

    def active_rules(self) -> int:
        return self.rules

    def attack_stats(self) -> metrics.AttackStats:
        return self.attacks

    def upstream_stats(self) -> metrics.UpstreamStats | None:
        return None  # the policy has no upstream block


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        return str(r.read().decode())


def series(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name
    }


def L(**kw: str) -> tuple[tuple[str, str], ...]:  # noqa: N802 — L(...) reads as a label set in the assertions
    return tuple(sorted(kw.items()))


@pytest.fixture
def exporter(h: Harness, program: Program) -> Iterator[tuple[metrics.Exporter, KernelSource]]:
    # The harness resets set-up between tests but not the counters: start
    # from zero so the scrape can be compared with exact numbers.
    h.maps["stats"].clear()
    h.maps["group_stats"].clear()
    src = KernelSource(h.port, program.build_seconds)
    exp = metrics.start(src, "127.0.0.1:0")
    try:
        yield exp, src
    finally:
        exp.shutdown()


def udp(src: str, dst: str, dport: int = 53) -> Any:
    return eth() / IP(src=src, dst=dst) / UDP(sport=40000, dport=dport) / Raw(b"x" * 32)


def test_live_scrape_shows_what_the_program_counted(
    h: Harness, exporter: tuple[metrics.Exporter, KernelSource]
) -> None:
    exp, src = exporter
    h.ifslot(LO, 1)
    h.ban(f"{BANNED}/32")
    h.protect({"203.0.113.0/24": 1})
    h.limits(1, {C.UDP: (1, 0, 1)})
    h.rules(RuleSpec(dst=ipaddress.ip_network(f"{RULE_DST}/32"), proto=17, dport=(9999, 9999), group=1))
    src.rules = len(h.port.read_rules())

    sent = (
        [(udp(BANNED, WEB), LO)] * 5            # banned
        + [(udp(CLIENT, WEB), LO)] * 4           # one passes, the rest over the 1 pps limit
        + [(udp(OTHER, RULE_DST, 9999), LO)] * 2  # the rule drops them
        + [(eth() / IP(src=OTHER, dst="198.18.0.1") / TCP(flags="S"), LO)] * 3  # unprotected: passed
        + [(eth() / ARP(), 0)]                   # no slot for ifindex 0: interface "other"
    )
    expect_pkts: Counter[tuple[tuple[str, str], ...]] = Counter()
    expect_bytes: Counter[tuple[tuple[str, str], ...]] = Counter()
    for pkt, ifindex in sent:
        v = h.run(pkt, ifindex=ifindex)
        labels = L(interface="lo" if v.slot == 1 else "other", reason=v.reason, monitor=str(v.monitor).lower(),
                   **{"class": v.cls})
        expect_pkts[labels] += 1
        expect_bytes[labels] += len(bytes(pkt))
    reasons = Counter(dict(k)["reason"] for k in expect_pkts.elements())
    assert reasons == {"banned": 5, "passed": 4, "rate_limited": 3, "rule_drop": 2, "non_ip": 1}

    text = scrape(exp.server.url)

    assert series(text, "floodguard_up") == {(): 1}
    assert series(text, "floodguard_packets_total") == expect_pkts
    assert series(text, "floodguard_bytes_total") == expect_bytes

    # Group 1 ("web") is offered every IP packet to 203.0.113.0/24, whatever its
    # verdict: 5 banned + 4 from the client + 2 to the rule's target; all but
    # the client's first were dropped. One source got a bucket. The SYNs went
    # to no protected prefix: group 0, "default", which has no limits.
    udp_web, syn_default = L(group="web", **{"class": "udp"}), L(group="default", **{"class": "tcp_syn"})
    frame, syn = len(bytes(udp(CLIENT, WEB))), len(bytes(sent[-2][0]))
    assert series(text, "floodguard_group_packets_total") == {udp_web: 11, syn_default: 3}
    assert series(text, "floodguard_group_bytes_total") == {udp_web: 11 * frame, syn_default: 3 * syn}
    assert series(text, "floodguard_group_dropped_packets_total") == {udp_web: 10, syn_default: 0}
    assert series(text, "floodguard_group_dropped_bytes_total") == {udp_web: 10 * frame, syn_default: 0}
    assert series(text, "floodguard_group_new_sources_total") == {udp_web: 1, syn_default: 0}

    assert series(text, "floodguard_bans_active") == {L(origin="policy"): 0, L(origin="operator"): 1,
                                                      L(origin="auto"): 0}
    assert series(text, "floodguard_rules_active") == {(): 1}
    assert series(text, "floodguard_interface_info") == {L(interface="lo", mode="generic"): 1}
    assert series(text, "floodguard_nic_receive_packets_total")[L(interface="lo")] >= 0
    assert series(text, "floodguard_agent_memory_bytes")[()] > 1 << 20

    entries = series(text, "floodguard_map_entries")
    assert entries[L(map="src_entries", type="array")] == 1
    assert entries[L(map="host4", type="hash")] == 1  # the banned /32
    assert entries[L(map="rules", type="array")] == 1
    assert entries[L(map="groups", type="array")] == 2
    assert entries[L(map="ifslots", type="array")] == 1
    assert entries[L(map="buckets4", type="lru_hash")] == h.port.count_entries("buckets4") >= 1
    assert entries[L(map="lpm6", type="lpm_trie")] == h.port.count_entries("lpm6")
    capacity = series(text, "floodguard_map_capacity")
    assert {dict(k)["map"] for k in capacity} == set(MAP_TYPES)
    assert capacity[L(map="src_entries", type="array")] == TEST_CAPACITY.src_entries - 1
    assert capacity[L(map="buckets4", type="lru_hash")] == TEST_CAPACITY.sources
    assert capacity[L(map="dst_stats", type="lru_percpu_hash")] == TEST_CAPACITY.destinations
    assert capacity[L(map="ifslots", type="array")] == abi.IF_SLOTS - 1

    lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint.stdout + lint.stderr


def test_histograms_appear_in_the_live_scrape(exporter: tuple[metrics.Exporter, KernelSource]) -> None:
    exp, src = exporter
    exp.instruments.tick.observe(0.02)
    src.attacks = metrics.AttackStats(active={"syn_flood": 1}, total={"syn_flood": 1},
                                      time_to_mitigate=[("1", 1), ("+Inf", 1)], time_to_mitigate_sum=0.7)
    text = scrape(exp.server.url)
    assert series(text, "floodguard_tick_duration_seconds_count") == {(): 1}
    assert series(text, "floodguard_time_to_mitigate_seconds_count") == {(): 1}
    assert series(text, "floodguard_attacks_active") == {L(vector="syn_flood"): 1}
    lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint.stdout + lint.stderr


def test_hash_entries_exact_when_small_estimated_when_large(h: Harness) -> None:
    t = h.maps["buckets4"]
    n = 3000
    h.maps["buckets4"].update_many(
        [(abi.BucketKey4(addr=i, group=1, cls=C.UDP), abi.Bucket()) for i in range(1, n + 1)]
    )
    assert metrics.count_hash_entries(t) == (n, True)
    # A sample of ~1/3 of the map: the estimate is within a few percent
    # (±2.7 % is one standard deviation); 15 % leaves no room for flakes.
    est, exact = metrics.count_hash_entries(t, max_entries=1024)
    assert not exact
    assert abs(est - n) < 0.15 * n, est
    # A byte budget smaller than one chunk still samples at least 64 entries.
    est, exact = metrics.count_hash_entries(t, max_bytes=1)
    assert not exact and 0 < est < 2 * TEST_CAPACITY.sources


def test_lpm_entries_match_a_full_walk(h: Harness) -> None:
    h.protect({f"2001:db8:{i:x}::/48": 1 for i in range(1, 40)})
    h.ban("2001:db8:ff::/64")
    n = metrics.count_lpm_entries(h.maps["lpm6"])
    assert n == h.port.count_entries("lpm6") >= 40


def test_map_fill_of_an_empty_program(h: Harness) -> None:
    fill = {m.name: m for m in metrics.read_map_fill(h.port, 1)}
    assert set(fill) == set(MAP_TYPES)
    assert fill["src_entries"].entries == 0
    assert fill["buckets4"].entries == 0 and fill["buckets4"].exact
    assert fill["groups"].entries == 1
    # arrays indexed by something else have no entry count
    for name in ("config", "dir4", "stats", "group_stats", "rule_stats", "group_state", "rule_state"):
        assert fill[name].entries is None, name
        assert fill[name].capacity == h.maps[name].max_entries


def test_closed_maps_scrape_as_up_0(program: Program) -> None:
    maps = Maps.from_program(program)
    port = MapPort(maps)
    src = KernelSource(port, program.build_seconds)
    exp = metrics.start(src, "127.0.0.1:0")
    try:
        assert series(scrape(exp.server.url), "floodguard_up") == {(): 1}
        for t in maps.tables.values():  # every read now fails with EBADF
            sysbpf.close(t.fd)
        text = scrape(exp.server.url)
        assert series(text, "floodguard_up") == {(): 0}
        assert series(text, "floodguard_packets_total") == {}
        assert series(text, "floodguard_program_build_seconds") == {(): program.build_seconds}
    finally:
        exp.shutdown()
        port.close()  # the mmaps; the fds are closed already, so not maps.close()
