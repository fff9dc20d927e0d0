"""Throwaway network-namespace topologies for the demo, the tests and the benchmarks.

A :class:`Topology` is declared from :class:`Node` s (network namespaces, with
their :class:`Route` s) and :class:`Link` s (veth pairs whose two :class:`End` s
carry addresses), then built with pyroute2 only: ``pyroute2.netns`` creates the
namespaces, ``IPRoute(netns=...)`` creates veths, addresses, neighbours and
routes. Nothing shells out to ``ip``; nothing uses ``ip netns exec`` (it
remounts ``/sys`` and hides bpffs). Programs are started in a namespace with
``nsenter --net=/run/netns/NAME -- argv`` (:meth:`Topology.popen`,
:meth:`Topology.run`); Python code enters one with :meth:`Topology.socket`,
:meth:`Topology.call` (a thread that ``setns`` es) or
:meth:`Topology.call_in_child` (a forked child, for code that reads
``/proc/self/net``, such as scapy).

Two ready-made shapes:

- :func:`build_pair` - namespaces ``sender`` and ``target`` joined by one veth
  pair (``snd`` <-> ``tgt``): attach XDP to the target end, send from the sender.
- :func:`build_lab` - attackers and clients behind an upstream router, a
  gateway that routes to a protected server network (see the plan below).

Names
-----
Every namespace is ``<prefix><node>`` and every interface ``<prefix><name>``,
where the prefix defaults to :func:`run_prefix` (``fg<pid in base 36>-``), so
parallel runs never collide and leftovers are recognisable. Interface names
must fit Linux's 15 characters; the constructor says so if they do not. Each
namespace records its builder (pid and start time) in the alias of its ``lo``;
:func:`cleanup_stale` removes namespaces whose builder is dead and leaves
those of live runs (and namespaces it did not build) alone.

Teardown is guaranteed: :class:`Topology` (and :class:`VethPair`, :class:`Lab`)
are context managers; a failed or interrupted (``KeyboardInterrupt``) build
tears down what it made before re-raising; an ``atexit`` hook catches
forgotten topologies; building over an existing namespace of the same name
destroys the old one first; a topology only ever destroys the namespaces it
created itself (checked by inode), so tearing down a stale object never hurts
a newer build of the same names. Processes started with :meth:`Topology.popen`
are terminated first. A SIGKILLed run leaves namespaces behind; the next
:func:`cleanup_stale` removes them.

Quiet links
-----------
After :meth:`Topology.build` returns, no interface sends or receives a single
packet that a test did not cause (the integration tests assert all counters
stay at zero). How:

- IPv6 is off (``disable_ipv6=1`` for ``all``/``default``) in every namespace
  and switched on per interface only where an IPv6 address is configured
  (and on ``lo`` of namespaces that use IPv6: local routes need it).
  ``accept_ra=0``, ``autoconf=0``, ``router_solicitations=0`` (no router
  solicitations), ``addr_gen_mode=1`` (no link-local address), ``accept_dad=0``,
  ``dad_transmits=0`` and every address added with ``IFA_F_NODAD`` (no DAD).
- Every veth end is ``NOARP`` and not ``MULTICAST``. ``NOARP`` stops ARP and
  also stops the kernel joining the solicited-node group of each IPv6 address
  (``addrconf_join_solict`` skips NOARP devices), which would otherwise send
  MLDv2 reports for several hundred milliseconds after the link comes up; no
  ``MULTICAST`` keeps routers out of ff02::2. IPv6 forwarding is switched on
  only after that flag is cleared. (``net.ipv6.mld_qrv`` would only shorten
  the reports and is global to the host, so it is not touched.)
- Every neighbour (ARP/NDP) that routing needs is a permanent entry: each end
  knows every address of its peer and the peer's MAC. A packet to an on-link
  address that is not a configured peer address leaves with the sender's own
  MAC as destination (the NOARP rule); the peer's XDP program still sees it,
  its stack drops it. Add a neighbour (:meth:`Topology.add_neighbour`) if a
  test needs the stack to accept such traffic. ARP requests sent by a test are
  not answered by a NOARP stack.
- Routers get ``send_redirects=0``; the upstream router's default route is a
  blackhole (silent: no ICMP unreachable back).

Other kernel settings: ``rp_filter=0`` (``all`` and ``default``; per node
configurable) because spoofed sources cross every namespace of the lab;
``ip_forward`` and IPv6 forwarding on router nodes; ``net.ipv6.ip_nonlocal_bind=1``
where an IPv6 ``local`` route makes a whole range local (so a server can bind
one address of it; IPv4 needs nothing). Transmit checksum offload is off on
every end unless a link asks for it (``tx_checksum_offload=True``): frames on
the wire then carry complete L4 checksums, as on a real wire. With it on, a
socket's UDP/TCP packets cross the veth with only the pseudo-header sum
(CHECKSUM_PARTIAL), which an XDP program sees and which turns into a bad
checksum once the frame is bounced with XDP_TX.

XDP_TX on a veth (measured on Linux 6.18)
-----------------------------------------
A native-mode XDP program on one end (the *target*) that answers with XDP_TX
hands the frame to the peer end's NAPI receive ring:

1. If the peer has neither an XDP program nor GRO, it has no NAPI and the
   frame is dropped (``ethtool -S <target>``: ``rx_queue_N_xdp_tx_errors``).
2. GRO on the peer (``End(gro=True)``; :func:`build_pair` sets it on the
   sender, :func:`build_lab` on ``up-gw`` and ``srv-gw``) gives the peer NAPI,
   so XDP_TX succeeds (``xdp_tx`` counts it) - but the frame is *not
   delivered*: after XDP_TX the driver kicks the peer's NAPI only if the peer
   has an XDP program (``veth_xdp_flush`` in drivers/net/veth.c), so the
   frame waits in the ring until later traffic from the target's stack
   happens to schedule that queue (seen: it arrives with the next such packet).
3. Therefore the caller must also attach an XDP program that returns XDP_PASS
   to the peer end (native mode). Then the reply reaches the peer namespace's
   stack at once.
4. The bounced frame must carry a valid L4 checksum: keep transmit checksum
   offload off on the sender (the default here) or fix the checksum in the
   program; otherwise the stack drops it (``Udp InCsumErrors``).

XDP_REDIRECT into a veth (also measured) uses the same ring but flushes it
explicitly, so GRO or an XDP program on the peer of the redirect target is
enough; with neither, the frame is dropped (``rx_queue_N_drops`` of the
redirecting interface).

Lab address plan (:func:`build_lab`)
------------------------------------
::

    atk<i> ─a<i>-up──up-a<i>─┐                                     (AnyIP)
    cli<i> ─c<i>-up──up-c<i>─┤ up ─up-gw────gw-in─ gw ─gw-srv────srv-gw─ srv
                                     ingress link      server link

    namespace  role                      interfaces (prefixed)
    atk<i>     attacker i (foreign)      a<i>-up  198.18.<i>.2/24   2001:db8:f:<i>::2/64
    cli<i>     client i (domestic)       c<i>-up  100.64.<i>.2/24   2001:db8:d:<i>::2/64
    up         upstream router           up-a<i>/up-c<i> (.1 / ::1), up-gw 192.0.2.1/24 2001:db8:1::1/64
    gw         protected gateway         gw-in 192.0.2.2/24 2001:db8:1::2/64  <- floodguard attaches here
                                         gw-srv 198.51.100.1/24 2001:db8:2::1/64
    srv        server network            srv-gw 198.51.100.2/24 2001:db8:2::2/64;
                                         all of 203.0.113.0/24 and 2001:db8:5::/64 are local

(``<i>`` is written in hex inside IPv6 addresses.) Foreign ranges are
198.18.0.0/15 and 2001:db8:f::/48, domestic ranges 100.64.0.0/10 and
2001:db8:d::/48. Attackers and clients route by default to
``up``; ``up`` routes the server ranges to ``gw`` and blackholes everything
it does not know; ``gw`` routes the server ranges to ``srv`` and everything
else back to ``up``; ``srv`` routes everything to ``gw``. A spoofed packet
from an attacker therefore reaches the server, and the server's reply dies
silently in ``up``'s blackhole (unless the spoofed address is a real lab host).
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from types import TracebackType
from typing import Any, Self, TypeVar

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.lab import _ethtool, _netns
from agent.lab._build import NUD_PERMANENT, Builder, destroy_namespace, lookup, netlink_reason
from agent.lab._errors import (
    InvalidNameError,
    MissingFeatureError,
    NamespaceCallError,
    NamespaceError,
    NotRootError,
    TeardownError,
    TopologyBuildError,
    TopologyError,
)
from agent.lab._shapes import End, Iface, Link, LinkStats, Network, Node, Route

__all__ = [
    "FAMILY_PREFIX",
    "End",
    "Iface",
    "InvalidNameError",
    "Lab",
    "Link",
    "LinkStats",
    "MissingFeatureError",
    "NamespaceCallError",
    "NamespaceError",
    "Node",
    "NotRootError",
    "Route",
    "TeardownError",
    "Topology",
    "TopologyBuildError",
    "TopologyError",
    "VethPair",
    "build_lab",
    "build_pair",
    "cleanup_stale",
    "lab_topology",
    "pair_topology",
    "run_prefix",
]

T = TypeVar("T")

FAMILY_PREFIX = "fg"
"""Every prefix made by :func:`run_prefix` starts with this."""

IFNAME_MAX = 15  # IFNAMSIZ - 1
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

def _log() -> Any:
    return structlog.get_logger("agent.lab.topology")


# --- errors ------------------------------------------------------------------------


def _require_root() -> None:
    if os.geteuid() != 0:
        raise NotRootError(
            "building network namespaces and veth pairs needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN): "
            "run as root, e.g. `sudo make test`"
        )


def _to_base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def run_prefix(tag: str = "") -> str:
    """A name prefix unique to this process: ``fg<pid in base 36><tag>-``.

    ``tag`` tells several topologies of one process apart (``run_prefix("b")``).
    """
    return f"{FAMILY_PREFIX}{_to_base36(os.getpid())}{tag}-"


# --- declaration -----------------------------------------------------------------------

def _check_name(kind: str, name: str, limit: int) -> None:
    if not name or not _NAME_RE.match(name):
        raise InvalidNameError(f"{kind} name {name!r} is not usable: use letters, digits, '_', '.', '-' only")
    if len(name.encode()) > limit:
        raise InvalidNameError(
            f"{kind} name {name!r} is {len(name.encode())} characters; Linux allows at most {limit}: "
            "use a shorter prefix or name"
        )


class Topology:
    """Namespaces, veth pairs, addresses, neighbours and routes, built and torn down as one.

    Methods that act in a namespace take either a node name (``"gw"``) or the
    full namespace name (``"fg1k2-gw"``).
    """

    def __init__(self, prefix: str, nodes: Iterable[Node], links: Iterable[Link]) -> None:
        self.prefix = prefix
        self.nodes: dict[str, Node] = {}
        self.links: tuple[Link, ...] = tuple(links)
        self._inodes: dict[str, int] = {}
        self._ifaces: dict[tuple[str, str], Iface] = {}
        self._processes: list[subprocess.Popen[Any]] = []
        self._built = False
        for node in nodes:
            if node.name in self.nodes:
                raise ValueError(f"node {node.name!r} is declared twice")
            _check_name("namespace", prefix + node.name, _netns.NAME_MAX)
            self.nodes[node.name] = node
        seen: set[tuple[str, str]] = set()
        for link in self.links:
            if not 68 <= link.mtu <= 65535:
                raise ValueError(
                    f"link {link.a.ifname}<->{link.b.ifname}: MTU {link.mtu} is outside 68..65535"
                )
            for end, _ in link.ends:
                if end.node not in self.nodes:
                    raise ValueError(f"interface {end.ifname} is on unknown node {end.node!r}")
                if (end.node, end.ifname) in seen:
                    raise ValueError(f"interface {end.ifname} is declared twice on node {end.node}")
                seen.add((end.node, end.ifname))
                _check_name("interface", prefix + end.ifname, IFNAME_MAX)
                for address in end.addresses:
                    try:
                        ipaddress.ip_interface(address)
                    except ValueError as exc:
                        raise ValueError(f"interface {end.ifname}: bad address {address!r}: {exc}") from None
                if end.has_ipv6 and link.mtu < 1280:
                    raise ValueError(f"interface {end.ifname} has IPv6 but MTU {link.mtu} < 1280")

    # -- names -------------------------------------------------------------------------

    def netns(self, node: str) -> str:
        """Full namespace name of ``node`` (a node name or an already full name)."""
        if node in self.nodes:
            return self.prefix + node
        if node.startswith(self.prefix) and node[len(self.prefix) :] in self.nodes:
            return node
        raise TopologyError(f"unknown node {node!r}; this topology has {', '.join(sorted(self.nodes))}")

    def netns_path(self, node: str) -> str:
        return _netns.netns_path(self.netns(node))

    def ifname(self, name: str) -> str:
        """Full interface name of an unprefixed one."""
        return name if name.startswith(self.prefix) else self.prefix + name

    @property
    def namespaces(self) -> tuple[str, ...]:
        return tuple(self.prefix + n for n in self.nodes)

    @property
    def built(self) -> bool:
        return self._built

    @property
    def ifaces(self) -> tuple[Iface, ...]:
        """Every built link end."""
        return tuple(self._ifaces.values())

    def iface(self, node: str, ifname: str) -> Iface:
        """The built end ``ifname`` (prefixed or not) on ``node``."""
        ns = self.netns(node)
        key = (ns[len(self.prefix) :], self.ifname(ifname))
        try:
            return self._ifaces[key]
        except KeyError:
            state = "" if self._built else " (the topology is not built)"
            raise TopologyError(f"no interface {key[1]} on node {key[0]}{state}") from None

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.build()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.teardown()
        except TeardownError as err:
            if exc is None:
                raise
            _log().error("topology_teardown_failed", prefix=self.prefix, error=str(err))

    def build(self) -> Self:
        """Create everything; on any failure (or interrupt) remove it again and re-raise.

        Building an already built topology does nothing.
        """
        if self._built:
            return self
        _require_root()
        started = time.monotonic()
        atexit.register(self._teardown_at_exit)
        try:
            self._ifaces.update(Builder(self.prefix, self.nodes, self.links, self._inodes).run())
        except BaseException as exc:
            try:
                self.teardown()
            except TeardownError as err:
                _log().error("topology_teardown_failed", prefix=self.prefix, error=str(err))
            if isinstance(exc, NetlinkError | OSError):
                raise TopologyBuildError(f"building topology {self.prefix}*: {netlink_reason(exc)}") from exc
            raise
        self._built = True
        _log().info(
            "topology_built",
            prefix=self.prefix,
            namespaces=list(self.namespaces),
            links=len(self.links),
            seconds=round(time.monotonic() - started, 3),
        )
        return self

    def teardown(self) -> None:
        """Stop started processes, delete links, remove namespaces. Safe to call again."""
        atexit.unregister(self._teardown_at_exit)
        problems: list[str] = []
        self._stop_processes()
        for ns, ino in reversed(list(self._inodes.items())):
            if _netns.inode(ns) != ino:
                # Gone already, or replaced by a newer build that owns it now.
                continue
            try:
                destroy_namespace(ns, ino)
            except Exception as exc:  # noqa: BLE001 — teardown goes on and reports every failure at the end
                problems.append(f"{ns}: {netlink_reason(exc)}")
        removed = list(self._inodes)
        self._inodes.clear()
        self._ifaces.clear()
        self._built = False
        if problems:
            raise TeardownError(
                "could not remove " + "; ".join(problems) + f" - run cleanup_stale({self.prefix!r}) as root"
            )
        if removed:
            _log().info("topology_torn_down", prefix=self.prefix, namespaces=removed)

    def _teardown_at_exit(self) -> None:
        try:
            self.teardown()
        except TopologyError as err:
            _log().error("topology_teardown_failed", prefix=self.prefix, error=str(err))

    # -- working inside namespaces --------------------------------------------------------

    @contextmanager
    def iproute(self, ns: str) -> Iterator[Any]:
        """A pyroute2 ``IPRoute`` bound to namespace ``ns`` (closed on exit)."""
        with IPRoute(netns=self.netns(ns), flags=0) as ipr:
            yield ipr

    def nsenter_argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        """``nsenter --net=/run/netns/NAME -- argv...``."""
        return _netns.nsenter_argv(self.netns(ns), list(argv))

    def popen(self, ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in namespace ``ns``; teardown terminates it if it still runs."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self.nsenter_argv(ns, argv), **kwargs)
        self._processes.append(proc)
        return proc

    def run(
        self, ns: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30.0, **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` in namespace ``ns`` to completion (output captured unless overridden)."""
        kwargs.setdefault("capture_output", True)
        return subprocess.run(self.nsenter_argv(ns, argv), check=check, timeout=timeout, **kwargs)

    def socket(
        self, ns: str, family: int = socket.AF_INET, type: int = socket.SOCK_DGRAM, proto: int = 0  # noqa: A002 — socket.socket's own parameter names
    ) -> socket.socket:
        """A socket that lives in namespace ``ns`` (created by a thread that entered it)."""
        return _netns.run_in_thread(self.netns(ns), lambda: socket.socket(family, type, proto))

    def call(self, ns: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` in a thread inside namespace ``ns`` and return its result.

        Fine for syscalls and sockets; ``/proc/self/net`` still shows the
        process's own namespace there (use ``/proc/thread-self/net`` or
        :meth:`call_in_child`).
        """
        return _netns.run_in_thread(self.netns(ns), fn)

    def call_in_child(self, ns: str, fn: Callable[[], T], *, timeout: float = 30.0) -> T:
        """Run ``fn`` in a forked child inside namespace ``ns``; the result must be picklable."""
        return _netns.run_in_child(self.netns(ns), fn, timeout=timeout)

    def sysctl(self, ns: str, key: str) -> str:
        """Read sysctl ``key`` (dotted) in namespace ``ns``."""
        return _netns.run_in_thread(self.netns(ns), lambda: _netns.read_sysctl(key))

    def set_sysctl(self, ns: str, key: str, value: int | str) -> None:
        """Write sysctl ``key`` (dotted) in namespace ``ns``."""
        _netns.run_in_thread(self.netns(ns), lambda: _netns.write_sysctl(key, value))

    def features(self, ns: str, ifname: str) -> dict[str, bool]:
        """The ``ethtool -k`` features of ``ifname`` in namespace ``ns``."""
        full = self.ifname(ifname)
        return _netns.run_in_thread(self.netns(ns), lambda: _ethtool.get_features(full))

    def set_features(self, ns: str, ifname: str, wanted: dict[str, bool]) -> None:
        """``ethtool -K``: switch features of ``ifname`` in namespace ``ns``."""
        full = self.ifname(ifname)
        _netns.run_in_thread(self.netns(ns), lambda: _ethtool.set_features(full, wanted))

    def link_stats(self, ns: str, ifname: str) -> LinkStats:
        """Packet and byte counters of ``ifname`` in namespace ``ns``."""
        full = self.ifname(ifname)
        with self.iproute(ns) as ipr:
            link = ipr.link("get", index=lookup(ipr, self.netns(ns), full))[0]
        s = link.get("IFLA_STATS64")
        return LinkStats(
            rx_packets=int(s["rx_packets"]),
            tx_packets=int(s["tx_packets"]),
            rx_bytes=int(s["rx_bytes"]),
            tx_bytes=int(s["tx_bytes"]),
            rx_dropped=int(s["rx_dropped"]),
            tx_dropped=int(s["tx_dropped"]),
        )

    def add_neighbour(self, ns: str, ifname: str, address: str, mac: str) -> None:
        """Add a permanent ARP/NDP entry (the links never resolve neighbours themselves)."""
        full = self.ifname(ifname)
        with self.iproute(ns) as ipr:
            index = lookup(ipr, self.netns(ns), full)
            ipr.neigh("add", dst=address, lladdr=mac, ifindex=index, state=NUD_PERMANENT)

    def _stop_processes(self) -> None:
        for proc in self._processes:
            if proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            _log().info("lab_process_stopped", pid=proc.pid, args=proc.args)
        self._processes.clear()


def cleanup_stale(prefix: str = FAMILY_PREFIX, *, include_live: bool = False) -> list[str]:
    """Remove namespaces named ``prefix*`` left behind by runs that are no longer alive.

    Only namespaces built by this module count: those whose recorded builder
    (pid and start time, see the module docstring) is gone. Namespaces of live
    runs and namespaces without a builder record (someone else's) are left
    alone unless ``include_live=True``, which removes every ``prefix*``
    namespace. Returns the names removed. Processes still inside a removed
    namespace are left alone (and logged); its interfaces are deleted.
    """
    _require_root()
    removed: list[str] = []
    for ns in _netns.list_namespaces():
        if not ns.startswith(prefix):
            continue
        owner = _netns.read_owner(ns)
        if not include_live and (owner is None or owner.alive()):
            continue
        destroy_namespace(ns, _netns.inode(ns))
        removed.append(ns)
    if removed:
        _log().info("stale_namespaces_removed", prefix=prefix, namespaces=removed)
    return removed


# --- the sender/target pair -------------------------------------------------------------

PAIR_SENDER = "sender"
PAIR_TARGET = "target"


class _BuiltTopology:
    """A handle on a built topology: leaving its ``with`` block, or teardown(), removes the topology."""

    topology: Topology

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.topology.__exit__(exc_type, exc, tb)

    def teardown(self) -> None:
        self.topology.teardown()


@dataclass(frozen=True)
class VethPair(_BuiltTopology):
    """Two namespaces joined by one veth pair: attach XDP to ``target``, send from ``sender``."""

    topology: Topology
    sender: Iface
    target: Iface


def pair_topology(prefix: str, *, ipv6: bool = True, mtu: int = 1500, sender_gro: bool = True) -> Topology:
    """The declaration behind :func:`build_pair` (unbuilt)."""
    sender = ("192.0.2.1/24", "2001:db8::1/64") if ipv6 else ("192.0.2.1/24",)
    target = ("192.0.2.2/24", "2001:db8::2/64") if ipv6 else ("192.0.2.2/24",)
    return Topology(
        prefix,
        [Node(PAIR_SENDER), Node(PAIR_TARGET)],
        [Link(End(PAIR_SENDER, "snd", sender, gro=sender_gro), End(PAIR_TARGET, "tgt", target), mtu=mtu)],
    )


def build_pair(
    prefix: str | None = None, *, ipv6: bool = True, mtu: int = 1500, sender_gro: bool = True
) -> VethPair:
    """Build namespaces ``<prefix>sender`` and ``<prefix>target`` joined by ``snd`` <-> ``tgt``.

    Sender 192.0.2.1/24 and 2001:db8::1/64, target 192.0.2.2/24 and
    2001:db8::2/64. GRO is on at the sender so an XDP_TX program on the
    target does not fail; to get its replies delivered, attach an XDP_PASS
    program to the sender as well (module docstring).
    """
    topo = pair_topology(prefix or run_prefix(), ipv6=ipv6, mtu=mtu, sender_gro=sender_gro).build()
    return VethPair(topo, topo.iface(PAIR_SENDER, "snd"), topo.iface(PAIR_TARGET, "tgt"))


# --- the lab ------------------------------------------------------------------------------

UPSTREAM = "up"
GATEWAY = "gw"
SERVER = "srv"
FOREIGN_V4 = IPv4Network("198.18.0.0/15")
FOREIGN_V6 = IPv6Network("2001:db8:f::/48")
DOMESTIC_V4 = IPv4Network("100.64.0.0/10")
DOMESTIC_V6 = IPv6Network("2001:db8:d::/48")
INGRESS_V4 = IPv4Network("192.0.2.0/24")
INGRESS_V6 = IPv6Network("2001:db8:1::/64")
SERVER_LINK_V4 = IPv4Network("198.51.100.0/24")
SERVER_LINK_V6 = IPv6Network("2001:db8:2::/64")
SERVER_NET_V4 = IPv4Network("203.0.113.0/24")
SERVER_NET_V6 = IPv6Network("2001:db8:5::/64")
SERVER_V4 = IPv4Address("203.0.113.10")
SERVER_V6 = IPv6Address("2001:db8:5::10")
MAX_HOSTS = 16


@dataclass(frozen=True)
class Lab(_BuiltTopology):
    """The built lab; every field is documented in the module docstring's plan."""

    topology: Topology
    attackers: tuple[Iface, ...]
    """Attacker-side link ends (``a<i>-up`` in ``atk<i>``), foreign addresses."""
    clients: tuple[Iface, ...]
    """Client-side link ends (``c<i>-up`` in ``cli<i>``), domestic addresses."""
    gateway_ingress: Iface
    """``gw-in`` in ``gw``: where floodguard attaches its XDP program."""
    upstream_link: Iface
    """``up-gw`` in ``up``, the peer of :attr:`gateway_ingress` (GRO on, for XDP_TX)."""
    gateway_internal: Iface
    """``gw-srv`` in ``gw``, towards the servers."""
    server_link: Iface
    """``srv-gw`` in ``srv`` (GRO on, for XDP_REDIRECT into ``gw-srv``)."""
    ipv6: bool
    server_v4: IPv4Address = SERVER_V4
    server_v6: IPv6Address = SERVER_V6
    server_net_v4: IPv4Network = SERVER_NET_V4
    server_net_v6: IPv6Network = SERVER_NET_V6
    foreign_v4: IPv4Network = FOREIGN_V4
    foreign_v6: IPv6Network = FOREIGN_V6
    domestic_v4: IPv4Network = DOMESTIC_V4
    domestic_v6: IPv6Network = DOMESTIC_V6
    namespaces: dict[str, str] = field(default_factory=dict)
    """Node name -> namespace name."""

    @property
    def upstream(self) -> str:
        """Namespace of the upstream router."""
        return self.topology.netns(UPSTREAM)

    @property
    def gateway(self) -> str:
        """Namespace of the protected gateway (floodguard runs here)."""
        return self.topology.netns(GATEWAY)

    @property
    def server(self) -> str:
        """Namespace of the server network."""
        return self.topology.netns(SERVER)


def _nth_subnet(base: Network, index: int, prefixlen: int) -> Network:
    size = 1 << (base.max_prefixlen - prefixlen)
    return ipaddress.ip_network((int(base.network_address) + index * size, prefixlen))


def _host(net: Network, n: int) -> str:
    return f"{net.network_address + n}/{net.prefixlen}"


def lab_topology(
    prefix: str, *, attackers: int = 1, clients: int = 1, ipv6: bool = True, mtu: int = 1500
) -> Topology:
    """The declaration behind :func:`build_lab` (unbuilt)."""
    for what, count in (("attackers", attackers), ("clients", clients)):
        if not 0 <= count <= MAX_HOSTS:
            raise ValueError(f"{what}={count}: the lab supports 0..{MAX_HOSTS}")
    if attackers + clients == 0:
        raise ValueError("the lab needs at least one attacker or client")

    def addrs(v4: Network, v6: Network, n: int) -> tuple[str, ...]:
        return (_host(v4, n), _host(v6, n)) if ipv6 else (_host(v4, n),)

    def defaults(v4: Network, v6: Network) -> tuple[Route, ...]:
        out = [Route("0.0.0.0/0", via=str(v4.network_address + 1))]
        if ipv6:
            out.append(Route("::/0", via=str(v6.network_address + 1)))
        return tuple(out)

    nodes: list[Node] = []
    links: list[Link] = []
    for kind, count, base4, base6, letter in (
        ("atk", attackers, FOREIGN_V4, FOREIGN_V6, "a"),
        ("cli", clients, DOMESTIC_V4, DOMESTIC_V6, "c"),
    ):
        for i in range(count):
            net4, net6 = _nth_subnet(base4, i, 24), _nth_subnet(base6, i, 64)
            nodes.append(Node(f"{kind}{i}", routes=defaults(net4, net6)))
            links.append(
                Link(
                    End(f"{kind}{i}", f"{letter}{i}-up", addrs(net4, net6, 2)),
                    End(UPSTREAM, f"up-{letter}{i}", addrs(net4, net6, 1)),
                    mtu=mtu,
                )
            )
    gw_in4, gw_in6 = str(INGRESS_V4.network_address + 2), str(INGRESS_V6.network_address + 2)
    srv4, srv6 = str(SERVER_LINK_V4.network_address + 2), str(SERVER_LINK_V6.network_address + 2)
    up_routes = [
        Route(str(SERVER_NET_V4), via=gw_in4),
        Route(str(SERVER_LINK_V4), via=gw_in4),
        Route("0.0.0.0/0", kind="blackhole"),
    ]
    gw_routes = [Route(str(SERVER_NET_V4), via=srv4), *defaults(INGRESS_V4, INGRESS_V6)]
    srv_routes = [*defaults(SERVER_LINK_V4, SERVER_LINK_V6), Route(str(SERVER_NET_V4), kind="local")]
    if ipv6:
        up_routes += [
            Route(str(SERVER_NET_V6), via=gw_in6),
            Route(str(SERVER_LINK_V6), via=gw_in6),
            Route("::/0", kind="blackhole"),
        ]
        gw_routes.append(Route(str(SERVER_NET_V6), via=srv6))
        srv_routes.append(Route(str(SERVER_NET_V6), kind="local"))
    nodes += [
        Node(UPSTREAM, forwarding=True, routes=tuple(up_routes)),
        Node(GATEWAY, forwarding=True, routes=tuple(gw_routes)),
        Node(SERVER, routes=tuple(srv_routes)),
    ]
    links += [
        Link(
            End(UPSTREAM, "up-gw", addrs(INGRESS_V4, INGRESS_V6, 1), gro=True),
            End(GATEWAY, "gw-in", addrs(INGRESS_V4, INGRESS_V6, 2)),
            mtu=mtu,
        ),
        Link(
            End(GATEWAY, "gw-srv", addrs(SERVER_LINK_V4, SERVER_LINK_V6, 1)),
            End(SERVER, "srv-gw", addrs(SERVER_LINK_V4, SERVER_LINK_V6, 2), gro=True),
            mtu=mtu,
        ),
    ]
    return Topology(prefix, nodes, links)


def build_lab(
    prefix: str | None = None, *, attackers: int = 1, clients: int = 1, ipv6: bool = True, mtu: int = 1500
) -> Lab:
    """Build the lab of the module docstring: attackers, clients, upstream, gateway, servers."""
    topo = lab_topology(prefix or run_prefix(), attackers=attackers, clients=clients, ipv6=ipv6, mtu=mtu)
    topo.build()
    try:
        return Lab(
            topology=topo,
            attackers=tuple(topo.iface(f"atk{i}", f"a{i}-up") for i in range(attackers)),
            clients=tuple(topo.iface(f"cli{i}", f"c{i}-up") for i in range(clients)),
            gateway_ingress=topo.iface(GATEWAY, "gw-in"),
            upstream_link=topo.iface(UPSTREAM, "up-gw"),
            gateway_internal=topo.iface(GATEWAY, "gw-srv"),
            server_link=topo.iface(SERVER, "srv-gw"),
            ipv6=ipv6,
            namespaces={name: topo.netns(name) for name in topo.nodes},
        )
    except BaseException:
        topo.teardown()
        raise
