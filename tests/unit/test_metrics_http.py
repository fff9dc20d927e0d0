"""The metrics endpoint against hostile clients: idle, trickling and too many connections."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from agent import metrics_http
from agent.metrics_http import MAX_CONNECTIONS, MetricsServer

# Generous: each wait ends on an event (an answer, an end of stream) long before it.
PATIENCE_S = 30.0


def _serve(monkeypatch: pytest.MonkeyPatch, deadline: float) -> MetricsServer:
    monkeypatch.setattr(metrics_http, "DEADLINE_S", deadline)
    monkeypatch.setattr(metrics_http._Handler, "timeout", deadline)
    registry = CollectorRegistry()
    Counter("probe_events", "a series to find in the answer", registry=registry).inc()
    return metrics_http.serve(registry, "127.0.0.1:0")


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[MetricsServer]:
    srv = _serve(monkeypatch, 1.0)
    yield srv
    srv.shutdown()


def _connect(srv: MetricsServer) -> socket.socket:
    s = socket.create_connection((srv.host, srv.port), timeout=PATIENCE_S)
    s.settimeout(PATIENCE_S)
    return s


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def _scrape(srv: MetricsServer) -> str:
    """A scrape; a 503 while the slots of clients that just left are being freed is retried."""
    deadline = time.monotonic() + PATIENCE_S
    while True:
        try:
            with urllib.request.urlopen(srv.url, timeout=PATIENCE_S) as r:
                return str(r.read().decode())
        except urllib.error.HTTPError as e:
            if e.code != 503 or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_connections_beyond_the_cap_are_answered_busy_and_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    server = _serve(monkeypatch, 10 * PATIENCE_S)  # the idle ones keep their slots for the whole test
    try:
        with contextlib.ExitStack() as held:
            for _ in range(MAX_CONNECTIONS):
                held.enter_context(_connect(server))
            # Every slot is held: the next clients are told so at once, and closed.
            extra = [held.enter_context(_connect(server)) for _ in range(50)]
            answers = [_read_all(s) for s in extra]
            assert all(a.startswith(b"HTTP/1.1 503") and b"too many metrics clients" in a for a in answers)
            assert server.refused == 50
        # The idle clients hung up: the slots they held serve scrapes again.
        assert "probe_events_total 1.0" in _scrape(server)
    finally:
        server.shutdown()


def test_an_idle_client_is_cut_off_at_the_deadline(server: MetricsServer) -> None:
    with _connect(server) as s:
        assert _read_all(s) == b""  # the stream ends: nothing was asked, nothing answered
    assert "probe_events_total 1.0" in _scrape(server)


def test_a_client_that_trickles_its_request_is_cut_off_at_the_deadline(server: MetricsServer) -> None:
    with _connect(server) as s:
        s.sendall(b"GET /metr")  # and never the rest: a per-recv timeout alone would not end this
        stop = threading.Event()

        def trickle() -> None:
            for ch in b"ics HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200:
                if stop.wait(0.2):
                    return
                with contextlib.suppress(OSError):
                    s.send(bytes([ch]))

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        try:
            assert _read_all(s) == b""
        finally:
            stop.set()
            t.join()
    assert "probe_events_total 1.0" in _scrape(server)


def test_scrapes_are_served_one_at_a_time() -> None:
    inside = 0
    most = 0
    lock = threading.Lock()
    gate = threading.Event()

    class Slow:
        def collect(self) -> list[object]:
            nonlocal inside, most
            with lock:
                inside += 1
                most = max(most, inside)
            gate.wait(0.2)
            with lock:
                inside -= 1
            return []

    registry = CollectorRegistry()
    registry.register(Slow())  # type: ignore[arg-type]
    srv = metrics_http.serve(registry, "127.0.0.1:0")
    try:
        threads = [threading.Thread(target=_scrape, args=(srv,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        srv.shutdown()
    assert most == 1
