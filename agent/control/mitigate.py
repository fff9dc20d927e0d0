"""The shape rules a verdict calls for, and the checks every rule passes before it is written.

Pure planning; `enforce.Enforcer` writes the result, `ladder` decides when.
The judge (`judge`) has already chosen between dropping the shape (absent
from the group's learned profile: collateral nil by construction) and an
aggregate limit at the shape's learned normal rate with headroom. Here the
shape becomes rules:

* reflection: the abused source port; fragments: non-first fragments of the
  dominant protocol (no ports), never matching a SYN; ICMP: the dominant
  type, never Neighbor Discovery; UDP: the destination port or the
  ephemeral range it floods; other TCP: its destination port and flags —
  never every ACK to a host, which established connections share; other
  protocols: the protocol;
* SYN floods: **no rule at all**. An aggregate limit on SYNs drops
  legitimate SYNs in proportion to the flood; SYN floods get SYN
  authentication, or per-source limits when a few real sources send them.
  `limits_syns` checks every rule against this before it is written.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from agent.contract.abi import RuleAction, TrafficClass
from agent.contract.specs import RuleSpec

from .samples import TCP_KIND_MASK
from .vectors import TCP_ACK, TCP_SYN, Classification, Vector

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6 = 1, 6, 17, 58
#: ICMPv6 types below Neighbor Discovery (133-137): an ICMPv6 drop rule never breaks NDP.
ICMPV6_BELOW_NDP = 132
#: At most this many prefixes get rules for one carpet-bombing attack (rules are few: 64 in all).
MAX_CARPET_PREFIXES = 4


def limits_syns(rule: RuleSpec) -> bool:
    """Could this rule aggregate-limit or drop TCP SYNs (SYN set, ACK clear)?

    A per-source limit (SOURCE_LIMIT) never does: each source keeps its own
    budget, so one source's flood costs nobody else a SYN."""
    if rule.action == RuleAction.SOURCE_LIMIT:
        return False
    if rule.traffic_class is not None and rule.traffic_class != TrafficClass.TCP_SYN:
        return False
    if rule.proto not in (0, IPPROTO_TCP):
        return False
    mask, value = rule.tcp_flags_mask, rule.tcp_flags_value
    excludes_syn = bool(mask & TCP_SYN) and not value & TCP_SYN
    needs_ack = bool(mask & TCP_ACK) and bool(value & TCP_ACK)
    return not (excludes_syn or needs_ack)


@dataclass(frozen=True)
class RulePlan:
    """The rules one attack wants (expiry and id are stamped when written)."""

    rules: tuple[RuleSpec, ...]
    why_none: str | None = None  # when rules is empty: why


def plan_rules(  # noqa: PLR0912 — one branch per vector, read as the table in the module docstring
    flood: Vector,
    shape: Classification,
    nets: Sequence[IPNetwork],
    gid: int,
    limit_pps: int,
    monitor: bool,
    protocols: Sequence[int] = (),
) -> RulePlan:
    """Rules matching one attack's shape towards ``nets`` (its host, or its group's prefixes).

    ``limit_pps`` 0: drop the shape (the judge found it absent from the
    group's learned profile); otherwise one aggregate limit of that rate,
    shared by the rules of every prefix (the judge set it from the shape's
    learned normal rate with headroom). ``protocols``: the most sampled IP
    protocols, for fragment and other-protocol floods. Never a rule that
    could match SYNs: SYN floods get SYN authentication.
    """
    if flood is Vector.SYN_FLOOD:
        return RulePlan((), "syn floods get no aggregate rule: SYN authentication or per-source limits instead")
    if not nets:
        return RulePlan((), "no destination prefix known for the target")
    per_net = max(1, limit_pps // max(len(nets), 1)) if limit_pps else 0
    action = RuleAction.RATE_LIMIT if limit_pps else RuleAction.DROP
    out: list[RuleSpec] = []

    def add(
        net: IPNetwork,
        proto: int,
        sport: tuple[int, int] = (0, 65535),
        dport: tuple[int, int] = (0, 65535),
        flags: tuple[int, int] = (0, 0),
    ) -> None:
        out.append(
            RuleSpec(
                dst=net,
                proto=proto,
                sport=sport,
                dport=dport,
                tcp_flags_mask=flags[0],
                tcp_flags_value=flags[1],
                action=action,
                pps=per_net,
                burst=max(1, per_net // 5) if per_net else 0,
                monitor=monitor,
                group=gid,
            )
        )

    for net in nets:
        if flood is Vector.UDP_REFLECTION and shape.sport is not None:
            add(net, IPPROTO_UDP, sport=(shape.sport, shape.sport))
        elif flood is Vector.FRAGMENT_FLOOD:
            # Non-first fragments have no ports (0); first fragments and whole packets do.
            protos = [shape.proto] if shape.proto is not None else [p for p in protocols[:2] if p]
            for p in protos:
                # Later fragments carry no TCP flags either; excluding SYN keeps the rule provably SYN-free.
                flags = (TCP_SYN, 0) if p == IPPROTO_TCP else (0, 0)
                add(net, p, sport=(0, 0), dport=(0, 0), flags=flags)
        elif flood is Vector.ICMP_FLOOD:
            proto = IPPROTO_ICMP if net.version == 4 else IPPROTO_ICMPV6
            if shape.icmp_type is not None and (net.version == 4 or shape.icmp_type <= ICMPV6_BELOW_NDP):
                add(net, proto, sport=(shape.icmp_type, shape.icmp_type))
            else:
                add(net, proto, sport=(0, 255 if net.version == 4 else ICMPV6_BELOW_NDP))
        elif flood in (Vector.UDP_FLOOD, Vector.UDP_REFLECTION):
            if shape.dport is not None:
                add(net, IPPROTO_UDP, dport=(shape.dport, shape.dport))
            elif shape.dport_range is not None:
                add(net, IPPROTO_UDP, dport=shape.dport_range)
            elif limit_pps:
                add(net, IPPROTO_UDP)
            else:
                return RulePlan((), "no single UDP shape to drop without dropping every UDP packet to the target")
        elif flood is Vector.TCP_OTHER_FLOOD:
            if shape.dport is None:
                return RulePlan((), "never a rule on every ACK to a host: established connections share it")
            # TCP-other samples never carry SYN without ACK, so the dominant flags are safe to match.
            flags = (TCP_KIND_MASK, shape.tcp_flags) if shape.tcp_flags is not None else (TCP_SYN, 0)
            add(net, IPPROTO_TCP, dport=(shape.dport, shape.dport), flags=flags)
        elif flood is Vector.OTHER:
            protos = [shape.proto] if shape.proto is not None else []
            if not protos:
                return RulePlan((), "mixed protocols: no single protocol to match")
            add(net, protos[0])
    safe = tuple(r for r in out if not limits_syns(r))
    if not safe:
        return RulePlan((), "no rule matches this flood without also matching SYNs")
    return RulePlan(safe)
