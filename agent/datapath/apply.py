"""Write a desired state (a compiled policy) into the kernel without a gap.

Only origin "policy" is diffed and rewritten: operator and automatic
bans are never touched by a policy change. Everything new is written before
anything old is removed: a new group's limits before the prefixes that point
at it, new entries before the slots that point at them, and groups that went
away are cleared only once nothing points at them any more. What the running
policy uses (its groups' limits, the config) changes only after the prefixes
are committed, so a failed apply leaves the previous policy whole.
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
    """Make the kernel hold ``desired``; ``previous`` (what was applied before) says which groups went away.

    All or nothing: when the prefixes cannot be committed (a full map, a
    kernel error) the address model is rolled back and neither the group
    limits nor the config of ``desired`` have been written, so "previous
    kept" is the truth.
    """
    start = time.monotonic()
    gmax = port.maps["groups"].max_entries
    for g in desired.groups:
        if g.gid >= gmax:
            raise ValueError(f"group {g.name} has id {g.gid}, beyond capacity.groups={gmax}")
    before = {g.gid for g in previous.groups} if previous is not None else set()
    # A new group's limits go in before any prefix points at it; nothing points
    # at it yet, so it is harmless if the commit fails (and cleared then).
    fresh = [g for g in desired.groups if g.gid not in before]
    for g in fresh:
        port.set_group(g.gid, g.spec)

    table = port.addresses
    try:
        table.set_destinations(dict(desired.destinations))
        table.replace_origin(abi.Origin.POLICY, dict(desired.bans), dict(desired.allows))
        table.set_watch(dict(desired.watch))
        changed = table.commit(monotonic_ns())
    except BaseException:
        table.rollback(monotonic_ns())  # edits refused before the commit are undone too
        for g in fresh:
            port.set_group(g.gid, GroupSpec())
        raise

    # The running groups' new limits and the config only once the prefixes are in.
    for g in desired.groups:
        if g.gid in before:
            port.set_group(g.gid, g.spec)
    port.write_config(desired.config)
    if previous is not None:
        live = {g.gid for g in desired.groups}
        for g in previous.groups:
            if g.gid not in live:
                port.set_group(g.gid, GroupSpec())
                port.relax(g.gid)
                port.set_syn_auth(g.gid, None)
    return ApplyStats(prefixes_changed=changed, groups=len(desired.groups), seconds=time.monotonic() - start)
