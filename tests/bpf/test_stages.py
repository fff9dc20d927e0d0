"""Stages that need more than one packet: token buckets and their refill,
tightened limits and their expiry, aggregate rule limits, group and
per-destination counters, interface slots and packet sampling."""

from __future__ import annotations

import ctypes as ct
import ipaddress
import time

from harness import Harness, eth, now_ns
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from agent.contract import abi
from agent.contract.specs import ConfigSpec, RuleSpec

C = abi.TrafficClass
PAY = Raw(b"x" * 100)
DST = "203.0.113.10"


def udp4(src: str, dst: str = DST, sport: int = 1000) -> bytes:
    return bytes(eth() / IP(src=src, dst=dst) / UDP(sport=sport, dport=53) / PAY)


def udp6(src: str, dst: str = "2001:db8:2::10") -> bytes:
    return bytes(eth() / IPv6(src=src, dst=dst) / UDP(sport=1000, dport=53) / PAY)


def protect(h: Harness, **limits: tuple[int, int, int]) -> None:
    h.protect({"203.0.113.0/24": 1, "2001:db8:2::/48": 1})
    h.limits(1, {C[k.upper()]: v for k, v in limits.items()})


def reasons(h: Harness, packets: list[bytes]) -> list[str]:
    return [h.run(p).reason for p in packets]


def test_burst_then_rate_limited(h: Harness) -> None:
    protect(h, udp=(1, 0, 3))
    got = reasons(h, [udp4("198.51.100.1")] * 5)
    assert got == ["passed"] * 3 + ["rate_limited"] * 2


def test_sources_have_separate_buckets(h: Harness) -> None:
    protect(h, udp=(1, 0, 2))
    a, b = udp4("198.51.100.1"), udp4("198.51.100.2")
    assert reasons(h, [a, a, a, b, b, b]) == ["passed", "passed", "rate_limited"] * 2


def test_classes_have_separate_buckets(h: Harness) -> None:
    protect(h, udp=(1, 0, 1), tcp_syn=(1, 0, 1))
    syn = bytes(eth() / IP(src="198.51.100.1", dst=DST) / TCP(flags="S"))
    u = udp4("198.51.100.1")
    assert reasons(h, [u, u, syn, syn]) == ["passed", "rate_limited", "passed", "rate_limited"]


def test_byte_limit(h: Harness) -> None:
    # 100 kbit/s with a burst of 2 full frames: each 1,442-byte frame costs
    # 115 ms of credit, so the clock cannot refill the bucket mid-test.
    protect(h, udp=(0, 100_000, 2))
    big = bytes(eth() / IP(src="198.51.100.1", dst=DST) / UDP() / Raw(b"x" * 1400))
    got = reasons(h, [big] * 4)
    assert got[:2] == ["passed", "passed"] and got[-1] == "rate_limited"


def test_unprotected_destination_uses_default_limits(h: Harness) -> None:
    h.limits(0, {C.UDP: (1, 0, 1)})
    p = udp4("198.51.100.1", dst="192.0.2.1")
    assert reasons(h, [p, p]) == ["passed", "rate_limited"]


def test_bucket_refills_with_the_program_clock(h: Harness) -> None:
    # 1 packet/s, burst 1. The clock is the kernel's coarse monotonic clock; wait a little over one
    # period. Two packets of one call are microseconds apart: only a stall of a whole second between
    # them could let the second through, so the outcome does not depend on the machine's speed.
    protect(h, udp=(1, 0, 1))
    p = udp4("198.51.100.1")
    assert reasons(h, [p, p]) == ["passed", "rate_limited"]
    time.sleep(1.1)
    assert reasons(h, [p, p]) == ["passed", "rate_limited"]


def test_bucket_state_in_the_past_is_full(h: Harness) -> None:
    protect(h, udp=(1, 0, 1))
    p = udp4("198.51.100.1")
    assert reasons(h, [p, p]) == ["passed", "rate_limited"]
    # Rewind the bucket, as if the last packet was sent long ago.
    t = h.maps["buckets4"]
    (key, b), = list(t.items())
    b.pkt_tat = 1  # long ago: the clock is CLOCK_MONOTONIC, near 0 at boot
    t.set(key, b)
    assert reasons(h, [p, p]) == ["passed", "rate_limited"]


def test_ipv6_sources_share_a_bucket_per_64(h: Harness) -> None:
    protect(h, udp=(1, 0, 1))
    a, b, c = udp6("2001:db8:1::1"), udp6("2001:db8:1::2"), udp6("2001:db8:1:1::1")
    assert reasons(h, [a, b, c]) == ["passed", "rate_limited", "passed"]


def test_ipv6_bucket_length_configurable(h: Harness) -> None:
    protect(h, udp=(1, 0, 1))
    h.config(v6_bucket_len=128)
    a, b = udp6("2001:db8:1::1"), udp6("2001:db8:1::2")
    assert reasons(h, [a, b]) == ["passed", "passed"]


def test_tightened_limits_apply_then_expire(h: Harness) -> None:
    protect(h, udp=(1000, 0, 100))
    h.tighten(1, {C.UDP: (1, 0, 1)}, expires=now_ns() + 3600 * 10**9)
    p = udp4("198.51.100.1")
    assert reasons(h, [p, p]) == ["passed", "rate_limited"]
    # The program reads a coarse clock (a jiffy behind): expire well before now.
    h.tighten(1, {C.UDP: (1, 0, 1)}, expires=now_ns() - 10**9)
    assert reasons(h, [p, p]) == ["passed", "passed"]


def test_relax_restores_base_limits(h: Harness) -> None:
    protect(h, udp=(1000, 0, 100))
    h.tighten(1, {C.UDP: (1, 0, 1)}, expires=0)
    p = udp4("198.51.100.1")
    assert reasons(h, [p, p]) == ["passed", "rate_limited"]
    h.port.relax(1)
    assert reasons(h, [p, p]) == ["passed", "passed"]


def test_group_monitor_passes_would_be_drops(h: Harness) -> None:
    h.protect({"203.0.113.0/24": 1})
    h.limits(1, {C.UDP: (1, 0, 1)}, monitor=True)
    p = udp4("198.51.100.1")
    v1, v2 = h.run(p), h.run(p)
    assert (v1.action, v1.reason, v1.monitor) == ("pass", "passed", False)
    assert (v2.action, v2.reason, v2.monitor) == ("pass", "rate_limited", True)


def test_group_monitor_does_not_spare_other_groups(h: Harness) -> None:
    h.protect({"203.0.113.0/24": 1, "192.0.2.0/24": 2})
    h.limits(1, {C.UDP: (1, 0, 1)}, monitor=True)
    h.limits(2, {C.UDP: (1, 0, 1)})
    p = udp4("198.51.100.1", dst="192.0.2.1")
    assert [str(h.run(p)) for _ in range(2)] == ["pass/passed/udp", "drop/rate_limited/udp"]


def test_rule_aggregate_limit(h: Harness) -> None:
    rule = RuleSpec(dst=ipaddress.ip_network("203.0.113.0/24"), proto=17,
                    action=abi.RuleAction.RATE_LIMIT, pps=1, burst=2)
    h.rules(rule)
    # Different sources share the rule's one bucket.
    got = reasons(h, [udp4(f"198.51.100.{i}") for i in range(1, 5)])
    assert got == ["passed", "passed", "rule_rate_limited", "rule_rate_limited"]
    stats = h.port.read_rule_stats()
    assert stats[0][0] == 4


def test_rule_count_shrinks_and_grows(h: Harness) -> None:
    r1 = RuleSpec(dst=ipaddress.ip_network("203.0.113.0/24"), proto=17)
    r2 = RuleSpec(dst=ipaddress.ip_network("203.0.113.0/24"), proto=6)
    h.rules(r1, r2)
    assert h.port.read_config().n_rules == 2
    h.rules(r2)
    assert h.port.read_config().n_rules == 1
    assert h.run(udp4("198.51.100.1")).reason == "passed"


def test_group_and_destination_counters(h: Harness) -> None:
    protect(h, udp=(1, 0, 1))
    before = h.port.read_group_stats()
    pkts = [udp4("198.51.100.1")] * 3 + [udp4("198.51.100.2", dst="203.0.113.11")]
    reasons(h, pkts)
    after = h.port.read_group_stats()
    d = after[1, C.UDP] - before[1, C.UDP]
    # fields: packets, bytes, dropped_packets, dropped_bytes, new_sources
    assert d[0] == 4 and d[1] == sum(len(p) for p in pkts)
    assert d[2] == 2 and d[3] == 2 * len(pkts[0])
    assert d[4] == 2
    dsts = h.port.read_dst_stats()
    a = dsts[(4, int(ipaddress.ip_address(DST)))]
    b = dsts[(4, int(ipaddress.ip_address("203.0.113.11")))]
    assert (a.packets[C.UDP], a.dropped[C.UDP], a.group) == (3, 2, 1)
    assert (b.packets[C.UDP], b.dropped[C.UDP]) == (1, 0)


def test_banned_traffic_still_counts_for_its_group(h: Harness) -> None:
    # Detection must see the offered load, or an attack "ends" once dropped.
    h.protect({"203.0.113.0/24": 1})
    h.ban("198.51.100.0/24")
    before = h.port.read_group_stats()
    reasons(h, [udp4("198.51.100.1")] * 3)
    d = h.port.read_group_stats()[1, C.UDP] - before[1, C.UDP]
    assert d[0] == 3 and d[2] == 3


def test_unprotected_destinations_are_not_tracked_per_host(h: Harness) -> None:
    reasons(h, [udp4("198.51.100.1", dst="192.0.2.1")])
    assert h.port.read_dst_stats() == {}


def test_interface_slots(h: Harness) -> None:
    h.ifslot(1, 3)  # the loopback interface, which test-run packets can claim
    v = h.run(udp4("198.51.100.1"), ifindex=1)
    assert v.slot == 3
    h.ifslot(1, 0)
    assert h.run(udp4("198.51.100.1"), ifindex=1).slot == 0


def test_sampling_sends_headers_to_the_ring(h: Harness, program) -> None:  # type: ignore[no-untyped-def]
    got: list[abi.Sample] = []

    def on_sample(_ctx: object, data: int, size: int) -> None:
        got.append(abi.Sample.from_buffer_copy(ct.string_at(data, size)))

    ring = program.table("samples")
    ring.open_ring_buffer(on_sample)
    program.bcc.ring_buffer_consume()  # samples left by earlier tests
    got.clear()
    try:
        h.config(sample_every=1)
        h.protect({"203.0.113.0/24": 1})
        h.ban("198.51.100.9/32")
        h.run(bytes(eth() / IP(src="198.51.100.9", dst=DST) / TCP(sport=4242, dport=80, flags="S")))
        program.bcc.ring_buffer_poll(100)
    finally:
        h.port.write_config(ConfigSpec())
    assert len(got) == 1
    s = got[0]
    assert (s.family, s.proto, s.sport, s.dport, s.group) == (4, 6, 4242, 80, 1)
    assert (s.reason, s.cls, s.action, s.tcp_flags) == (abi.Reason.BANNED, C.TCP_SYN, abi.XDP_DROP, 0x02)
    assert s.src[0] == int.from_bytes(ipaddress.ip_address("198.51.100.9").packed, "little")


def test_source_limit_rule_gives_each_source_its_own_bucket_at_the_rules_rate(h: Harness) -> None:
    """SOURCE_LIMIT: one target's sources are limited one by one, in place of the group's (unlimited) limit."""
    protect(h)  # no per-source limit for the group
    rule = RuleSpec(dst=ipaddress.ip_network("203.0.113.10/32"), proto=17, action=abi.RuleAction.SOURCE_LIMIT,
                    pps=1, burst=2, traffic_class=C.UDP)
    h.rules(rule)
    a, b = udp4("198.51.100.1"), udp4("198.51.100.2")
    assert reasons(h, [a, a, a, b, b, b]) == ["passed", "passed", "rate_limited"] * 2
    # another host of the same group is not the rule's target: unlimited
    other = udp4("198.51.100.1", dst="203.0.113.11")
    assert reasons(h, [other] * 5) == ["passed"] * 5


def test_rule_class_match_narrows_to_one_class(h: Harness) -> None:
    """A rule for the tcp_syn class drops SYNs and leaves the same host's other TCP alone."""
    protect(h)
    rule = RuleSpec(dst=ipaddress.ip_network("203.0.113.10/32"), proto=6, traffic_class=C.TCP_SYN)
    h.rules(rule)
    syn = bytes(eth() / IP(src="198.51.100.1", dst=DST) / TCP(flags="S"))
    ack = bytes(eth() / IP(src="198.51.100.1", dst=DST) / TCP(flags="A"))
    assert [str(h.run(p)) for p in (syn, ack)] == ["drop/rule_drop/tcp_syn", "pass/passed/tcp_other"]


def test_monitor_source_limit_rule_counts_without_dropping(h: Harness) -> None:
    protect(h)
    rule = RuleSpec(dst=ipaddress.ip_network("203.0.113.0/24"), action=abi.RuleAction.SOURCE_LIMIT, pps=1,
                    burst=1, monitor=True)
    h.rules(rule)
    a = udp4("198.51.100.1")
    assert [str(h.run(a)) for _ in range(2)] == ["pass/passed/udp", "pass/rate_limited/udp (monitor)"]


def test_watched_sources_count_their_verdicts_per_set(h: Harness) -> None:
    """Every verdict of a watched source is counted under its set; the longest watched prefix wins;
    a ban inside a watched prefix is still counted (the entry carries the set)."""
    protect(h, udp=(1, 0, 1))
    h.watch({"198.51.100.0/24": 1, "198.51.100.128/25": 2})
    h.ban("198.51.100.200/32")
    for src in ("198.51.100.1", "198.51.100.1", "198.51.100.130", "198.51.100.200", "192.0.2.50"):
        h.run(udp4(src))
    w = h.port.read_watch_stats()[..., 0]
    r = abi.Reason
    assert (w[1, r.PASSED, 0], w[1, r.RATE_LIMITED, 0]) == (1, 1)
    assert (w[2, r.PASSED, 0], w[2, r.BANNED, 0]) == (1, 1)
    assert int(w.sum()) == 4  # the unwatched source is in no set
