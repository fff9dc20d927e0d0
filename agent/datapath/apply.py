"""Write a desired state (a compiled policy) into the kernel without a gap.

Only origin "policy" is diffed and rewritten: operator and automatic
bans are never touched by a policy change. Everything new is written before
anything old is removed: a group's limits before the prefixes that point at
it, new entries before the slots that point at them, and groups that went
away are cleared only once nothing points at them any more.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from agent.contract import abi
from agent.contract.clock import monotonic_ns
from agent.contract.desired import DesiredState
from agent.contract.specs import GroupSpec

from .mapport import MapPort


@dataclass(frozen=True)
class ApplyStats:
    prefixes_changed: int
    groups: int
    seconds: float


def apply_policy(port: MapPort, desired: DesiredState, previous: DesiredState | None = None) -> ApplyStats:
    """Make the kernel hold ``desired``; ``previous`` (what was applied before) says which groups went away."""
    start = time.monotonic()
    gmax = port.maps["groups"].max_entries
    for g in desired.groups:
        if g.gid >= gmax:
            raise ValueError(f"group {g.name} has id {g.gid}, beyond capacity.groups={gmax}")
        port.set_group(g.gid, g.spec)
    port.write_config(desired.config)

    table = port.addresses
    table.set_destinations(dict(desired.destinations))
    table.replace_origin(abi.Origin.POLICY, dict(desired.bans), dict(desired.allows))
    table.set_watch(dict(desired.watch))
    changed = table.commit(monotonic_ns())

    if previous is not None:
        live = {g.gid for g in desired.groups}
        for g in previous.groups:
            if g.gid not in live:
                port.set_group(g.gid, GroupSpec())
                port.relax(g.gid)
                port.set_syn_auth(g.gid, None)
    return ApplyStats(prefixes_changed=changed, groups=len(desired.groups), seconds=time.monotonic() - start)
