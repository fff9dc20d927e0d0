"""What `floodguard bans` and `floodguard explain` show: read-only views of the maps.

Both run under the agent's lock, so each reads only what it needs: the
policy's entries are indexed by prefix once per policy (a deny list can
hold a million), and explain looks up exactly the bucket keys of one
source — its address (IPv6: its bucket prefix) for each group in use and
each class — instead of walking the LRU maps.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from agent.contract import abi
from agent.contract.clock import NS
from agent.contract.keys import IPAddress, PrefixKey, covers, key_network
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
    as_dst = None if dst_key is None else _as_destination(addr, port, table.dst[dst_key], dst_key, names, now)
    buckets = _buckets_of(addr, port, policy.limits.ipv6_prefix, names, now)
    return {"ip": str(addr), "verdict": verdict, "entries": records, "infrastructure": infra,
            "as_destination": as_dst, "source_buckets": buckets}


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
                now: int) -> list[dict[str, object]]:
    """This source's token buckets, judged against the limits in force for each group."""
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
            out.append({"group": names[gid], "class": abi.TrafficClass(c).label, "limit": describe(r),
                        "tightened": tight,
                        "over_limit": r.pkt_cost_ns > 0 and ahead + r.pkt_cost_ns > r.pkt_tolerance_ns,
                        "credit_used_seconds": round(ahead / NS, 3)})
    return out


__all__ = ["PolicyIndex", "bucket_address", "explain", "list_bans", "reason_text"]
