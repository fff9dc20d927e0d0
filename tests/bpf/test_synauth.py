"""SYN authentication through the real program: the challenge a SYN gets,
what a correct and a wrong answer do, key expiry, the challenge cap,
monitor mode, and that a handshake seen in calm times verifies nobody."""

from __future__ import annotations

from typing import Any

import pytest
from harness import Harness, eth, now_ns
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE

from agent.contract import abi
from agent.contract.rates import make_rate
from agent.contract.specs import ConfigSpec, GroupSpec
from agent.datapath.synauth import cookie

C = abi.TrafficClass
KEY_A = (0x0123456789ABCDEF, 0x0F1E2D3C4B5A6978)
KEY_B = (0x1111111111111111, 0x2222222222222222)
KEY_C = (0x3333333333333333, 0x4444444444444444)
CLI4, SRV4 = "198.51.100.7", "203.0.113.10"
CLI6, SRV6 = "2001:db8:1::7", "2001:db8:2::10"


def syn4(src: str = CLI4, sport: int = 40000, **kw: Any) -> Any:
    return eth() / IP(src=src, dst=SRV4, **kw) / TCP(sport=sport, dport=443, flags="S", seq=1000,
                                                        options=[("MSS", 1460), ("SAckOK", b""), ("WScale", 7)])


def syn6(src: str = CLI6) -> Any:
    return eth() / IPv6(src=src, dst=SRV6) / TCP(sport=40000, dport=443, flags="S", seq=1000,
                                                   options=[("MSS", 1440)])


def rst4(seq: int, src: str = CLI4, sport: int = 40000) -> Any:
    return eth() / IP(src=src, dst=SRV4) / TCP(sport=sport, dport=443, flags="R", seq=seq)


def setup(h: Harness, *, always: bool = True, challenge_pps: int = 100_000, monitor: bool = False,
          syn_limit: tuple[int, int, int] | None = None) -> None:
    h.protect({"203.0.113.0/24": 1, "2001:db8:2::/48": 1})
    base = [abi.Rate() for _ in range(abi.LIMIT_CLASSES)]
    if syn_limit:
        base[C.TCP_SYN] = make_rate(*syn_limit)
    h.port.set_group(1, GroupSpec(base=base, syn_always=always, challenge_pps=challenge_pps,
                                  monitor=monitor))
    h.port.write_config(ConfigSpec(), syn_keys=[KEY_A, KEY_B])


def valid_checksums(pkt: Any) -> bool:
    """Rebuild the packet with scapy computing every checksum; compare."""
    clean = pkt.copy()
    for layer in (IP, TCP):
        if clean.haslayer(layer) and hasattr(clean[layer], "chksum"):
            del clean[layer].chksum
    return bytes(Ether(bytes(clean))) == bytes(pkt)


def test_a_syn_gets_a_syn_ack_carrying_the_cookie(h: Harness) -> None:
    setup(h)
    pkt = syn4()
    v = h.run(pkt)
    assert (v.action, v.reason, v.cls) == ("tx", "syn_challenged", "tcp_syn")
    out = Ether(v.data)
    assert (out.src, out.dst) == (pkt.dst, pkt.src)
    assert (out[IP].src, out[IP].dst) == (SRV4, CLI4)
    assert (out[TCP].sport, out[TCP].dport) == (443, 40000)
    assert out[TCP].flags == "SA"
    assert out[TCP].ack == cookie(KEY_A, CLI4, SRV4, 40000, 443)
    assert out[TCP].options == [] and out[TCP].dataofs == 5
    assert len(v.data) <= len(bytes(pkt)), "a challenge is never larger than the SYN"
    assert valid_checksums(out)


def test_a_challenged_syn_counts_as_not_delivered(h: Harness) -> None:
    # The attack record and containment read "dropped" as "kept from the server".
    setup(h)
    before = h.port.read_group_stats()[1, C.TCP_SYN]
    assert h.run(syn4()).action == "tx"
    d = h.port.read_group_stats()[1, C.TCP_SYN] - before
    # fields: packets, bytes, dropped_packets, dropped_bytes, new_sources
    assert (d[0], d[2], d[3]) == (1, 1, len(syn4()))
    monitor_before = h.port.read_group_stats()[1, C.TCP_SYN]
    setup(h, monitor=True)
    assert h.run(syn4(src="198.51.100.8")).action == "pass"
    d = h.port.read_group_stats()[1, C.TCP_SYN] - monitor_before
    assert (d[0], d[2]) == (1, 0)


def test_ipv6_and_vlan_challenges(h: Harness) -> None:
    setup(h)
    v = h.run(syn6())
    out = Ether(v.data)
    assert v.reason == "syn_challenged" and out[IPv6].src == SRV6 and out[IPv6].dst == CLI6
    assert out[TCP].ack == cookie(KEY_A, CLI6, SRV6, 40000, 443)
    clean = out.copy()
    del clean[TCP].chksum
    assert bytes(Ether(bytes(clean))) == bytes(out), "TCP checksum over the IPv6 pseudo-header"
    tagged = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=7) / syn4()[IP]
    v = h.run(tagged)
    out = Ether(v.data)
    assert v.reason == "syn_challenged" and out[Dot1Q].vlan == 7 and out[TCP].flags == "SA"
    assert valid_checksums(out)


def test_the_right_answer_verifies_and_the_retransmitted_syn_passes(h: Harness) -> None:
    setup(h)
    ack = Ether(h.run(syn4()).data)[TCP].ack
    v = h.run(rst4(ack))
    assert (v.action, v.reason) == ("drop", "syn_verified")
    assert h.maps["verified4"].get(int.from_bytes(bytes(map(int, CLI4.split("."))), "little")) is not None
    assert str(h.run(syn4())) == "pass/passed/tcp_syn"


def test_a_wrong_answer_does_not_verify(h: Harness) -> None:
    setup(h)
    ack = Ether(h.run(syn4()).data)[TCP].ack
    assert h.run(rst4((ack + 1) & 0xFFFFFFFF)).reason == "syn_auth_failed"
    assert h.run(rst4(ack, sport=40001)).reason == "syn_auth_failed", "the cookie binds the ports"
    assert h.run(syn4()).reason == "syn_challenged"


def test_an_answer_with_an_expired_key_fails(h: Harness) -> None:
    setup(h)
    ack = Ether(h.run(syn4()).data)[TCP].ack  # made with KEY_A
    h.port.set_syn_keys(current=KEY_B, previous=KEY_A)
    assert h.run(rst4(ack, src=CLI4)).reason == "syn_verified", "the previous key still counts"
    h.maps["verified4"].clear()
    h.port.set_syn_keys(current=KEY_C, previous=KEY_B)
    assert h.run(rst4(ack)).reason == "syn_auth_failed"


def test_challenges_are_capped_per_group(h: Harness) -> None:
    setup(h, challenge_pps=1)
    reasons = [h.run(syn4(src=f"198.51.100.{i}")).reason for i in range(1, 4)]
    assert reasons[0] == "syn_challenged" and reasons[-1] == "syn_challenge_limited"


def test_challenges_are_capped_for_all_groups_together(h: Harness) -> None:
    # N groups x challenge_pps of SYN-ACKs could be aimed at one forged
    # victim; the gateway-wide cap bounds what it sends whatever the SYNs' targets.
    setup(h, challenge_pps=100_000)
    h.protect({"203.0.113.0/24": 1, "192.0.2.0/24": 2})
    h.port.set_group(2, GroupSpec(syn_always=True, challenge_pps=100_000))
    h.port.write_config(ConfigSpec(challenge_pps_total=1), syn_keys=[KEY_A, KEY_B])
    to_group2 = eth() / IP(src=CLI4, dst="192.0.2.10") / TCP(sport=40000, dport=443, flags="S")
    assert h.run(syn4()).reason == "syn_challenged"
    assert h.run(to_group2).reason == "syn_challenge_limited"
    assert h.run(syn4(sport=40001)).reason == "syn_challenge_limited"


def test_monitor_counts_but_passes_the_syn_untouched(h: Harness) -> None:
    setup(h, monitor=True)
    pkt = syn4()
    v = h.run(pkt)
    assert (v.action, v.reason, v.monitor) == ("pass", "syn_challenged", True)
    assert v.data == bytes(pkt)


def test_on_attack_auth_runs_until_its_expiry(h: Harness) -> None:
    setup(h, always=False)
    assert h.run(syn4()).reason == "passed"
    h.port.set_syn_auth(1, now_ns() + 60 * 10**9)
    assert h.run(syn4()).reason == "syn_challenged"
    h.port.set_syn_auth(1, now_ns() - 10**9)
    assert h.run(syn4()).reason == "passed"


@pytest.mark.parametrize("ack_no", [5, 0, 1001])
def test_a_forged_calm_time_handshake_verifies_nobody(h: Harness, ack_no: int) -> None:
    # A SYN then a bare ACK (any ack number) from a forged source in calm
    # times used to verify it for verified_ttl. Nothing in what the gateway sees of a
    # handshake is beyond a forger, so only the answer to a challenge verifies.
    setup(h, always=False, syn_limit=(100, 0, 10))
    h.run(syn4())
    h.run(eth() / IP(src=CLI4, dst=SRV4) / TCP(sport=40000, dport=443, flags="A", seq=1001, ack=ack_no))
    h.run(syn6())
    h.run(eth() / IPv6(src=CLI6, dst=SRV6) / TCP(sport=40000, dport=443, flags="A", seq=1001, ack=ack_no))
    assert not list(h.maps["verified4"].items()) and not list(h.maps["verified6"].items())
    h.port.set_syn_auth(1, now_ns() + 60 * 10**9)
    assert h.run(syn4()).reason == "syn_challenged"
    assert h.run(syn6()).reason == "syn_challenged"


def test_a_syn_over_pppoe_is_challenged_in_its_session(h: Harness) -> None:
    setup(h)
    h.ban("198.51.100.66/32")
    inner = IP(src=CLI4, dst=SRV4) / TCP(sport=40000, dport=443, flags="S", seq=1000, options=[("MSS", 1452)])
    pkt = eth() / PPPoE(sessionid=0x1234) / PPP(proto=0x0021) / inner
    v = h.run(pkt)
    assert (v.action, v.reason) == ("tx", "syn_challenged")
    out = Ether(v.data)
    assert out[PPPoE].sessionid == 0x1234 and out[PPPoE].len == 2 + 40, "the length covers what is left"
    assert out[TCP].ack == cookie(KEY_A, CLI4, SRV4, 40000, 443) and valid_checksums(out)
    banned = eth() / PPPoE(sessionid=0x1234) / PPP(proto=0x0021) / IP(src="198.51.100.66", dst=SRV4) / TCP()
    assert h.run(banned).reason == "banned", "a PPPoE source is filtered like any other"


def test_syn_with_ip_options_cannot_be_challenged_and_is_dropped(h: Harness) -> None:
    setup(h)
    assert h.run(syn4(options=[b"\x01\x01\x01\x00"])).reason == "syn_auth_failed"


def test_a_fragmented_syn_is_authenticated_too(h: Harness) -> None:
    # A SYN in a first fragment was classed a fragment and skipped the
    # challenge. No client fragments a SYN, and a fragment cannot be answered in place.
    setup(h)
    v4 = eth() / IP(src=CLI4, dst=SRV4, flags="MF") / TCP(sport=40000, dport=443, flags="S", seq=1000)
    v6 = eth() / IPv6(src=CLI6, dst=SRV6) / IPv6ExtHdrFragment(m=1) / TCP(sport=40000, dport=443, flags="S")
    assert str(h.run(v4)) == "drop/syn_auth_failed/fragment"
    assert str(h.run(v6)) == "drop/syn_auth_failed/fragment"
    # A verified source's fragments face the fragment limits, as any fragment does.
    ack = Ether(h.run(syn4()).data)[TCP].ack
    h.run(rst4(ack))
    assert str(h.run(v4)) == "pass/passed/fragment"


def test_verified_sources_stay_under_their_per_source_limit(h: Harness) -> None:
    setup(h, syn_limit=(1, 0, 1))
    ack = Ether(h.run(syn4()).data)[TCP].ack
    h.run(rst4(ack))
    assert [h.run(syn4()).reason for _ in range(2)] == ["passed", "rate_limited"]
