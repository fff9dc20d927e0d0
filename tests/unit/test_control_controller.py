"""agent/control/controller.py and the parts it wires (tracker, ladder, banstep, journal).

Whole attacks, from detection to release, on a FakePort: each test replays
traffic (tests/unit/synthetic.py) into the fake port with an injected clock
and checks what the controller wrote, logged and recorded. The Replay plays
a crude data plane, so rules (per-source limits among them) and bans really drop traffic
and the ladder sees their effect.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import math
from typing import Any

import pytest
from fakes import FakePort, WatchedDict, count_heap_pops
from structlog.testing import capture_logs
from synthetic import Flow, Scenario, lab, lab_data, with_group

from agent.contract.abi import Origin, RuleAction, TrafficClass
from agent.contract.specs import RuleSpec
from agent.control import bans
from agent.control.mitigate import limits_syns
from agent.policy.model import Policy

NS = 1_000_000_000
WEB = ipaddress.ip_address("203.0.113.10")
WEB6 = ipaddress.ip_address("2001:db8:5::10")
CLIENTS = tuple(ipaddress.ip_address(f"100.64.1.{i}") for i in range(1, 101))
REFLECTORS = tuple(ipaddress.ip_address(f"198.18.{i // 200}.{i % 200 + 1}") for i in range(400))
ATTACKER = ipaddress.ip_address("198.19.7.7")

def scenario(policy: Policy | None = None, **kw: Any) -> Scenario:
    """The lab with its normal traffic (clients to the web server) learned for 30 s."""
    sc = Scenario.build(policy or lab(), **kw)
    gid = sc.gid("servers")
    sc.replay.add(Flow(WEB, gid, TrafficClass.UDP, 1000, sources=CLIENTS, dport=53))
    sc.replay.add(Flow(WEB, gid, TrafficClass.TCP_OTHER, 2000, sources=CLIENTS, dport=443))
    sc.replay.add(Flow(WEB, gid, TrafficClass.TCP_SYN, 50, sources=CLIENTS, dport=443))
    sc.run(30)
    return sc


def events(logs: list[dict[str, Any]], name: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name and all(e.get(k) == v for k, v in match.items())]


def rules_written(port: FakePort) -> list[RuleSpec]:
    return [r for _, rules in port.written("rules") for r in rules]  # type: ignore[attr-defined]


# --- reflection ----------------------------------------------------------------------------------


def test_ntp_reflection_is_dropped_by_source_port_and_released_after_it_stops() -> None:
    sc = scenario()
    gid = sc.gid("servers")
    start = sc.replay.t
    sc.replay.add(
        Flow(WEB, gid, TrafficClass.UDP, 200_000, size=468, sources=REFLECTORS, sport=123, dport=None,
             start_s=start, stop_s=start + 20)
    )
    with capture_logs() as logs:
        sc.run(2)
        (attack,) = sc.controller.attacks()
        assert (attack.vector, attack.service, attack.aim.host) == ("udp_reflection", "ntp", str(WEB))
        (rule,) = sc.port.rules
        assert (rule.dst, rule.proto, rule.sport, rule.action) == (
            ipaddress.ip_network(WEB), 17, (123, 123), RuleAction.DROP
        )
        assert rule.origin == Origin.AUTO and rule.group == gid and not rule.monitor
        assert sc.port.live_bans() == {}, "reflectors are real servers, each below the abusive rate"
        sc.run(18)
        assert sc.controller.attacks()[0].active
        sc.run(5)
    assert sc.controller.attacks() == []
    (ended,) = sc.controller.attacks(active=False, recent=1)
    assert ended.end.reason == "hold_down" and ended.traffic.dropped_packets > 0
    assert sc.port.rules == []
    assert events(logs, "attack_started", vector="udp_reflection", service="ntp")
    assert events(logs, "mitigation_applied", step="rule", sport=[123, 123], rule_action="drop")
    assert events(logs, "mitigation_removed", step="rule", sport=[123, 123])
    assert not events(logs, "mitigation_applied", step="tighten"), "nobody's per-source limit was touched"
    assert events(logs, "attack_ended", attack_id=ended.id)
    record = ended.to_dict()
    assert record["top_source_ports"][0]["port"] == 123
    assert {m["step"] for m in record["mitigations"]} == {"rule"}
    assert record["time_to_mitigate_s"] is not None
    verdict = record["verdict"]
    assert (verdict["kind"], verdict["lever"]) == ("attack", "shape") and "port 123" in verdict["why"]
    assert verdict["legit_pps_at_risk"] == 0.0, "the servers' calm traffic has no answers from port 123"


def test_reflection_over_ipv6_gets_a_host_rule() -> None:
    sc = scenario()
    gid = sc.gid("servers")
    reflectors6 = tuple(ipaddress.ip_address(f"2001:db8:f:{i:x}::1") for i in range(400))
    t = sc.replay.t
    sc.replay.add(Flow(WEB6, gid, TrafficClass.UDP, 100_000, sources=reflectors6, sport=1900, dport=None, start_s=t))
    sc.run(3)
    (attack,) = sc.controller.attacks()
    assert (attack.vector, attack.service, attack.aim.host) == ("udp_reflection", "ssdp", str(WEB6))
    assert [(r.dst, r.sport) for r in sc.port.rules] == [(ipaddress.ip_network(WEB6), (1900, 1900))]
    assert sc.port.live_bans() == {}


def test_an_ipv6_heavy_hitter_is_limited_then_banned_by_its_source_prefix() -> None:
    """One real IPv6 source flooding the service port the servers use: its /64 is limited, then banned."""
    sc = scenario()
    heavy6 = ipaddress.ip_address("2001:db8:e::7")
    sc.replay.add(Flow(WEB6, sc.gid("servers"), TrafficClass.UDP, 100_000, sources=(heavy6,), dport=53,
                       start_s=sc.replay.t))
    sc.run(3)
    (attack,) = sc.controller.attacks()
    assert attack.verdict is not None and attack.verdict.lever == "sources"
    (limit,) = sc.port.rules
    assert (limit.action, limit.dst, limit.traffic_class) == (
        RuleAction.SOURCE_LIMIT, ipaddress.ip_network(WEB6), TrafficClass.UDP
    )
    assert list(sc.port.live_bans()) == [ipaddress.ip_network("2001:db8:e::/64")]


# --- SYN floods ---------------------------------------------------------------------------------


def test_syn_flood_gets_syn_auth_never_an_aggregate_rule() -> None:
    sc = scenario()
    gid = sc.gid("servers")
    t0 = sc.replay.t
    sc.replay.add(Flow(WEB, gid, TrafficClass.TCP_SYN, 300_000, size=60, dport=443, start_s=t0, stop_s=t0 + 10))
    with capture_logs() as logs:
        sc.run(3)
        (attack,) = sc.controller.attacks()
        assert attack.vector == "syn_flood"
        # Only verified sources reach the per-source SYN limits: tightening
        # them would slow real users down and not one forged SYN.
        assert not any(r.action == RuleAction.SOURCE_LIMIT for r in sc.port.rules)
        now = sc.port.now_ns()
        assert now < sc.port.syn_auth[gid] <= now + 10 * 10**9  # mitigation.ttl of the lab policy
        assert attack.evidence.spoofed and attack.history.bans == 0
        sc.run(12)
    assert sc.controller.attacks() == []
    assert rules_written(sc.port) == [], "no rule of any kind for a SYN flood"
    assert gid not in sc.port.syn_auth
    assert sc.port.written("syn_auth")[-1][1] == (gid, None)
    assert events(logs, "mitigation_applied", step="syn_auth")
    assert events(logs, "mitigation_removed", step="syn_auth", stopped=True)
    assert events(logs, "attack_judged", lever="syn_auth")
    assert not events(logs, "mitigation_applied", step="rule") and not events(logs, "mitigation_applied",
                                                                             step="tighten")


def test_syn_auth_is_only_for_groups_that_ask_for_it_on_attack() -> None:
    sc = scenario(with_group(syn_auth="off"))
    gid = sc.gid("servers")
    sc.replay.add(Flow(WEB, gid, TrafficClass.TCP_SYN, 300_000, size=60, dport=443, start_s=sc.replay.t))
    sc.run(3)
    (attack,) = sc.controller.attacks()
    assert attack.vector == "syn_flood"
    assert sc.port.written("syn_auth") == []
    # Without SYN authentication nothing local spares real users: no aggregate SYN limit, and per-source
    # limits are useless against forged sources. The record says so; nothing is written.
    assert attack.verdict is not None and (attack.verdict.kind, attack.verdict.lever) == ("attack", "none")
    assert "SYN authentication is off" in attack.verdict.why
    assert sc.port.rules == []


def test_no_rule_ever_written_limits_syns() -> None:
    """Every vector at once, carpet included: not one rule may match a bare SYN."""
    sc = scenario()
    gid = sc.gid("servers")
    t = sc.replay.t
    hosts = [ipaddress.ip_address(f"203.0.113.{i}") for i in range(100, 140)]
    for h in hosts:
        sc.replay.add(Flow(h, gid, TrafficClass.TCP_SYN, 5_000, size=60, start_s=t))
        sc.replay.add(Flow(h, gid, TrafficClass.TCP_OTHER, 5_000, size=60, tcp_flags=0x10, start_s=t))
    sc.replay.add(Flow(WEB, gid, TrafficClass.UDP, 100_000, dport=None, start_s=t))
    sc.replay.add(Flow(WEB, gid, TrafficClass.ICMP, 50_000, dport=None, sport=8, start_s=t))
    sc.run(5)
    vectors = {(a.flood, a.vector) for a in sc.controller.attacks()}
    assert ("syn_flood", "carpet_bombing") in vectors and ("tcp_other_flood", "carpet_bombing") in vectors
    written = rules_written(sc.port)
    assert any(r.proto == 6 for r in written), "the ACK flood got its rule"
    assert not any(limits_syns(r) for r in written)


# --- bans ---------------------------------------------------------------------------------------


def test_spoofed_flood_bans_nobody_and_the_record_says_why() -> None:
    sc = scenario()
    gid = sc.gid("servers")
    sc.replay.add(Flow(WEB, gid, TrafficClass.UDP, 200_000, dport=None, start_s=sc.replay.t))
    with capture_logs() as logs:
        sc.run(5)
    (attack,) = sc.controller.attacks()
    assert attack.evidence.spoofed and attack.history.bans == 0 and sc.port.bans == {}
    assert attack.evidence.spoof_reason is not None and "spoof" in attack.evidence.spoof_reason
    assert "ban" not in attack.ladder.steps, "forged sources are never a ban's lever"
    assert sc.port.rules, "rules carry the defence"
    record = json.loads(attack.to_json())
    assert record["spoofed"] is True and "spoofed" in record["verdict"]["evidence"]["spoofing"]
    assert events(logs, "attack_judged", lever="shape")


def heavy_hitter(sc: Scenario, src: ipaddress.IPv4Address | ipaddress.IPv6Address, seconds: float) -> None:
    """One real source flooding the servers' own UDP service port (53): a shape they have, so per source."""
    sc.replay.add(Flow(WEB, sc.gid("servers"), TrafficClass.UDP, 100_000, sources=(src,), dport=53,
                       start_s=sc.replay.t, stop_s=sc.replay.t + seconds))


def test_a_heavy_hitter_is_banned_and_a_repeat_offender_for_longer() -> None:
    sc = scenario()
    ttls = []
    for _ in range(5):
        heavy_hitter(sc, ATTACKER, 10)
        sc.run(10)
        (attack,) = sc.controller.attacks()
        net = ipaddress.ip_network(ATTACKER)
        ban = sc.port.bans[net]
        assert not ban.monitor and attack.id in ban.reason
        ttls.append(round((ban.expires_ns - sc.port.clock_ns) / NS))
        assert attack.history.bans == 1 and attack.history.banned == [str(net)]
        # Quiet until the attack ended and the ban ran out.
        sc.run(ttls[-1] + 1)
        assert sc.controller.attacks() == [] and sc.port.live_bans() == {}
    # ban_ttl 30 s, escalation x2, at most ban_ttl_max 5 m (less the seconds since each ban).
    assert [t // 10 * 10 for t in ttls] == [20, 50, 110, 230, 290]
    assert sc.controller.ban_counts() == {str(ipaddress.ip_network(ATTACKER)): 5}


def test_repeat_offender_counts_survive_a_restart() -> None:
    sc = scenario(ban_counts={"198.19.7.7/32": 3})
    heavy_hitter(sc, ATTACKER, 10)
    sc.run(10)
    ban = sc.port.bans[ipaddress.ip_network(ATTACKER)]
    assert (ban.expires_ns - sc.port.clock_ns) / NS > 200  # 30 s * 2**3 = 240 s


def test_never_bans_allowlisted_infrastructure_or_protected_sources() -> None:
    sc = scenario()
    forbidden = {
        ipaddress.ip_address("100.64.99.5"): "allowlisted",
        ipaddress.ip_address("192.0.2.1"): "infrastructure",
        ipaddress.ip_address("198.51.100.7"): "protected asset",
    }
    t = sc.replay.t
    for src in [*forbidden, ATTACKER]:
        sc.replay.add(Flow(WEB, sc.gid("servers"), TrafficClass.UDP, 50_000, sources=(src,), dport=53, start_s=t))
    with capture_logs() as logs:
        sc.run(10)
    assert list(sc.port.bans) == [ipaddress.ip_network(ATTACKER)]
    notes = " ".join(sc.controller.attacks()[0].history.notes)
    for src, why in forbidden.items():
        assert f"{src}/32 is {why}" in notes
    assert len(events(logs, "mitigation_skipped", step="ban")) == 3, "each refusal is logged once"


def test_max_bans_is_respected() -> None:
    sc = scenario(with_group(mitigation={"max_bans": 10}))
    sources = tuple(ipaddress.ip_address(f"198.19.8.{i}") for i in range(1, 51))
    sc.replay.add(Flow(WEB, sc.gid("servers"), TrafficClass.UDP, 50 * 20_000, sources=sources, dport=53,
                       start_s=sc.replay.t))
    sc.run(10)
    (attack,) = sc.controller.attacks()
    assert len(sc.port.bans) == 10 and attack.history.bans == 10
    assert any("max_bans reached (10)" in n for n in attack.history.notes)
    assert sc.controller.stats().bans_active == 10


def test_global_max_bans_caps_all_groups_together() -> None:
    sc = scenario(lab(mitigation={"max_bans": 3}))
    sources = tuple(ipaddress.ip_address(f"198.19.8.{i}") for i in range(1, 11))
    sc.replay.add(Flow(WEB, sc.gid("servers"), TrafficClass.UDP, 10 * 20_000, sources=sources, dport=53,
                       start_s=sc.replay.t))
    sc.run(10)
    assert len(sc.port.bans) == 3


def test_ticks_with_10k_bans_in_force_and_none_due_do_no_per_ban_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ban book is looked at through its heap's top and its counters, never walked."""
    now = FakePort().clock_ns
    in_force = {ipaddress.ip_network(f"198.18.{i >> 8}.{i & 255}/32"): now + 3600 * NS + i for i in range(10_000)}
    sc = scenario(lab(mitigation={"max_bans": "20k"}), auto_bans=in_force)
    book = sc.controller._bans
    book._active = watched = WatchedDict(book._active)
    popped = count_heap_pops(monkeypatch, bans)
    heavy_hitter(sc, ATTACKER, 5)
    sc.run(5)
    assert sc.controller.attacks()[0].history.banned == [str(ipaddress.ip_network(ATTACKER))]
    assert sc.controller.stats().bans_active == 10_001
    assert (popped[0], watched.walks) == (0, 0), "no ban looked at, none expired"


# --- carpet bombing ------------------------------------------------------------------------------


def test_carpet_bombing_across_many_hosts_gets_a_prefix_rule() -> None:
    sc = scenario()
    gid = sc.gid("servers")
    hosts = [ipaddress.ip_address(f"203.0.113.{i}") for i in range(100, 120)]
    for h in hosts:
        sc.replay.add(Flow(h, gid, TrafficClass.UDP, 5_000, dport=None, start_s=sc.replay.t))
    sc.run(5)
    (attack,) = sc.controller.attacks()
    assert (attack.vector, attack.flood) == ("carpet_bombing", "udp_flood")
    assert attack.aim.host is None and attack.aim.prefixes == ["203.0.113.0/24"]
    assert attack.aim.hosts_hit >= 8
    assert len(attack.to_dict()["top_destinations"]) == 10
    (rule,) = sc.port.rules
    assert rule.dst == ipaddress.ip_network("203.0.113.0/24") and rule.proto == 17
    # Spoofed sources to random ephemeral ports: dropped, services below 1024 spared.
    assert attack.evidence.spoofed
    assert rule.action == RuleAction.DROP and rule.dport == (1024, 65535)


def test_a_carpet_from_real_sources_to_ports_nobody_uses_is_dropped_by_what_the_profile_lacks() -> None:
    """Real sources do not make a shape legitimate: UDP to random high ports is absent from the servers' calm
    traffic (UDP to port 53 only), so the rule drops it; the servers' own UDP service is spared."""
    sc = scenario()
    gid = sc.gid("servers")
    hosts = [ipaddress.ip_address(f"203.0.113.{i}") for i in range(100, 120)]
    for h in hosts:
        botnet = tuple(ipaddress.ip_address(f"198.18.7.{i}") for i in range(1, 6))
        sc.replay.add(Flow(h, gid, TrafficClass.UDP, 5_000, dport=None, start_s=sc.replay.t, sources=botnet))
    sc.run(5)
    (attack,) = sc.controller.attacks()
    assert attack.vector == "carpet_bombing" and not attack.evidence.spoofed
    (rule,) = sc.port.rules
    assert rule.action == RuleAction.DROP and rule.dport == (1024, 65535)
    assert attack.verdict is not None and attack.verdict.legit_pps == 0.0


# --- escalation ----------------------------------------------------------------------------------


def test_escalation_needed_once_per_attack_when_the_group_uplink_is_full() -> None:
    sc = scenario(with_group(uplink={"pps": "100k"}))
    gid = sc.gid("servers")
    t = sc.replay.t
    sc.replay.add(Flow(WEB, gid, TrafficClass.UDP, lambda t_: 0 if t + 10 <= t_ < t + 12 else 150_000,
                       dport=None, start_s=t))
    with capture_logs() as logs:
        sc.run(10)
        (first,) = events(logs, "escalation_needed")
        sc.run(10)
    (attack,) = sc.controller.attacks()
    assert first["scope"] == "group:servers" and first["attack_ids"] == [attack.id]
    assert first["capacity_pps"] == 100_000 and first["pps"] > 100_000
    assert first["target"] == [str(WEB)]
    # It stopped for 2 s (the attack held on) and came back: signalled once more.
    assert len(events(logs, "escalation_needed")) == 2
    assert attack.history.escalated and len(attack.history.escalations) == 2
    assert sc.controller.stats().escalations_total == 2


def test_escalation_needed_when_total_inbound_fills_the_uplink() -> None:
    sc = scenario(lab(mitigation={"uplink": {"pps": "500k"}}))
    office = ipaddress.ip_address("198.51.100.20")
    sc.replay.add(Flow(office, sc.gid("office"), TrafficClass.UDP, 600_000, dport=None, start_s=sc.replay.t))
    with capture_logs() as logs:
        sc.run(3)
    # At once, before any attack is confirmed; then once more for the attack.
    first, second = events(logs, "escalation_needed")
    assert first["scope"] == "total" and first["capacity_pps"] == 500_000 and first["attack_ids"] == []
    (attack,) = sc.controller.attacks()
    assert second["scope"] == "total" and second["attack_ids"] == [attack.id] and attack.history.escalated


# --- monitor mode ---------------------------------------------------------------------------------


def every_lever(sc: Scenario, t: float, stop: float = math.inf) -> None:
    """A reflection (a shape rule), one real source flooding the HTTPS port with ACKs (a per-source limit,
    then a ban) and a forged SYN flood (SYN authentication), all at once."""
    gid = sc.gid("servers")
    sc.replay.add(Flow(WEB, gid, TrafficClass.UDP, 200_000, sources=REFLECTORS, sport=123, dport=None, start_s=t,
                       stop_s=stop))
    sc.replay.add(Flow(WEB, gid, TrafficClass.TCP_OTHER, 100_000, sources=(ATTACKER,), dport=443, start_s=t,
                       stop_s=stop))
    sc.replay.add(Flow(WEB, gid, TrafficClass.TCP_SYN, 300_000, size=60, dport=443, start_s=t, stop_s=stop))


def test_monitor_mode_detects_and_records_everything_but_only_writes_monitor_only() -> None:
    sc = scenario(lab(mode="monitor"))
    every_lever(sc, sc.replay.t)
    with capture_logs() as logs:
        sc.run(5)
    attacks = {a.vector: a for a in sc.controller.attacks()}
    assert set(attacks) == {"udp_reflection", "tcp_other_flood", "syn_flood"}
    assert all(a.monitor for a in attacks.values())
    assert sc.port.rules and all(r.monitor for r in sc.port.rules)
    assert sc.port.bans and all(b.monitor for b in sc.port.bans.values())
    applied = [m for a in attacks.values() for m in a.history.mitigations if m.action == "applied"]
    assert {m.step for m in applied} == {"tighten", "rule", "ban", "syn_auth"}
    assert all(m.monitor for m in applied)
    assert all(e["monitor"] for e in events(logs, "mitigation_applied"))
    assert sc.controller.stats().time_to_mitigate_count == 0, "nothing was enforced"


def test_a_monitor_group_is_monitored_while_others_are_enforced() -> None:
    data = lab_data()
    data["protect"][1]["monitor"] = True
    sc = scenario(Policy.model_validate(data))
    t = sc.replay.t
    office = ipaddress.ip_address("198.51.100.20")
    sc.replay.add(Flow(WEB, sc.gid("servers"), TrafficClass.UDP, 200_000, sources=REFLECTORS, sport=123,
                       dport=None, start_s=t))
    sc.replay.add(Flow(office, sc.gid("office"), TrafficClass.UDP, 200_000, sources=REFLECTORS, sport=123,
                       dport=None, start_s=t))
    sc.run(5)
    by_group = {a.group: a for a in sc.controller.attacks()}
    assert not by_group["servers"].monitor and by_group["office"].monitor
    rules = {r.group: r for r in sc.port.rules}
    assert rules[sc.gid("office")].monitor and not rules[sc.gid("servers")].monitor


# --- expiries: a dead daemon leaves nothing for long ---------------------------------------------


def test_everything_written_expires_in_the_future_within_its_ttl() -> None:
    sc = scenario()
    t = sc.replay.t
    every_lever(sc, t, t + 60)
    sc.run(70)
    ttl, ban_max = 10 * NS, 300 * NS
    kinds = set()
    for at, kind, what in sc.port.writes:
        kinds.add(kind)
        if kind == "tighten":
            expires = what[2]  # type: ignore[index]
            assert at < expires <= at + ttl
        elif kind == "syn_auth" and what[1] is not None:  # type: ignore[index]
            assert at < what[1] <= at + ttl  # type: ignore[index]
        elif kind == "rules":
            for r in what:  # type: ignore[attr-defined]
                assert at < r.expires_ns <= at + ttl
        elif kind == "ban":
            assert at < what[1] <= at + ban_max  # type: ignore[index]
    assert kinds >= {"syn_auth", "rules", "ban"}
    assert any(r.action == RuleAction.SOURCE_LIMIT for kind_rules in (w for _, k, w in sc.port.writes if k == "rules")
               for r in kind_rules), "the per-source limit is a rule, and expires like one"  # type: ignore[attr-defined]
    # Refreshed while the attack lasted: never more than ttl/2 between writes.
    refreshes = [at for at, kind, _ in sc.port.writes if kind == "rules"]
    assert len(refreshes) >= 60 // 5
    assert max(b - a for a, b in itertools.pairwise(refreshes)) <= ttl // 2 + sc.tick_s * NS


def test_nothing_is_refreshed_on_every_tick() -> None:
    sc = scenario()
    sc.replay.add(Flow(WEB, sc.gid("servers"), TrafficClass.UDP, 200_000, sources=REFLECTORS, sport=123,
                       dport=None, start_s=sc.replay.t))
    writes_before = len(sc.port.writes)
    sc.run(20)
    ticks = 20 / sc.tick_s
    assert len(sc.port.writes) - writes_before < ticks / 4


# --- the hook -----------------------------------------------------------------------------------


def test_policy_reload_keeps_attacks_of_groups_that_remain_and_ends_the_others() -> None:
    sc = scenario()
    t = sc.replay.t
    office = ipaddress.ip_address("198.51.100.20")
    sc.replay.add(Flow(WEB, sc.gid("servers"), TrafficClass.UDP, 200_000, sources=REFLECTORS, sport=123,
                       dport=None, start_s=t))
    sc.replay.add(Flow(office, sc.gid("office"), TrafficClass.UDP, 200_000, sources=REFLECTORS, sport=53,
                       dport=None, start_s=t))
    sc.run(3)
    before = {a.group: a.id for a in sc.controller.attacks()}
    assert set(before) == {"servers", "office"}
    data = lab_data()
    del data["protect"][1]
    data["detection"]["hold_down"] = "5s"
    new = Policy.model_validate(data)
    from agent.policy.compile import compile_policy

    with capture_logs() as logs:
        sc.controller.update_policy(new, compile_policy(new))
    (ended,) = events(logs, "attack_ended")
    assert ended["attack_id"] == before["office"] and ended["reason"] == "group removed from the policy"
    assert [a.id for a in sc.controller.attacks()] == [before["servers"]]
    assert {r.group for r in sc.port.rules} == {sc.gid("servers")}
    sc.run(1)
    assert [a.id for a in sc.controller.attacks()] == [before["servers"]], "state kept across the reload"


def test_a_ban_that_became_allowlisted_is_lifted_on_reload() -> None:
    sc = scenario()
    heavy_hitter(sc, ATTACKER, 30)
    sc.run(5)
    assert ipaddress.ip_network(ATTACKER) in sc.port.bans
    new = lab(allow={"prefixes": ["100.64.99.0/24", "198.19.7.0/24"]})
    from agent.policy.compile import compile_policy

    with capture_logs() as logs:
        sc.controller.update_policy(new, compile_policy(new))
    assert sc.port.bans == {}
    assert events(logs, "mitigation_removed", step="ban", prefix="198.19.7.7/32", reason="now allowlisted")


# --- reporting ------------------------------------------------------------------------------------


def test_attack_updated_is_logged_on_growth_or_periodically_not_every_tick() -> None:
    sc = scenario(update_every_s=5.0)
    gid = sc.gid("servers")
    t = sc.replay.t
    sc.replay.add(Flow(WEB, gid, TrafficClass.UDP, lambda t_: 100_000 if t_ < t + 5 else 200_000,
                       sources=REFLECTORS, sport=123, dport=None, start_s=t))
    with capture_logs() as logs:
        sc.run(12)
    updates = events(logs, "attack_updated")
    whys = [u["why"] for u in updates]
    assert "peak" in whys and "periodic" in whys
    assert len(updates) <= 4, f"{len(updates)} updates in 48 ticks"
    assert updates[whys.index("peak")]["peak_pps"] >= 150_000


def test_top_stats_and_status_describe_the_running_attack() -> None:
    sc = scenario()
    t = sc.replay.t
    sc.replay.add(Flow(WEB, sc.gid("servers"), TrafficClass.UDP, 200_000, sources=REFLECTORS, sport=123,
                       dport=None, start_s=t))
    sc.replay.add(Flow(WEB, sc.gid("servers"), TrafficClass.UDP, 150_000, sources=(ATTACKER,), sport=123,
                       dport=None, start_s=t))
    sc.run(4)
    top = sc.controller.top(5)
    assert top["destinations"][0]["destination"] == str(WEB)
    assert top["destinations"][0]["group"] == "servers" and top["destinations"][0]["pps"] > 350_000
    assert top["sources"][0]["source"] == str(ATTACKER) and 100_000 < top["sources"][0]["pps"] < 200_000
    assert top["groups"][0]["group"] == "servers"
    stats = sc.controller.stats()
    assert stats.active_by_vector == {"udp_reflection": 1}
    assert stats.started_by_vector == {"udp_reflection": 1}
    assert stats.time_to_mitigate_count == 1 and stats.time_to_mitigate[-1] == ("+Inf", 1)
    assert 0 < stats.time_to_mitigate_sum <= 2 * sc.tick_s
    # The reflection's rule drops the attacker's answers too: nobody's per-source limit is touched.
    assert stats.rules_active == 1 and stats.groups_tightened == 0 and stats.bans_active == 0
    status = sc.controller.status()
    assert status["attacks_active"] == 1 and status["tightened"] == []
    assert status["attacks"][0]["vector"] == "udp_reflection/ntp"
    json.dumps(status)
    json.dumps(top)


def test_attack_records_are_json_with_every_field_the_cli_needs() -> None:
    sc = scenario()
    sc.replay.add(Flow(WEB, sc.gid("servers"), TrafficClass.UDP, 200_000, sources=(ATTACKER,), sport=123,
                       dport=None, start_s=sc.replay.t, stop_s=sc.replay.t + 5))
    sc.run(10)
    (record,) = sc.controller.attacks(active=False, recent=5)
    data = json.loads(record.to_json())
    for key in ("id", "target", "vector", "service", "started_at", "ended_at", "peak_pps", "peak_bps",
                "dropped_packets", "top_sources", "top_source_ports", "top_destination_ports", "mitigations",
                "spoofed", "escalated", "time_to_mitigate_s", "bans"):
        assert key in data, key
    assert data["target"] == {"group": "servers", "host": str(WEB), "prefixes": []}
    assert data["top_sources"][0]["source"] == str(ATTACKER)
    assert data["started_at"].endswith("Z") and data["ended_at"] > data["started_at"]
    assert data["dropped_packets"] > 0 and data["peak_pps"] >= 200_000


def test_events_come_in_order_even_when_the_first_step_bans() -> None:
    sc = scenario(with_group(mitigation={"ladder": ["ban"]}))
    heavy_hitter(sc, ATTACKER, 5)  # a sources lever with no tighten allowed: the ban is its first step
    with capture_logs() as logs:
        sc.run(10)
    names = [e["event"] for e in logs if e["event"].startswith(("attack_", "mitigation_"))]
    assert names[0] == "attack_started" and names[-1] == "attack_ended"
    assert "mitigation_applied" in names
    (attack,) = sc.controller.attacks(active=False, recent=1)
    assert attack.ladder.steps == ["ban"] and attack.history.bans == 1 and sc.port.written("tighten") == []


def test_a_detect_only_ladder_writes_nothing() -> None:
    sc = scenario(with_group(mitigation={"ladder": []}))
    sc.replay.add(Flow(WEB, sc.gid("servers"), TrafficClass.TCP_SYN, 300_000, size=60, start_s=sc.replay.t))
    writes = len(sc.port.writes)
    sc.run(5)
    (attack,) = sc.controller.attacks()
    assert attack.vector == "syn_flood" and "ladder is empty: detect only" in attack.history.notes
    assert len(sc.port.writes) == writes and attack.time_to_mitigate_s is None


def test_counters_that_restart_from_zero_are_not_a_flood() -> None:
    """A program replaced under the daemon starts its counters again: no spike, no attack."""
    sc = scenario()
    with capture_logs() as logs:
        sc.run(5)
        sc.port.group_counters[...] = 0
        sc.port.hosts.clear()
        sc.run(10)
    assert events(logs, "attack_started") == []


def test_a_new_group_on_a_reused_id_learns_afresh() -> None:
    sc = scenario()
    office = sc.gid("office")
    sc.replay.add(Flow(ipaddress.ip_address("198.51.100.20"), office, TrafficClass.UDP, 5000, sources=CLIENTS))
    sc.run(5)
    assert sc.controller.observer.baseline.seen[office].any()
    data = lab_data()
    data["protect"][1] = {"name": "lab2", "prefixes": ["192.0.2.128/25"]}
    new = Policy.model_validate(data)
    from agent.policy.compile import compile_policy

    compiled = compile_policy(new)
    assert compiled.group_ids["lab2"] == office, "the freed id is reused"
    sc.controller.update_policy(new, compiled)
    assert not sc.controller.observer.baseline.seen[office].any()
    assert sc.controller.observer.baseline.seen[sc.gid("servers")].any(), "the servers kept what they learned"


def test_a_carpet_attack_stays_a_carpet_attack_through_its_hold_down() -> None:
    # When the flood stops, the normal traffic left is one busy host: that must
    # not turn the ended attack into a single-host UDP flood.
    sc = scenario()
    gid = sc.gid("servers")
    stop = sc.replay.t + 5
    for i in range(100, 120):
        sc.replay.add(Flow(ipaddress.ip_address(f"203.0.113.{i}"), gid, TrafficClass.UDP, 5_000, dport=None,
                           start_s=sc.replay.t, stop_s=stop))
    sc.run(60)
    (attack,) = sc.controller.attacks(active=False, recent=1)
    assert not attack.active and attack.vector == "carpet_bombing" and attack.aim.host is None


def test_a_syn_flood_on_an_always_authenticated_group_says_so() -> None:
    sc = scenario(with_group(syn_auth="always"))
    gid = sc.gid("servers")
    sc.replay.add(Flow(WEB, gid, TrafficClass.TCP_SYN, 300_000, size=60, dport=443, start_s=sc.replay.t))
    sc.run(3)
    (attack,) = sc.controller.attacks()
    assert attack.vector == "syn_flood"
    (entry,) = [m for m in attack.history.mitigations if m.step == "syn_auth"]
    assert entry.detail == {"always": True} and entry.action == "applied"
    assert sc.port.written("syn_auth") == [], "nothing to switch on: the program challenges already"


def test_an_always_authenticated_group_has_no_syn_auth_to_lift_when_the_attack_ends() -> None:
    sc = scenario(with_group(syn_auth="always"))
    t = sc.replay.t
    sc.replay.add(Flow(WEB, sc.gid("servers"), TrafficClass.TCP_SYN, 300_000, size=60, dport=443, start_s=t,
                       stop_s=t + 3))
    with capture_logs() as logs:
        sc.run(15)
    (attack,) = sc.controller.attacks(active=False, recent=1)
    assert [(m.step, m.action) for m in attack.history.mitigations if m.step == "syn_auth"] == [("syn_auth", "applied")]
    assert events(logs, "mitigation_removed", step="syn_auth") == []
    assert attack.to_dict()["ladder_steps"] == [], "syn_auth is no ladder step, and nothing else was needed"


def test_a_ban_the_kernel_refuses_is_skipped_and_recorded_and_the_tick_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A full src_entries map used to raise out of tick(): no rules, tightening or SYN auth
    # for any group, every tick, for as long as the map stayed full.
    from agent.datapath.errors import CapacityError

    sc = scenario()

    def full(*_a: Any, **_kw: Any) -> None:
        raise CapacityError("src_entries is full (4095 prefixes): raise capacity.prefixes in the policy and restart")

    monkeypatch.setattr(sc.port, "ban", full)
    heavy_hitter(sc, ATTACKER, 10)
    with capture_logs() as logs:
        sc.run(10)
    (attack,) = sc.controller.attacks()
    assert attack.history.bans == 0 and sc.port.bans == {}
    assert any("ban of 198.19.7.7/32 failed: src_entries is full" in n for n in attack.history.notes)
    assert len(events(logs, "mitigation_skipped", step="ban")) == 1, "logged once, not every tick"
    # The tick went on: the per-source rule is in force and kept fresh to the last tick.
    assert sc.port.rules and all(r.expires_ns > sc.port.clock_ns for r in sc.port.rules)
