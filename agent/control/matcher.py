"""Which prefixes cover, or fall inside, an address or a prefix.

The controller asks this of a few candidate sources per tick against sets
of up to hundreds of thousands of prefixes (allowlist, infrastructure, every
protected prefix): one hash lookup per prefix length in use answers "is it
covered", and a bisect over the sorted network addresses answers "does it
contain any". Built once per policy.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable

from agent.contract.keys import PrefixKey

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _bits(family: int) -> int:
    return 32 if family == 4 else 128


class PrefixMatcher:
    """A fixed set of prefixes, asked about addresses and prefixes."""

    def __init__(self, keys: Iterable[PrefixKey]) -> None:
        self._by_len: dict[int, dict[int, set[int]]] = {4: {}, 6: {}}
        starts: dict[int, list[int]] = {4: [], 6: []}
        self._size = 0
        for fam, addr, plen in keys:
            bits = _bits(fam)
            net = addr & ~((1 << (bits - plen)) - 1) if plen < bits else addr
            self._by_len[fam].setdefault(plen, set()).add(net)
            starts[fam].append(net)
            self._size += 1
        self._lengths = {fam: sorted(d, reverse=True) for fam, d in self._by_len.items()}
        self._starts = {fam: sorted(set(s)) for fam, s in starts.items()}

    def __len__(self) -> int:
        return self._size

    def longest(self, family: int, addr: int, max_len: int | None = None) -> PrefixKey | None:
        """The longest prefix covering addr (no longer than max_len), if any."""
        bits = _bits(family)
        for plen in self._lengths[family]:
            if max_len is not None and plen > max_len:
                continue
            net = addr & ~((1 << (bits - plen)) - 1) if plen < bits else addr
            if net in self._by_len[family][plen]:
                return (family, net, plen)
        return None

    def covers(self, addr: IPAddress) -> bool:
        return self.longest(addr.version, int(addr)) is not None

    def overlaps(self, net: IPNetwork) -> bool:
        """True if any prefix covers net or lies inside it."""
        fam, first, plen = net.version, int(net.network_address), net.prefixlen
        if self.longest(fam, first, plen) is not None:
            return True
        last = first | ((1 << (_bits(fam) - plen)) - 1)
        starts = self._starts[fam]
        i = bisect.bisect_left(starts, first)
        return i < len(starts) and starts[i] <= last
