"""Guardrails, checked before anything is sent: what may never be announced.

Built once per policy. An announcement is refused when its destination is
shorter than the kind's ``shortest`` prefix, when it overlaps an allowlisted
or infrastructure prefix (or a BGP peer's own address: blackholing the
session's far end would cut the session that carries the withdrawal), or
when no peer negotiates its address family. The cap and the rate limit
depend on what is already announced; the manager checks them
(agent/upstream/manager.py).
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from agent.policy._upstream import Upstream
from agent.policy.model import Policy

from .announce import Announcement, IPNetwork

#: Refusal reasons: the ``reason`` label of floodguard_upstream_refused_total.
REASONS = ("allowlisted", "infrastructure", "too_short", "no_family", "cap", "rate_limited", "no_shape",
           "rtbh_not_allowed")


class _Overlap:
    """Does a prefix contain, or lie inside, any prefix of a fixed set? (sorted ranges, bisect)"""

    def __init__(self, nets: Iterable[IPNetwork]) -> None:
        self._by_version: dict[int, tuple[list[int], list[tuple[int, int]]]] = {}
        ranges: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for n in nets:
            ranges[n.version].append((int(n.network_address), int(n.broadcast_address)))
        for v, rs in ranges.items():
            rs.sort()
            # Merge overlapping ranges so that one bisect answers.
            merged: list[tuple[int, int]] = []
            for lo, hi in rs:
                if merged and lo <= merged[-1][1] + 1:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
                else:
                    merged.append((lo, hi))
            self._by_version[v] = ([lo for lo, _ in merged], merged)

    def hits(self, net: IPNetwork) -> bool:
        starts, merged = self._by_version[net.version]
        lo, hi = int(net.network_address), int(net.broadcast_address)
        i = bisect.bisect_right(starts, hi) - 1
        return i >= 0 and merged[i][1] >= lo


@dataclass(frozen=True)
class Refusal:
    reason: str
    detail: str


class Guard:
    """The policy's guardrails over one announcement at a time."""

    def __init__(self, policy: Policy) -> None:
        up = policy.upstream
        assert up is not None
        self._up: Upstream = up
        self._allow = _Overlap(e.network for e in policy.allow.prefixes)
        peers = [ipaddress.ip_network(p.address) for p in up.peers]
        peers += [ipaddress.ip_network(p.local_address) for p in up.peers if p.local_address]
        self._infra = _Overlap([*(e.network for e in policy.infrastructure.prefixes), *peers])
        self._families = {f for p in up.peers for f in p.families}

    def family(self, a: Announcement) -> str:
        v = "ipv4" if a.version == 4 else "ipv6"
        return f"{v}-flowspec" if a.kind == "flowspec" else f"{v}-unicast"

    def check(self, a: Announcement) -> Refusal | None:
        kind = self._up.flowspec if a.kind == "flowspec" else self._up.rtbh
        shortest = kind.shortest.ipv4 if a.version == 4 else kind.shortest.ipv6
        if a.dst.prefixlen < shortest:
            return Refusal("too_short", f"{a.dst} is shorter than upstream.{a.kind}.shortest (/{shortest})")
        if self._allow.hits(a.dst):
            return Refusal("allowlisted", f"{a.dst} overlaps the allowlist")
        if self._infra.hits(a.dst):
            return Refusal("infrastructure", f"{a.dst} overlaps infrastructure or a BGP peer's address")
        fam = self.family(a)
        if fam not in self._families:
            return Refusal("no_family", f"no peer negotiates {fam}")
        return None


__all__ = ["REASONS", "Guard", "Refusal"]
