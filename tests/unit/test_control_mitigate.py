"""agent/control/mitigate.py: the rules each vector's shape becomes, and that none ever limits SYNs."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from agent.contract.abi import RuleAction, TrafficClass
from agent.contract.specs import RuleSpec
from agent.control.mitigate import limits_syns, plan_rules
from agent.control.vectors import Classification, Vector

HOST4 = ipaddress.ip_network("203.0.113.5/32")
HOST6 = ipaddress.ip_network("2001:db8:5::5/128")
NET = ipaddress.ip_network("203.0.113.0/24")


def plan(vector: Vector, shape: Classification | None = None, nets=(HOST4,), limit: int = 0, **kw):  # type: ignore[no-untyped-def]
    """``limit`` 0: the judge found the shape absent from the profile (drop); else its aggregate limit."""
    return plan_rules(vector, shape or Classification(vector), list(nets), 3, limit, False, **kw)


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


def test_per_source_limits_and_rules_of_another_class_never_limit_syns_in_aggregate() -> None:
    per_source = RuleSpec(dst=HOST4, action=RuleAction.SOURCE_LIMIT, pps=100, traffic_class=TrafficClass.TCP_SYN)
    udp_only = RuleSpec(dst=HOST4, action=RuleAction.DROP, traffic_class=TrafficClass.UDP)
    syn_class = RuleSpec(dst=HOST4, action=RuleAction.DROP, traffic_class=TrafficClass.TCP_SYN)
    assert not limits_syns(per_source) and not limits_syns(udp_only) and limits_syns(syn_class)


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


def test_a_shape_the_group_has_gets_an_aggregate_limit_at_the_judges_rate() -> None:
    (u,) = plan(Vector.UDP_FLOOD, Classification(Vector.UDP_FLOOD, dport=27015), limit=3000).rules
    assert (u.proto, u.dport, u.action, u.pps) == (17, (27015, 27015), RuleAction.RATE_LIMIT, 3000)
    (dropped,) = plan(Vector.UDP_FLOOD, Classification(Vector.UDP_FLOOD, dport=27015)).rules
    assert dropped.action is RuleAction.DROP
    (t,) = plan(Vector.TCP_OTHER_FLOOD, Classification(Vector.TCP_OTHER_FLOOD, tcp_flags=0x10, dport=8443)).rules
    assert (t.proto, t.dport, t.tcp_flags_mask, t.tcp_flags_value) == (6, (8443, 8443), 0x17, 0x10)
    (gre,) = plan(Vector.OTHER, Classification(Vector.OTHER, proto=47), limit=500).rules
    assert gre.proto == 47 and gre.action is RuleAction.RATE_LIMIT
    assert plan(Vector.OTHER).rules == ()


def test_never_a_rule_on_every_ack_to_a_host_nor_on_every_udp_packet_to_it() -> None:
    ack_flood = plan(Vector.TCP_OTHER_FLOOD, Classification(Vector.TCP_OTHER_FLOOD, tcp_flags=0x10))
    assert ack_flood.rules == () and "ACK" in (ack_flood.why_none or "")
    assert plan(Vector.UDP_FLOOD).rules == (), "no shape to drop: dropping all UDP to the host is not a shape"


def test_carpet_rules_share_the_limit_between_prefixes() -> None:
    nets = [NET, ipaddress.ip_network("198.51.100.0/24")]
    rules = plan(Vector.UDP_FLOOD, Classification(Vector.UDP_FLOOD, dport=9), nets=nets, limit=20_000).rules
    assert [r.dst for r in rules] == nets and all(r.pps == 10_000 for r in rules)


def test_no_planned_rule_ever_limits_syns() -> None:
    shapes = [Classification(v, tcp_flags=f, proto=p, sport=s, icmp_type=s)
              for v, f, p, s in itertools.product(Vector, [None, 0x10, 0x12, 0x04, 0x01], [None, 6, 17], [None, 53])]
    for shape in shapes:
        for limit in (0, 1000):
            for r in plan(shape.vector, shape, nets=[HOST4, HOST6], limit=limit, protocols=[6, 17]).rules:
                assert not limits_syns(r), (shape, r)


def test_rules_without_a_destination_are_not_planned() -> None:
    assert plan(Vector.UDP_FLOOD, nets=[]).why_none == "no destination prefix known for the target"


def test_monitor_rules() -> None:
    (r,) = plan_rules(Vector.UDP_FLOOD, Classification(Vector.UDP_FLOOD, dport=9), [HOST4], 3, 1, True).rules
    assert r.monitor and r.bps == 0 and r.pps == 1
