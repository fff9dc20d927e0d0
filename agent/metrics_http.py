"""The metrics endpoint: prometheus_client's WSGI app behind a server that cannot be exhausted.

prometheus_client's own ``start_http_server`` starts a thread per connection
and waits for the request line forever: about a thousand idle TCP
connections to the port used up the daemon's descriptors, and then the
control socket could not accept the CLI (``floodguard ban``) in the middle of
an attack. This server bounds what a client can hold:

* at most ``MAX_CONNECTIONS`` connections are served at once; one more is
  answered ``503`` from the accepting thread and closed at once, so it costs
  a descriptor for microseconds;
* each connection gets ``DEADLINE_S`` in all to send its request and take the
  answer (not per ``recv``: a client that trickles a byte at a time is cut
  off at the deadline too);
* scrapes run one at a time: two Prometheus servers (or one hostile client)
  scraping together do not double the work done under the agent's lock.

The app, the exposition format and content negotiation stay prometheus_client's.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import structlog
from prometheus_client import CollectorRegistry, make_wsgi_app

from agent.bounded import BoundedThreadingMixIn

#: Connections served at once; Prometheus needs one per scraping server.
MAX_CONNECTIONS = 16
#: Seconds a connection has, in all, to send its request and take the answer.
DEADLINE_S = 10.0
#: Seconds between two log lines about refused connections.
_REFUSED_LOG_EVERY_S = 60.0

_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nConnection: close\r\n"
         b"Content-Length: 45\r\n\r\nfloodguard: too many metrics clients at once\n")

log = structlog.get_logger("agent.metrics")


class MetricsListenError(OSError):
    """The endpoint could not listen; ``strerror`` says where and what to do."""


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); port 0 picks a free one."""
    host, sep, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{listen!r}: write an IPv6 address in brackets, e.g. [::1]:9470")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{listen!r} is not host:port, e.g. 127.0.0.1:9470 or [::1]:9470")
    return host, int(port)


class _Handler(WSGIRequestHandler):
    timeout = DEADLINE_S  # per blocking call; the server's deadline bounds the whole connection

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 — the base class's name
        """Quiet: a scrape every 15 s is not news."""


class _Server(BoundedThreadingMixIn, WSGIServer):
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], family: int) -> None:
        self.address_family = family
        super().__init__(address, _Handler)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.refused = 0
        self._refused_logged = 0
        self._refused_logged_at = -_REFUSED_LOG_EVERY_S

    def serve_one(self, request: Any, client_address: Any) -> None:
        cut = threading.Timer(DEADLINE_S, _cut, (request,))
        cut.daemon = True
        cut.start()
        try:
            super().serve_one(request, client_address)
        finally:
            cut.cancel()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up or was cut off at its deadline is not an error of ours."""

    def refuse(self, request: socket.socket) -> None:
        self.refused += 1  # counted before the client can see the answer
        with contextlib.suppress(OSError):
            request.setblocking(False)
            request.send(_BUSY)
        self.shutdown_request(request)
        now = time.monotonic()
        if now - self._refused_logged_at >= _REFUSED_LOG_EVERY_S:
            log.warning("metrics_clients_refused", refused=self.refused - self._refused_logged,
                        max_connections=MAX_CONNECTIONS,
                        hint="more clients than Prometheus needs hold the metrics port: "
                             "limit who can reach metrics.listen")
            self._refused_logged, self._refused_logged_at = self.refused, now


def _cut(sock: socket.socket) -> None:
    # Unblocks the handler's recv/send: it sees the end of the stream and returns.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _one_at_a_time(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    lock = threading.Lock()

    def serialized(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        with lock:
            return list(app(environ, start_response))

    return serialized


class MetricsServer:
    """The running endpoint: a daemon thread serving ``registry`` over HTTP."""

    def __init__(self, registry: CollectorRegistry, listen: str) -> None:
        host, port = parse_listen(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._httpd = _Server((host, port), family)
        except OSError as e:
            hint = {
                errno.EADDRINUSE: "another process listens there: stop it or change metrics.listen",
                errno.EADDRNOTAVAIL: "no interface of this host has that address: change metrics.listen",
            }.get(e.errno or 0, "change metrics.listen")
            raise MetricsListenError(e.errno, f"cannot serve metrics on {listen}: {e.strerror}; {hint}") from e
        self._httpd.set_app(_one_at_a_time(make_wsgi_app(registry)))
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        self.registry = registry

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    @property
    def refused(self) -> int:
        """Connections answered 503 because ``MAX_CONNECTIONS`` were being served."""
        return self._httpd.refused

    def shutdown(self) -> None:
        """Stop serving and release the socket (idempotent)."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()


def serve(registry: CollectorRegistry, listen: str) -> MetricsServer:
    """Serve ``registry`` on ``listen`` (the policy's metrics.listen, loopback by default) from a daemon thread."""
    return MetricsServer(registry, listen)


__all__ = ["DEADLINE_S", "MAX_CONNECTIONS", "MetricsListenError", "MetricsServer", "parse_listen", "serve"]
