"""Operator and automatic entries saved on disk, so a reboot loses nothing.

bpffs lives in memory: after a reboot the pinned maps are gone. Every
change to an operator or automatic ban (or allow) is saved here atomically
(write, fsync, rename, fsync the directory) and restored when the daemon
starts with empty maps. Expiries are stored as wall-clock times because the
kernel's monotonic clock starts again at boot.

The file also keeps the texts behind reason ids (the kernel stores a
number) and the group ids, so that counters keep their meaning across
restarts.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.contract import abi
from agent.contract.keys import PrefixKey, Record, key_network, prefix_key

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
