"""The systemd side of sd_notify, for tests: a real AF_UNIX datagram socket to pass as NOTIFY_SOCKET.

Used by tests/unit/test_daemon_sdnotify.py and by the daemon's live notify test
(READY only after attach, WATCHDOG, RELOADING … READY, STOPPING):

    with NotifyListener(tmp_path) as listener:
        proc = subprocess.Popen([...], env={**os.environ, **listener.env(watchdog_usec=2_000_000)})
        ready = listener.wait_for("READY", timeout=60)
        assert ready.pid == proc.pid           # NotifyAccess=main: only the main PID counts

Each datagram becomes a :class:`Message` with its fields and the sender's PID
(SO_PASSCRED, as systemd itself reads it). tests/ is on sys.path because
tests/conftest.py lives there, so ``from notify_listener import NotifyListener``
works from every test directory.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# struct ucred {pid_t pid; uid_t uid; gid_t gid;}
_UCRED = struct.Struct("iII")
_SCM_CREDENTIALS = 2


@dataclass(frozen=True)
class Message:
    """One notification: its raw bytes, the KEY=value fields, the sender's PID and when it arrived."""

    raw: bytes
    fields: dict[str, str]
    pid: int
    at: float = field(default_factory=time.monotonic)

    def __getitem__(self, key: str) -> str:
        return self.fields[key]

    def __contains__(self, key: object) -> bool:
        return key in self.fields


def parse(raw: bytes) -> dict[str, str]:
    """The fields of a datagram; a line without '=' is kept as a key with an empty value."""
    out: dict[str, str] = {}
    for line in raw.decode().split("\n"):
        if line:
            key, _, value = line.partition("=")
            out[key] = value
    return out


class NotifyListener:
    """Binds a datagram socket at ``<directory>/notify.sock``, or an abstract name when ``abstract`` is set.

    ``messages`` holds everything received so far, in order; ``wait_for``
    reads until a message with the wanted field arrives.
    """

    def __init__(self, directory: Path | str | None = None, *, abstract: str | None = None) -> None:
        if (directory is None) == (abstract is None):
            raise ValueError("give a directory for a path socket or an abstract name, not both")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if abstract is not None:
            self.address = "@" + abstract
            self.sock.bind("\0" + abstract)
        else:
            path = Path(directory or ".") / "notify.sock"
            self.address = str(path)
            self.sock.bind(self.address)
        self.messages: list[Message] = []

    def env(self, *, watchdog_usec: int | None = None, watchdog_pid: int | None = None) -> dict[str, str]:
        """Environment variables as systemd would set them for the service."""
        env = {"NOTIFY_SOCKET": self.address}
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        if watchdog_pid is not None:
            env["WATCHDOG_PID"] = str(watchdog_pid)
        return env

    def receive(self, timeout: float) -> Message | None:
        """The next datagram, or None after ``timeout`` seconds."""
        ready, _, _ = select.select([self.sock], [], [], max(timeout, 0.0))
        if not ready:
            return None
        raw, ancdata, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(_UCRED.size))
        pid = -1
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == _SCM_CREDENTIALS:
                pid = _UCRED.unpack(data[: _UCRED.size])[0]
        msg = Message(raw, parse(raw), pid)
        self.messages.append(msg)
        return msg

    def drain(self) -> list[Message]:
        """Everything already queued, without waiting."""
        got = []
        while (msg := self.receive(0)) is not None:
            got.append(msg)
        return got

    def wait_for(self, key: str, value: str | None = "1", *, timeout: float) -> Message:
        """Read until a message carries ``key`` (with ``value``, unless None); AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            msg = self.receive(left) if left > 0 else None
            if msg is None:
                seen = [m.fields for m in self.messages]
                raise AssertionError(f"no {key}={value if value is not None else '*'} within {timeout}s; got {seen}")
            if key in msg.fields and (value is None or msg.fields[key] == value):
                return msg

    def keys(self) -> Iterator[str]:
        """The first key of every message so far (READY, WATCHDOG, …), to check the order."""
        for m in self.messages:
            yield next(iter(m.fields), "")

    def close(self) -> None:
        self.sock.close()
        if not self.address.startswith("@"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)

    def __enter__(self) -> NotifyListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
