"""The ``upstream:`` block: asking the upstream over BGP for help when the uplink is full.

Flowspec rules (RFC 8955/8956) and remotely triggered blackholing (RFC 7999)
are announced through a GoBGP speaker (agent/upstream). Everything that
limits what may be sent is here, as data, checked before anything is sent:
the kinds allowed, the groups whose addresses RTBH may sacrifice, the
shortest prefix per kind, the most announcements at once, a rate limit on
new ones, and monitor mode. See docs/policy.md, section ``upstream``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.policy._fields import Unit

#: A BGP address family the speaker negotiates with a peer (GoBGP's names).
Family = Literal["ipv4-flowspec", "ipv6-flowspec", "ipv4-unicast", "ipv6-unicast"]
FAMILIES: tuple[Family, ...] = ("ipv4-flowspec", "ipv6-flowspec", "ipv4-unicast", "ipv6-unicast")
MAX_ASN = 4_294_967_295
_NAME = re.compile(r"^[a-z0-9_-]{1,63}$")
_COMMUNITY = re.compile(r"^(\d+):(\d+)$")
_LARGE = re.compile(r"^(\d+):(\d+):(\d+)$")

Asn = Annotated[int, Unit("count", 1, MAX_ASN)]
Seconds = Annotated[float, Unit("duration", 1, 86400)]


class _Model(BaseModel):
    """Frozen, no unknown keys; a key left empty (YAML null) takes its default, as in model.py."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _blank_is_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k not in cls.model_fields
                    or cls.model_fields[k].default is None}
        return data


def parse_community(text: str) -> tuple[int, int]:
    """``"65535:666"`` -> (65535, 666): a standard community, two 16-bit halves."""
    m = _COMMUNITY.match(text.strip())
    if m is None or int(m[1]) > 65535 or int(m[2]) > 65535:
        raise ValueError(f"'{text}' is not a community: write ASN:VALUE, both 0..65535 (e.g. 65535:666)")
    return int(m[1]), int(m[2])


def parse_large_community(text: str) -> tuple[int, int, int]:
    """``"64500:1001:0"`` -> (64500, 1001, 0): a large community (RFC 8092), three 32-bit parts."""
    m = _LARGE.match(text.strip())
    if m is None or any(int(x) > MAX_ASN for x in m.groups()):
        raise ValueError(f"'{text}' is not a large community: write ASN:FUNCTION:VALUE, each 0..4294967295")
    return int(m[1]), int(m[2]), int(m[3])


def _communities(values: tuple[str, ...]) -> tuple[str, ...]:
    for v in values:
        if _LARGE.match(v.strip()):
            parse_large_community(v)
        else:
            parse_community(v)
    return tuple(v.strip() for v in values)


class Peer(_Model):
    """One BGP neighbour the speaker talks to (the upstream, a local router, a route reflector)."""

    name: str = Field(description="label in logs, metrics and `floodguard upstream`: a-z, 0-9, '_', '-'")
    address: str = Field(description="the neighbour's address")
    asn: Asn = Field(description="the neighbour's AS number (equal to upstream.asn: iBGP)")
    families: tuple[Family, ...] = Field(
        default=FAMILIES, description="address families: ipv4/ipv6-flowspec for Flowspec, ipv4/ipv6-unicast for RTBH"
    )
    port: Annotated[int, Unit("count", 1, 65535)] = Field(default=179, description="the neighbour's TCP port")
    passive: bool = Field(
        default=False, description="wait for the neighbour to connect (needs speaker.listen) instead of connecting"
    )
    local_address: str | None = Field(default=None, description="source address of the session")
    multihop: Annotated[int, Unit("count", 1, 255)] | None = Field(
        default=None, description="eBGP multihop TTL, for a neighbour that is not directly connected"
    )
    route_reflector_client: bool = Field(default=False, description="iBGP: treat the neighbour as a reflector client")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"'{value}' is not a valid peer name: use a-z, 0-9, '_' and '-' (up to 63 characters)")
        return value

    @field_validator("address", "local_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"'{value}' is not an IP address") from None

    @field_validator("families")
    @classmethod
    def _families(cls, value: tuple[Family, ...]) -> tuple[Family, ...]:
        if not value:
            raise ValueError("a peer needs at least one family")
        if len(set(value)) != len(value):
            raise ValueError("a family appears twice")
        return value


class Speaker(_Model):
    """The GoBGP daemon floodguard drives (`floodguard speaker` runs and configures it)."""

    api: Path = Field(
        default=Path("/run/floodguard-speaker/gobgp.sock"),
        description="gobgpd's gRPC API, a Unix socket (never a TCP port: nothing but this host may use it)",
    )
    listen: str | None = Field(
        default=None,
        description="address:port gobgpd accepts sessions on; null = connect out only, no listener "
        "(BIRD or FRR may own port 179 already)",
    )
    gobgpd: Path = Field(default=Path("/usr/bin/gobgpd"), description="the gobgpd binary")

    @field_validator("api", "gobgpd")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"{value} is a relative path; write an absolute path starting with /")
        return value

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"'{value}' is not address:port, e.g. 192.0.2.2:1179 or [2001:db8::2]:179") from None
        if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"'{value}' is not address:port, e.g. 192.0.2.2:1179 or [2001:db8::2]:179")
        return value

    @property
    def listen_host_port(self) -> tuple[str, int] | None:
        if self.listen is None:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class Shortest(_Model):
    """The shortest prefix that may be announced, per IP version."""

    ipv4: Annotated[int, Unit("count", 0, 32)] = Field(description="shortest IPv4 prefix length")
    ipv6: Annotated[int, Unit("count", 0, 128)] = Field(description="shortest IPv6 prefix length")


class Flowspec(_Model):
    """Flowspec rules matching the attack's shape (RFC 8955, RFC 8956 for IPv6)."""

    enabled: bool = Field(default=True, description="announce Flowspec rules for escalated attacks")
    action: Literal["discard", "rate_limit"] = Field(
        default="discard", description="traffic-rate 0 (discard) or traffic-rate `rate`"
    )
    rate: Annotated[int, Unit("bps", 8, 1_000_000_000_000)] | None = Field(
        default=None, description="with action rate_limit: the rate matching traffic may keep, in bits/s"
    )
    communities: tuple[str, ...] = Field(default=(), description="communities added to every rule")
    shortest: Shortest = Field(
        default_factory=lambda: Shortest(ipv4=24, ipv6=48), description="shortest destination prefix of a rule"
    )

    _c = field_validator("communities")(_communities)

    @model_validator(mode="after")
    def _rate(self) -> Flowspec:
        if self.action == "rate_limit" and self.rate is None:
            raise ValueError("action rate_limit needs a rate, e.g. rate: 10Mbit")
        if self.action == "discard" and self.rate is not None:
            raise ValueError("rate is for action rate_limit; with discard, remove it")
        return self


class NextHop(_Model):
    """The next hop of RTBH routes; null = this speaker's own session address."""

    ipv4: str | None = Field(default=None, description="next hop of IPv4 RTBH routes")
    ipv6: str | None = Field(default=None, description="next hop of IPv6 RTBH routes")

    @field_validator("ipv4", "ipv6")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"'{value}' is not an IP address") from None


class Rtbh(_Model):
    """Remotely triggered blackholing (RFC 7999): the upstream drops ALL traffic to the address."""

    enabled: bool = Field(default=True, description="announce RTBH for attacks on groups listed in `groups`")
    groups: tuple[str, ...] = Field(
        default=(), description="protected groups whose addresses RTBH may sacrifice (none by default)"
    )
    communities: tuple[str, ...] = Field(
        default=("65535:666",), description="communities of every RTBH route: BLACKHOLE, plus your provider's own"
    )
    next_hop: NextHop = Field(default_factory=NextHop)
    shortest: Shortest = Field(
        default_factory=lambda: Shortest(ipv4=32, ipv6=128), description="shortest prefix of an RTBH route"
    )

    _c = field_validator("communities")(_communities)


class Upstream(_Model):
    """Upstream escalation over BGP; absent = never announce anything."""

    asn: Asn = Field(description="this gateway's AS number")
    router_id: str = Field(description="BGP router id, an IPv4 address")
    peers: tuple[Peer, ...] = Field(description="BGP neighbours to announce to")
    speaker: Speaker = Field(default_factory=Speaker)
    flowspec: Flowspec = Field(default_factory=Flowspec)
    rtbh: Rtbh = Field(default_factory=Rtbh)
    tag: str | None = Field(
        default=None,
        description="large community marking floodguard's announcements (default ASN:1001:0); "
        "the expiry rides in ASN:FUNCTION+1:UNIX-TIME",
    )
    max_announcements: Annotated[int, Unit("count", 1, 100_000)] = Field(
        default=100, description="most announcements at once, both kinds together"
    )
    changes_per_minute: Annotated[int, Unit("count", 1, 100_000)] = Field(
        default=60, description="most new announcements per minute (withdrawals are never held back)"
    )
    ttl: Annotated[float, Unit("duration", 5, 7 * 86400)] = Field(
        default=600.0, description="expiry of an announcement, refreshed while its attack lasts; "
        "the speaker withdraws it on its own once passed"
    )
    hold_down: Annotated[float, Unit("duration", 0, 86400)] = Field(
        default=60.0, description="how long an announcement stays after its attack ended"
    )
    monitor: bool = Field(default=False, description="log what would be announced, announce nothing")

    @field_validator("router_id")
    @classmethod
    def _router_id(cls, value: str) -> str:
        try:
            return str(ipaddress.IPv4Address(value))
        except ValueError:
            raise ValueError(f"'{value}' is not an IPv4 address (BGP router ids are written as one)") from None

    @field_validator("tag")
    @classmethod
    def _tag(cls, value: str | None) -> str | None:
        if value is not None:
            parse_large_community(value)
        return value

    @model_validator(mode="after")
    def _peers(self) -> Upstream:
        names = [p.name for p in self.peers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"peer name {', '.join(dup)} is used twice")
        if not self.peers:
            raise ValueError("upstream needs at least one peer")
        if any(p.passive for p in self.peers) and self.speaker.listen is None:
            raise ValueError("a passive peer waits for the neighbour to connect: set speaker.listen")
        return self

    @property
    def tag_community(self) -> tuple[int, int, int]:
        return parse_large_community(self.tag) if self.tag else (self.asn, 1001, 0)

    @property
    def expiry_function(self) -> tuple[int, int]:
        """(global admin, function) of the large community that carries an announcement's expiry."""
        g, f, _ = self.tag_community
        return g, f + 1


def check_upstream(upstream: Upstream | None, groups: list[str], at: Callable[..., Any]) -> None:
    """Cross-field rules: rtbh.groups name protected groups."""
    if upstream is None:
        return
    known = set(groups)
    for i, name in enumerate(upstream.rtbh.groups):
        if name not in known:
            at(("upstream", "rtbh", "groups", i), f"no protected group is called '{name}'")


__all__ = [
    "FAMILIES",
    "Family",
    "Flowspec",
    "NextHop",
    "Peer",
    "Rtbh",
    "Shortest",
    "Speaker",
    "Upstream",
    "check_upstream",
    "parse_community",
    "parse_large_community",
]
