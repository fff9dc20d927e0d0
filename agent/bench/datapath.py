"""`floodguard bench datapath`: nanoseconds per packet through the program.

Every scenario runs the program with BPF_PROG_TEST_RUN on one packet,
repeated a million times per run, and reports the median of the runs. A
bench build (-DFG_BENCH, bpf/bench.h) rewrites the source address of every
packet, so lookups see a million different sources rather than one cached
entry; the reference, a program that only drops (bpf/bench_drop.bpf.c), is
built with the same flags for each scenario, so every ratio compares
programs that pay for the same rewrite.

The tables are the product's: 1,048,576 banned /32s, 4,096 banned /16s,
an allowlisted /8, IPv6 bans and a protected group with per-source limits,
written once through AddressTable and MapPort (the agent's own path; the
time it takes is printed) and shared by every scenario's program through
its pins. The reason of each scenario is what the program's verdict
counters counted, not what the bench expected.

xdp-filter, the peer, runs from Debian's compiled objects (libxdp1), loaded
with libbpf; its reason is the XDP action its own stats map counted. A
small front program (bpf/bench/front.bpf.c) rewrites the source exactly as
the bench build does and tail-calls it, so it sees the same packets; front
+ tail call + XDP_DROP is measured too, to show what the front adds.

Two references are measured in the same run on the same packets: xdp-filter
(legit_pass against xdp_filter_pass, banned_32_of_1m against xdp_filter_drop)
and one_miss (bpf/bench/one_miss.bpf.c: one lookup with banned_32's varying
sources in a hash of as many entries, every key found): the floor for any
table that does not fit in the cache. Every row is printed as a ratio to
both; the ratio to XDP_DROP is kept for reference only, since it moves
fivefold between machines. rule_drop is a DNS reflection from 8,388,608
sources dropped by the last of 16 live mitigation rules, fragment the same
sources' non-first fragments dropped by the fragment rule before it.

With ``--cpus 0,1`` every measurement runs on each listed CPU at once (a
pinned thread each; the test-run syscall releases the GIL), so what the
programs share (LRU locks, buckets, counters) is contended; each row then
has its per-CPU numbers.

SYN authentication has a group of its own (192.0.2.0/24, challenged
always). syn_verified is a SYN from one of 65,536 sources pre-filled in the
verified4 LRU map: it passes to its per-source bucket. syn_challenge is a
SYN from a new spoofed source every packet (the verified map holds the same
65,536 others): SipHash cookie, bpf_xdp_adjust_tail and the rewrite into a
SYN-ACK, XDP_TX. Test-run repeats do NOT reset the packet (measured: after
the first repeat the program sees the SYN-ACK it made and passes it), so
that scenario runs behind bpf/bench/restore.bpf.c, a front that copies the
SYN back before tail-calling the program; what the front and its tail call
cost (the same front before XDP_DROP, minus XDP_DROP) is subtracted, and
both measured numbers are kept in the details.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import dataclasses
import ipaddress
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.contract import abi
from agent.contract.capacity import Capacity
from agent.contract.clock import NS
from agent.contract.keys import PrefixKey, Record
from agent.contract.rates import make_rate
from agent.contract.specs import ConfigSpec, GroupSpec, RuleSpec
from agent.datapath import bpfsys as sysbpf
from agent.datapath import loader, synauth
from agent.datapath.errors import BpfSyscallError
from agent.datapath.loader import BuildOptions
from agent.datapath.mapport import MapPort
from agent.datapath.maps import PINNED_MAPS, Maps

from . import _util
from ._util import Timing

SCENARIOS = (
    "trivial_drop",
    "one_miss",
    "allowlisted",
    "banned_32_of_1m",
    "banned_16_of_1m",
    "legit_pass",
    "spoofed_flood",
    "rule_drop",
    "fragment",
    "ipv6",
    "qinq",
    "xdp_filter_pass",
    "xdp_filter_drop",
    "syn_challenge",
    "syn_verified",
)

# What the datapath should cost, against programs measured in the same run on the same packets:
# (scenario, what it is compared with, the largest ratio that meets the target). Printed, never
# asserted (benchmarks are not tests). The trivial XDP_DROP is kept for reference only: its ratio
# moves fivefold between machines.
TARGETS: tuple[tuple[str, str, float], ...] = (
    ("legit_pass", "xdp_filter_pass", 1.0),
    ("banned_32_of_1m", "xdp_filter_drop", 1.0),
    ("rule_drop", "legit_pass", 1.0),
    ("spoofed_flood", "legit_pass", 1.5),
    ("syn_challenge", "legit_pass", 2.0),
    ("banned_32_of_1m", "one_miss", 1.3),
)
PEERS = {"legit_pass": "xdp_filter_pass", "banned_32_of_1m": "xdp_filter_drop"}
"""floodguard's scenario -> xdp-filter's on the same packets."""

FULL_CAPACITY = Capacity(prefixes=1_099_999, hosts4=1_100_000, prefixes6=65_536, sources=1_048_576)
SMOKE_CAPACITY = Capacity(
    prefixes=16_383, hosts4=16_384, prefixes6=1_024, groups=16, sources=131_072, sources6=131_072,
    destinations=1_024, verified=1_024, sample_pages=16,
)

XDP_FILTER_OBJECT = "xdpfilt_alw_ip.o"
XDP_FILTER_PROGRAM = "xdpfilt_alw_ip"
XDP_FILTER_MAP_FLAG_SRC = 1  # xdp-filter's common_kern_user.h: MAP_FLAG_SRC

# Where the scenarios' sources live (host order). Disjoint on purpose.
BAN32_BASE, BAN32_STEP = 0x40000000, 1021        # 64.0.0.0/2, /32s 1021 apart: most in a /24 of their own
BAN16_BASE = 0x10000000                          # 16.0.0.0/4, tiled by its 4,096 /16s
ALLOW_NET = (0x0A000000, 8)                      # 10.0.0.0/8
LEGIT_BASE = 0xC6120001                          # 198.18.0.0/15 (RFC 2544's benchmarking range)
SPOOF_BASE, SPOOF_STEP = 0x80000001, 61          # 128.0.0.0/2: nothing listed there
RULE_BASE, RULE_STEP, RULE_BITS = 0xA0000001, 7, 23  # 8,388,608 sources from 160.0.0.1: nothing listed there
LIVE_RULES = 16
REFLECTION_SPORTS = (123, 11211, 19, 1900, 389, 3702, 5353, 161, 27015, 17, 3283, 10001, 37810, 111)
"""The sources ports of the 14 rules that match neither rule_drop's nor fragment's packets."""
BAN6_BASE = int(ipaddress.IPv6Address("2a00::"))
LEGIT6_SRC = "2001:db8::1"                       # word 1 rewritten: 2001:db8:1:xxxx::1, one /64 each
PROTECTED4, PROTECTED6 = "203.0.113.0/24", "2001:db8:ffff::/48"
DST4, DST6 = "203.0.113.10", "2001:db8:ffff::10"
GROUP = 1
# SYN authentication: a group of its own, so no other scenario is challenged.
PROTECTED_SYN4, DST_SYN4 = "192.0.2.0/24", "192.0.2.80"
SYN_GROUP = 2
VERIFIED_BASE = 0x0B000001                       # 11.0.0.0/8: the verified sources, nothing listed there
VERIFIED_COUNT = 1 << 16                         # like legit_pass's sources; fewer if the map is smaller
# Challenges are charged to the group's cap, as in production, but this cap is never reached.
BENCH_CHALLENGE_PPS = 1_000_000_000
VERIFIED_FOR_NS = 3600 * NS

# Maps every scenario's program shares through its pins: the address table,
# the settings and the counters. The per-source maps are left out: each
# program gets fresh ones, so no scenario inherits the state (or the LRU
# free-list order) another one left behind.
PER_SOURCE_MAPS = ("buckets4", "buckets6", "dst_stats", "verified4", "verified6")
SHARED_MAPS = tuple(m for m in PINNED_MAPS if m not in PER_SOURCE_MAPS)


@dataclasses.dataclass(frozen=True)
class Vary:
    """bench.h's flags: packet n has source base + ((n * MULT) & mask) * step."""

    base: int
    mask: int
    step: int = 1
    v6_word: int = 3

    def flags(self) -> dict[str, int]:
        return {"BASE": self.base, "MASK": self.mask, "STEP": self.step, "V6_WORD": self.v6_word}

    @property
    def count(self) -> int:
        return self.mask + 1


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much a run writes; full size, or tiny for the smoke test."""

    bans32: int          # a power of two: the source cycles over all of them
    bans16: int          # a power of two, at most 4,096
    bans6: int
    capacity: Capacity


FULL = Sizes(bans32=1 << 20, bans16=4096, bans6=4096, capacity=FULL_CAPACITY)
SMOKE = Sizes(bans32=1 << 12, bans16=64, bans6=64, capacity=SMOKE_CAPACITY)


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    kind: str            # "trivial", "floodguard" or "xdp_filter"
    vary: Vary
    frame: bytes
    what: str            # what the source varies over, for the table
    verified: Vary | None = None  # sources written to verified4 before the run (SYN authentication)
    rules: bool = False  # bench_rules() live for the run (and cleared after it)


def _ip4(a: int) -> str:
    return str(ipaddress.IPv4Address(a))


def scenarios(sizes: Sizes, repeat: int, runs: int) -> list[Scenario]:
    """The scenarios, in the order they run (legit before spoofed: the
    flood fills the LRU bucket maps, which each scenario clears anyway)."""
    f = _util.frame
    ban32 = Vary(BAN32_BASE, sizes.bans32 - 1, BAN32_STEP)
    # /16 after /16, a different /24 each packet: base + idx * 256 stays inside the banned /16s.
    ban16 = Vary(BAN16_BASE + 1, sizes.bans16 * 256 - 1, 256)
    allow = Vary(ALLOW_NET[0] + 1, (1 << 20) - 1, 13)
    legit = Vary(LEGIT_BASE, (1 << 16) - 1, 2)
    # New source every packet: a mask above every packet of the run (warm-up included).
    total = repeat * (runs + 1)
    spoof_bits = min(max(20, (total - 1).bit_length()), 24)
    spoof = Vary(SPOOF_BASE, (1 << spoof_bits) - 1, SPOOF_STEP)
    legit6 = Vary(0x00010000, (1 << 16) - 1, 1, v6_word=1)
    ruled = Vary(RULE_BASE, (1 << RULE_BITS) - 1, RULE_STEP)

    udp = f(_ip4(BAN32_BASE), DST4)
    ack = f(_ip4(LEGIT_BASE), DST4, proto=_util.IPPROTO_TCP, tcp_flags=_util.TCP_ACK)
    syn = f(_ip4(SPOOF_BASE), DST4, proto=_util.IPPROTO_TCP, tcp_flags=_util.TCP_SYN)
    ack6 = f(LEGIT6_SRC, DST6, proto=_util.IPPROTO_TCP, tcp_flags=_util.TCP_ACK)
    qinq = f(_ip4(LEGIT_BASE), DST4, proto=_util.IPPROTO_TCP, tcp_flags=_util.TCP_ACK,
             vlans=[(_util.ETH_P_8021AD, 100), (_util.ETH_P_8021Q, 200)])
    n_verified = min(VERIFIED_COUNT, 1 << ((sizes.capacity.verified // 2).bit_length() - 1))
    verified = Vary(VERIFIED_BASE, n_verified - 1, 1)
    syn_new = f(_ip4(SPOOF_BASE), DST_SYN4, proto=_util.IPPROTO_TCP, tcp_flags=_util.TCP_SYN)
    syn_ok = f(_ip4(VERIFIED_BASE), DST_SYN4, proto=_util.IPPROTO_TCP, tcp_flags=_util.TCP_SYN)
    reflection = f(_ip4(RULE_BASE), DST4, sport=53, dport=40000, payload=bytes(18))
    fragment = f(_ip4(RULE_BASE), DST4, fragment_offset=185, payload=bytes(18))
    n32 = f"{sizes.bans32:,}"
    return [
        Scenario("trivial_drop", "trivial", ban32, udp, f"{n32} addresses in 64.0.0.0/2 (XDP_DROP only)"),
        Scenario("one_miss", "one_miss", ban32, udp,
                 f"banned_32's {n32} sources; one lookup in a hash of {n32} (every key found)"),
        Scenario("allowlisted", "floodguard", allow, f(_ip4(ALLOW_NET[0] + 1), DST4),
                 f"{allow.count:,} sources in the allowlisted 10.0.0.0/8"),
        Scenario("banned_32_of_1m", "floodguard", ban32, udp, f"all {n32} banned /32s (UDP)"),
        Scenario("banned_16_of_1m", "floodguard", ban16, f(_ip4(BAN16_BASE + 1), DST4),
                 f"{ban16.count:,} /24s across {sizes.bans16:,} banned /16s (UDP)"),
        Scenario("legit_pass", "floodguard", legit, ack,
                 f"{legit.count:,} sources under their limit (TCP ACK to a protected group)"),
        Scenario("spoofed_flood", "floodguard", spoof, syn,
                 f"a new source every packet ({spoof.count:,} in 128.0.0.0/2, SYN), buckets created"),
        Scenario("rule_drop", "floodguard", ruled, reflection,
                 f"{ruled.count:,} sources, DNS reflection (UDP from port 53) to a protected group, dropped by "
                 f"rule {LIVE_RULES} of {LIVE_RULES} live", rules=True),
        Scenario("fragment", "floodguard", ruled, fragment,
                 f"rule_drop's sources, non-first IPv4 fragments, dropped by a fragment rule "
                 f"({LIVE_RULES - 1} of {LIVE_RULES} live)", rules=True),
        Scenario("ipv6", "floodguard", legit6, ack6, f"{legit6.count:,} IPv6 /64s under their limit (TCP ACK)"),
        Scenario("qinq", "floodguard", legit, qinq, "legit_pass's sources behind 802.1ad + 802.1Q tags"),
        Scenario("xdp_filter_pass", "xdp_filter", legit, ack, f"legit_pass's sources; {n32} /32s listed"),
        Scenario("xdp_filter_drop", "xdp_filter", ban32, udp, f"all {n32} listed /32s"),
        Scenario("syn_challenge", "syn_challenge", spoof, syn_new,
                 f"spoofed_flood's sources, SYN to a group challenging always ({verified.count:,} others "
                 f"verified); behind the restoring front, its cost subtracted", verified),
        Scenario("syn_verified", "floodguard", verified, syn_ok,
                 f"{verified.count:,} verified sources (verified4 pre-filled), SYN to the same group, "
                 f"under their limit", verified),
    ]


# --- the shared table ----------------------------------------------------------------------------


def _now() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def populate(port: MapPort, sizes: Sizes) -> tuple[int, float]:
    """Write every scenario's entries through the agent's own writers.

    Returns (source prefixes written, seconds). Bans and the allowlist go
    through AddressTable.replace_origin + commit, the path a policy load
    takes; limits through MapPort.set_group.
    """
    now = _now()
    ban: Record = (0, now, abi.SRC_BAN, 0)
    allow: Record = (0, now, abi.SRC_ALLOW, 0)
    start = time.monotonic()
    bans = {(4, BAN32_BASE + i * BAN32_STEP, 32): ban for i in range(sizes.bans32)}
    bans.update({(4, BAN16_BASE + (i << 16), 16): ban for i in range(sizes.bans16)})
    bans.update({(6, BAN6_BASE + (i << 80), 48): ban for i in range(sizes.bans6)})
    allows = {(4, ALLOW_NET[0], ALLOW_NET[1]): allow}
    table = port.addresses
    table.sync(now)
    table.replace_origin(abi.Origin.POLICY, bans, allows)
    dst: dict[PrefixKey, int] = {}
    for net in (PROTECTED4, PROTECTED6):
        n = ipaddress.ip_network(net)
        dst[(n.version, int(n.network_address), n.prefixlen)] = GROUP
    syn_net = ipaddress.ip_network(PROTECTED_SYN4)
    dst[(syn_net.version, int(syn_net.network_address), syn_net.prefixlen)] = SYN_GROUP
    table.set_destinations(dst)
    table.commit(now)
    seconds = time.monotonic() - start

    base = [abi.Rate() for _ in range(abi.LIMIT_CLASSES)]
    base[abi.TrafficClass.TCP_SYN] = make_rate(pps=100, burst=20)
    base[abi.TrafficClass.TCP_OTHER] = make_rate(pps=10_000, burst=1_000)
    base[abi.TrafficClass.UDP] = make_rate(pps=10_000, burst=1_000)
    base[abi.TrafficClass.ICMP] = make_rate(pps=100, burst=20)
    base[abi.TrafficClass.FRAGMENT] = make_rate(pps=100, burst=20)
    base[abi.TrafficClass.OTHER] = make_rate(pps=100, burst=20)
    port.set_group(GROUP, GroupSpec(base=base))
    port.write_config(ConfigSpec())
    # The SYN group: the same limits, but a verified source's SYNs stay under their
    # bucket for the whole run (each of 65,536 sends ~90 in about a second).
    syn_base = list(base)
    syn_base[abi.TrafficClass.TCP_SYN] = make_rate(pps=10_000, burst=1_000)
    port.set_group(SYN_GROUP, GroupSpec(base=syn_base, syn_always=True,
                                        challenge_pps=BENCH_CHALLENGE_PPS))
    port.set_syn_keys(current=synauth.new_key(), previous=synauth.new_key())
    return len(bans) + len(allows), seconds


def bench_rules() -> list[RuleSpec]:
    """The 16 live rules of rule_drop and fragment, as an attack on the protected group leaves them.

    Every rule is for the protected /24, so each one's destination matches and the scan goes on
    to its other fields: 14 drop UDP answers of other reflection services (ports no bench packet
    carries), then the fragment rule, then the DNS one. First match wins, so fragment's packets
    pass 14 rules before theirs, rule_drop's 15.
    """
    dst = ipaddress.ip_network(PROTECTED4)
    out = [RuleSpec(dst=dst, proto=_util.IPPROTO_UDP, sport=(port, port), group=GROUP, rule_id=i + 1)
           for i, port in enumerate(REFLECTION_SPORTS)]
    out.append(RuleSpec(dst=dst, traffic_class=abi.TrafficClass.FRAGMENT, group=GROUP, rule_id=len(out) + 1))
    out.append(RuleSpec(dst=dst, proto=_util.IPPROTO_UDP, sport=(53, 53), group=GROUP, rule_id=len(out) + 1))
    assert len(out) == LIVE_RULES
    return out


def _reasons(before: np.ndarray[Any, Any], after: np.ndarray[Any, Any]) -> dict[str, int]:
    delta = (after[..., 0] - before[..., 0]).sum(axis=(0, 2, 3))
    return {abi.Reason(i).label: int(n) for i, n in enumerate(delta.tolist()) if n}


def _reason_label(counts: dict[str, int], packets: int) -> str:
    """The reason when every packet had it; otherwise every reason, counted."""
    if len(counts) == 1 and sum(counts.values()) == packets:
        return next(iter(counts))
    parts = ", ".join(f"{k}={v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
    missing = packets - sum(counts.values())
    return f"mixed: {parts}" + (f", uncounted={missing:,}" if missing else "")


# --- xdp-filter --------------------------------------------------------------------------------


def find_xdp_filter() -> Path | None:
    """xdp-filter's compiled objects, from libxdp1 (Debian, Ubuntu)."""
    multiarch = f"{platform.machine()}-linux-gnu"
    for d in (f"/usr/lib/{multiarch}/bpf", "/usr/lib/bpf", "/usr/local/lib/bpf", "/usr/lib64/bpf"):
        p = Path(d) / XDP_FILTER_OBJECT
        if p.is_file():
            return p
    return None


def _set_slot(prog_array_fd: int, fd: int) -> None:
    sysbpf.map_update(prog_array_fd, ct.c_uint32(0), ct.c_uint32(fd))


def _fill_xdp_filter(map_fd: int, addrs: Sequence[int]) -> None:
    """List sources the way `xdp-filter ip -m src` does: address -> MAP_FLAG_SRC on every CPU."""
    n = len(addrs)
    keys = np.array(addrs, dtype=">u4").tobytes()
    values = np.full(n * sysbpf.possible_cpus(), XDP_FILTER_MAP_FLAG_SRC, dtype=np.uint64).tobytes()
    sysbpf.update_batch(map_fd, keys, values, n)


def _xdp_filter_actions(obj: _util.LibbpfObject) -> dict[str, int]:
    """Packets per XDP action from xdp-filter's own xdp_stats_map (per CPU,
    {packets, bytes} per action), summed over CPUs."""
    fd = obj.map_fd("xdp_stats_map")
    info = sysbpf.map_info(fd)
    ncpu = sysbpf.possible_cpus()
    stride = sysbpf.percpu_value_size(int(info.value_size))
    out: dict[str, int] = {}
    for action in range(int(info.max_entries)):
        buf = (ct.c_char * (stride * ncpu))()
        if sysbpf.map_lookup(fd, ct.c_uint32(action), buf):
            raw = bytes(buf)
            n = sum(int.from_bytes(raw[c * stride:c * stride + 8], "little") for c in range(ncpu))
            if n:
                out[_util.XDP_ACTIONS.get(action, str(action))] = n
    return out


# --- the run ---------------------------------------------------------------------------------------


Progress = Callable[[str], None]


class _Runner:
    """Builds, measures and cleans up, scenario after scenario."""

    def __init__(self, root: str, sizes: Sizes, repeat: int, runs: int, progress: Progress,
                 cpus: Sequence[int] = ()) -> None:
        self.root = root
        self.cpus = tuple(cpus)
        self.sizes = sizes
        self.repeat = repeat
        self.runs = runs
        self.say = progress
        self.trivial: dict[tuple[Vary, bytes], Timing] = {}
        self.trivial_progs: dict[Vary, loader.Program] = {}  # one build per source pattern, timed per frame
        self.notes: list[str] = []
        self.table_dir: str | None = None
        self.maps: Maps | None = None
        self.port: MapPort | None = None
        self.populated = (0, 0.0)
        self.extra: dict[str, dict[str, Any]] = {}   # more details of a scenario, merged into "details"

    def time(self, fd: int, frame: bytes, record: str | None = None) -> Timing:
        """The program on this frame: on the run's CPU, or with ``--cpus`` on each of them at once.

        With several CPUs the number is the mean of the CPUs' medians, every packet of every CPU
        counted; ``record`` names the scenario whose details get each CPU's own number.
        """
        if not self.cpus:
            return _util.time_program(fd, frame, self.repeat, self.runs)
        per = _util.time_program_on(fd, frame, self.repeat, self.runs, self.cpus)
        if record is not None:
            self.extra.setdefault(record, {})["per_cpu_ns"] = {
                str(cpu): t.ns_per_packet for cpu, t in zip(self.cpus, per, strict=True)}
        return Timing(round(sum(t.ns_per_packet for t in per) / len(per), 1),
                      tuple(x for t in per for x in t.samples), per[0].retval, sum(t.packets for t in per))

    def close(self) -> None:
        for prog in self.trivial_progs.values():
            prog.close()
            loader.remove_pins(prog.pin_dir)
        self.trivial_progs.clear()
        if self.port is not None:
            self.port.close()
        if self.maps is not None:
            self.maps.close()

    def build(self, name: str, vary: Vary, source: str = "floodguard.bpf.c",
              function: str = loader.PROGRAM_NAME) -> loader.Program:
        pin_dir = f"{self.root}/{name}"
        if source == "floodguard.bpf.c" and self.table_dir is not None:
            _util.share_pins(self.table_dir, pin_dir, SHARED_MAPS)
        return loader.build(BuildOptions(pin_dir=pin_dir, capacity=self.sizes.capacity, bench=vary.flags(),
                                         source=source, function=function))

    def reference(self, vary: Vary, frame: bytes) -> Timing:
        """XDP_DROP with the same bench flags on the same frame (the rewrite
        parses up to the IP header: VLAN tags cost it too)."""
        got = self.trivial.get((vary, frame))
        if got is None:
            prog = self.trivial_progs.get(vary)
            if prog is None:  # the build depends on the flags only: frames of one pattern share it
                prog = self.build(f"trivial-{len(self.trivial_progs)}", vary, "bench_drop.bpf.c", "xdp_drop")
                self.trivial_progs[vary] = prog
            got = self.time(prog.fd, frame)
            self.trivial[(vary, frame)] = got
        return got

    def floodguard(self, sc: Scenario) -> tuple[Timing, str]:
        self.say(f"{sc.name}: building")
        prog = self.build(sc.name, sc.vary)
        try:
            if self.table_dir is None:
                self.table_dir = prog.pin_dir
                self.maps = Maps.from_program(prog)
                self.port = MapPort(self.maps)
                self.say(f"{sc.name}: writing the tables through AddressTable")
                self.populated = populate(self.port, self.sizes)
                n, secs = self.populated
                self.say(f"{sc.name}: {n:,} source prefixes written in {secs:.1f} s")
            assert self.maps is not None and self.port is not None
            if sc.verified is not None:
                self._prefill_verified(sc, prog)
            if sc.rules:
                self.port.set_rules(bench_rules())
            before = self.port.read_stats()
            self.say(f"{sc.name}: measuring")
            t = self.time(prog.fd, sc.frame, sc.name)
            counts = _reasons(before, self.port.read_stats())
        finally:
            if sc.rules and self.port is not None:
                self.port.set_rules([])  # the rule table is shared: no other scenario scans these
            prog.close()
            if prog.pin_dir != self.table_dir:
                # Its own per-source maps go now; the shared ones live on in the table's pins.
                loader.remove_pins(prog.pin_dir)
        return t, _reason_label(counts, t.packets)

    def one_miss(self, sc: Scenario) -> tuple[Timing, str]:
        """bpf/bench/one_miss.bpf.c: one hash lookup per packet, its table holding every source the run visits."""
        self.say(f"{sc.name}: building and filling its hash of {sc.vary.count:,}")
        pin_dir = f"{self.root}/{sc.name}"
        prog = loader.build(BuildOptions(pin_dir=pin_dir, capacity=self.sizes.capacity,
                                         bench={**sc.vary.flags(), "ENTRIES": sc.vary.count},
                                         source="bench/one_miss.bpf.c", function="xdp_one_miss"))
        try:
            addrs = sc.vary.base + np.arange(sc.vary.count, dtype=np.uint64) * sc.vary.step
            fd = prog.map_fd("keys")
            sysbpf.update_batch(fd, addrs.astype(">u4").tobytes(), np.ones(sc.vary.count, dtype=np.uint32).tobytes(),
                                sc.vary.count)
            self.say(f"{sc.name}: measuring")
            t = self.time(prog.fd, sc.frame, sc.name)
        finally:
            prog.close()
            loader.remove_pins(pin_dir)
        return t, t.action

    def _prefill_verified(self, sc: Scenario, prog: loader.Program) -> None:
        """Mark sc.verified's sources verified in prog's own verified4 (per-source maps are not shared)."""
        v = sc.verified
        assert v is not None
        addrs = v.base + np.arange(v.count, dtype=np.uint64) * v.step
        keys = addrs.astype(">u4").tobytes()   # the key is the address as it sits in the packet
        values = np.full(v.count, _now() + VERIFIED_FOR_NS, dtype=np.uint64).tobytes()
        fd = prog.map_fd("verified4")
        sysbpf.update_batch(fd, keys, values, v.count)
        _k, _v, n = sysbpf.lookup_batch(fd, 4, 8, int(sysbpf.map_info(fd).max_entries))
        self.extra.setdefault(sc.name, {})["verified_sources"] = n
        if n != v.count:
            self.notes.append(f"{sc.name}: {n:,} of {v.count:,} verified sources stayed in the LRU map")

    def syn_challenge(self, sc: Scenario) -> tuple[Timing, str]:
        """The challenge path, every repeat on a fresh copy of the SYN.

        The program rewrites its packet into the challenge and test-run
        does not reset it between repeats, so the program runs behind
        bpf/bench/restore.bpf.c (module docstring). The same front before
        XDP_DROP (same flags) is measured too; its excess over XDP_DROP
        alone is what the front and the tail call add, and is subtracted.
        """
        if self.table_dir is None or self.port is None:
            raise _util.BenchError(f"{sc.name} needs the shared table: a floodguard scenario must run first")
        if len(sc.frame) % 4:
            raise ValueError(f"{sc.name}: the restoring front copies 4-byte words; the frame is {len(sc.frame)} B")
        self.say(f"{sc.name}: building the program, the restoring front and XDP_DROP")
        progs: list[loader.Program] = []
        try:
            fg = self.build(sc.name, sc.vary)
            progs.append(fg)
            front = loader.build(BuildOptions(
                pin_dir=f"{self.root}/restore-{sc.name}", capacity=self.sizes.capacity,
                bench={**sc.vary.flags(), "FRAME_LEN": len(sc.frame)},
                source="bench/restore.bpf.c", function="xdp_restore"))
            progs.append(front)
            drop = self.build(f"restore-drop-{sc.name}", sc.vary, "bench_drop.bpf.c", "xdp_drop")
            progs.append(drop)
            buf = (ct.c_char * len(sc.frame)).from_buffer_copy(sc.frame)
            sysbpf.map_update(front.map_fd("frame"), ct.c_uint32(0), buf)
            if sc.verified is not None:
                self._prefill_verified(sc, fg)
            before = self.port.read_stats()
            self.say(f"{sc.name}: measuring")
            _set_slot(front.map_fd("next"), fg.fd)
            behind = self.time(front.fd, sc.frame, sc.name)
            counts = _reasons(before, self.port.read_stats())
            self.say(f"{sc.name}: measuring the front before XDP_DROP")
            _set_slot(front.map_fd("next"), drop.fd)
            front_drop = self.time(front.fd, sc.frame)
        finally:
            for p in progs:
                p.close()
                if p.pin_dir != self.table_dir:
                    loader.remove_pins(p.pin_dir)
        if front_drop.action != "drop":
            self.notes.append(f"{sc.name}: the front before XDP_DROP returned {front_drop.action}: "
                              f"the tail call failed, the subtraction below is wrong")
        trivial = self.reference(sc.vary, sc.frame)
        overhead = front_drop.ns_per_packet - trivial.ns_per_packet
        own = Timing(round(behind.ns_per_packet - overhead, 1), tuple(round(s - overhead) for s in behind.samples),
                     behind.retval, behind.packets)
        self.extra.setdefault(sc.name, {}).update({
            "behind_front_ns": behind.ns_per_packet,
            "front_then_drop_ns": front_drop.ns_per_packet,
            "front_overhead_ns": round(overhead, 1),
            "behind_front_runs_ns": list(behind.samples),
            "how": "ns_per_packet = behind_front_ns - (front_then_drop_ns - trivial_drop_same_flags_ns)",
        })
        return own, _reason_label(counts, own.packets)

    def xdp_filter(self, todo: list[Scenario]) -> dict[str, tuple[Timing, str]]:
        """xdp-filter behind the front program; the tail-call reference too."""
        out: dict[str, tuple[Timing, str]] = {}
        path = find_xdp_filter()
        if path is None:
            self.notes.append(f"xdp-filter not measured: {XDP_FILTER_OBJECT} not found; install libxdp1 "
                              f"(apt-get install xdp-tools)")
            return out
        bans = [BAN32_BASE + i * BAN32_STEP for i in range(self.sizes.bans32)]
        cap = self.sizes.capacity.src_entries
        self.notes.append(
            f"xdp-filter: {path} (what `xdp-filter load -f ipv4,ipv6` picks; default allow, listed sources "
            f"dropped), loaded with libbpf; its filter_ipv4 map resized from 10,000 to {cap:,} entries "
            f"before load to hold {len(bans):,} sources; it lists exact addresses only, so it has no "
            f"/16 scenario")
        fronts: dict[str, loader.Program] = {}
        obj: _util.LibbpfObject | None = None
        try:
            for sc in todo:
                fronts[sc.name] = self.build(f"front-{sc.name}", sc.vary, "bench/front.bpf.c", "xdp_front")
            obj, tail_ok = self._load_xdp_filter(path, cap, fronts[todo[0].name])
            _fill_xdp_filter(obj.map_fd("filter_ipv4"), bans)
            fd = obj.program_fd(XDP_FILTER_PROGRAM)
            for sc in todo:
                front = fronts[sc.name]
                self.say(f"{sc.name}: measuring")
                before = _xdp_filter_actions(obj)
                if tail_ok:
                    _set_slot(front.map_fd("next"), fd)
                    t = self.time(front.fd, sc.frame, sc.name)
                else:
                    # Fallback: one fixed source, as test-run gives it.
                    t = self.time(fd, sc.frame, sc.name)
                after = _xdp_filter_actions(obj)
                counts = {k: n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0)}
                out[sc.name] = (t, _reason_label(counts, t.packets))
            if tail_ok:
                # What the front and the tail call cost: the same front, tail-calling XDP_DROP.
                sc = todo[0]
                front = fronts[sc.name]
                drop_fd = front.bcc.load_func(b"xdp_tail_drop", 6).fd  # BPF_PROG_TYPE_XDP
                _set_slot(front.map_fd("next"), drop_fd)
                t = self.time(front.fd, sc.frame)
                out["tail_call_drop"] = (t, t.action)
        finally:
            for p in fronts.values():
                p.close()
            if obj is not None:
                obj.close()
        return out

    def _load_xdp_filter(self, path: Path, cap: int, front: loader.Program) -> tuple[_util.LibbpfObject, bool]:
        """Load xdp-filter and put it in the front's tail-call slot.

        libbpf loads SEC("xdp") with expected_attach_type BPF_XDP, BCC with
        none, and the kernel refuses a tail call between the two (EINVAL).
        Then it is loaded again with none, as BCC loads every XDP program
        (floodguard included): its instructions are the same. If the kernel
        still refuses, xdp-filter is measured on its own with a fixed source.
        """
        pins = f"{self.root}/xdp-filter"
        slot_fd = front.map_fd("next")
        for attach in (None, 0):
            obj = _util.LibbpfObject(str(path), pins)
            try:
                obj.set_max_entries("filter_ipv4", cap)
                if attach is not None:
                    obj.set_expected_attach_type(XDP_FILTER_PROGRAM, attach)
                obj.load()
                _set_slot(slot_fd, obj.program_fd(XDP_FILTER_PROGRAM))
            except BpfSyscallError as e:
                obj.close()
                loader.remove_pins(pins)
                if attach is None:
                    continue
                self.notes.append(
                    f"xdp-filter: the kernel refused the tail call ({e}); measured on its own with ONE "
                    f"fixed source per scenario (test-run repeats one packet), which flatters it")
                obj = _util.LibbpfObject(str(path), pins)
                obj.set_max_entries("filter_ipv4", cap)
                obj.load()
                return obj, False
            except BaseException:
                obj.close()
                raise
            if attach is not None:
                self.notes.append(
                    "xdp-filter: loaded with expected_attach_type 0 (as BCC loads XDP programs) instead of "
                    "libbpf's BPF_XDP, because the kernel refuses a tail call between the two; the "
                    "program's instructions are unchanged")
            return obj, True
        raise AssertionError("unreachable")


def run(
    repeat: int = 1_000_000,
    runs: int = 5,
    *,
    smoke: bool = False,
    measure_build: bool = True,
    progress: Progress | None = None,
    cpus: Sequence[int] = (),
) -> dict[str, Any]:
    """Measure every scenario; the result is what `--json` prints.

    smoke: tiny tables and capacities (tests/bpf/test_bench_smoke.py); the
    numbers then say nothing about speed. cpus: run every measurement on
    each of these CPUs at once (``--cpus``); each row then has ``per_cpu_ns``.
    """
    say = progress or (lambda _msg: None)
    sizes = SMOKE if smoke else FULL
    result: dict[str, Any] = {"scenarios": {}}
    started = time.monotonic()
    with _util.pin_root("floodguard-bench") as root, _util.one_cpu() as cpu:
        if measure_build:
            say("building the real program in a child process")
            probe = _util.probe_build(f"{root}/build", sizes.capacity)
            result["build_seconds"] = round(probe.seconds, 3)
            result["build_peak_rss_mb"] = round(probe.peak_rss_mb, 1)
        else:
            result["build_seconds"] = None
            result["build_peak_rss_mb"] = None
        runner = _Runner(root, sizes, repeat, runs, say, cpus)
        measured: dict[str, tuple[Timing, str]] = {}
        try:
            todo = scenarios(sizes, repeat, runs)
            for sc in todo:
                if sc.kind == "trivial":
                    t = runner.reference(sc.vary, sc.frame)
                    measured[sc.name] = (t, t.action)
                elif sc.kind == "floodguard":
                    measured[sc.name] = runner.floodguard(sc)
                    runner.reference(sc.vary, sc.frame)
                elif sc.kind == "syn_challenge":
                    measured[sc.name] = runner.syn_challenge(sc)
                elif sc.kind == "one_miss":
                    measured[sc.name] = runner.one_miss(sc)
                    runner.reference(sc.vary, sc.frame)
            peers = [sc for sc in todo if sc.kind == "xdp_filter"]
            measured.update(runner.xdp_filter(peers))
            for sc in peers:
                runner.reference(sc.vary, sc.frame)
        finally:
            runner.close()

        refs: dict[str, float] = {}
        details: dict[str, Any] = {}
        for sc in todo:
            ref = runner.trivial[(sc.vary, sc.frame)].ns_per_packet
            refs[sc.name] = ref
            got = measured.get(sc.name)
            if got is None:
                result["scenarios"][sc.name] = {"ns_per_packet": None, "ratio_to_trivial_drop": None,
                                                "reason": "not measured"}
            else:
                t, reason = got
                result["scenarios"][sc.name] = {
                    "ns_per_packet": t.ns_per_packet,
                    "ratio_to_trivial_drop": round(t.ns_per_packet / ref, 3) if ref else None,
                    "reason": reason,
                }
                if cpus:
                    result["scenarios"][sc.name]["per_cpu_ns"] = runner.extra.get(sc.name, {}).get("per_cpu_ns")
            details[sc.name] = {
                "source_varies_over": sc.what,
                "trivial_drop_same_flags_ns": ref,
                "runs_ns": list(got[0].samples) if got else [],
                **runner.extra.get(sc.name, {}),
            }
        add_ratios(result["scenarios"])
        tail = measured.get("tail_call_drop")
        if tail is not None:
            ref = runner.trivial[(peers[0].vary, peers[0].frame)].ns_per_packet
            result["tail_call_drop"] = {
                "ns_per_packet": tail[0].ns_per_packet,
                "overhead_ns": round(tail[0].ns_per_packet - ref, 1),
                "what": "the front + a tail call into XDP_DROP, minus XDP_DROP with the same flags: "
                        "what the xdp-filter rows carry on top of xdp-filter itself",
            }
        n, secs = runner.populated
        result["populate"] = {"source_prefixes": n, "seconds": round(secs, 2),
                              "how": "AddressTable.replace_origin + commit (a policy load's path)"}
        result["details"] = details
        result["targets"] = _targets(result)
        legit = result["scenarios"]["legit_pass"]["reason"]
        if legit != "passed":
            runner.notes.append(f"legit_pass: NOT every packet passed ({legit}): its number is not a pass path")
        for name, want in (("syn_challenge", "syn_challenged"), ("syn_verified", "passed"), ("one_miss", "drop"),
                           ("rule_drop", "rule_drop"), ("fragment", "rule_drop")):
            got_reason = result["scenarios"][name]["reason"]
            if got_reason != want:
                runner.notes.append(f"{name}: NOT every packet was {want} ({got_reason}): its number is not "
                                    f"that path")
        result["notes"] = [
            (f"ns per packet: the kernel's mean over {repeat:,} repeats per run, median of {runs} runs after "
            f"one warm-up run; "
            + (f"on CPUs {', '.join(map(str, cpus))} at once (a pinned thread each), the mean of the CPUs' medians"
               if cpus else f"pinned to CPU {cpu}")),
            (f"'1m' tables: {sizes.bans32:,} banned /32s + {sizes.bans16:,} banned /16s + "
            f"{sizes.bans6:,} IPv6 /48s + one allowlisted /8 in one table, shared by every scenario"),
            *runner.notes,
        ]
        result["config"] = {"repeat": repeat, "runs": runs, "smoke": smoke, "cpu": cpu, "cpus": list(cpus),
                            "seconds": round(time.monotonic() - started, 1)}
    return result


def _over(ns: float | None, ref: float | None) -> float | None:
    return round(ns / ref, 3) if ns is not None and ref else None


def add_ratios(rows: dict[str, dict[str, Any]]) -> None:
    """Each row's ratio to one_miss (the floor for a table that does not fit in the cache) and, where
    xdp-filter has the same packets, its peer and the ratio to it."""
    floor = rows.get("one_miss", {}).get("ns_per_packet")
    for name, row in rows.items():
        row["ratio_to_one_miss"] = _over(row["ns_per_packet"], floor)
        peer = PEERS.get(name)
        row["peer"] = peer
        row["ratio_to_peer"] = _over(row["ns_per_packet"], rows[peer]["ns_per_packet"]) if peer in rows else None


def _targets(result: dict[str, Any]) -> dict[str, Any]:
    """Every target of TARGETS, judged on this run's numbers; xdp-filter's without its front, too.

    xdp-filter sees the bench's packets through a front program and a tail call (module
    docstring), which floodguard's bench build does not pay; ``met_without_front`` compares
    with xdp-filter's number minus that overhead (``tail_call_drop``).
    """
    sc = result["scenarios"]
    tail = result.get("tail_call_drop")
    out: dict[str, Any] = {}
    for name, against, most in TARGETS:
        ns, ref = sc[name]["ns_per_packet"], sc[against]["ns_per_packet"]
        r = _over(ns, ref)
        entry: dict[str, Any] = {"target": f"{name} <= {most:g} x {against}", "ns": ns, "against_ns": ref,
                                 "ratio": r, "met": None if r is None else r <= most}
        if against.startswith("xdp_filter") and tail is not None and ref is not None:
            alone = round(ref - tail["overhead_ns"], 1)
            entry["against_without_front_ns"] = alone
            entry["met_without_front"] = None if ns is None or alone <= 0 else ns / alone <= most
        out[f"{name}_vs_{against}"] = entry
    return out


# --- output --------------------------------------------------------------------------------------


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _yes(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "n/a"}[met]


def render(result: dict[str, Any]) -> str:
    """The human table (everything in it comes from the result)."""
    cfg = result["config"]
    lines = [
        (f"floodguard bench datapath — ns per packet via BPF_PROG_TEST_RUN, repeat {cfg['repeat']:,}, "
        f"median of {cfg['runs']} runs"),
        ("the source address changes every packet (bench build, -DFG_BENCH); every program of a row sees the "
        "same packets"),
        "",
        (f"{'scenario':<17} {'ns/pkt':>7} {'x miss':>7} {'x peer':>7} {'x drop':>7}  {'reason':<14} "
         f"source varies over"),
    ]
    for name, row in result["scenarios"].items():
        what = result["details"][name]["source_varies_over"]
        if row.get("peer"):
            what += f" (peer: {row['peer']})"
        if row.get("per_cpu_ns"):
            what += " [" + ", ".join(f"cpu {c}: {ns:.1f}" for c, ns in row["per_cpu_ns"].items()) + "]"
        lines.append(f"{name:<17} {_fmt(row['ns_per_packet'], '.1f'):>7} "
                     f"{_fmt(row.get('ratio_to_one_miss'), '.2f'):>7} "
                     f"{_fmt(row.get('ratio_to_peer'), '.2f'):>7} {_fmt(row['ratio_to_trivial_drop'], '.2f'):>7}  "
                     f"{row['reason']:<14} {what}")
    tail = result.get("tail_call_drop")
    if tail is not None:
        lines.append(f"{'(tail_call_drop)':<17} {tail['ns_per_packet']:7.1f} {'':>7} {'':>7} {'':>7}  {'drop':<14} "
                     f"front + tail call + XDP_DROP: {tail['overhead_ns']:+.1f} ns over XDP_DROP")
    lines += ["", ("x miss: over one_miss, one lookup in a hash that does not fit in the cache (the floor); "
                   "x peer: over xdp-filter on the same packets; x drop: over XDP_DROP (reference only)"),
              "", "targets (measured, not asserted):"]
    for e in result["targets"].values():
        extra = ""
        if "against_without_front_ns" in e:
            extra = (f"; xdp-filter without the front's tail call ~{e['against_without_front_ns']:.1f} ns: "
                     f"{_yes(e['met_without_front'])}")
        lines.append(f"  {e['target']:<38} {_fmt(e['ns'], '.1f')} vs {_fmt(e['against_ns'], '.1f')} ns = "
                     f"{_fmt(e['ratio'], '.2f')}x  {_yes(e['met'])}{extra}")
    lines.append("")
    if result["build_seconds"] is not None:
        lines.append(f"build of the real program (child process): {result['build_seconds']:.2f} s, "
                     f"peak RSS {result['build_peak_rss_mb']:.0f} MB")
    p = result["populate"]
    lines.append(f"tables: {p['source_prefixes']:,} source prefixes written in {p['seconds']:.1f} s ({p['how']})")
    lines.append("notes:")
    lines += [f"  - {n}" for n in result["notes"]]
    lines.append(f"took {cfg['seconds']:.0f} s")
    return "\n".join(lines)


EPILOG = """\
examples:
  floodguard bench datapath                 the table, with the targets
  floodguard bench datapath --json          the same as JSON (progress goes to stderr)
  floodguard bench datapath --repeat 200000 --runs 3
                                            quicker, noisier
  floodguard bench datapath --cpus 0,1      every scenario on CPUs 0 and 1 at once: ns/pkt per CPU,
                                            to show contention on shared maps (LRU locks, buckets)

Needs root, bpffs and kernel headers (make setup). Builds its programs under
/sys/fs/bpf/floodguard-bench-<pid>/ and removes them when it ends. Takes
about two minutes: most of it compiling programs and writing 1M bans.
"""


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="floodguard bench datapath",
        description="ns per packet through the XDP program in each scenario, against a trivial XDP_DROP "
        "built with the same flags and against xdp-filter, with the source address changing every packet.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--repeat", type=int, default=1_000_000, help="packets per run (default 1,000,000)")
    p.add_argument("--runs", type=int, default=5, help="runs per scenario; the median is reported (default 5)")
    p.add_argument("--cpus", default=None, metavar="LIST",
                   help="run every scenario on each of these CPUs at once, e.g. 0,1 (default: one CPU)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    if args.repeat < 2 or args.runs < 1:
        p.error("--repeat must be at least 2 and --runs at least 1")
    cpus: tuple[int, ...] = ()
    if args.cpus is not None:
        try:
            cpus = _util.parse_cpus(args.cpus)
        except ValueError as e:
            p.error(str(e))

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"  {msg}", file=sys.stderr, flush=True)

    result = run(args.repeat, args.runs, progress=say, cpus=cpus)
    _util.print_result(result, args.json, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
