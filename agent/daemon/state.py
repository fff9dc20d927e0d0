"""Operator and automatic entries saved on disk, so a reboot loses nothing.

bpffs lives in memory: after a reboot the pinned maps are gone. Operator and
automatic bans (and allows) are saved here atomically (write, fsync, rename,
fsync the directory) and restored when the daemon starts with empty maps.
Expiries are stored as wall-clock times because the kernel's monotonic clock
starts again at boot.

The file also keeps the texts behind reason ids (the kernel stores a
number), the group ids, so that counters keep their meaning across
restarts, and the repeat-offender counts.

:class:`StateStore` decides when to write: only after something changed,
at most once a second, and on its own thread, so that a tick pays for a
copy of the records, never for JSON and two fsyncs. An operator's ban or
unban is written before the verb answers.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from agent.contract import abi
from agent.contract.keys import PrefixKey, Record, key_network, prefix_key

log = structlog.get_logger()

VERSION = 1
FILENAME = "state.json"


@dataclass
class SavedEntry:
    prefix: str
    kind: str  # ban | allow
    origin: str  # operator | auto
    monitor: bool
    expires: float  # unix time; 0 = never
    created: float
    reason: str


@dataclass
class State:
    entries: list[SavedEntry] = field(default_factory=list)
    group_ids: dict[str, int] = field(default_factory=dict)
    reasons: dict[int, str] = field(default_factory=dict)
    ban_counts: dict[str, int] = field(default_factory=dict)  # repeat offenders: prefix -> bans so far


class Reasons:
    """Reason texts by id: the kernel record holds the id."""

    def __init__(self, texts: dict[int, str] | None = None) -> None:
        self.texts: dict[int, str] = dict(texts or {})
        self._ids = {t: i for i, t in self.texts.items()}

    def id_of(self, text: str | None) -> int:
        if not text:
            return 0
        got = self._ids.get(text)
        if got is None:
            got = max(self.texts, default=0) + 1
            self.texts[got] = text
            self._ids[text] = got
        return got

    def text(self, rid: int) -> str:
        return self.texts.get(rid, "")

    def prune(self, used: set[int]) -> None:
        for rid in [r for r in self.texts if r not in used]:
            self._ids.pop(self.texts.pop(rid), None)


def _mono_to_wall(t: int, now_mono: int, now_wall: float) -> float:
    return 0.0 if t == 0 else now_wall + (t - now_mono) / 1e9


def _wall_to_mono(t: float, now_mono: int, now_wall: float) -> int:
    return 0 if t == 0 else now_mono + int((t - now_wall) * 1e9)


def snapshot(
    records: list[tuple[PrefixKey, int, int, Record]], reasons: Reasons, group_ids: dict[str, int],
    ban_counts: dict[str, int],
) -> State:
    """The state to save: operator and automatic records (policy ones come from the policy)."""
    now_mono, now_wall = time.clock_gettime_ns(time.CLOCK_MONOTONIC), time.time()
    out = State(group_ids=dict(group_ids), ban_counts=dict(ban_counts))
    used: set[int] = set()
    for key, kind, origin, (expires, created, flags, reason) in records:
        if origin == abi.Origin.POLICY:
            continue
        used.add(reason)
        out.entries.append(SavedEntry(
            prefix=str(key_network(key)),
            kind="ban" if kind in (abi.SRC_BAN, abi.SRC_BAN_MONITOR) else "allow",
            origin=abi.Origin(origin).label,
            monitor=bool(flags & (abi.SRC_BAN_MONITOR | abi.SRC_ALLOW_MONITOR)),
            expires=_mono_to_wall(expires, now_mono, now_wall),
            created=_mono_to_wall(created, now_mono, now_wall) if created else 0.0,
            reason=reasons.text(reason),
        ))
    out.reasons = {i: t for i, t in reasons.texts.items() if i in used}
    return out


def restore(state: State, reasons: Reasons) -> list[tuple[PrefixKey, int, int, Record]]:
    """Records to write back (expired entries are skipped)."""
    now_mono, now_wall = time.clock_gettime_ns(time.CLOCK_MONOTONIC), time.time()
    out = []
    for e in state.entries:
        if e.expires and e.expires <= now_wall:
            continue
        key = prefix_key(ipaddress.ip_network(e.prefix))
        if e.kind == "ban":
            kind, flags = abi.SRC_BAN, abi.SRC_BAN_MONITOR if e.monitor else abi.SRC_BAN
        else:
            kind, flags = abi.SRC_ALLOW, abi.SRC_ALLOW_MONITOR if e.monitor else abi.SRC_ALLOW
        origin = abi.Origin[e.origin.upper()]
        rec: Record = (
            _wall_to_mono(e.expires, now_mono, now_wall),
            _wall_to_mono(e.created, now_mono, now_wall) if e.created else 0,
            flags,
            reasons.id_of(e.reason),
        )
        out.append((key, kind, int(origin), rec))
    return out


def save(directory: Path, state: State) -> None:
    """Atomically replace <directory>/state.json."""
    directory.mkdir(parents=True, exist_ok=True)
    data = {
        "version": VERSION,
        "saved_at": time.time(),
        "group_ids": state.group_ids,
        "reasons": {str(k): v for k, v in state.reasons.items()},
        "ban_counts": state.ban_counts,
        "entries": [asdict(e) for e in state.entries],
    }
    fd, tmp = tempfile.mkstemp(prefix=".state.", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, directory / FILENAME)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load(directory: Path) -> State | None:
    """The saved state, or None when there is none. A corrupt file raises ValueError."""
    path = directory / FILENAME
    try:
        raw: Any = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is unreadable ({e}): move it away to start without saved bans") from e
    if not isinstance(raw, dict) or raw.get("version") != VERSION:
        raise ValueError(f"{path} has an unknown format version: move it away to start without saved bans")
    return State(
        entries=[SavedEntry(**e) for e in raw.get("entries", [])],
        group_ids={str(k): int(v) for k, v in raw.get("group_ids", {}).items()},
        reasons={int(k): str(v) for k, v in raw.get("reasons", {}).items()},
        ban_counts={str(k): int(v) for k, v in raw.get("ban_counts", {}).items()},
    )


# --------------------------------------------------------------------------- when to write


@dataclass(frozen=True)
class Capture:
    """What a save writes, copied under the agent's lock (so the writer needs no lock)."""

    records: list[tuple[PrefixKey, int, int, Record]]
    reasons: dict[int, str]
    group_ids: dict[str, int]
    ban_counts: dict[str, int]

    @classmethod
    def of(cls, records: Iterable[tuple[PrefixKey, int, int, Record]], reasons: Reasons,
           group_ids: Mapping[str, int], ban_counts: Mapping[str, int]) -> Capture:
        """Operator and automatic records (policy records come from the policy) and copies of the rest."""
        return cls([r for r in records if r[2] != abi.Origin.POLICY], dict(reasons.texts), dict(group_ids),
                   dict(ban_counts))

    def state(self) -> State:
        return snapshot(self.records, Reasons(self.reasons), self.group_ids, self.ban_counts)


class StateStore:
    """state.json in one directory, written when something changed.

    ``changed()`` marks the state dirty; ``maybe_save()`` (the tick calls it
    under the agent's lock) captures and queues it for the writer thread when
    it is dirty and the last write is at least ``interval`` old. ``save_now()``
    writes at once in the caller's thread (operator verbs, start, stop). A
    write never replaces a newer one: each capture carries a sequence number.
    """

    def __init__(self, directory: Path, *, interval: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 write: Callable[[Path, State], None] | None = None) -> None:
        self.directory = Path(directory)
        self.interval = interval
        self.writes = 0
        self._clock = clock
        self._write = write or save
        self._dirty = False
        self._last = -float("inf")  # clock time of the last capture
        self._seq = 0  # captures so far
        self._written = 0  # sequence number of the capture on disk
        self._queued: tuple[int, Capture] | None = None
        self._cond = threading.Condition()
        self._io = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False

    def load(self) -> State | None:
        """The saved state; None when there is none or it is unreadable (logged)."""
        try:
            return load(self.directory)
        except ValueError as e:
            log.error("state_unreadable", error=str(e))
            return None

    @property
    def dirty(self) -> bool:
        return self._dirty

    def changed(self) -> None:
        """Something the file holds changed: save it within ``interval``."""
        self._dirty = True

    def maybe_save(self, capture: Callable[[], Capture]) -> bool:
        """Capture and queue a write if one is due; returns whether it queued one."""
        if not self._dirty:
            return False
        now = self._clock()
        if now - self._last < self.interval:
            return False
        item = self._next(capture(), now)
        with self._cond:
            self._queued = item
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="state-writer", daemon=True)
                self._thread.start()
            self._cond.notify()
        return True

    def save_now(self, capture: Capture) -> bool:
        """Write ``capture`` in this thread; returns whether it reached the disk."""
        return self._store(*self._next(capture, self._clock()))

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until a queued write is done (tests; stopping)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queued is not None and time.monotonic() < deadline:
                self._cond.wait(0.05)

    def close(self, final: Capture | None = None) -> None:
        """Write ``final`` (newer than anything queued), then stop the writer thread."""
        if final is not None:
            self.save_now(final)
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _next(self, capture: Capture, now: float) -> tuple[int, Capture]:
        self._seq += 1
        self._dirty = False
        self._last = now
        return self._seq, capture

    def _work(self) -> None:
        while True:
            with self._cond:
                while self._queued is None and not self._closing:
                    self._cond.wait()
                if self._queued is None:
                    return
                item = self._queued
                # Still queued while it is written, so that flush() waits for it.
            self._store(*item)
            with self._cond:
                if self._queued is item:
                    self._queued = None
                self._cond.notify_all()

    def _store(self, seq: int, capture: Capture) -> bool:
        with self._io:
            if seq <= self._written:
                return True  # a newer capture is on disk already
            try:
                self._write(self.directory, capture.state())
            except OSError as e:
                log.error("state_save_failed", dir=str(self.directory), error=e.strerror or str(e))
                self._dirty = True  # try again at the next due time
                return False
            self._written = seq
            self.writes += 1
            log.debug("state_saved", entries=len(capture.records), writes=self.writes)
            return True
