"""From a verdict to what is enforced: the ladder step each lever takes, and everything wanted.

The judge (`judge.judge`) says whether a candidate is an attack and which
lever is safe; the group's ``mitigation.ladder`` says which levers the
operator allows. Here they meet:

* ``sources`` → ``tighten``: a per-source limit for this target and class
  only (a SOURCE_LIMIT rule), armed at once; ``ban`` a tick later, and the
  ban step bans only the sources that keep sending far above their limit;
* ``shape`` → ``rule``: drop the shape, or limit it at its learned normal
  rate with headroom, for the target's prefixes;
* ``syn_auth`` → SYN authentication for the group (not a ladder step: the
  group's ``syn_auth`` setting allows it);
* ``none``, and every surge → nothing.

A lever whose step the ladder does not allow is skipped, with the reason,
once.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.contract.abi import RuleAction
from agent.contract.specs import RuleSpec
from agent.policy.model import Step

from .attacks import Attack
from .enforce import Wanted
from .journal import Journal
from .judge import Kind, Lever
from .mitigate import MAX_CARPET_PREFIXES, RulePlan, plan_rules
from .settings import GroupView, Settings
from .vectors import Classification

#: The ladder step each lever takes (syn_auth and none take none).
LEVER_STEP = {Lever.SOURCES: Step.TIGHTEN, Lever.SHAPE: Step.RULE}


class Climber:
    """Arms ladder steps on attacks and says what they want enforced."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def climb(
        self, a: Attack, now: int, view: GroupView, settings: Settings,
    ) -> None:
        """Arm the steps due this tick."""
        v = a.verdict
        ladder = view.mitigation.ladder
        state = a.ladder
        if v is None or v.kind is Kind.SURGE:
            return
        if not ladder:
            a.history.note("ladder is empty: detect only")
            return
        step = LEVER_STEP.get(v.lever)
        if step is None:
            return
        if step is Step.TIGHTEN and step not in ladder and Step.BAN in ladder:
            step = Step.BAN  # the operator allows bans but not limits: the abusive sources are banned
        if step not in ladder:
            self._journal.skip_once(a, now, step, f"the {v.lever} lever needs '{step}' in mitigation.ladder")
            return
        if step not in state.steps:
            skip = self.cannot(a, step, settings)
            if skip is not None:
                self._journal.skip_once(a, now, step, skip)
                return
            state.steps.append(step)
            state.last_step_ns = now
            return
        # Bans, a tick after the limit: the ban step then bans only sources that keep sending far above
        # their limit (tracker.ABUSE_FACTOR times it, two ticks in a row), never forged ones.
        if step is Step.TIGHTEN and Step.BAN in ladder and Step.BAN not in state.steps and state.last_step_ns < now:
            why = self.cannot(a, Step.BAN, settings)
            if why is not None:
                self._journal.skip_once(a, now, Step.BAN, why)
                return
            state.steps.append(Step.BAN)
            state.last_step_ns = now

    def cannot(self, a: Attack, step: Step, settings: Settings) -> str | None:
        """Why a ladder step cannot act against this attack (None: it can)."""
        if step == Step.RULE:
            plan = rules_for(a, settings)
            return plan.why_none if not plan.rules else None
        if step == Step.TIGHTEN and not source_rules(a, settings):
            return "no destination prefix known for the target"
        if step == Step.BAN and a.evidence.spoofed:
            return a.evidence.spoof_reason
        if step == Step.BAN and settings.detection.sample_every == 0:
            return "sampling is off (detection.sample_every: 0): sources unknown"
        return None


def _nets(a: Attack, settings: Settings) -> tuple[object, ...]:
    tgt = a.aim.located
    nets: tuple[object, ...] = tuple(tgt.nets) if tgt is not None else ()
    view = settings.groups[a.gid]
    if tgt is None and len(view.prefixes) <= MAX_CARPET_PREFIXES:
        nets = tuple(view.prefixes)
    return nets


def rules_for(a: Attack, settings: Settings) -> RulePlan:
    """The shape rules the attack's verdict calls for (whether or not its rule step is armed)."""
    tgt = a.aim.located
    shape = a.shape.classification or Classification(a.flood)
    nets = tgt.nets if tgt is not None else ()
    view = settings.groups[a.gid]
    if tgt is None and len(view.prefixes) <= MAX_CARPET_PREFIXES:
        nets = view.prefixes
    v = a.verdict
    limit = v.shape_pps if v is not None and v.lever is Lever.SHAPE else 0
    return plan_rules(a.flood, shape, nets, a.gid, limit, a.monitor, a.shape.protocols)


def source_rules(a: Attack, settings: Settings) -> list[RuleSpec]:
    """The per-source limits of a sources-lever attack: one SOURCE_LIMIT rule per target prefix."""
    v = a.verdict
    if v is None or v.lever is not Lever.SOURCES or not v.source_pps:
        return []
    view = settings.groups[a.gid]
    base = view.limits[a.cls].pps
    if base and base <= v.source_pps:
        return []  # the operator's own per-source limit is already tighter: it stays exactly as set
    tgt = a.aim.located
    nets = tgt.nets if tgt is not None else ()
    if tgt is None and len(view.prefixes) <= MAX_CARPET_PREFIXES:
        nets = view.prefixes
    return [RuleSpec(dst=net, action=RuleAction.SOURCE_LIMIT, pps=v.source_pps, burst=max(1, v.source_pps // 5),
                     monitor=a.monitor, group=a.gid, traffic_class=a.cls) for net in nets]


def wanted(active: Iterable[Attack], settings: Settings) -> Wanted:
    """Everything the active attacks want enforced; the heaviest attacks' rules first."""
    w = Wanted()
    for a in sorted(active, key=lambda x: -x.traffic.peak_pps):
        view = settings.groups.get(a.gid)
        v = a.verdict
        if view is None or v is None or v.kind is Kind.SURGE:
            continue
        m = view.mitigation
        if v.lever is Lever.SYN_AUTH and view.syn_auth == "on_attack" and m.ladder:
            w.syn_auth[a.gid] = m.ttl
        if Step.TIGHTEN in a.ladder.steps:
            for r in source_rules(a, settings):
                w.rules.append((a.id, r, m.ttl))
        if Step.RULE in a.ladder.steps:
            for r in rules_for(a, settings).rules:
                w.rules.append((a.id, r, m.ttl))
    return w
