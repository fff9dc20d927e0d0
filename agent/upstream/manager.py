"""The announcement book: what the escalated attacks need, reconciled with what the speaker holds.

Each tick the manager gets the active attack records (``Attack.to_dict()``)
and makes the speaker hold exactly the announcements they need:

1. the records marked ``escalated`` (the uplink is full: agent/control/
   escalation.py) ask for Flowspec rules of their shape and, for groups in
   ``upstream.rtbh.groups``, RTBH routes (agent/upstream/announce.py);
2. each new one passes the guardrails (agent/upstream/guard.py), the cap
   (``max_announcements``) and the rate limit (``changes_per_minute``) or is
   refused — logged, counted and listed on the attack's record, once per
   attack and reason;
3. it is announced with an expiry (``ttl``), refreshed at half-life while
   an attack asks for it; once none does, it stays ``hold_down`` longer,
   then is withdrawn;
4. every ``RESYNC_S`` and after the speaker came back, the speaker's table
   is listed: a tagged route no entry accounts for is withdrawn, an entry
   the speaker lost (gobgpd restarted) is announced again.

At start the book is rebuilt from the speaker and the state file
(``upstream.json`` in the state directory): expired routes are withdrawn,
the others adopted — kept for ``hold_down`` unless a re-detected attack
claims them — and routes of the state file the speaker lost are announced
again. Whatever the agent does, a route never outlives its expiry:
`floodguard speaker` withdraws expired routes on its own
(agent/upstream/speaker.py), so an agent dead for longer than ``ttl``
leaves nothing behind.

Time is wall-clock seconds (expiries travel in the routes as Unix time);
``clock`` is injectable, so unit tests run hours in microseconds.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from agent.policy._upstream import Upstream, parse_community, parse_large_community
from agent.policy.model import Policy

from .announce import KINDS, Kind, Wish, wanted
from .book import STATE_FILE, BookFile, Entry
from .gobgp import Held, PeerStatus, Route, SpeakerError, SpeakerPort
from .guard import Guard, Refusal
from .refusals import Refusals, iso

#: Seconds between two listings of the speaker's table.
RESYNC_S = 10.0
@dataclass
class Stats:
    """What the metrics show (a snapshot)."""

    speaker_up: bool = False
    sessions: dict[str, bool] = field(default_factory=dict)
    announcements: dict[str, int] = field(default_factory=dict)
    refused: dict[tuple[str, str], int] = field(default_factory=dict)
    changes: dict[tuple[str, str], int] = field(default_factory=dict)


class Manager:
    """Reconciles the book with the records and the speaker; see the module docstring. Not thread-safe."""

    def __init__(self, policy: Policy, speaker: SpeakerPort, *, state_dir: Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._speaker = speaker
        self._clock = clock
        self._file = BookFile(state_dir)
        self.book: dict[str, Entry] = {}
        self.refusals = Refusals(clock)
        self._changes = Counter[tuple[str, str]]()
        self._adds: deque[float] = deque()
        self._peers: dict[str, PeerStatus] = {}
        self._speaker_up: bool | None = None
        self._adopted = False
        self._next_resync = 0.0
        self._dirty = False
        self.update_policy(policy)

    @property
    def _log(self) -> structlog.typing.FilteringBoundLogger:
        # Looked up at each event: a logger cached at construction would miss a later
        # re-configuration (and structlog.testing.capture_logs).
        return structlog.get_logger()  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ policy

    def update_policy(self, policy: Policy) -> None:
        up = policy.upstream
        assert up is not None, "the manager runs only with an upstream block"
        self.up: Upstream = up
        self.guard = Guard(policy)
        self._rtbh_groups = frozenset(up.rtbh.groups)
        self._rtbh_comms = tuple(parse_community(c) for c in up.rtbh.communities if c.count(":") == 1)
        self._rtbh_large = tuple(parse_large_community(c) for c in up.rtbh.communities if c.count(":") == 2)
        self._fs_comms = tuple(parse_community(c) for c in up.flowspec.communities if c.count(":") == 1)
        self._fs_large = tuple(parse_large_community(c) for c in up.flowspec.communities if c.count(":") == 2)
        self._rate_bytes = (up.flowspec.rate or 0) / 8 if up.flowspec.action == "rate_limit" else 0.0
        self._next_resync = 0.0

    # ------------------------------------------------------------------ the tick

    def tick(self, records: Iterable[Mapping[str, object]]) -> None:
        now = self._clock()
        self._poll_peers(now)
        if not self._adopted and self._speaker_up:
            self._adopt(now)
        wishes, skips = wanted(records, flowspec=self.up.flowspec.enabled, rtbh=self.up.rtbh.enabled,
                               rtbh_groups=self._rtbh_groups)
        for s in skips:
            self._refuse(s.kind, s.attack_id, s.what, Refusal(s.reason, s.detail))
        by_key: dict[str, list[Wish]] = {}
        for w in wishes:
            by_key.setdefault(w.announcement.key, []).append(w)
        for key, ws in by_key.items():
            self._want(now, key, ws)
        for key, e in list(self.book.items()):
            if key not in by_key:
                self._release(now, key, e)
        for e in self.book.values():
            if not e.monitor and (not e.sent or e.expires - now < self.up.ttl / 2):
                self._send(now, e, "refresh" if e.sent else "retry")
        if self._speaker_up and now >= self._next_resync:
            self._resync(now)
        if self._dirty:
            self._save()

    def _want(self, now: float, key: str, ws: list[Wish]) -> None:
        a = ws[0].announcement
        e = self.book.get(key)
        if e is not None:
            e.released_at, e.adopted = None, False
            for w in ws:
                if w.attack_id not in e.attacks:
                    e.attacks.append(w.attack_id)
                    self._dirty = True
                e.groups.add(w.group)
            return
        refusal = self.guard.check(a)
        if refusal is None and len(self.book) >= self.up.max_announcements:
            refusal = Refusal("cap", f"{len(self.book)} announcements already (upstream.max_announcements)")
        if refusal is None:
            while self._adds and now - self._adds[0] >= 60.0:
                self._adds.popleft()
            if len(self._adds) >= self.up.changes_per_minute:
                refusal = Refusal("rate_limited", f"{len(self._adds)} new announcements in the last minute "
                                  "(upstream.changes_per_minute); retried next tick")
        if refusal is not None:
            for w in ws:
                self._refuse(a.kind, w.attack_id, key, refusal)
            return
        self._adds.append(now)
        e = Entry(a, [w.attack_id for w in ws], {w.group for w in ws}, now, int(now + self.up.ttl),
                  monitor=self.up.monitor)
        self.book[key] = e
        self._dirty = True
        if e.monitor:
            self._log.warning("upstream_announced", kind=a.kind, key=key, attack_ids=e.attacks, monitor=True,
                              why="monitor mode: logged, not announced")
            self._changes[(a.kind, "announced")] += 1
        else:
            self._send(now, e, "new")

    def _release(self, now: float, key: str, e: Entry) -> None:
        if e.released_at is None:
            e.released_at = now
            self._dirty = True
        if now - e.released_at >= self.up.hold_down:
            self._withdraw(key, e, "adopted at start, claimed by no attack" if e.adopted else
                           "its attacks ended and the hold-down passed")
        elif now >= e.expires and e.monitor:
            self._withdraw(key, e, "expired")

    def _route(self, e: Entry, expires: int) -> Route:
        a = e.announcement
        if a.kind == "rtbh":
            hop = self.up.rtbh.next_hop.ipv4 if a.version == 4 else self.up.rtbh.next_hop.ipv6
            return Route(a, expires, self._rtbh_comms, self._rtbh_large, next_hop=hop)
        return Route(a, expires, self._fs_comms, self._fs_large, rate_bytes=self._rate_bytes)

    def _send(self, now: float, e: Entry, why: str) -> None:
        expires = int(now + self.up.ttl)
        try:
            self._speaker.add(self._route(e, expires))
        except SpeakerError as err:
            e.sent = False
            self._speaker_down(str(err))
            return
        first = not e.sent
        e.sent, e.expires = True, expires
        self._dirty = True
        a = e.announcement
        if why == "refresh":
            self._log.debug("upstream_refreshed", kind=a.kind, key=a.key, expires_in_s=self.up.ttl)
            return
        self._changes[(a.kind, "announced")] += 1 if first else 0
        self._log.warning("upstream_announced", kind=a.kind, key=a.key, dst=str(a.dst), match=a.match.to_dict(),
                          attack_ids=e.attacks, groups=sorted(e.groups), expires_in_s=self.up.ttl, why=why,
                          monitor=False)

    def _withdraw(self, key: str, e: Entry, reason: str) -> None:
        if e.sent and not e.monitor:
            try:
                self._speaker.delete(e.announcement)
            except SpeakerError as err:
                # Kept: withdrawn at the next tick, or by the speaker at its expiry.
                self._speaker_down(str(err))
                return
        del self.book[key]
        self._dirty = True
        self._changes[(e.announcement.kind, "withdrawn")] += 1
        self._log.warning("upstream_withdrawn", kind=e.announcement.kind, key=key, attack_ids=e.attacks,
                          reason=reason, monitor=e.monitor)

    def _refuse(self, kind: Kind, attack_id: str, what: str, r: Refusal) -> None:
        self.refusals.add(kind, attack_id, what, r)

    # ------------------------------------------------------------------ the speaker

    def _speaker_down(self, error: str) -> None:
        if self._speaker_up is not False:
            self._log.error("upstream_speaker_unavailable", error=error,
                            hint="is floodguard-speaker running? systemctl status floodguard-speaker")
        self._speaker_up = False

    def _poll_peers(self, now: float) -> None:
        try:
            peers = self._speaker.peers()
        except SpeakerError as err:
            self._speaker_down(str(err))
            for name, p in list(self._peers.items()):
                if p.up:
                    self._log.error("upstream_session_down", peer=name, address=p.address, state="speaker down")
            self._peers = {}
            return
        if self._speaker_up is False:
            self._log.info("upstream_speaker_available")
            self._next_resync = now  # it may have restarted with an empty table
        self._speaker_up = True
        by_address = {p.address: p for p in peers}
        for cfg in self.up.peers:
            st = by_address.get(cfg.address)
            before = self._peers.get(cfg.name)
            if st is None:
                self._peers.pop(cfg.name, None)
                continue
            if before is not None and before.up and not st.up:
                self._log.error("upstream_session_down", peer=cfg.name, address=cfg.address, state=st.state,
                                announcements=len(self.book))
            elif st.up and (before is None or not before.up):
                self._log.info("upstream_session_up", peer=cfg.name, address=cfg.address)
                self._next_resync = now
            self._peers[cfg.name] = st

    def _resync(self, now: float) -> None:
        self._next_resync = now + RESYNC_S
        try:
            held = self._speaker.held()
        except SpeakerError as err:
            self._speaker_down(str(err))
            return
        seen: set[str] = set()
        for h in held:
            key = h.announcement.key if h.announcement is not None else None
            e = self.book.get(key) if key is not None else None
            if key is None or e is None or e.monitor or key in seen:
                self._drop_held(h, "no attack needs it")
                continue
            seen.add(key)
        for key, e in self.book.items():
            if e.sent and not e.monitor and key not in seen:
                e.sent = False
                self._log.warning("upstream_lost", kind=e.announcement.kind, key=key,
                                  why="the speaker no longer holds it (restarted?): announcing it again")

    def _drop_held(self, h: Held, why: str) -> None:
        try:
            self._speaker.delete(h)
        except SpeakerError as err:
            self._speaker_down(str(err))
            return
        kind = h.announcement.kind if h.announcement is not None else "flowspec"
        self._changes[(kind, "withdrawn")] += 1
        self._log.warning("upstream_withdrawn", kind=kind, key=h.announcement.key if h.announcement else None,
                          reason=f"stale: {why}", attack_ids=[])

    def _adopt(self, now: float) -> None:
        """At start: withdraw what expired, keep the rest for hold_down, re-announce what the speaker lost."""
        try:
            held = self._speaker.held()
        except SpeakerError as err:
            self._speaker_down(str(err))
            return
        self._adopted = True
        saved = self._file.load()
        for h in held:
            a = h.announcement
            if a is None or h.expires is None or h.expires <= now or a.key in self.book:
                self._drop_held(h, "expired" if h.expires is not None and h.expires <= now else
                                "not a route of this floodguard's shape")
                continue
            s = saved.pop(a.key, None)
            self.book[a.key] = Entry(a, list(s.attacks) if s else [], set(s.groups) if s else set(),
                                     s.announced_at if s else now, h.expires, released_at=now, sent=True,
                                     adopted=True)
        for key, s in saved.items():
            if s.expires > now and not s.monitor and key not in self.book:
                self.book[key] = Entry(s.announcement, list(s.attacks), set(s.groups), s.announced_at, s.expires,
                                       released_at=now, sent=False, adopted=True)
        if self.book:
            self._log.info("upstream_adopted", announcements=len(self.book),
                           keys=list(self.book)[:10], hold_down_s=self.up.hold_down)
        self._dirty = True
        self._next_resync = now + RESYNC_S

    def withdraw_all(self, reason: str) -> None:
        for key, e in list(self.book.items()):
            self._withdraw(key, e, reason)
        if self._dirty:
            self._save()

    # ------------------------------------------------------------------ state file

    def _save(self) -> None:
        self._dirty = False
        self._file.save(list(self.book.values()))

    # ------------------------------------------------------------------ views

    def snapshot(self) -> dict[str, object]:
        now = self._clock()
        peers = []
        for cfg in self.up.peers:
            st = self._peers.get(cfg.name)
            peers.append({
                "name": cfg.name, "address": cfg.address, "asn": cfg.asn, "families": list(cfg.families),
                "state": st.state if st else ("unknown" if self._speaker_up else "speaker down"),
                "since": iso(st.since) if st and st.since else None,
                "received": st.received if st else 0, "advertised": st.advertised if st else 0,
            })
        entries = sorted(self.book.values(), key=lambda e: e.announced_at)
        return {
            "speaker": {"api": str(self.up.speaker.api), "up": bool(self._speaker_up)},
            "monitor": self.up.monitor,
            "sessions": peers,
            "announcements": [e.view(now) for e in entries],
            "refused": {f"{k}/{r}": n for (k, r), n in sorted(self.refusals.counts.items())},
        }

    def for_attack(self, attack_id: str) -> dict[str, object]:
        now = self._clock()
        return {
            "announcements": [e.view(now) for e in self.book.values() if attack_id in e.attacks],
            "refused": self.refusals.of(attack_id),
        }

    def stats(self) -> Stats:
        counts: dict[str, int] = dict.fromkeys(KINDS, 0)
        for e in self.book.values():
            if e.sent and not e.monitor:
                counts[e.announcement.kind] += 1
        return Stats(speaker_up=bool(self._speaker_up),
                     sessions={cfg.name: bool(self._peers.get(cfg.name) and self._peers[cfg.name].up)
                               for cfg in self.up.peers},
                     announcements=counts, refused=dict(self.refusals.counts), changes=dict(self._changes))


__all__ = ["RESYNC_S", "STATE_FILE", "Entry", "Manager", "Stats"]
