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

import ipaddress
from collections import Counter
from collections.abc import Mapping
from heapq import heapify, heappop, heappush, nlargest

from agent.contract.clock import NS
from agent.contract.keys import IPAddress, IPNetwork
from agent.policy.model import Mitigation

from .settings import Settings

#: Offenders not banned again for this long start over at ban_ttl.
OFFENDER_MEMORY_S = 7 * 86400
#: The repeat-offender table never holds more than this many prefixes.
MAX_OFFENDERS = 100_000
#: Stale heap entries tolerated beyond as many as there are live ones.
_SLACK = 1024


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
    """The automatic bans in force and the repeat-offender memory.

    Expiries and last-ban times are kept in heaps as well, so that a tick
    looks only at what is due: thousands of bans in force cost nothing until
    one runs out. Heap entries made stale by a re-ban or an unban are skipped
    when they come up, and the heaps are rebuilt once stale entries outnumber
    the live ones.
    """

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        self.counts: dict[str, int] = dict(counts or {})
        self._last_ns: dict[str, int] = {}
        # Offenders loaded from the state file: their week starts at the first forget_old.
        self._unclocked: set[str] = set(self.counts)
        self._seen: list[tuple[int, str]] = []  # heap of (last banned, prefix text)
        self._active: dict[IPNetwork, tuple[int, int]] = {}  # prefix -> (expires, gid)
        self._expiry: list[tuple[int, str, IPNetwork]] = []
        self._per_group: Counter[int] = Counter()
        self.total = 0

    @property
    def active(self) -> Mapping[IPNetwork, tuple[int, int]]:
        """prefix -> (expires, gid) of every automatic ban in force."""
        return self._active

    def load(self, net: IPNetwork, expires_ns: int, gid: int = 0) -> None:
        """A ban found in the kernel at start: it counts towards max_bans until it runs out (0: never)."""
        self._set(net, expires_ns, gid)

    def prune(self, now_ns: int) -> None:
        """Forget bans that ran out (the kernel stopped enforcing them on its own)."""
        heap = self._expiry
        while heap and heap[0][0] <= now_ns:
            exp, _, net = heappop(heap)
            cur = self._active.get(net)
            if cur is not None and cur[0] == exp:
                self._drop(net)

    def is_banned(self, net: IPNetwork) -> bool:
        return net in self._active

    def count(self, gid: int | None = None) -> int:
        if gid is None:
            return len(self._active)
        return self._per_group[gid]

    def ttl_s(self, net: IPNetwork, m: Mitigation) -> tuple[float, int]:
        """(ban length, previous bans) for this prefix."""
        n = self.counts.get(str(net), 0)
        return min(m.ban_ttl * m.ban_escalation**n, m.ban_ttl_max), n

    def add(self, net: IPNetwork, gid: int, expires_ns: int, now_ns: int) -> None:
        key = str(net)
        self._set(net, expires_ns, gid)
        self.counts[key] = self.counts.get(key, 0) + 1
        self._last_ns[key] = now_ns
        self._push_seen(now_ns, key)
        self.total += 1
        if len(self.counts) > MAX_OFFENDERS:
            self._shrink(now_ns)

    def remove(self, net: IPNetwork) -> None:
        if net in self._active:
            self._drop(net)

    def forget_old(self, now_ns: int) -> None:
        """Drop offenders not banned for OFFENDER_MEMORY_S (those loaded at start count from then)."""
        for key in self._unclocked:
            if key in self.counts and key not in self._last_ns:
                self._last_ns[key] = now_ns
                self._push_seen(now_ns, key)
        self._unclocked.clear()
        limit = now_ns - OFFENDER_MEMORY_S * NS
        heap = self._seen
        while heap and heap[0][0] < limit:
            last, key = heappop(heap)
            if self._last_ns.get(key) == last:
                del self.counts[key]
                del self._last_ns[key]

    def _set(self, net: IPNetwork, expires_ns: int, gid: int) -> None:
        old = self._active.get(net)
        if old is not None:
            self._per_group[old[1]] -= 1
        self._active[net] = (expires_ns, gid)
        self._per_group[gid] += 1
        if not expires_ns:
            return  # never expires (only a ban found in the kernel can be like that)
        heappush(self._expiry, (expires_ns, str(net), net))
        if len(self._expiry) > 2 * len(self._active) + _SLACK:
            self._expiry = [(e, str(n), n) for n, (e, _g) in self._active.items() if e]
            heapify(self._expiry)

    def _drop(self, net: IPNetwork) -> None:
        _exp, gid = self._active.pop(net)
        self._per_group[gid] -= 1
        if not self._per_group[gid]:
            del self._per_group[gid]

    def _push_seen(self, at_ns: int, key: str) -> None:
        heappush(self._seen, (at_ns, key))
        if len(self._seen) > 2 * len(self._last_ns) + _SLACK:
            self._rebuild_seen()

    def _rebuild_seen(self) -> None:
        self._seen = [(t, k) for k, t in self._last_ns.items()]
        heapify(self._seen)

    def _shrink(self, now_ns: int) -> None:
        keep = nlargest(
            MAX_OFFENDERS // 2, self.counts, key=lambda k: (self._last_ns.get(k, now_ns), self.counts[k])
        )
        self.counts = {k: self.counts[k] for k in keep}
        self._last_ns = {k: self._last_ns.get(k, now_ns) for k in keep}
        self._unclocked.clear()
        self._rebuild_seen()
