"""Attack state: one object per attack, in parts that change for different reasons.

An `Attack` is created when the detector starts an attack on a (group,
class) series and updated every tick until it ends; ending it drops the one
object (an ended attack is kept, finished, among the recent ones). Its parts:

* what started it — identity, start time, the thresholds frozen at the start;
* `Aim` — who is hit, as last located while the flood was there;
* `Shape` — what the flood looks like (its classification);
* `Traffic` — rates now and at their peak, packets dropped;
* `Evidence` — the sampled sources and ports, and whether they look forged;
* `LadderState` — the ladder steps armed so far;
* `Applied` — what the record already reports as in force;
* `History` — what was done, refused and signalled, for the operator;
* `LogMark` — when the last ``attack_updated`` was logged;
* `judge.Verdict` — attack or surge, the lever chosen, and the evidence.

What ``floodguard attacks``, the hook and the log show is rendered from it
(`record.render`), so the record explains itself: the thresholds it crossed,
why sources were or were not banned, every mitigation with its time, and
whether upstream help was asked for.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Literal

from agent.contract.abi import TrafficClass
from agent.policy.model import Step

from .judge import Kind, Verdict
from .record import render
from .samples import AttackSamples
from .target import Target
from .vectors import Classification, Vector, class_vector

#: The record keeps the first banned prefixes by name; the count covers them all.
BANNED_LISTED = 50
#: Most mitigation entries kept per record (a week-long attack refreshes a lot).
MAX_ENTRIES = 200

#: SYN authentication is not a ladder step: the vector and the group's ``syn_auth`` arm it.
SYN_AUTH: Literal["syn_auth"] = "syn_auth"
#: What a mitigation entry is about.
Measure = Step | Literal["syn_auth"]
Action = Literal["applied", "removed", "skipped"]


@dataclass
class MitigationEntry:
    """One thing done (or deliberately not done) about an attack."""

    at_ns: int
    at: str  # wall-clock time, ISO 8601
    step: Measure
    action: Action
    monitor: bool = False
    detail: dict[str, object] = field(default_factory=dict)
    tick: int = 0  # the controller's tick it happened in


@dataclass(frozen=True)
class Thresholds:
    """The thresholds frozen when the attack started."""

    pps: float
    bps: float
    host_pps: float | None  # the per-destination floor, if the group has one

    def scope(self, on_host: bool) -> tuple[float, float]:
        """pps and bps thresholds of the attack's own scope: a host also has the per-destination floor."""
        if on_host and self.host_pps is not None:
            return min(self.pps, self.host_pps), self.bps
        return self.pps, self.bps


@dataclass
class Aim:
    """Who is hit: the target last located while the flood was there (None: no host data yet)."""

    located: Target | None = None

    @property
    def host(self) -> str | None:
        t = self.located
        return str(t.host) if t is not None and t.host is not None else None

    @property
    def prefixes(self) -> list[str]:
        return [str(n) for n in self.located.prefixes] if self.located is not None else []

    @property
    def carpet(self) -> bool:
        return self.located is not None and self.located.carpet

    @property
    def hosts_hit(self) -> int:
        return self.located.hits if self.located is not None else 0

    def top_hosts(self) -> list[dict[str, object]]:
        """The busiest destinations of the attacked class."""
        if self.located is None:
            return []
        return [{"destination": str(h), "pps": round(p)} for h, p in self.located.top_hosts]


@dataclass
class Shape:
    """What the flood looks like, classified while it is over its threshold."""

    classification: Classification | None = None
    protocols: list[int] = field(default_factory=list)  # the most sampled IP protocols


@dataclass
class Traffic:
    """The attack's own scope (its host, or its group): rates of the last tick, peaks, drops."""

    pps: float = 0.0
    bps: float = 0.0
    peak_pps: float = 0.0
    peak_bps: float = 0.0
    dropped_packets: float = 0.0
    updated_ns: int = 0  # the last tick that saw it

    def add(self, now: int, pps: float, bps: float, dropped_pps: float, dt: float) -> None:
        self.updated_ns = now
        self.pps, self.bps = pps, bps
        self.peak_pps, self.peak_bps = max(self.peak_pps, pps), max(self.peak_bps, bps)
        self.dropped_packets += dropped_pps * dt


@dataclass
class Evidence:
    """The sampled evidence, and the verdict on spoofing (once spoofed, always spoofed)."""

    samples: AttackSamples
    spoofed: bool = False
    spoof_reason: str | None = None


@dataclass
class LadderState:
    """The ladder steps armed so far, in the order they were armed."""

    steps: list[Step] = field(default_factory=list)
    last_step_ns: int = 0


class SynAuthMark(enum.Enum):
    """How SYN authentication was reported applied."""

    WRITTEN = enum.auto()  # switched on for the group: reported removed when the attack ends
    ALWAYS = enum.auto()  # the group challenges every unverified SYN anyway: nothing written, nothing to undo


@dataclass
class Applied:
    """What the record already reports as in force (rules are tracked by the enforcer)."""

    syn_auth: SynAuthMark | None = None


@dataclass(frozen=True)
class EscalationMark:
    """One escalation_needed signalled for the attack."""

    at: str
    scope: str
    pps: int
    bps: int
    capacity_pps: int | None
    capacity_bps: int | None

    def to_dict(self) -> dict[str, object]:
        return {"at": self.at, "scope": self.scope, "pps": self.pps, "bps": self.bps,
                "capacity_pps": self.capacity_pps, "capacity_bps": self.capacity_bps}


@dataclass
class History:
    """What was done, refused and signalled about the attack, bounded however long it lasts."""

    mitigations: list[MitigationEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bans: int = 0
    banned: list[str] = field(default_factory=list)
    escalations: list[EscalationMark] = field(default_factory=list)
    first_mitigation_ns: int | None = None
    first_mitigation_tick: int | None = None

    @property
    def escalated(self) -> bool:
        return bool(self.escalations)

    def note(self, text: str) -> None:
        """Record a decision once (e.g. why nobody was banned)."""
        if text not in self.notes:
            self.notes.append(text)

    def add(self, entry: MitigationEntry) -> None:
        if len(self.mitigations) >= MAX_ENTRIES:
            # Keep the first entries (how it was handled) and the latest.
            del self.mitigations[MAX_ENTRIES // 2]
        self.mitigations.append(entry)

    def record_ban(self, prefix: str) -> None:
        self.bans += 1
        if len(self.banned) < BANNED_LISTED:
            self.banned.append(prefix)


@dataclass
class LogMark:
    """The peak and the time of the last attack_updated (or attack_started) logged."""

    peak_pps: float = 0.0
    at_ns: int = 0


@dataclass(frozen=True)
class Ending:
    at_ns: int
    at: str  # wall-clock time, ISO 8601
    reason: str


@dataclass(eq=False)
class Attack:
    """One attack on one protected group and traffic class."""

    id: str
    group: str
    gid: int  # follows the group's id across a reload
    cls: TrafficClass
    start_ns: int
    first_over_ns: int  # the first tick over the threshold (the detector needs a few)
    started_at: str
    thresholds: Thresholds
    monitor: bool  # global monitor mode or the group's own, as of the policy in force
    evidence: Evidence
    start_tick: int = 0  # the controller's tick that started it
    aim: Aim = field(default_factory=Aim)
    shape: Shape = field(default_factory=Shape)
    traffic: Traffic = field(default_factory=Traffic)
    ladder: LadderState = field(default_factory=LadderState)
    applied: Applied = field(default_factory=Applied)
    history: History = field(default_factory=History)
    logged: LogMark = field(default_factory=LogMark)
    end: Ending | None = None
    verdict: Verdict | None = None  # attack or surge, the lever, and the evidence behind them

    @property
    def kind(self) -> Kind:
        """An attack, or a surge of real users (recorded, never mitigated)."""
        return self.verdict.kind if self.verdict is not None else Kind.ATTACK

    @property
    def active(self) -> bool:
        return self.end is None

    @property
    def flood(self) -> Vector:
        """The flood's own vector whatever the target shape (udp_reflection, syn_flood, …)."""
        c = self.shape.classification
        return c.vector if c is not None else class_vector(self.cls)

    @property
    def vector(self) -> Vector:
        """carpet_bombing when many hosts are hit, else the flood's own vector."""
        return Vector.CARPET_BOMBING if self.aim.carpet else self.flood

    @property
    def service(self) -> str | None:
        c = self.shape.classification
        return c.service if c is not None else None

    @property
    def traffic_class(self) -> str:
        return TrafficClass(self.cls).label

    @property
    def label(self) -> str:
        return f"{self.vector}/{self.service}" if self.service else str(self.vector)

    @property
    def target(self) -> str:
        """What is attacked, for humans: a host, a list of prefixes, or the group."""
        host, prefixes = self.aim.host, self.aim.prefixes
        if host:
            return host
        if prefixes:
            return ",".join(prefixes)
        return f"group:{self.group}"

    def scope_thresholds(self) -> tuple[float, float]:
        """The thresholds of the attack's own scope (its host, or its group)."""
        return self.thresholds.scope(self.aim.host is not None)

    @property
    def ticks_to_mitigate(self) -> int | None:
        """Ticks from the start to the first mitigation written (0: in the tick that started it)."""
        first = self.history.first_mitigation_tick
        return None if first is None else first - self.start_tick

    @property
    def time_to_mitigate_s(self) -> float | None:
        """First tick over the threshold to the first mitigation written (None: nothing enforced)."""
        first = self.history.first_mitigation_ns
        if first is None:
            return None
        return max(0.0, (first - self.first_over_ns) / 1e9)

    def duration_s(self, now_ns: int) -> float:
        end = self.end.at_ns if self.end is not None else now_ns
        return max(0, end - self.start_ns) / 1e9

    def log_fields(self) -> dict[str, object]:
        """What every attack_* log event names: which attack, on what, of which kind."""
        return {"attack_id": self.id, "kind": str(self.kind), "group": self.group, "target": self.target,
                "vector": str(self.vector), "service": self.service}

    def to_dict(self, now_ns: int | None = None) -> dict[str, object]:
        """The attack record, JSON-ready (the hook's stdin, the control socket's answer)."""
        return render(self, now_ns)

    def to_json(self, now_ns: int | None = None) -> str:
        return json.dumps(self.to_dict(now_ns), sort_keys=True)
