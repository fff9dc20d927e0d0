"""trafgen's packet-configuration language, written from Python, and its command line.

Floods are trafgen packet configurations generated at run time: each packet
is one ``{ eth(...), ipv4(...), udp(...), payload }`` block whose header
fields may be randomised per packet with ``drnd()``. trafgen (netsniff-ng
0.6.8) recomputes the IPv4, UDP and TCP checksums (also over IPv6) after every
randomisation; it does *not* recompute ICMPv6 checksums, so there is no
randomised ICMPv6 template here.

Things about trafgen 0.6.8 that shaped this module (measured on the lab):

- ``--rate`` takes a unit: ``100000pps`` works, ``100kpps`` is refused
  ("Invalid unit type for rate") and trafgen exits at once.
- ``--rate`` keeps a per-second budget: it sends the second's packets
  back-to-back at full speed, then sleeps to the end of that second. The
  mean rate is exact; within a second one process is on/off, so a flood
  runs as many staggered processes (:mod:`agent.lab._lanes`).
- ``--gap`` sleeps after every packet; on this VM a sleep costs about 30 us,
  so a gap cannot pace more than ~25 kpps.
- ``-A`` (no socket-memory tuning) is listed by ``--help`` but not accepted
  as a short option; ``--no-sock-mem`` is. Without it trafgen raises the
  host-wide ``net.core.[rw]mem_*`` sysctls for its run.
- trafgen forks one worker per CPU and only the worker sends; a SIGTERM to
  the parent alone leaves the worker running (and sending into a deleted
  interface forever). Signal the whole process group.
- It creates a ``.tmp_mmap.*`` file in its working directory.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

from agent.lab._errors import MissingFeatureError

ETH_HLEN = 14
IPV4_HLEN = 20
IPV6_HLEN = 40
UDP_HLEN = 8
TCP_HLEN = 20
ICMP_HLEN = 8
ETH_P_IPV6 = 0x86DD

_SUMMARY_RE = re.compile(r"^\s*(\d+) packets outgoing", re.MULTILINE)


@dataclass(frozen=True)
class Template:
    """One packet of a flood, in trafgen's language, without its Ethernet header.

    ``body`` is everything after ``eth(...)``; ``frame_len`` is the length on
    the wire (Ethernet header included) and ``ipv6`` whether the Ethernet
    type must say IPv6 (trafgen fills it in only for IPv4).
    """

    body: str
    frame_len: int
    ipv6: bool = False

    def render(self, dst_mac: str, src_mac: str) -> str:
        eth = f"eth(da={dst_mac}, sa={src_mac}" + (f", type={ETH_P_IPV6:#x})" if self.ipv6 else ")")
        return "{ " + eth + ", " + self.body + " }"


def render_config(templates: Sequence[Template], dst_mac: str, src_mac: str, comment: str = "") -> str:
    """A complete configuration file: trafgen sends its packets round robin."""
    lines = [f"# {line}" for line in comment.splitlines() if line]
    lines += [t.render(dst_mac, src_mac) for t in templates]
    return "\n".join(lines) + "\n"


# --- field expressions ------------------------------------------------------------------


def _byte_ranges(base: bytes, prefixlen: int, *, last_lo: int | None, last_hi: int | None) -> list[str]:
    """Per-byte ``[i]=drnd(lo, hi)`` for the host part; fully random runs merged into 2/4-byte chunks."""
    n = len(base)
    parts: list[tuple[int, int, int, int]] = []  # (index, length, lo, hi); length > 1 means fully random
    for i in range(n):
        first_bit = 8 * i
        if first_bit + 8 <= prefixlen:
            continue
        fixed_bits = max(0, prefixlen - first_bit)
        lo = base[i] & (0xFF << (8 - fixed_bits)) & 0xFF
        hi = lo | (0xFF >> fixed_bits)
        if i == n - 1 and last_lo is not None and last_hi is not None:
            lo, hi = max(lo, last_lo), min(hi, last_hi)
        parts.append((i, 1, lo, hi))
    out: list[str] = []
    k = 0
    while k < len(parts):
        i, _, lo, hi = parts[k]
        full = lo == 0 and hi == 0xFF
        if full:
            run = 1
            while (
                k + run < len(parts)
                and parts[k + run][0] == i + run
                and parts[k + run][2:] == (0, 0xFF)
                and run < 4
            ):
                run += 1
            size = 4 if run >= 4 else 2 if run >= 2 else 1
            out.append(f"[{i}:{size}]=drnd()" if size > 1 else f"[{i}]=drnd()")
            k += size
        else:
            out.append(f"[{i}]=drnd({lo}, {hi})")
            k += 1
    return out


def random_address(field: str, network: IPv4Network | IPv6Network, *, avoid_edges: bool = False) -> str:
    """``field=<net>, field[i]=drnd(..)...``: a fresh address in ``network`` for every packet.

    ``avoid_edges`` keeps the last byte within 1..254 (no .0 or .255 in a
    /24: real hosts, as a carpet-bombing attacker aims at).
    """
    base = network.network_address.packed
    lo, hi = (1, 254) if avoid_edges else (None, None)
    ranges = _byte_ranges(base, network.prefixlen, last_lo=lo, last_hi=hi)
    return ", ".join([f"{field}={network.network_address}", *(f"{field}{r}" for r in ranges)])


def payload_bytes(data: bytes) -> str:
    """Raw bytes as trafgen hex constants (runs of one value as ``fill``)."""
    out: list[str] = []
    i = 0
    while i < len(data):
        j = i
        while j < len(data) and data[j] == data[i]:
            j += 1
        run = j - i
        if run >= 8:
            out.append(f"fill({data[i]:#04x}, {run})")
        else:
            out.extend(f"{b:#04x}" for b in data[i:j])
        i = j
    return ", ".join(out)


# --- the program ------------------------------------------------------------------------


def trafgen_path() -> str:
    """Absolute path of trafgen, or a MissingFeatureError that says how to install it."""
    path = shutil.which("trafgen") or next(
        (p for p in ("/usr/sbin/trafgen", "/sbin/trafgen") if os.access(p, os.X_OK)), None
    )
    if path is None:
        raise MissingFeatureError("trafgen is not installed: apt-get install netsniff-ng (it provides trafgen)")
    return path


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MissingFeatureError(f"{name} is not installed: apt-get install {package}")
    return path


def argv(
    *,
    device: str,
    config: str,
    pps: int,
    count: int | None,
    seed: int | None,
    cap_seconds: float,
    die_with_parent: bool,
    lanes: int | None = None,
) -> list[str]:
    """``[setpriv --pdeathsig TERM] timeout ... python -m agent.lab._lanes ... -- trafgen ...``.

    The flood runs as ``lanes`` staggered trafgen processes (``--cpus 1``
    each) that share ``pps`` and ``count`` (:mod:`agent.lab._lanes` says
    why: one trafgen sends each second's packets in one burst). Its
    environment must let ``python -m agent.lab._lanes`` import this package
    (:func:`agent.lab.traffic._python_env`).

    ``timeout(1)`` is the process group leader: a SIGTERM or SIGINT to it
    (which is all a plain ``Popen.terminate`` sends) is forwarded to the
    whole group, so every lane's sending worker stops too; and it ends the
    flood after ``cap_seconds`` even if nobody is left to stop it.
    ``die_with_parent`` has the kernel send it SIGTERM when the thread that
    started it exits (``PR_SET_PDEATHSIG``): right for the main thread (the
    process dying, even by SIGKILL), wrong for a short-lived worker thread.
    ``--no-sock-mem`` keeps trafgen off the host's socket-memory sysctls,
    ``--notouch-irq`` off IRQ affinities (veths have no IRQs anyway).
    """
    out = [_tool("setpriv", "util-linux"), "--pdeathsig", "TERM"] if die_with_parent else []
    out += [
        _tool("timeout", "coreutils"),
        "--signal=INT",
        "--kill-after=3",
        f"{max(1.0, cap_seconds):.0f}",
        sys.executable,
        "-m",
        "agent.lab._lanes",
        "--pps",
        str(int(pps)),
    ]
    if count is not None:
        out += ["--num", str(int(count))]
    if seed is not None:
        out += ["--seed", str(int(seed))]
    if lanes is not None:
        out += ["--lanes", str(int(lanes))]
    out += [
        "--",
        trafgen_path(),
        "--dev",
        device,
        "--conf",
        config,
        "--cpus",
        "1",
        "--no-sock-mem",
        "--notouch-irq",
    ]
    return out


def pcap_argv(config: str, pcap: str, count: int, seed: int | None = None) -> list[str]:
    """Write ``count`` packets of ``config`` to a pcap file instead of a device (for checks)."""
    out = [trafgen_path(), "--conf", config, "--out", pcap, "--num", str(count), "--cpus", "1"]
    if seed is not None:
        out += ["--seed", str(seed)]
    return out


def parse_summary(output: str) -> int | None:
    """The ``N packets outgoing`` total trafgen prints on exit, if it got that far."""
    m = _SUMMARY_RE.search(output)
    return int(m.group(1)) if m else None
