"""A real web server and a real HTTP load for the lab: nginx behind the gateway, wrk in front of it.

The probes of :mod:`agent.lab.traffic` send a few requests a second: enough
to see a service go down, not enough to see a protection that caps a busy
client. Here the legitimate side is a load an ISP's users really make:

- :class:`WebServer` runs nginx (Debian's ``nginx-light``) in the server
  namespace with Linux's defaults (SYN cookies stay as the namespace has
  them: on by default), one worker, no keep-alive: every request is a new
  TCP connection, as the busiest clients of a small site make them.
- :class:`HttpLoad` runs wrk (Debian's ``wrk``) in a client namespace, at
  its top speed with ``connections`` connections open at once, and reports
  requests per second, errors by kind and latency (a Lua ``done`` hook
  prints them as one JSON line).
- :class:`ClientPool` makes one client namespace look like many users: a
  source NAT rule (nftables, ``snat ... jhash``) spreads its connections
  over ``size`` addresses of a pool (by a hash of the source port) that the
  upstream router routes back to it. ``size=1`` is
  one address carrying everyone (a CGNAT address, a corporate proxy);
  ``size=200`` is a flash crowd of 200 real sources, each completing its
  handshakes.

Nothing here knows about floodguard: a bench runs the same load with and
without it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.lab._errors import MissingFeatureError, TopologyError
from agent.lab.topology import Lab

#: The pool of client i is 100.65.i.0/24 (inside the domestic 100.64.0.0/10).
POOL_BASE_V4 = ipaddress.IPv4Network("100.65.0.0/16")
WEB_PORT = 8080

_DONE_LUA = """
done = function(summary, latency, requests)
  io.write(string.format('{"event":"wrk","requests":%d,"duration_us":%d,"bytes":%d,'
    .. '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}\\n',
    summary.requests, summary.duration, summary.bytes, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def _log() -> Any:
    return structlog.get_logger("agent.lab.web")


def _tool(name: str, package: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)),
                                      None)
    if path is None:
        raise MissingFeatureError(f"{name} is not installed: apt-get install {package}")
    return path


class WebServer:
    """nginx in the lab's server namespace, answering ``200 ok`` on ``address:port``; a context manager."""

    def __init__(self, lab: Lab, *, address: str | None = None, port: int = WEB_PORT, backlog: int = 4096) -> None:
        self.lab = lab
        self.address = address or str(lab.server_v4)
        self.port = port
        self.backlog = backlog
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/"

    def _config(self, d: str) -> str:
        temp = "\n".join(f"  {k}_temp_path {d}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        return f"""# floodguard lab web server
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
daemon off;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  keepalive_timeout 0;
{temp}
  server {{
    listen {self.address}:{self.port} backlog={self.backlog};
    location / {{ return 200 "ok\\n"; }}
  }}
}}
"""

    def start(self) -> Self:
        if self._proc is not None:
            raise TopologyError("the web server is already running")
        nginx = _tool("nginx", "nginx-light")
        self._dir = tempfile.mkdtemp(prefix="floodguard-nginx-")
        conf = os.path.join(self._dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(self._config(self._dir))
        self._proc = self.lab.topology.popen(self.lab.server, [nginx, "-c", conf, "-p", self._dir],
                                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10.0
        while not self._listening():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                log = self._error_log()
                self.stop()
                raise TopologyError(f"nginx did not start on {self.address}:{self.port}: {log or 'no error log'}")
            time.sleep(0.05)
        _log().info("web_server_started", url=self.url, pid=self._proc.pid)
        return self

    def _listening(self) -> bool:
        def probe() -> bool:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                return s.connect_ex((self.address, self.port)) == 0

        return bool(self.lab.topology.call(self.lab.server, probe))

    def _error_log(self) -> str:
        if self._dir is None:
            return ""
        with contextlib.suppress(OSError), open(os.path.join(self._dir, "error.log")) as f:
            return f.read()[-2000:]
        return ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        d, self._dir = self._dir, None
        if d is not None:
            shutil.rmtree(d, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@dataclass(frozen=True)
class HttpResult:
    """What one run of wrk saw."""

    requests: int
    seconds: float
    errors: dict[str, int] = field(default_factory=dict)
    p50_ms: float | None = None
    p99_ms: float | None = None

    @property
    def rps(self) -> float:
        """Requests completed per second (errors excluded)."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "seconds": round(self.seconds, 3), "rps": round(self.rps, 1),
                "errors": dict(self.errors), "p50_ms": self.p50_ms, "p99_ms": self.p99_ms}

    def __str__(self) -> str:
        errs = ", ".join(f"{k} {v}" for k, v in self.errors.items() if v) or "no errors"
        return f"{self.rps:,.0f} req/s ({self.requests:,} in {self.seconds:.1f} s; {errs}; p99 {self.p99_ms} ms)"


class HttpLoad:
    """wrk from a client namespace against a URL: one run of ``seconds``, every request a new connection."""

    def __init__(self, lab: Lab, url: str, *, client: int = 0, connections: int = 64, seconds: float = 8.0,
                 timeout_s: float = 2.0) -> None:
        if not 0 <= client < len(lab.clients):
            raise ValueError(f"client {client} does not exist; the lab has {len(lab.clients)}")
        self.lab, self.url, self.client = lab, url, client
        self.connections, self.seconds, self.timeout_s = connections, seconds, timeout_s
        self._proc: subprocess.Popen[str] | None = None
        self._dir: str | None = None

    def start(self) -> Self:
        wrk = _tool("wrk", "wrk")
        self._dir = tempfile.mkdtemp(prefix="floodguard-wrk-")
        script = os.path.join(self._dir, "done.lua")
        with open(script, "w") as f:
            f.write(_DONE_LUA)
        argv = [wrk, "-t1", f"-c{self.connections}", f"-d{max(1, round(self.seconds))}s",
                f"--timeout={self.timeout_s:g}s", "-H", "Connection: close", "-s", script, self.url]
        ns = self.lab.clients[self.client].ns
        self._proc = self.lab.topology.popen(ns, argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
        return self

    def wait(self) -> HttpResult:
        proc = self._proc
        if proc is None:
            raise TopologyError("the load was not started")
        try:
            out, _ = proc.communicate(timeout=self.seconds + 30.0)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        finally:
            self._proc = None
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
        for line in reversed(out.splitlines()):
            if line.startswith('{"event":"wrk"'):
                d = json.loads(line)
                return HttpResult(
                    requests=int(d["requests"]),
                    seconds=int(d["duration_us"]) / 1e6,
                    errors={k: int(d[k]) for k in ("connect", "read", "write", "status", "timeout")},
                    p50_ms=round(int(d["p50_us"]) / 1000, 2) if d["requests"] else None,
                    p99_ms=round(int(d["p99_us"]) / 1000, 2) if d["requests"] else None,
                )
        raise TopologyError(f"wrk printed no summary (status {proc.returncode}):\n{out[-2000:]}")

    def run(self) -> HttpResult:
        return self.start().wait()

    def stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def pool_network(client: int) -> ipaddress.IPv4Network:
    """The pool of addresses client ``client`` may appear as (a /24 of 100.65.0.0/16)."""
    return ipaddress.IPv4Network((int(POOL_BASE_V4.network_address) + (client << 8), 24))


class ClientPool:
    """Client ``client``'s connections leave from ``size`` addresses of its pool (source NAT, round robin).

    Adds the route of the pool to the upstream router (towards the client) and
    an nftables table in the client namespace; :meth:`close` removes both.
    """

    TABLE = "floodguard_lab_pool"

    def __init__(self, lab: Lab, client: int = 0, size: int = 200) -> None:
        if not 1 <= size <= 254:
            raise ValueError("a pool has 1..254 addresses")
        self.lab, self.client, self.size = lab, client, size
        self.network = pool_network(client)
        self._active = False

    @property
    def addresses(self) -> list[ipaddress.IPv4Address]:
        return [self.network.network_address + i for i in range(1, self.size + 1)]

    def _client_address(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(int(self.lab.domestic_v4.network_address) + (self.client << 8) + 2)

    def open(self) -> Self:
        topo = self.lab.topology
        nft = _tool("nft", "nftables")
        # A plain address range picks one address per (source, destination) pair (a hash): every
        # connection would leave from the same pool address. A hash of the source port spreads them,
        # and keeps a connection's retransmitted SYN on its address, as a real NAT keeps a user's
        # mapping (SYN authentication verifies the address that answered the challenge).
        pool = ", ".join(f"{i} : {a}" for i, a in enumerate(self.addresses))
        rule = f"snat to jhash tcp sport mod {self.size} map {{ {pool} }}"
        script = (f"table ip {self.TABLE} {{\n chain post {{ type nat hook postrouting priority srcnat; "
                  f"ip saddr {self._client_address()} ip daddr {self.lab.server_net_v4} {rule}; }}\n}}\n")
        ns = self.lab.clients[self.client].ns
        topo.run(ns, [nft, "-f", "-"], input=script, text=True)
        # Linux conntrack marks a SYN-ACK whose acknowledgment number is wrong as invalid and does not
        # translate it back: the NAT then drops the SYN challenge of a protected group's SYN
        # authentication, and no client behind it can ever be verified. Carrier-grade NATs track TCP
        # loosely; so does this one (docs/mitigation.md says what a strict one costs).
        topo.set_sysctl(ns, "net.netfilter.nf_conntrack_tcp_be_liberal", 1)
        up = topo.netns(self.lab.upstream)
        with IPRoute(netns=up, flags=0) as ipr:
            ipr.route("replace", dst=str(self.network), gateway=str(self._client_address()))
        self._active = True
        _log().info("client_pool_opened", client=self.client, size=self.size, network=str(self.network))
        return self

    def close(self) -> None:
        if not self._active:
            return
        self._active = False
        topo = self.lab.topology
        with contextlib.suppress(TopologyError, OSError, subprocess.CalledProcessError):
            topo.run(self.lab.clients[self.client].ns, [_tool("nft", "nftables"), "delete", "table", "ip",
                                                        self.TABLE])
        with contextlib.suppress(TopologyError, OSError, NetlinkError), \
                IPRoute(netns=topo.netns(self.lab.upstream), flags=0) as ipr:
            ipr.route("del", dst=str(self.network), gateway=str(self._client_address()))

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
