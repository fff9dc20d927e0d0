"""One build of a lab topology: namespaces, veth pairs, addresses, neighbours, routes.

The steps run in an order the kernel needs (agent/lab/topology.py's module
docstring says why): namespaces and their sysctls first, then the veth pairs
with IPv6 quiet before any address exists, forwarding, addresses and
permanent neighbours, links up, carrier, and the routes last. One netlink
socket per namespace serves the whole build: opening one in a namespace forks
a helper process, which would dominate the build time.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.lab import _ethtool, _netns
from agent.lab._errors import MissingFeatureError, NamespaceError, TopologyBuildError, TopologyError
from agent.lab._shapes import End, Iface, Link, Node

# Kernel constants (linux/rtnetlink.h, if_addr.h, neighbour.h, if.h).
NUD_PERMANENT = 0x80
_IFA_F_NODAD = 0x02
_IFF_NOARP = 0x80
_IFF_MULTICAST = 0x1000
_RTN_LOCAL = 2
_RTN_BLACKHOLE = 6
_RT_SCOPE_HOST = 254
_RT_TABLE_LOCAL = 255
_LOOPBACK_INDEX = 1



def _log() -> Any:
    return structlog.get_logger("agent.lab.topology")


def netlink_reason(exc: BaseException) -> str:
    if isinstance(exc, NetlinkError):
        return f"{os.strerror(exc.code)} (errno {exc.code})"
    return f"{type(exc).__name__}: {exc}"


def destroy_namespace(ns: str, ino: int | None) -> None:
    with suppress(FileNotFoundError, NamespaceError):
        _netns.delete_links(ns)
    with suppress(FileNotFoundError):
        _netns.remove(ns)
    if ino is not None:
        held = [pid for pid in _netns.holders(ino) if pid != os.getpid()]
        if held:
            # Its links are gone; what keeps it alive is no longer our business.
            _log().warning("namespace_still_held", ns=ns, pids=held)


def lookup(ipr: Any, ns: str, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise TopologyBuildError(f"interface {ifname} not found in namespace {ns}")
    return int(found[0])


class Builder:
    """Builds a topology's nodes and links; records each namespace in ``inodes`` as soon as it exists.

    ``inodes`` belongs to the caller, so that a build that fails halfway can
    be torn down.
    """

    def __init__(self, prefix: str, nodes: dict[str, Node], links: tuple[Link, ...], inodes: dict[str, int]) -> None:
        self.prefix = prefix
        self.nodes = nodes
        self.links = links
        self._inodes = inodes
        self._ifaces: dict[tuple[str, str], Iface] = {}
        self._session: dict[str, Any] = {}

    def ifname(self, name: str) -> str:
        return name if name.startswith(self.prefix) else self.prefix + name

    def run(self) -> dict[tuple[str, str], Iface]:
        """Build everything; return the built ends by (node, full interface name)."""
        try:
            self._steps()
        finally:
            for ipr in self._session.values():
                ipr.close()
            self._session.clear()
        return self._ifaces

    def _steps(self) -> None:
        owner = _netns.Owner.current()
        for node in self.nodes.values():
            self._create_namespace(node, owner)
        for node in self.nodes.values():
            self._configure_namespace(node)
        macs: dict[tuple[str, str], str] = {}
        for link in self.links:
            self._create_link(link)
            for end, _ in link.ends:
                macs[(end.node, end.ifname)] = self._prepare_end(link, end)
        for node in self.nodes.values():
            self._enable_forwarding(node)
        for link in self.links:
            for end, peer in link.ends:
                self._address_end(end, peer, macs[(peer.node, peer.ifname)])
        for link in self.links:
            for end, _ in link.ends:
                self._set_up(end)
        for link in self.links:
            for end, peer in link.ends:
                self._ifaces[(end.node, self.ifname(end.ifname))] = self._read_iface(link, end, peer)
        for node in self.nodes.values():
            self._build_routes(node)

    def _node_has_ipv6(self, node: Node) -> bool:
        return any(r.network.version == 6 for r in node.routes) or any(
            end.node == node.name and end.has_ipv6 for link in self.links for end, _ in link.ends
        )

    def _create_namespace(self, node: Node, owner: _netns.Owner) -> None:
        ns = self.prefix + node.name
        if _netns.exists(ns):
            _log().warning("stale_namespace_replaced", ns=ns, owner=str(_netns.read_owner(ns)))
            destroy_namespace(ns, _netns.inode(ns))
        try:
            self._inodes[ns] = _netns.create(ns, owner)
        except (OSError, NetlinkError) as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.EINVAL, errno.ENOSYS):
                raise MissingFeatureError(
                    f"cannot create network namespace {ns}: "
                    "the kernel lacks network namespaces (CONFIG_NET_NS)"
                ) from exc
            raise TopologyBuildError(f"cannot create network namespace {ns}: {netlink_reason(exc)}") from exc
        if _netns.inode(ns) is None:  # pragma: no cover - create() checks this
            raise TopologyBuildError(f"network namespace {ns} vanished while building")

    def _configure_namespace(self, node: Node) -> None:
        ns = self.prefix + node.name
        has_v6 = self._node_has_ipv6(node)
        local_v6 = any(r.kind == "local" and r.network.version == 6 for r in node.routes)

        def configure() -> None:
            if not os.path.isdir("/proc/sys/net/ipv6"):
                raise MissingFeatureError(
                    "the kernel has no IPv6 (CONFIG_IPV6, or ipv6.disable=1 on the command line): "
                    "the lab needs the IPv6 sysctls to keep links quiet"
                )
            for scope in ("all", "default"):
                # Applies to lo now and to every veth created later (they copy "default").
                for key, value in (
                    ("disable_ipv6", 1),
                    ("accept_ra", 0),
                    ("autoconf", 0),
                    ("router_solicitations", 0),
                    ("accept_dad", 0),
                    ("dad_transmits", 0),
                    ("addr_gen_mode", 1),
                    ("forwarding", 0),
                ):
                    _netns.write_sysctl(f"net.ipv6.conf.{scope}.{key}", value)
                _netns.write_sysctl(f"net.ipv4.conf.{scope}.rp_filter", node.rp_filter)
                if node.forwarding:
                    _netns.write_sysctl(f"net.ipv4.conf.{scope}.send_redirects", 0)
            _netns.write_sysctl("net.ipv4.ip_forward", int(node.forwarding))
            if has_v6:
                _netns.write_sysctl("net.ipv6.conf.lo.disable_ipv6", 0)
            if local_v6:
                _netns.write_sysctl("net.ipv6.ip_nonlocal_bind", 1)

        with self._step("configure sysctls", ns):
            _netns.run_in_thread(ns, configure)

    def _create_link(self, link: Link) -> None:
        a_ns, b_ns = self.prefix + link.a.node, self.prefix + link.b.node
        a_if, b_if = self.ifname(link.a.ifname), self.ifname(link.b.ifname)
        with self._step("create veth pair", a_ns, f"{a_if}<->{b_ns}/{b_if}"):
            peer: dict[str, Any] = {"ifname": b_if}
            fd = None
            if b_ns != a_ns:
                fd = os.open(_netns.netns_path(b_ns), os.O_RDONLY | os.O_CLOEXEC)
                peer["net_ns_fd"] = fd
            try:
                with self._ipr(a_ns) as ipr:
                    ipr.link("add", ifname=a_if, kind="veth", peer=peer)
            except NetlinkError as exc:
                if exc.code == errno.EOPNOTSUPP:
                    raise MissingFeatureError(
                        "the kernel cannot create veth pairs (CONFIG_VETH): "
                        "load the module with `modprobe veth`"
                    ) from exc
                raise
            finally:
                if fd is not None:
                    os.close(fd)

    def _prepare_end(self, link: Link, end: End) -> str:
        """Quiet flags, MTU, IPv6 on/off, offload features; return the end's MAC."""
        ns, ifname = self.prefix + end.node, self.ifname(end.ifname)
        with self._step("prepare interface", ns, ifname):
            with self._ipr(ns) as ipr:
                index = lookup(ipr, ns, ifname)
                ipr.link("set", index=index, mtu=link.mtu)
                # Before any IPv6 address exists: NOARP keeps solicited-node groups
                # (and their MLD reports) away, no MULTICAST keeps ff02::2 away.
                ipr.link("set", index=index, flags=_IFF_NOARP, change=_IFF_NOARP | _IFF_MULTICAST)
                mac = str(ipr.link("get", index=index)[0].get("IFLA_ADDRESS"))

            def configure() -> None:
                if end.has_ipv6:
                    _netns.write_sysctl(f"net.ipv6.conf.{ifname}.disable_ipv6", 0)
                _ethtool.set_features(
                    ifname, {_ethtool.GRO: end.gro, _ethtool.TX_CHECKSUM: link.tx_checksum_offload}
                )

            _netns.run_in_thread(ns, configure)
        return mac

    def _enable_forwarding(self, node: Node) -> None:
        if not (node.forwarding and self._node_has_ipv6(node)):
            return
        ns = self.prefix + node.name
        # Only now, with MULTICAST cleared on every veth: the kernel joins
        # ff02::2 (and reports it) on multicast-capable interfaces.
        with self._step("enable IPv6 forwarding", ns):
            _netns.run_in_thread(ns, lambda: _netns.write_sysctl("net.ipv6.conf.all.forwarding", 1))

    def _address_end(self, end: End, peer: End, peer_mac: str) -> None:
        ns, ifname = self.prefix + end.node, self.ifname(end.ifname)
        with self._ipr(ns) as ipr:
            index = lookup(ipr, ns, ifname)
            for addr in end.interfaces:
                with self._step("add address", ns, ifname, str(addr)):
                    flags = _IFA_F_NODAD if addr.version == 6 else 0
                    ipr.addr(
                        "add",
                        index=index,
                        address=str(addr.ip),
                        prefixlen=addr.network.prefixlen,
                        flags=flags,
                    )
            for peer_addr in peer.interfaces:
                with self._step("add permanent neighbour", ns, ifname, f"{peer_addr.ip} -> {peer_mac}"):
                    ipr.neigh(
                        "add", dst=str(peer_addr.ip), lladdr=peer_mac, ifindex=index, state=NUD_PERMANENT
                    )

    def _set_up(self, end: End) -> None:
        ns, ifname = self.prefix + end.node, self.ifname(end.ifname)
        with self._step("bring interface up", ns, ifname), self._ipr(ns) as ipr:
            ipr.link("set", index=lookup(ipr, ns, ifname), state="up")

    def _read_iface(self, link: Link, end: End, peer: End) -> Iface:  # noqa: ARG002 — one signature for every link kind
        ns, ifname = self.prefix + end.node, self.ifname(end.ifname)
        deadline = time.monotonic() + 5.0
        with self._step("wait for carrier", ns, ifname), self._ipr(ns) as ipr:
            index = lookup(ipr, ns, ifname)
            while True:
                info = ipr.link("get", index=index)[0]
                if info.get("IFLA_OPERSTATE") == "UP":
                    break
                if time.monotonic() > deadline:
                    raise TopologyBuildError(
                        f"interface {ifname} in {ns} is still {info.get('IFLA_OPERSTATE')} 5 s after "
                        "both ends were set up"
                    )
                time.sleep(0.01)
        return Iface(
            node=end.node,
            ns=ns,
            ifname=ifname,
            ifindex=index,
            mac=str(info.get("IFLA_ADDRESS")),
            addresses=end.interfaces,
            peer_ns=self.prefix + peer.node,
            peer_ifname=self.ifname(peer.ifname),
            mtu=int(info.get("IFLA_MTU")),
            gro=end.gro,
        )

    def _build_routes(self, node: Node) -> None:
        ns = self.prefix + node.name
        with self._ipr(ns) as ipr:
            for route in node.routes:
                what = f"{route.kind} {route.dst}" + (f" via {route.via}" if route.via else "")
                with self._step("add route", ns, what):
                    if route.kind == "via":
                        ipr.route("add", dst=route.dst, gateway=route.via)
                    elif route.kind == "blackhole":
                        ipr.route("add", dst=route.dst, type=_RTN_BLACKHOLE)
                    else:
                        ipr.route(
                            "add",
                            dst=route.dst,
                            type=_RTN_LOCAL,
                            scope=_RT_SCOPE_HOST,
                            table=_RT_TABLE_LOCAL,
                            oif=_LOOPBACK_INDEX,
                        )

    @contextmanager
    def _step(self, what: str, ns: str, *detail: str) -> Iterator[None]:
        try:
            yield
        except TopologyError:
            raise
        except (NetlinkError, OSError, NamespaceError) as exc:
            where = " ".join((ns, *detail))
            raise TopologyBuildError(f"{what} failed in {where}: {netlink_reason(exc)}") from exc

    @contextmanager
    def _ipr(self, ns: str) -> Iterator[Any]:
        if ns not in self._session:
            self._session[ns] = IPRoute(netns=ns, flags=0)
        yield self._session[ns]


__all__ = ["NUD_PERMANENT", "Builder", "destroy_namespace", "lookup", "netlink_reason"]
