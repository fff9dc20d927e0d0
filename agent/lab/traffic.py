"""Traffic for the lab: trafgen floods from the attackers, real clients and a real server.

Everything here runs on a :class:`~agent.lab.topology.Lab` and needs no part
of the agent, so the same traffic measures the network with floodguard, with
another filter and with nothing at all.

Floods (:class:`Flood`)
-----------------------
One trafgen process (``--cpus 1``) in an attacker namespace sends a
:class:`Recipe` (packet templates in trafgen's configuration language,
written to a temporary directory at start) towards the upstream router (the
destination MAC is the attacker link's peer), at ``pps`` packets per second,
for a number of seconds or until stopped. How many packets really left is
read from the attacker interface's transmit counter, not taken from
trafgen's word. Recipes (:data:`RECIPES`): UDP reflection from source port
53/123/11211 with spoofed foreign sources and answer-sized payloads, a SYN
flood with spoofed sources, an ICMP echo flood, non-first IPv4 fragments, one
heavy hitter (the attacker's own address, UDP to the echo service), carpet
bombing over the servers' /24, and a mix.

A flood is smooth at the asked rate, as real attack tools and botnets send:
one trafgen process would send each second's packets back-to-back and then
sleep out the second (trafgen's ``--rate`` is a per-second budget), so a
flood runs as up to 100 staggered trafgen processes whose bursts are 10 ms
apart (:mod:`agent.lab._lanes`). Every :class:`FloodReport` says how even
the rate was per 100 ms (:class:`Smoothness`); measured at 50 kpps, every
100 ms window held 45-55 kpps and no 10 ms window was empty, for the CPU
of one trafgen.

The server's access link
------------------------
A veth has no capacity: a flood that is only big (reflection, fragments,
carpet bombing) crosses the lab at any rate trafgen reaches, its cost lands
on the generator's CPU, and the server does not notice (measured: DNS
reflection at 100 kpps, 1 Gbit/s, left legitimate success at 100%). Real
servers sit behind a link of fixed size that such a flood fills, and edge
mitigation exists to drop the flood before it. :func:`limit_server_link`
gives the gateway's link to the servers that size (a token bucket, 50
Mbit/s by default, with a 20 ms queue counted in packets, as a router's);
:func:`agent.lab.scenarios.run_scenario` uses it.

Legitimate traffic
------------------
:class:`LegitServer` runs a small web server (ports 80 and 443, listen
backlog 128) and a UDP echo server (port 7) as one process in the server
namespace, on every address of the servers' networks. :class:`Probe` runs
open-loop clients in a client namespace: ``http`` (a new TCP connection and
a GET each time), ``udp`` (request/response) or ``connect`` (the handshake
only), at a steady rate, each attempt with a timeout, and keeps every
attempt's start time, outcome and latency so any time window can be
summarised afterwards (:meth:`Probe.stats`, :meth:`Probe.windows`).
:func:`connect_test` is the SYN-authentication check: N ordinary connects,
each a success if it completes within 3 s (a challenged client's SYN
retransmission after ~1 s is the normal path).

The server's SYN backlog
------------------------
:func:`listen_counters` reads TcpExt ``ListenOverflows``, ``ListenDrops``,
``TCPReqQFullDrop`` and the SYN-cookie counters inside the server namespace.
:class:`LegitServer` switches SYN cookies off there (``tcp_syncookies=0``)
unless asked not to: with cookies a Linux server answers a full SYN queue
statelessly and a spoofed SYN flood barely hurts it, which would hide both
the attack and what SYN authentication in front of it is worth. Without
them the 128-entry queue fills with half-open connections to spoofed
addresses (each kept for about a minute of SYN-ACK retransmissions) and new
clients are refused, as an unprotected server that cannot use cookies is.

XDP_TX into the upstream router
-------------------------------
A frame a program on ``gw-in`` sends back with XDP_TX is only delivered if
``up-gw`` runs an XDP program too (see :mod:`agent.lab.topology`).
:func:`attach_upstream_pass` builds ``bpf/lab_pass.bpf.c`` (XDP_PASS) and
attaches it natively there; :meth:`LabProgram.detach` removes it.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.lab import _lanes, _trafgen
from agent.lab._errors import TopologyError
from agent.lab._trafgen import (
    ETH_HLEN,
    ICMP_HLEN,
    IPV4_HLEN,
    IPV6_HLEN,
    TCP_HLEN,
    UDP_HLEN,
    Template,
    payload_bytes,
    random_address,
)
from agent.lab.topology import Iface, Lab, LinkStats, Topology

__all__ = [
    "DEFAULTS",
    "RECIPES",
    "REFLECTION_SERVICES",
    "Defaults",
    "Flood",
    "FloodError",
    "FloodReport",
    "LabProcessError",
    "LabProgram",
    "LegitServer",
    "LinkCounter",
    "ListenCounters",
    "Probe",
    "ProbeKind",
    "ProbeStats",
    "Recipe",
    "Sample",
    "ServerLink",
    "attach_ceiling",
    "attach_lab_program",
    "attach_upstream_pass",
    "carpet_bombing",
    "connect_test",
    "fragment_flood",
    "heavy_hitter",
    "icmp_flood",
    "limit_server_link",
    "listen_counters",
    "make_recipe",
    "mix",
    "reflection",
    "set_syncookies",
    "syn_flood",
    "tcp_ext",
]


def _log() -> Any:
    return structlog.get_logger("agent.lab.traffic")


# --- defaults ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Defaults:
    """Every default of the lab's traffic, in one place.

    ``flood_pps``: see the module docstring of :mod:`agent.lab.scenarios` for
    what it does to an unprotected server on the project's 2-core machine.
    """

    flood_pps: int = 50_000
    """Default flood rate: hurts the unprotected server, leaves a core for everything else."""
    flood_cap_seconds: float = 900.0
    """A flood started without a duration ends after this long even if nobody stops it."""
    http_ports: tuple[int, ...] = (80, 443)
    udp_port: int = 7
    backlog: int = 128
    """Listen backlog of the web server (a common default: a SYN flood can fill it)."""
    http_rate: float = 20.0
    http_timeout: float = 2.0
    """One SYN retransmission (after ~1 s) fits; a second (after 3 s) does not."""
    udp_rate: float = 20.0
    udp_timeout: float = 1.0
    udp_size: int = 64
    connect_rate: float = 20.0
    connect_timeout: float = 3.0
    """SYN authentication answers the first SYN; the client's retransmission ~1 s later gets through."""
    server_link_mbit: float = 50.0
    """Capacity of the gateway's link to the servers in scenarios (:func:`limit_server_link`).

    Every volumetric default flood overfills it at least four times, and only
    ~11 kpps cross its token bucket, whose per-packet timers are expensive on
    a VM (at 100 Mbit/s, 20 kpps of 500-byte packets crossed it and the
    timers held trafgen to ~30 kpps on this machine).
    """
    start_timeout: float = 10.0
    """How long a child process may take to say it is ready."""


DEFAULTS = Defaults()
#: The window over which a flood's rate is checked for evenness (:class:`Smoothness`).
SMOOTHNESS_WINDOW = 0.1


# --- errors ------------------------------------------------------------------------------


class FloodError(TopologyError):
    """trafgen could not start, or stopped on its own with an error; the message has its output."""


class LabProcessError(TopologyError):
    """A server or client process of the lab did not start or misbehaved; the message has its output."""


# --- counters -----------------------------------------------------------------------------


class LinkCounter:
    """One interface's counters, read through a netlink socket that lives in its namespace.

    :meth:`Topology.link_stats` opens a socket per call, which forks a helper
    (~10 ms); this opens one and keeps it, so a read costs ~0.5 ms and
    polling several times a second stays cheap.
    """

    def __init__(self, topology: Topology, ns: str, ifname: str) -> None:
        self.ns = topology.netns(ns)
        self.ifname = topology.ifname(ifname)
        self._ipr: Any = IPRoute(netns=self.ns, flags=0)
        try:
            found = self._ipr.link_lookup(ifname=self.ifname)
            if not found:
                raise TopologyError(f"interface {self.ifname} not found in namespace {self.ns}")
            self._index = int(found[0])
        except BaseException:
            self._ipr.close()
            raise
        self._lock = threading.Lock()

    def read(self) -> LinkStats:
        with self._lock:
            if self._ipr is None:
                raise TopologyError(f"counter of {self.ifname} in {self.ns} is closed")
            s = self._ipr.link("get", index=self._index)[0].get("IFLA_STATS64")
        return LinkStats(
            rx_packets=int(s["rx_packets"]),
            tx_packets=int(s["tx_packets"]),
            rx_bytes=int(s["rx_bytes"]),
            tx_bytes=int(s["tx_bytes"]),
            rx_dropped=int(s["rx_dropped"]),
            tx_dropped=int(s["tx_dropped"]),
        )

    def close(self) -> None:
        with self._lock:
            ipr, self._ipr = self._ipr, None
        if ipr is not None:
            ipr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- recipes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """What a flood sends: packet templates that trafgen sends round robin."""

    name: str
    summary: str
    templates: tuple[Template, ...]

    @property
    def mean_frame_len(self) -> float:
        return sum(t.frame_len for t in self.templates) / len(self.templates)


@dataclass(frozen=True)
class _Service:
    port: int
    payload: str
    length: int
    summary: str


def _dns_answer() -> tuple[str, int]:
    """A DNS response to ``isc.org ANY`` padded with TXT data: 1200 bytes of UDP payload."""
    size = 1200
    question = b"\x03isc\x03org\x00" + b"\x00\xff\x00\x01"
    head = b"\x81\x80" + b"\x00\x01" + b"\x00\x01" + b"\x00\x00" + b"\x00\x00"  # flags, qd, an, ns, ar
    rr_head_len = 2 + 2 + 2 + 4 + 2
    rdlen = size - 2 - len(head) - len(question) - rr_head_len
    rdata = bytearray()
    while len(rdata) < rdlen:
        chunk = min(255, rdlen - len(rdata) - 1)
        rdata += bytes([chunk]) + b"v=spf1 include:_spf.example " [: chunk].ljust(chunk, b"a")
    rr = b"\xc0\x0c\x00\x10\x00\x01\x00\x00\x0e\x10" + rdlen.to_bytes(2, "big") + bytes(rdata[:rdlen])
    body = head + question + rr
    return "drnd(2), " + payload_bytes(body), 2 + len(body)


def _ntp_monlist() -> tuple[str, int]:
    """An NTP mode-7 MON_GETLIST_1 answer with 6 entries of 72 bytes: 440 bytes (a 468-byte IP packet)."""
    head = bytes([0xD7, 0x00, 0x03, 0x2A, 0x00, 0x06, 0x00, 0x48])
    entries = b"".join(bytes([0, 0, 0x0E, 0x10, 0, 0, 0, 1]) + bytes(64) for _ in range(6))
    body = head + entries
    return payload_bytes(body), len(body)


def _memcached_value() -> tuple[str, int]:
    """A memcached UDP answer (8-byte frame header, ``VALUE``): 1400 bytes of UDP payload."""
    size = 1400
    frame = b"\x00\x00" + b"\x00\x01" + b"\x00\x00"  # sequence 0 of 1 datagram, reserved
    line = b"VALUE a 0 1360\r\n"
    data_len = size - 2 - len(frame) - len(line) - len(b"\r\nEND\r\n")
    body = frame + line + b"A" * data_len + b"\r\nEND\r\n"
    return "drnd(2), " + payload_bytes(body), 2 + len(body)


def _services() -> dict[str, _Service]:
    dns, dns_len = _dns_answer()
    ntp, ntp_len = _ntp_monlist()
    memcached, mc_len = _memcached_value()
    return {
        "dns": _Service(53, dns, dns_len, "DNS ANY answers, 1200 B"),
        "ntp": _Service(123, ntp, ntp_len, "NTP monlist answers, 440 B"),
        "memcached": _Service(11211, memcached, mc_len, "memcached VALUE answers, 1400 B"),
    }


REFLECTION_SERVICES: Mapping[str, int] = {"dns": 53, "ntp": 123, "memcached": 11211}
"""Reflection recipes: the abused service and its UDP source port."""


def _ip(lab: Lab, ipv6: bool, *, src: str, dst: str, extra: str = "") -> str:
    if ipv6 and not lab.ipv6:
        raise ValueError("this lab was built without IPv6 (build_lab(ipv6=True))")
    proto = "ipv6" if ipv6 else "ipv4"
    tail = "hl=64" if ipv6 else "id=drnd(), ttl=64"
    return f"{proto}({src}, {dst}, {tail}{', ' + extra if extra else ''})"


def _l3_len(ipv6: bool) -> int:
    return ETH_HLEN + (IPV6_HLEN if ipv6 else IPV4_HLEN)


def _spoofed(lab: Lab, ipv6: bool) -> str:
    return random_address("sa", lab.foreign_v6 if ipv6 else lab.foreign_v4)


def _server(lab: Lab, ipv6: bool) -> str:
    return f"da={lab.server_v6 if ipv6 else lab.server_v4}"


def reflection(lab: Lab, service: str = "dns", *, ipv6: bool = False, attacker: int = 0) -> Recipe:
    """Answers of an abused UDP service (source port 53/123/11211) to the server, from spoofed foreign sources.

    That is what a reflection attack delivers: the attacker sent small
    requests with the victim's address to open servers, whose large answers
    all come from the service's port to random ports of the victim.
    """
    del attacker
    services = _services()
    if service not in services:
        raise ValueError(f"unknown reflection service {service!r}; known: {', '.join(sorted(services))}")
    svc = services[service]
    body = ", ".join(
        [
            _ip(lab, ipv6, src=_spoofed(lab, ipv6), dst=_server(lab, ipv6)),
            f"udp(sp={svc.port}, dp=drnd(1024, 65535))",
            svc.payload,
        ]
    )
    return Recipe(
        f"reflection_{service}",
        f"UDP reflection: {svc.summary} from source port {svc.port}, spoofed foreign sources",
        (Template(body, _l3_len(ipv6) + UDP_HLEN + svc.length, ipv6),),
    )


def syn_flood(
    lab: Lab, *, ports: Sequence[int] = DEFAULTS.http_ports, ipv6: bool = False, attacker: int = 0
) -> Recipe:
    """TCP SYNs (MSS option, random sequence numbers) to the web server from spoofed sources and ports."""
    del attacker
    templates = []
    for port in ports:
        body = ", ".join(
            [
                _ip(lab, ipv6, src=_spoofed(lab, ipv6), dst=_server(lab, ipv6), extra="" if ipv6 else "df"),
                f"tcp(sp=drnd(1024, 65535), dp={port}, seq=drnd(), syn, win=64240, doff=6)",
                "c8(2), c8(4), c16(1460)",  # MSS option: what a real stack's SYN carries
            ]
        )
        templates.append(Template(body, _l3_len(ipv6) + TCP_HLEN + 4, ipv6))
    return Recipe(
        "syn_flood",
        f"TCP SYN flood to port {'/'.join(map(str, ports))} from spoofed foreign sources",
        tuple(templates),
    )


def icmp_flood(lab: Lab, *, ipv6: bool = False, attacker: int = 0, size: int = 512) -> Recipe:
    """ICMP echo requests with ``size`` bytes of payload from spoofed sources. IPv4 only.

    Floods of pings carry large payloads to fill links (a 56-byte ping flood
    would need ten times the packets to hurt). trafgen 0.6.8 does not
    recompute an ICMPv6 checksum when a field such as the source address is
    randomised, so there is no IPv6 variant.
    """
    del attacker
    if ipv6:
        raise ValueError("icmp_flood is IPv4 only: trafgen 0.6.8 cannot randomise ICMPv6 with valid checksums")
    body = ", ".join(
        [
            _ip(lab, False, src=_spoofed(lab, False), dst=_server(lab, False)),
            "icmp4(echorequest, id=drnd(), seq=drnd())",
            f"fill(0x61, {size})",
        ]
    )
    return Recipe(
        "icmp_flood",
        f"ICMP echo requests ({size}-byte payload) from spoofed foreign sources",
        (Template(body, _l3_len(False) + ICMP_HLEN + size, False),),
    )


def fragment_flood(lab: Lab, *, ipv6: bool = False, attacker: int = 0, size: int = 512) -> Recipe:
    """Non-first IPv4 fragments of UDP datagrams that never existed (random id and offset). IPv4 only.

    Half carry More Fragments (middle pieces), half do not (last pieces);
    none has an offset of 0, so no L4 header is ever seen and the receiver
    keeps each in a reassembly queue until it times out.
    """
    del attacker
    if ipv6:
        raise ValueError("fragment_flood is IPv4 only")
    # The offset (in 8-byte units) keeps offset*8 + size within 65535.
    top = (65535 - IPV4_HLEN - size) // 8
    templates = []
    for more in (True, False):
        extra = f"{'mf, ' if more else ''}frag=drnd(1, {top}), prot=17"
        body = ", ".join(
            [_ip(lab, False, src=_spoofed(lab, False), dst=_server(lab, False), extra=extra), f"fill(0x00, {size})"]
        )
        templates.append(Template(body, _l3_len(False) + size, False))
    return Recipe("fragment_flood", "non-first IPv4 fragments (UDP) from spoofed foreign sources", tuple(templates))


def heavy_hitter(
    lab: Lab, *, ipv6: bool = False, attacker: int = 0, port: int = DEFAULTS.udp_port, size: int = 512
) -> Recipe:
    """UDP from one real attacker address (not spoofed) to the server's UDP service port.

    One source far above every other: what per-source limits and bans are for.
    """
    if not 0 <= attacker < len(lab.attackers):
        raise ValueError(f"attacker {attacker} does not exist; the lab has {len(lab.attackers)}")
    me = lab.attackers[attacker]
    src = f"sa={me.ipv6 if ipv6 else me.ipv4}"
    body = ", ".join(
        [
            _ip(lab, ipv6, src=src, dst=_server(lab, ipv6)),
            f"udp(sp=drnd(1024, 65535), dp={port})",
            f"fill(0x00, {size})",
        ]
    )
    return Recipe(
        "heavy_hitter",
        f"UDP flood from one real address ({me.ipv6 if ipv6 else me.ipv4}) to port {port}",
        (Template(body, _l3_len(ipv6) + UDP_HLEN + size, ipv6),),
    )


def carpet_bombing(lab: Lab, *, ipv6: bool = False, attacker: int = 0, size: int = 512) -> Recipe:
    """UDP from spoofed sources to random hosts of the servers' /24 (IPv6: the first 256 addresses).

    Every host gets a small share, below any per-host threshold; only the
    prefix as a whole shows the attack. Random source and destination ports.
    """
    del attacker
    if ipv6:
        base = lab.server_net_v6.network_address
        dst = random_address("da", type(lab.server_net_v6)(f"{base}/120"), avoid_edges=True)
    else:
        dst = random_address("da", lab.server_net_v4, avoid_edges=True)
    body = ", ".join(
        [
            _ip(lab, ipv6, src=_spoofed(lab, ipv6), dst=dst),
            "udp(sp=drnd(1024, 65535), dp=drnd(1024, 65535))",
            f"fill(0x00, {size})",
        ]
    )
    where = f"{lab.server_net_v6.network_address}/120" if ipv6 else str(lab.server_net_v4)
    return Recipe(
        "carpet_bombing",
        f"UDP to random hosts of {where} from spoofed foreign sources",
        (Template(body, _l3_len(ipv6) + UDP_HLEN + size, ipv6),),
    )


def mix(lab: Lab, *, ipv6: bool = False, attacker: int = 0) -> Recipe:
    """DNS reflection, SYN flood (port 80), ICMP echo and fragments at once, a quarter of the packets each. IPv4."""
    if ipv6:
        raise ValueError("mix is IPv4 only (it contains ICMP and fragments)")
    templates = (
        *reflection(lab, "dns", attacker=attacker).templates,
        *syn_flood(lab, ports=(DEFAULTS.http_ports[0],), attacker=attacker).templates,
        *icmp_flood(lab, attacker=attacker).templates,
        fragment_flood(lab, attacker=attacker).templates[0],  # middle pieces (More Fragments)
    )
    return Recipe("mix", "DNS reflection + SYN flood + ICMP echo + fragments, round robin", templates)


RecipeBuilder = Callable[..., Recipe]

RECIPES: Mapping[str, RecipeBuilder] = {
    "reflection_dns": lambda lab, **kw: reflection(lab, "dns", **kw),
    "reflection_ntp": lambda lab, **kw: reflection(lab, "ntp", **kw),
    "reflection_memcached": lambda lab, **kw: reflection(lab, "memcached", **kw),
    "syn_flood": syn_flood,
    "icmp_flood": icmp_flood,
    "fragment_flood": fragment_flood,
    "heavy_hitter": heavy_hitter,
    "carpet_bombing": carpet_bombing,
    "mix": mix,
}
"""Every flood recipe by name; each builder takes ``(lab, *, ipv6=False, attacker=0)``."""


def make_recipe(lab: Lab, name: str, *, ipv6: bool = False, attacker: int = 0) -> Recipe:
    """The recipe ``name`` (a key of :data:`RECIPES`) for this lab."""
    try:
        builder = RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown flood recipe {name!r}; known: {', '.join(RECIPES)}") from None
    return builder(lab, ipv6=ipv6, attacker=attacker)


# --- child processes ------------------------------------------------------------------------


def _package_root() -> str:
    """The directory that holds the ``agent`` package this code was imported from."""
    return str(Path(__file__).resolve().parent.parent.parent)


def _python_env() -> dict[str, str]:
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = _package_root() + (os.pathsep + old if old else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _stop_group(proc: subprocess.Popen[str], sig: int, wait: float) -> int:
    """Signal ``proc``'s process group; SIGKILL it if it is still there after ``wait`` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    else:
        # The leader is gone; make sure nothing of its group is left behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    return int(proc.returncode)


class _Child:
    """A lab process with a thread reading its stdout line by line.

    Lines that parse as JSON objects go to ``on_event``; everything is kept
    (the last 200 lines) for error messages. The process leads its own
    process group, so stopping it stops whatever it forked.
    """

    def __init__(
        self,
        topology: Topology,
        ns: str,
        argv: Sequence[str],
        *,
        what: str,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.what = what
        self._on_event = on_event
        self._lines: list[str] = []
        self._ready = threading.Event()
        self.eof_at: float | None = None
        self._seen_ready = False
        self._ready_marker: str | None = None
        self.proc: subprocess.Popen[str] = topology.popen(
            ns,
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
            env=None if env is None else dict(env),
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name=f"lab:{what}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.rstrip("\n")
            self._lines.append(line)
            if len(self._lines) > 200:
                del self._lines[:100]
            if self._ready_marker is not None and self._ready_marker in line:
                self._seen_ready = True
                self._ready.set()
            if line.startswith("{") and self._on_event is not None:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    if event.get("event") == "ready":
                        self._seen_ready = True
                        self._ready.set()
                    self._on_event(event)
        self.eof_at = time.monotonic()  # stdout closes when the process exits
        self._ready.set()  # EOF: whoever waits for readiness must look at why

    def wait_ready(self, timeout: float, marker: str | None = None) -> None:
        """Wait for a ``{"event": "ready"}`` line (or a line containing ``marker``).

        Raises :class:`LabProcessError`, with the output, if the process ended
        first or stayed silent for ``timeout`` seconds (and then kills it).
        """
        if marker is not None:
            self._ready_marker = marker
            if any(marker in line for line in list(self._lines)):
                self._seen_ready = True
                self._ready.set()
        self._ready.wait(timeout)
        if self._seen_ready:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=1.0)
        code = self.proc.poll()
        self.stop(signal.SIGKILL, 1.0)
        state = f"exited with status {code}" if code is not None else f"was not ready within {timeout:g} s"
        raise LabProcessError(f"{self.what} {state}; its output:\n{self.output}")

    @property
    def output(self) -> str:
        return "\n".join(self._lines[-40:])

    def stop(self, sig: int = signal.SIGTERM, wait: float = 5.0) -> int:
        code = _stop_group(self.proc, sig, wait)
        self._reader.join(timeout=2.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def join_reader(self, timeout: float) -> None:
        self._reader.join(timeout)


def _clients_argv(*args: str) -> list[str]:
    # --parent: the child exits when this process is gone, even if it was SIGKILLed.
    return [sys.executable, "-m", "agent.lab._clients", "--parent", str(os.getpid()), *args]


# --- the legitimate server ------------------------------------------------------------------------


def set_syncookies(lab: Lab, enabled: bool) -> None:
    """``net.ipv4.tcp_syncookies`` in the server namespace (0 = off, 1 = when the SYN queue is full)."""
    lab.topology.set_sysctl(lab.server, "net.ipv4.tcp_syncookies", 1 if enabled else 0)


class LegitServer:
    """The web and UDP echo server of the server network, as one process in its namespace.

    It answers on every address the namespace owns (all of 203.0.113.0/24,
    and 2001:db8:5::/64 when the lab has IPv6). SYN cookies are switched off
    while it runs (module docstring) and put back on :meth:`stop`.
    """

    def __init__(
        self,
        lab: Lab,
        *,
        tcp_ports: Sequence[int] = DEFAULTS.http_ports,
        udp_ports: Sequence[int] = (DEFAULTS.udp_port,),
        backlog: int = DEFAULTS.backlog,
        syncookies: bool = False,
    ) -> None:
        self.lab = lab
        self.tcp_ports = tuple(tcp_ports)
        self.udp_ports = tuple(udp_ports)
        self.backlog = backlog
        self.syncookies = syncookies
        self._child: _Child | None = None
        self._saved_syncookies: str | None = None
        self.served: dict[str, int] = {}
        """Requests answered, by kind (``http``, ``udp``); filled in by :meth:`stop`."""

    def start(self) -> Self:
        if self._child is not None:
            raise LabProcessError("the legitimate server is already running")
        topo = self.lab.topology
        self._saved_syncookies = topo.sysctl(self.lab.server, "net.ipv4.tcp_syncookies")
        set_syncookies(self.lab, self.syncookies)
        args = ["serve", "--backlog", str(self.backlog)]
        args += [x for p in self.tcp_ports for x in ("--tcp", str(p))]
        args += [x for p in self.udp_ports for x in ("--udp", str(p))]
        if self.lab.ipv6:
            args.append("--ipv6")
        child = _Child(
            topo, self.lab.server, _clients_argv(*args), what="legit server", on_event=self._event, env=_python_env()
        )
        try:
            child.wait_ready(DEFAULTS.start_timeout)
        except BaseException:
            self._restore()
            raise
        self._child = child
        _log().info("legit_server_started", pid=child.proc.pid, tcp=self.tcp_ports, udp=self.udp_ports,
                    backlog=self.backlog, syncookies=self.syncookies)
        return self

    def _event(self, event: dict[str, Any]) -> None:
        if event.get("event") == "done":
            self.served = {"http": int(event.get("http", 0)), "udp": int(event.get("udp", 0))}

    def _restore(self) -> None:
        saved, self._saved_syncookies = self._saved_syncookies, None
        if saved is not None:
            with contextlib.suppress(TopologyError, OSError):
                self.lab.topology.set_sysctl(self.lab.server, "net.ipv4.tcp_syncookies", saved)

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.proc.poll() is None

    def stop(self) -> None:
        """Stop the process (its listeners, and with them every half-open connection) and restore SYN cookies."""
        child, self._child = self._child, None
        if child is not None:
            child.stop(signal.SIGTERM, 5.0)
            _log().info("legit_server_stopped", served=self.served)
        self._restore()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- probes ------------------------------------------------------------------------------------------

ProbeKind = Literal["http", "udp", "connect"]


@dataclass(frozen=True)
class Sample:
    """One request: when it started (``time.monotonic()``), whether it succeeded, how long it took."""

    t: float
    ok: bool
    latency: float | None
    error: str | None


def _percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


@dataclass(frozen=True)
class ProbeStats:
    """Success rate and latency percentiles (seconds, successful requests only) of some samples."""

    kind: str
    attempts: int
    successes: int
    p50: float | None
    p95: float | None
    errors: Mapping[str, int] = field(default_factory=dict)

    @property
    def success_pct(self) -> float:
        """Percentage of attempts that succeeded (100.0 when there were none: nothing failed)."""
        return 100.0 * self.successes / self.attempts if self.attempts else 100.0

    @classmethod
    def of(cls, kind: str, samples: Sequence[Sample]) -> ProbeStats:
        lat = sorted(s.latency for s in samples if s.ok and s.latency is not None)
        errors = Counter(s.error or "failed" for s in samples if not s.ok)
        return cls(kind, len(samples), sum(1 for s in samples if s.ok), _percentile(lat, 0.5),
                   _percentile(lat, 0.95), dict(errors))

    def __str__(self) -> str:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1000:.1f} ms"

        errs = ", ".join(f"{k}={v}" for k, v in sorted(self.errors.items()))
        return (f"{self.kind}: {self.successes}/{self.attempts} ok ({self.success_pct:.1f}%), "
                f"p50 {ms(self.p50)}, p95 {ms(self.p95)}" + (f"; {errs}" if errs else ""))


class Probe:
    """Legitimate requests from a client namespace at a steady rate, each with a timeout.

    ``kind``: ``http`` (new connection and a GET each time), ``udp`` (echo
    request/response) or ``connect`` (TCP handshake only). The target is the
    lab's server (203.0.113.10, or 2001:db8:5::10 with ``ipv6=True``) unless
    given. Requests are open-loop: one starts every ``1/rate`` seconds
    whatever happened to the previous ones, as real users do.

    Samples arrive as requests complete, so a window is complete once
    ``timeout`` seconds have passed after its end (or after :meth:`stop`,
    which lets requests in flight finish).
    """

    def __init__(
        self,
        lab: Lab,
        kind: ProbeKind,
        *,
        client: int = 0,
        target: str | None = None,
        ipv6: bool = False,
        port: int | None = None,
        rate: float | None = None,
        timeout: float | None = None,
        count: int | None = None,
        size: int = DEFAULTS.udp_size,
    ) -> None:
        if kind not in ("http", "udp", "connect"):
            raise ValueError(f"probe kind {kind!r} is not one of http, udp, connect")
        if not 0 <= client < len(lab.clients):
            raise ValueError(f"client {client} does not exist; the lab has {len(lab.clients)}")
        self.lab = lab
        self.kind: ProbeKind = kind
        self.client: Iface = lab.clients[client]
        self.target = target or str(lab.server_v6 if ipv6 else lab.server_v4)
        self.port = port if port is not None else (DEFAULTS.udp_port if kind == "udp" else DEFAULTS.http_ports[0])
        d_rate, d_timeout = {
            "http": (DEFAULTS.http_rate, DEFAULTS.http_timeout),
            "udp": (DEFAULTS.udp_rate, DEFAULTS.udp_timeout),
            "connect": (DEFAULTS.connect_rate, DEFAULTS.connect_timeout),
        }[kind]
        self.rate = float(rate if rate is not None else d_rate)
        self.timeout = float(timeout if timeout is not None else d_timeout)
        if self.rate <= 0 or self.timeout <= 0:
            raise ValueError("probe rate and timeout must be positive")
        self.count = count
        self.size = size
        self._samples: list[Sample] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._child: _Child | None = None
        self.started_at: float | None = None

    def _event(self, event: dict[str, Any]) -> None:
        if "t" in event and "ok" in event:
            lat = event.get("lat")
            sample = Sample(float(event["t"]), bool(event["ok"]), None if lat is None else float(lat), event.get("err"))
            with self._lock:
                self._samples.append(sample)
        elif event.get("event") == "done":
            self._done.set()

    def start(self) -> Self:
        if self._child is not None:
            raise LabProcessError(f"{self.kind} probe already started")
        args = ["probe", "--kind", self.kind, "--host", self.target, "--port", str(self.port),
                "--rate", repr(self.rate), "--timeout", repr(self.timeout), "--size", str(self.size)]
        if self.count is not None:
            args += ["--count", str(self.count)]
        child = _Child(self.lab.topology, self.client.ns, _clients_argv(*args), what=f"{self.kind} probe",
                       on_event=self._event, env=_python_env())
        child.wait_ready(DEFAULTS.start_timeout)
        self._child = child
        self.started_at = time.monotonic()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until a probe with a ``count`` has sent and settled everything; True if it did."""
        finished = self._done.wait(timeout)
        if finished and self._child is not None:
            self._child.join_reader(2.0)
        return finished

    def stop(self) -> None:
        """Stop starting requests; those in flight finish (at most ``timeout`` seconds) and are kept."""
        child, self._child = self._child, None
        if child is not None:
            child.stop(signal.SIGTERM, self.timeout + 5.0)

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.proc.poll() is None

    def samples(self, since: float | None = None, until: float | None = None) -> list[Sample]:
        """Completed requests that started in ``[since, until)`` (``time.monotonic()`` values)."""
        with self._lock:
            out = list(self._samples)
        return [s for s in out if (since is None or s.t >= since) and (until is None or s.t < until)]

    def stats(self, since: float | None = None, until: float | None = None) -> ProbeStats:
        return ProbeStats.of(self.kind, self.samples(since, until))

    def windows(
        self, width: float = 1.0, since: float | None = None, until: float | None = None
    ) -> list[tuple[float, ProbeStats]]:
        """Per-window statistics ``(window start, stats)`` from ``since`` (default: the first sample)."""
        samples = self.samples(since, until)
        if not samples:
            return []
        start = since if since is not None else min(s.t for s in samples)
        end = until if until is not None else max(s.t for s in samples) + 1e-9
        out = []
        t = start
        while t < end:
            out.append((t, ProbeStats.of(self.kind, [s for s in samples if t <= s.t < t + width])))
            t += width
        return out

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def connect_test(
    lab: Lab,
    n: int,
    *,
    rate: float = DEFAULTS.connect_rate,
    timeout: float = DEFAULTS.connect_timeout,
    client: int = 0,
    target: str | None = None,
    ipv6: bool = False,
    port: int | None = None,
) -> ProbeStats:
    """Open ``n`` new TCP connections with ordinary sockets, ``rate`` per second; return how many connected.

    Something must listen there (a :class:`LegitServer`). Each counts as a
    success if its handshake completes within ``timeout``
    (3 s: a SYN dropped or challenged once is retransmitted after ~1 s and
    still makes it; one dropped twice is not, its next try comes at 3 s).
    """
    probe = Probe(lab, "connect", client=client, target=target, ipv6=ipv6, port=port, rate=rate,
                  timeout=timeout, count=n)
    with probe:
        if not probe.wait(n / rate + timeout + 10.0):
            raise LabProcessError(f"connect test of {n} connections did not finish in time")
    return probe.stats()


# --- floods ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Smoothness:
    """The achieved rate in every whole window of ``window`` seconds while the flood ran (pps)."""

    window: float
    rates: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.rates) if self.rates else 0.0

    @property
    def stdev(self) -> float:
        return statistics.pstdev(self.rates) if len(self.rates) > 1 else 0.0

    @property
    def spread(self) -> float:
        """Standard deviation over mean: 0 is perfectly even."""
        return self.stdev / self.mean if self.mean > 0 else 0.0

    def __str__(self) -> str:
        if not self.rates:
            return "no whole window"
        return (f"per {self.window * 1000:.0f} ms: mean {self.mean:,.0f} pps, spread {self.spread:.1%} "
                f"(min {min(self.rates):,.0f}, max {max(self.rates):,.0f}, {len(self.rates)} windows)")


@dataclass(frozen=True)
class FloodReport:
    """What a flood did: packets by the attacker interface's counter, and for how long."""

    recipe: str
    pps_requested: int
    packets_sent: int
    seconds: float
    trafgen_reported: int | None
    exit_status: int | None
    smoothness: Smoothness = field(default_factory=lambda: Smoothness(0.1, ()))
    lanes: int = 1

    @property
    def pps(self) -> float:
        """Achieved mean rate."""
        return self.packets_sent / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (f"{self.recipe}: asked {self.pps_requested:,} pps, achieved {self.pps:,.0f} pps "
                f"({self.packets_sent:,} packets in {self.seconds:.2f} s, {self.lanes} lanes); {self.smoothness}")


class Flood:
    """A recipe sent from an attacker namespace at a smooth, set rate.

    It runs as ``lanes`` staggered trafgen processes (default: one per 20 pps,
    at most 100; :mod:`agent.lab._lanes` explains why), and a thread reads the
    attacker interface's counter every 100 ms so that the report says how
    even the rate was (:class:`Smoothness`).

    ``recipe`` is a :class:`Recipe` or a name from :data:`RECIPES`;
    ``attacker`` picks the attacker namespace; ``duration`` (seconds) makes
    trafgen stop by itself after ``pps * duration`` packets (otherwise it runs
    until :meth:`stop`, at most :attr:`Defaults.flood_cap_seconds`).
    :meth:`start` returns once trafgen is sending (or raises
    :class:`FloodError` with its output); :meth:`stop` ends it (SIGINT to its
    process group, SIGKILL if that is not enough) and is safe to call twice.
    Also a context manager. If the test process exits without stopping it,
    an ``atexit`` hook does; if it is killed, the kernel stops the flood
    (parent-death signal) when it was started from the main thread, and
    ``timeout(1)`` ends it after its cap otherwise.
    """

    def __init__(
        self,
        lab: Lab,
        recipe: Recipe | str,
        *,
        pps: int | None = None,
        attacker: int = 0,
        duration: float | None = None,
        ipv6: bool = False,
        seed: int | None = None,
        lanes: int | None = None,
    ) -> None:
        if not 0 <= attacker < len(lab.attackers):
            raise ValueError(f"attacker {attacker} does not exist; the lab has {len(lab.attackers)}")
        self.lab = lab
        self.recipe = make_recipe(lab, recipe, ipv6=ipv6, attacker=attacker) if isinstance(recipe, str) else recipe
        self.pps = int(pps if pps is not None else DEFAULTS.flood_pps)
        if self.pps <= 0:
            raise ValueError("flood rate must be positive")
        if duration is not None and duration <= 0:
            raise ValueError("flood duration must be positive")
        self.duration = duration
        self.seed = seed
        self.lanes = min(lanes, self.pps) if lanes is not None else _lanes.lanes_for(self.pps)
        if self.lanes < 1:
            raise ValueError("a flood needs at least one lane")
        self.iface: Iface = lab.attackers[attacker]
        self.peer: Iface = lab.topology.iface(self.iface.peer_ns, self.iface.peer_ifname)
        self._child: _Child | None = None
        self._counter: LinkCounter | None = None
        self._tmpdir: str | None = None
        self._tx0 = 0
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self._report: FloodReport | None = None
        self._lock = threading.Lock()
        self._marks: list[tuple[float, int]] = []  # (monotonic time, tx packets) every 100 ms
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None

    @property
    def config_text(self) -> str:
        """The trafgen configuration this flood sends."""
        return _trafgen.render_config(
            self.recipe.templates, self.peer.mac, self.iface.mac,
            comment=f"floodguard lab flood: {self.recipe.name}\n{self.recipe.summary}",
        )

    def start(self) -> Self:
        with self._lock:
            if self._child is not None or self._report is not None:
                raise FloodError(f"flood {self.recipe.name} was already started")
            self._tmpdir = tempfile.mkdtemp(prefix="floodguard-flood-")
            try:
                self._start()
            except BaseException:
                self._cleanup_files()
                raise
        atexit.register(self.stop)
        return self

    def _start(self) -> None:
        assert self._tmpdir is not None
        config = os.path.join(self._tmpdir, f"{self.recipe.name or 'flood'}.cfg")
        with open(config, "w") as f:
            f.write(self.config_text)
        count = self._count
        cap = DEFAULTS.flood_cap_seconds if self.duration is None else self.duration + 10.0
        argv = _trafgen.argv(device=self.iface.ifname, config=config, pps=self.pps, count=count,
                             seed=self.seed, cap_seconds=cap, lanes=self.lanes,
                             die_with_parent=threading.current_thread() is threading.main_thread())
        counter = LinkCounter(self.lab.topology, self.iface.ns, self.iface.ifname)
        child: _Child | None = None
        try:
            self._tx0 = counter.read().tx_packets
            child = _Child(self.lab.topology, self.iface.ns, argv, what=f"trafgen ({self.recipe.name})",
                           cwd=self._tmpdir, env=_python_env())
            child.wait_ready(DEFAULTS.start_timeout, marker="Running!")
        except BaseException as exc:
            counter.close()
            if child is not None:
                child.stop(signal.SIGKILL, 1.0)
            if isinstance(exc, LabProcessError):
                raise FloodError(str(exc)) from None
            raise
        self._counter = counter
        self._child = child
        self.started_at = time.monotonic()
        self._sampler = threading.Thread(target=self._sample, args=(counter, self._tx0), name="lab:flood-rate",
                                         daemon=True)
        self._sampler.start()
        _log().info("flood_started", recipe=self.recipe.name, pps=self.pps, ns=self.iface.ns, lanes=self.lanes,
                    device=self.iface.ifname, duration=self.duration, pid=child.proc.pid)

    def _sample(self, counter: LinkCounter, tx0: int) -> None:
        """The attacker interface's counter every 100 ms, on a fixed schedule from the start."""
        due = time.monotonic()
        self._marks.append((due, tx0))
        while not self._sampling.is_set():
            due += SMOOTHNESS_WINDOW
            if self._sampling.wait(max(0.0, due - time.monotonic())):
                break
            try:
                tx = counter.read().tx_packets
            except TopologyError:
                break
            self._marks.append((time.monotonic(), tx))

    @property
    def _count(self) -> int | None:
        """Packets a flood with a duration sends in all."""
        return None if self.duration is None else max(1, round(self.pps * self.duration))

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.proc.poll() is None

    @property
    def pid(self) -> int | None:
        """Process id of the flood's process group leader (``timeout``, parent of trafgen), while it runs."""
        return self._child.proc.pid if self._child is not None else None

    @property
    def config_dir(self) -> str | None:
        """The temporary directory with the trafgen configuration (removed by :meth:`stop`)."""
        return self._tmpdir

    @property
    def packets_sent(self) -> int:
        """Packets that left the attacker interface since :meth:`start` (live while running)."""
        if self._report is not None:
            return self._report.packets_sent
        counter = self._counter
        if counter is None:
            return 0
        try:
            return counter.read().tx_packets - self._tx0
        except TopologyError:
            return 0

    @property
    def elapsed(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.stopped_at or time.monotonic()) - self.started_at

    def wait(self, timeout: float | None = None) -> FloodReport:
        """Wait until a flood with a ``duration`` has sent all its packets (or ended), then :meth:`stop` it.

        Each lane sleeps out the second of its last burst before it exits, so
        the packets are all out up to a second before the processes are gone.
        """
        child, count = self._child, self._count
        deadline = None if timeout is None else time.monotonic() + timeout
        while child is not None and child.proc.poll() is None:
            if count is not None and self.packets_sent >= count:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        return self.stop()

    def stop(self) -> FloodReport:
        """Stop trafgen (if it still runs), count what was sent, remove the configuration."""
        with self._lock:
            if self._report is not None:
                return self._report
            atexit.unregister(self.stop)
            child, self._child = self._child, None
            self._sampling.set()
            if self._sampler is not None:
                self._sampler.join(timeout=2.0)
            status = None
            if child is not None:
                now = time.monotonic()
                done_at = self._all_sent_at()
                status = child.stop(signal.SIGINT, 5.0)
                if done_at is not None and self.duration is not None and self.started_at is not None:
                    # Every packet is out: the flood lasted its duration (or longer, if trafgen
                    # could not keep up), whatever the lanes did afterwards.
                    self.stopped_at = max(self.started_at + self.duration, done_at)
                else:
                    self.stopped_at = now
            sent = 0
            if self._counter is not None:
                # The last packets leave the veth synchronously with trafgen's sendto: nothing is queued.
                with contextlib.suppress(TopologyError):
                    sent = self._counter.read().tx_packets - self._tx0
                self._counter.close()
                self._counter = None
            output = child.output if child is not None else ""
            self._cleanup_files()
            self._report = FloodReport(
                recipe=self.recipe.name,
                pps_requested=self.pps,
                packets_sent=sent,
                seconds=self.elapsed,
                trafgen_reported=_trafgen.parse_summary(output),
                exit_status=status,
                smoothness=self._smoothness(),
                lanes=self.lanes,
            )
        if child is not None:
            _log().info("flood_stopped", recipe=self.recipe.name, packets=sent, seconds=round(self.elapsed, 3),
                        pps=round(self._report.pps), trafgen_reported=self._report.trafgen_reported,
                        status=status)
            # 124: timeout(1) ended it at its cap, which is how a duration ends when trafgen is late.
            if status not in (0, 124, -signal.SIGINT, 128 + signal.SIGINT) and sent == 0:
                raise FloodError(f"trafgen ({self.recipe.name}) failed with status {status}:\n{output}")
        return self._report

    def _all_sent_at(self) -> float | None:
        """When the counter reached a flood's full count (None: not yet, or no count)."""
        count = self._count
        if count is None:
            return None
        sent = self.packets_sent
        if sent < count:
            return None
        for t, tx in self._marks:
            if tx - self._tx0 >= count:
                return t
        return time.monotonic()

    def _smoothness(self) -> Smoothness:
        """Packets per 100 ms window while the flood was on: the first window (lanes start
        during it) and windows at or after the stop or the last packet are left out. A
        window that the sampler saw late (this machine busy elsewhere) is left out too."""
        end = self.stopped_at if self.stopped_at is not None else time.monotonic()
        rates = []
        for (t0, a), (t1, b) in itertools.pairwise(self._marks[1:]):
            if t1 > end - 1e-3:
                break
            if abs((t1 - t0) - SMOOTHNESS_WINDOW) > SMOOTHNESS_WINDOW / 4:
                continue
            rates.append((b - a) / (t1 - t0))
        return Smoothness(SMOOTHNESS_WINDOW, tuple(rates))

    def _cleanup_files(self) -> None:
        tmpdir, self._tmpdir = self._tmpdir, None
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# --- the server's access link ---------------------------------------------------------------------------


@dataclass
class ServerLink:
    """A capacity limit (tbf) on the gateway's link towards the servers; :meth:`remove` lifts it."""

    lab: Lab
    mbit: float
    ifname: str
    ns: str
    active: bool = True

    def stats(self) -> dict[str, int]:
        """The qdisc's packet, drop and overlimit counters."""
        with IPRoute(netns=self.ns, flags=0) as ipr:
            index = ipr.link_lookup(ifname=self.ifname)[0]
            for q in ipr.get_qdiscs(index=index):
                if q.get("TCA_KIND") == "tbf":
                    s = q.get("TCA_STATS2").get("TCA_STATS_BASIC")
                    q2 = q.get("TCA_STATS2").get("TCA_STATS_QUEUE")
                    return {"packets": int(s["packets"]), "drops": int(q2["drops"]),
                            "overlimits": int(q2["overlimits"])}
        return {}

    def remove(self) -> None:
        """Delete the qdisc (the link is unlimited again); safe to call twice or after teardown."""
        if not self.active:
            return
        self.active = False
        with contextlib.suppress(OSError, TopologyError, IndexError, NetlinkError), \
                IPRoute(netns=self.ns, flags=0) as ipr:
            index = ipr.link_lookup(ifname=self.ifname)[0]
            ipr.tc("del", index=index, root=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def limit_server_link(lab: Lab, mbit: float | None = None, *, latency_ms: float = 20.0) -> ServerLink:
    """Give the gateway's link to the servers (``gw-srv``) a capacity, as a real access link has.

    A veth has none: a flood that is only big (reflection, fragments, carpet
    bombing) crosses it at any rate and the server shrugs it off, because
    the flood's cost lands on the generator's CPU. Real servers sit behind a
    link of fixed size, which a reflection flood fills; edge mitigation
    exists to drop the flood before that link. A token bucket (tbf) of
    ``mbit`` with ``latency_ms`` of queue is that link.
    """
    mbit = float(mbit if mbit is not None else DEFAULTS.server_link_mbit)
    link = lab.gateway_internal
    rate = int(mbit * 1_000_000 / 8)
    burst = max(16 * 1514, rate // 1000)  # ~1 ms of traffic, at least 16 full frames
    with IPRoute(netns=link.ns, flags=0) as ipr:
        index = ipr.link_lookup(ifname=link.ifname)[0]
        ipr.tc("replace", "tbf", index=index, handle="1:", rate=rate, burst=burst, latency=f"{int(latency_ms)}ms")
        # tbf queues in bytes: a full queue still takes a 60-byte packet when a 1242-byte one no
        # longer fits, so a flood of large packets would never crowd out small legitimate ones. A
        # router's queue counts packets; so does this one.
        packets = max(16, int(rate * latency_ms / 1000 / 1000))
        ipr.tc("replace", "pfifo", index=index, parent="1:1", handle="10:", limit=packets)
    _log().info("server_link_limited", ifname=link.ifname, mbit=mbit, latency_ms=latency_ms)
    return ServerLink(lab, mbit, link.ifname, link.ns)


# --- the server's TCP counters --------------------------------------------------------------------------


def _read_netstat() -> str:
    # /proc/self/net is the process's namespace; the thread that entered the server's is thread-self.
    with open("/proc/thread-self/net/netstat") as f:
        return f.read()


def tcp_ext(lab: Lab) -> dict[str, int]:
    """Every TcpExt counter (``/proc/net/netstat``) of the server namespace."""
    text = lab.topology.call(lab.server, _read_netstat)
    lines = text.splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            return {k: int(v) for k, v in zip(names.split()[1:], values.split()[1:], strict=True)}
    raise TopologyError(f"no TcpExt counters in /proc/net/netstat of {lab.server}")


@dataclass(frozen=True)
class ListenCounters:
    """The server's listen-queue counters (TcpExt). Subtract two snapshots for what happened between.

    ``listen_overflows``: the accept queue was full. ``listen_drops``: a SYN
    or handshake was dropped for any listen-queue reason. ``req_q_full_drop``:
    a SYN was dropped because the SYN queue was full and SYN cookies were
    off; ``req_q_full_do_cookies``: the same with cookies on (answered with
    one instead). ``syncookies_*``: cookies sent, validated, rejected.
    """

    listen_overflows: int
    listen_drops: int
    req_q_full_drop: int
    req_q_full_do_cookies: int
    syncookies_sent: int
    syncookies_recv: int
    syncookies_failed: int

    @classmethod
    def from_tcp_ext(cls, ext: Mapping[str, int]) -> ListenCounters:
        return cls(
            listen_overflows=ext.get("ListenOverflows", 0),
            listen_drops=ext.get("ListenDrops", 0),
            req_q_full_drop=ext.get("TCPReqQFullDrop", 0),
            req_q_full_do_cookies=ext.get("TCPReqQFullDoCookies", 0),
            syncookies_sent=ext.get("SyncookiesSent", 0),
            syncookies_recv=ext.get("SyncookiesRecv", 0),
            syncookies_failed=ext.get("SyncookiesFailed", 0),
        )

    def __sub__(self, other: ListenCounters) -> ListenCounters:
        return ListenCounters(*(a - b for a, b in zip(_astuple(self), _astuple(other), strict=True)))

    @property
    def overflowed(self) -> bool:
        """True if the SYN or accept queue was ever full (meaningful on a difference of two snapshots)."""
        return self.listen_overflows > 0 or self.listen_drops > 0 or self.req_q_full_drop > 0 \
            or self.req_q_full_do_cookies > 0


def _astuple(c: ListenCounters) -> tuple[int, ...]:
    return (c.listen_overflows, c.listen_drops, c.req_q_full_drop, c.req_q_full_do_cookies,
            c.syncookies_sent, c.syncookies_recv, c.syncookies_failed)


def listen_counters(lab: Lab) -> ListenCounters:
    """A snapshot of the server namespace's listen-queue counters."""
    return ListenCounters.from_tcp_ext(tcp_ext(lab))


# --- XDP_PASS on the upstream router's link to the gateway -------------------------------------------------

LAB_PASS_SOURCE = "lab_pass.bpf.c"  # noqa: S105 — a file name, not a password
LAB_PASS_FUNCTION = "xdp_lab_pass"  # noqa: S105 — a function name, not a password
LAB_CEILING_SOURCE = "lab_ceiling.bpf.c"
LAB_CEILING_FUNCTION = "xdp_lab_ceiling"


@dataclass
class LabProgram:
    """A lab XDP program attached natively to one interface of the lab (``up-gw``: see the module docstring)."""

    lab: Lab
    prog_id: int
    ifname: str
    ns: str
    attached: bool = True

    def detach(self) -> None:
        """Remove the program if it is still the one attached; safe to call twice."""
        from agent.datapath import attach
        from agent.datapath.errors import DatapathError

        if not self.attached:
            return
        self.attached = False
        try:
            state = attach.xdp_state(self.ifname, netns=self.ns)
        except (DatapathError, OSError):
            return  # the interface or its namespace is gone, and the program with it
        if state.prog_id != self.prog_id:
            _log().warning("lab_program_replaced", ifname=self.ifname, expected=self.prog_id, found=state.prog_id)
            return
        attach.detach(self.ifname, netns=self.ns, only_floodguard=False)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()


def attach_lab_program(lab: Lab, iface: Iface, source: str, function: str) -> LabProgram:
    """Build ``bpf/<source>`` and attach its ``function`` natively to ``iface`` of ``lab``; the pins go at once."""
    from agent.datapath import attach, loader

    pin_dir = f"{loader.BPFFS}/floodguard-lab-{os.getpid()}-{iface.ifname}"
    prog = loader.build(loader.BuildOptions(pin_dir=pin_dir, source=source, function=function))
    try:
        result = attach.attach(iface.ifname, prog.fd, attach.XdpMode.NATIVE, netns=iface.ns)
    finally:
        prog.close()  # the attachment holds the program
        loader.remove_pins(pin_dir)
    _log().info("lab_program_attached", source=source, ifname=iface.ifname, ns=iface.ns, prog_id=result.prog_id)
    return LabProgram(lab, result.prog_id, iface.ifname, iface.ns)


def attach_upstream_pass(lab: Lab) -> LabProgram:
    """Build ``bpf/lab_pass.bpf.c`` and attach it natively to ``up-gw``, so XDP_TX from ``gw-in`` is delivered."""
    return attach_lab_program(lab, lab.upstream_link, LAB_PASS_SOURCE, LAB_PASS_FUNCTION)


def attach_ceiling(lab: Lab) -> LabProgram:
    """The perfect filter (``bpf/lab_ceiling.bpf.c``) on ``gw-in``: every foreign source dropped, nothing else.

    Where floodguard would attach; the best any filter at the gateway can do for the legitimate
    side on this machine (``floodguard bench collateral``'s ``ceiling``).
    """
    return attach_lab_program(lab, lab.gateway_ingress, LAB_CEILING_SOURCE, LAB_CEILING_FUNCTION)

