"""What to enforce against an attack: tightened limits, rules, and the ladder between them.

Pure planning; `enforce.Enforcer` writes the result. The ladder of a group
is a subset of the `Step`s (tighten, rule, ban) in that order. The first step is armed
when the attack starts; a rule only when, a tick after the previous step,
what still gets through (offered minus dropped) is over the attack's
threshold — a rule acts on every packet of the attack's shape, so it comes
only when the lighter step did not suffice. Bans are armed a tick after the
start (see `next_steps`). Steps that cannot apply (a rule against a SYN
flood, bans against forged sources) are skipped at once.

Rules by vector:

* reflection, fragment and ICMP floods: **drop** the matching shape —
  legitimate traffic of that shape during such a flood is implausible
  (answers from UDP port 123 nobody asked for, non-first fragments,
  ICMP of the dominant type);
* UDP, non-SYN TCP and other-protocol floods: an **aggregate rate limit** at
  the attack's start threshold, so traffic up to the normal level passes;
* SYN floods: **no rule at all**. An aggregate limit on SYNs drops
  legitimate SYNs in proportion to the flood; SYN floods get per-source
  tightening and SYN authentication instead. `limits_syns` checks every
  rule against this before it is written.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agent.contract.abi import RuleAction
from agent.contract.specs import ClassLimit, RuleSpec
from agent.policy.model import Step

from .samples import TCP_KIND_MASK
from .vectors import TCP_ACK, TCP_SYN, Classification, Vector

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6 = 1, 6, 17, 58
#: ICMPv6 types below Neighbor Discovery (133-137): an ICMPv6 drop rule never breaks NDP.
ICMPV6_BELOW_NDP = 132
#: At most this many prefixes get rules for one carpet-bombing attack (rules are few: 64 in all).
MAX_CARPET_PREFIXES = 4


def tightened(limits: Sequence[ClassLimit], factor: float, classes: Iterable[int]) -> tuple[ClassLimit, ...]:
    """The group's per-source limits with the attacked classes scaled by factor, the rest unchanged."""
    hit = set(classes)
    out = []
    for i, lim in enumerate(limits):
        if i in hit:
            out.append(
                ClassLimit(
                    pps=max(1, math.floor(lim.pps * factor)) if lim.pps else 0,
                    bps=max(8, math.floor(lim.bps * factor)) if lim.bps else 0,
                    burst=max(1, math.floor(lim.burst * factor)) if lim.burst else 0,
                )
            )
        else:
            out.append(lim)
    return tuple(out)


def limits_syns(rule: RuleSpec) -> bool:
    """Could this rule aggregate-limit or drop TCP SYNs (SYN set, ACK clear)?"""
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


def plan_rules(
    flood: Vector,
    shape: Classification,
    nets: Sequence[IPNetwork],
    gid: int,
    threshold_pps: float,
    threshold_bps: float,
    monitor: bool,
    protocols: Sequence[int] = (),
    spoofed: bool = False,
) -> RulePlan:
    """Rules matching one attack's traffic towards ``nets`` (its host, or its group's prefixes).

    ``protocols``: the most sampled IP protocols, for fragment and other-protocol floods.
    ``spoofed``: forged sources to random ephemeral ports are dropped, not
    limited: no legitimate client of a protected server looks like that, and
    a limit at the detection threshold still lets an attack-sized flood in.
    """
    if flood is Vector.SYN_FLOOD:
        return RulePlan((), "syn floods get no aggregate rule: per-source limits and SYN authentication instead")
    if not nets:
        return RulePlan((), "no destination prefix known for the target")
    share = max(len(nets), 1)
    pps = max(1, int(threshold_pps / share))
    bps = int(threshold_bps / share) if math.isfinite(threshold_bps) else 0
    out: list[RuleSpec] = []

    def add(
        net: IPNetwork,
        proto: int,
        action: RuleAction,
        sport: tuple[int, int] = (0, 65535),
        dport: tuple[int, int] = (0, 65535),
        flags: tuple[int, int] = (0, 0),
    ) -> None:
        limited = action is RuleAction.RATE_LIMIT
        out.append(
            RuleSpec(
                dst=net,
                proto=proto,
                sport=sport,
                dport=dport,
                tcp_flags_mask=flags[0],
                tcp_flags_value=flags[1],
                action=action,
                pps=pps if limited else 0,
                bps=bps if limited else 0,
                monitor=monitor,
                group=gid,
            )
        )

    for net in nets:
        if flood is Vector.UDP_REFLECTION and shape.sport is not None:
            add(net, IPPROTO_UDP, RuleAction.DROP, sport=(shape.sport, shape.sport))
        elif flood is Vector.FRAGMENT_FLOOD:
            # Non-first fragments have no ports (0); first fragments and whole packets do.
            protos = [shape.proto] if shape.proto is not None else [p for p in protocols[:2] if p]
            for p in protos:
                # Later fragments carry no TCP flags either; excluding SYN keeps the rule provably SYN-free.
                flags = (TCP_SYN, 0) if p == IPPROTO_TCP else (0, 0)
                add(net, p, RuleAction.DROP, sport=(0, 0), dport=(0, 0), flags=flags)
        elif flood is Vector.ICMP_FLOOD:
            proto = IPPROTO_ICMP if net.version == 4 else IPPROTO_ICMPV6
            if shape.icmp_type is not None and not (net.version == 6 and 133 <= shape.icmp_type <= 137):
                add(net, proto, RuleAction.DROP, sport=(shape.icmp_type, shape.icmp_type))
            else:
                add(net, proto, RuleAction.DROP, sport=(0, 255 if net.version == 4 else ICMPV6_BELOW_NDP))
        elif flood in (Vector.UDP_FLOOD, Vector.UDP_REFLECTION):
            dport = (shape.dport, shape.dport) if shape.dport is not None else shape.dport_range or (0, 65535)
            drop = spoofed and shape.dport is None and shape.dport_range is not None
            add(net, IPPROTO_UDP, RuleAction.DROP if drop else RuleAction.RATE_LIMIT, dport=dport)
        elif flood is Vector.TCP_OTHER_FLOOD:
            # TCP-other samples never carry SYN without ACK, so the dominant
            # flags are safe to match; without one, match everything but SYNs.
            flags = (TCP_KIND_MASK, shape.tcp_flags) if shape.tcp_flags is not None else (TCP_SYN, 0)
            add(net, IPPROTO_TCP, RuleAction.RATE_LIMIT, flags=flags)
        elif flood is Vector.OTHER:
            protos = [shape.proto] if shape.proto is not None else []
            if not protos:
                return RulePlan((), "mixed protocols: no single protocol to limit")
            add(net, protos[0], RuleAction.RATE_LIMIT)
    safe = tuple(r for r in out if not limits_syns(r))
    if not safe:
        return RulePlan((), "no rule matches this flood without also matching SYNs")
    return RulePlan(safe)


def passed_level(
    pps: float, bps: float, dropped_pps: float, threshold_pps: float, threshold_bps: float
) -> float:
    """How far what still gets through is over the attack's thresholds (> 1: not contained)."""
    passed = max(pps - dropped_pps, 0.0)
    share = passed / pps if pps > 0 else 0.0
    return max(passed / max(threshold_pps, 1.0), bps * share / max(threshold_bps, 1.0))


def next_steps(
    ladder: Sequence[Step], armed: Sequence[Step], contained: bool, first: bool, spoofed: bool = False
) -> list[Step]:
    """Steps to arm now.

    The first step at the start. Later, one more each tick while what passes
    is still over the threshold — except bans, which are armed a tick after
    the start whatever the containment: they only ever hit sources that are
    persistently far above their own limit and not spoofed, whereas a rule
    acts on every packet of the attack's shape, legitimate ones included.
    When the sources look spoofed, per-source limits cannot contain the
    flood (every packet comes from a new source): the rule is armed with the
    first step instead of a tick later.
    """
    remaining = [s for s in ladder if s not in armed]
    if not remaining:
        return []
    if first:
        out = [remaining[0]]
        if spoofed and out[0] == Step.TIGHTEN and Step.RULE in remaining:
            out.append(Step.RULE)
        return out
    out = [] if contained else [remaining[0]]
    if Step.BAN in remaining and Step.BAN not in out:
        out.append(Step.BAN)
    return out
