"""Prefix keys, records and the address codec shared by everything that names an address.

The program stores addresses as four u32 words in network byte order (IPv4
in word 0); ctypes and numpy read each word little-endian. This module is
the one place that converts between those words and Python integers, so that
every map reader decodes an address the same way.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: (family 4|6, network as int, prefix length)
PrefixKey = tuple[int, int, int]
#: One origin's record about one prefix: (expires_ns, created_ns, flags, reason_id).
Record = tuple[int, int, int, int]
Words = tuple[int, int, int, int]


def bits(family: int) -> int:
    return 32 if family == 4 else 128


def prefix_key(net: IPNetwork) -> PrefixKey:
    return (net.version, int(net.network_address), net.prefixlen)


def key_network(key: PrefixKey) -> IPNetwork:
    fam, addr, plen = key
    if fam == 4:
        return ipaddress.IPv4Network((addr, plen))
    return ipaddress.IPv6Network((addr, plen))


def address_of(family: int, value: int) -> IPAddress:
    """The ``ipaddress`` object of a (family, int) pair."""
    return ipaddress.IPv4Address(value) if family == 4 else ipaddress.IPv6Address(value)


def covers(key: PrefixKey, addr: IPAddress) -> bool:
    """Whether the prefix ``key`` contains ``addr``."""
    fam, net, plen = key
    if fam != addr.version:
        return False
    shift = bits(fam) - plen
    return plen == 0 or (int(addr) >> shift) == (net >> shift)


def words(family: int, addr: int) -> Words:
    """An address as the program's 4 x u32 in network order, each read as a little-endian word."""
    raw = addr.to_bytes(4 if family == 4 else 16, "big").ljust(16, b"\0")
    return (
        int.from_bytes(raw[0:4], "little"),
        int.from_bytes(raw[4:8], "little"),
        int.from_bytes(raw[8:12], "little"),
        int.from_bytes(raw[12:16], "little"),
    )


def from_words(family: int, value: Sequence[int]) -> int:
    """The address (as an int) that the program's four words hold; the inverse of :func:`words`."""
    raw = b"".join(int(w).to_bytes(4, "little") for w in value)
    return int.from_bytes(raw[:4] if family == 4 else raw, "big")


def address_from_words(family: int, value: Sequence[int]) -> IPAddress:
    return address_of(family, from_words(family, value))


def mask_words(family: int, prefixlen: int) -> Words:
    """The network mask of a prefix length, as words."""
    b = bits(family)
    m = ((1 << prefixlen) - 1) << (b - prefixlen) if prefixlen else 0
    return words(family, m)


#: A 16-byte address as two big-endian 64-bit halves, for reading arrays of keys in bulk.
HALVES_DTYPE = [("hi", ">u8"), ("lo", ">u8")]


def halves(family: NDArray[np.uint8], hi: NDArray[np.uint64], lo: NDArray[np.uint64]
           ) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """Addresses read in bulk as (high, low) halves (:data:`HALVES_DTYPE`), IPv4 normalised.

    IPv4 sits in the first 4 bytes of the 16, the top of ``hi``; it comes back
    as high 0 and low the address, so that ``address_of(4, (hi << 64) | lo)``
    holds for both families.
    """
    v4 = np.asarray(family) == 4
    hi = np.asarray(hi, dtype=np.uint64)
    lo = np.asarray(lo, dtype=np.uint64)
    return np.where(v4, np.uint64(0), hi), np.where(v4, hi >> np.uint64(32), lo)
