"""agent/control/samples.py and sketch.py: sources, persistence and spoofing from sampled headers."""

from __future__ import annotations

import ipaddress

from agent.contract.abi import Reason, TrafficClass
from agent.control.port import PacketSample
from agent.control.samples import MIN_SOURCE_SAMPLES, MIN_SPOOF_SAMPLES, AttackSamples, TickSamples
from agent.control.sketch import TopK

DST = ipaddress.ip_address("203.0.113.5")


def s(src: str, reason: int = 0, sport: int = 123, cls: int = TrafficClass.UDP, group: int = 1) -> PacketSample:
    return PacketSample(ipaddress.ip_address(src), DST, sport, 80, group, 500, 17, cls, reason=reason)


def test_tick_samples_split_by_group_and_class() -> None:
    t = TickSamples.build([s("198.18.0.1"), s("198.18.0.1", cls=TrafficClass.TCP_SYN), s("198.18.0.2", group=2)])
    assert {k: len(v) for k, v in t.by_series.items()} == {(1, 2): 1, (1, 0): 1, (2, 2): 1}
    assert t.sources()[(ipaddress.ip_address("198.18.0.1"), 1)] == 2


def test_a_source_is_persistent_after_two_abusive_ticks() -> None:
    ev = AttackSamples(sample_every=100)
    heavy = [s("198.18.0.1")] * 10  # 10 samples in 1 s at 1:100 = 1000 pps
    light = [s("198.18.0.2")] * 2
    ev.add_tick(heavy + light, 1.0, abusive_pps=500)
    assert ev.persistent() == []
    ev.add_tick(heavy + light, 1.0, abusive_pps=500)
    assert ev.persistent() == [(ipaddress.ip_address("198.18.0.1"), 1000.0)]
    ev.add_tick(light, 1.0, abusive_pps=500)
    assert ev.persistent() == [], "a pause breaks the streak"


def test_too_few_samples_are_never_evidence_however_high_the_estimate() -> None:
    ev = AttackSamples(sample_every=10_000)
    for _ in range(3):
        ev.add_tick([s("198.18.0.1")] * (MIN_SOURCE_SAMPLES - 1), 0.1, abusive_pps=10)
    assert ev.persistent() == []


def test_allowlisted_and_banned_samples_are_not_candidates() -> None:
    ev = AttackSamples(sample_every=100)
    for _ in range(2):
        ev.add_tick([s("198.18.0.1", reason=Reason.BANNED)] * 10 + [s("100.64.99.1", reason=Reason.ALLOWLISTED)] * 10,
                    1.0, abusive_pps=1)
    assert ev.persistent() == []
    assert [row["source"] for row in ev.summary()["top_sources"]] == ["198.18.0.1", "100.64.99.1"]  # type: ignore[index]


def test_spoofing_needs_many_samples_and_few_repeats() -> None:
    ev = AttackSamples(sample_every=1)
    ev.add_tick([s(f"198.18.{i // 250}.{i % 250}") for i in range(MIN_SPOOF_SAMPLES - 1)], 1.0, 1e9)
    verdict = ev.spoofing(0.8)
    assert not verdict.spoofed and "too few" in verdict.why
    ev.add_tick([s(f"198.19.{i // 250}.{i % 250}") for i in range(200)], 1.0, 1e9)
    verdict = ev.spoofing(0.8)
    assert verdict.spoofed and "spoof_ratio 0.8" in verdict.why
    real = AttackSamples(sample_every=1)
    real.add_tick([s(f"198.18.0.{i % 20}") for i in range(500)], 1.0, 1e9)
    assert not real.spoofing(0.8).spoofed


def test_summary_rates_and_shares() -> None:
    ev = AttackSamples(sample_every=100)
    ev.add_tick([s("198.18.0.1")] * 30 + [s("198.18.0.2", sport=53)] * 10, 2.0, 1e9)
    summary = ev.summary(1)
    assert summary["samples"] == 40
    assert summary["top_sources"] == [{"source": "198.18.0.1", "pps": 1500, "share": 0.75}]
    assert summary["top_source_ports"] == [{"port": 123, "pps": 1500, "share": 0.75}]
    assert summary["top_destination_ports"] == [{"port": 80, "pps": 2000, "share": 1.0}]


def test_topk_is_bounded_and_keeps_the_heavy_keys() -> None:
    top: TopK[int] = TopK(capacity=10)
    for tick in range(100):
        batch = {1: 50, 2: 40}
        batch.update({10**6 + 1000 * tick + i: 1 for i in range(30)})  # a spray of one-off keys
        top.update(batch)
    assert len(top) <= 20
    assert top.top(2) == [(1, 5000), (2, 4000)]
    assert top.total == 100 * (90 + 30)
