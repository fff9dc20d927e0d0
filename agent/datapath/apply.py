"""Write a compiled policy into the kernel without a gap.

Only origin "policy" is diffed and rewritten: operator and automatic
bans are never touched by a policy change. Everything new is written before
anything old is removed: a group's limits before the prefixes that point at
it, new entries before the slots that point at them, and groups that went
away are cleared only once nothing points at them any more.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import abi
from .port import GroupSpec, MapPort

NS = 1_000_000_000


@dataclass(frozen=True)
class ApplyStats:
    prefixes_changed: int
    groups: int
    seconds: float


def monotonic_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def apply_policy(port: MapPort, compiled: object, previous: object | None = None) -> ApplyStats:
    """Make the kernel hold `compiled` (an agent.policy.compile.CompiledPolicy)."""
    from agent.policy.compile import CompiledPolicy

    assert isinstance(compiled, CompiledPolicy)
    start = time.monotonic()
    gmax = port.maps["groups"].max_entries
    for g in compiled.groups:
        if g.gid >= gmax:
            raise ValueError(f"group {g.name} has id {g.gid}, beyond capacity.groups={gmax}")
        port.set_group(g.gid, g.spec)
    port.write_config(compiled.config)

    table = port.addresses
    table.set_destinations(dict(compiled.destinations))
    table.replace_origin(abi.Origin.POLICY, dict(compiled.bans), dict(compiled.allows))
    changed = table.commit(monotonic_ns())

    if isinstance(previous, CompiledPolicy):
        live = {g.gid for g in compiled.groups}
        for g in previous.groups:
            if g.gid not in live:
                port.set_group(g.gid, GroupSpec())
                port.relax(g.gid)
                port.set_syn_auth(g.gid, None)
    return ApplyStats(prefixes_changed=changed, groups=len(compiled.groups), seconds=time.monotonic() - start)
