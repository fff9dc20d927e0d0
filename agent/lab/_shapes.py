"""The lab topology's declarations (nodes, links, ends, routes) and what a build returns.

See agent/lab/topology.py for how they are built and torn down.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from typing import Literal

from agent.lab import _netns
from agent.lab._errors import TopologyError

Address = IPv4Address | IPv6Address
Interface = IPv4Interface | IPv6Interface
Network = IPv4Network | IPv6Network


RouteKind = Literal["via", "blackhole", "local"]


@dataclass(frozen=True)
class Route:
    """One route of a node.

    ``kind="via"``: ``dst`` through next hop ``via``; ``"blackhole"``: drop
    silently; ``"local"``: deliver every address of ``dst`` locally (a route in
    the local table on ``lo``, like ``ip route add local``). ``dst`` is a network
    such as ``"203.0.113.0/24"``; the default routes are ``"0.0.0.0/0"`` and
    ``"::/0"``.
    """

    dst: str
    via: str | None = None
    kind: RouteKind = "via"

    def __post_init__(self) -> None:
        try:
            network = ipaddress.ip_network(self.dst)
        except ValueError as exc:
            raise ValueError(f"route destination {self.dst!r} is not a network: {exc}") from None
        if (self.kind == "via") != (self.via is not None):
            raise ValueError(f"route to {self.dst}: a next hop (via=) is needed exactly for kind='via'")
        if self.via is not None and ipaddress.ip_address(self.via).version != network.version:
            raise ValueError(f"route to {self.dst}: next hop {self.via} is of the other IP version")

    @property
    def network(self) -> Network:
        return ipaddress.ip_network(self.dst)


@dataclass(frozen=True)
class Node:
    """A network namespace. Routers get ``forwarding=True``."""

    name: str
    forwarding: bool = False
    rp_filter: int = 0
    routes: tuple[Route, ...] = ()


@dataclass(frozen=True)
class End:
    """One end of a veth pair: node, interface name (unprefixed), addresses with prefix length.

    ``gro=True`` enables GRO, which gives the end a NAPI receive ring; XDP_TX
    and XDP_REDIRECT from its *peer* need that (see the module docstring).
    """

    node: str
    ifname: str
    addresses: tuple[str, ...] = ()
    gro: bool = False

    @property
    def interfaces(self) -> tuple[Interface, ...]:
        return tuple(ipaddress.ip_interface(a) for a in self.addresses)

    @property
    def has_ipv6(self) -> bool:
        return any(i.version == 6 for i in self.interfaces)


@dataclass(frozen=True)
class Link:
    """A veth pair between two ends."""

    a: End
    b: End
    mtu: int = 1500
    tx_checksum_offload: bool = False

    @property
    def ends(self) -> tuple[tuple[End, End], tuple[End, End]]:
        """``((end, peer), (peer, end))``."""
        return ((self.a, self.b), (self.b, self.a))


# --- built objects ----------------------------------------------------------------------


@dataclass(frozen=True)
class Iface:
    """One built end of a veth pair, as seen inside its namespace."""

    node: str
    ns: str
    ifname: str
    ifindex: int
    mac: str
    addresses: tuple[Interface, ...]
    peer_ns: str
    peer_ifname: str
    mtu: int
    gro: bool

    @property
    def netns_path(self) -> str:
        return _netns.netns_path(self.ns)

    @property
    def has_ipv6(self) -> bool:
        return any(a.version == 6 for a in self.addresses)

    @property
    def ipv4(self) -> IPv4Address:
        """The first IPv4 address (raises :class:`TopologyError` if there is none)."""
        for a in self.addresses:
            if isinstance(a, IPv4Interface):
                return a.ip
        raise TopologyError(f"interface {self.ifname} in {self.ns} has no IPv4 address")

    @property
    def ipv6(self) -> IPv6Address:
        """The first IPv6 address (raises :class:`TopologyError` if there is none)."""
        for a in self.addresses:
            if isinstance(a, IPv6Interface):
                return a.ip
        raise TopologyError(f"interface {self.ifname} in {self.ns} has no IPv6 address")


@dataclass(frozen=True)
class LinkStats:
    """Interface counters (IFLA_STATS64)."""

    rx_packets: int
    tx_packets: int
    rx_bytes: int
    tx_bytes: int
    rx_dropped: int
    tx_dropped: int

    @property
    def packets(self) -> int:
        return self.rx_packets + self.tx_packets


# --- the topology ----------------------------------------------------------------------


__all__ = ["Address", "End", "Iface", "Interface", "Link", "LinkStats", "Network", "Node", "Route", "RouteKind"]
