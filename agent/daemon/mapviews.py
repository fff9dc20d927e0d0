"""What `floodguard bans` and `floodguard explain` show: read-only views of the maps.

Both run under the agent's lock, so each reads only what it needs: the
policy's entries are indexed by prefix once per policy (a deny list can
hold a million), and explain looks up exactly the bucket keys of one
source — its address (IPv6: its bucket prefix) for each group in use and
each class — instead of walking the LRU maps.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

from agent.contract import abi
from agent.contract.clock import NS
from agent.contract.keys import IPAddress, IPNetwork, PrefixKey, covers, from_words, key_network
from agent.contract.rates import describe
from agent.datapath.mapport import MapPort
from agent.policy import Policy, PrefixEntry
from agent.policy.compile import CompiledPolicy

from .state import Reasons


class PolicyIndex:
    """The policy's allow, deny and infrastructure entries by prefix, built once per policy."""

    def __init__(self) -> None:
        self._policy: Policy | None = None
        self._entries: dict[PrefixKey, PrefixEntry] = {}

    def entries(self, policy: Policy | None) -> Mapping[PrefixKey, PrefixEntry]:
        if policy is None:
            return {}
        if policy is not self._policy:
            by_key: dict[PrefixKey, PrefixEntry] = {}
            # The first list naming a prefix gives its reason, as bans and explain have always shown it.
            for entries in (policy.deny.prefixes, policy.allow.prefixes, policy.infrastructure.prefixes):
                for e in entries:
                    by_key.setdefault((e.version, e.address, e.prefixlen), e)
            self._policy, self._entries = policy, by_key
        return self._entries


def reason_text(key: PrefixKey, origin: int, rid: int, entries: Mapping[PrefixKey, PrefixEntry],
                reasons: Reasons) -> str:
    """Why a record exists: the policy entry's reason and where it was written, or the saved text."""
    if origin == abi.Origin.POLICY:
        entry = entries.get(key)
        if entry is not None:
            return f"{entry.reason or 'policy'} ({entry.source})"
        return "policy"
    return reasons.text(rid)


def _ttl(expires: int, now: int) -> float | None:
    return None if expires == 0 else round((expires - now) / NS, 1)


def list_bans(port: MapPort, entries: Mapping[PrefixKey, PrefixEntry], reasons: Reasons, origin: str | None,
              now: int) -> list[dict[str, object]]:
    """The bans in force, optionally of one origin, sorted by origin then prefix."""
    rows: list[tuple[str, str, dict[str, object]]] = []
    for key, kind, o, (expires, created, flags, reason) in port.addresses.records():
        label = abi.Origin(o).label
        if kind != abi.SRC_BAN or (origin and label != origin) or (expires and expires <= now):
            continue
        prefix = str(key_network(key))
        rows.append((label, prefix, {
            "prefix": prefix,
            "origin": label,
            "ttl_seconds": _ttl(expires, now),
            "monitor": bool(flags & abi.SRC_BAN_MONITOR),
            "reason": reason_text(key, o, reason, entries, reasons),
            "age_seconds": round((now - created) / NS, 1) if created else None,
        }))
    rows.sort(key=lambda r: (r[0], r[1]))
    return [r[2] for r in rows]


def explain(addr: IPAddress, port: MapPort, policy: Policy, compiled: CompiledPolicy,
            entries: Mapping[PrefixKey, PrefixEntry], reasons: Reasons, now: int) -> dict[str, object]:
    """Everything the program would decide about ``addr``, as a source and as a destination."""
    table = port.addresses
    records: list[dict[str, object]] = []
    for key in table.covering_sources(addr):
        ent = table.src[key]
        for kind, slots in (("ban", ent.ban), ("allow", ent.allow)):
            for o, rec in enumerate(slots):
                if rec is None:
                    continue
                expires = rec[0]
                records.append({
                    "prefix": str(key_network(key)), "kind": kind, "origin": abi.Origin(o).label,
                    "monitor": bool(rec[2] & (abi.SRC_BAN_MONITOR | abi.SRC_ALLOW_MONITOR)),
                    "active": expires == 0 or expires > now,
                    "ttl_seconds": _ttl(expires, now),
                    "reason": reason_text(key, o, rec[3], entries, reasons),
                })
    src_key, dst_key = table.lookup(addr)
    verdict = "passes to the later stages"
    if src_key is not None:
        st = table.effective(src_key, now)
        if st.flags & abi.SRC_ALLOW:
            verdict = "allowlisted: always passes"
        elif st.flags & abi.SRC_BAN:
            verdict = "banned: every packet is dropped"
        elif st.flags & abi.SRC_BAN_MONITOR:
            verdict = "banned in monitor mode: counted, passed"
    infra = [str(key_network(k)) for k in ((e.version, e.address, e.prefixlen)
                                          for e in policy.infrastructure.prefixes) if covers(k, addr)]
    names = {g.gid: g.name for g in compiled.groups}
    rules = [r for r in port.read_rules() if r.expires == 0 or r.expires > now]
    as_dst = None if dst_key is None else _as_destination(addr, port, table.dst[dst_key], dst_key, names, now)
    if as_dst is not None:
        as_dst["rules"] = [rule_view(r, names, now) for r in rules if _rule_covers(r, addr)]
    buckets = _buckets_of(addr, port, policy.limits.ipv6_prefix, names, now, rules)
    return {"ip": str(addr), "verdict": verdict, "entries": records, "infrastructure": infra,
            "as_destination": as_dst, "source_buckets": buckets}


def _rule_network(r: abi.Rule) -> IPNetwork:
    return key_network((int(r.family), from_words(int(r.family), r.dst), int(r.dst_len)))


def _rule_covers(r: abi.Rule, addr: IPAddress) -> bool:
    return covers((int(r.family), from_words(int(r.family), r.dst), int(r.dst_len)), addr)


def rule_view(r: abi.Rule, names: Mapping[int, str], now: int) -> dict[str, object]:
    """A rule in force, in operator terms: what it matches and what it does to it."""
    action = abi.RuleAction(r.action)
    out: dict[str, object] = {
        "id": int(r.id), "dst": str(_rule_network(r)), "group": names.get(int(r.group), str(int(r.group))),
        "action": action.name.lower(), "origin": abi.Origin(r.origin).label,
        "monitor": bool(r.flags & abi.RULE_MONITOR), "ttl_seconds": _ttl(int(r.expires), now),
    }
    if r.proto:
        out["proto"] = int(r.proto)
    if r.class_match:
        out["class"] = abi.TrafficClass(r.class_match - 1).label
    if (r.sport_lo, r.sport_hi) != (0, 65535):
        out["sport"] = [int(r.sport_lo), int(r.sport_hi)]
    if (r.dport_lo, r.dport_hi) != (0, 65535):
        out["dport"] = [int(r.dport_lo), int(r.dport_hi)]
    if action in (abi.RuleAction.RATE_LIMIT, abi.RuleAction.SOURCE_LIMIT):
        out["limit"] = describe(r.rate)
        out["meaning"] = ("each source limited to this for this destination" if action is abi.RuleAction.SOURCE_LIMIT
                          else "all matching packets together limited to this")
    return out


def _tightened(g: abi.Group, now: int) -> bool:
    """Whether the program applies the group's tightened limits now (as fg_over_limit decides)."""
    return bool(g.flags & abi.GROUP_TIGHT) and (g.tight_expires == 0 or g.tight_expires > now)


def _as_destination(addr: IPAddress, port: MapPort, gid: int, dst_key: PrefixKey, names: Mapping[int, str],
                    now: int) -> dict[str, object]:
    g = port.read_group(gid)
    tight = _tightened(g, now)
    counters = port.read_dst_counter(addr.version, int(addr))
    return {
        "group": names.get(gid, str(gid)), "prefix": str(key_network(dst_key)),
        "per_source_limits": {abi.TrafficClass(c).label: describe(g.base[c]) for c in range(abi.LIMIT_CLASSES)},
        "tightened": tight,
        "tightened_limits": {abi.TrafficClass(c).label: describe(g.tight[c]) for c in range(abi.LIMIT_CLASSES)}
        if tight else None,
        "counters": None if counters is None else {
            abi.TrafficClass(c).label: {"packets": int(counters.packets[c]), "bytes": int(counters.bytes[c]),
                                        "dropped": int(counters.dropped[c])}
            for c in range(abi.LIMIT_CLASSES) if counters.packets[c]
        },
    }


def bucket_address(addr: IPAddress, ipv6_prefix: int) -> int:
    """The address a source's buckets are keyed by: IPv4 itself, IPv6 its bucket prefix."""
    if addr.version == 4:
        return int(addr)
    return int(ipaddress.IPv6Network((int(addr), ipv6_prefix), strict=False).network_address)


def _buckets_of(addr: IPAddress, port: MapPort, ipv6_prefix: int, names: Mapping[int, str],
                now: int, rules: Sequence[abi.Rule] = ()) -> list[dict[str, object]]:
    """This source's token buckets, judged against the limits in force for each group; a per-source
    limit of an attack (a SOURCE_LIMIT rule on the group and class) is listed with its destination."""
    key_addr = bucket_address(addr, ipv6_prefix)
    out: list[dict[str, object]] = []
    for gid in sorted(names):
        group: abi.Group | None = None
        for c in range(abi.LIMIT_CLASSES):
            b = port.read_bucket(addr.version, key_addr, gid, c)
            if b is None:
                continue
            if group is None:
                group = port.read_group(gid)
            tight = _tightened(group, now)
            r = group.tight[c] if tight else group.base[c]
            ahead = max(0, int(b.pkt_tat) - now)
            attack_limits = [
                {"dst": str(_rule_network(x)), "rule_id": int(x.id), "limit": describe(x.rate),
                 "over_limit": x.rate.pkt_cost_ns > 0 and ahead + x.rate.pkt_cost_ns > x.rate.pkt_tolerance_ns}
                for x in rules
                if x.action == abi.RuleAction.SOURCE_LIMIT and int(x.group) == gid
                and (x.class_match == 0 or x.class_match - 1 == c)]
            out.append({"group": names[gid], "class": abi.TrafficClass(c).label, "limit": describe(r),
                        "tightened": tight,
                        "over_limit": r.pkt_cost_ns > 0 and ahead + r.pkt_cost_ns > r.pkt_tolerance_ns,
                        "credit_used_seconds": round(ahead / NS, 3),
                        "attack_limits": attack_limits})
    return out


__all__ = ["PolicyIndex", "bucket_address", "explain", "list_bans", "reason_text", "rule_view"]
