"""agent/upstream without a speaker: shapes from records, guardrails, the book with a fake speaker and a fake clock,
the route encoding round trip, gobgpd's configuration, and the policy block."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.policy import load_policy
from agent.policy.model import Policy
from agent.upstream.announce import Announcement, Match, flowspec_for, wanted
from agent.upstream.gobgp import Held, PeerStatus, Route, SpeakerError, decode, path_of
from agent.upstream.manager import Manager
from agent.upstream.speaker import gobgpd_config

BASE = """\
interfaces: [eth0]
allow: {prefixes: [203.0.113.200/32]}
infrastructure: {prefixes: [198.51.100.53/32]}
protect:
  - {name: web, prefixes: [203.0.113.0/24]}
  - {name: dns, prefixes: [198.51.100.0/24]}
upstream:
  asn: 64501
  router_id: 192.0.2.2
  peers: [{name: transit, address: 192.0.2.1, asn: 64500}]
  rtbh: {groups: [web]}
  ttl: 60s
  hold_down: 30s
"""


def policy(tmp_path: Path, extra: str = "") -> Policy:
    (tmp_path / "p.yaml").write_text(BASE + extra)
    r = load_policy(tmp_path / "p.yaml")
    assert r.policy is not None, r.errors
    return r.policy


def record(aid: str = "a1", host: str = "203.0.113.7", **kw: object) -> dict[str, object]:
    r: dict[str, object] = {"id": aid, "active": True, "escalated": True, "group": "web", "class": "udp",
                            "flood": "udp_reflection", "target": {"group": "web", "host": host, "prefixes": []},
                            "mitigations": [], "top_source_ports": [{"port": 53, "share": 0.9}]}
    r.update(kw)
    return r


class FakeSpeaker:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.down = False
        self.adds = 0

    def add(self, route: Route) -> None:
        if self.down:
            raise SpeakerError("down")
        self.adds += 1
        self.routes[route.announcement.key] = route

    def delete(self, held: Held | Announcement) -> None:
        if self.down:
            raise SpeakerError("down")
        a = held.announcement if isinstance(held, Held) else held
        assert a is not None
        self.routes.pop(a.key, None)

    def held(self) -> list[Held]:
        if self.down:
            raise SpeakerError("down")
        return [Held(r.announcement, r.expires, None) for r in self.routes.values()]

    def peers(self) -> list[PeerStatus]:
        if self.down:
            raise SpeakerError("down")
        return [PeerStatus("192.0.2.1", 64500, "established", None, False)]


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


# --------------------------------------------------------------------------- shapes


def test_the_shape_comes_from_the_rules_in_force_first() -> None:
    rule = {"step": "rule", "action": "applied", "rule_id": 3, "dst": "203.0.113.7/32", "proto": 17,
            "sport": [53, 53], "dport": [1024, 65535], "rule_action": "drop"}
    got = flowspec_for(record(mitigations=[rule]))
    assert isinstance(got, list)
    assert [a.key for a in got] == ["flowspec 203.0.113.7/32 proto 17 sport 53 dport 1024-65535"]
    removed = {**rule, "action": "removed"}
    got = flowspec_for(record(mitigations=[rule, removed]))
    assert isinstance(got, list) and got[0].key == "flowspec 203.0.113.7/32 proto 17 sport 53"  # the class's shape


@pytest.mark.parametrize(("cls", "flood", "host", "key"), [
    ("tcp_syn", "syn_flood", "203.0.113.7", "flowspec 203.0.113.7/32 proto 6 tcp_flags 0x02/0x12"),
    ("udp", "udp_flood", "203.0.113.7", "flowspec 203.0.113.7/32 proto 17"),
    ("icmp", "icmp_flood", "2001:db8::1", "flowspec 2001:db8::1/128 proto 58"),
    ("fragment", "fragment_flood", "203.0.113.7", "flowspec 203.0.113.7/32 fragment"),
])
def test_the_shape_of_a_class(cls: str, flood: str, host: str, key: str) -> None:
    got = flowspec_for(record(host=host, **{"class": cls, "flood": flood}))
    assert isinstance(got, list) and [a.key for a in got] == [key]


def test_no_shape_and_no_rtbh_are_refusals_not_announcements() -> None:
    wishes, skips = wanted([record(group="dns", **{"class": "other"})], flowspec=True, rtbh=True,
                           rtbh_groups=frozenset({"web"}))
    assert wishes == []
    assert {s.reason for s in skips} == {"no_shape", "rtbh_not_allowed"}
    wishes, _ = wanted([record(escalated=False), record(active=False)], flowspec=True, rtbh=True,
                       rtbh_groups=frozenset({"web"}))
    assert wishes == []


def test_routes_survive_the_round_trip_through_the_api_types() -> None:
    for a in (Announcement("flowspec", ipaddress.ip_network("203.0.113.0/24"),
                           Match(proto=6, dport=(80, 443), tcp_flags=(0x12, 0x02), length=(0, 100))),
              Announcement("flowspec", ipaddress.ip_network("2001:db8::/48"), Match(fragment=True)),
              Announcement("rtbh", ipaddress.ip_network("2001:db8::7/128"))):
        path = path_of(Route(a, 1_800_000_000, ((65535, 666),), next_hop="2001:db8::2"), (64501, 1001, 0),
                       (64501, 1002))
        assert decode(path) == a


# --------------------------------------------------------------------------- the book


def test_announce_refresh_hold_down_withdraw(tmp_path: Path) -> None:
    sp, clock = FakeSpeaker(), Clock()
    m = Manager(policy(tmp_path), sp, state_dir=tmp_path / "state", clock=clock)
    with capture_logs() as logs:
        m.tick([record()])
    assert sorted(sp.routes) == ["flowspec 203.0.113.7/32 proto 17 sport 53", "rtbh 203.0.113.7/32"]
    assert sp.routes["rtbh 203.0.113.7/32"].communities == ((65535, 666),)
    assert [e["event"] for e in logs].count("upstream_announced") == 2
    adds = sp.adds
    clock.t += 20
    m.tick([record()])
    assert sp.adds == adds  # more than half the TTL left: no refresh
    clock.t += 15
    m.tick([record()])
    assert sp.adds == adds + 2  # refreshed, with a later expiry
    assert sp.routes["rtbh 203.0.113.7/32"].expires == int(clock.t + 60)
    m.tick([])  # ended: hold-down starts
    clock.t += 29
    m.tick([])
    assert len(sp.routes) == 2
    clock.t += 2
    with capture_logs() as logs:
        m.tick([])
    assert sp.routes == {}
    assert [e["reason"] for e in logs if e["event"] == "upstream_withdrawn"] == [
        "its attacks ended and the hold-down passed"] * 2


def test_cap_rate_limit_and_monitor(tmp_path: Path) -> None:
    sp, clock = FakeSpeaker(), Clock()
    m = Manager(policy(tmp_path, "  max_announcements: 3\n  changes_per_minute: 2\n"), sp, clock=clock)
    m.tick([record("a"), record("b", "203.0.113.8")])
    assert len(sp.routes) == 2  # b's two are held back by the rate limit
    assert m.stats().refused == {("rtbh", "rate_limited"): 1, ("flowspec", "rate_limited"): 1}
    clock.t += 61
    m.tick([record("a"), record("b", "203.0.113.8")])
    assert len(sp.routes) == 3  # the cap
    assert ("rtbh", "cap") in m.stats().refused or ("flowspec", "cap") in m.stats().refused

    sp2 = FakeSpeaker()
    mon = Manager(policy(tmp_path, "  monitor: true\n"), sp2, clock=clock)
    with capture_logs() as logs:
        mon.tick([record()])
    assert sp2.routes == {}
    assert {e["monitor"] for e in logs if e["event"] == "upstream_announced"} == {True}
    assert [e["state"] for e in mon.snapshot()["announcements"]] == ["monitor", "monitor"]  # type: ignore[index]


def test_speaker_down_then_back_announces_what_is_pending(tmp_path: Path) -> None:
    sp, clock = FakeSpeaker(), Clock()
    m = Manager(policy(tmp_path), sp, clock=clock)
    sp.down = True
    with capture_logs() as logs:
        m.tick([record()])
        m.tick([record()])
    assert [e["event"] for e in logs].count("upstream_speaker_unavailable") == 1
    assert m.stats().speaker_up is False
    sp.down = False
    m.tick([record()])
    assert len(sp.routes) == 2 and m.stats().announcements == {"flowspec": 1, "rtbh": 1}


def test_restart_adopts_and_withdraws_stale(tmp_path: Path) -> None:
    sp, clock = FakeSpeaker(), Clock()
    state = tmp_path / "state"
    first = Manager(policy(tmp_path), sp, state_dir=state, clock=clock)
    first.tick([record(), record("b", "203.0.113.8")])
    expired = Announcement("rtbh", ipaddress.ip_network("203.0.113.9/32"))
    sp.routes[expired.key] = Route(expired, int(clock.t - 1))
    del first
    second = Manager(policy(tmp_path), sp, state_dir=state, clock=clock)
    second.tick([record()])
    assert "rtbh 203.0.113.9/32" not in sp.routes  # expired: withdrawn at once
    assert second.book["rtbh 203.0.113.7/32"].attacks == ["a1"]
    assert second.book["rtbh 203.0.113.8/32"].state == "held_down"  # adopted, not claimed: hold-down runs
    clock.t += 31
    second.tick([record()])
    assert sorted(sp.routes) == ["flowspec 203.0.113.7/32 proto 17 sport 53", "rtbh 203.0.113.7/32"]


# --------------------------------------------------------------------------- gobgpd and the policy


def test_gobgpd_config_connects_out_only_and_exports_only_its_own(tmp_path: Path) -> None:
    up = policy(tmp_path).upstream
    assert up is not None
    cfg = gobgpd_config(up)
    assert cfg["global"]["config"]["port"] == -1
    ap = cfg["global"]["apply-policy"]["config"]
    assert ap["default-export-policy"] == ap["default-import-policy"] == "reject-route"
    assert cfg["neighbors"][0]["config"] == {"neighbor-address": "192.0.2.1", "peer-as": 64500,
                                             "description": "transit"}
    listening = policy(tmp_path, '  speaker: {listen: "192.0.2.2:1179"}\n').upstream
    assert listening is not None
    assert gobgpd_config(listening)["global"]["config"]["port"] == 1179


@pytest.mark.parametrize(("extra", "message"), [
    ("  rtbh: {groups: [nope]}\n", "no protected group is called 'nope'"),
    ("  flowspec: {action: rate_limit}\n", "action rate_limit needs a rate"),
    ("  rtbh: {communities: ['65535:666:1:2']}\n", "is not a community"),
])
def test_policy_errors(tmp_path: Path, extra: str, message: str) -> None:
    text = BASE.replace("  rtbh: {groups: [web]}\n", "") + extra
    (tmp_path / "p.yaml").write_text(text)
    r = load_policy(tmp_path / "p.yaml")
    assert r.policy is None
    assert any(message in str(e) for e in r.errors), r.errors
