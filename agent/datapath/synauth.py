"""The SYN challenge's keyed cookie, as bpf/synauth.h computes it, and key
rotation for the daemon.

The program accepts the cookie of the current or the previous key, so a
challenge stays answerable for one to two rotation periods; a key older
than that fails, which the tests use to prove expiry.
"""

from __future__ import annotations

import ipaddress
import os
from typing import TYPE_CHECKING

from agent.contract.keys import words

if TYPE_CHECKING:
    from .mapport import MapPort

_MASK = (1 << 64) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK


def _round(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _MASK
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & _MASK
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & _MASK
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & _MASK
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash5(k0: int, k1: int, words: tuple[int, int, int, int, int]) -> int:
    """fg_siphash5: SipHash-2-4 over five 64-bit words, folded to 32 bits."""
    v0 = 0x736F6D6570736575 ^ k0
    v1 = 0x646F72616E646F6D ^ k1
    v2 = 0x6C7967656E657261 ^ k0
    v3 = 0x7465646279746573 ^ k1
    for m in (*words, 40 << 56):
        v3 ^= m
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
        v0 ^= m
    v2 ^= 0xFF
    for _ in range(4):
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    h = v0 ^ v1 ^ v2 ^ v3
    return (h ^ (h >> 32)) & 0xFFFFFFFF


def cookie(key: tuple[int, int], client: str, server: str, cport: int, sport: int) -> int:
    """The acknowledgment number of the challenge sent to client:cport for server:sport."""
    c, s = ipaddress.ip_address(client), ipaddress.ip_address(server)
    cw, sw = words(c.version, int(c)), words(s.version, int(s))
    message = (
        (cw[0] << 32) | cw[1],
        (cw[2] << 32) | cw[3],
        (sw[0] << 32) | sw[1],
        (sw[2] << 32) | sw[3],
        (cport << 16) | sport,
    )
    return siphash5(key[0], key[1], message)


def new_key() -> tuple[int, int]:
    raw = os.urandom(16)
    return int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")


def rotate_keys(port: MapPort) -> None:
    """A new current key; the current one becomes the previous (a fresh one when none was set yet)."""
    cur = port.read_config().syn_key[0]
    previous = (int(cur.k0), int(cur.k1)) if cur.k0 or cur.k1 else new_key()
    port.set_syn_keys(current=new_key(), previous=previous)
