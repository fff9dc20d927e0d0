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
import dataclasses
import ipaddress
import json
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import structlog

from agent.contract import abi
from agent.contract.clock import MAX_TTL
from agent.contract.keys import PrefixKey, Record, key_network, prefix_key

log = structlog.get_logger()

VERSION = 1
FILENAME = "state.json"
#: Longest reason text kept (the control socket refuses longer ones; older files are cut).
MAX_REASON = 200


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
    for saved in state.entries:
        e = saved
        if e.expires and e.expires <= now_wall:
            continue
        if e.expires and e.expires - now_wall > MAX_TTL:
            # Protect, but never past what a ban may last: an expiry this far out
            # overflowed the kernel's clock and crash-looped the start.
            log.warning("state_expiry_clamped", prefix=e.prefix, expires=e.expires, max_ttl=MAX_TTL)
            e = dataclasses.replace(saved, expires=now_wall + MAX_TTL)
        if e.kind not in _KINDS or e.origin not in _ORIGINS:
            log.warning("state_entry_skipped", prefix=e.prefix, kind=e.kind, origin=e.origin)
            continue  # never guess: a misspelt "ban" restored as an allow would open the door
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
    """The saved state, or None when there is none.

    Start with whatever is valid: a file that cannot be read (or is of an
    unknown version) is kept as ``state.json.bad-<time>`` and None is
    returned; each entry and table item is checked on its own, and the ones
    that are wrong are skipped and logged (the file is kept as a copy, since
    the next save replaces it).
    """
    path = directory / FILENAME
    try:
        raw: Any = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        _keep_bad(path, f"unreadable ({e})", move=True)
        return None
    if not isinstance(raw, dict) or raw.get("version") != VERSION:
        found = raw.get("version") if isinstance(raw, dict) else type(raw).__name__
        _keep_bad(path, f"unknown format version {found!r} (this agent reads {VERSION})", move=True)
        return None
    bad: list[str] = []
    state = State(
        entries=_items(raw, "entries", list, _entry, bad),
        group_ids=dict(_items(raw, "group_ids", dict, lambda kv: (str(kv[0]), _int(kv[1], 0, 0xFFFF)), bad)),
        reasons=dict(_items(raw, "reasons", dict, lambda kv: (_int(kv[0], 1, 0xFFFFFFFF), _str(kv[1])), bad)),
        ban_counts=dict(_items(raw, "ban_counts", dict, lambda kv: (str(kv[0]), _int(kv[1], 0, 1 << 31)), bad)),
    )
    if bad:
        _keep_bad(path, f"{len(bad)} invalid item(s) skipped, e.g. {'; '.join(bad[:3])}", move=False)
    return state


def _keep_bad(path: Path, why: str, *, move: bool) -> None:
    """Keep the file beside the new one, so that the next save does not lose what it held."""
    bad = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%dT%H%M%S')}")
    try:
        if move:
            os.replace(path, bad)
        else:
            shutil.copy2(path, bad)
    except OSError as e:
        log.error("state_unreadable", path=str(path), error=why, kept=None, keep_error=e.strerror or str(e),
                  hint="starting without what it could not read")
        return
    log.error("state_unreadable" if move else "state_entries_skipped", path=str(path), error=why, kept=str(bad),
              hint="starting with what is valid; look at the kept copy to recover the rest")


T = TypeVar("T")


def _items(raw: dict[str, Any], name: str, shape: type, parse: Callable[[Any], T], bad: list[str]) -> list[T]:
    """Each item of raw[name] parsed on its own; what fails is noted in ``bad`` and skipped."""
    got: Any = raw.get(name, shape())
    if not isinstance(got, shape):
        bad.append(f"{name} is not {'a list' if shape is list else 'an object'}")
        return []
    out: list[T] = []
    items: list[Any] = [*got.items()] if isinstance(got, dict) else [*cast(list[Any], got)]
    for i, item in enumerate(items):
        try:
            out.append(parse(item))
        except (TypeError, ValueError, KeyError) as e:
            bad.append(f"{name}[{item[0] if isinstance(got, dict) else i}]: {e}")
    return out


def _int(v: Any, lo: int, hi: int) -> int:
    n = int(v) if isinstance(v, str) else v
    if isinstance(n, bool) or not isinstance(n, int) or not lo <= n <= hi:
        raise ValueError(f"{v!r} is not an integer in [{lo}, {hi}]")
    return n


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"{v!r} is not a string")
    return v[:MAX_REASON]


def _time(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{v!r} is not a time")
    return float(v)


_KINDS = ("ban", "allow")
_ORIGINS = ("operator", "auto")  # policy entries come from the policy, never from this file


def _entry(e: Any) -> SavedEntry:
    if not isinstance(e, dict):
        raise TypeError(f"{e!r} is not an object")
    kind, origin, monitor = e["kind"], e["origin"], e.get("monitor", False)
    if kind not in _KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(_KINDS)}")
    if origin not in _ORIGINS:
        raise ValueError(f"origin {origin!r} is not one of {', '.join(_ORIGINS)}")
    if not isinstance(monitor, bool):
        raise TypeError(f"monitor {monitor!r} is not true or false")
    prefix = _str(e["prefix"])
    ipaddress.ip_network(prefix)  # strict: host bits set is as wrong as garbage
    return SavedEntry(prefix=prefix, kind=kind, origin=origin, monitor=monitor, expires=_time(e.get("expires", 0)),
                      created=_time(e.get("created", 0)), reason=_str(e.get("reason", "")))


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
        """The saved state; None when there is none or it is unreadable (logged, kept aside)."""
        return load(self.directory)

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
