"""The agent's upstream part: the manager on its own thread, fed the attack records each tick.

The supervisor hands over the active attack records after every control
tick (:meth:`UpstreamService.submit`, which never blocks); the worker wakes
at once, reconciles (gRPC calls with deadlines, agent/upstream/gobgp.py) and
otherwise ticks every second for refreshes, hold-downs and session states.
So a slow or dead speaker never delays detection or the watchdog, and an
escalation reaches the speaker within one gRPC round trip of the tick that
signalled it. With no ``upstream:`` block the service holds no thread and
answers with empty views; a reload can add or remove the block.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import structlog

from agent.policy.model import Policy

from .gobgp import GoBgp, SpeakerPort
from .manager import Manager, Stats

#: Seconds between two ticks of the worker when no record arrives.
IDLE_TICK_S = 1.0

SpeakerFactory = Callable[[Policy], SpeakerPort]


def gobgp_speaker(policy: Policy) -> SpeakerPort:
    up = policy.upstream
    assert up is not None
    return GoBgp(str(up.speaker.api), up.tag_community, up.expiry_function)


class UpstreamService:
    """Thread-safe front of the :class:`Manager`; see the module docstring."""

    def __init__(self, policy: Policy, state_dir: Path | None, *,
                 speaker_factory: SpeakerFactory = gobgp_speaker) -> None:
        self._state_dir = state_dir
        self._factory = speaker_factory
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._records: Sequence[Mapping[str, object]] = ()
        self._manager: Manager | None = None
        self._speaker: SpeakerPort | None = None
        self._api: object = None
        self._thread: threading.Thread | None = None
        self._log = structlog.get_logger()
        self.update_policy(policy)

    @property
    def enabled(self) -> bool:
        return self._manager is not None

    def update_policy(self, policy: Policy) -> None:
        with self._lock:
            up = policy.upstream
            if up is None:
                if self._manager is not None:
                    self._manager.withdraw_all("the upstream block was removed from the policy")
                    self._manager = None
                    self._close_speaker()
                return
            if self._manager is not None and self._api == up.speaker.api:
                self._manager.update_policy(policy)
            else:
                if self._manager is not None:
                    self._close_speaker()
                try:
                    self._speaker = self._factory(policy)
                except ImportError as e:
                    # grpcio or the generated stubs are missing: protection goes on, without escalation.
                    self._log.error("upstream_unavailable", error=str(e))
                    self._manager = None
                    return
                self._api = up.speaker.api
                self._manager = Manager(policy, self._speaker, state_dir=self._state_dir)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="floodguard-upstream", daemon=True)
            self._thread.start()
        self._wake.set()

    def _close_speaker(self) -> None:
        close = getattr(self._speaker, "close", None)
        if close is not None:
            close()
        self._speaker = None

    def submit(self, records: Sequence[Mapping[str, object]]) -> None:
        """This tick's active attack records; the worker reconciles at once (never blocks)."""
        self._records = records
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(IDLE_TICK_S)
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                if self._manager is None:
                    continue
                try:
                    self._manager.tick(self._records)
                except Exception as e:  # noqa: BLE001 — a bug here must not end announcing; the next tick tries again
                    # The guard goes on; the next tick tries again.
                    self._log.exception("upstream_error", error=str(e))

    # ------------------------------------------------------------------ views (any thread)

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            if self._manager is None:
                return {"enabled": False, "sessions": [], "announcements": [], "refused": {}}
            return {"enabled": True, **self._manager.snapshot()}

    def for_attacks(self, ids: Sequence[str]) -> dict[str, dict[str, object]]:
        with self._lock:
            if self._manager is None:
                return {}
            return {i: self._manager.for_attack(i) for i in ids}

    def stats(self) -> Stats | None:
        with self._lock:
            return self._manager.stats() if self._manager is not None else None

    def close(self) -> None:
        """Stop the worker. Announcements stay with the speaker until their attack's
        hold-down (at the next start) or their expiry (the speaker's own sweep)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            self._close_speaker()


__all__ = ["IDLE_TICK_S", "UpstreamService", "gobgp_speaker"]
