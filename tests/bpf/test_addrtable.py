"""The address table against the kernel: for random sets of nested source
and destination prefixes, the kernel structures (dir4, host4, lpm6,
src_entries) give the same answer as a brute-force longest-prefix match,
through incremental edits, origin replacement and a rebuild from the pins; and
expiry removes exactly what a scan of every record would, looking only at what is due.
"""

from __future__ import annotations

import ipaddress
import os
import random
from typing import Any

import pytest
from harness import Harness, now_ns

from agent.contract import abi
from agent.contract.keys import PrefixKey
from agent.datapath import _expiries, addrtable
from agent.datapath.addrtable import AddressTable, merge

ORIGINS = list(abi.Origin)


def rand_prefix(rng: random.Random, fam: int) -> PrefixKey:
    if fam == 4:
        # Cluster inside 10.0.0.0/12 so that prefixes nest and collide.
        plen = rng.choice([8, 12, 16, 20, 22, 24, 24, 25, 28, 30, 31, 32, 32, 32])
        addr = (10 << 24) | rng.randrange(1 << 20)
        bits = 32
    else:
        plen = rng.choice([32, 40, 48, 56, 64, 64, 96, 128])
        addr = (0x20010DB8 << 96) | (rng.randrange(1 << 16) << 80) | rng.randrange(1 << 64)
        bits = 128
    if plen < 12 and fam == 4:
        plen = 12 if rng.random() < 0.5 else plen
    addr = (addr >> (bits - plen)) << (bits - plen) if plen else 0
    return (fam, addr, plen)


def covers(p: PrefixKey, fam: int, a: int) -> bool:
    bits = 32 if fam == 4 else 128
    return p[0] == fam and (p[2] == 0 or (a >> (bits - p[2])) == (p[1] >> (bits - p[2])))


def brute(t: AddressTable, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[PrefixKey | None, int]:
    fam, a = addr.version, int(addr)
    src = [p for p in t.src if covers(p, fam, a)]
    dst = [p for p in t.dst if covers(p, fam, a)]
    best_src = max(src, key=lambda p: p[2]) if src else None
    best_dst = max(dst, key=lambda p: p[2]) if dst else None
    return best_src, (t.dst[best_dst] if best_dst else 0)


def probe_addresses(rng: random.Random, t: AddressTable, n: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    keys = list(t.src) + list(t.dst)
    out: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for _ in range(n):
        fam, addr, plen = rng.choice(keys)
        bits = 32 if fam == 4 else 128
        a = addr | rng.randrange(1 << (bits - plen)) if plen < bits else addr
        out.append(ipaddress.ip_address(a) if fam == 4 else ipaddress.IPv6Address(a))
    # and some near misses
    for _ in range(n // 4):
        out.append(ipaddress.IPv4Address((10 << 24) | rng.randrange(1 << 21)))
    return out


def check(t: AddressTable, rng: random.Random, now: int) -> int:
    checked = 0
    for addr in probe_addresses(rng, t, 400):
        want_src, want_group = brute(t, addr)
        got_idx, got_group, got_flags = t.kernel_answer(addr)
        assert got_group == want_group, f"{addr}: group {got_group}, want {want_group}"
        if want_src is None:
            assert (got_idx, got_flags) == (0, 0), f"{addr}: entry {got_idx}, want none"
            continue
        assert got_idx == t.index_of(want_src), f"{addr}: entry {got_idx}, want that of {want_src}"
        e = t.entry(got_idx)
        assert (e.family, e.prefix_len) == (want_src[0], want_src[2])
        # effective state = merge of the records of every covering prefix
        fam, a = addr.version, int(addr)
        recs = [r for p, ent in t.src.items() if covers(p, fam, a) and p[2] <= want_src[2] for r in ent.records()]
        st = merge(recs, now)
        assert (e.flags, e.ban_expires, e.allow_expires) == (st.flags, st.ban_expires, st.allow_expires), addr
        # A permanent enforced ban (and nothing else) is answered by the address lookup itself.
        permanent = st.flags == abi.SRC_BAN and st.ban_expires == 0
        assert bool(got_flags & abi.ADDR_BANNED) == permanent, addr
        checked += 1
    return checked


def random_record(rng: random.Random, now: int) -> tuple[int, tuple[int, int, int, int]]:
    kind = rng.choice([abi.SRC_BAN, abi.SRC_BAN, abi.SRC_ALLOW])
    monitor = rng.random() < 0.2
    flag = {abi.SRC_BAN: abi.SRC_BAN_MONITOR, abi.SRC_ALLOW: abi.SRC_ALLOW_MONITOR}[kind] if monitor else kind
    expires = rng.choice([0, 0, now + 3600 * 10**9, now + rng.randrange(1, 10**12)])
    return kind, (expires, now, flag, 0)


def test_random_nested_prefixes_match_brute_force(h: Harness) -> None:
    seed = int(os.environ.get("FLOODGUARD_FUZZ_SEED", random.randrange(1 << 32)))
    print(f"seed {seed}")
    rng = random.Random(seed)
    t = h.port.addresses
    now = now_ns()
    for _ in range(300):
        fam = 4 if rng.random() < 0.75 else 6
        kind, rec = random_record(rng, now)
        t.set_record(rand_prefix(rng, fam), kind, rng.choice(ORIGINS), rec)
    dst = {rand_prefix(rng, 4 if rng.random() < 0.75 else 6): rng.randrange(1, 15) for _ in range(60)}
    t.set_destinations(dst)
    t.commit(now)
    assert check(t, rng, now) > 100

    # Incremental edits: remove and add records and destinations, small batches.
    for _round in range(8):
        for _ in range(15):
            key = rng.choice(list(t.src))
            ent = t.src[key]
            o = rng.choice(ORIGINS)
            t.set_record(key, abi.SRC_BAN if ent.ban[o] else abi.SRC_ALLOW, o, None)
            fam = 4 if rng.random() < 0.75 else 6
            kind, rec = random_record(rng, now)
            t.set_record(rand_prefix(rng, fam), kind, rng.choice(ORIGINS), rec)
        d = dict(t.dst)
        for k in rng.sample(list(d), 3):
            del d[k]
        for _ in range(3):
            d[rand_prefix(rng, 4)] = rng.randrange(1, 15)
        t.set_destinations(d)
        t.commit(now)
        check(t, rng, now)

    # One origin replaced wholesale leaves the others alone.
    operator_before = {(k, kind): r for k, kind, _o, r in t.records(abi.Origin.OPERATOR)}
    t.replace_origin(abi.Origin.POLICY, {rand_prefix(rng, 4): (0, 0, abi.SRC_BAN, 0) for _ in range(20)}, {})
    t.commit(now)
    assert {(k, kind): r for k, kind, _o, r in t.records(abi.Origin.OPERATOR)} == operator_before
    check(t, rng, now)

    # A restarted daemon rebuilds the model from the kernel and rewrites nothing.
    before = {k: (e.idx, e.records()) for k, e in t.src.items()}
    dsts = dict(t.dst)
    fresh = AddressTable(h.maps)
    try:
        assert fresh.load_from_kernel() == len(before)
        assert {k: (e.idx, e.records()) for k, e in fresh.src.items()} == before
        fresh.set_destinations(dsts)
        fresh.sync(now)
        check(fresh, rng, now)
    finally:
        fresh.close()


def test_removing_everything_clears_the_kernel(h: Harness) -> None:
    t = h.port.addresses
    now = now_ns()
    keys = [(4, (10 << 24) | (i << 8), 24) for i in range(50)] + [(4, (11 << 24) | i, 32) for i in range(50)]
    for k in keys:
        t.set_record(k, abi.SRC_BAN, abi.Origin.OPERATOR, (0, now, abi.SRC_BAN, 0))
    t.set_destinations({(4, 12 << 24, 8): 3, (6, 0x20010DB8 << 96, 32): 2})
    t.commit(now)
    assert h.port.count_entries("host4") == 50
    assert t.kernel_answer(ipaddress.ip_address("12.1.2.3")) == (0, 3, 0)
    t.replace_origin(abi.Origin.OPERATOR, {}, {})
    t.set_destinations({})
    t.commit(now)
    assert t.src == {} and h.port.count_entries("host4") == 0 and h.port.count_entries("lpm6") == 0
    assert not t._dir.any()
    assert not bytes(h.maps["src_entries"].read_raw()[1]).strip(b"\0")


def scan_expired(t: AddressTable, now: int) -> set[tuple[PrefixKey, int, int, tuple[int, int, int, int]]]:
    """What expire(now) must remove: every record whose expiry has passed, found by looking at all."""
    return {(k, kind, o, r) for k, kind, o, r in t.records() if r[0] and r[0] <= now}


def test_expiry_removes_exactly_what_a_scan_of_every_record_finds(h: Harness) -> None:
    seed = int(os.environ.get("FLOODGUARD_FUZZ_SEED", random.randrange(1 << 32)))
    print(f"seed {seed}")
    rng = random.Random(seed)
    t = h.port.addresses
    now = now_ns()
    span = 100 * 10**9

    def record(kind: int) -> tuple[int, tuple[int, int, int, int]]:
        monitor = {abi.SRC_BAN: abi.SRC_BAN_MONITOR, abi.SRC_ALLOW: abi.SRC_ALLOW_MONITOR}[kind]
        flag = kind if rng.random() < 0.8 else monitor
        # Permanent, or due at some point of the run (several share an expiry).
        expires = 0 if rng.random() < 0.3 else now + rng.randrange(0, span, 10**9 // 4)
        return flag, (expires, now, flag, 0)

    def edit(n: int) -> None:
        for _ in range(n):
            kind = rng.choice([abi.SRC_BAN, abi.SRC_BAN, abi.SRC_ALLOW])
            flag, rec = record(kind)
            if t.src and rng.random() < 0.5:
                key = rng.choice(list(t.src))  # re-set (a refreshed ban) or remove an existing one
                t.set_record(key, flag, rng.choice(ORIGINS), None if rng.random() < 0.3 else rec)
            else:
                t.set_record(rand_prefix(rng, 4 if rng.random() < 0.75 else 6), flag, rng.choice(ORIGINS), rec)

    edit(300)
    t.replace_origin(abi.Origin.POLICY, {rand_prefix(rng, 4): record(abi.SRC_BAN)[1] for _ in range(40)},
                     {rand_prefix(rng, 6): record(abi.SRC_ALLOW)[1] for _ in range(10)})
    t.commit(now)
    removed = 0
    for step in range(1, 11):
        at = now + step * span // 10
        want = scan_expired(t, at)
        got = t.expire(at)
        assert len(got) == len(set(got)) and set(got) == want, f"at step {step}"
        assert [g[3][0] for g in got] == sorted(g[3][0] for g in got), "soonest first"
        assert scan_expired(t, at) == set()
        removed += len(got)
        t.commit(at)
        check(t, rng, at)
        edit(20)
        if step == 5:
            # A restarted daemon finds the same expiries in the kernel.
            t.commit(at)
            fresh = AddressTable(h.maps)
            try:
                fresh.load_from_kernel()
                later = at + span
                assert set(fresh.expire(later)) == scan_expired(t, later)
            finally:
                fresh.close()
    assert removed > 50


def test_expire_with_10k_records_none_due_looks_at_none(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    t = h.port.addresses
    now = now_ns()
    for i in range(10_000):  # the model only: src_entries of the test program is smaller
        rec = (now + 3600 * 10**9 + i, now, abi.SRC_BAN, 0)
        t.set_record((4, (11 << 24) | i, 32), abi.SRC_BAN, abi.Origin.AUTO, rec)
    calls = {"heappop": 0, "records": 0, "get_record": 0}

    def counted(name: str, real: Any) -> Any:
        def call(*a: Any, **kw: Any) -> Any:
            calls[name] += 1
            return real(*a, **kw)
        return call

    monkeypatch.setattr(_expiries, "heappop", counted("heappop", _expiries.heappop))
    monkeypatch.setattr(t, "records", counted("records", t.records))
    monkeypatch.setattr(t, "get_record", counted("get_record", t.get_record))
    for tick in range(10):
        assert t.expire(now + tick * 10**8) == []
    assert calls == {"heappop": 0, "records": 0, "get_record": 0}
    gone = t.expire(now + 3600 * 10**9 + 9)
    assert [g[0] for g in gone] == [(4, (11 << 24) | i, 32) for i in range(10)]
    assert calls["heappop"] == 10 and calls["records"] == 0


def test_ban_counts_walk_the_records_only_after_a_change(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    t = h.port.addresses
    now = now_ns()
    for i in range(1000):
        t.set_record((4, (11 << 24) | i, 32), abi.SRC_BAN, abi.Origin.AUTO, (now + 10**12, now, abi.SRC_BAN, 0))
    t.set_record((4, 12 << 24, 8), abi.SRC_BAN, abi.Origin.OPERATOR, (0, now, abi.SRC_BAN, 0))
    walks = {"n": 0}
    real = t._model.records

    def counted(*a: Any, **kw: Any) -> Any:
        walks["n"] += 1
        return real(*a, **kw)

    monkeypatch.setattr(t._model, "records", counted)
    assert t.ban_counts(now) == {"policy": 0, "operator": 1, "auto": 1000}
    for _ in range(100):  # scrapes between two changes
        assert t.ban_counts(now)["auto"] == 1000
    assert walks["n"] == 1
    t.set_record((4, (11 << 24) | 5, 32), abi.SRC_BAN, abi.Origin.AUTO, None)  # an unban
    assert t.ban_counts(now)["auto"] == 999 and walks["n"] == 2
    assert t.expire(now + 10**12 + 1)  # every auto ban expires
    assert t.ban_counts(now + 10**12 + 1) == {"policy": 0, "operator": 1, "auto": 0} and walks["n"] == 3


# --------------------------------------------------------------------------- failed commits


def _model(t: AddressTable) -> dict[PrefixKey, tuple[int, tuple[tuple[int, int, int, int], ...]]]:
    return {k: (e.idx, e.records()) for k, e in t.src.items()}


def test_a_record_the_kernel_cannot_hold_never_enters_the_model(h: Harness) -> None:
    # `floodguard ban 10.0.0.0/8 --ttl 1e11` used to overflow the u64 expiry: the ban stayed
    # in the model (listed, saved) without reaching the kernel, and every later commit failed.
    t = h.port.addresses
    now = now_ns()
    huge = (now + int(1e11) * 10**9, now, abi.SRC_BAN, 0)
    with pytest.raises((ValueError, OverflowError)):
        t.set_record((4, 10 << 24, 8), abi.SRC_BAN, abi.Origin.OPERATOR, huge)
        t.commit(now)
    assert t.get_record((4, 10 << 24, 8), abi.SRC_BAN, abi.Origin.OPERATOR) is None
    assert t.pending == 0
    # An automatic ban inside 10/8 still reaches the kernel.
    inside = (4, (10 << 24) | 7, 32)
    t.set_record(inside, abi.SRC_BAN, abi.Origin.AUTO, (0, now, abi.SRC_BAN, 0))
    t.commit(now)
    assert t.kernel_answer(ipaddress.ip_address("10.0.0.7"))[0] == t.index_of(inside) != 0
    check(t, random.Random(1), now)


def test_a_commit_refused_for_capacity_leaves_model_and_kernel_as_before(h: Harness) -> None:
    t = h.port.addresses
    now = now_ns()
    free = t.max_entries - 1
    for i in range(free):
        t.set_record((4, (10 << 24) | (i << 8), 24), abi.SRC_BAN, abi.Origin.AUTO, (0, now, abi.SRC_BAN, 0))
    t.commit(now)
    before = _model(t)
    extra = (4, 11 << 24, 24)
    removed = (4, 10 << 24, 24)
    t.set_record(removed, abi.SRC_BAN, abi.Origin.AUTO, None)  # freed, but only by this commit
    t.set_record(extra, abi.SRC_BAN, abi.Origin.OPERATOR, (0, now, abi.SRC_BAN, 0))
    t.set_record((4, 12 << 24, 24), abi.SRC_BAN, abi.Origin.OPERATOR, (0, now, abi.SRC_BAN, 0))
    with pytest.raises(addrtable.CapacityError):
        t.commit(now)
    assert _model(t) == before, "the refused edits are undone, the kept entries keep their slots"
    assert t.get_record(extra, abi.SRC_BAN, abi.Origin.OPERATOR) is None
    assert t.pending == 0
    check(t, random.Random(2), now)
    # The table goes on working: free one slot, then the ban fits.
    t.set_record(removed, abi.SRC_BAN, abi.Origin.AUTO, None)
    t.commit(now)
    t.set_record(extra, abi.SRC_BAN, abi.Origin.OPERATOR, (0, now, abi.SRC_BAN, 0))
    t.commit(now)
    assert t.kernel_answer(ipaddress.ip_address("11.0.0.1"))[0] == t.index_of(extra) != 0


def test_a_kernel_write_failing_mid_commit_is_undone_in_the_kernel_too(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.datapath import bpfsys

    t = h.port.addresses
    now = now_ns()
    kept = (4, (10 << 24) | (1 << 8), 24)
    t.set_record(kept, abi.SRC_BAN, abi.Origin.AUTO, (0, now, abi.SRC_BAN, 0))
    t.set_destinations({(4, 10 << 24, 16): 3})
    t.commit(now)
    before = _model(t)
    real = bpfsys.update_batch

    def fail(*_a: Any, **_kw: Any) -> None:
        raise OSError(12, "Cannot allocate memory")

    # The entries are written first, then host4 fails: the kernel holds half a commit.
    monkeypatch.setattr(bpfsys, "update_batch", fail)
    new = (4, (10 << 24) | (2 << 8) | 9, 32)
    t.set_record(new, abi.SRC_BAN, abi.Origin.OPERATOR, (0, now, abi.SRC_BAN, 0))
    t.set_record(kept, abi.SRC_BAN, abi.Origin.AUTO, None)
    t.set_destinations({(4, 10 << 24, 16): 4})
    with pytest.raises(OSError, match="Cannot allocate"):
        t.commit(now)
    monkeypatch.setattr(bpfsys, "update_batch", real)
    # The next commit (here: an empty one) finishes putting the kernel back.
    t.commit(now)
    assert _model(t) == before and t.dst == {(4, 10 << 24, 16): 3}
    assert t.kernel_answer(ipaddress.ip_address("10.0.2.9")) == (0, 3, 0)
    assert t.kernel_answer(ipaddress.ip_address("10.0.1.1"))[0] == t.index_of(kept) != 0
    assert h.port.count_entries("host4") == 0
    check(t, random.Random(3), now)
