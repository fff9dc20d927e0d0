"""Helpers for integration tests: the test build, bans, and UDP across a veth pair.

Imported by the tests and by tests/integration/conftest.py (which only holds
fixtures), the way tests/bpf/harness.py serves tests/bpf.
"""

from __future__ import annotations

import errno
import ipaddress
import select
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.contract import abi
from agent.contract.capacity import Capacity
from agent.contract.keys import prefix_key
from agent.datapath import loader
from agent.datapath.loader import BuildOptions, Program
from agent.datapath.mapport import MapPort
from agent.lab.topology import VethPair

# Small maps: these tests need behaviour, not capacity.
TEST_CAPACITY = Capacity(
    prefixes=4_095,
    hosts4=4096,
    prefixes6=1024,
    groups=16,
    sources=4096,
    sources6=1024,
    destinations=1024,
    verified=1024,
    sample_pages=16,
)

Track = Callable[[str, str], None]
"""The detach_after fixture: register (ifname, netns) to clean up after a test."""

ETH_HLEN = 14
# Linux constants Python's socket module lacks (asm-generic/socket.h, linux/in.h, linux/in6.h).
SO_RCVBUFFORCE = 33
IP_RECVERR = 11
IPV6_RECVERR = 25
PORT = 9999


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def build_program(pin_dir: str) -> Program:
    return loader.build(BuildOptions(pin_dir=pin_dir, capacity=TEST_CAPACITY))


def ban(port: MapPort, prefix: str) -> None:
    """An operator ban without expiry, written the way the agent writes one."""
    net = ipaddress.ip_network(prefix)
    t = now_ns()
    port.addresses.set_record(prefix_key(net), abi.SRC_BAN, abi.Origin.OPERATOR, (0, t, abi.SRC_BAN, 0))
    port.addresses.commit(t)


def unban(port: MapPort, prefix: str) -> None:
    net = ipaddress.ip_network(prefix)
    port.addresses.set_record(prefix_key(net), abi.SRC_BAN, abi.Origin.OPERATOR, None)
    port.addresses.commit(now_ns())


def frame_len(family: int, payload: int) -> int:
    """Bytes of the Ethernet frame the program sees (no FCS)."""
    return ETH_HLEN + (20 if family == socket.AF_INET else 40) + 8 + payload


@dataclass
class Sent:
    """Datagrams the sending kernel accepted, and their frame bytes."""

    packets: int = 0
    bytes: int = 0


@dataclass
class Traffic:
    """Datagrams from the sender namespace to a socket listening in the target one."""

    pair: VethPair
    sockets: list[socket.socket] = field(default_factory=list)

    def add_source(self, address: str) -> str:
        """A second source address on the sender's interface (same subnet)."""
        ip = ipaddress.ip_address(address)
        with self.pair.topology.iproute(self.pair.sender.ns) as ipr:
            ipr.addr(
                "add",
                index=self.pair.sender.ifindex,
                address=address,
                prefixlen=24 if ip.version == 4 else 64,
                flags=0x02 if ip.version == 6 else 0,  # IFA_F_NODAD: usable at once, no DAD packets
            )
        return address

    def dst(self, family: int) -> str:
        t = self.pair.target
        return str(t.ipv4 if family == socket.AF_INET else t.ipv6)

    def listen(self, family: int) -> socket.socket:
        s = self.pair.topology.socket(self.pair.target.ns, family)
        self.sockets.append(s)
        # Room for every datagram of a test, so none is lost before it is read.
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
        s.bind((self.dst(family), PORT))
        s.setblocking(False)
        return s

    def sender(self, src: str) -> socket.socket:
        family = socket.AF_INET6 if ipaddress.ip_address(src).version == 6 else socket.AF_INET
        s = self.pair.topology.socket(self.pair.sender.ns, family)
        self.sockets.append(s)
        # Report a full queue (ENOBUFS) instead of counting a lost datagram as sent.
        if family == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        s.bind((src, 0))
        return s

    def send(self, s: socket.socket, count: int, sent: Sent | None = None) -> Sent:
        """Send `count` datagrams of varying sizes; count those the kernel took.

        A datagram refused with ENOBUFS (the veth ring was full) never
        reached the wire and is not counted; it is sent again.
        """
        sent = sent if sent is not None else Sent()
        family = s.family
        dst = (self.dst(family), PORT)
        done = 0
        while done < count:
            size = 16 + sent.packets % 97
            try:
                s.sendto(bytes(size), dst)
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                time.sleep(0.0005)
                continue
            done += 1
            sent.packets += 1
            sent.bytes += frame_len(family, size)
        return sent

    @staticmethod
    def drain(s: socket.socket, got: Counter[str], *, until: Callable[[], bool], timeout: float) -> None:
        """Read datagrams into got[source] until `until()` holds and the socket is quiet."""
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([s], [], [], 0.05)
            if ready:
                while True:
                    try:
                        _data, peer = s.recvfrom(2048)
                    except BlockingIOError:
                        break
                    got[peer[0]] += 1
                continue
            if until() or time.monotonic() > deadline:
                return

    def close(self) -> None:
        for s in self.sockets:
            s.close()
        self.sockets.clear()


def udp_stats(pair: VethPair, family: int) -> dict[str, int]:
    """The target stack's UDP counters (/proc/net/snmp or snmp6 of its namespace)."""

    def read() -> dict[str, int]:
        if family == socket.AF_INET:
            with open("/proc/thread-self/net/snmp") as f:
                lines = [ln.split() for ln in f if ln.startswith("Udp:")]
            return {k: int(v) for k, v in zip(lines[0][1:], lines[1][1:], strict=True)}
        with open("/proc/thread-self/net/snmp6") as f:
            pairs = (ln.split() for ln in f if ln.startswith("Udp6"))
            return {k.removeprefix("Udp6"): int(v) for k, v in pairs}

    return pair.topology.call(pair.target.ns, read)
