"""The daemon's signals: SIGHUP asks for a reload, SIGTERM and SIGINT for a stop.

Caught from the first line of the start, not only once the loop runs: a
SIGHUP while BCC builds the program (seconds, at every start) used to meet
the default disposition and kill the daemon. Until the loop runs, a reload
or a stop asked for waits for its first turn. A start that fails gives the
previous dispositions back.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import structlog

log = structlog.get_logger("agent.daemon")

_CAUGHT = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Signals:
    """What the signals asked for: ``stop`` (an Event) and ``take_reload()``."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._reload = False
        self._saved: dict[int, Any] = {}

    def catch(self) -> None:
        """Install the handlers (once; only the main thread can)."""
        if self._saved or threading.current_thread() is not threading.main_thread():
            return
        self._saved = {sig: signal.signal(sig, self._on) for sig in _CAUGHT}

    def restore(self) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved = {}

    def take_reload(self) -> bool:
        """True once after each SIGHUP."""
        wanted, self._reload = self._reload, False
        return wanted

    def _on(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            log.info("stopping", signal=signal.Signals(signum).name)
            self.stop.set()


__all__ = ["Signals"]
