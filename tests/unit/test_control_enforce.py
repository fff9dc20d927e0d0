"""agent/control/enforce.py: only changes are written; expiries are refreshed at half-life, never past ttl."""

from __future__ import annotations

import ipaddress

from fakes import FakePort

from agent.contract.abi import Origin, RuleAction
from agent.contract.specs import RuleSpec
from agent.control.enforce import Enforcer, Wanted

NS = 1_000_000_000
TTL = 10.0
HOST = ipaddress.ip_network("203.0.113.5/32")
NET = ipaddress.ip_network("203.0.113.0/24")


def kinds(port: FakePort) -> list[str]:
    return [k for _, k, _ in port.writes]


def test_a_per_source_limit_is_a_rule_written_once_refreshed_at_half_ttl_and_lifted() -> None:
    port = FakePort()
    e = Enforcer(port)
    limit = RuleSpec(dst=HOST, action=RuleAction.SOURCE_LIMIT, pps=2000)
    wanted = Wanted(rules=[("a1", limit, TTL)])
    ch = e.apply(port.now_ns(), wanted)
    assert [r.action for _, r in ch.rules_added] == [RuleAction.SOURCE_LIMIT] and e.source_limited() == {0}
    for _ in range(4):
        port.advance(1)
        assert e.apply(port.now_ns(), wanted).rules_added == []
    assert kinds(port) == ["rules"], "nothing rewritten while more than half the ttl is left"
    port.advance(1.5)
    e.apply(port.now_ns(), wanted)
    assert kinds(port) == ["rules", "rules"] and port.rules[0].expires_ns == port.now_ns() + 10 * NS
    ch = e.apply(port.now_ns(), Wanted())
    assert len(ch.rules_removed) == 1 and port.rules == [] and e.source_limited() == set()


def test_a_shorter_ttl_from_a_reload_is_written_at_once() -> None:
    port = FakePort()
    e = Enforcer(port)
    e.apply(port.now_ns(), Wanted(syn_auth={1: 600.0}))
    e.apply(port.now_ns(), Wanted(syn_auth={1: 5.0}))
    assert port.syn_auth[1] == port.now_ns() + 5 * NS


def test_per_source_limits_come_after_drops_and_aggregate_limits() -> None:
    """A SOURCE_LIMIT match ends the program's rule scan: a drop written after it would never be reached."""
    port = FakePort()
    e = Enforcer(port)
    per_source = RuleSpec(dst=NET, action=RuleAction.SOURCE_LIMIT, pps=2000)
    drop = rule(sport=(123, 123))
    limit = rule(dst=NET, action=RuleAction.RATE_LIMIT, pps=1000)
    e.apply(port.now_ns(), Wanted(rules=[("a", per_source, TTL), ("b", limit, TTL), ("c", drop, TTL)]))
    assert [r.action for r in port.rules] == [RuleAction.DROP, RuleAction.RATE_LIMIT, RuleAction.SOURCE_LIMIT]


def test_syn_auth_on_refresh_and_off() -> None:
    port = FakePort()
    e = Enforcer(port)
    assert e.apply(port.now_ns(), Wanted(syn_auth={2: TTL})).syn_on == [2]
    port.advance(6)
    assert e.apply(port.now_ns(), Wanted(syn_auth={2: TTL})).syn_on == []
    assert port.syn_auth[2] == port.now_ns() + 10 * NS
    assert e.apply(port.now_ns(), Wanted()).syn_off == [2]
    assert port.written("syn_auth")[-1][1] == (2, None)


def rule(**kw: object) -> RuleSpec:
    return RuleSpec(**{"dst": HOST, "proto": 17, **kw})  # type: ignore[arg-type]


def test_rules_keep_their_ids_and_are_stamped_auto_with_expiries() -> None:
    port = FakePort()
    e = Enforcer(port)
    drop = rule(sport=(123, 123))
    limit = rule(dst=NET, action=RuleAction.RATE_LIMIT, pps=1000)
    ch = e.apply(port.now_ns(), Wanted(rules=[("a1", limit, TTL), ("a1", drop, TTL)]))
    assert len(ch.rules_added) == 2
    first = {r.rule_id for r in port.rules}
    assert all(r.origin == Origin.AUTO and r.expires_ns == port.now_ns() + 10 * NS for r in port.rules)
    assert [r.action for r in port.rules] == [RuleAction.DROP, RuleAction.RATE_LIMIT], "drops first"
    port.advance(6)
    e.apply(port.now_ns(), Wanted(rules=[("a1", limit, TTL), ("a1", drop, TTL)]))
    assert {r.rule_id for r in port.rules} == first
    assert all(r.expires_ns == port.now_ns() + 10 * NS for r in port.rules)
    ch = e.apply(port.now_ns(), Wanted(rules=[("a1", drop, TTL)]))
    assert [r.dst for _, r in ch.rules_removed] == [NET] and len(port.rules) == 1
    assert port.rules[0].rule_id in first


def test_the_same_rule_for_two_attacks_is_two_rules_and_rules_that_limit_syns_are_refused() -> None:
    port = FakePort()
    e = Enforcer(port)
    syn = RuleSpec(dst=HOST, proto=6, action=RuleAction.RATE_LIMIT, pps=10)
    ch = e.apply(port.now_ns(), Wanted(rules=[("a1", rule(), TTL), ("a2", rule(), TTL), ("a3", syn, TTL)]))
    assert len(port.rules) == 2
    assert [(aid, why) for aid, _, why in ch.rules_refused] == [("a3", "would limit SYNs")]


def test_a_full_rule_table_refuses_the_least_important() -> None:
    port = FakePort()
    e = Enforcer(port, max_rules=3)
    wanted = [(f"a{i}", rule(sport=(i, i)), TTL) for i in range(5)]
    ch = e.apply(port.now_ns(), Wanted(rules=wanted))
    assert [r.sport for r in port.rules] == [(0, 0), (1, 1), (2, 2)]
    assert [aid for aid, _, _ in ch.rules_refused] == ["a3", "a4"]


def test_group_ids_follow_a_renumbering_reload() -> None:
    port = FakePort()
    e = Enforcer(port)
    e.apply(port.now_ns(), Wanted(syn_auth={3: TTL}))
    e.remap({3: 5})
    assert 3 not in port.syn_auth, "id 3 may be another group's now"
    e.apply(port.now_ns(), Wanted(syn_auth={5: TTL}))
    assert 5 in port.syn_auth
    assert port.writes[-1:] == [(port.now_ns(), "syn_auth", (5, port.now_ns() + 10 * NS))]
