"""The operator's hook: an executable run with an attack record as JSON on stdin.

It is how floodguard tells the rest of the world (a ticketing system, a
chat, a BGP announcer asking upstream for help). The control loop must
never wait for it: records go into a bounded queue that one worker thread
drains, each run has a timeout after which the hook's whole process group
is killed, and when the queue is full the record is dropped with a log
line. No shell is involved: the path is executed directly, so nothing in a
record is ever interpreted as a command.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
from pathlib import Path

import structlog

#: Kept from the hook's stderr for the log when it fails.
STDERR_TAIL = 500


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
            _kill_group(proc)
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
        data = json.dumps(record, sort_keys=True).encode()
        fields = {"hook": str(self.path), "event_name": record.get("event"), "attack_id": record.get("id")}
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
            _, err = proc.communicate(data, timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            with contextlib.suppress(subprocess.TimeoutExpired, ValueError, OSError):
                proc.communicate(timeout=1.0)
            self.failed += 1
            self._log.error("hook_timeout", timeout_s=self.timeout_s, **fields)
            return
        except (BrokenPipeError, ValueError, OSError) as e:
            # Killed by close(), or the hook exited without reading its input.
            proc.wait()
            err = b""
            if proc.returncode == 0:
                self.ran += 1
                return
            self.failed += 1
            self._log.error("hook_failed", error=str(e), exit_code=proc.returncode, **fields)
            return
        finally:
            with self._lock:
                self._proc = None
        if proc.returncode != 0:
            self.failed += 1
            self._log.error(
                "hook_failed", exit_code=proc.returncode, stderr=err[-STDERR_TAIL:].decode(errors="replace"), **fields
            )
            return
        self.ran += 1

    @property
    def queued(self) -> int:
        return self._queue.qsize()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
