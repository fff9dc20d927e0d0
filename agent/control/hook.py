"""The operator's hook: an executable run with an attack record as JSON on stdin.

It is how floodguard tells the rest of the world (a ticketing system, a
chat, a BGP announcer asking upstream for help). The control loop must
never wait for it: records go into a bounded queue that one worker thread
drains, each run has a timeout after which the hook's whole process group
and every descendant is killed (and reaped), and when the queue is full the
record is dropped with a log line. No shell is involved: the path is
executed directly, so nothing in a record is ever interpreted as a command.
The hook runs with the daemon's privileges, so a hook file that someone
other than root could write is refused (`unsafe_hook`), and its stderr is
kept to a bounded tail. A descendant that double-forks away from the hook
(reparented to init before the kill) is out of reach here; systemd's
KillMode=control-group removes it when the service stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import selectors
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import psutil
import structlog

#: Kept from the hook's stderr for the log when it fails (the rest is read and discarded).
STDERR_TAIL = 500
#: Seconds to wait for a hook's exit after it finished or was killed.
REAP_S = 10.0


class HookRunner:
    """Runs one hook executable per submitted record, one at a time, off the caller's thread."""

    def __init__(self, path: Path, timeout_s: float = 10.0, queue_size: int = 32) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._queue: queue.Queue[dict[str, object] | None] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        self._log = structlog.get_logger()
        self.ran = 0
        self.failed = 0
        self.dropped = 0

    def submit(self, record: dict[str, object]) -> bool:
        """Queue a record for the hook; False (and a log line) if the queue is full."""
        if self._closed:
            return False
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="floodguard-hook", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            self._log.warning(
                "hook_dropped", hook=str(self.path), event_name=record.get("event"), attack_id=record.get("id"),
                queued=self._queue.qsize(),
            )
            return False
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the worker: the running hook is killed, queued records are dropped."""
        self._closed = True
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        with self._lock:
            proc = self._proc
        if proc is not None:
            _kill_tree(proc)
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)
            self._thread.join(timeout_s)

    def _work(self) -> None:
        while True:
            record = self._queue.get()
            if record is None or self._closed:
                return
            self._run(record)

    def _run(self, record: dict[str, object]) -> None:
        fields = {"hook": str(self.path), "event_name": record.get("event"), "attack_id": record.get("id")}
        refused = unsafe_hook(self.path)
        if refused is not None:
            self.failed += 1
            self._log.error("hook_refused", reason=refused, **fields)
            return
        try:
            proc = subprocess.Popen(
                [str(self.path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,  # its own process group, so a timeout kills its children too
                close_fds=True,
            )
        except OSError as e:
            self.failed += 1
            self._log.error("hook_failed", error=f"{e.strerror or e}", **fields)
            return
        with self._lock:
            self._proc = proc
        try:
            finished, err = _exchange(proc, json.dumps(record, sort_keys=True).encode(), self.timeout_s)
            if not finished:
                _kill_tree(proc)
        finally:
            _reap(proc, self._log)
            with self._lock:
                self._proc = None
        if not finished:
            self.failed += 1
            self._log.error("hook_timeout", timeout_s=self.timeout_s, **fields)
        elif proc.returncode != 0:
            self.failed += 1
            self._log.error("hook_failed", exit_code=proc.returncode, stderr=err.decode(errors="replace"), **fields)
        else:
            self.ran += 1

    @property
    def queued(self) -> int:
        return self._queue.qsize()


def unsafe_hook(path: Path) -> str | None:
    """Why ``path`` must not be run with the daemon's privileges, or None when it may.

    The hook runs as root with the daemon's capabilities: whoever can write
    the file, or replace it through its directory, runs code as root. So the
    file and every directory above it must belong to root (or to the
    daemon's user) and be writable by nobody else; a sticky directory such
    as /tmp is fine, since nobody can replace another's file in it.
    """
    me = os.geteuid()
    try:
        st = path.stat()
    except FileNotFoundError:
        return None  # running it fails, and says so (hook_failed)
    except OSError as e:
        return f"cannot stat it: {e.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    if st.st_uid not in (0, me):
        return f"it belongs to uid {st.st_uid}, not root: chown root {path}"
    if st.st_mode & 0o022:
        return f"it is writable by {'group and others' if st.st_mode & 0o002 else 'its group'}: chmod go-w {path}"
    if not st.st_mode & 0o111:
        return f"it is not executable: chmod +x {path}"
    for parent in path.absolute().parents:
        try:
            pst = parent.stat()
        except OSError as e:
            return f"cannot stat {parent}: {e.strerror}"
        if pst.st_uid not in (0, me):
            return f"its directory {parent} belongs to uid {pst.st_uid}: anyone owning it can replace the hook"
        if pst.st_mode & 0o022 and not pst.st_mode & stat.S_ISVTX:
            return f"its directory {parent} is writable by others: chmod go-w {parent}"
    return None


def _exchange(proc: subprocess.Popen[bytes], data: bytes, timeout_s: float) -> tuple[bool, bytes]:
    """Write ``data`` to the hook, keep the last ``STDERR_TAIL`` bytes of its stderr, wait for its exit.

    Returns (exited within ``timeout_s``, stderr tail). A hook that writes a
    gigabyte to stderr costs ``STDERR_TAIL`` bytes of memory, not a gigabyte.
    """
    assert proc.stdin is not None and proc.stderr is not None
    deadline = time.monotonic() + timeout_s
    tail = bytearray()
    pending = memoryview(data)
    sel = selectors.DefaultSelector()
    os.set_blocking(proc.stdin.fileno(), False)
    sel.register(proc.stdin, selectors.EVENT_WRITE)
    sel.register(proc.stderr, selectors.EVENT_READ)
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return False, bytes(tail)
            for key, _ in sel.select(left):
                if key.fileobj is proc.stdin:
                    try:
                        pending = pending[os.write(proc.stdin.fileno(), pending[:65536]):]
                    except BlockingIOError:
                        continue
                    except OSError:  # the hook exited or closed stdin without reading it all
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                else:
                    chunk = os.read(proc.stderr.fileno(), 65536)
                    if not chunk:
                        sel.unregister(proc.stderr)
                        continue
                    tail += chunk
                    del tail[:-STDERR_TAIL]
    finally:
        sel.close()
        for f in (proc.stdin, proc.stderr):
            with contextlib.suppress(OSError):
                f.close()
    try:
        proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return False, bytes(tail)
    return True, bytes(tail)


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the hook's process group and every descendant, also those that left it with setsid()."""
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    groups = {proc.pid}
    for d in descendants:
        with contextlib.suppress(OSError):
            groups.add(os.getpgid(d.pid))
    groups.discard(os.getpgrp())  # never our own group, whatever a child did
    for g in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(g, signal.SIGKILL)
    for d in descendants:
        with contextlib.suppress(psutil.Error):
            d.kill()


def _reap(proc: subprocess.Popen[bytes], log: structlog.typing.FilteringBoundLogger) -> None:
    """Wait for the hook's exit, so that no zombie is left; SIGKILL cannot be ignored."""
    try:
        proc.wait(REAP_S)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        try:
            proc.wait(REAP_S)
        except subprocess.TimeoutExpired:
            log.error("hook_unreapable", hook=str(proc.args), pid=proc.pid,
                      hint="the hook is stuck in the kernel (state D); see /proc/PID/stack")

