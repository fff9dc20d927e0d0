"""What kind of flood it is, from the traffic class and the sampled headers.

The class already separates SYN, other TCP, UDP, ICMP, fragments and other
protocols. Samples refine it: UDP arriving mostly from one well-known
service port is a reflection/amplification attack (the attacker spoofs the
victim's address in small requests to open servers, whose large answers
all come from that port), and the dominant TCP flags, ICMP type or IP
protocol narrow the rule that will match the flood.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.contract.abi import TrafficClass

from .port import PacketSample
from .samples import SampleStats


class Vector(enum.StrEnum):
    SYN_FLOOD = "syn_flood"
    TCP_OTHER_FLOOD = "tcp_other_flood"
    UDP_REFLECTION = "udp_reflection"
    UDP_FLOOD = "udp_flood"
    ICMP_FLOOD = "icmp_flood"
    FRAGMENT_FLOOD = "fragment_flood"
    CARPET_BOMBING = "carpet_bombing"
    OTHER = "other"


#: UDP source ports of services abused for reflection/amplification, and their names.
REFLECTION_PORTS: Mapping[int, str] = {
    17: "qotd",
    19: "chargen",
    53: "dns",
    69: "tftp",
    111: "portmap",
    123: "ntp",
    137: "netbios",
    161: "snmp",
    177: "xdmcp",
    389: "cldap",
    427: "slp",
    520: "rip",
    623: "ipmi",
    1434: "mssql",
    1604: "citrix",
    1900: "ssdp",
    3283: "ard",
    3389: "rdp",
    3478: "stun",
    3702: "ws-discovery",
    5060: "sip",
    5353: "mdns",
    5683: "coap",
    6881: "bittorrent",
    9987: "teamspeak",
    10001: "ubiquiti",
    10074: "mitel",
    11211: "memcached",
    27015: "steam",
    30718: "lantronix",
    32414: "plex",
    33848: "jenkins",
    37810: "dvr",
}

#: Share of the samples one value must have to "dominate".
DOMINANT_SHARE = 0.5
#: Share needed before a rule is narrowed to one value (flags, ICMP type, port).
NARROW_SHARE = 0.8

_BY_CLASS: Mapping[int, Vector] = {
    TrafficClass.TCP_SYN: Vector.SYN_FLOOD,
    TrafficClass.TCP_OTHER: Vector.TCP_OTHER_FLOOD,
    TrafficClass.UDP: Vector.UDP_FLOOD,
    TrafficClass.ICMP: Vector.ICMP_FLOOD,
    TrafficClass.FRAGMENT: Vector.FRAGMENT_FLOOD,
    TrafficClass.OTHER: Vector.OTHER,
}

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def class_vector(cls: int) -> Vector:
    """The vector a flood of this class is before the samples say more."""
    return _BY_CLASS.get(cls, Vector.OTHER)


@dataclass(frozen=True)
class Classification:
    """A flood's kind and the header values that dominate it (None = no single value)."""

    vector: Vector
    service: str | None = None  # reflection: the abused service
    sport: int | None = None
    dport: int | None = None
    proto: int | None = None
    tcp_flags: int | None = None  # dominant value of flags & TCP_KIND_MASK
    icmp_type: int | None = None
    samples: int = 0
    # No single destination port, but all of them ephemeral (>= 1024): a
    # rule can spare the services on well-known ports.
    dport_range: tuple[int, int] | None = None

    @property
    def label(self) -> str:
        """``udp_reflection/ntp``, ``syn_flood``, …"""
        return f"{self.vector}/{self.service}" if self.service else str(self.vector)


#: Ports from here up are ephemeral: a flood to random ones can be limited without the services below.
EPHEMERAL_LOW = 1024
#: Samples needed before a port range is trusted.
MIN_RANGE_SAMPLES = 20


def _dominant(counts: Counter[int], total: int, share: float) -> int | None:
    if not total or not counts:
        return None
    value, n = counts.most_common(1)[0]
    return value if n >= share * total else None


def classify(cls: int, samples: SampleStats | Sequence[PacketSample]) -> Classification:
    """The flood vector of a class's attack, refined by its samples (which all have that class)."""
    stats = samples if isinstance(samples, SampleStats) else SampleStats.of(samples)
    base = class_vector(cls)
    total = stats.total
    if not total:
        return Classification(base)
    sport = _dominant(stats.sports, total, NARROW_SHARE)
    dport = _dominant(stats.dports, total, NARROW_SHARE)
    proto = _dominant(stats.protos, total, NARROW_SHARE)
    flags = icmp_type = None
    service = None
    vector = base
    if base is Vector.UDP_FLOOD:
        top_port = _dominant(stats.sports, total, DOMINANT_SHARE)
        if top_port is not None and top_port in REFLECTION_PORTS:
            vector, service, sport = Vector.UDP_REFLECTION, REFLECTION_PORTS[top_port], top_port
    elif base is Vector.TCP_OTHER_FLOOD:
        flags = _dominant(stats.tcp_kinds, total, NARROW_SHARE)
    elif base is Vector.ICMP_FLOOD:
        icmp_type = sport  # the parser puts the ICMP type in the source port
    elif base is Vector.FRAGMENT_FLOOD:
        # First fragments carry ports: an amplified answer too big for one packet.
        firsts = stats.port_sports
        top = _dominant(firsts, sum(firsts.values()), DOMINANT_SHARE)
        if top is not None and top in REFLECTION_PORTS and (proto in (None, 17)):
            service = REFLECTION_PORTS[top]
    dport_range = None
    if vector is Vector.UDP_FLOOD and dport is None:
        high = sum(n for port, n in stats.dports.items() if port >= EPHEMERAL_LOW)
        if high >= NARROW_SHARE * total and total >= MIN_RANGE_SAMPLES:
            dport_range = (EPHEMERAL_LOW, 65535)
    return Classification(vector, service, sport, dport, proto, flags, icmp_type, total, dport_range)


def top_protocols(samples: SampleStats | Sequence[PacketSample], n: int) -> list[int]:
    """The n most sampled IP protocols (for rules over a mixed flood)."""
    stats = samples if isinstance(samples, SampleStats) else SampleStats.of(samples)
    return [p for p, _ in stats.protos.most_common(n)]
