"""What the agent tells the program, in operator terms: settings, groups, rules, per-class limits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from . import abi
from .clock import NS
from .keys import IPNetwork


@dataclass(frozen=True)
class ConfigSpec:
    """Run-time settings (struct fg_config)."""

    monitor: bool = False
    malformed_pass: bool = False
    sample_every: int = 0
    v6_bucket_len: int = 64
    syn_verified_ttl_ns: int = 600 * NS
    challenge_pps_total: int = 0  # SYN challenges of all groups together; 0 = no cap beyond each group's


@dataclass(frozen=True)
class GroupSpec:
    """A protected group's settings (struct fg_group), limits per class."""

    base: Sequence[abi.Rate] = field(default_factory=lambda: [abi.Rate() for _ in range(abi.LIMIT_CLASSES)])
    monitor: bool = False
    syn_always: bool = False
    challenge_pps: int = 0


@dataclass(frozen=True)
class RuleSpec:
    """A mitigation rule (struct fg_rule), in operator terms.

    ``action`` RATE_LIMIT: ``pps``/``bps`` is one limit shared by every
    matching packet; SOURCE_LIMIT: it is each matching source's own limit
    (in place of its group's per-source limit), so one source cannot take
    what the others need. ``traffic_class`` narrows the match to one class.
    """

    dst: IPNetwork
    proto: int = 0
    sport: tuple[int, int] = (0, 65535)
    dport: tuple[int, int] = (0, 65535)
    tcp_flags_mask: int = 0
    tcp_flags_value: int = 0
    action: abi.RuleAction = abi.RuleAction.DROP
    pps: int = 0
    bps: int = 0
    burst: int = 0
    expires_ns: int = 0
    origin: abi.Origin = abi.Origin.AUTO
    monitor: bool = False
    rule_id: int = 0
    group: int = 0
    traffic_class: abi.TrafficClass | None = None


@dataclass(frozen=True, slots=True)
class ClassLimit:
    """A per-source limit for one traffic class, in operator units (0 = unlimited)."""

    pps: int
    bps: int
    burst: int
