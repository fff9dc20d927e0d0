"""The validated policy: frozen pydantic models with plain units inside.

Everything the rest of the agent reads from a policy is here, already checked:
rates are ``int`` packets/s and bits/s, durations ``float`` seconds, prefixes
``ipaddress`` networks in ``PrefixEntry`` tuples that remember file:line.
Models forbid unknown keys (a misspelt key must not silently mean "default").
Rules that span several fields or the whole policy (capacity, overlaps) live in
``_checks`` so that their errors can point at the exact line; the models check
one value at a time.
"""

from __future__ import annotations

import enum
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.contract.abi import LIMIT_CLASS_NAMES, MAX_WATCH
from agent.contract.capacity import DEFAULT as CAPACITY
from agent.contract.capacity import Capacity
from agent.policy._fields import PrefixEntry, PrefixList, Unit
from agent.policy._units import parse_pps
from agent.policy._upstream import Upstream

#: Traffic classes that have their own per-source limit and detection threshold.
CLASSES = LIMIT_CLASS_NAMES  # index i is abi.TrafficClass i

MAX_PPS = 1_000_000_000
MAX_BPS = 1_000_000_000_000
MAX_CAPACITY = 1 << 26

Pps = Annotated[int, Unit("pps", 1, MAX_PPS)]
Bps = Annotated[int, Unit("bps", 1, MAX_BPS)]
Burst = Annotated[int, Unit("count", 1, MAX_PPS)]
# Per-source limits: 0 means no limit in that dimension (the built-in default for every class).
LimitPps = Annotated[int, Unit("pps", 0, MAX_PPS)]
LimitBps = Annotated[int, Unit("bps", 0, MAX_BPS)]
LimitBurst = Annotated[int, Unit("count", 0, MAX_PPS)]
MapSize = Annotated[int, Unit("count", 16, MAX_CAPACITY)]
Prefixes = Annotated[tuple[PrefixEntry, ...], PrefixList()]


class Step(enum.StrEnum):
    """A rung of the mitigation ladder (``mitigation.ladder``), lightest first."""

    TIGHTEN = "tighten"
    RULE = "rule"
    BAN = "ban"


LADDER_ORDER: tuple[Step, ...] = tuple(Step)
SynAuthMode = Literal["off", "on_attack", "always"]

MAX_WATCH_SETS = MAX_WATCH - 1  # id 0 means "not watched"
_GROUP_NAME = re.compile(r"^[a-z0-9_-]{1,63}$")
_IFNAME = re.compile(r"^[^/:\s]{1,15}$")


class _Model(BaseModel):
    """Frozen, no unknown keys: what was validated is what runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _blank_is_default(cls, data: Any) -> Any:
        # `allow:` with everything under it commented out is null in YAML; it means
        # "nothing here", so such a key takes its default — unless null is a value the
        # field itself accepts (control.group: null = root only).
        if isinstance(data, dict) and any(value is None for value in data.values()):
            return {k: v for k, v in data.items() if v is not None or _takes_none(cls, k)}
        return data


def _takes_none(model: type[BaseModel], key: str) -> bool:
    field = model.model_fields.get(key)
    if field is None:
        return True  # unknown key: keep it, so that it is reported
    return type(None) in typing.get_args(field.annotation) or field.annotation is type(None)


def _absolute(value: Path) -> Path:
    if not value.is_absolute():
        raise ValueError(f"{value} is a relative path; write an absolute path starting with /")
    return value


# --- where the program is attached -------------------------------------------------------------


class Interface(_Model):
    """A network interface the XDP program is attached to."""

    name: str = Field(description="interface name as in `ip link` (up to 15 characters)")
    mode: Literal["native", "generic", "auto"] = Field(
        default="auto", description="XDP mode: native (driver), generic (skb), auto (native, else generic)"
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        # `interfaces: [eth0]` is the obvious thing to write for the common case.
        return {"name": data} if isinstance(data, str) else data

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _IFNAME.match(value) or value in (".", ".."):
            raise ValueError(
                f"'{value}' is not a valid interface name (1-15 characters, no '/', ':' or spaces)"
            )
        return value


# --- prefix sets --------------------------------------------------------------------------------


class PrefixSet(_Model):
    """``allow`` and ``deny``: prefixes written inline and read from files.

    ``prefixes`` holds every entry, those from ``files`` included (the loader
    reads them); ``files`` records which files were read, as absolute paths.
    """

    monitor: bool = Field(default=False, description="count matches but do not act on them")
    prefixes: Prefixes = Field(default=(), description="prefixes, each a string or {prefix, reason}")
    files: tuple[Path, ...] = Field(
        default=(), description="files with one prefix per line (relative to this file)"
    )


class Infrastructure(_Model):
    """Sources that are never banned automatically (routers, resolvers, BGP peers)."""

    prefixes: Prefixes = Field(default=(), description="prefixes, each a string or {prefix, reason}")
    files: tuple[Path, ...] = Field(
        default=(), description="files with one prefix per line (relative to this file)"
    )


class WatchSet(_Model):
    """A named set of sources whose verdicts are counted on their own: CGNAT pools, key customers, monitoring.

    Counting changes nothing about how they are treated; it shows, per
    reason, what floodguard did to their packets (metric
    floodguard_watch_packets_total), so that any collateral is seen.
    """

    name: str = Field(description="unique name: lower-case letters, digits, '_' and '-'")
    prefixes: Prefixes = Field(default=(), description="source prefixes, each a string or {prefix, reason}")
    files: tuple[Path, ...] = Field(
        default=(), description="files with one prefix per line (relative to this file)"
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _GROUP_NAME.match(value):
            raise ValueError(
                f"'{value}' is not a valid watch set name: use a-z, 0-9, '_' and '-' (up to 63 characters)"
            )
        return value


# --- rates --------------------------------------------------------------------------------------


class RateLimit(_Model):
    """A resolved per-source limit for one class: every field set."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra=lambda schema: schema.pop("required", None)
    )

    pps: LimitPps = Field(description="packets per second per source; 0 = no limit")
    bps: LimitBps = Field(description="bits per second per source; 0 = no limit")
    burst: LimitBurst = Field(description="bucket depth in packets; default twice pps")

    @model_validator(mode="before")
    @classmethod
    def _default_burst(cls, data: Any) -> Any:
        # burst follows pps unless written: a bucket two seconds deep.
        if isinstance(data, dict) and "burst" not in data:
            try:
                pps = parse_pps(data.get("pps"))
            except ValueError:
                pps = 1  # the pps error itself is reported by field validation
            data = {**data, "burst": min(2 * pps, MAX_PPS) if pps else 0}
        return data


class RateLimitOverride(_Model):
    """A group's override of one class's limit; unset fields inherit the default."""

    pps: LimitPps | None = Field(default=None, description="packets per second per source; 0 = no limit")
    bps: LimitBps | None = Field(default=None, description="bits per second per source; 0 = no limit")
    burst: LimitBurst | None = Field(default=None, description="bucket depth in packets; default twice pps")


#: Built-in per-source limits: none. On an ISP's network one address is often many people (a CGNAT
#: pool address, a corporate proxy, a university NAT, a resolver), so no constant fits every source;
#: during an attack the controller limits the abusive sources of the attacked target only, from the
#: heaviest legitimate source it has seen (mitigation.source_headroom). An operator who sets a limit
#: gets exactly that limit.
DEFAULT_LIMITS: dict[str, dict[str, int]] = {
    name: {"pps": 0, "bps": 0, "burst": 0}
    for name in ("tcp_syn", "tcp_other", "udp", "icmp", "fragment", "other")
}


def _default_limit(name: str) -> Any:
    return Field(
        default_factory=lambda: RateLimit(**DEFAULT_LIMITS[name]),
        description=f"per-source limit for {name} packets (unset fields keep the built-in default)",
    )


class Limits(_Model):
    """Default per-source limits, one per class, plus how IPv6 sources are grouped."""

    tcp_syn: RateLimit = _default_limit("tcp_syn")
    tcp_other: RateLimit = _default_limit("tcp_other")
    udp: RateLimit = _default_limit("udp")
    icmp: RateLimit = _default_limit("icmp")
    fragment: RateLimit = _default_limit("fragment")
    other: RateLimit = _default_limit("other")
    ipv6_prefix: Annotated[int, Unit("count", 1, 128)] = Field(
        default=64, description="IPv6 sources share one bucket per prefix of this length"
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        # A class written with only some fields keeps the built-in value of the others;
        # a new pps without a burst gets the burst that follows it (see RateLimit).
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name in CLASSES:
            given = data.get(name)
            if isinstance(given, dict):
                base = dict(DEFAULT_LIMITS[name])
                if "pps" in given:
                    base.pop("burst")
                out[name] = {**base, **given}
        return out

    def rate(self, name: str) -> RateLimit:
        """The limit of class ``name`` (one of ``CLASSES``)."""
        value = getattr(self, name)
        assert isinstance(value, RateLimit), name
        return value


class LimitOverrides(_Model):
    """A group's per-class overrides of the default limits, field by field."""

    tcp_syn: RateLimitOverride | None = None
    tcp_other: RateLimitOverride | None = None
    udp: RateLimitOverride | None = None
    icmp: RateLimitOverride | None = None
    fragment: RateLimitOverride | None = None
    other: RateLimitOverride | None = None

    def count(self) -> int:
        """How many classes are overridden."""
        return sum(getattr(self, name) is not None for name in CLASSES)


class Threshold(_Model):
    """A static detection floor for one class: an attack needs at least this rate."""

    pps: Pps | None = Field(default=None, description="packets per second towards one destination")
    bps: Bps | None = Field(default=None, description="bits per second towards one destination")


class Thresholds(_Model):
    """Per-class detection floors of a group; any subset of the classes."""

    tcp_syn: Threshold | None = None
    tcp_other: Threshold | None = None
    udp: Threshold | None = None
    icmp: Threshold | None = None
    fragment: Threshold | None = None
    other: Threshold | None = None


class Uplink(_Model):
    """Capacity of a link; traffic near it cannot be fixed locally and needs escalation."""

    bps: Bps | None = Field(default=None, description="link capacity in bits per second")
    pps: Pps | None = Field(default=None, description="link capacity in packets per second")


# --- mitigation ---------------------------------------------------------------------------------


def _check_ladder(value: tuple[Step, ...]) -> tuple[Step, ...]:
    if len(set(value)) != len(value):
        raise ValueError(f"a step appears twice in [{', '.join(value)}]")
    if list(value) != [step for step in LADDER_ORDER if step in value]:
        raise ValueError(f"steps must keep the order tighten, rule, ban; got [{', '.join(value)}]")
    return value


class Mitigation(_Model):
    """How detected attacks are mitigated, step by step, and how bans age."""

    ladder: tuple[Step, ...] = Field(
        default=LADDER_ORDER,
        description="levers allowed, in order: any subset of tighten (per-source limits), rule (shape rules), "
                    "ban; [] = detect only",
    )
    ttl: Annotated[float, Unit("duration", 1, 86400)] = Field(
        default=60.0, description="expiry of rules and per-source limits, refreshed while the attack lasts"
    )
    source_headroom: Annotated[float, Unit("number", 1.0, 1000.0)] = Field(
        default=10.0, description="per-source limit in an attack = heaviest legitimate source seen x this"
    )
    shape_headroom: Annotated[float, Unit("number", 1.0, 1000.0)] = Field(
        default=3.0, description="aggregate limit on a shape the group has = its learned normal rate x this"
    )
    ban_ttl: Annotated[float, Unit("duration", 1, 30 * 86400)] = Field(
        default=600.0, description="first ban duration"
    )
    ban_ttl_max: Annotated[float, Unit("duration", 1, 365 * 86400)] = Field(
        default=86400.0, description="longest ban for a repeat offender"
    )
    ban_escalation: Annotated[float, Unit("number", 1.0, 100.0)] = Field(
        default=2.0, description="each repeat ban lasts this many times longer, up to ban_ttl_max"
    )
    max_bans: Annotated[int, Unit("count", 0, MAX_CAPACITY)] = Field(
        default=10_000, description="most automatic bans at once"
    )
    spoof_ratio: Annotated[float, Unit("number", 0.0, 1.0)] = Field(
        default=0.8, description="distinct sources / samples above this looks spoofed: ban nobody"
    )
    uplink: Uplink = Field(
        default_factory=lambda: Uplink(bps=10_000_000_000, pps=10_000_000),
        description="total uplink capacity; attacks above it need upstream help",
    )
    hook: Path | None = Field(
        default=None, description="executable run with the attack record as JSON on stdin"
    )

    _ladder = field_validator("ladder")(_check_ladder)

    @field_validator("hook")
    @classmethod
    def _hook_absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else _absolute(value)


class MitigationOverrides(_Model):
    """A group's overrides of the global mitigation settings; unset fields inherit."""

    ladder: tuple[Step, ...] | None = None
    ttl: Annotated[float, Unit("duration", 1, 86400)] | None = None
    source_headroom: Annotated[float, Unit("number", 1.0, 1000.0)] | None = None
    shape_headroom: Annotated[float, Unit("number", 1.0, 1000.0)] | None = None
    ban_ttl: Annotated[float, Unit("duration", 1, 30 * 86400)] | None = None
    ban_ttl_max: Annotated[float, Unit("duration", 1, 365 * 86400)] | None = None
    ban_escalation: Annotated[float, Unit("number", 1.0, 100.0)] | None = None
    max_bans: Annotated[int, Unit("count", 0, MAX_CAPACITY)] | None = None
    spoof_ratio: Annotated[float, Unit("number", 0.0, 1.0)] | None = None

    @field_validator("ladder")
    @classmethod
    def _ladder(cls, value: tuple[Step, ...] | None) -> tuple[Step, ...] | None:
        return None if value is None else _check_ladder(value)


# --- protected groups ---------------------------------------------------------------------------


def _syn_auth_words(value: Any) -> Any:
    # YAML 1.1 reads a bare `off` as false; that is what people write, so take it.
    if value is False:
        return "off"
    if value is True:
        raise ValueError("write on_attack or always (a bare 'on' or 'true' does not say which)")
    return value


class Group(_Model):
    """A protected group ("host group"): destinations that share thresholds and limits."""

    name: str = Field(description="unique name: lower-case letters, digits, '_' and '-'")
    prefixes: Prefixes = Field(default=(), description="protected destination prefixes")
    files: tuple[Path, ...] = Field(
        default=(), description="files with one prefix per line (relative to this file)"
    )
    monitor: bool = Field(default=False, description="detect and report, but never act for this group")
    limits: LimitOverrides = Field(default_factory=LimitOverrides, description="per-source limit overrides")
    thresholds: Thresholds = Field(
        default_factory=Thresholds, description="static detection floors per class"
    )
    mitigation: MitigationOverrides = Field(
        default_factory=MitigationOverrides, description="overrides of the global mitigation block"
    )
    syn_auth: SynAuthMode = Field(
        default="on_attack", description="SYN authentication: off, on_attack (during a forged SYN flood) or always"
    )
    uplink: Uplink | None = Field(
        default=None, description="capacity of the link to this group, for escalation"
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _GROUP_NAME.match(value):
            raise ValueError(
                f"'{value}' is not a valid group name: use a-z, 0-9, '_' and '-' (up to 63 characters)"
            )
        if value == "default":
            raise ValueError("'default' is reserved for traffic to destinations outside every group")
        return value

    @field_validator("syn_auth", mode="before")
    @classmethod
    def _syn_auth(cls, value: Any) -> Any:
        return _syn_auth_words(value)


# --- detection, SYN auth, capacity, plumbing ----------------------------------------------------


class Baseline(_Model):
    """Learned normal traffic per destination: EWMA mean and deviation."""

    half_life: Annotated[float, Unit("duration", 10, 7 * 86400)] = Field(
        default=600.0, description="how fast the baseline forgets"
    )
    k: Annotated[float, Unit("number", 0.0, 100.0)] = Field(
        default=4.0, description="threshold = mean + k * deviation"
    )
    warmup: Annotated[float, Unit("duration", 0, 7 * 86400)] = Field(
        default=300.0, description="learning time before the baseline is used"
    )
    min_pps: Annotated[int, Unit("pps", 0, MAX_PPS)] = Field(
        default=1000, description="the learned threshold is never below this"
    )


class Detection(_Model):
    """When an attack starts and ends."""

    tick: Annotated[float, Unit("duration", 0.1, 10)] = Field(
        default=1.0, description="counter read interval"
    )
    sample_every: Annotated[int, Unit("count", 0, 1_000_000)] = Field(
        default=1000, description="1 in N packets sampled for top sources; 0 = off"
    )
    consecutive: Annotated[int, Unit("count", 1, 100)] = Field(
        default=3, description="ticks over threshold before an attack starts"
    )
    pulse_gap: Annotated[float, Unit("duration", 0, 60)] = Field(
        default=1.0,
        description="over-threshold ticks at most this far apart count as consecutive (pulse-wave floods)",
    )
    hold_down: Annotated[float, Unit("duration", 0, 86400)] = Field(
        default=30.0, description="below the release threshold this long before an attack ends"
    )
    release_ratio: Annotated[float, Unit("number", 0.01, 1.0)] = Field(
        default=0.7, description="release threshold = ratio * start threshold"
    )
    baseline: Baseline = Field(default_factory=Baseline)
    carpet_hosts: Annotated[int, Unit("count", 2, 1_000_000)] = Field(
        default=32, description="hosts of one group attacked at once that count as carpet bombing"
    )


class SynAuth(_Model):
    """SYN authentication settings, for groups with syn_auth on."""

    verified_ttl: Annotated[float, Unit("duration", 1, 7 * 86400)] = Field(
        default=600.0, description="how long a verified source stays verified"
    )
    key_rotation: Annotated[float, Unit("duration", 1, 86400)] = Field(
        default=60.0, description="how often the challenge key changes"
    )
    challenge_pps: Annotated[int, Unit("pps", 1, MAX_PPS)] = Field(
        default=10_000, description="most challenges sent per group per second"
    )
    challenge_pps_total: Annotated[int, Unit("pps", 1, MAX_PPS)] | None = Field(
        default=None,
        description="most challenges sent for all groups together per second; default twice challenge_pps",
    )

    def total_challenge_pps(self) -> int:
        """The gateway-wide cap: without it, N groups could aim N x challenge_pps at one forged victim."""
        return self.challenge_pps_total if self.challenge_pps_total is not None else 2 * self.challenge_pps


class Capacities(_Model):
    """Map sizes, fixed when the daemon starts: changing one needs a restart.

    Defaults come from agent.contract.capacity, the one place that also
    sizes the program (and that the ABI test checks against bpf/maps.h).
    """

    prefixes: MapSize = Field(
        default=CAPACITY.prefixes, description="allow + deny + ban prefix entries (IPv4 and IPv6)"
    )
    hosts4: MapSize = Field(default=CAPACITY.hosts4, description="IPv4 /25../32 entries expanded to hosts")
    prefixes6: MapSize = Field(default=CAPACITY.prefixes6, description="IPv6 prefix entries")
    groups: Annotated[int, Unit("count", 2, 65_535)] = Field(
        default=CAPACITY.groups, description="protected groups + 1 (group 0 is everything else)"
    )
    sources: MapSize = Field(default=CAPACITY.sources, description="per-source IPv4 buckets (LRU)")
    sources6: MapSize = Field(default=CAPACITY.sources6, description="per-source IPv6 buckets (LRU)")
    destinations: MapSize = Field(default=CAPACITY.destinations, description="per-destination counters (LRU)")
    verified: MapSize = Field(default=CAPACITY.verified, description="SYN-authenticated sources (LRU)")

    def to_capacity(self) -> Capacity:
        return Capacity(**self.model_dump())


class Metrics(_Model):
    """The Prometheus endpoint."""

    listen: str = Field(default="127.0.0.1:9470", description="host:port, IPv6 as [::1]:9470")

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"'{value}' is not host:port, e.g. 127.0.0.1:9470 or [::1]:9470")
        if ":" in host and not (host.startswith("[") and host.endswith("]")):
            raise ValueError(f"'{value}': write an IPv6 address in brackets, e.g. [::1]:9470")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class Control(_Model):
    """The control socket used by the CLI."""

    socket: Path = Field(default=Path("/run/floodguard/control.sock"), description="Unix socket path")
    group: str | None = Field(
        default="floodguard", description="Unix group allowed to use the socket; null = root only"
    )

    _abs = field_validator("socket")(_absolute)


class Log(_Model):
    """Logging."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description="auto = JSON under systemd or when not on a terminal, console on a terminal",
    )


# --- the whole policy ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicySummary:
    """Counts for ``floodguard check`` and the startup log."""

    allow: int
    deny: int
    infrastructure: int
    protected: int
    groups: int
    limits: int
    group_overrides: int
    interfaces: int

    def __str__(self) -> str:
        return (
            f"{self.allow:,} allow, {self.deny:,} deny, {self.infrastructure:,} infrastructure, "
            f"{self.protected:,} protected prefixes in {self.groups:,} "
            f"group{'s' if self.groups != 1 else ''}, "
            f"{self.limits} default limits"
        )


class Policy(_Model):
    """A whole validated policy. Build it with ``load_policy``; construct directly only in tests."""

    include: tuple[str, ...] = Field(
        default=(), description="globs of more policy files, relative to this file"
    )
    interfaces: tuple[Interface, ...] = Field(default=(), description="where the XDP program is attached")
    mode: Literal["enforce", "monitor"] = Field(
        default="enforce", description="monitor: count everything, drop nothing"
    )
    malformed: Literal["drop", "pass"] = Field(
        default="drop", description="verdict for packets that fail to parse"
    )
    allow: PrefixSet = Field(default_factory=PrefixSet, description="sources never limited, never banned")
    deny: PrefixSet = Field(default_factory=PrefixSet, description="sources banned by policy")
    infrastructure: Infrastructure = Field(
        default_factory=Infrastructure, description="sources never banned automatically"
    )
    limits: Limits = Field(default_factory=Limits, description="default per-source limits per class")
    protect: tuple[Group, ...] = Field(default=(), description="protected groups of destinations")
    watch: Annotated[tuple[WatchSet, ...], Field(max_length=MAX_WATCH_SETS)] = Field(
        default=(), description="source sets whose verdicts are counted on their own (at most 255)"
    )
    detection: Detection = Field(default_factory=Detection)
    mitigation: Mitigation = Field(default_factory=Mitigation)
    syn_auth: SynAuth = Field(default_factory=SynAuth)
    capacity: Capacities = Field(default_factory=Capacities)
    metrics: Metrics = Field(default_factory=Metrics)
    control: Control = Field(default_factory=Control)
    log: Log = Field(default_factory=Log)
    state_dir: Path = Field(default=Path("/var/lib/floodguard"), description="where bans survive restarts")
    upstream: Upstream | None = Field(
        default=None, description="escalation over BGP (Flowspec, RTBH) when the uplink is full; absent = none"
    )

    @field_validator("include", mode="before")
    @classmethod
    def _one_glob(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    _abs = field_validator("state_dir")(_absolute)

    def group(self, name: str) -> Group:
        """The group called ``name``; ``KeyError`` if there is none."""
        for group in self.protect:
            if group.name == name:
                return group
        raise KeyError(name)

    def group_limits(self, group: Group) -> Limits:
        """The per-source limits that apply to ``group``: defaults overridden field by field.

        A group that sets ``pps`` but not ``burst`` gets twice its own pps as burst,
        as the defaults do, rather than a burst sized for another rate.
        """
        update: dict[str, RateLimit] = {}
        for name in CLASSES:
            override: RateLimitOverride | None = getattr(group.limits, name)
            if override is None:
                continue
            base = self.limits.rate(name)
            pps = override.pps if override.pps is not None else base.pps
            if override.burst is not None:
                burst = override.burst
            elif override.pps is not None:
                burst = min(2 * pps, MAX_PPS) if pps else 0
            else:
                burst = base.burst
            bps = override.bps if override.bps is not None else base.bps
            update[name] = RateLimit(pps=pps, bps=bps, burst=burst)
        return self.limits.model_copy(update=update)

    def group_mitigation(self, group: Group) -> Mitigation:
        """The mitigation settings that apply to ``group``: global ones overridden by the group's."""
        update = dict(group.mitigation.model_dump(exclude_none=True).items())
        return self.mitigation.model_copy(update=update)

    def run_blockers(self) -> list[str]:
        """Why the daemon cannot run this policy (empty if it can).

        A policy without interfaces is still valid — ``check`` accepts it so that
        shared conf.d fragments can be tested alone — but there is nothing to attach to.
        """
        if not self.interfaces:
            return ["no interfaces: add `interfaces: [{name: eth0}]` so the program has somewhere to attach"]
        return []

    def restart_fields(self) -> dict[str, object]:
        """Values that a reload cannot change: XDP attachment and modes, map sizes, bound sockets.

        Map sizes and the XDP mode are fixed when the program is built and attached;
        the listening sockets and state directory are opened once at start.
        """
        fields: dict[str, object] = {
            "interfaces": tuple((i.name, i.mode) for i in self.interfaces),
        }
        for name, value in self.capacity.model_dump().items():
            fields[f"capacity.{name}"] = value
        fields["metrics.listen"] = self.metrics.listen
        fields["control.socket"] = str(self.control.socket)
        fields["control.group"] = self.control.group
        fields["state_dir"] = str(self.state_dir)
        return fields

    def summary(self) -> PolicySummary:
        """Counts of prefixes, groups and limits."""
        return PolicySummary(
            allow=len(self.allow.prefixes),
            deny=len(self.deny.prefixes),
            infrastructure=len(self.infrastructure.prefixes),
            protected=sum(len(g.prefixes) for g in self.protect),
            groups=len(self.protect),
            limits=len(CLASSES),
            group_overrides=sum(g.limits.count() for g in self.protect),
            interfaces=len(self.interfaces),
        )


def _show(field: str, value: object) -> str:
    if field == "interfaces":
        assert isinstance(value, tuple)
        return ", ".join(f"{name} ({mode})" for name, mode in value) or "none"
    return str(value)


def restart_required(old: Policy, new: Policy) -> list[str]:
    """Messages for every restart-only value that differs, e.g.
    ``restart required: capacity.sources changed from 1048576 to 2097152``."""
    before, after = old.restart_fields(), new.restart_fields()
    return [
        f"restart required: {key} changed from {_show(key, before[key])} to {_show(key, after[key])}"
        for key in before
        if before[key] != after.get(key)
    ]


__all__ = [
    "CLASSES",
    "DEFAULT_LIMITS",
    "Baseline",
    "Capacities",
    "Control",
    "Detection",
    "Group",
    "Infrastructure",
    "Interface",
    "LimitOverrides",
    "Limits",
    "Log",
    "Metrics",
    "Mitigation",
    "MitigationOverrides",
    "Policy",
    "PolicySummary",
    "PrefixEntry",
    "PrefixSet",
    "RateLimit",
    "RateLimitOverride",
    "SynAuth",
    "Threshold",
    "Thresholds",
    "Uplink",
    "Upstream",
    "restart_required",
]
