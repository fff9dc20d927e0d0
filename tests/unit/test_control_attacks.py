"""agent/control/attacks.py, record.py and stats.py: the record an operator, a hook and a dashboard read."""

from __future__ import annotations

import ipaddress
import json

from agent.contract.abi import TrafficClass
from agent.control.attacks import (
    BANNED_LISTED,
    MAX_ENTRIES,
    Aim,
    Attack,
    Ending,
    Evidence,
    MitigationEntry,
    Shape,
    Thresholds,
)
from agent.control.samples import AttackSamples
from agent.control.stats import TTM_BUCKETS, Histogram
from agent.control.target import Target
from agent.control.vectors import Classification, Vector

NS = 1_000_000_000


def attack(host: str | None = "203.0.113.5", prefixes: tuple[str, ...] = (), **kw: object) -> Attack:
    if host is not None:
        located = Target(False, ipaddress.ip_address(host))
    else:
        located = Target(True, prefixes=tuple(ipaddress.ip_network(p) for p in prefixes))
    base: dict[str, object] = {
        "id": "20270115T080000Z-1", "group": "servers", "gid": 1, "cls": TrafficClass.UDP, "start_ns": 10 * NS,
        "first_over_ns": 9 * NS, "started_at": "2027-01-15T08:00:00.000Z",
        "thresholds": Thresholds(20_000.0, float("inf"), None), "monitor": False,
        "evidence": Evidence(AttackSamples(100)), "aim": Aim(located),
        "shape": Shape(Classification(Vector.UDP_REFLECTION, "ntp")),
    }
    base.update(kw)
    return Attack(**base)  # type: ignore[arg-type]


def test_the_record_is_json_and_says_what_it_is() -> None:
    a = attack()
    a.history.add(MitigationEntry(11 * NS, "2027-01-15T08:00:01.000Z", "rule", "applied", False, {"sport": [123, 123]}))
    a.history.first_mitigation_ns = 11 * NS
    data = json.loads(a.to_json(now_ns=40 * NS))
    assert data["target"] == {"group": "servers", "host": "203.0.113.5", "prefixes": []}
    assert data["vector"] == "udp_reflection" and data["service"] == "ntp" and data["active"] is True
    assert data["duration_s"] == 30.0
    assert data["threshold_bps"] is None, "no bps threshold is null, not Infinity"
    assert data["time_to_mitigate_s"] == 2.0
    assert data["mitigations"] == [
        {"at": "2027-01-15T08:00:01.000Z", "tick": 0, "step": "rule", "action": "applied", "monitor": False,
         "sport": [123, 123]}
    ]
    assert a.label == "udp_reflection/ntp" and a.target == "203.0.113.5"


def test_targets_read_well() -> None:
    assert attack(host=None, prefixes=("203.0.113.0/24", "198.51.100.0/24")).target == "203.0.113.0/24,198.51.100.0/24"
    assert attack(host=None).target == "group:servers"


def test_long_attacks_keep_bounded_records() -> None:
    a = attack()
    for i in range(3 * MAX_ENTRIES):
        a.history.add(MitigationEntry(i, str(i), "rule", "applied"))
        a.history.record_ban(f"198.18.{i // 250}.{i % 250}/32")
    h = a.history
    assert len(h.mitigations) == MAX_ENTRIES
    assert h.mitigations[0].at == "0" and h.mitigations[-1].at == str(3 * MAX_ENTRIES - 1)
    assert h.bans == 3 * MAX_ENTRIES and len(h.banned) == BANNED_LISTED
    h.note("x")
    h.note("x")
    assert h.notes == ["x"]


def test_nothing_enforced_has_no_time_to_mitigate() -> None:
    assert attack().time_to_mitigate_s is None
    ended = attack(end=Ending(70 * NS, "2027-01-15T08:01:00.000Z", "hold_down"))
    assert not ended.active and ended.duration_s(10**12) == 60.0


def test_time_to_mitigate_histogram_is_cumulative() -> None:
    h = Histogram()
    for v in (0.05, 0.3, 0.3, 2.0, 100.0):
        h.observe(v)
    buckets = dict(h.cumulative())
    assert buckets["0.1"] == 1 and buckets["0.5"] == 3 and buckets["2"] == 4 and buckets["60"] == 4
    assert buckets["+Inf"] == 5 and h.count == 5 and abs(h.sum - 102.65) < 1e-9
    assert len(buckets) == len(TTM_BUCKETS) + 1
