"""agent/daemon/sdnotify.py against a real AF_UNIX datagram socket: the exact bytes systemd would read."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from notify_listener import NotifyListener
from structlog.testing import capture_logs

from agent.daemon import sdnotify
from agent.daemon.sdnotify import Notifier, NotifyError, monotonic_usec, parse_address

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifyListener]:
    """A listener on a filesystem path and one in the abstract namespace ('@name')."""
    if request.param == "path":
        made = NotifyListener(tmp_path)
    else:
        made = NotifyListener(abstract=f"fgtest-notify-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    with made:
        yield made


def notifier_for(listener: NotifyListener, **extra: str) -> Notifier:
    env = {**listener.env(), **extra}
    return Notifier.from_env(env)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda n: n.ready(), b"READY=1"),
        (lambda n: n.ready(status="attached eth0 (native)"), b"READY=1\nSTATUS=attached eth0 (native)"),
        (lambda n: n.stopping(), b"STOPPING=1"),
        (lambda n: n.stopping(status="SIGTERM"), b"STOPPING=1\nSTATUS=SIGTERM"),
        (lambda n: n.watchdog(), b"WATCHDOG=1"),
        (lambda n: n.status("2 attacks"), b"STATUS=2 attacks"),
        # A newline would start a new assignment; the status stays one field.
        (lambda n: n.status("line one\nREADY=1"), b"STATUS=line one READY=1"),
        (lambda n: n.extend_timeout(90), b"EXTEND_TIMEOUT_USEC=90000000"),
    ],
    ids=["ready", "ready-status", "stopping", "stopping-status", "watchdog", "status", "status-newline", "extend"],
)
def test_exact_datagrams(listener: NotifyListener, call: Callable[[Notifier], bool], expected: bytes) -> None:
    n = notifier_for(listener)
    assert n.enabled
    assert call(n) is True
    msg = listener.receive(timeout=5)
    assert msg is not None
    assert msg.raw == expected
    assert msg.pid == os.getpid()
    n.close()


def test_reloading_carries_monotonic_usec(listener: NotifyListener) -> None:
    n = notifier_for(listener)
    before = monotonic_usec()
    assert n.reloading()
    after = monotonic_usec()
    msg = listener.receive(timeout=5)
    assert msg is not None
    lines = msg.raw.split(b"\n")
    assert lines[0] == b"RELOADING=1"
    assert len(lines) == 2 and lines[1].startswith(b"MONOTONIC_USEC=")
    assert before <= int(lines[1].split(b"=", 1)[1]) <= after


def test_reload_sequence_is_ordered(listener: NotifyListener) -> None:
    """What the daemon sends over a life: ready, pings, a reload, stop — in that order."""
    with notifier_for(listener) as n:
        n.ready(status="attached")
        n.watchdog()
        n.reloading()
        n.ready(status="policy reloaded")
        n.watchdog()
        n.stopping()
    listener.drain()
    assert list(listener.keys()) == ["READY", "WATCHDOG", "RELOADING", "READY", "WATCHDOG", "STOPPING"]
    assert listener.messages[3]["STATUS"] == "policy reloaded"


def test_without_notify_socket_everything_is_a_no_op() -> None:
    env: dict[str, str] = {}
    n = Notifier.from_env(env)
    assert not n.enabled
    assert n.watchdog_interval() is None
    assert [n.ready(status="x"), n.reloading(), n.stopping(), n.watchdog(), n.status("x"), n.extend_timeout(1)] == [
        False
    ] * 6
    n.close()


def test_empty_notify_socket_is_unset() -> None:
    assert not Notifier.from_env({"NOTIFY_SOCKET": ""}).enabled


def test_from_env_unsets_the_variables_so_children_cannot_impersonate() -> None:
    env = {"NOTIFY_SOCKET": "/run/x.sock", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid()), "X": "y"}
    n = Notifier.from_env(env)
    assert env == {"X": "y"}
    assert n.enabled and n.watchdog_interval() == 15.0

    kept = {"NOTIFY_SOCKET": "/run/x.sock"}
    Notifier.from_env(kept, unset=False)
    assert kept == {"NOTIFY_SOCKET": "/run/x.sock"}


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "OWN"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_PID": "OWN"}, None),
        ({"WATCHDOG_USEC": "500000"}, 0.25),
    ],
    ids=["usec", "own-pid", "other-pid", "zero", "pid-only", "sub-second"],
)
def test_watchdog_interval_is_half_of_watchdog_usec(env: dict[str, str], interval: float | None) -> None:
    env = {k: str(os.getpid()) if v == "OWN" else v for k, v in env.items()}
    n = Notifier.from_env({"NOTIFY_SOCKET": "/run/x.sock", **env})
    assert n.watchdog_interval() == interval


def test_bad_watchdog_usec_is_an_error() -> None:
    with pytest.raises(NotifyError, match="WATCHDOG_USEC='soon'"):
        Notifier.from_env({"NOTIFY_SOCKET": "/run/x.sock", "WATCHDOG_USEC": "soon"})


@pytest.mark.parametrize(
    ("value", "address"),
    [("/run/systemd/notify", "/run/systemd/notify"), ("@fg/notify", "\0fg/notify")],
)
def test_parse_address(value: str, address: str) -> None:
    assert parse_address(value) == address


@pytest.mark.parametrize("value", ["relative/notify.sock", "@", "vsock:2:1234"])
def test_unusable_addresses_are_refused_with_the_value(value: str) -> None:
    with pytest.raises(NotifyError, match="NOTIFY_SOCKET="):
        parse_address(value)


def test_a_failed_send_is_logged_not_raised(tmp_path: Path) -> None:
    """systemd gone (socket removed): the daemon keeps protecting, the failure is an event."""
    n = Notifier(str(tmp_path / "gone.sock"))
    with capture_logs() as logs:
        assert n.watchdog() is False
    assert logs == [
        {
            "event": "sd_notify_failed",
            "log_level": "warning",
            "socket": str(tmp_path / "gone.sock"),
            "message": "WATCHDOG=1",
            "errno": "ENOENT",
            "error": "No such file or directory",
        }
    ]


def test_a_receiver_that_reads_nothing_never_blocks_the_daemon(
    listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full queue (systemd stuck; the kernel keeps 10 datagrams) used to block the main loop for good."""
    monkeypatch.setattr(sdnotify, "SEND_TIMEOUT_S", 0.2)
    n = notifier_for(listener)
    results: list[bool] = []

    def sends() -> None:
        results.extend(n.watchdog() for _ in range(50))  # fill the queue, then more
        results.append(n.ready(status="reloaded"))

    t = threading.Thread(target=sends, daemon=True)
    with capture_logs() as logs:
        t.start()
        t.join(60)
    assert not t.is_alive(), "a send blocked"
    sent = results.count(True)
    assert 1 <= sent < 50 and results[-1] is False  # the queue took some; then pings and READY gave up
    assert {e["errno"] for e in logs if e["event"] == "sd_notify_failed"} == {"EAGAIN", "ETIMEDOUT"}
    assert len(listener.drain()) == sent  # what was reported sent arrived; nothing else did
    assert n.ready() is True  # room again: the next state change goes through


def test_a_child_process_notifies_with_its_own_pid(listener: NotifyListener) -> None:
    """The way the daemon's live test uses the listener: env in, messages with the child's PID out."""
    code = (
        "import os\n"
        "from agent.daemon.sdnotify import Notifier\n"
        "n = Notifier.from_env()\n"
        "n.ready(status='up')\n"
        "n.stopping()\n"
        "print(os.environ.get('NOTIFY_SOCKET', 'unset'))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **listener.env()}, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == "unset"
    ready = listener.wait_for("READY", timeout=5)
    stopping = listener.wait_for("STOPPING", timeout=5)
    assert ready.fields == {"READY": "1", "STATUS": "up"}
    assert ready.pid == stopping.pid == proc.pid
