"""agent/cli.py: what the operator's commands send, refuse and print, with the control socket faked."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import structlog

from agent import cli
from agent.daemon import api


class Socket:
    """Stands in for ``api.call``: records each request and answers from ``answers`` (or raises them)."""

    def __init__(self, **answers: object) -> None:
        self.answers = answers
        self.sent: list[tuple[str, dict[str, object]]] = []

    def __call__(self, _path: object, verb: str, args: Mapping[str, object] | None = None,
                 _timeout: float = 30.0) -> Any:
        self.sent.append((verb, dict(args or {})))
        got = self.answers[verb]
        if isinstance(got, Exception):
            raise got
        return got


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """cli.main configures structlog for a command's process: give the next tests theirs back."""
    before = structlog.get_config()
    yield
    structlog.configure(**before)


@pytest.fixture
def sock(monkeypatch: pytest.MonkeyPatch) -> Socket:
    s = Socket(ban={"prefix": "192.0.2.1/32", "ttl_seconds": 600.0, "warning": None})
    monkeypatch.setattr(api, "call", s)
    return s


def test_a_ttl_past_a_year_is_refused_before_anything_is_sent(sock: Socket, capsys: pytest.CaptureFixture[str],
                                                               tmp_path: Path) -> None:
    # 1e11 s overflowed the kernel's u64 expiry and poisoned the agent's address model.
    assert cli.main(["ban", "10.0.0.0/8", "--ttl", "1e11", "--socket", str(tmp_path / "s")]) == 1
    assert "longer than a year" in capsys.readouterr().err
    assert sock.sent == []


def test_force_is_sent_only_when_given(sock: Socket, tmp_path: Path) -> None:
    assert cli.main(["ban", "192.0.2.1", "--ttl", "10m", "--socket", str(tmp_path / "s")]) == 0
    assert cli.main(["ban", "0.0.0.0/0", "--force", "--socket", str(tmp_path / "s")]) == 0
    assert sock.sent == [("ban", {"prefix": "192.0.2.1", "ttl": 600.0}),
                         ("ban", {"prefix": "0.0.0.0/0", "force": True})]


def test_detach_never_removes_pins_while_the_agent_runs_but_does_not_answer(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # On a 30 s timeout detach used to fall back to a direct detach and delete the live agent's pins.
    from agent import daemon

    removed: list[object] = []
    monkeypatch.setattr(daemon, "detach_everything", lambda *a: removed.append(a) or {})
    monkeypatch.setattr(api, "call", Socket(detach=api.ClientError("floodguard did not answer within 30 s")))
    assert cli.main(["detach", "--socket", str(tmp_path / "control.sock")]) == 1
    err = capsys.readouterr().err
    assert "did not answer within 30 s" in err and "nothing was removed" in err
    assert removed == []


def test_detach_asks_the_instance_lock_when_the_socket_is_gone(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from agent import daemon
    from agent.daemon.instance import InstanceLock, lock_path

    removed: list[object] = []
    monkeypatch.setattr(daemon, "detach_everything",
                        lambda *a: removed.append(a) or {"interfaces": [], "pins_removed": []})
    sock = tmp_path / "control.sock"  # never created: the agent's socket was deleted under it
    held = InstanceLock.take(lock_path(sock))
    try:
        assert cli.main(["detach", "--socket", str(sock)]) == 1
        assert f"still running (pid {os.getpid()})" in capsys.readouterr().err and removed == []
    finally:
        held.release()
    # Once it is gone, detach does the work itself.
    assert cli.main(["detach", "--socket", str(sock)]) == 0
    assert len(removed) == 1
