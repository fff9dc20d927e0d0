"""`floodguard bench prefixes`: which IPv4 prefix structure answers fastest.

DESIGN.md: a plain LPM trie costs hundreds of ns per lookup at a million
entries on cold caches, and one hash per prefix length slows down with
every length in use; measure with varying addresses and keep the fastest at
the sizes a policy allows. The candidates are bench-only programs in
bpf/bench/ that do nothing but rewrite the source (bench.h), parse the
packet (parse.h) and look the source up:

  lpm_trie     (a) the kernel's LPM trie
  hash_by_len  (b) a hash per prefix length in use, probed longest first
  bloom_hash   (c) (b) with a BPF bloom-filter pre-check per length
  dir4_host4   (d) floodguard's structure: a /24 array slot, then a host
               hash for /24s holding longer prefixes, written by the
               agent's AddressTable

plus `none`, the same work without a lookup, so that a candidate's number
minus the baseline is what its lookup costs.

The prefix set of each size has a realistic mix of lengths — mostly /24
and /32, some /16-/22, a few /8-/12 — and is built around the addresses the
program will see: bench.h visits base + i * step for i below a power of two
(the probes), and half of the probes are covered by a prefix, half are not
(the other prefixes sit in the gaps between probes). Each candidate counts
its hits; the bench checks the count against the set, so a structure that
answers wrongly is reported as wrong rather than fast.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import dataclasses
import struct
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from agent.contract import abi
from agent.contract.capacity import Capacity
from agent.contract.keys import PrefixKey, Record
from agent.datapath import bpfsys as sysbpf
from agent.datapath import loader
from agent.datapath.addrtable import AddressTable
from agent.datapath.errors import BpfSyscallError, BuildError
from agent.datapath.loader import BuildOptions
from agent.datapath.maps import Maps

from . import _util
from ._util import Timing

SIZES = (1_000, 100_000, 1_000_000)
MIN_PROBES = 1 << 10
U32 = 1 << 32


# --- the prefix sets -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PrefixSet:
    """A prefix set and the addresses the program will look up.

    Probe i is base + i * step (host order), for i < probes; bench.h visits
    them as (n * MULT) & (probes - 1). `covered[i]` says whether probe i is
    inside some prefix.
    """

    size: int
    addrs: np.ndarray[Any, Any]     # uint32, host order, masked to their length
    lens: np.ndarray[Any, Any]      # uint8
    base: int
    step: int
    probes: int
    covered: np.ndarray[Any, Any]   # bool, per probe

    @property
    def mask(self) -> int:
        return self.probes - 1

    def flags(self) -> dict[str, int]:
        return {"BASE": self.base, "MASK": self.mask, "STEP": self.step}

    def lengths_in_use(self) -> list[int]:
        return sorted({int(x) for x in np.unique(self.lens)}, reverse=True)

    def expected_hits(self, packets: int) -> int:
        """Hits over packets 0 .. packets-1, as bench.h orders the probes."""
        whole, rest = divmod(packets, self.probes)
        n = np.arange(rest, dtype=np.uint64)
        idx = ((n * np.uint64(_util.BENCH_MULT)) & np.uint64(0xFFFFFFFF)) & np.uint64(self.mask)
        return whole * int(self.covered.sum()) + int(self.covered[idx.astype(np.int64)].sum())

    def mix(self) -> dict[str, int]:
        lens = self.lens
        return {
            "/8-/12": int(((lens >= 8) & (lens <= 12)).sum()),
            "/16-/22": int(((lens >= 16) & (lens <= 22)).sum()),
            "/24": int((lens == 24).sum()),
            "/32": int((lens == 32).sum()),
        }


def _netmask(length: int) -> int:
    return (U32 - 1) ^ ((1 << (32 - length)) - 1) if length else 0


def _coverage(addrs: np.ndarray[Any, Any], lens: np.ndarray[Any, Any],
              probes: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Which probes some prefix covers: one membership test per length."""
    covered = np.zeros(len(probes), dtype=bool)
    for length in np.unique(lens).tolist():
        nets = addrs[lens == length]
        covered |= np.isin(probes & np.uint32(_netmask(length)), nets)
    return covered


def _holds_probe(
    starts: np.ndarray[Any, Any], block: np.ndarray[Any, Any], base: int, step: int, probes: int
) -> np.ndarray[Any, Any]:
    """Whether [start, start + block) contains a probe, for each start."""
    off = (starts.astype(np.int64) - base) % U32
    first = -(-off // step)                      # the first probe at or after start
    return (first < probes) & (first * step - off < block)


def make_set(size: int, seed: int = 1) -> PrefixSet:
    """`size` distinct prefixes, half the probes covered (see the module doc)."""
    rng = np.random.default_rng(seed)
    probes = max(MIN_PROBES, 1 << ((2 * size).bit_length() - 1))   # a power of two <= 2 * size
    step = U32 // probes - 1                                         # odd, and no wrap-around
    base = int(rng.integers(0, step))
    probe_addrs = (base + np.arange(probes, dtype=np.int64) * step).astype(np.uint32)

    n_short = max(1, min(16, size // 50_000))
    n_mid = round(0.02 * size)
    n_24 = round(0.55 * size)
    n_32 = size - n_short - n_mid - n_24
    lens = np.concatenate([
        rng.integers(8, 13, n_short), rng.integers(16, 23, n_mid),
        np.full(n_24, 24), np.full(n_32, 32),
    ]).astype(np.uint8)
    # A "small" prefix holds at most one probe (its block is under a quarter of
    # the step): it can be put on one chosen probe, or between probes.
    small = (np.left_shift(1, 32 - lens.astype(np.int64)) * 4) <= step
    big_lens = lens[~small]
    small_lens = rng.permutation(lens[small])

    seen: set[tuple[int, int]] = set()
    out_addrs: list[np.ndarray[Any, Any]] = []
    out_lens: list[np.ndarray[Any, Any]] = []

    def keep(addrs: np.ndarray[Any, Any], ls: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Mask, drop duplicates (of each other and of what is kept), keep."""
        masks = np.array([_netmask(int(x)) for x in range(33)], dtype=np.uint32)[ls]
        addrs = addrs.astype(np.uint32) & masks
        fresh = np.ones(len(addrs), dtype=bool)
        for i, key in enumerate(zip(ls.tolist(), addrs.tolist(), strict=True)):
            if key in seen:
                fresh[i] = False
            else:
                seen.add(key)
        out_addrs.append(addrs[fresh])
        out_lens.append(ls[fresh])
        return np.asarray(~fresh)

    # 1. Long blocks anywhere: they cover whatever probes they cover.
    todo = big_lens
    while len(todo):
        todo = todo[keep(rng.integers(0, U32, len(todo)), todo)]
    covered = _coverage(np.concatenate(out_addrs), np.concatenate(out_lens), probe_addrs) if out_addrs \
        else np.zeros(probes, dtype=bool)
    # 2. Small blocks on uncovered probes until half the probes are covered.
    need = max(0, probes // 2 - int(covered.sum()))
    free = np.flatnonzero(~covered)
    anchors = rng.choice(free, size=min(need, len(free), len(small_lens)), replace=False)
    keep(probe_addrs[anchors], small_lens[: len(anchors)])
    # 3. The rest between probes: listed, never looked up.
    todo = small_lens[len(anchors):]
    while len(todo):
        starts = rng.integers(0, U32, len(todo))
        blocks = np.left_shift(1, 32 - todo.astype(np.int64))
        masked = starts & ~(blocks - 1)
        hit = _holds_probe(masked, blocks, base, step, probes)
        dup = keep(masked[~hit], todo[~hit])
        todo = np.concatenate([todo[hit], todo[~hit][dup]])

    addrs = np.concatenate(out_addrs)
    lens_all = np.concatenate(out_lens)
    return PrefixSet(size, addrs, lens_all, base, step, probes, _coverage(addrs, lens_all, probe_addrs))


# --- candidates --------------------------------------------------------------------------------


def _net_u32(host: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Host-order addresses as the program's u32 in network order (raw bytes big-endian)."""
    return host.astype(">u4")


def _update(fd: int, keys: bytes, values: bytes, n: int, key_size: int, value_size: int) -> None:
    """Batch update, one by one where the map type has no batch update."""
    try:
        sysbpf.update_batch(fd, keys, values, n)
        return
    except BpfSyscallError as e:
        if e.errno not in (22, 95, 524):  # EINVAL, EOPNOTSUPP, ENOTSUPP
            raise
    k = (ct.c_char * key_size)()
    v = (ct.c_char * value_size)()
    for i in range(n):
        ct.memmove(k, keys[i * key_size:(i + 1) * key_size], key_size)
        ct.memmove(v, values[i * value_size:(i + 1) * value_size], value_size)
        sysbpf.map_update(fd, k, v)


def _fill_lpm(prog: loader.Program, ps: PrefixSet) -> None:
    n = len(ps.addrs)
    keys = np.zeros(n, dtype=[("len", "<u4"), ("addr", ">u4")])
    keys["len"], keys["addr"] = ps.lens, ps.addrs
    _update(prog.map_fd("lpm4"), keys.tobytes(), np.ones(n, dtype="<u4").tobytes(), n, 8, 4)


def _fill_hash(prog: loader.Program, ps: PrefixSet) -> None:
    n = len(ps.addrs)
    keys = np.zeros(n, dtype=[("len", "<u4"), ("addr", ">u4")])
    keys["len"], keys["addr"] = ps.lens, ps.addrs
    _update(prog.map_fd("by_len"), keys.tobytes(), np.ones(n, dtype="<u4").tobytes(), n, 8, 4)
    lens = ps.lengths_in_use()
    pad = [0] * (33 - len(lens))
    masks = [_netmask(x) for x in lens]
    # struct lengths: n, len[33], mask[33] (masks in network order)
    blob = struct.pack("<I33I", len(lens), *lens, *pad) + struct.pack(">33I", *masks, *pad)
    key = ct.c_uint32(0)
    val = (ct.c_char * len(blob)).from_buffer_copy(blob)
    sysbpf.map_update(prog.map_fd("lengths"), key, val)


def _fill_dir4(prog: loader.Program, ps: PrefixSet) -> None:
    """Through the agent's own writer, as a policy load does."""
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    rec: Record = (0, now, abi.SRC_BAN, 0)
    bans: dict[PrefixKey, Record] = {
        (4, a, p): rec for a, p in zip(ps.addrs.tolist(), ps.lens.tolist(), strict=True)
    }
    maps = Maps.from_program(prog)
    try:
        table = AddressTable(maps)
        try:
            table.sync(now)
            table.replace_origin(abi.Origin.POLICY, bans, {})
            table.commit(now)
        finally:
            table.close()
    finally:
        maps.close()


@dataclasses.dataclass(frozen=True)
class Candidate:
    name: str
    what: str
    source: str
    function: str
    fill: Callable[[loader.Program, PrefixSet], None] | None


CANDIDATES = (
    Candidate("lpm_trie", "(a) kernel LPM trie", "bench/prefix_lpm.bpf.c", "xdp_lpm", _fill_lpm),
    Candidate("hash_by_len", "(b) hash per length in use, longest first", "bench/prefix_hash.bpf.c",
              "xdp_hash", _fill_hash),
    Candidate("bloom_hash", "(c) (b) + bloom-filter pre-check", "bench/prefix_bloom.bpf.c", "xdp_bloom",
              _fill_hash),
    Candidate("dir4_host4", "(d) floodguard: /24 array + host hash (AddressTable)", "bench/prefix_dir4.bpf.c",
              "xdp_dir4", _fill_dir4),
)
BASELINE = Candidate("none", "rewrite + parse, no lookup", "bench/prefix_none.bpf.c", "xdp_none", None)


def _hits(prog: loader.Program) -> int:
    ncpu = sysbpf.possible_cpus()
    vals = (ct.c_uint64 * ncpu)()
    sysbpf.map_lookup(prog.map_fd("hits"), ct.c_uint32(0), vals)
    return int(sum(vals))


def _capacity(ps: PrefixSet) -> Capacity:
    n = len(ps.addrs) + 16
    hosts = int((ps.lens > abi.DIR4_BITS).sum()) + 16
    return Capacity(prefixes=n - 1, hosts4=max(hosts, 1024), prefixes6=1024, groups=16, sources=1024,
                    sources6=1024, destinations=1024, verified=1024, sample_pages=16)


def _frame() -> bytes:
    return _util.frame("192.0.2.1", "203.0.113.10")


Progress = Callable[[str], None]


def measure(
    cand: Candidate, ps: PrefixSet, root: str, repeat: int, runs: int, say: Progress
) -> dict[str, Any]:
    """Build, fill, time and check one candidate on one prefix set."""
    pin_dir = f"{root}/{cand.name}-{ps.size}"
    opts = BuildOptions(pin_dir=pin_dir, capacity=_capacity(ps), bench=ps.flags(), source=cand.source,
                        function=cand.function)
    try:
        try:
            prog = loader.build(opts)
        except BuildError as e:
            if "unsupported map type" in str(e):
                line = next((x.strip() for x in str(e).splitlines() if "unsupported map type" in x), "")
                return {"skipped": f"the installed BCC cannot declare this map ({line.split('error: ')[-1]})"}
            raise
        try:
            fill_s = 0.0
            if cand.fill is not None:
                say(f"{cand.name} {ps.size:,}: filling")
                start = time.monotonic()
                cand.fill(prog, ps)
                fill_s = time.monotonic() - start
            say(f"{cand.name} {ps.size:,}: measuring")
            t: Timing = _util.time_program(prog.fd, _frame(), repeat, runs)
            out: dict[str, Any] = {"ns_per_packet": t.ns_per_packet, "runs_ns": list(t.samples),
                                   "fill_seconds": round(fill_s, 2)}
            if cand.fill is not None:
                got, want = _hits(prog), ps.expected_hits(t.packets)
                out["hits"], out["expected_hits"] = got, want
                out["answers"] = "correct" if got == want else "WRONG"
            return out
        finally:
            prog.close()
    finally:
        loader.remove_pins(pin_dir)


def run(
    sizes: Sequence[int] = SIZES,
    repeat: int = 1_000_000,
    runs: int = 5,
    *,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Every candidate at every size; the result is what `--json` prints."""
    say = progress or (lambda _msg: None)
    started = time.monotonic()
    result: dict[str, Any] = {"sizes": {}, "candidates": {c.name: c.what for c in (*CANDIDATES, BASELINE)}}
    with _util.pin_root("floodguard-bench-prefixes") as root, _util.one_cpu() as cpu:
        for size in sizes:
            say(f"prefix set of {size:,}")
            ps = make_set(size)
            rows: dict[str, Any] = {}
            for cand in (BASELINE, *CANDIDATES):
                rows[cand.name] = measure(cand, ps, root, repeat, runs, say)
            base = rows[BASELINE.name]["ns_per_packet"]
            for name, row in rows.items():
                if name != BASELINE.name and "ns_per_packet" in row:
                    row["lookup_ns"] = round(row["ns_per_packet"] - base, 1)
            result["sizes"][str(size)] = {
                "prefixes": len(ps.addrs),
                "mix": ps.mix(),
                "lengths_in_use": len(ps.lengths_in_use()),
                "distinct_sources": ps.probes,
                "matching_fraction": round(float(ps.covered.mean()), 4),
                "candidates": rows,
            }
    result["winner"] = _winner(result, max(sizes))
    result["config"] = {"repeat": repeat, "runs": runs, "cpu": cpu, "seconds": round(time.monotonic() - started, 1)}
    return result


def _winner(result: dict[str, Any], size: int) -> dict[str, Any] | None:
    rows = result["sizes"][str(size)]["candidates"]
    ok = sorted(
        (row["ns_per_packet"], name) for name, row in rows.items()
        if name != BASELINE.name and row.get("answers") == "correct"
    )
    if not ok:
        return None
    (best_ns, best), runner_up = ok[0], ok[1] if len(ok) > 1 else None
    out: dict[str, Any] = {"size": size, "name": best, "ns_per_packet": best_ns}
    if runner_up is not None:
        out["runner_up"] = runner_up[1]
        out["margin_ns"] = round(runner_up[0] - best_ns, 1)
        out["margin_ratio"] = round(runner_up[0] / best_ns, 2)
    return out


# --- output --------------------------------------------------------------------------------------


def render(result: dict[str, Any]) -> str:
    cfg = result["config"]
    names = list(result["candidates"])
    lines = [
        (f"floodguard bench prefixes — IPv4 source lookup, ns per packet via BPF_PROG_TEST_RUN, repeat "
        f"{cfg['repeat']:,}, median of {cfg['runs']} runs"),
        "the source changes every packet; half the sources are inside a prefix; lookup = ns - none",
        "",
    ]
    for name in names:
        lines.append(f"  {name:<12} {result['candidates'][name]}")
    lines.append("")
    header = f"{'size':>10} {'sources':>9} {'match':>6}  " + "  ".join(f"{n:>17}" for n in names)
    lines += [header, f"{'':>10} {'':>9} {'':>6}  " + "  ".join(f"{'ns  (lookup)':>17}" for _ in names)]
    for size, s in result["sizes"].items():
        cells = []
        for n in names:
            row = s["candidates"][n]
            if "skipped" in row:
                cells.append(f"{'skipped':>17}")
                continue
            look = f"({row['lookup_ns']:.0f})" if "lookup_ns" in row else ""
            bad = "!" if row.get("answers") == "WRONG" else ""
            cells.append(f"{row['ns_per_packet']:>8.1f}{bad} {look:>7}")
        head = f"{int(size):>10,} {s['distinct_sources']:>9,} {s['matching_fraction']:>6.0%}  "
        lines.append(head + "  ".join(cells))
    lines.append("")
    for size, s in result["sizes"].items():
        mix = ", ".join(f"{k} {v:,}" for k, v in s["mix"].items())
        fills = ", ".join(f"{n} {r['fill_seconds']:.1f} s" for n, r in s["candidates"].items()
                          if n != BASELINE.name and "fill_seconds" in r)
        lines.append(f"{int(size):,}: {mix}; {s['lengths_in_use']} lengths in use; filled in: {fills}")
    skipped = {n: r["skipped"] for s in result["sizes"].values() for n, r in s["candidates"].items() if "skipped" in r}
    for n, why in skipped.items():
        lines.append(f"{n} skipped: {why}")
    wrong = [f"{n} at {size}" for size, s in result["sizes"].items() for n, r in s["candidates"].items()
             if r.get("answers") == "WRONG"]
    lines.append("answers: " + ("WRONG for " + ", ".join(wrong) if wrong else
                                "every candidate counted exactly the hits the prefix set implies"))
    w = result["winner"]
    if w is not None:
        margin = ""
        if "runner_up" in w:
            margin = (f", ahead of {w['runner_up']} by {w['margin_ns']:.1f} ns/packet "
                      f"({w['margin_ratio']:.2f}x)")
        lines.append(f"winner at {w['size']:,}: {w['name']} at {w['ns_per_packet']:.1f} ns/packet{margin}")
    lines.append(f"took {cfg['seconds']:.0f} s (pinned to CPU {cfg['cpu']})")
    return "\n".join(lines)


EPILOG = """\
examples:
  floodguard bench prefixes                      1,000 / 100,000 / 1,000,000 prefixes
  floodguard bench prefixes --json               the same as JSON (progress on stderr)
  floodguard bench prefixes --sizes 1000,50000 --repeat 200000 --runs 3

Needs root, bpffs and kernel headers (make setup). Builds under
/sys/fs/bpf/floodguard-bench-prefixes-<pid>/ and removes it when it ends.
"""


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="floodguard bench prefixes",
        description="ns per packet of each candidate prefix structure (LPM trie, hash per length, "
        "bloom pre-check, floodguard's /24 array + host hash) at several sizes, sources varying.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--sizes", default=",".join(str(s) for s in SIZES),
                   help="comma-separated prefix counts (default 1000,100000,1000000)")
    p.add_argument("--repeat", type=int, default=1_000_000, help="packets per run (default 1,000,000)")
    p.add_argument("--runs", type=int, default=5, help="runs per measurement; the median is reported (default 5)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    try:
        sizes = [int(x.replace("_", "")) for x in args.sizes.split(",") if x]
    except ValueError:
        p.error(f"--sizes: {args.sizes!r} is not a list of numbers")
    if not sizes or min(sizes) < 16 or args.repeat < 2 or args.runs < 1:
        p.error("--sizes must be at least 16 each, --repeat at least 2, --runs at least 1")

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"  {msg}", file=sys.stderr, flush=True)

    result = run(sizes, args.repeat, args.runs, progress=say)
    _util.print_result(result, args.json, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
