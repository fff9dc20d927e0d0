"""What floodguard announces, and how an attack record becomes announcements.

An :class:`Announcement` is one BGP route of floodguard's: a Flowspec rule
(RFC 8955; RFC 8956 for IPv6) matching the attack's shape, or an RTBH route
(RFC 7999) for one destination. Its :attr:`Announcement.key` names it: two
attacks that want the same route share one announcement, and the key of a
route read back from the speaker is the key it was announced with, so the
book and the speaker's table can be compared (reconciliation).

:func:`wanted` reads attack records as the controller renders them
(``Attack.to_dict()``), never the controller's objects: the record is the
interface. The shape comes from the rules the controller put in force for
the attack (its ``mitigations`` entries of step ``rule``), which already
match only what the target's legitimate traffic does not look like; an
attack without one gets the shape of its class (protocol, SYN flags,
fragments) and, for a reflection, its dominant source port.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["flowspec", "rtbh"]
KINDS: tuple[Kind, ...] = ("flowspec", "rtbh")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

TCP_SYN, TCP_ACK = 0x02, 0x10
#: A source port carrying at least this share of an attack's samples is its shape.
DOMINANT_SHARE = 0.5
_PROTO_BY_CLASS = {"tcp_syn": 6, "tcp_other": 6, "udp": 17}


@dataclass(frozen=True, order=True)
class Match:
    """Flowspec match components; None = any. Ranges are inclusive (lo, hi)."""

    proto: int | None = None
    sport: tuple[int, int] | None = None
    dport: tuple[int, int] | None = None
    tcp_flags: tuple[int, int] | None = None  # (mask, value): (flags & mask) == value
    fragment: bool = False  # is-fragment
    length: tuple[int, int] | None = None  # packet length

    def words(self) -> list[str]:
        out: list[str] = []
        if self.proto is not None:
            out.append(f"proto {self.proto}")
        for name, rng in (("sport", self.sport), ("dport", self.dport), ("length", self.length)):
            if rng is not None:
                out.append(f"{name} {rng[0]}" if rng[0] == rng[1] else f"{name} {rng[0]}-{rng[1]}")
        if self.tcp_flags is not None:
            out.append(f"tcp_flags 0x{self.tcp_flags[1]:02x}/0x{self.tcp_flags[0]:02x}")
        if self.fragment:
            out.append("fragment")
        return out

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.proto is not None:
            out["proto"] = self.proto
        for name in ("sport", "dport", "length"):
            rng = getattr(self, name)
            if rng is not None:
                out[name] = list(rng)
        if self.tcp_flags is not None:
            out["tcp_flags"] = {"mask": self.tcp_flags[0], "value": self.tcp_flags[1]}
        if self.fragment:
            out["fragment"] = True
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Match:
        def rng(name: str) -> tuple[int, int] | None:
            v = d.get(name)
            if not isinstance(v, list | tuple) or len(v) != 2:
                return None
            return int(v[0]), int(v[1])

        flags = d.get("tcp_flags")
        tf = (int(flags["mask"]), int(flags["value"])) if isinstance(flags, Mapping) else None
        proto = d.get("proto")
        return cls(proto=int(proto) if isinstance(proto, int) else None, sport=rng("sport"), dport=rng("dport"),
                   tcp_flags=tf, fragment=bool(d.get("fragment")), length=rng("length"))


@dataclass(frozen=True)
class Announcement:
    """One route: ``kind`` rtbh (``dst`` only) or flowspec (``dst`` and ``match``)."""

    kind: Kind
    dst: IPNetwork
    match: Match = field(default_factory=Match)

    @property
    def key(self) -> str:
        return " ".join([self.kind, str(self.dst), *self.match.words()])

    @property
    def version(self) -> int:
        return self.dst.version

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "dst": str(self.dst), "match": self.match.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Announcement:
        kind = d["kind"]
        if kind not in KINDS:
            raise ValueError(f"unknown announcement kind {kind!r}")
        m = d.get("match")
        return cls(kind, ipaddress.ip_network(str(d["dst"])), Match.from_dict(m if isinstance(m, Mapping) else {}))


@dataclass(frozen=True)
class Wish:
    """An announcement an escalated attack asks for."""

    announcement: Announcement
    attack_id: str
    group: str


@dataclass(frozen=True)
class Skip:
    """An announcement an attack would need but that is not made, and why (a refusal)."""

    kind: Kind
    attack_id: str
    what: str
    reason: str
    detail: str


def _destinations(record: Mapping[str, object]) -> list[IPNetwork]:
    target = record.get("target")
    if not isinstance(target, Mapping):
        return []
    host = target.get("host")
    if isinstance(host, str) and host:
        addr = ipaddress.ip_address(host)
        return [ipaddress.ip_network(f"{addr}/{addr.max_prefixlen}")]
    prefixes = target.get("prefixes")
    if isinstance(prefixes, list):
        return [ipaddress.ip_network(str(p)) for p in prefixes]
    return []


def _port_range(v: object) -> tuple[int, int] | None:
    if isinstance(v, list | tuple) and len(v) == 2:
        lo, hi = int(v[0]), int(v[1])
        return None if (lo, hi) == (0, 65535) else (lo, hi)
    if isinstance(v, int):
        return v, v
    return None


def _rules_in_force(record: Mapping[str, object]) -> list[Mapping[str, object]]:
    """The rule entries applied for the attack and not removed since (by rule id, latest wins)."""
    live: dict[object, Mapping[str, object]] = {}
    for m in record.get("mitigations") or []:  # type: ignore[attr-defined]
        if not isinstance(m, Mapping) or m.get("step") != "rule" or m.get("monitor"):
            continue
        rid = m.get("rule_id", m.get("dst"))
        if m.get("action") == "applied":
            live[rid] = m
        elif m.get("action") == "removed":
            live.pop(rid, None)
    return list(live.values())


def _class_match(record: Mapping[str, object], dst: IPNetwork) -> Match | None:
    """The shape of the attack's class when no rule gives a narrower one; None = no shape but the destination."""
    cls = record.get("class")
    if cls == "fragment":
        return Match(fragment=True)
    if cls == "icmp":
        return Match(proto=1 if dst.version == 4 else 58)
    proto = _PROTO_BY_CLASS.get(str(cls))
    if proto is None:
        return None
    tcp_flags = (TCP_SYN | TCP_ACK, TCP_SYN) if cls == "tcp_syn" else None
    sport = None
    if cls == "udp" and record.get("flood") == "udp_reflection":
        ports = record.get("top_source_ports")
        if isinstance(ports, list) and ports and isinstance(ports[0], Mapping):
            top = ports[0]
            if float(top.get("share", 0) or 0) >= DOMINANT_SHARE and isinstance(top.get("port"), int):
                port = int(top["port"])
                sport = (port, port)
    return Match(proto=proto, sport=sport, tcp_flags=tcp_flags)


def flowspec_for(record: Mapping[str, object]) -> list[Announcement] | str:
    """The Flowspec rules matching the attack's shape, or why there is none."""
    out: list[Announcement] = []
    for rule in _rules_in_force(record):
        dst = ipaddress.ip_network(str(rule.get("dst")))
        proto = rule.get("proto")
        flags = rule.get("tcp_flags")
        out.append(Announcement("flowspec", dst, Match(
            proto=int(proto) if isinstance(proto, int) and proto else None,
            sport=_port_range(rule.get("sport")),
            dport=_port_range(rule.get("dport")),
            tcp_flags=(int(flags["mask"]), int(flags["value"])) if isinstance(flags, Mapping) else None,
        )))
    if out:
        return out
    dsts = _destinations(record)
    if not dsts:
        return "the attack record names no destination"
    for dst in dsts:
        match = _class_match(record, dst)
        if match is None:
            return f"class {record.get('class')} has no shape narrower than the destination (that is RTBH's job)"
        out.append(Announcement("flowspec", dst, match))
    return out


def rtbh_for(record: Mapping[str, object]) -> list[Announcement]:
    return [Announcement("rtbh", dst) for dst in _destinations(record)]


def wanted(records: Iterable[Mapping[str, object]], *, flowspec: bool, rtbh: bool,
           rtbh_groups: frozenset[str]) -> tuple[list[Wish], list[Skip]]:
    """What the escalated active attacks ask for, and what they cannot have by policy."""
    wishes: list[Wish] = []
    skips: list[Skip] = []
    for r in records:
        if not r.get("active") or not r.get("escalated"):
            continue
        aid, group = str(r.get("id")), str(r.get("group"))
        if flowspec:
            got = flowspec_for(r)
            if isinstance(got, str):
                skips.append(Skip("flowspec", aid, f"group {group}", "no_shape", got))
            else:
                wishes += [Wish(a, aid, group) for a in got]
        if rtbh:
            if group in rtbh_groups:
                wishes += [Wish(a, aid, group) for a in rtbh_for(r)]
            else:
                skips.append(Skip("rtbh", aid, f"group {group}", "rtbh_not_allowed",
                                  f"group {group} is not in upstream.rtbh.groups: its addresses are not sacrificed"))
    return wishes, skips


__all__ = ["KINDS", "Announcement", "Kind", "Match", "Skip", "Wish", "flowspec_for", "rtbh_for", "wanted"]
