"""Climbing an attack's ladder, and what all the active attacks want written.

`mitigate.next_steps` decides which steps to arm; here they are armed on
the attack, a step that cannot act against it (a rule against a SYN flood,
bans without samples) is skipped with its reason and the next one takes
its place at once, and the armed steps of every active attack are turned
into one `Wanted` for the enforcer.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.policy.model import Step

from .attacks import Attack
from .enforce import Wanted
from .journal import Journal
from .mitigate import MAX_CARPET_PREFIXES, RulePlan, next_steps, passed_level, plan_rules, tightened
from .settings import GroupView, Settings
from .vectors import Classification, Vector


class Climber:
    """Arms ladder steps on attacks and says what they want enforced."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def climb(
        self, a: Attack, now: int, view: GroupView, settings: Settings, scope: tuple[float, float, float],
        *, first: bool,
    ) -> None:
        """Arm the steps due this tick; ``scope`` is pps, bps and dropped pps of the attack's own scope."""
        ladder = view.mitigation.ladder
        state = a.ladder
        if not ladder:
            a.history.note("ladder is empty: detect only")
            return
        if not first and state.last_step_ns >= now:
            return
        pps, bps, dropped = scope
        t_pps, t_bps = a.scope_thresholds()
        contained = passed_level(pps, bps, dropped, t_pps, t_bps) <= 1.0
        todo = next_steps(ladder, state.steps, contained, first=not state.steps, spoofed=a.evidence.spoofed)
        while todo:
            step = todo.pop(0)
            if step in state.steps:
                continue
            state.steps.append(step)
            state.last_step_ns = now
            skip = self.cannot(a, step, settings)
            if skip is None:
                continue
            self._journal.skip_once(a, now, step, skip)
            # A step that cannot act is no step: the next one goes in its place now.
            rest = [x for x in ladder if x not in state.steps and x not in todo]
            if rest:
                todo.append(rest[0])

    def cannot(self, a: Attack, step: Step, settings: Settings) -> str | None:
        """Why a ladder step cannot act against this attack (None: it can)."""
        if step == Step.RULE:
            plan = rules_for(a, settings)
            return plan.why_none if not plan.rules else None
        if step == Step.BAN and a.evidence.spoofed:
            return a.evidence.spoof_reason
        if step == Step.BAN and settings.detection.sample_every == 0:
            return "sampling is off (detection.sample_every: 0): sources unknown"
        return None


def rules_for(a: Attack, settings: Settings) -> RulePlan:
    """The rules the attack's shape and target call for (whether or not its rule step is armed)."""
    tgt = a.aim.located
    shape = a.shape.classification or Classification(a.flood)
    nets = tgt.nets if tgt is not None else ()
    view = settings.groups[a.gid]
    if tgt is None and len(view.prefixes) <= MAX_CARPET_PREFIXES:
        nets = view.prefixes
    t_pps, t_bps = a.scope_thresholds()
    return plan_rules(a.flood, shape, nets, a.gid, t_pps, t_bps, a.monitor, a.shape.protocols,
                      spoofed=a.evidence.spoofed)


def wanted(active: Iterable[Attack], settings: Settings) -> Wanted:
    """Everything the active attacks want enforced; the heaviest attacks' rules first."""
    w = Wanted()
    classes: dict[int, set[int]] = {}
    for a in sorted(active, key=lambda x: -x.traffic.peak_pps):
        view = settings.groups.get(a.gid)
        if view is None:
            continue
        m = view.mitigation
        # Under SYN authentication only verified sources reach the per-source
        # SYN limits: tightening them would only slow real users down.
        syn_authenticated = a.flood == Vector.SYN_FLOOD and view.syn_auth != "off"
        if Step.TIGHTEN in a.ladder.steps and not syn_authenticated:
            classes.setdefault(a.gid, set()).add(a.cls)
        if a.flood == Vector.SYN_FLOOD and view.syn_auth == "on_attack" and m.ladder:
            w.syn_auth[a.gid] = m.ttl
        if Step.RULE in a.ladder.steps:
            for r in rules_for(a, settings).rules:
                w.rules.append((a.id, r, m.ttl))
    for gid, cl in classes.items():
        view = settings.groups[gid]
        w.tight[gid] = (tightened(view.limits, view.mitigation.tighten_factor, cl), view.mitigation.ttl)
    return w
