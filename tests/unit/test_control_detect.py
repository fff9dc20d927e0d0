"""agent/control/detect.py (with baseline.py): when attacks start and end, on synthetic series.

Series are replayed through the whole controller with an injected clock
(tests/unit/synthetic.py): hours of traffic in a second or two.
"""

from __future__ import annotations

import ipaddress
import math
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs
from synthetic import Flow, Scenario, noisy

from agent.contract.abi import TrafficClass
from agent.control.detect import Detector, Limits, Signals
from agent.policy.model import Policy

HOST = ipaddress.ip_address("203.0.113.5")
SOURCES = tuple(ipaddress.ip_address(f"100.64.{i // 250}.{i % 250 + 1}") for i in range(500))


def policy(detection: dict[str, Any] | None = None, **group: Any) -> Policy:
    return Policy.model_validate(
        {
            "interfaces": ["eth0"],
            "protect": [{"name": "web", "prefixes": ["203.0.113.0/24"], **group}],
            "detection": {"tick": "1s", "sample_every": 0, **(detection or {})},
            "capacity": {"groups": 4},
        }
    )


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def test_ten_fold_step_is_detected_within_the_configured_ticks() -> None:
    sc = Scenario.build(policy())
    step_at = 1800.0
    sc.replay.add(
        Flow(HOST, 1, TrafficClass.UDP, noisy(lambda t: 2000 if t < step_at else 20000, 0.05), sources=SOURCES)
    )
    with capture_logs() as logs:
        sc.run(step_at)
        assert events(logs, "attack_started") == []
        report = sc.run_until(60, lambda r: bool(r.started))
    assert report is not None, "a 10x step was not detected"
    ticks_after_step = (report.at_ns - sc.port.clock_ns) / 1e9  # 0: it is the current tick
    waited = sc.replay.t - step_at
    assert ticks_after_step == 0
    assert waited <= sc.policy.detection.consecutive * sc.tick_s
    (started,) = events(logs, "attack_started")
    assert started["group"] == "web" and started["target"] == str(HOST)
    assert started["traffic_class"] == "udp"


def test_gradual_doubling_over_ten_minutes_is_not_an_attack() -> None:
    sc = Scenario.build(policy())

    def ramp(t: float) -> float:
        return 5000 + 5000 * min(max(t - 3600, 0.0), 600.0) / 600.0

    sc.replay.add(Flow(HOST, 1, TrafficClass.UDP, noisy(ramp, 0.05), sources=SOURCES))
    with capture_logs() as logs:
        sc.run(3600 + 600 + 1800)
    assert events(logs, "attack_started") == []
    baseline = sc.controller.observer.baseline
    assert baseline.mean_pps[1, TrafficClass.UDP] > 8000, "the baseline followed the new level"


@pytest.mark.slow
def test_daily_cycle_is_not_an_attack() -> None:
    sc = Scenario.build(policy({"tick": "10s"}))

    def daily(mean: float, swing: float) -> Any:
        return noisy(lambda t: mean + swing * math.sin(2 * math.pi * t / 86400), 0.05)

    # Day/night 7:1 on TCP, 7:1 on SYNs, as a busy web site sees.
    sc.replay.add(Flow(HOST, 1, TrafficClass.TCP_OTHER, daily(40000, 30000), sources=SOURCES))
    sc.replay.add(Flow(HOST, 1, TrafficClass.TCP_SYN, daily(400, 300), sources=SOURCES))
    with capture_logs() as logs:
        sc.run(86400 + 3600)
    assert events(logs, "attack_started") == []
    assert sc.controller.status()["ticks"] == (86400 + 3600) // 10


def test_a_single_spike_starts_nothing() -> None:
    sc = Scenario.build(policy())
    sc.replay.add(Flow(HOST, 1, TrafficClass.UDP, noisy(2000, 0.05), sources=SOURCES))
    sc.replay.add(Flow(HOST, 1, TrafficClass.UDP, 50000, sources=SOURCES, start_s=900, stop_s=901))
    with capture_logs() as logs:
        sc.run(1200)
    assert events(logs, "attack_started") == []


def test_rate_alternating_around_the_threshold_never_starts() -> None:
    # A static floor of 10k; the learned part stays far below it (min_pps 100).
    sc = Scenario.build(
        policy({"baseline": {"min_pps": 100, "warmup": "0s"}}, thresholds={"udp": {"pps": 10000}})
    )
    sc.replay.add(
        Flow(HOST, 1, TrafficClass.UDP, lambda t: 10500 if int(t) % 2 else 9500, sources=SOURCES)
    )
    with capture_logs() as logs:
        sc.run(1800)
    assert events(logs, "attack_started") == []


def test_rate_hovering_at_the_threshold_does_not_flap() -> None:
    """Once started, hovering around the start threshold never ends it: the release level is lower."""
    sc = Scenario.build(
        policy({"baseline": {"min_pps": 100, "warmup": "0s"}, "hold_down": "10s"}, thresholds={"udp": {"pps": 10000}})
    )
    rng = np.random.default_rng(3)
    hover = rng.uniform(9000, 11500, 4000)

    def rate(t: float) -> float:
        if t < 600:
            return 2000.0
        if t < 2400:
            return float(hover[int(t)])
        return 2000.0

    sc.replay.add(Flow(HOST, 1, TrafficClass.UDP, rate, sources=SOURCES))
    with capture_logs() as logs:
        sc.run(2400)
        assert len(events(logs, "attack_started")) == 1
        assert events(logs, "attack_ended") == []
        sc.run(60)
    assert len(events(logs, "attack_started")) == 1
    assert len(events(logs, "attack_ended")) == 1


def test_hold_down_ends_the_attack_after_the_flood_stops() -> None:
    hold = 30.0
    sc = Scenario.build(policy({"hold_down": f"{hold:g}s"}))
    sc.replay.add(Flow(HOST, 1, TrafficClass.UDP, noisy(2000, 0.05), sources=SOURCES))
    sc.replay.add(Flow(HOST, 1, TrafficClass.UDP, 100000, sources=SOURCES, start_s=1800, stop_s=1900))
    with capture_logs() as logs:
        sc.run(1900)
        assert len(events(logs, "attack_started")) == 1
        sc.run(hold - sc.tick_s)
        assert events(logs, "attack_ended") == [], "ended before the hold-down"
        sc.run(2 * sc.tick_s)
    (ended,) = events(logs, "attack_ended")
    assert ended["reason"] == "hold_down"
    assert 100 <= ended["duration_s"] <= 100 + hold + 2 * sc.tick_s
    (record,) = sc.controller.attacks(active=False, recent=1)
    assert not record.active and record.end.reason == "hold_down"


def test_the_baseline_does_not_learn_an_attack() -> None:
    sc = Scenario.build(policy({"tick": "5s", "hold_down": "10s"}))
    sc.replay.add(Flow(HOST, 1, TrafficClass.UDP, noisy(2000, 0.05), sources=SOURCES))
    sc.replay.add(Flow(HOST, 1, TrafficClass.UDP, 100000, sources=SOURCES, start_s=1800, stop_s=1800 + 3 * 3600))
    with capture_logs() as logs:
        sc.run(1800 + 3 * 3600 + 60)
    assert len(events(logs, "attack_started")) == 1 and len(events(logs, "attack_ended")) == 1
    mean = sc.controller.observer.baseline.mean_pps[1, TrafficClass.UDP]
    assert 1500 < mean < 3000, f"baseline mean {mean:.0f} learned the flood"


def test_a_fresh_start_on_a_busy_network_is_not_an_attack() -> None:
    """Before warm-up the learned threshold is generous; the first tick is never over."""
    sc = Scenario.build(policy({"baseline": {"min_pps": 100}}))
    sc.replay.add(Flow(HOST, 1, TrafficClass.UDP, noisy(50000, 0.1), sources=SOURCES))
    with capture_logs() as logs:
        sc.run(600)
    assert events(logs, "attack_started") == []


# --- the detector alone, on arrays ---------------------------------------------------------------


def _signals(pps: float) -> Signals:
    a = np.array([[pps]])
    z = np.zeros((1, 1))
    return Signals(a, z, z, z)


def _limits(pps: float) -> Limits:
    inf = np.full((1, 1), np.inf)
    return Limits(np.array([[pps]]), inf.copy(), inf.copy(), inf.copy())


def test_detector_needs_consecutive_ticks_and_freezes_its_threshold() -> None:
    det = Detector((1, 1), consecutive=3, hold_down_s=5, release_ratio=0.5)
    ok = np.ones((1, 1), dtype=bool)
    starts = []
    for i in range(3):
        step = det.step(i * 1_000_000_000, _signals(200), _limits(100), ok)
        starts.append(step.started)
    assert starts == [[], [], [(0, 0)]]
    assert det.first_over_ns[0, 0] == 0
    # A higher current threshold does not end it: the frozen one decides.
    step = det.step(3_000_000_000, _signals(60), _limits(10_000), ok)
    assert step.ended == [] and det.active[0, 0]
    # Below half of the frozen 100 for 5 s ends it.
    ended = []
    for i in range(4, 11):
        ended += det.step(i * 1_000_000_000, _signals(40), _limits(100), ok).ended
    assert ended == [(0, 0)]
    assert not det.active[0, 0]


def test_detector_ignores_series_that_are_not_protected() -> None:
    det = Detector((1, 1), consecutive=1, hold_down_s=0, release_ratio=0.5)
    step = det.step(0, _signals(1e9), _limits(1), np.zeros((1, 1), dtype=bool))
    assert step.started == [] and not step.learn[0, 0]


def _replay(det: Detector, tick_ms: int, levels: list[float]) -> list[int]:
    """Feed one pps value per tick; the tick indices at which an attack started."""
    ok = np.ones((1, 1), dtype=bool)
    return [i for i, pps in enumerate(levels)
            if det.step(i * tick_ms * 1_000_000, _signals(pps), _limits(100), ok).started]


def test_a_pulse_wave_shorter_than_consecutive_ticks_is_caught_at_its_next_burst() -> None:
    # 100 ms ticks; a burst of one tick at the start of every second (trafgen's budget).
    wave = ([500.0] + [0.0] * 9) * 3
    strict = Detector((1, 1), consecutive=2, hold_down_s=5, release_ratio=0.5, pulse_gap_s=0)
    assert _replay(strict, 100, wave) == []
    pulsed = Detector((1, 1), consecutive=2, hold_down_s=5, release_ratio=0.5, pulse_gap_s=1.0)
    assert _replay(pulsed, 100, wave) == [10]
    assert pulsed.first_over_ns[0, 0] == 0  # time to mitigate counts from the first burst


def test_a_calm_spell_longer_than_the_pulse_gap_starts_the_count_again() -> None:
    # Single noisy ticks 1.5 s apart never add up to an attack with a 1 s gap.
    noise = ([500.0] + [0.0] * 14) * 4
    det = Detector((1, 1), consecutive=2, hold_down_s=5, release_ratio=0.5, pulse_gap_s=1.0)
    assert _replay(det, 100, noise) == []
    assert det.streak[0, 0] == 0


def test_with_one_second_ticks_a_one_second_gap_means_adjacent_ticks() -> None:
    det = Detector((1, 1), consecutive=2, hold_down_s=5, release_ratio=0.5, pulse_gap_s=1.0)
    assert _replay(det, 1000, [500.0, 0.0, 500.0, 0.0, 500.0, 500.0]) == [5]
