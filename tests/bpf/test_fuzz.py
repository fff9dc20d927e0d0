"""Fuzz: mutated and generated packets through the real program.

Never XDP_ABORTED, every packet counted exactly once under a known reason,
and a packet whose source address can be parsed is never dropped when that
source is allowlisted.

Each test runs twice: with a fixed seed, so every run covers the same
corpus and a regression shows up as a change in one known run, and with a
random seed, so runs explore beyond it. Both seeds are printed; every random
choice (junk bytes too) comes from the seeded generator, so a failure
replays with FLOODGUARD_FUZZ_SEED=<seed>.
"""

from __future__ import annotations

import ipaddress
import os
import random
import struct

import pytest
from harness import Harness, eth
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE
from scapy.packet import Raw

from agent.contract import abi
from agent.contract.specs import RuleSpec

PACKETS_PER_PHASE = 20_000
#: The fixed corpus seed: the same 20,000 packets every run.
FIXED_SEED = 0x13F00D
C = abi.TrafficClass


def corpus() -> list[bytes]:
    l2 = [eth(), eth() / Dot1Q(vlan=5), eth() / Dot1AD(vlan=7) / Dot1Q(vlan=5)]
    pppoe = [eth() / PPPoE(sessionid=9) / PPP(proto=0x0021), eth() / Dot1Q(vlan=5) / PPPoE() / PPP(proto=0x0057)]
    l3 = [
        IP(src="198.51.100.7", dst="203.0.113.10"),
        IP(src="198.51.100.7", dst="203.0.113.10", options=[b"\x01\x01\x01\x00"]),
        IP(src="198.51.100.7", dst="203.0.113.10", flags="MF"),
        IP(src="198.51.100.7", dst="203.0.113.10", frag=50),
        IPv6(src="2001:db8:1::7", dst="2001:db8:2::10"),
        IPv6(src="2001:db8:1::7", dst="2001:db8:2::10") / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt(),
        IPv6(src="2001:db8:1::7", dst="2001:db8:2::10") / IPv6ExtHdrFragment(m=1),
    ]
    l4 = [UDP(sport=53, dport=4444), TCP(flags="S"), TCP(flags="A", options=[("MSS", 1460)]), ICMP(), Raw(b"")]
    out = [bytes(eth() / ARP()), bytes(Ether(type=0x8847) / MPLS(s=1) / l3[0] / UDP())]
    for a in l2:
        for b in l3:
            for c in l4:
                out.append(bytes(a / b / c / Raw(b"payload-" * 4)))
    # PPP says which IP it carries: IPv4 (0x0021) and IPv6 (0x0057) headers each under their own.
    for b in l3:
        a = pppoe[0] if b.version == 4 else pppoe[1]
        for c in l4:
            out.append(bytes(a / b / c / Raw(b"payload-" * 4)))
    return out


def mutate(rng: random.Random, pkt: bytes) -> bytes:
    b = bytearray(pkt)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and len(b) > 14:  # flip bytes anywhere past the MACs
            i = rng.randrange(12, len(b))
            b[i] = rng.randrange(256)
        elif op == 1:  # truncate (test-run needs a whole Ethernet header)
            del b[rng.randint(14, len(b)) :]
        elif op == 2:  # hit the interesting header bytes
            i = rng.choice([12, 13, 14, 16, 17, 20, 21, 22, 23, 26, 34, 38, 46, 47, 54, 58])
            if i < len(b):
                b[i] = rng.choice([0, 1, 0x40, 0x45, 0x4F, 0x60, 0x81, 0x88, 0xA8, 0xFF, rng.randrange(256)])
        elif op == 3:  # insert a VLAN tag or junk after the MACs
            b[12:12] = rng.choice([b"\x81\x00\x00\x05", b"\x88\xa8\x00\x07", rng.randbytes(4)])
        elif op == 4:  # random length field
            if len(b) > 18:
                b[16:18] = struct.pack("!H", rng.randrange(65536))
        else:  # append junk
            b += rng.randbytes(rng.randrange(64))
    return bytes(b)


def generate(rng: random.Random, base: list[bytes]) -> bytes:
    if rng.random() < 0.1:
        return bytes(12) + rng.randbytes(rng.randint(2, 200))
    return mutate(rng, rng.choice(base))


def source_parseable(pkt: bytes) -> bool:
    """Reference for "the source address is known": Ethernet, at most two
    VLAN tags, optionally a PPPoE session header (version 1, type 1, code 0)
    carrying PPP IPv4 or IPv6, then a whole fixed IPv4 (version 4) or IPv6
    (version 6) header."""
    off = 12
    if len(pkt) < 14:
        return False
    etype = struct.unpack_from("!H", pkt, off)[0]
    off = 14
    for _ in range(2):
        if etype not in (0x8100, 0x88A8):
            break
        if len(pkt) < off + 4:
            return False
        etype = struct.unpack_from("!H", pkt, off + 2)[0]
        off += 4
    if etype == 0x8864:
        if len(pkt) < off + 8 or pkt[off : off + 2] != b"\x11\x00":
            return False
        etype = {0x0021: 0x0800, 0x0057: 0x86DD}.get(struct.unpack_from("!H", pkt, off + 6)[0], 0)
        off += 8
    if etype == 0x0800:
        return len(pkt) >= off + 20 and pkt[off] >> 4 == 4
    if etype == 0x86DD:
        return len(pkt) >= off + 40 and pkt[off] >> 4 == 6
    return False


def seed(kind: str) -> int:
    """The fixed seed, or a random one (FLOODGUARD_FUZZ_SEED replays a given one)."""
    replay = int(os.environ.get("FLOODGUARD_FUZZ_SEED", random.randrange(1 << 32)))
    s = FIXED_SEED if kind == "fixed" else replay
    print(f"fuzz {kind} seed {s} (replay with FLOODGUARD_FUZZ_SEED={s})")
    return s


def test_a_seed_replays_the_same_packets() -> None:
    # The printed seed is only worth printing if it gives back the failing packets.
    base = corpus()
    runs = [[generate(rng, base) for _ in range(2000)] for rng in (random.Random(7), random.Random(7))]
    assert runs[0] == runs[1]


@pytest.mark.parametrize("kind", ["fixed", "random"])
def test_fuzz_every_packet_gets_one_known_verdict(h: Harness, kind: str) -> None:
    rng = random.Random(seed(kind))
    base = corpus()
    # Exercise every stage: a ban, a rule, protected groups with limits.
    h.ban("198.51.100.0/25")
    h.protect({"203.0.113.0/24": 1, "2001:db8:2::/48": 1})
    h.limits(1, {C.UDP: (100, 0, 10), C.TCP_SYN: (10, 0, 5), C.FRAGMENT: (10, 0, 5)})
    h.limits(0, {C.OTHER: (10, 0, 5)})
    h.rules(RuleSpec(dst=ipaddress.ip_network("203.0.113.0/24"), proto=17, sport=(53, 53)))
    before = h.port.read_stats()[..., 0].sum()
    actions: dict[int, int] = {}
    for _ in range(PACKETS_PER_PHASE):
        res = h.run_raw(generate(rng, base))
        actions[res.retval] = actions.get(res.retval, 0) + 1
    after = h.port.read_stats()[..., 0].sum()
    assert abi.XDP_ABORTED not in actions, actions
    assert set(actions) <= {abi.XDP_DROP, abi.XDP_PASS, abi.XDP_TX}
    # Each packet counted once: the stats index is (slot, reason, class,
    # monitor), so a counted packet has a reason inside the enum.
    assert after - before == PACKETS_PER_PHASE


@pytest.mark.parametrize("kind", ["fixed", "random"])
def test_fuzz_allowlisted_sources_are_never_dropped(h: Harness, kind: str) -> None:
    rng = random.Random(seed(kind))
    base = corpus()
    h.allow("0.0.0.0/0")
    h.allow("::/0")
    h.ban("198.51.100.0/24", origin=abi.Origin.AUTO)
    h.protect({"203.0.113.0/24": 1})
    h.limits(1, dict.fromkeys(abi.LIMIT_CLASS_LIST, (1, 0, 1)))
    before = h.port.read_stats()[..., 0].sum(axis=(0, 2, 3))
    parseable = 0
    for _ in range(PACKETS_PER_PHASE):
        pkt = generate(rng, base)
        res = h.run_raw(pkt)
        if source_parseable(pkt):
            parseable += 1
            assert res.retval == abi.XDP_PASS, f"allowlisted source dropped: {pkt.hex()}"
        else:
            assert res.retval in (abi.XDP_PASS, abi.XDP_DROP), pkt.hex()
    by_reason = h.port.read_stats()[..., 0].sum(axis=(0, 2, 3)) - before
    # Every packet with a parseable source was counted as allowlisted, every
    # other one as malformed, non-IP or MPLS, and nothing else happened.
    assert by_reason[abi.Reason.ALLOWLISTED] == parseable
    unparsed = by_reason[abi.Reason.MALFORMED] + by_reason[abi.Reason.NON_IP] + by_reason[abi.Reason.MPLS]
    assert unparsed == PACKETS_PER_PHASE - parseable
    assert by_reason.sum() == PACKETS_PER_PHASE
    # The mutations reach both sides of the check.
    assert parseable > PACKETS_PER_PHASE // 4
    assert by_reason[abi.Reason.MALFORMED] > 100
