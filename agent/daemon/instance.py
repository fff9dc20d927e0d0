"""One agent at a time: an flock on a file beside the control socket, and one on the pin root.

A second `floodguard run` would unlink the live agent's socket (its CLI goes
dark) and share its pins and maps (two writers, two models of one table).
The lock is held for the life of the process: the kernel drops it when the
process dies, however it dies, so a stale file never blocks a start.
`floodguard detach` asks the same lock whether an agent still runs before
it removes anything. Two agents given different sockets but one pin root
would still share the maps, so the pin root directory (on bpffs, where no
lock file can live) is flocked too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from . import StartupError

FILENAME = "floodguard.lock"


def lock_path(socket: Path | str) -> Path:
    """The lock of the agent whose control socket is ``socket``."""
    return Path(socket).parent / FILENAME


class InstanceLock:
    """Held by the running agent; ``release`` (or the process's end) lets the next one start."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def take(cls, path: Path) -> InstanceLock:
        """The lock, or StartupError naming the agent that holds it."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise StartupError(f"cannot create the lock {path}: {e.strerror}; "
                               "check control.socket's directory (it must be writable by root)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            who = f"pid {pid}" if pid else "another process"
            raise StartupError(
                f"floodguard is already running ({who} holds {path}): stop it first "
                f"(`systemctl stop floodguard`), or give this one its own control.socket and pin root"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    @classmethod
    def take_dir(cls, directory: Path) -> InstanceLock:
        """An flock on ``directory`` itself (the pin root), or StartupError when another agent holds it."""
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise StartupError(f"cannot use the pin root {directory}: {e.strerror}; it must be a writable "
                               "directory on bpffs (/sys/fs/bpf; `make setup` mounts it)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StartupError(
                f"another floodguard uses the pins under {directory}: two agents on one pin root would "
                "write the same maps. Stop the other one, or give this one its own --pin-root"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        return cls(directory, fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def holder(path: Path) -> int | None:
    """The pid of the agent holding the lock at ``path`` (0 if unknown), or None when no agent runs."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip() or 0)
    return 0


__all__ = ["FILENAME", "InstanceLock", "holder", "lock_path"]
