"""agent/control/mitigate.py: tightened limits, rules per vector, the ladder."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from agent.contract.abi import RuleAction
from agent.contract.specs import ClassLimit, RuleSpec
from agent.control.mitigate import limits_syns, next_steps, passed_level, plan_rules, tightened
from agent.control.vectors import Classification, Vector

HOST4 = ipaddress.ip_network("203.0.113.5/32")
HOST6 = ipaddress.ip_network("2001:db8:5::5/128")
NET = ipaddress.ip_network("203.0.113.0/24")


def plan(vector: Vector, shape: Classification | None = None, nets=(HOST4,), **kw):  # type: ignore[no-untyped-def]
    return plan_rules(vector, shape or Classification(vector), list(nets), 3, 20_000.0, 1e9, False, **kw)


def test_tightened_scales_only_the_attacked_classes() -> None:
    base = tuple(ClassLimit(1000 * (i + 1), 8_000_000, 2000) for i in range(6))
    out = tightened(base, 0.1, [0, 2])
    assert out[0] == ClassLimit(100, 800_000, 200) and out[2] == ClassLimit(300, 800_000, 200)
    assert out[1] == base[1] and out[5] == base[5]
    assert tightened((ClassLimit(5, 100, 1),), 0.001, [0]) == (ClassLimit(1, 8, 1),), "never zero (= unlimited)"


@pytest.mark.parametrize(
    ("proto", "mask", "value", "limits"),
    [
        (6, 0, 0, True),  # all TCP
        (0, 0, 0, True),  # everything
        (6, 0x02, 0x00, False),  # everything without SYN
        (6, 0x12, 0x10, False),  # ACK without SYN
        (6, 0x17, 0x12, False),  # SYN-ACK only
        (6, 0x10, 0x10, False),  # ACK set: not a bare SYN
        (6, 0x02, 0x02, True),  # SYNs
        (6, 0x04, 0x04, True),  # RST set: a SYN+RST? still could be SYN without ACK
        (17, 0, 0, False),
        (1, 0, 0, False),
    ],
)
def test_limits_syns(proto: int, mask: int, value: int, limits: bool) -> None:
    rule = RuleSpec(dst=HOST4, proto=proto, tcp_flags_mask=mask, tcp_flags_value=value,
                    action=RuleAction.RATE_LIMIT, pps=1)
    assert limits_syns(rule) is limits


def test_syn_floods_get_no_rule() -> None:
    p = plan(Vector.SYN_FLOOD)
    assert p.rules == () and p.why_none is not None and "SYN" in p.why_none


def test_reflection_is_dropped_by_source_port() -> None:
    (r,) = plan(Vector.UDP_REFLECTION, Classification(Vector.UDP_REFLECTION, "ntp", sport=123)).rules
    assert (r.dst, r.proto, r.sport, r.dport, r.action, r.group) == (HOST4, 17, (123, 123), (0, 65535),
                                                                      RuleAction.DROP, 3)


def test_fragment_floods_drop_non_first_fragments_of_the_protocol() -> None:
    (r,) = plan(Vector.FRAGMENT_FLOOD, Classification(Vector.FRAGMENT_FLOOD, proto=17)).rules
    assert (r.proto, r.sport, r.dport, r.action) == (17, (0, 0), (0, 0), RuleAction.DROP)
    mixed = plan(Vector.FRAGMENT_FLOOD, protocols=[17, 6, 1]).rules
    assert [r.proto for r in mixed] == [17, 6]


def test_icmp_floods_are_dropped_without_breaking_neighbour_discovery() -> None:
    (r4,) = plan(Vector.ICMP_FLOOD, Classification(Vector.ICMP_FLOOD, icmp_type=8)).rules
    assert (r4.proto, r4.sport, r4.action) == (1, (8, 8), RuleAction.DROP)
    (r6,) = plan(Vector.ICMP_FLOOD, nets=[HOST6]).rules
    assert r6.proto == 58 and r6.sport[1] < 133
    (ns,) = plan(Vector.ICMP_FLOOD, Classification(Vector.ICMP_FLOOD, icmp_type=135), nets=[HOST6]).rules
    assert ns.sport[1] < 133, "a flood of neighbour solicitations is not dropped by type"


def test_generic_floods_get_an_aggregate_limit_at_the_threshold() -> None:
    (u,) = plan(Vector.UDP_FLOOD, Classification(Vector.UDP_FLOOD, dport=27015)).rules
    assert (u.proto, u.dport, u.action, u.pps, u.bps) == (17, (27015, 27015), RuleAction.RATE_LIMIT, 20_000,
                                                          1_000_000_000)
    (t,) = plan(Vector.TCP_OTHER_FLOOD, Classification(Vector.TCP_OTHER_FLOOD, tcp_flags=0x10)).rules
    assert (t.proto, t.tcp_flags_mask, t.tcp_flags_value) == (6, 0x17, 0x10)
    (any_but_syn,) = plan(Vector.TCP_OTHER_FLOOD).rules
    assert (any_but_syn.tcp_flags_mask, any_but_syn.tcp_flags_value) == (0x02, 0)
    (gre,) = plan(Vector.OTHER, Classification(Vector.OTHER, proto=47)).rules
    assert gre.proto == 47 and gre.action is RuleAction.RATE_LIMIT
    assert plan(Vector.OTHER).rules == ()


def test_carpet_rules_share_the_threshold_between_prefixes() -> None:
    nets = [NET, ipaddress.ip_network("198.51.100.0/24")]
    rules = plan(Vector.UDP_FLOOD, nets=nets).rules
    assert [r.dst for r in rules] == nets and all(r.pps == 10_000 for r in rules)


def test_no_planned_rule_ever_limits_syns() -> None:
    shapes = [Classification(v, tcp_flags=f, proto=p, sport=s, icmp_type=s)
              for v, f, p, s in itertools.product(Vector, [None, 0x10, 0x12, 0x04, 0x01], [None, 6, 17], [None, 53])]
    for shape in shapes:
        for r in plan(shape.vector, shape, nets=[HOST4, HOST6], protocols=[6, 17]).rules:
            assert not limits_syns(r), (shape, r)


def test_rules_without_a_destination_are_not_planned() -> None:
    assert plan(Vector.UDP_FLOOD, nets=[]).why_none == "no destination prefix known for the target"


def test_monitor_rules() -> None:
    (r,) = plan_rules(Vector.UDP_FLOOD, Classification(Vector.UDP_FLOOD), [HOST4], 3, 1.0, float("inf"), True).rules
    assert r.monitor and r.bps == 0 and r.pps == 1


def test_passed_level() -> None:
    assert passed_level(100_000, 8e8, 99_000, 20_000, 1e9) == pytest.approx(0.05)
    assert passed_level(100_000, 8e8, 0, 20_000, 1e9) == 5.0
    assert passed_level(100, 8e9, 0, 20_000, 1e9) == 8.0, "bits count too"
    assert passed_level(0, 0, 0, 20_000, 1e9) == 0.0


def test_the_ladder_climbs_one_step_at_a_time_and_bans_follow_the_start() -> None:
    ladder = ("tighten", "rule", "ban")
    assert next_steps(ladder, [], contained=False, first=True) == ["tighten"]
    assert next_steps(ladder, ["tighten"], contained=True, first=False) == ["ban"]
    assert next_steps(ladder, ["tighten"], contained=False, first=False) == ["rule", "ban"]
    assert next_steps(ladder, ["tighten", "ban"], contained=True, first=False) == []
    assert next_steps(ladder, ["tighten", "ban"], contained=False, first=False) == ["rule"]
    assert next_steps(("rule",), [], contained=False, first=True) == ["rule"]
    assert next_steps((), [], contained=False, first=True) == []
    assert next_steps(("ban",), [], contained=True, first=True) == ["ban"]


def test_spoofed_floods_get_their_rule_with_the_first_step() -> None:
    ladder = ("tighten", "rule", "ban")
    # Per-source limits cannot contain forged sources: no tick is spent finding that out.
    assert next_steps(ladder, [], contained=False, first=True, spoofed=True) == ["tighten", "rule"]
    assert next_steps(ladder, [], contained=False, first=True, spoofed=False) == ["tighten"]
    assert next_steps(("rule", "ban"), [], contained=False, first=True, spoofed=True) == ["rule"]
