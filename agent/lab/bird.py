"""BIRD 2 as the upstream router of the lab: an independent BGP implementation to announce to.

:func:`bird_config` writes the configuration of a router that peers with
floodguard's speaker over eBGP (or iBGP), keeps received Flowspec in the
tables ``flowtab4``/``flowtab6``, turns routes with the BLACKHOLE community
(65535:666, RFC 7999) into blackhole routes — and, with ``kernel=True``,
installs those in its namespace's kernel table, so that the lab's upstream
router really drops what an RTBH announcement asks it to. :class:`Bird`
runs it in a namespace (``nsenter``, never ``ip netns exec``) with its
control socket in a directory of the caller's, and reads its tables through
``birdc``: :meth:`Bird.routes` returns each route with its attribute lines,
as ``birdc show route table T all`` prints them.

BIRD's timers are shortened (connect retry 1 s, error wait 1-2 s) so that a
session comes back within seconds in tests; nothing else differs from what
an ISP's router would be told.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROTOCOL = "floodguard"
TABLES = ("flowtab4", "flowtab6", "master4", "master6")


@dataclass(frozen=True)
class BirdRoute:
    """One route of a table: its first line (``flow4 { dst …; proto 17; }`` or ``203.0.113.7/32 …``) and attributes."""

    table: str
    line: str
    attributes: tuple[str, ...]

    @property
    def net(self) -> str:
        if self.line.startswith("flow"):
            return self.line[: self.line.index("}") + 1]
        return self.line.split()[0]

    @property
    def text(self) -> str:
        return "\n".join((self.line, *self.attributes))

    def attribute(self, name: str) -> str | None:
        for a in self.attributes:
            if a.startswith(name + ":"):
                return a.split(":", 1)[1].strip()
        return None


def bird_config(*, router_id: str, local_as: int, neighbors: Sequence[tuple[str, int]], kernel: bool = False,
                log_file: Path | None = None) -> str:
    """A BIRD 2 configuration: one BGP protocol per neighbour (address, AS) named floodguard, floodguard1, …"""
    out = [f"router id {router_id};", f'log "{log_file}" all;' if log_file else "log stderr all;",
           "protocol device { scan time 60; }", "flow4 table flowtab4;", "flow6 table flowtab6;",
           "filter rtbh {", "  if (65535, 666) ~ bgp_community then { dest = RTD_BLACKHOLE; accept; }",
           "  reject;", "}"]
    if kernel:
        for v in ("4", "6"):
            out += [f"protocol kernel kernel{v} {{", f"  ipv{v} {{ export where dest = RTD_BLACKHOLE; import none; }};",
                    "}"]
    for i, (address, asn) in enumerate(neighbors):
        name = PROTOCOL if i == 0 else f"{PROTOCOL}{i}"
        out += [
            f"protocol bgp {name} {{",
            f"  local as {local_as};",
            f"  neighbor {address} as {asn};",
            "  connect delay time 1; connect retry time 1; error wait time 1, 2;",
            "  ipv4 { import filter rtbh; export none; };",
            "  ipv6 { import filter rtbh; export none; };",
            "  flow4 { table flowtab4; import all; export none; };",
            "  flow6 { table flowtab6; import all; export none; };",
            "}",
        ]
    return "\n".join(out) + "\n"


class Bird:
    """A BIRD process in a namespace, and birdc against it."""

    def __init__(self, topology: Any, node: str, workdir: Path, config: str) -> None:
        self.topology = topology
        self.node = node
        self.workdir = workdir
        self.socket = workdir / "bird.ctl"
        self.config = workdir / "bird.conf"
        self.config.write_text(config)
        self.log = workdir / "bird.out"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        out = self.log.open("ab")
        self._proc = self.topology.popen(self.node, ["bird", "-f", "-c", str(self.config), "-s", str(self.socket)],
                                         stdout=out, stderr=subprocess.STDOUT)
        out.close()
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"bird exited with {self._proc.returncode}: {self.log.read_text()[-2000:]}")
            if self.socket.exists() and self.birdc("show", "status", check=False).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"bird did not open {self.socket} within {timeout:.0f} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=10)

    def birdc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["birdc", "-s", str(self.socket), *args], capture_output=True, text=True, timeout=10,
                           check=False)
        if check and r.returncode != 0:
            raise RuntimeError(f"birdc {' '.join(args)}: {r.stdout}{r.stderr}")
        return r

    def show(self, table: str) -> str:
        """``birdc show route table TABLE all``, as printed."""
        return self.birdc("show", "route", "table", table, "all").stdout

    def routes(self, table: str) -> list[BirdRoute]:
        out: list[BirdRoute] = []
        line: str | None = None
        attrs: list[str] = []
        for raw in self.show(table).splitlines():
            if not raw.strip() or raw.startswith(("BIRD ", "Table ")):
                continue
            if raw[0].isspace():
                attrs.append(raw.strip())
                continue
            if line is not None:
                out.append(BirdRoute(table, line, tuple(attrs)))
            line, attrs = raw.strip(), []
        if line is not None:
            out.append(BirdRoute(table, line, tuple(attrs)))
        return out

    def session(self, protocol: str = PROTOCOL) -> str:
        """The protocol's BGP state as ``show protocols`` names it (Established, Active, Idle, …)."""
        r = self.birdc("show", "protocols", protocol)
        for raw in r.stdout.splitlines():
            if raw.startswith(protocol + " "):
                return raw.split()[-1]
        return "unknown"

    def wait(self, what: str, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until ``predicate()`` holds (decided by BIRD's state), or fail naming ``what``."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                tables = "\n".join(f"--- {t}\n{self.show(t)}" for t in TABLES)
                raise AssertionError(f"BIRD: {what} not seen within {timeout:.0f} s; session "
                                     f"{self.session()}\n{tables}")
            time.sleep(0.05)


def nets(bird: Bird, table: str) -> set[str]:
    return {r.net for r in bird.routes(table)}


_SPACES = re.compile(r"\s+")


def normalise(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


__all__ = ["PROTOCOL", "TABLES", "Bird", "BirdRoute", "bird_config", "nets", "normalise"]
