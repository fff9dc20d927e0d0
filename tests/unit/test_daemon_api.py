"""agent/daemon/api.py: the control socket's server and the CLI's client, over a real Unix socket.

Every refusal is one JSON line with ok=false and a sentence; a slow or idle
client is cut off by the server's deadline and never holds more than its
slot; clients beyond the cap are told so at once. Outcomes are decided from
the answers, never from how long something took.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from agent.daemon import StartupError
from agent.daemon.api import MAX_REQUEST, AgentNotRunningError, ControlServer, RequestError, call


def handler(verb: str, args: Mapping[str, object]) -> object:
    if verb == "echo":
        return dict(args)
    if verb == "boom":
        raise KeyError("a bug")
    if verb == "typed":
        if not isinstance(args.get("n"), int):
            raise RequestError("typed: n must be an integer")
        return args["n"]
    raise RequestError(f"unknown verb {verb!r}: the agent answers echo, typed")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "control.sock"


def serve(path: Path, **kw: float) -> ControlServer:
    server = ControlServer(path, None, handler, **kw)  # type: ignore[arg-type]
    server.start()
    return server


@pytest.fixture
def server(path: Path) -> Iterator[ControlServer]:
    s = serve(path)
    yield s
    s.close()


def raw(path: Path, data: bytes, *, close_write: bool = True) -> dict[str, object]:
    """Send bytes as they are; the server's one-line answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(data)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        return answer(s)


def answer(s: socket.socket) -> dict[str, object]:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    got = json.loads(buf)
    assert isinstance(got, dict)
    return got


def test_a_request_is_answered(server: ControlServer, path: Path) -> None:
    assert call(path, "echo", {"a": [1, 2]}) == {"a": [1, 2]}


def test_an_oversized_line_is_refused_in_one_sentence(server: ControlServer, path: Path) -> None:
    got = raw(path, b'{"verb": "echo", "args": {"x": "' + b"x" * (MAX_REQUEST + 10) + b'"}}\n')
    assert got == {"ok": False, "error": f"request longer than {MAX_REQUEST} bytes: one JSON object per line"}


@pytest.mark.parametrize(("line", "expected"), [
    (b"{not json\n", "Expecting property name"),
    (b"\x80\x81\n", "decode"),
    (b'["echo"]\n', 'a request is {"verb": "...", "args": {...}}'),
    (b'{"verb": 5}\n', 'a request is {"verb": "...", "args": {...}}'),
    (b'{"verb": "echo", "args": [1]}\n', "args must be an object"),
])
def test_malformed_requests_are_refused(server: ControlServer, path: Path, line: bytes, expected: str) -> None:
    got = raw(path, line)
    assert got["ok"] is False and expected in str(got["error"])


def test_unknown_verbs_wrong_types_and_bugs_are_answered(server: ControlServer, path: Path) -> None:
    with pytest.raises(RequestError, match="unknown verb 'nope'"):
        call(path, "nope")
    with pytest.raises(RequestError, match="n must be an integer"):
        call(path, "typed", {"n": "5"})
    assert call(path, "typed", {"n": 5}) == 5
    with pytest.raises(RequestError, match="internal error"):
        call(path, "boom")
    assert call(path, "echo") == {}, "the server goes on after a bug"


def test_a_slow_client_is_cut_off_by_the_deadline_for_the_whole_line(path: Path) -> None:
    server = serve(path, read_timeout=0.3)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(path))
            s.sendall(b'{"verb": ')
            # A byte now and then keeps each recv short of its timeout: only a deadline ends this.
            got: dict[str, object] | None = None
            for _ in range(200):
                try:
                    s.sendall(b" ")
                except OSError:
                    break
                s.settimeout(0.05)
                try:
                    got = answer(s)
                    break
                except TimeoutError:
                    continue
            if got is None:
                s.settimeout(10)
                got = answer(s)
        assert got == {"ok": False, "error": "no complete request within 0.3 s"}
        assert call(path, "echo", {"after": 1}) == {"after": 1}
    finally:
        server.close()


def test_clients_beyond_the_cap_are_told_at_once_and_served_once_a_slot_frees(path: Path) -> None:
    server = serve(path, max_clients=2, read_timeout=60)
    idle = []
    try:
        for _ in range(2):  # two clients that connect and say nothing hold both slots
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(path))
            idle.append(s)
        got = raw(path, b'{"verb": "echo"}\n')
        assert got == {"ok": False, "error": "the agent is serving 2 clients already: try again in a few seconds"}
        for s in idle:
            s.close()
        deadline = time.monotonic() + 10
        busy: list[str] = []
        while True:  # the slots free once the server has seen the idle clients go
            try:
                assert call(path, "echo", {"x": 1}) == {"x": 1}
                break
            except RequestError as e:
                busy.append(str(e))
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert all("already" in b for b in busy)
    finally:
        for s in idle:
            s.close()
        server.close()


def test_a_second_server_never_takes_a_live_socket(server: ControlServer, path: Path) -> None:
    with pytest.raises(StartupError, match="another floodguard answers on"):
        ControlServer(path, None, handler)
    assert call(path, "echo") == {}, "the first agent still answers"


def test_a_stale_socket_is_replaced(path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nothing listens
    with pytest.raises(AgentNotRunningError):
        call(path, "echo")
    server = serve(path)
    try:
        assert call(path, "echo") == {}
    finally:
        server.close()


def test_many_clients_at_once_are_all_answered(server: ControlServer, path: Path) -> None:
    results: list[object] = []
    errors: list[str] = []

    def one(i: int) -> None:
        for _ in range(100):
            try:
                results.append(call(path, "echo", {"i": i}))
                return
            except RequestError as e:  # the cap: try again, as the message says
                errors.append(str(e))
                time.sleep(0.01)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["i"] for r in results) == list(range(40))  # type: ignore[index]
    assert all("already" in e for e in errors)
