"""Every parse path, verdict, reason, stage and monitor scope, through the
real program with BPF_PROG_TEST_RUN.

Each case: a description, a packet (scapy or raw bytes), a set-up applied
through the agent's own datapath code, and the expected action/reason/class.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from harness import Harness, eth, now_ns
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE
from scapy.packet import Raw

from agent.contract import abi
from agent.contract.specs import RuleSpec

C = abi.TrafficClass
SRC4, DST4 = "198.51.100.7", "203.0.113.10"
SRC6, DST6 = "2001:db8:1::7", "2001:db8:2::10"
PAY = Raw(b"x" * 32)


def e4(**kw: Any) -> Any:
    kw = {"src": SRC4, "dst": DST4, **kw}
    return eth() / IP(**kw)


def e6(**kw: Any) -> Any:
    kw = {"src": SRC6, "dst": DST6, **kw}
    return eth() / IPv6(**kw)


def cut(pkt: Any, n: int) -> bytes:
    """The first n bytes of a packet: a truncated frame."""
    return bytes(pkt)[:n]


def patch(pkt: Any, offset: int, value: bytes) -> bytes:
    b = bytearray(bytes(pkt))
    b[offset : offset + len(value)] = value
    return bytes(b)


def nothing(h: Harness) -> None:
    return None


@dataclass
class Case:
    desc: str
    packet: Any
    expect: str  # "action/reason/class" with an optional " (monitor)"
    setup: Callable[[Harness], None] = field(default=nothing)

    def __str__(self) -> str:
        return self.desc


def ext_chain(n: int) -> Any:
    p = e6()
    for _ in range(n):
        p = p / IPv6ExtHdrDestOpt()
    return p / UDP(sport=1, dport=2) / PAY


PARSE_CASES = [
    Case("IPv4 UDP", e4() / UDP(sport=1234, dport=53) / PAY, "pass/passed/udp"),
    Case("IPv4 TCP SYN", e4() / TCP(flags="S"), "pass/passed/tcp_syn"),
    Case("IPv4 TCP ACK", e4() / TCP(flags="A"), "pass/passed/tcp_other"),
    Case("IPv4 TCP SYN-ACK is not a SYN", e4() / TCP(flags="SA"), "pass/passed/tcp_other"),
    Case("IPv4 TCP with options", e4() / TCP(flags="S", options=[("MSS", 1460), ("WScale", 7)]),
         "pass/passed/tcp_syn"),
    Case("IPv4 ICMP echo", e4() / ICMP() / PAY, "pass/passed/icmp"),
    Case("IPv4 GRE is class other", e4(proto=47) / PAY, "pass/passed/other"),
    Case("IPv4 with options (IHL 6)", e4(options=[b"\x01\x01\x01\x00"]) / UDP() / PAY, "pass/passed/udp"),
    Case("IPv4 first fragment", e4(flags="MF", frag=0) / UDP() / PAY, "pass/passed/fragment"),
    Case("IPv4 later fragment", e4(frag=100, proto=17) / PAY, "pass/passed/fragment"),
    Case("IPv6 UDP", e6() / UDP() / PAY, "pass/passed/udp"),
    Case("IPv6 TCP SYN", e6() / TCP(flags="S"), "pass/passed/tcp_syn"),
    Case("ICMPv6 echo", e6() / ICMPv6EchoRequest() / PAY, "pass/passed/icmp"),
    Case("IPv6 hop-by-hop then UDP", e6() / IPv6ExtHdrHopByHop() / UDP() / PAY, "pass/passed/udp"),
    Case("IPv6 routing then TCP", e6() / IPv6ExtHdrRouting() / TCP(flags="A"), "pass/passed/tcp_other"),
    Case("IPv6 dest-opts, first fragment, UDP",
         e6() / IPv6ExtHdrDestOpt() / IPv6ExtHdrFragment(m=1, offset=0) / UDP() / PAY,
         "pass/passed/fragment"),
    Case("IPv6 later fragment", e6() / IPv6ExtHdrFragment(m=0, offset=10, nh=17) / PAY, "pass/passed/fragment"),
    # After the fragment header of a later fragment comes payload, not headers.
    Case("IPv6 later fragment: the payload is not walked as extension headers",
         e6() / IPv6ExtHdrFragment(m=1, offset=10, nh=60) / Raw(b"\x3c\xff" + b"x" * 30),
         "pass/passed/fragment"),
    Case("IPv6 atomic fragment carries a whole UDP packet",
         e6() / IPv6ExtHdrFragment(m=0, offset=0) / UDP() / PAY, "pass/passed/udp"),
    Case("IPv6 eight extension headers", ext_chain(7), "pass/passed/udp"),
    Case("802.1Q VLAN, IPv4 UDP",
         eth() / Dot1Q(vlan=10) / IP(src=SRC4, dst=DST4) / UDP() / PAY, "pass/passed/udp"),
    Case("QinQ (802.1ad + 802.1Q), IPv4 UDP",
         eth() / Dot1AD(vlan=100) / Dot1Q(vlan=10) / IP(src=SRC4, dst=DST4) / UDP() / PAY, "pass/passed/udp"),
    Case("QinQ, IPv6 TCP SYN",
         eth() / Dot1AD(vlan=100) / Dot1Q(vlan=10) / IPv6(src=SRC6, dst=DST6) / TCP(flags="S"),
         "pass/passed/tcp_syn"),
    # PPPoE and MPLS passed as non-IP, unfiltered and uncounted as such.
    Case("PPPoE session, IPv4 UDP",
         eth() / PPPoE(sessionid=7) / PPP(proto=0x0021) / IP(src=SRC4, dst=DST4) / UDP() / PAY,
         "pass/passed/udp"),
    Case("QinQ, PPPoE session, IPv6 TCP SYN",
         eth() / Dot1AD(vlan=100) / Dot1Q(vlan=10) / PPPoE(sessionid=7) / PPP(proto=0x0057)
         / IPv6(src=SRC6, dst=DST6) / TCP(flags="S"),
         "pass/passed/tcp_syn"),
    Case("PPPoE session, LCP is not IP", eth() / PPPoE(sessionid=7) / PPP(proto=0xC021) / PAY,
         "pass/non_ip/non_ip"),
    Case("PPPoE discovery is not IP", Ether(type=0x8863) / PAY, "pass/non_ip/non_ip"),
    Case("MPLS is counted under its own reason",
         Ether(type=0x8847) / MPLS(label=100, s=1) / IP(src=SRC4, dst=DST4) / UDP() / PAY, "pass/mpls/non_ip"),
    Case("ARP passes", eth() / ARP(), "pass/non_ip/non_ip"),
    Case("LLDP passes", Ether(type=0x88CC) / PAY, "pass/non_ip/non_ip"),
]

MALFORMED_CASES = [
    Case("Ethernet header alone, IPv4 ethertype", cut(e4() / UDP(), 14), "drop/malformed/other"),
    Case("truncated VLAN tag", cut(eth() / Dot1Q() / IP(), 16), "drop/malformed/other"),
    Case("PPPoE session header cut short", cut(eth() / PPPoE() / PPP() / IP(), 14 + 6), "drop/malformed/other"),
    Case("PPPoE version 2 is no session frame", eth() / PPPoE(version=2) / PPP(proto=0x0021) / IP() / UDP(),
         "drop/malformed/other"),
    Case("three VLAN tags", eth() / Dot1AD() / Dot1Q() / Dot1Q() / IP(src=SRC4, dst=DST4) / UDP(),
         "drop/malformed/other"),
    Case("truncated IPv4 header", cut(e4() / UDP(), 14 + 12), "drop/malformed/other"),
    Case("IPv4 ethertype, version 6", patch(e4() / UDP() / PAY, 14, b"\x65"), "drop/malformed/other"),
    Case("IPv4 IHL below 5", patch(e4() / UDP() / PAY, 14, b"\x44"), "drop/malformed/udp"),
    Case("IPv4 total length beyond the frame", e4(len=400) / UDP() / PAY, "drop/malformed/udp"),
    Case("IPv4 IHL 15 beyond the frame", patch(e4() / UDP(), 14, b"\x4f"), "drop/malformed/udp"),
    Case("truncated TCP header", cut(e4(len=30) / TCP(), 14 + 30), "drop/malformed/tcp_other"),
    # RFC 1858: offset 1 (8 bytes) lands on the TCP flags of the first fragment, which
    # is how an overlap turns an ACK the first stages saw into a SYN the server gets.
    Case("IPv4 TCP fragment at offset 8 bytes (overlaps the TCP flags)", e4(frag=1, proto=6) / PAY,
         "drop/malformed/fragment"),
    Case("TCP data offset below 5", e4() / TCP(dataofs=3), "drop/malformed/tcp_other"),
    Case("TCP data offset beyond the frame", e4() / TCP(dataofs=15), "drop/malformed/tcp_other"),
    Case("truncated UDP header", cut(e4(len=24) / UDP(), 14 + 24), "drop/malformed/udp"),
    Case("UDP length below 8", e4() / UDP(len=4) / PAY, "drop/malformed/udp"),
    Case("truncated ICMP header", cut(e4(len=24) / ICMP(), 14 + 24), "drop/malformed/icmp"),
    Case("IPv4 truncated inside L4 (total length says more)", cut(e4() / TCP(), 14 + 30),
         "drop/malformed/tcp_other"),
    Case("truncated IPv6 header", cut(e6() / UDP(), 14 + 30), "drop/malformed/other"),
    Case("truncated IPv6 extension header", cut(e6() / IPv6ExtHdrDestOpt() / UDP(), 14 + 40 + 1),
         "drop/malformed/other"),
    Case("nine IPv6 extension headers", ext_chain(9), "drop/malformed/other"),
    Case("malformed passes when the policy says so", e4() / TCP(dataofs=3), "pass/malformed/tcp_other",
         lambda h: h.config(malformed_pass=True)),
    Case("malformed under global monitor", e4() / TCP(dataofs=3), "pass/malformed/tcp_other (monitor)",
         lambda h: h.config(monitor=True)),
]


def protect_with_limits(limits: dict[abi.TrafficClass, tuple[int, int, int]], *, monitor: bool = False):
    def setup(h: Harness) -> None:
        h.protect({"203.0.113.0/24": 1, "2001:db8:2::/48": 1})
        h.limits(1, limits, monitor=monitor)
    return setup


def seq(*fns: Callable[[Harness], None]) -> Callable[[Harness], None]:
    def setup(h: Harness) -> None:
        for f in fns:
            f(h)
    return setup


LATER = 3600 * 10**9

LIST_CASES = [
    Case("allowlisted source passes even with a malformed L4 header", e4() / TCP(dataofs=3),
         "pass/allowlisted/tcp_other", lambda h: h.allow("198.51.100.0/24")),
    Case("allowlisted IPv6 source", e6() / UDP() / PAY, "pass/allowlisted/udp",
         lambda h: h.allow("2001:db8:1::/64")),
    Case("banned /32", e4() / UDP() / PAY, "drop/banned/udp", lambda h: h.ban("198.51.100.7/32")),
    Case("source inside a banned /16", e4() / UDP() / PAY, "drop/banned/udp", lambda h: h.ban("198.51.0.0/16")),
    Case("source inside a banned /30 (host table)", e4() / UDP() / PAY, "drop/banned/udp",
         lambda h: h.ban("198.51.100.4/30")),
    Case("neighbour of a banned /32 passes", e4() / UDP() / PAY, "pass/passed/udp",
         lambda h: h.ban("198.51.100.8/32")),
    Case("banned IPv6 /48", e6() / UDP() / PAY, "drop/banned/udp", lambda h: h.ban("2001:db8:1::/48")),
    Case("banned source with malformed L4 is banned", e4() / UDP(len=3), "drop/banned/udp",
         lambda h: h.ban("198.51.100.7/32")),
    Case("allow /24 wins over ban /32 inside it", e4() / UDP() / PAY, "pass/allowlisted/udp",
         seq(lambda h: h.allow("198.51.100.0/24"), lambda h: h.ban("198.51.100.7/32"))),
    Case("allow /32 wins over ban /8 around it", e4() / UDP() / PAY, "pass/allowlisted/udp",
         seq(lambda h: h.ban("198.0.0.0/8"), lambda h: h.allow("198.51.100.7/32"))),
    Case("IPv6 allow /64 wins over ban /32", e6() / UDP() / PAY, "pass/allowlisted/udp",
         seq(lambda h: h.ban("2001:db8::/32"), lambda h: h.allow("2001:db8:1::/64"))),
    Case("expired ban lets traffic through", e4() / UDP() / PAY, "pass/passed/udp",
         lambda h: h.ban("198.51.100.7/32", expires=now_ns() - 10**9)),
    Case("ban with a future expiry drops", e4() / UDP() / PAY, "drop/banned/udp",
         lambda h: h.ban("198.51.100.7/32", expires=now_ns() + LATER)),
    Case("expired allow no longer shields a banned source", e4() / UDP() / PAY, "drop/banned/udp",
         seq(lambda h: h.allow("198.51.100.7/32", expires=now_ns() - 10**9),
             lambda h: h.ban("198.51.100.0/24"))),
    Case("expired /16 ban, live /32 ban inside it", e4() / UDP() / PAY, "drop/banned/udp",
         seq(lambda h: h.ban("198.51.0.0/16", expires=now_ns() - 10**9),
             lambda h: h.ban("198.51.100.7/32", origin=abi.Origin.AUTO, expires=now_ns() + LATER))),
    Case("deny list in monitor: counted banned, passed", e4() / UDP() / PAY, "pass/banned/udp (monitor)",
         lambda h: h.ban("198.51.100.0/24", origin=abi.Origin.POLICY, monitor=True)),
    Case("monitor deny plus enforced operator ban: dropped", e4() / UDP() / PAY, "drop/banned/udp",
         seq(lambda h: h.ban("198.51.100.0/24", origin=abi.Origin.POLICY, monitor=True),
             lambda h: h.ban("198.51.100.7/32", origin=abi.Origin.OPERATOR))),
    Case("ban under global monitor: passed, flagged", e4() / UDP() / PAY, "pass/banned/udp (monitor)",
         seq(lambda h: h.ban("198.51.100.7/32"), lambda h: h.config(monitor=True))),
    Case("allowlist in monitor: the ban still drops, counted as allowlisted (monitor)",
         e4() / UDP() / PAY, "drop/allowlisted/udp (monitor)",
         seq(lambda h: h.allow("198.51.100.0/24", monitor=True), lambda h: h.ban("198.51.100.7/32"))),
    Case("allowlist in monitor, nothing drops: passed", e4() / UDP() / PAY, "pass/passed/udp",
         lambda h: h.allow("198.51.100.0/24", monitor=True)),
]

RULE_DST = ipaddress.ip_network("203.0.113.0/24")

RULE_CASES = [
    Case("rule: UDP from port 53 to the /24 is dropped", e4() / UDP(sport=53, dport=4444) / PAY,
         "drop/rule_drop/udp",
         lambda h: h.rules(RuleSpec(dst=RULE_DST, proto=17, sport=(53, 53)))),
    Case("rule: other source port passes", e4() / UDP(sport=54, dport=4444) / PAY, "pass/passed/udp",
         lambda h: h.rules(RuleSpec(dst=RULE_DST, proto=17, sport=(53, 53)))),
    Case("rule: other destination passes", e4(dst="203.0.114.1") / UDP(sport=53) / PAY, "pass/passed/udp",
         lambda h: h.rules(RuleSpec(dst=RULE_DST, proto=17, sport=(53, 53)))),
    Case("rule: SYN mask matches a SYN", e4() / TCP(flags="S", dport=80), "drop/rule_drop/tcp_syn",
         lambda h: h.rules(RuleSpec(dst=RULE_DST, proto=6, tcp_flags_mask=0x12, tcp_flags_value=0x02))),
    Case("rule: SYN mask ignores an ACK", e4() / TCP(flags="A", dport=80), "pass/passed/tcp_other",
         lambda h: h.rules(RuleSpec(dst=RULE_DST, proto=6, tcp_flags_mask=0x12, tcp_flags_value=0x02))),
    Case("rule: destination port range", e4() / TCP(flags="A", dport=8080), "drop/rule_drop/tcp_other",
         lambda h: h.rules(RuleSpec(dst=RULE_DST, proto=6, dport=(8000, 8999)))),
    Case("rule: expired rule does nothing", e4() / UDP(sport=53) / PAY, "pass/passed/udp",
         lambda h: h.rules(RuleSpec(dst=RULE_DST, proto=17, expires_ns=now_ns() - 10**9))),
    Case("rule: in monitor, passed and flagged", e4() / UDP(sport=53) / PAY, "pass/rule_drop/udp (monitor)",
         lambda h: h.rules(RuleSpec(dst=RULE_DST, proto=17, monitor=True))),
    Case("rule: IPv6 destination prefix", e6() / UDP(sport=123) / PAY, "drop/rule_drop/udp",
         lambda h: h.rules(RuleSpec(dst=ipaddress.ip_network("2001:db8:2::/48"), proto=17,
                                    sport=(123, 123)))),
    Case("rule: a later fragment has no ports, a port rule misses it", e4(frag=100, proto=17) / PAY,
         "pass/passed/fragment",
         lambda h: h.rules(RuleSpec(dst=RULE_DST, proto=17, sport=(53, 53)))),
    Case("rule: second rule matches after a miss", e4() / ICMP() / PAY, "drop/rule_drop/icmp",
         lambda h: h.rules(RuleSpec(dst=RULE_DST, proto=17), RuleSpec(dst=RULE_DST, proto=1))),
    Case("banned source never reaches the rules", e4() / UDP(sport=53) / PAY, "drop/banned/udp",
         seq(lambda h: h.ban("198.51.100.7/32"), lambda h: h.rules(RuleSpec(dst=RULE_DST, proto=17)))),
]

LIMIT_CASES = [
    Case("under the per-source limit", e4() / UDP() / PAY, "pass/passed/udp",
         protect_with_limits({C.UDP: (1000, 0, 10)})),
    Case("a class without a limit is not limited", e4() / TCP(flags="A"), "pass/passed/tcp_other",
         protect_with_limits({C.UDP: (1, 0, 1)})),
]

ALL = PARSE_CASES + MALFORMED_CASES + LIST_CASES + RULE_CASES + LIMIT_CASES


@pytest.mark.parametrize("case", ALL, ids=str)
def test_case(h: Harness, case: Case) -> None:
    case.setup(h)
    verdict = h.run(case.packet)
    assert str(verdict) == case.expect, case.desc


def test_enough_cases() -> None:
    assert len(ALL) >= 50
