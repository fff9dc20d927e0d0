"""When local mitigation cannot help: the uplink itself is full.

Dropping at XDP saves the servers but not the link: once inbound traffic to
a group (its ``uplink``) or in total (``mitigation.uplink``) reaches the
configured capacity, legitimate packets are lost upstream before we see
them, and only the upstream provider (blackholing, FlowSpec, scrubbing) can
help. A link never carries more than its capacity, so "full" is
``UPLINK_FULL`` of it; the episode ends once traffic falls below
``UPLINK_CLEAR`` (hysteresis: no repeated signals from a link hovering at
its limit).

``escalation_needed`` is signalled once per attack per episode: for the
attacks active when an episode starts, and for each attack that starts
during it. A group's episode waits for an attack on the group (the detector
confirms within a few ticks what the full link suggests); the total uplink
is signalled at once even without one, since a full link is news whatever
fills it — traffic to unprotected addresses has no attack record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import structlog

from agent.policy.model import Uplink

from .attacks import Attack, EscalationMark
from .hook import HookRunner
from .meter import GroupRates
from .record import event
from .settings import Settings

UPLINK_FULL = 0.95
UPLINK_CLEAR = 0.8


@dataclass(frozen=True)
class Signal:
    """An escalation to announce: the scope, its rates and the attacks newly concerned."""

    scope: str
    pps: float
    bps: float
    capacity_pps: int | None
    capacity_bps: int | None
    attack_ids: list[str]
    new_episode: bool


def _ratio(pps: float, bps: float, cap: Uplink) -> float:
    return max(pps / cap.pps if cap.pps else 0.0, bps / cap.bps if cap.bps else 0.0)


class UplinkWatch:
    """Overload episodes per scope ("total" or "group:<name>")."""

    def __init__(self) -> None:
        self._episodes: dict[str, set[str]] = {}

    def check(
        self, scope: str, pps: float, bps: float, cap: Uplink | None, attack_ids: Sequence[str],
        need_attack: bool = True,
    ) -> Signal | None:
        if cap is None or not (cap.pps or cap.bps):
            self._episodes.pop(scope, None)
            return None
        ratio = _ratio(pps, bps, cap)
        told = self._episodes.get(scope)
        if told is None:
            if ratio < UPLINK_FULL:
                return None
            self._episodes[scope] = set(attack_ids)
            if need_attack and not attack_ids:
                return None
            return Signal(scope, pps, bps, cap.pps, cap.bps, list(attack_ids), True)
        if ratio < UPLINK_CLEAR:
            del self._episodes[scope]
            return None
        new = [a for a in attack_ids if a not in told]
        if not new:
            return None
        first = need_attack and not told
        told.update(new)
        return Signal(scope, pps, bps, cap.pps, cap.bps, new, first)

    def forget(self, scope: str) -> None:
        self._episodes.pop(scope, None)

    @property
    def overloaded(self) -> list[str]:
        return sorted(self._episodes)


class Escalator:
    """Checks the uplinks each tick and signals escalation_needed: log, records, hook."""

    def __init__(self, stamp: Callable[[int], str]) -> None:
        self.uplinks = UplinkWatch()
        self.total = 0
        self._stamp = stamp
        self._log = structlog.get_logger()

    def run(self, now: int, g: GroupRates, s: Settings, active: Sequence[Attack], hook: HookRunner | None) -> None:
        ids = [a.id for a in active]
        signals = [
            self.uplinks.check("total", float(g.pps.sum()), float(g.bps.sum()), s.mitigation.uplink, ids,
                               need_attack=False)
        ]
        for view in s.uplinked:
            gid = view.gid
            if gid >= g.groups:
                continue
            signals.append(
                self.uplinks.check(f"group:{view.name}", float(g.pps[gid].sum()), float(g.bps[gid].sum()),
                                   view.uplink, [a.id for a in active if a.gid == gid])
            )
        by_id = {a.id: a for a in active}
        for sig in signals:
            if sig is not None:
                self._signal(now, sig, by_id, hook)

    def _signal(self, now: int, sig: Signal, by_id: Mapping[str, Attack], hook: HookRunner | None) -> None:
        self.total += 1
        attacks = [by_id[i] for i in sig.attack_ids if i in by_id]
        self._log.error(
            "escalation_needed",
            scope=sig.scope,
            target=[a.target for a in attacks] or sig.scope,
            attack_ids=sig.attack_ids,
            pps=round(sig.pps),
            bps=round(sig.bps),
            capacity_pps=sig.capacity_pps,
            capacity_bps=sig.capacity_bps,
        )
        mark = EscalationMark(self._stamp(now), sig.scope, round(sig.pps), round(sig.bps), sig.capacity_pps,
                              sig.capacity_bps)
        for a in attacks:
            a.history.escalations.append(mark)
            if hook is not None:
                hook.submit(event("escalation_needed", a, now))
        if not attacks and hook is not None:
            hook.submit({"event": "escalation_needed", **mark.to_dict()})
