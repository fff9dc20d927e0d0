"""The refusal log: why an announcement an attack asked for was not made.

Each refusal is logged and counted once per (attack, announcement, reason) —
an attack that keeps asking for a refused route each tick does not flood the
journal — and listed on the attack's record (``floodguard explain``), at most
``MAX_REFUSALS`` per attack, for the ``MAX_ATTACKS`` most recent attacks.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import structlog

from .announce import Kind
from .guard import Refusal

#: Refusals kept per attack (and shown on its record).
MAX_REFUSALS = 20
#: Attacks whose refusals are remembered (the oldest are forgotten first).
MAX_ATTACKS = 1000


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class Refusals:
    """Refusals by attack, and their counts by (kind, reason) for the metrics."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.by_attack: dict[str, list[dict[str, object]]] = {}
        self.counts = Counter[tuple[str, str]]()
        self._once: set[tuple[str, str, str]] = set()

    def add(self, kind: Kind, attack_id: str, what: str, r: Refusal) -> None:
        once = (attack_id, what, r.reason)
        if once in self._once:
            return
        self._once.add(once)
        self.counts[(kind, r.reason)] += 1
        if attack_id not in self.by_attack and len(self.by_attack) >= MAX_ATTACKS:
            oldest = next(iter(self.by_attack))
            del self.by_attack[oldest]
            self._once = {o for o in self._once if o[0] != oldest}
        rows = self.by_attack.setdefault(attack_id, [])
        if len(rows) < MAX_REFUSALS:
            rows.append({"kind": kind, "what": what, "reason": r.reason, "detail": r.detail,
                         "at": iso(self._clock())})
        structlog.get_logger().warning("upstream_refused", kind=kind, attack_id=attack_id, what=what,
                                       reason=r.reason, detail=r.detail)

    def of(self, attack_id: str) -> list[dict[str, object]]:
        return list(self.by_attack.get(attack_id, []))


__all__ = ["MAX_ATTACKS", "MAX_REFUSALS", "Refusals", "iso"]
