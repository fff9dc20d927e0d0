"""What a policy wants in the kernel: the typed result of compiling it, and what apply writes.

agent/policy/compile.py produces a :class:`DesiredState`; agent/datapath/apply.py
consumes it, diffing it against what the kernel holds for origin "policy".
Neither imports the other: this is their whole interface.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .capacity import Capacity
from .keys import PrefixKey, Record
from .specs import ConfigSpec, GroupSpec


@dataclass(frozen=True)
class DesiredGroup:
    gid: int
    name: str
    spec: GroupSpec


@dataclass(frozen=True)
class DesiredState:
    """Run-time settings, per-group limits, protected prefixes and the policy's own allow/deny records."""

    config: ConfigSpec
    capacity: Capacity
    groups: tuple[DesiredGroup, ...]  # group 0 (the default) first
    destinations: Mapping[PrefixKey, int]  # protected prefix -> group id
    bans: Mapping[PrefixKey, Record]
    allows: Mapping[PrefixKey, Record]
    watch: Mapping[PrefixKey, int] = field(default_factory=dict)  # watched source prefix -> watch set id
