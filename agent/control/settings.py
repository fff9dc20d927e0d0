"""The policy as the control loop reads it: resolved per group, as arrays where it pays.

Built once per policy load: each group's effective limits, mitigation
settings and monitor flag, the static floors as [gid, class] arrays for the
vectorised detector, and the prefix sets that must never be banned.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from agent.contract.abi import LIMIT_CLASSES
from agent.contract.keys import PrefixKey, key_network
from agent.contract.specs import ClassLimit
from agent.policy.compile import CompiledPolicy
from agent.policy.model import CLASSES, Detection, Group, Mitigation, Policy, Uplink

from .matcher import PrefixMatcher

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class GroupView:
    """One protected group with everything inherited resolved."""

    gid: int
    name: str
    limits: tuple[ClassLimit, ...]  # per-source policy limits, one per class
    mitigation: Mitigation
    monitor: bool  # global monitor mode or the group's own
    syn_auth: str  # off | on_attack | always
    uplink: Uplink | None
    prefixes: tuple[IPNetwork, ...]


@dataclass(frozen=True)
class Settings:
    rows: int  # gid rows of every per-group array
    groups: Mapping[int, GroupView]
    gids: Mapping[str, int]
    detection: Detection
    mitigation: Mitigation
    monitor: bool
    floor_pps: NDArray[np.float64]  # [gid, class] static floors, 0 = none
    floor_bps: NDArray[np.float64]
    host_floor_pps: NDArray[np.float64]  # the same floors per destination host, inf = none
    host_floor_bps: NDArray[np.float64]
    eligible: NDArray[np.bool_]  # [gid, class]: a protected group
    allow: PrefixMatcher
    infrastructure: PrefixMatcher
    protected: PrefixMatcher
    destinations: Mapping[PrefixKey, int]
    ipv6_ban_len: int
    uplinked: tuple[GroupView, ...]  # the groups with an uplink of their own, by group id

    @classmethod
    def build(cls, policy: Policy, compiled: CompiledPolicy) -> Settings:
        rows = max([compiled.capacity.groups, *(g.gid + 1 for g in compiled.groups)])
        floor_pps = np.zeros((rows, LIMIT_CLASSES))
        floor_bps = np.zeros((rows, LIMIT_CLASSES))
        eligible = np.zeros((rows, LIMIT_CLASSES), dtype=bool)
        groups: dict[int, GroupView] = {}
        for cg in compiled.groups:
            if cg.gid == 0 or cg.group is None:
                continue
            g: Group = cg.group
            limits = policy.group_limits(g)
            groups[cg.gid] = GroupView(
                gid=cg.gid,
                name=cg.name,
                limits=tuple(
                    ClassLimit(limits.rate(c).pps, limits.rate(c).bps, limits.rate(c).burst) for c in CLASSES
                ),
                mitigation=policy.group_mitigation(g),
                monitor=policy.mode == "monitor" or g.monitor,
                syn_auth=g.syn_auth,
                uplink=g.uplink,
                prefixes=tuple(e.network for e in g.prefixes),
            )
            eligible[cg.gid] = True
            for i, c in enumerate(CLASSES):
                t = getattr(g.thresholds, c)
                if t is not None:
                    floor_pps[cg.gid, i] = t.pps or 0
                    floor_bps[cg.gid, i] = t.bps or 0
        return cls(
            rows=rows,
            groups=groups,
            gids={v.name: gid for gid, v in groups.items()},
            detection=policy.detection,
            mitigation=policy.mitigation,
            monitor=policy.mode == "monitor",
            floor_pps=floor_pps,
            floor_bps=floor_bps,
            host_floor_pps=np.where(floor_pps > 0, floor_pps, np.inf),
            host_floor_bps=np.where(floor_bps > 0, floor_bps, np.inf),
            eligible=eligible,
            allow=PrefixMatcher(compiled.allows),
            infrastructure=PrefixMatcher(compiled.infrastructure),
            protected=PrefixMatcher(compiled.destinations),
            destinations=compiled.destinations,
            ipv6_ban_len=policy.limits.ipv6_prefix,
            uplinked=tuple(v for v in groups.values() if v.uplink is not None),
        )

    def group_prefix_of(self, family: int, addr: int, gid: int) -> IPNetwork | None:
        """The protected prefix of group gid that makes addr part of it (its longest match)."""
        key = self.protected.longest(family, addr)
        if key is None or self.destinations.get(key) != gid:
            return None
        return key_network(key)
