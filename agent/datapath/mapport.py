"""MapPort: everything the agent writes to or reads from the program's maps.

Policy apply and the control loop talk to the kernel only through this
class; unit tests of pure logic replace it with an in-memory fake, and the
BPF and integration tests use the real one.
"""

from __future__ import annotations

import ctypes as ct
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from agent.contract import abi
from agent.contract.keys import from_words, mask_words, words
from agent.contract.rates import make_rate
from agent.contract.specs import ConfigSpec, GroupSpec, RuleSpec

from .addrtable import AddressTable
from .maps import Maps


class MapPort:
    """The real port: reads and writes the pinned maps of one program."""

    def __init__(self, maps: Maps) -> None:
        self.maps = maps
        self.addresses = AddressTable(maps)
        self._generation = 0

    def close(self) -> None:
        self.addresses.close()

    # --- config and interfaces ----------------------------------------------

    def read_config(self) -> abi.Config:
        c = self.maps["config"].get(0)
        assert c is not None  # an array of one always has entry 0
        return c  # type: ignore[no-any-return]

    def write_config(self, spec: ConfigSpec, syn_keys: Sequence[Sequence[int]] | None = None) -> None:
        cur = self.read_config()
        c = abi.Config()
        c.flags = (
            (abi.CFG_MONITOR if spec.monitor else 0)
            | (abi.CFG_MALFORMED_PASS if spec.malformed_pass else 0)
        )
        c.sample_every = spec.sample_every
        c.n_rules = cur.n_rules
        c.v6_bucket_len = spec.v6_bucket_len
        c.v6_bucket_mask[:] = mask_words(6, spec.v6_bucket_len)
        self._generation = max(self._generation, int(cur.generation)) + 1
        c.generation = self._generation
        c.syn_verified_ttl_ns = spec.syn_verified_ttl_ns
        c.challenge_total = make_rate(pps=spec.challenge_pps_total) if spec.challenge_pps_total else abi.Rate()
        keys = syn_keys if syn_keys is not None else [(k.k0, k.k1) for k in cur.syn_key]
        for i in range(2):
            c.syn_key[i].k0, c.syn_key[i].k1 = keys[i][0], keys[i][1]
        self.maps["config"].set(0, c)

    def set_syn_keys(self, current: Sequence[int], previous: Sequence[int]) -> None:
        c = self.read_config()
        c.syn_key[1].k0, c.syn_key[1].k1 = previous[0], previous[1]
        c.syn_key[0].k0, c.syn_key[0].k1 = current[0], current[1]
        self.maps["config"].set(0, c)

    def set_ifslot(self, ifindex: int, slot: int) -> None:
        """Count packets of ifindex under slot (1..IF_SLOTS-1); 0 frees it."""
        k = ifindex % abi.IFSLOT_TABLE
        self.maps["ifslots"].set(k, abi.IfSlot(ifindex=ifindex if slot else 0, slot=slot))

    def ifslots(self) -> dict[int, int]:
        return {int(v.ifindex): int(v.slot) for _, v in self.maps["ifslots"].items() if v.ifindex}

    # --- groups ---------------------------------------------------------------

    def read_group(self, gid: int) -> abi.Group:
        g = self.maps["groups"].get(gid)
        assert g is not None
        return g  # type: ignore[no-any-return]

    def set_group(self, gid: int, spec: GroupSpec) -> None:
        """Policy settings of a group; tightening and SYN-auth state are kept."""
        g = self.read_group(gid)
        for i, r in enumerate(spec.base):
            g.base[i] = r
        keep = g.flags & (abi.GROUP_TIGHT | abi.GROUP_SYN_AUTH)
        g.flags = (
            keep
            | (abi.GROUP_MONITOR if spec.monitor else 0)
            | (abi.GROUP_SYN_ALWAYS if spec.syn_always else 0)
        )
        g.challenge = make_rate(pps=spec.challenge_pps) if spec.challenge_pps else abi.Rate()
        self.maps["groups"].set(gid, g)

    def tighten(self, gid: int, tight: Sequence[abi.Rate], expires_ns: int, origin: abi.Origin) -> None:
        """Replace a group's per-source limits until expires_ns (refreshable)."""
        g = self.read_group(gid)
        for i, r in enumerate(tight):
            g.tight[i] = r
        g.tight_expires = expires_ns
        g.tight_origin = origin
        g.flags |= abi.GROUP_TIGHT
        self.maps["groups"].set(gid, g)

    def relax(self, gid: int) -> None:
        g = self.read_group(gid)
        g.flags &= ~abi.GROUP_TIGHT
        g.tight_expires = 0
        self.maps["groups"].set(gid, g)

    def set_syn_auth(self, gid: int, expires_ns: int | None) -> None:
        """Challenge unverified SYNs to the group until expires_ns; None stops."""
        g = self.read_group(gid)
        if expires_ns is None:
            g.flags &= ~abi.GROUP_SYN_AUTH
            g.syn_auth_expires = 0
        else:
            g.flags |= abi.GROUP_SYN_AUTH
            g.syn_auth_expires = expires_ns
        self.maps["groups"].set(gid, g)

    # --- per-source buckets -----------------------------------------------------

    def read_bucket(self, family: int, addr: int, gid: int, cls: int) -> abi.Bucket | None:
        """One source's token bucket towards a group for a class, or None.

        ``addr`` is the bucket's address: an IPv4 source, or an IPv6 source
        already masked to the bucket prefix length (config ``v6_bucket_len``).
        """
        if family == 4:
            k4 = abi.BucketKey4(addr=words(4, addr)[0], group=gid, cls=cls)
            return self.maps["buckets4"].get(k4)
        k6 = abi.BucketKey6(group=gid, cls=cls)
        k6.addr[:] = words(6, addr)
        return self.maps["buckets6"].get(k6)

    # --- rules ----------------------------------------------------------------

    def set_rules(self, rules: Sequence[RuleSpec]) -> None:
        """Make the rule table exactly these rules, in order.

        Growing: slots first, then the count; shrinking: the count first.
        """
        if len(rules) > abi.MAX_RULES:
            raise ValueError(f"at most {abi.MAX_RULES} rules")
        cfg = self.read_config()
        old_n = int(cfg.n_rules)
        if len(rules) < old_n:
            cfg.n_rules = len(rules)
            self.maps["config"].set(0, cfg)
        table = self.maps["rules"]
        for i, spec in enumerate(rules):
            table.set(i, self._rule(spec))
        for i in range(len(rules), old_n):
            table.set(i, abi.Rule())
        if len(rules) >= old_n:
            cfg = self.read_config()
            cfg.n_rules = len(rules)
            self.maps["config"].set(0, cfg)

    @staticmethod
    def _rule(spec: RuleSpec) -> abi.Rule:
        fam = spec.dst.version
        r = abi.Rule()
        r.expires = spec.expires_ns
        r.dst[:] = words(fam, int(spec.dst.network_address))
        r.dst_mask[:] = mask_words(fam, spec.dst.prefixlen)
        r.family = fam
        r.dst_len = spec.dst.prefixlen
        r.proto = spec.proto
        r.action = spec.action
        r.tcp_flags_mask = spec.tcp_flags_mask
        r.tcp_flags_value = spec.tcp_flags_value
        r.origin = spec.origin
        r.flags = abi.RULE_MONITOR if spec.monitor else 0
        r.sport_lo, r.sport_hi = spec.sport
        r.dport_lo, r.dport_hi = spec.dport
        r.id = spec.rule_id
        r.group = spec.group
        r.class_match = 0 if spec.traffic_class is None else int(spec.traffic_class) + 1
        if spec.action in (abi.RuleAction.RATE_LIMIT, abi.RuleAction.SOURCE_LIMIT):
            r.rate = make_rate(spec.pps, spec.bps, spec.burst)
        return r

    def read_rules(self) -> list[abi.Rule]:
        n = int(self.read_config().n_rules)
        return [self.maps["rules"].get(i) for i in range(n)]  # type: ignore[misc]

    # --- counters ---------------------------------------------------------------

    def read_stats(self) -> NDArray[np.uint64]:
        """Verdict counters summed over CPUs: array [slot, reason, class, mon, (packets, bytes)]."""
        t = self.maps["stats"]
        _keys, values, n = t.read_raw()
        ncpu = t.ncpus
        arr = np.frombuffer(values, dtype=np.uint64).reshape(n, ncpu, 2).sum(axis=1, dtype=np.uint64)
        out: NDArray[np.uint64] = arr.reshape(abi.IF_SLOTS, abi.REASON_MAX, abi.CLASS_MAX, 2, 2)
        return out

    def read_group_stats(self) -> NDArray[np.uint64]:
        """Per (group, class) counters summed over CPUs: [group, class, field] with
        fields packets, bytes, dropped_packets, dropped_bytes, new_sources."""
        t = self.maps["group_stats"]
        _keys, values, n = t.read_raw()
        nf = ct.sizeof(abi.GroupCounter) // 8
        arr = np.frombuffer(values, dtype=np.uint64).reshape(n, t.ncpus, nf).sum(axis=1, dtype=np.uint64)
        out: NDArray[np.uint64] = arr.reshape(n // abi.LIMIT_CLASSES, abi.LIMIT_CLASSES, nf)
        return out

    def read_dst_stats(self) -> dict[tuple[int, int], abi.DstCounter]:
        """Per protected destination: (family, address int) -> counters (summed)."""
        out: dict[tuple[int, int], abi.DstCounter] = {}
        for k, v in self.maps["dst_stats"].items():
            fam = int(k.family)
            out[(fam, from_words(fam, k.addr))] = v
        return out

    def read_dst_counter(self, family: int, addr: int) -> abi.DstCounter | None:
        """One protected destination's counters (summed over CPUs), or None."""
        k = abi.DstKey(family=family)
        k.addr[:] = words(family, addr)
        return self.maps["dst_stats"].get(k)

    def read_watch_stats(self) -> NDArray[np.uint64]:
        """Verdicts of watched sources summed over CPUs: array [watch set, reason, monitor, (packets, bytes)]."""
        t = self.maps["watch_stats"]
        _keys, values, n = t.read_raw()
        arr = np.frombuffer(values, dtype=np.uint64).reshape(n, t.ncpus, 2).sum(axis=1, dtype=np.uint64)
        out: NDArray[np.uint64] = arr.reshape(abi.MAX_WATCH, abi.REASON_MAX, 2, 2)
        return out

    def read_rule_stats(self) -> list[tuple[int, int]]:
        t = self.maps["rule_stats"]
        _keys, values, n = t.read_raw()
        arr = np.frombuffer(values, dtype=np.uint64).reshape(n, t.ncpus, 2).sum(axis=1, dtype=np.uint64)
        return [(int(p), int(b)) for p, b in arr.tolist()]

    def count_entries(self, name: str) -> int:
        """Entries in a hash map (for fill ratios)."""
        _k, _v, n = self.maps[name].read_raw()
        return n


__all__ = ["MapPort"]
