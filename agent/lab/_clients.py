"""Legitimate traffic for the lab: a small web and UDP echo server, and probe clients.

This module runs as its own process inside a namespace (``nsenter --net=...
-- python -m agent.lab._clients ...``), started by :mod:`agent.lab.traffic`.
A separate process keeps the measurements honest: the clients' timing does
not depend on what the test process (or an in-process daemon) is doing with
the GIL, and the server is a real process with a real listen backlog. It
imports the standard library only, so it starts in a few tens of
milliseconds.

``serve``: TCP listeners answering ``GET`` with a small ``200 OK`` (new
connection each time, ``Connection: close``) and UDP echo, on every address
of the namespace (``0.0.0.0`` and, with ``--ipv6``, ``::``), each with the
listen backlog given (like a real server's 128: a SYN flood can fill it).

``probe``: open-loop requests at a steady rate, whatever the previous ones
did, each with a timeout: ``http`` (connect, GET, read the whole answer),
``udp`` (a datagram with a request id, wait for its echo) or ``connect``
(only the TCP handshake). On SIGTERM or SIGINT it stops starting requests,
lets those in flight finish (each is bounded by its timeout) and exits.
Both also exit when ``--parent`` is no longer their parent process: a test
killed with SIGKILL leaves no client sending into a namespace forever.

Both speak JSON lines on stdout: ``{"event": "ready", ...}`` once listening
or about to send, one ``{"t": start, "ok": bool, "lat": seconds, "err":
reason}`` per request (``t`` is ``time.monotonic()``, the system-wide
CLOCK_MONOTONIC, so the parent can compare it with its own clock), and
``{"event": "done", ...}`` at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any, cast

HTTP_BODY = b"floodguard lab: hello\n"
HTTP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
    + str(len(HTTP_BODY)).encode()
    + b"\r\nConnection: close\r\n\r\n"
    + HTTP_BODY
)
# A server gives a slow client this long to send its request headers.
REQUEST_TIMEOUT = 5.0
UDP_MAGIC = b"fgprobe"


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _stop_event(loop: asyncio.AbstractEventLoop, parent: int | None) -> asyncio.Event:
    """Set on SIGTERM or SIGINT, or once ``parent`` is no longer our parent (it died, even by SIGKILL)."""
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def watch() -> None:
        if os.getppid() != parent:
            stop.set()
        else:
            loop.call_later(0.5, watch)

    if parent is not None:
        watch()
    return stop


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "short_read"
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, f"errno{exc.errno}").lower()
    return type(exc).__name__


# --- server -----------------------------------------------------------------------------


class _Counts:
    def __init__(self) -> None:
        self.http = 0
        self.udp = 0


# linux/in.h; Python's socket module has no IP_PKTINFO.
IP_PKTINFO = 8
_IN_PKTINFO = struct.Struct("=I4s4s")  # ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("=16sI")  # addr, ifindex


class _Echo:
    """UDP echo that answers from the address each request was sent to.

    The namespace owns a whole /24 through one local route; a socket bound
    to 0.0.0.0 would answer from the address routing picks (the server
    link's own), and a client's connected socket ignores an answer from
    an address it did not ask. IP_PKTINFO tells which address was asked and
    sets the answer's source to it.
    """

    def __init__(self, sock: socket.socket, counts: _Counts) -> None:
        self.sock = sock
        self.counts = counts
        self.v6 = sock.family == socket.AF_INET6
        if self.v6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)

    def readable(self) -> None:
        for _ in range(64):  # then let the loop breathe: a flood must not starve the other sockets
            try:
                data, ancillary, _flags, addr = self.sock.recvmsg(65535, socket.CMSG_SPACE(_IN6_PKTINFO.size))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error for an earlier answer (e.g. to a spoofed source)
            self.counts.udp += 1
            cmsgs = []
            for level, kind, cdata in ancillary:
                if not self.v6 and level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                    _ifindex, _spec, dst = _IN_PKTINFO.unpack_from(cdata)
                    cmsgs.append((socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, dst, bytes(4))))
                elif self.v6 and level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                    dst6, _ifindex = _IN6_PKTINFO.unpack_from(cdata)
                    cmsgs.append((socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, _IN6_PKTINFO.pack(dst6, 0)))
            with contextlib.suppress(OSError):
                self.sock.sendmsg([data], cmsgs, socket.MSG_DONTWAIT, addr)


def _listening_socket(family: int, kind: int, port: int, backlog: int) -> socket.socket:
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))  # noqa: S104 — the lab's server answers on every address of its namespace
    if kind == socket.SOCK_STREAM:
        sock.listen(backlog)
    sock.setblocking(False)
    return sock


async def _serve(
    tcp_ports: Sequence[int], udp_ports: Sequence[int], backlog: int, ipv6: bool, parent: int | None
) -> None:
    loop = asyncio.get_running_loop()
    stop = _stop_event(loop, parent)
    counts = _Counts()
    families = [socket.AF_INET, socket.AF_INET6] if ipv6 else [socket.AF_INET]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await reader.readuntil(b"\r\n\r\n")
                writer.write(HTTP_RESPONSE)
                await writer.drain()
                counts.http += 1
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    servers: list[asyncio.Server] = []
    udp_socks: list[socket.socket] = []
    for family in families:
        for port in tcp_ports:
            sock = _listening_socket(family, socket.SOCK_STREAM, port, backlog)
            # asyncio calls listen() again with this backlog: pass the same one.
            servers.append(await asyncio.start_server(handle, sock=sock, backlog=backlog))
        for port in udp_ports:
            sock = _listening_socket(family, socket.SOCK_DGRAM, port, backlog)
            loop.add_reader(sock.fileno(), _Echo(sock, counts).readable)
            udp_socks.append(sock)
    _emit({"event": "ready", "pid": os.getpid(), "tcp": list(tcp_ports), "udp": list(udp_ports), "backlog": backlog})
    await stop.wait()
    for server in servers:
        server.close()
    for sock in udp_socks:
        loop.remove_reader(sock.fileno())
        sock.close()
    _emit({"event": "done", "http": counts.http, "udp": counts.udp})


# --- probes -----------------------------------------------------------------------------


class _UdpClient(asyncio.DatagramProtocol):
    """One connected socket for all requests; answers are matched by request id."""

    def __init__(self) -> None:
        self.pending: dict[int, asyncio.Future[float]] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:  # noqa: ARG002 — asyncio's DatagramProtocol signature
        parts = data.split(b" ", 2)
        if len(parts) < 2 or parts[0] != UDP_MAGIC:
            return
        try:
            key = int(parts[1])
        except ValueError:
            return
        fut = self.pending.get(key)
        if fut is not None and not fut.done():
            fut.set_result(time.monotonic())

    def error_received(self, exc: Exception) -> None:
        # ICMP errors cannot be tied to one request; those requests time out.
        pass


async def _probe(  # noqa: PLR0915 — one coroutine per probe kind keeps the event loop's state local
    kind: str, host: str, port: int, rate: float, timeout: float, count: int | None, size: int, parent: int | None
) -> None:
    loop = asyncio.get_running_loop()
    stop = _stop_event(loop, parent)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: floodguard-lab\r\nConnection: close\r\n\r\n".encode()
    udp: _UdpClient | None = None
    if kind == "udp":
        _, proto = await loop.create_datagram_endpoint(_UdpClient, remote_addr=(host, port), family=family)
        udp = proto

    async def one(seq: int) -> None:
        start = time.monotonic()
        ok, err, lat = False, None, None
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(timeout):
                if kind == "udp":
                    assert udp is not None and udp.transport is not None
                    fut: asyncio.Future[float] = loop.create_future()
                    udp.pending[seq] = fut
                    head = UDP_MAGIC + b" " + str(seq).encode() + b" "
                    udp.transport.sendto(head + b"x" * max(0, size - len(head)))
                    try:
                        lat = (await fut) - start
                    finally:
                        udp.pending.pop(seq, None)
                    ok = True
                else:
                    reader, writer = await asyncio.open_connection(host, port, family=family)
                    if kind == "connect":
                        lat = time.monotonic() - start
                        ok = True
                    else:
                        writer.write(request)
                        await writer.drain()
                        answer = await reader.read()
                        lat = time.monotonic() - start
                        ok = answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(HTTP_BODY)
                        if not ok:
                            err = "bad_answer"
        except Exception as exc:  # noqa: BLE001 — every failure is a data point, none ends the probe
            ok, lat, err = False, None, _reason(exc)
        finally:
            if writer is not None:
                writer.close()
        _emit({"t": start, "ok": ok, "lat": lat, "err": err})

    tasks: set[asyncio.Task[None]] = set()
    _emit({"event": "ready", "pid": os.getpid(), "kind": kind, "rate": rate})
    t0 = time.monotonic()
    seq = 0
    while not stop.is_set() and (count is None or seq < count):
        delay = t0 + seq / rate - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                break
        task = asyncio.create_task(one(seq))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        seq += 1
    if tasks:
        await asyncio.wait(set(tasks))
    _emit({"event": "done", "sent": seq})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.lab._clients", description=__doc__.split("\n\n")[0])
    parser.add_argument("--parent", type=int, default=None, help="exit when this process is no longer the parent")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="web and UDP echo server")
    serve.add_argument("--tcp", type=int, action="append", default=[], help="TCP (HTTP) port; repeatable")
    serve.add_argument("--udp", type=int, action="append", default=[], help="UDP echo port; repeatable")
    serve.add_argument("--backlog", type=int, default=128)
    serve.add_argument("--ipv6", action="store_true", help="listen on :: as well")
    probe = sub.add_parser("probe", help="requests at a steady rate")
    probe.add_argument("--kind", choices=("http", "udp", "connect"), required=True)
    probe.add_argument("--host", required=True)
    probe.add_argument("--port", type=int, required=True)
    probe.add_argument("--rate", type=float, default=20.0, help="requests per second")
    probe.add_argument("--timeout", type=float, default=2.0, help="seconds per request")
    probe.add_argument("--count", type=int, default=None, help="stop after this many (default: until SIGTERM)")
    probe.add_argument("--size", type=int, default=64, help="UDP datagram size")
    args = parser.parse_args(argv)
    if args.command == "serve":
        asyncio.run(_serve(args.tcp, args.udp, args.backlog, args.ipv6, args.parent))
    else:
        if args.rate <= 0:
            parser.error("--rate must be positive")
        asyncio.run(
            _probe(args.kind, args.host, args.port, args.rate, args.timeout, args.count, args.size, args.parent)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
