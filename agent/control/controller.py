"""The control loop: each tick reads the counters, detects attacks, mitigates, and reports.

One `Controller.tick()` is one whole step, driven by the daemon every
``detection.tick`` seconds:

1. read the cumulative counters and drain the packet samples (`ControlPort`);
2. turn them into rates per (group, class) and per destination host, and
   run the detector over every group and class at once (`observe.Observer`);
3. start, update and end attacks — target (host or carpet), vector, peaks,
   drops, sources, spoofing — and climb each attack's ladder
   (`tracker.Tracker`, `ladder.Climber`, `banstep.BanStep`);
4. write what the active attacks want (per-source limits, SYN
   authentication, shape rules) with refreshed expiries (`enforce.Enforcer`), and
   note on each record what was put in force or lifted (`journal.Journal`);
5. signal escalation when an uplink is full (`escalation.Escalator`); hand
   records to the hook.

Each attack is one `attacks.Attack` object; its record is rendered from it
(`record.render`). Time comes only from the port (``now_ns``), so tests
replay hours of traffic in milliseconds. Everything per group is arrays;
Python loops only run over active attacks, candidate sources and the
tick's samples, and expiries are heaps: a tick costs what changed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from agent.contract.keys import IPNetwork
from agent.policy.compile import CompiledPolicy
from agent.policy.model import Policy

from .attacks import Attack
from .bans import BanBook
from .banstep import BanStep
from .enforce import Enforcer
from .escalation import Escalator
from .hook import HookRunner
from .journal import Journal, Stamps
from .ladder import Climber, wanted
from .meter import DstRates, GroupRates
from .observe import Observer
from .port import ControlPort
from .record import event
from .samples import TickSamples
from .settings import Settings
from .stats import ControlStats
from .tracker import Tracker
from .views import SourceWindow, attack_line, hook_status, top

#: Repeat offenders not banned for a week are forgotten, checked every this many ticks.
FORGET_EVERY_TICKS = 600


@dataclass(frozen=True)
class TickReport:
    """What one tick did (for the daemon's log and tests)."""

    at_ns: int
    started: list[str]
    ended: list[str]
    active: int
    seconds: float


class Controller:
    """Detection and mitigation for every protected group; see the module docstring.

    Not thread-safe: the daemon calls every method under its own lock (the
    control socket's threads included).
    """

    def __init__(
        self,
        policy: Policy,
        compiled: CompiledPolicy,
        port: ControlPort,
        *,
        ban_counts: Mapping[str, int] | None = None,
        auto_bans: Mapping[IPNetwork, int] | None = None,
        wall_clock: Callable[[], float] = time.time,
        hook_timeout_s: float = 10.0,
        hook_queue: int = 32,
        keep_recent: int = 1000,
        update_every_s: float = 60.0,
    ) -> None:
        """``ban_counts``: repeat-offender counts saved by the daemon; ``auto_bans``:
        automatic bans found in the kernel at start (prefix -> expiry), so they count
        towards max_bans and are not written again."""
        self._port = port
        self._settings = Settings.build(policy, compiled)
        self.journal = Journal(Stamps(port.now_ns(), wall_clock()), update_every_s)
        self.observer = Observer(self._settings)
        self._enforcer = Enforcer(port)
        self._bans = BanBook(ban_counts)
        for net, exp in (auto_bans or {}).items():
            self._bans.load(net, exp)
        self._ban_step = BanStep(port, self._bans, self.journal)
        self._tracker = Tracker(self.journal, Climber(self.journal), self._ban_step, keep_recent, self.observer)
        self._escalator = Escalator(self.journal.stamps.iso)
        self._hook_timeout_s = hook_timeout_s
        self._hook_queue = hook_queue
        self._hook = self._make_hook(policy)
        self._ticks = 0
        self._last_tick_s = 0.0
        self._last_rates: tuple[GroupRates, DstRates] | None = None
        self._sources = SourceWindow()

    # ------------------------------------------------------------------ the tick

    def tick(self) -> TickReport:
        """One whole step: read, detect, mitigate, report."""
        t0 = time.perf_counter()
        port, s, tracker = self._port, self._settings, self._tracker
        now = port.now_ns()
        groups = port.read_group_stats()
        dst = port.read_dst_stats()
        samples = TickSamples.build(port.drain_samples())
        self._bans.prune(now)
        if self._ticks % FORGET_EVERY_TICKS == 0:
            self._bans.forget_old(now)
        self._ticks += 1
        self.journal.tick = self._ticks
        seen = self.observer.step(now, groups, dst, samples, s, dict(port.read_downstream()))
        if seen is None:
            self._last_tick_s = time.perf_counter() - t0
            return TickReport(now, [], [], len(tracker.active), self._last_tick_s)
        t, step = seen
        self._last_rates = (t.groups, t.dst)
        self._sources.add(samples, t.dt)

        ended: list[Attack] = []
        for series in step.ended:
            a = tracker.active.get(series)
            if a is not None:
                ended.append(tracker.end(a, now, "hold_down"))
        started = [tracker.start(gid, cls, t, self.observer, s) for gid, cls in step.started]
        for a in list(tracker.active.values()):
            if a.start_ns != now:
                tracker.update(a, t, s)
        self.observer.track_pending(step, samples, t.dt)

        self._sync(now, ended)
        self._escalator.run(now, t.groups, s, list(tracker.active.values()), self._hook)
        for a in started:
            self._to_hook("attack_started", a, now)
        for a in ended:
            self._to_hook("attack_ended", a, now)
        self._last_tick_s = time.perf_counter() - t0
        return TickReport(now, [a.id for a in started], [a.id for a in ended], len(tracker.active), self._last_tick_s)

    def _sync(self, now: int, ended: Sequence[Attack]) -> None:
        """Write what the active attacks want, and note on the records what changed."""
        active = self._tracker.active.values()
        ch = self._enforcer.apply(now, wanted(active, self._settings))
        self.journal.changes(now, ch, active, ended, self._enforcer, self._settings)

    def _to_hook(self, name: str, a: Attack, now: int) -> None:
        if self._hook is not None:
            self._hook.submit(event(name, a, now))

    def _make_hook(self, policy: Policy) -> HookRunner | None:
        path = policy.mitigation.hook
        return HookRunner(path, self._hook_timeout_s, self._hook_queue) if path is not None else None

    # ------------------------------------------------------------------ public API

    def attacks(self, active: bool = True, recent: int = 0) -> list[Attack]:
        """Active attacks (oldest first) if ``active``, then the ``recent`` last ended ones (newest first)."""
        out = self._tracker.ordered() if active else []
        return out + list(self._tracker.recent)[: max(recent, 0)]

    def top(self, n: int = 10) -> dict[str, object]:
        """Top destinations (from the counters) and sources (from the samples) by rate, and busiest groups."""
        s = self._settings
        names = {gid: v.name for gid, v in s.groups.items()}
        return top(self._last_rates, self._sources, names, s.detection.sample_every,
                   list(self._tracker.active.values()), n)

    def stats(self) -> ControlStats:
        """Counters for the metrics collector."""
        h, ttm, tracker = self._hook, self.journal.ttm, self._tracker
        return ControlStats(
            active_by_vector=dict(Counter(str(a.vector) for a in tracker.active.values())),
            started_by_vector=dict(tracker.started_by_vector),
            ended_total=tracker.ended_total,
            time_to_mitigate=ttm.cumulative(),
            time_to_mitigate_sum=ttm.sum,
            time_to_mitigate_count=ttm.count,
            escalations_total=self._escalator.total,
            bans_active=self._bans.count(),
            bans_total=self._bans.total,
            rules_active=len(self._enforcer.rules),
            groups_tightened=len(self._enforcer.source_limited()),
            groups_syn_auth=len(self._enforcer.syn_auth),
            ticks=self._ticks,
            last_tick_seconds=self._last_tick_s,
            hook_ran=h.ran if h else 0,
            hook_failed=h.failed if h else 0,
            hook_dropped=h.dropped if h else 0,
        )

    def status(self) -> dict[str, object]:
        """A summary for `floodguard status`."""
        s = self._settings
        names = {gid: v.name for gid, v in s.groups.items()}
        return {
            "ticks": self._ticks,
            "last_tick_seconds": round(self._last_tick_s, 6),
            "groups": len(s.groups),
            "baseline_warm_groups": self.observer.warm_groups(s),
            "attacks_active": len(self._tracker.active),
            "attacks": [attack_line(a) for a in self.attacks()],
            "tightened": sorted(names.get(g, str(g)) for g in self._enforcer.source_limited()),
            "syn_auth": sorted(names.get(g, str(g)) for g in self._enforcer.syn_auth),
            "rules": len(self._enforcer.rules),
            "bans_active": self._bans.count(),
            "uplinks_full": self._escalator.uplinks.overloaded,
            "hook": hook_status(self._hook),
        }

    def gid(self, name: str) -> int:
        """The group id of a group name in the policy in force."""
        return self._settings.gids[name]

    def ban_counts(self) -> dict[str, int]:
        """Repeat-offender counts (prefix -> automatic bans so far), for the daemon to persist."""
        return dict(self._bans.counts)

    def update_policy(self, policy: Policy, compiled: CompiledPolicy) -> None:
        """Take a reloaded policy: groups that still exist (by name) keep their baseline and attacks."""
        old = self._settings
        new = Settings.build(policy, compiled)
        now = self._port.now_ns()
        tracker = self._tracker
        moves = {old.gids[name]: gid for name, gid in new.gids.items() if name in old.gids}
        ended: list[Attack] = []
        for (gid, cls), a in list(tracker.active.items()):
            if gid not in moves:
                self.observer.detector.stop(gid, cls)
                ended.append(tracker.end(a, now, "group removed from the policy"))
        self.observer.remap(new, moves)
        if any(o != n for o, n in moves.items()):
            tracker.regroup(moves)
            self._enforcer.remap(moves)
        self._settings = new
        for a in tracker.active.values():
            a.monitor = new.groups[a.gid].monitor
        if (self._hook.path if self._hook else None) != policy.mitigation.hook:
            if self._hook is not None:
                self._hook.close()
            self._hook = self._make_hook(policy)
        self._ban_step.unban_newly_protected(new)
        self._sync(now, ended)
        for a in ended:
            self._to_hook("attack_ended", a, now)

    def close(self) -> None:
        """Stop the hook worker. Written mitigations stay until they expire."""
        if self._hook is not None:
            self._hook.close()
