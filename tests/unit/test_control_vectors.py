"""agent/control/vectors.py: the kind of flood, from its class and its samples."""

from __future__ import annotations

import ipaddress

import pytest

from agent.contract.abi import TrafficClass
from agent.control.port import PacketSample
from agent.control.vectors import REFLECTION_PORTS, Classification, Vector, class_vector, classify, top_protocols

DST = ipaddress.ip_address("203.0.113.5")


def samples(cls: int, n: int, proto: int = 17, sports: list[int] | None = None, flags: int = 0,
            dport: int = 80) -> list[PacketSample]:
    ports = sports or [40000 + i for i in range(n)]
    return [
        PacketSample(ipaddress.ip_address(f"198.18.0.{i % 250 + 1}"), DST, ports[i % len(ports)], dport, 1, 500,
                     proto, cls, tcp_flags=flags)
        for i in range(n)
    ]


@pytest.mark.parametrize(("port", "name"), sorted(REFLECTION_PORTS.items()))
def test_udp_mostly_from_a_reflection_port_is_that_reflection(port: int, name: str) -> None:
    mix = samples(TrafficClass.UDP, 100, sports=[port] * 7 + [5000, 6000, 7000])
    got = classify(TrafficClass.UDP, mix)
    assert (got.vector, got.service, got.label) == (Vector.UDP_REFLECTION, name, f"udp_reflection/{name}")
    assert got.sport == port


def test_the_required_reflection_services_are_known() -> None:
    required = {53: "dns", 123: "ntp", 1900: "ssdp", 11211: "memcached", 389: "cldap", 19: "chargen", 161: "snmp"}
    assert {p: REFLECTION_PORTS[p] for p in required} == required


def test_udp_from_random_or_unknown_ports_is_a_generic_udp_flood() -> None:
    assert classify(TrafficClass.UDP, samples(TrafficClass.UDP, 100)).vector is Vector.UDP_FLOOD
    assert classify(TrafficClass.UDP, samples(TrafficClass.UDP, 100, sports=[4444])).vector is Vector.UDP_FLOOD
    # Half from DNS is not enough to call it DNS reflection... exactly half is.
    half = samples(TrafficClass.UDP, 100, sports=[53, 40001, 40002, 40003])
    assert classify(TrafficClass.UDP, half).vector is Vector.UDP_FLOOD


def test_no_samples_means_the_class_alone_decides() -> None:
    for cls, vector in [
        (TrafficClass.TCP_SYN, Vector.SYN_FLOOD),
        (TrafficClass.TCP_OTHER, Vector.TCP_OTHER_FLOOD),
        (TrafficClass.UDP, Vector.UDP_FLOOD),
        (TrafficClass.ICMP, Vector.ICMP_FLOOD),
        (TrafficClass.FRAGMENT, Vector.FRAGMENT_FLOOD),
        (TrafficClass.OTHER, Vector.OTHER),
    ]:
        assert classify(cls, []) == Classification(vector)
        assert class_vector(cls) is vector


def test_tcp_floods_carry_their_dominant_flags() -> None:
    ack = classify(TrafficClass.TCP_OTHER, samples(TrafficClass.TCP_OTHER, 50, proto=6, flags=0x18))  # PSH+ACK
    assert ack.vector is Vector.TCP_OTHER_FLOOD and ack.tcp_flags == 0x10, "PSH does not tell floods apart"
    rst = classify(TrafficClass.TCP_OTHER, samples(TrafficClass.TCP_OTHER, 50, proto=6, flags=0x04))
    assert rst.tcp_flags == 0x04
    mixed = samples(TrafficClass.TCP_OTHER, 25, proto=6, flags=0x10) + samples(
        TrafficClass.TCP_OTHER, 25, proto=6, flags=0x04
    )
    assert classify(TrafficClass.TCP_OTHER, mixed).tcp_flags is None


def test_icmp_floods_carry_their_dominant_type() -> None:
    echo = classify(TrafficClass.ICMP, samples(TrafficClass.ICMP, 50, proto=1, sports=[8]))
    assert echo.vector is Vector.ICMP_FLOOD and echo.icmp_type == 8


def test_fragments_of_amplified_answers_name_the_service() -> None:
    firsts = samples(TrafficClass.FRAGMENT, 10, sports=[53])
    later = samples(TrafficClass.FRAGMENT, 40, sports=[0])
    got = classify(TrafficClass.FRAGMENT, firsts + later)
    assert (got.vector, got.service, got.proto) == (Vector.FRAGMENT_FLOOD, "dns", 17)


def test_other_protocols_and_top_protocols() -> None:
    gre = samples(TrafficClass.OTHER, 40, proto=47, sports=[0])
    got = classify(TrafficClass.OTHER, gre)
    assert got.vector is Vector.OTHER and got.proto == 47
    mix = gre + samples(TrafficClass.OTHER, 20, proto=50, sports=[0])
    assert top_protocols(mix, 2) == [47, 50]
