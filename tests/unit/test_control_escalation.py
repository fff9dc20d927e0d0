"""agent/control/escalation.py: a full uplink is signalled once per attack per episode."""

from __future__ import annotations

from agent.control.escalation import UPLINK_CLEAR, UPLINK_FULL, UplinkWatch
from agent.policy.model import Uplink

CAP = Uplink(pps=1_000_000, bps=10_000_000_000)
FULL = UPLINK_FULL * CAP.pps  # type: ignore[operator]


def test_one_signal_per_attack_per_episode() -> None:
    w = UplinkWatch()
    assert w.check("group:web", FULL * 0.9, 0, CAP, ["a1"]) is None
    sig = w.check("group:web", FULL, 0, CAP, ["a1"])
    assert sig is not None and sig.attack_ids == ["a1"] and sig.new_episode and sig.capacity_pps == 1_000_000
    assert w.check("group:web", FULL * 1.1, 0, CAP, ["a1"]) is None
    late = w.check("group:web", FULL, 0, CAP, ["a1", "a2"])
    assert late is not None and late.attack_ids == ["a2"] and not late.new_episode
    assert w.overloaded == ["group:web"]


def test_hovering_at_the_limit_is_one_episode_and_a_real_drop_ends_it() -> None:
    w = UplinkWatch()
    w.check("total", FULL, 0, CAP, ["a1"])
    clear = UPLINK_CLEAR * CAP.pps  # type: ignore[operator]
    for pps in (FULL * 0.9, FULL, clear * 1.01, FULL):
        assert w.check("total", pps, 0, CAP, ["a1"]) is None
    assert w.check("total", clear * 0.99, 0, CAP, ["a1"]) is None
    again = w.check("total", FULL, 0, CAP, ["a1"])
    assert again is not None and again.new_episode and again.attack_ids == ["a1"]


def test_bits_count_as_much_as_packets() -> None:
    w = UplinkWatch()
    sig = w.check("total", 10, 9.6e9, CAP, [], need_attack=False)
    assert sig is not None and sig.attack_ids == [] and sig.bps == 9.6e9


def test_a_group_episode_waits_for_an_attack() -> None:
    w = UplinkWatch()
    assert w.check("group:web", FULL, 0, CAP, []) is None
    sig = w.check("group:web", FULL, 0, CAP, ["a1"])
    assert sig is not None and sig.attack_ids == ["a1"] and sig.new_episode


def test_no_capacity_no_signal() -> None:
    w = UplinkWatch()
    assert w.check("group:web", 1e12, 1e15, None, ["a1"]) is None
    assert w.check("group:web", 1e12, 1e15, Uplink(), ["a1"]) is None
    w.check("total", FULL, 0, CAP, ["a1"])
    w.forget("total")
    assert w.overloaded == []
