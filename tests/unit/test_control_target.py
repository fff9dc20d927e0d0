"""agent/control/target.py: one host, or carpet bombing over the group's prefixes."""

from __future__ import annotations

import ipaddress

import numpy as np
from synthetic import lab_data

from agent.contract.abi import LIMIT_CLASSES, TrafficClass
from agent.control.meter import DstRates
from agent.control.settings import Settings
from agent.control.target import locate
from agent.policy.compile import compile_policy
from agent.policy.model import Policy

UDP = TrafficClass.UDP


def settings() -> Settings:
    data = lab_data()
    data["protect"][0]["prefixes"] = ["203.0.113.0/25", "203.0.113.128/25", "2001:db8:5::/64"]
    policy = Policy.model_validate(data)
    return Settings.build(policy, compile_policy(policy))


def rates(pps: dict[str, float], gid: int = 1) -> DstRates:
    addrs = [ipaddress.ip_address(a) for a in pps]
    n = len(addrs)
    p = np.zeros((n, LIMIT_CLASSES))
    p[:, UDP] = list(pps.values())
    return DstRates(
        1.0,
        np.array([a.version for a in addrs], dtype=np.uint8),
        np.array([int(a) >> 64 for a in addrs], dtype=np.uint64),
        np.array([int(a) & (2**64 - 1) for a in addrs], dtype=np.uint64),
        np.full(n, gid, dtype=np.int64),
        p,
        p * 800,
        np.zeros_like(p),
    )


def test_one_host_taking_most_of_the_traffic_is_the_target() -> None:
    s = settings()
    d = rates({"203.0.113.5": 90_000, "203.0.113.6": 1000, "2001:db8:5::1": 500})
    t = locate(d, np.arange(3), UDP, 20_000, s.groups[1], s)
    assert t is not None and not t.carpet
    assert t.host == ipaddress.ip_address("203.0.113.5") and d.address(t.row or 0) == t.host
    assert t.nets == (ipaddress.ip_network("203.0.113.5/32"),)
    assert t.top_hosts[0] == (ipaddress.ip_address("203.0.113.5"), 90_000)


def test_many_hosts_hit_is_carpet_bombing_with_the_groups_prefixes() -> None:
    s = settings()
    hit = {f"203.0.113.{i}": 3000.0 for i in range(1, 21)}
    hit["203.0.113.200"] = 2600.0  # hit: at least 20k / carpet_hosts (8)
    t = locate(rates(hit), np.arange(len(hit)), UDP, 20_000, s.groups[1], s)
    assert t is not None and t.carpet and t.host is None
    assert t.hits == 21
    assert t.nets == (ipaddress.ip_network("203.0.113.0/25"), ipaddress.ip_network("203.0.113.128/25"))


def test_even_one_dominant_host_among_many_hit_is_carpet() -> None:
    s = settings()
    hit = {f"203.0.113.{i}": 3000.0 for i in range(1, 10)}
    hit["203.0.113.50"] = 500_000.0
    t = locate(rates(hit), np.arange(len(hit)), UDP, 20_000, s.groups[1], s)
    assert t is not None and t.carpet and t.hits >= s.detection.carpet_hosts


def test_carpet_prefixes_already_chosen_stay() -> None:
    s = settings()
    known = (ipaddress.ip_network("2001:db8:5::/64"),)
    hit = {f"203.0.113.{i}": 3000.0 for i in range(1, 21)}
    t = locate(rates(hit), np.arange(len(hit)), UDP, 20_000, s.groups[1], s, known)
    assert t is not None and t.prefixes == (known[0], ipaddress.ip_network("203.0.113.0/25"))


def test_no_host_data_no_target() -> None:
    s = settings()
    assert locate(rates({}), np.zeros(0, dtype=np.int64), UDP, 20_000, s.groups[1], s) is None
    assert locate(rates({"203.0.113.5": 0}), np.arange(1), UDP, 20_000, s.groups[1], s) is None
