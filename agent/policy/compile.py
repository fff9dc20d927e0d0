"""Compile a validated Policy into what it wants in the kernel.

Pure: no kernel access. The result's ``desired`` (an
agent.contract.desired.DesiredState) says exactly what the policy wants in
the kernel — run-time settings, per-group limits, protected prefixes, the
policy's own allow and deny records — and agent/datapath/apply.py writes it,
diffing against what the kernel holds for origin "policy" only. Besides it,
the compiled policy keeps what the control loop needs of the policy: each
group's model, the infrastructure prefixes and the stable group ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.contract import abi
from agent.contract.capacity import Capacity
from agent.contract.clock import NS
from agent.contract.desired import DesiredGroup, DesiredState
from agent.contract.keys import PrefixKey, Record
from agent.contract.rates import make_rate
from agent.contract.specs import ConfigSpec, GroupSpec
from agent.policy.model import CLASSES, Group, Limits, Policy


@dataclass(frozen=True)
class CompiledGroup:
    gid: int
    name: str
    spec: GroupSpec
    group: Group | None  # None for group 0, the default


@dataclass(frozen=True)
class CompiledPolicy:
    desired: DesiredState
    groups: tuple[CompiledGroup, ...]  # group 0 first
    infrastructure: tuple[PrefixKey, ...]
    group_ids: Mapping[str, int] = field(default_factory=dict)
    watch_names: Mapping[int, str] = field(default_factory=dict)

    @property
    def config(self) -> ConfigSpec:
        return self.desired.config

    @property
    def capacity(self) -> Capacity:
        return self.desired.capacity

    @property
    def destinations(self) -> Mapping[PrefixKey, int]:
        return self.desired.destinations

    @property
    def bans(self) -> Mapping[PrefixKey, Record]:
        return self.desired.bans

    @property
    def allows(self) -> Mapping[PrefixKey, Record]:
        return self.desired.allows

    def gid(self, name: str) -> int:
        return self.group_ids[name]


def rates_of(limits: Limits) -> list[abi.Rate]:
    out = []
    for name in CLASSES:
        r = limits.rate(name)
        out.append(make_rate(r.pps, r.bps, r.burst))
    return out


def assign_group_ids(policy: Policy, previous: Mapping[str, int] | None) -> dict[str, int]:
    """Stable ids: a group keeps its id across reloads, so its counters and
    buckets stay its own; new groups take the lowest free ids."""
    prev = dict(previous or {})
    names = [g.name for g in policy.protect]
    ids = {n: prev[n] for n in names if n in prev}
    used = set(ids.values()) | {0}
    nxt = 1
    for n in names:
        if n in ids:
            continue
        while nxt in used:
            nxt += 1
        ids[n] = nxt
        used.add(nxt)
    if ids and max(ids.values()) >= policy.capacity.groups:
        # Reuse is exhausted: renumber densely (counters of moved groups restart).
        ids = {n: i + 1 for i, n in enumerate(names)}
    return ids


def compile_policy(policy: Policy, previous: Mapping[str, int] | None = None) -> CompiledPolicy:
    """``previous``: the group ids of the policy in force (or saved before a restart), kept stable."""
    ids = assign_group_ids(policy, previous)
    challenge = policy.syn_auth.challenge_pps
    groups = [CompiledGroup(0, "default", GroupSpec(base=rates_of(policy.limits)), None)]
    destinations: dict[PrefixKey, int] = {}
    for g in policy.protect:
        gid = ids[g.name]
        spec = GroupSpec(
            base=rates_of(policy.group_limits(g)),
            monitor=g.monitor,
            syn_always=g.syn_auth == "always",
            challenge_pps=challenge if g.syn_auth != "off" else 0,
        )
        groups.append(CompiledGroup(gid, g.name, spec, g))
        for e in g.prefixes:
            key = (e[0], e[1], e[2])
            # Validation rejects a prefix in two groups; nested prefixes of
            # different groups are fine: the longest match wins in the kernel.
            destinations[key] = gid

    ban_flag = abi.SRC_BAN_MONITOR if policy.deny.monitor else abi.SRC_BAN
    allow_flag = abi.SRC_ALLOW_MONITOR if policy.allow.monitor else abi.SRC_ALLOW
    # created = 0 for policy records: they must compare equal across reloads,
    # or every reload would rewrite every entry.
    ban_rec: Record = (0, 0, ban_flag, 0)
    allow_rec: Record = (0, 0, allow_flag, 0)
    bans = {(e[0], e[1], e[2]): ban_rec for e in policy.deny.prefixes}
    allows = {(e[0], e[1], e[2]): allow_rec for e in policy.allow.prefixes}
    # Watch sets are numbered in policy order (id 0 is "not watched").
    watch_names = {i: w.name for i, w in enumerate(policy.watch, start=1)}
    watch = {(e[0], e[1], e[2]): i for i, w in enumerate(policy.watch, start=1) for e in w.prefixes}

    config = ConfigSpec(
        monitor=policy.mode == "monitor",
        malformed_pass=policy.malformed == "pass",
        sample_every=policy.detection.sample_every,
        v6_bucket_len=policy.limits.ipv6_prefix,
        syn_verified_ttl_ns=int(policy.syn_auth.verified_ttl * NS),
        challenge_pps_total=policy.syn_auth.total_challenge_pps(),
    )
    _check_capacity(policy, destinations, bans, allows, watch)
    ordered = tuple(sorted(groups, key=lambda c: c.gid))
    desired = DesiredState(
        config=config,
        capacity=policy.capacity.to_capacity(),
        groups=tuple(DesiredGroup(g.gid, g.name, g.spec) for g in ordered),
        destinations=destinations,
        bans=bans,
        allows=allows,
        watch=watch,
    )
    return CompiledPolicy(
        desired=desired,
        groups=ordered,
        infrastructure=tuple((e[0], e[1], e[2]) for e in policy.infrastructure.prefixes),
        group_ids=ids,
        watch_names=watch_names,
    )


def _check_capacity(
    policy: Policy,
    destinations: Mapping[PrefixKey, int],
    bans: Mapping[PrefixKey, Record],
    allows: Mapping[PrefixKey, Record],
    watch: Mapping[PrefixKey, int],
) -> None:
    """Refuse a policy that cannot fit before anything is written.

    IPv4 prefixes longer than /24 expand to one host entry per address, and
    every IPv6 prefix is a trie node; operator and automatic bans need room
    too, so the policy may use at most three quarters of each table.
    """
    cap = policy.capacity
    sources = set(bans) | set(allows) | set(watch)
    keys = set(destinations) | sources
    hosts = sum(1 << (32 - p) for f, _a, p in keys if f == 4 and p > 24)
    nodes6 = sum(1 for f, _a, _p in keys if f == 6)
    for what, need, have in (
        ("capacity.hosts4", hosts, cap.hosts4),
        ("capacity.prefixes6", nodes6, cap.prefixes6),
        ("capacity.prefixes", len(sources), cap.prefixes),
    ):
        if need > have * 3 // 4:
            raise ValueError(
                f"the policy needs {need:,} entries of {what} ({have:,}); operator and automatic bans "
                f"need room too: raise {what} to at least {need * 4 // 3 + 1:,} and restart"
            )
