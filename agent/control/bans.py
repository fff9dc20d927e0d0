"""Automatic bans: who may be banned, for how long, and how many at once.

A ban is the heaviest step: it drops everything from a source for minutes
to hours. So it is refused for any prefix that overlaps the allowlist,
configured infrastructure (routers, resolvers, peers) or any protected
prefix (our own assets: a spoofed "source" inside them is a forgery meant
to make us cut ourselves off). Repeat offenders are banned for longer —
``ban_ttl * ban_escalation ** previous_bans``, at most ``ban_ttl_max`` —
and the number of automatic bans is capped per group and in total.

The repeat-offender counts are the daemon's to persist (``counts``,
prefix text -> bans so far); offenders not banned for a week are forgotten.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections.abc import Mapping

from agent.contract.clock import NS
from agent.contract.keys import IPAddress, IPNetwork
from agent.policy.model import Mitigation

from .settings import Settings

#: Offenders not banned again for this long start over at ban_ttl.
OFFENDER_MEMORY_S = 7 * 86400
#: The repeat-offender table never holds more than this many prefixes.
MAX_OFFENDERS = 100_000


def ban_prefix(src: IPAddress, ipv6_len: int) -> IPNetwork:
    """The prefix banned for one source: the address, or its IPv6 bucket prefix
    (a host rotating through its /64 is one source to the per-source limits too)."""
    if src.version == 4:
        return ipaddress.IPv4Network((int(src), 32))
    return ipaddress.IPv6Network((int(src), ipv6_len), strict=False)


def why_not_ban(net: IPNetwork, settings: Settings) -> str | None:
    """The reason this prefix must never be banned automatically, or None."""
    if settings.allow.overlaps(net):
        return "allowlisted"
    if settings.infrastructure.overlaps(net):
        return "infrastructure"
    if settings.protected.overlaps(net):
        return "protected asset"
    return None


class BanBook:
    """The automatic bans in force and the repeat-offender memory."""

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        self.counts: dict[str, int] = dict(counts or {})
        self._last_ns: dict[str, int] = {}
        self.active: dict[IPNetwork, tuple[int, int]] = {}  # prefix -> (expires, gid)
        self._expiry: list[tuple[int, str, IPNetwork]] = []
        self.total = 0

    def prune(self, now_ns: int) -> None:
        """Forget bans that ran out (the kernel stopped enforcing them on its own)."""
        while self._expiry and self._expiry[0][0] <= now_ns:
            exp, _, net = heapq.heappop(self._expiry)
            cur = self.active.get(net)
            if cur is not None and cur[0] == exp:
                del self.active[net]

    def is_banned(self, net: IPNetwork) -> bool:
        return net in self.active

    def count(self, gid: int | None = None) -> int:
        if gid is None:
            return len(self.active)
        return sum(1 for _, g in self.active.values() if g == gid)

    def ttl_s(self, net: IPNetwork, m: Mitigation) -> tuple[float, int]:
        """(ban length, previous bans) for this prefix."""
        n = self.counts.get(str(net), 0)
        return min(m.ban_ttl * m.ban_escalation**n, m.ban_ttl_max), n

    def add(self, net: IPNetwork, gid: int, expires_ns: int, now_ns: int) -> None:
        key = str(net)
        self.active[net] = (expires_ns, gid)
        heapq.heappush(self._expiry, (expires_ns, key, net))
        self.counts[key] = self.counts.get(key, 0) + 1
        self._last_ns[key] = now_ns
        self.total += 1
        if len(self.counts) > MAX_OFFENDERS:
            self._shrink(now_ns)

    def remove(self, net: IPNetwork) -> None:
        self.active.pop(net, None)

    def forget_old(self, now_ns: int) -> None:
        """Drop offenders not banned for OFFENDER_MEMORY_S (those loaded at start count from then)."""
        limit = now_ns - OFFENDER_MEMORY_S * NS
        for key in list(self.counts):
            last = self._last_ns.setdefault(key, now_ns)
            if last < limit:
                del self.counts[key]
                del self._last_ns[key]

    def _shrink(self, now_ns: int) -> None:
        keep = heapq.nlargest(
            MAX_OFFENDERS // 2, self.counts, key=lambda k: (self._last_ns.get(k, now_ns), self.counts[k])
        )
        self.counts = {k: self.counts[k] for k in keep}
        self._last_ns = {k: self._last_ns.get(k, now_ns) for k in keep}
