"""Writes the wanted mitigations to the port — only what changed, and refreshes expiries.

Everything written carries an expiry of now + the group's ``ttl``. While an
attack lasts the expiry is pushed forward once half of it has passed, so
the kernel sees a write every ttl/2 rather than every tick, and if the
daemon dies nothing outlives the ttl. Removing is explicit when an attack
ends (the expiry is only the safety net).

Rule order matters: the program applies the first matching rule only.
Drops come before rate limits, and longer prefixes before shorter ones, so
a host's drop rule is not hidden behind its group's aggregate limit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.contract.abi import MAX_RULES, Origin, RuleAction
from agent.contract.clock import NS
from agent.contract.specs import RuleSpec

from .mitigate import limits_syns
from .port import ControlPort


@dataclass
class Wanted:
    """What the active attacks want enforced this tick."""

    syn_auth: dict[int, float] = field(default_factory=dict)  # gid -> ttl
    rules: list[tuple[str, RuleSpec, float]] = field(default_factory=list)  # (attack id, rule, ttl), by priority


@dataclass
class Changes:
    """What this tick wrote, for the log and the attack records."""

    syn_on: list[int] = field(default_factory=list)
    syn_off: list[int] = field(default_factory=list)
    rules_added: list[tuple[str, RuleSpec]] = field(default_factory=list)
    rules_removed: list[tuple[str, RuleSpec]] = field(default_factory=list)
    rules_refused: list[tuple[str, RuleSpec, str]] = field(default_factory=list)  # (attack, rule, why)


def _match(rule: RuleSpec) -> RuleSpec:
    """A rule without its expiry and id: what makes it the same rule across ticks."""
    return dataclasses.replace(rule, expires_ns=0, rule_id=0)


def _order(rule: RuleSpec) -> tuple[int, int]:
    """Drops first, then aggregate limits, then per-source limits (a SOURCE_LIMIT match ends the scan)."""
    rank = {RuleAction.DROP: 0, RuleAction.RATE_LIMIT: 1, RuleAction.SOURCE_LIMIT: 2}[rule.action]
    return (rank, -rule.dst.prefixlen)


class Enforcer:
    """The controller's record of what it has written, and the diff to what it wants."""

    def __init__(self, port: ControlPort, max_rules: int = MAX_RULES) -> None:
        self.port = port
        self.max_rules = max_rules
        self.syn_auth: dict[int, int] = {}  # gid -> expires
        self.rules: dict[tuple[str, RuleSpec], RuleSpec] = {}  # (attack id, match) -> written rule
        self._next_rule_id = 1

    def source_limited(self) -> set[int]:
        """The groups with a per-source limit in force (a SOURCE_LIMIT rule of an attack)."""
        return {r.group for r in self.rules.values() if r.action == RuleAction.SOURCE_LIMIT}

    def apply(self, now_ns: int, wanted: Wanted) -> Changes:
        ch = Changes()
        self._groups(now_ns, wanted, ch)
        self._rules(now_ns, wanted, ch)
        return ch

    def _groups(self, now_ns: int, wanted: Wanted, ch: Changes) -> None:
        for gid, ttl in wanted.syn_auth.items():
            had = self.syn_auth.get(gid)
            if had is None or _due(had, now_ns, ttl):
                exp = now_ns + int(ttl * NS)
                self.port.set_syn_auth(gid, exp)
                if had is None:
                    ch.syn_on.append(gid)
                self.syn_auth[gid] = exp
        for gid in [g for g in self.syn_auth if g not in wanted.syn_auth]:
            self.port.set_syn_auth(gid, None)
            del self.syn_auth[gid]
            ch.syn_off.append(gid)

    def _rules(self, now_ns: int, wanted: Wanted, ch: Changes) -> None:
        chosen: list[tuple[str, RuleSpec, RuleSpec, float]] = []  # (attack, match, rule, ttl)
        seen: set[tuple[str, RuleSpec]] = set()
        for aid, rule, ttl in wanted.rules:
            if limits_syns(rule):
                ch.rules_refused.append((aid, rule, "would limit SYNs"))
                continue
            key = (aid, _match(rule))
            if key in seen:
                continue
            if len(chosen) >= self.max_rules:
                ch.rules_refused.append((aid, rule, f"rule table full ({self.max_rules})"))
                continue
            seen.add(key)
            chosen.append((aid, key[1], rule, ttl))
        refresh = any(
            (aid, m) not in self.rules or _due(self.rules[(aid, m)].expires_ns, now_ns, ttl)
            for aid, m, _r, ttl in chosen
        )
        gone = [k for k in self.rules if k not in seen]
        if not refresh and not gone:
            return
        new: dict[tuple[str, RuleSpec], RuleSpec] = {}
        for aid, m, rule, ttl in chosen:
            old = self.rules.get((aid, m))
            rid = old.rule_id if old is not None else self._take_id()
            new[(aid, m)] = dataclasses.replace(
                rule, expires_ns=now_ns + int(ttl * NS), rule_id=rid, origin=Origin.AUTO
            )
            if old is None:
                ch.rules_added.append((aid, new[(aid, m)]))
        for k in gone:
            ch.rules_removed.append((k[0], self.rules[k]))
        self.rules = new
        self.port.set_auto_rules(sorted(new.values(), key=_order))

    def remap(self, moves: dict[int, int]) -> None:
        """Group ids changed on a reload (old -> new): follow what was written under the old ids.

        The policy apply kept each id's SYN authentication in the kernel, but an
        old id may now be another group's: lift it there, and let the next apply
        write it again under the new id (expiry 0 = due). Rules carry their own
        group id and are rewritten from the attacks, which follow their group."""
        for g in [g for g in self.syn_auth if moves.get(g, g) != g]:
            self.port.set_syn_auth(g, None)
        self.syn_auth = {moves[g]: 0 for g in self.syn_auth if g in moves}

    def _take_id(self) -> int:
        rid = self._next_rule_id
        self._next_rule_id = rid % 0xFFFF_FFFF + 1
        return rid

    def written_rules(self) -> Sequence[RuleSpec]:
        return sorted(self.rules.values(), key=_order)


def _due(expires_ns: int, now_ns: int, ttl: float) -> bool:
    """Refresh once half of the ttl has run out (also when the ttl itself got shorter)."""
    left = expires_ns - now_ns
    return left < ttl * NS / 2 or left > ttl * NS
