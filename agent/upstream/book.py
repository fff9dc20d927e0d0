"""The announcement book's entries and the state file that outlives a restart.

``upstream.json`` in the state directory lists every entry with its attacks
and expiry, written whole to a temporary file and renamed into place, so a
crash mid-write leaves the previous file. An unreadable file is logged and
read as empty: the speaker's own table (and the expiries its routes carry)
still tell the restarted agent what is announced.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import structlog

from .announce import Announcement
from .refusals import iso

STATE_FILE = "upstream.json"


@dataclass
class Entry:
    """One announcement of the book."""

    announcement: Announcement
    attacks: list[str]
    groups: set[str]
    announced_at: float
    expires: int
    released_at: float | None = None  # no attack asks for it since then (hold-down)
    monitor: bool = False
    sent: bool = False  # the speaker holds it (False: to send at the next chance)
    adopted: bool = False  # found at start, not yet claimed by an attack

    @property
    def state(self) -> str:
        if self.monitor:
            return "monitor"
        if not self.sent:
            return "pending"
        return "held_down" if self.released_at is not None else "announced"

    def view(self, now: float) -> dict[str, object]:
        a = self.announcement
        return {
            "kind": a.kind, "key": a.key, "dst": str(a.dst), "match": a.match.to_dict(),
            "attack_ids": list(self.attacks), "groups": sorted(self.groups), "state": self.state,
            "announced_at": iso(self.announced_at), "age_s": round(now - self.announced_at, 1),
            "expires_at": iso(self.expires), "expires_in_s": round(self.expires - now, 1),
            "released_s": round(now - self.released_at, 1) if self.released_at is not None else None,
        }


class BookFile:
    """``upstream.json``: saved after each tick that changed the book, read once at start."""

    def __init__(self, state_dir: Path | None) -> None:
        self.path = state_dir / STATE_FILE if state_dir is not None else None

    def save(self, entries: list[Entry]) -> None:
        if self.path is None:
            return
        rows = [{**e.announcement.to_dict(), "attacks": e.attacks, "groups": sorted(e.groups),
                 "announced_at": e.announced_at, "expires": e.expires, "monitor": e.monitor}
                for e in entries]
        tmp = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"version": 1, "announcements": rows}, indent=1))
            os.replace(tmp, self.path)
        except OSError as e:
            structlog.get_logger().error("upstream_state_unsaved", path=str(self.path), error=e.strerror)

    def load(self) -> dict[str, Entry]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            doc = json.loads(self.path.read_text())
            out: dict[str, Entry] = {}
            for row in doc.get("announcements", []):
                a = Announcement.from_dict(row)
                out[a.key] = Entry(a, [str(x) for x in row.get("attacks", [])], set(row.get("groups", [])),
                                   float(row.get("announced_at", 0)), int(row.get("expires", 0)),
                                   monitor=bool(row.get("monitor")))
            return out
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            structlog.get_logger().error("upstream_state_unreadable", path=str(self.path), error=str(e))
            return {}


__all__ = ["STATE_FILE", "BookFile", "Entry"]
