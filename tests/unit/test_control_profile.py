"""agent/control/profile.py: what the profile learns, and what it must not (a flood's first ticks)."""

from __future__ import annotations

import ipaddress

from agent.contract.abi import TrafficClass
from agent.control.port import PacketSample
from agent.control.profile import HINDSIGHT_S, Profiles

UDP = TrafficClass.UDP
SERIES = (1, UDP)
DST = ipaddress.ip_address("203.0.113.10")
TICK = 0.1


def tick_of(src: str, n: int) -> dict[tuple[int, int], list[PacketSample]]:
    s = ipaddress.ip_address(src)
    return {SERIES: [PacketSample(s, DST, 5000, 53, 1, 100, 17, UDP) for _ in range(n)]}


def merged(*ticks: dict[tuple[int, int], list[PacketSample]]) -> dict[tuple[int, int], list[PacketSample]]:
    return {SERIES: [x for t in ticks for x in t.get(SERIES, [])]}


def test_calm_sources_are_learned_once_the_hindsight_has_passed() -> None:
    p = Profiles(half_life_s=600, sample_every=1)
    for _ in range(int(HINDSIGHT_S / TICK) + 20):
        p.learn(tick_of("192.0.2.1", 10), TICK, lambda k: True)  # 100 pps
    assert 90 <= p.of(1).heavy_source_pps(UDP) <= 110


def test_a_floods_first_ticks_under_the_threshold_are_never_learned() -> None:
    p = Profiles(half_life_s=600, sample_every=1)
    calm_ticks = int(HINDSIGHT_S / TICK) + 20
    for _ in range(calm_ticks):
        p.learn(tick_of("192.0.2.1", 10), TICK, lambda k: True)
    # The flood ramps up: three ticks still under the threshold (calm), 5k pps from one source ...
    for _ in range(3):
        p.learn(merged(tick_of("192.0.2.1", 10), tick_of("198.18.0.2", 500)), TICK, lambda k: True)
    # ... then the series is over its threshold: it is not calm any more.
    for _ in range(int(HINDSIGHT_S / TICK) + 5):
        p.learn(merged(tick_of("192.0.2.1", 10), tick_of("198.18.0.2", 5000)), TICK, lambda k: False)
    # The heaviest legitimate source is still the 100 pps one: the flood's ramp was dropped unlearned.
    assert p.of(1).heavy_source_pps(UDP) < 200
