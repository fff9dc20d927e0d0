"""`floodguard bench e2e`: what dropping a flood costs the whole machine, filter by filter.

Why this exists
---------------
`bench datapath` times the program alone with BPF_PROG_TEST_RUN. That says
nothing about *where* a filter drops: an XDP program runs before the kernel
has built an skb, nftables' netdev ingress hook after, iptables' raw table
after IP input has checked the header, and with no filter the packet is
routed and dies further on. The difference is CPU the gateway no longer has
for anything else during an attack. This bench sends one real flood through
the lab (:mod:`agent.lab`: attacker -> upstream router -> gateway ``gw-in``
-> server network) and reads the machine's CPU time while each filter drops
it on ``gw-in``, all in one run, so the ratios compare like with like.

Configurations
--------------
``floodguard``        the real program (bpf/floodguard.bpf.c), built and attached natively to
                      ``gw-in`` with the datapath API, with a policy that denies the attackers'
                      foreign range (198.18.0.0/15) applied through :class:`agent.daemon.reload.PolicyRuntime`,
                      the daemon's own path. Not the daemon: its control loop (counter reads,
                      detection) is not the data plane, and its CPU would only add noise here.
``iptables_raw``      ``iptables -t raw -A PREROUTING -s 198.18.0.0/15 -j DROP`` in the gateway
                      namespace (Debian's ``iptables`` is the nf_tables backend; the note says which).
``nftables_ingress``  a ``netdev`` table with an ``ingress`` chain on ``gw-in``:
                      ``ip saddr 198.18.0.0/15 counter drop``.
``xdp_filter``        Debian's xdp-filter (``xdpfilt_alw_ip.o`` from libxdp1), loaded with libbpf as
                      ``bench datapath`` loads it, attached natively. xdp-filter matches exact
                      addresses only (``xdp-filter ip`` takes one address, no prefix), so every one
                      of the /15's 131,072 addresses is listed; its map is resized to hold them.
                      The ``xdp-filter`` command is not used, so nothing is pinned under
                      /sys/fs/bpf/xdp-filter.
``no_filter``         nothing: the flood is routed to the server network and dies there (the
                      server link's queue, closed ports).
``xdp_drop``          bpf/bench_drop.bpf.c, the reference every ratio is taken against (the same
                      one `bench datapath` uses: it counts each packet in a per-CPU array and
                      rewrites the source address before XDP_DROP, a few ns more than a bare drop).

Measurement
-----------
Per configuration: install the filter; measure the machine's *idle* busy
rate for ``--baseline`` seconds (no flood, everything else running: the
legitimate server and probes, other work on the machine), measured again
for up to ``--wait-quiet`` seconds while other work keeps more than
0.25 CPUs busy; then one trafgen process sends ``--pps`` for ``--seconds``.

``cpu_ns_per_packet`` (what the brief asks for): the machine's CPU time from
/proc/stat (all CPUs: user + nice + system + irq + softirq + steal), read at
every second of the flood (trafgen's budget period) with ``gw-in``'s rx
counter; per one-second slice, the busy time minus the idle rate over the
packets ``gw-in`` received. Slices whose figure is far from the median
(other work arriving) are left out, the rest pooled. Subtracting the idle
rate is what makes the figure the *flood's* cost, not the probes' or the
rest of the machine's; ``cpu_ns_per_packet_raw`` subtracts nothing.

``attributed_ns_per_packet``, the cross-check: the CPU time of trafgen's
process tree (``RUSAGE_CHILDREN`` once it is reaped, its start-up measured
once and subtracted) plus the ksoftirqd threads, over the same packets.
Without IRQ time accounting (this kernel: tick-based), softirq work is
charged to the task it interrupted, and on veths the whole path of a
packet (upstream forwarding, the gateway's filter or routing, the server's
stack) runs as softirq in the sender's context, or in ksoftirqd when
deferred. So this figure is blind to other work on the machine. It misses
work done from timers in other contexts (the server link's token bucket,
which only ``no_filter`` reaches); on a quiet machine the two agree within a
few percent. A window whose two figures disagree by more than 25% was
disturbed by other work: it is measured again (``--retries``, once by
default) and the closer window kept; a note names what stayed disturbed.

XDP on a veth is not XDP on a NIC: veth runs a native XDP program on the
skb the peer transmitted, after a ring hop into NAPI and, when the skb has
less than 256 bytes of headroom (a forwarded packet does), after copying it
into a fresh page. Here that makes every XDP configuration dearer than the
skb hooks (nftables ingress, iptables raw), the reverse of a NIC driver,
where XDP runs on the receive buffer before any skb exists. The XDP
configurations compare fairly with each other and with ``xdp_drop``.

Both figures include the generator and the upstream router's forwarding,
the same in every configuration, so the ratios are compressed towards 1.
``extra_ns_over_xdp_drop`` (this configuration minus the reference) is what
the filter itself adds over the cheapest possible drop.

The flood is smooth: staggered trafgen lanes whose bursts are 10 ms apart
(:mod:`agent.lab._lanes`); each window's report says how even it was.

Legitimate traffic: HTTP probes (a new connection and a GET each time, 20/s,
2 s timeout) from a client namespace to the server run throughout; their
success during each flood window is reported, the headline for ``no_filter``
and ``floodguard``. As in :func:`agent.lab.scenarios.run_scenario`, the
gateway's link to the servers has a capacity (``--link-mbit``, 50 Mbit/s),
which the default flood (DNS reflection answers, 1,242-byte frames)
overfills: that is what hurts an unprotected server's users.

Everything is removed on the way out, Ctrl-C and SIGTERM included: rules,
tables, XDP programs, pins (under /sys/fs/bpf/floodguard-bench-e2e-<pid>)
and the lab's namespaces.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes as ct
import dataclasses
import gzip
import itertools
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from agent.contract.clock import NS
from agent.lab.topology import Lab
from agent.lab.traffic import DEFAULTS, RECIPES, Flood, LinkCounter, Probe, ProbeStats

from . import _util

CONFIGS = ("floodguard", "iptables_raw", "nftables_ingress", "xdp_filter", "no_filter", "xdp_drop")
"""Every configuration, in the order the table lists them."""
REFERENCE = "xdp_drop"
RUN_ORDER = ("xdp_drop", "floodguard", "xdp_filter", "nftables_ingress", "iptables_raw", "no_filter")
"""The order of the first round; later rounds rotate it, so drift in the machine's load spreads evenly."""
LEGIT_CONFIGS = ("no_filter", "floodguard")

DEFAULT_PPS = DEFAULTS.flood_pps
DEFAULT_SECONDS = 10.0
DEFAULT_BASELINE = 3.0
DEFAULT_RECIPE = "reflection_dns"
DRAIN_SECONDS = 0.3
"""After trafgen's last packet: long enough for every queue on the way (the server link's is 20 ms) to empty."""
FLOOD_SEED = 1
NFT_TABLE = "fgbench_e2e"
FILTER_DROP_REASONS = ("banned", "rule_drop", "rule_rate_limited", "rate_limited")
"""floodguard verdict reasons that drop a packet (the others pass or answer it)."""


class E2eError(RuntimeError):
    """A configuration could not be set up; the message says what to install or check."""


# --- CPU time from /proc/stat ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CpuTimes:
    """The ``cpu`` line of /proc/stat at one moment, in nanoseconds, with the monotonic time it was read."""

    t: float
    busy_ns: int
    """user + nice + system + irq + softirq + steal, all CPUs (guest time is inside user already)."""
    steal_ns: int

    @classmethod
    def read(cls) -> CpuTimes:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        t = time.monotonic()
        user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        tick = NS // os.sysconf("SC_CLK_TCK")
        return cls(t, (user + nice + system + irq + softirq + steal) * tick, steal * tick)

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.t - other.t, self.busy_ns - other.busy_ns, self.steal_ns - other.steal_ns)


def _cpu_accounting_note() -> str | None:
    """How the running kernel accounts CPU time, when its configuration is readable (/proc/config.gz)."""
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            config = f.read()
    except OSError:
        return None
    hz = next((line.split("=", 1)[1] for line in config.splitlines() if line.startswith("CONFIG_HZ=")), "?")
    if "CONFIG_IRQ_TIME_ACCOUNTING=y" in config:
        return f"CPU time: the kernel measures irq and softirq time exactly (IRQ_TIME_ACCOUNTING, HZ={hz})"
    return (f"CPU time: the kernel samples each CPU's state at every tick (HZ={hz}, no IRQ_TIME_ACCOUNTING): "
            "the figures are statistical, good to a few percent over a window of several seconds")


# --- configurations ----------------------------------------------------------------------------


class Config(Protocol):
    """One way of dealing with the flood on ``gw-in``: installed for its window, removed after it."""

    name: str
    what: str

    def install(self) -> None: ...

    def remove(self) -> None: ...

    def dropped(self) -> int | None:
        """Packets this filter has dropped so far, by its own counter (None: it has none)."""
        ...


class NoFilter:
    """The unprotected gateway."""

    name = "no_filter"
    what = "nothing on gw-in: the flood is routed to the server network"

    def install(self) -> None:
        pass

    def remove(self) -> None:
        pass

    def dropped(self) -> int | None:
        return None


class XdpConfig:
    """An already loaded XDP program, attached natively to ``gw-in`` while its configuration runs."""

    def __init__(self, name: str, what: str, lab: Lab, prog_fd: int, counter: Callable[[], int]) -> None:
        self.name = name
        self.what = what
        self.lab = lab
        self.prog_fd = prog_fd
        self._counter = counter
        self._prog_id: int | None = None

    def install(self) -> None:
        from agent.datapath import attach

        itf = self.lab.gateway_ingress
        # attach() refuses to overwrite a program it does not own, so a leftover is an error, not replaced.
        res = attach.attach(itf.ifname, self.prog_fd, attach.XdpMode.NATIVE, netns=itf.ns)
        self._prog_id = res.prog_id

    def remove(self) -> None:
        """Detach our program, and only ours: a program found there instead is left alone."""
        from agent.datapath import attach
        from agent.datapath.errors import DatapathError

        prog_id, self._prog_id = self._prog_id, None
        if prog_id is None:
            return
        itf = self.lab.gateway_ingress
        try:
            state = attach.xdp_state(itf.ifname, netns=itf.ns)
        except (DatapathError, OSError):
            return  # the interface (or namespace) is gone, and the program with it
        if state.prog_id == prog_id:
            attach.detach(itf.ifname, netns=itf.ns, only_floodguard=False)

    def dropped(self) -> int | None:
        return self._counter()


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise E2eError(f"{name} is not installed: apt-get install {package}")
    return path


class IptablesRaw:
    """``iptables -t raw -A PREROUTING -s <foreign> -j DROP`` in the gateway namespace."""

    name = "iptables_raw"

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.iptables = _tool("iptables", "iptables")
        version = subprocess.run([self.iptables, "-V"], capture_output=True, text=True, check=False).stdout.strip()
        self.version = version
        self.nft_backend = "nf_tables" in version
        self.rule = ["PREROUTING", "-s", str(lab.foreign_v4), "-j", "DROP"]
        self.what = f"iptables -t raw -A {' '.join(self.rule)} in the gateway namespace ({version or 'iptables'})"
        self._installed = False

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.lab.topology.run(self.lab.gateway, [self.iptables, "-w", *args], check=check, text=True)

    def install(self) -> None:
        self._installed = True
        self._run("-t", "raw", "-A", *self.rule)

    def remove(self) -> None:
        """Delete the rule, and with the nf_tables backend the table it created: an empty
        base chain is still a hook every later configuration's packets would pass through."""
        if not self._installed:
            return
        self._installed = False
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run("-t", "raw", "-D", *self.rule, check=False)
            if self.nft_backend and shutil.which("nft"):
                self.lab.topology.run(self.lab.gateway, ["nft", "delete", "table", "ip", "raw"], check=False)

    def dropped(self) -> int | None:
        out = self._run("-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n").stdout
        net = str(self.lab.foreign_v4)
        for line in out.splitlines():
            cols = line.split()
            if len(cols) >= 8 and cols[2] == "DROP" and net in cols:
                return int(cols[0])
        raise E2eError(f"the iptables rule for {net} is missing from the raw table:\n{out}")


class NftIngress:
    """A netdev table whose ingress chain on ``gw-in`` drops the foreign range."""

    name = "nftables_ingress"

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.nft = _tool("nft", "nftables")
        dev = lab.gateway_ingress.ifname
        self.ruleset = (
            f"table netdev {NFT_TABLE} {{\n"
            f"  chain ingress {{\n"
            f'    type filter hook ingress device "{dev}" priority 0; policy accept;\n'
            f"    ip saddr {lab.foreign_v4} counter drop\n"
            f"  }}\n"
            f"}}\n"
        )
        self.what = f"nft: table netdev {NFT_TABLE}, hook ingress on gw-in: ip saddr {lab.foreign_v4} counter drop"
        self._installed = False

    def install(self) -> None:
        self._installed = True
        self.lab.topology.run(self.lab.gateway, [self.nft, "-f", "-"], input=self.ruleset, text=True)

    def remove(self) -> None:
        if not self._installed:
            return
        self._installed = False
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.lab.topology.run(self.lab.gateway, [self.nft, "delete", "table", "netdev", NFT_TABLE], check=False)

    def dropped(self) -> int | None:
        out = self.lab.topology.run(self.lab.gateway, [self.nft, "-j", "list", "table", "netdev", NFT_TABLE],
                                    text=True).stdout
        for item in json.loads(out).get("nftables", []):
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
        raise E2eError(f"the nft rule's counter is missing from table netdev {NFT_TABLE}:\n{out}")


# --- the XDP programs ---------------------------------------------------------------------------


def _percpu_sum(map_fd: int, key: int) -> int:
    """A per-CPU u64 array's entry ``key``, summed over CPUs."""
    from agent.datapath import bpfsys as sysbpf

    ncpu = sysbpf.possible_cpus()
    stride = sysbpf.percpu_value_size(8)
    buf = (ct.c_char * (stride * ncpu))()
    if not sysbpf.map_lookup(map_fd, ct.c_uint32(key), buf):
        return 0
    raw = bytes(buf)
    return sum(int.from_bytes(raw[c * stride:c * stride + 8], "little") for c in range(ncpu))


POLICY = """\
# floodguard bench e2e: deny the lab's attackers, protect its servers.
interfaces: [{{name: {ifname}, mode: native}}]
deny:
  prefixes: [{{prefix: {foreign}, reason: "bench e2e: the attackers' foreign range"}}]
protect:
  - name: servers
    prefixes: [{servers}]
mitigation: {{max_bans: 1k}}
capacity:
  prefixes: 4096
  hosts4: 4096
  prefixes6: 1024
  groups: 16
  sources: 65536
  sources6: 1024
  destinations: 1024
  verified: 1024
"""


def load_floodguard(stack: contextlib.ExitStack, lab: Lab, pin_dir: str, workdir: str) -> XdpConfig:
    """Build the real program, apply the bench policy the way the daemon does, return its configuration."""
    from agent.contract import abi
    from agent.daemon.reload import PolicyRuntime
    from agent.datapath import loader
    from agent.datapath.mapport import MapPort
    from agent.datapath.maps import Maps
    from agent.policy import load_policy
    from agent.policy.compile import compile_policy

    itf = lab.gateway_ingress
    path = Path(workdir) / "policy.yaml"
    path.write_text(POLICY.format(ifname=itf.ifname, foreign=lab.foreign_v4, servers=lab.server_net_v4))
    result = load_policy(path)
    if result.policy is None:
        raise E2eError("the bench policy is not valid:\n" + "\n".join(str(e) for e in result.errors))
    compiled = compile_policy(result.policy)
    prog = loader.build(loader.BuildOptions(pin_dir=pin_dir, capacity=compiled.capacity))
    stack.callback(prog.close)
    maps = Maps.from_program(prog)
    stack.callback(maps.close)
    port = MapPort(maps)
    stack.callback(port.close)
    outcome = PolicyRuntime(path, port).adopt(result, compiled, trigger="bench")
    if not outcome.ok:
        raise E2eError("cannot apply the bench policy: " + "; ".join(outcome.errors))
    port.set_ifslot(itf.ifindex, 1)  # what the daemon does for its first interface
    drops = [abi.Reason[r.upper()].value for r in FILTER_DROP_REASONS]

    def counter() -> int:
        packets = port.read_stats()[..., 0]  # [slot, reason, class, mon]
        return int(packets[:, drops].sum())

    return XdpConfig("floodguard", f"the real program (native XDP), policy: deny {lab.foreign_v4}", lab,
                     prog.fd, counter)


def load_xdp_drop(stack: contextlib.ExitStack, lab: Lab, pin_dir: str) -> XdpConfig:
    """The reference: bpf/bench_drop.bpf.c, whose per-CPU ``bench_seq`` counts every packet it drops."""
    from agent.datapath import loader

    prog = loader.build(loader.BuildOptions(pin_dir=pin_dir, source="bench_drop.bpf.c", function="xdp_drop"))
    stack.callback(prog.close)
    seq_fd = prog.map_fd("bench_seq")
    return XdpConfig(REFERENCE, "bpf/bench_drop.bpf.c (native XDP): count, rewrite the source, XDP_DROP", lab,
                     prog.fd, lambda: _percpu_sum(seq_fd, 0))


def load_xdp_filter(stack: contextlib.ExitStack, lab: Lab, pin_dir: str) -> XdpConfig:
    """xdp-filter's own object, loaded and filled as `bench datapath` does, every foreign address listed."""
    from agent.bench.datapath import XDP_FILTER_PROGRAM, _fill_xdp_filter, _xdp_filter_actions, find_xdp_filter

    path = find_xdp_filter()
    if path is None:
        raise E2eError("xdp-filter's objects (xdpfilt_alw_ip.o) are missing: apt-get install xdp-tools")
    net = lab.foreign_v4
    addrs = list(range(int(net.network_address), int(net.broadcast_address) + 1))
    obj = _util.LibbpfObject(str(path), pin_dir)
    stack.callback(obj.close)
    obj.set_max_entries("filter_ipv4", len(addrs))
    obj.load()
    _fill_xdp_filter(obj.map_fd("filter_ipv4"), addrs)
    return XdpConfig("xdp_filter", f"xdp-filter {path.name} (native XDP), all {len(addrs):,} addresses of {net} "
                     "listed as sources", lab, obj.program_fd(XDP_FILTER_PROGRAM),
                     lambda: _xdp_filter_actions(obj).get("drop", 0))


# --- one measurement ------------------------------------------------------------------------------

SLICE_SECONDS = 1.0
"""trafgen's budget period: every whole second of a flood carries the same packets."""
BASELINE_SLICE_SECONDS = 0.5
SETTLE_SECONDS = 0.5
"""After installing a filter, before the baseline: its own work (netlink, a process) is not the idle rate."""
IDLE_TOLERANCE_CPUS = 0.05
"""Baseline slices busier than the median by more than this were other work arriving; they are left out."""
QUIET_CPUS = 0.25
"""An idle rate above this (of all CPUs together) means other work is running: wait for it to pass."""
DEFAULT_WAIT_QUIET = 10.0
DEFAULT_RETRIES = 1
DISAGREEMENT = 0.25
"""A window whose /proc/stat figure is further than this from its attributed one was disturbed."""
OUTLIER_MADS = 4.0
OUTLIER_FLOOR = 0.15
"""A slice is used when its ns/packet is within OUTLIER_MADS scaled MADs of the median, or within 15% of it."""


@dataclasses.dataclass(frozen=True)
class Point:
    """The machine's CPU time and the packets ``gw-in`` had received, at one moment."""

    cpu: CpuTimes
    rx: int


@dataclasses.dataclass(frozen=True)
class Slice:
    """CPU time spent and packets received between two points (about one second of flood)."""

    seconds: float
    busy_ns: int
    steal_ns: int
    rx: int

    @classmethod
    def between(cls, a: Point, b: Point) -> Slice:
        d = b.cpu - a.cpu
        return cls(d.t, d.busy_ns, d.steal_ns, b.rx - a.rx)


def _ksoftirqd_pids() -> list[int]:
    """The per-CPU softirq threads: network work deferred out of the sender's context lands there."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/comm") as f:
                if f.read().startswith("ksoftirqd/"):
                    pids.append(int(entry))
    return pids


def _tasks_cpu_ns(pids: Sequence[int]) -> int:
    """utime + stime of the given tasks (a task that is gone counts nothing)."""
    tick = NS // os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) * tick
    return total


def _children_cpu_ns() -> int:
    """CPU time of every descendant this process has reaped so far (a flood counts once trafgen is reaped)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return round((r.ru_utime + r.ru_stime) * 1e9)


@dataclasses.dataclass
class Window:
    """What one configuration's flood measured in one round."""

    config: str
    round: int
    idle_ns_per_s: float
    """The machine's busy rate just before, filter installed, no flood (other work, the probes)."""
    slices: list[Slice]
    sent: int
    """Packets the attacker's interface sent in the window."""
    reached_server: int
    """Packets the server's interface received in the window (flood that got through, and legit traffic)."""
    dropped: int | None
    """Packets the filter's own counter says it dropped in the window (None: no filter)."""
    attributed_ns: float
    """CPU of trafgen's process tree (its start-up subtracted) and of the ksoftirqd threads."""
    flood: tuple[float, float]
    """Flood start and end (``time.monotonic()``)."""
    waited_for_quiet: float = 0.0
    """Seconds spent measuring the idle rate again because other work kept the machine busy."""
    tries: int = 1
    """Windows measured for this one (the rest disagreed more with the attributed figure)."""

    @property
    def rx(self) -> int:
        """Packets ``gw-in`` received in the window."""
        return sum(s.rx for s in self.slices)

    def net_ns(self, s: Slice) -> float:
        """A slice's CPU time minus what the machine spends idle in as long."""
        return s.busy_ns - self.idle_ns_per_s * s.seconds


@dataclasses.dataclass(frozen=True)
class Estimate:
    """ns per packet from the slices that agree with each other."""

    ns_per_packet: float | None
    used: int
    total: int


def estimate(windows: Sequence[Window]) -> Estimate:
    """Pooled net CPU over pooled packets, over the slices near the median.

    Other work on the machine arrives in bursts: a slice it lands in costs
    more per packet than its neighbours, and is left out. With fewer than
    three slices every slice is used.
    """
    pairs = [(w.net_ns(s), s.rx) for w in windows for s in w.slices if s.rx > 0]
    if not pairs:
        return Estimate(None, 0, 0)
    if len(pairs) >= 3:
        ratios = [net / rx for net, rx in pairs]
        med = statistics.median(ratios)
        mad = statistics.median(abs(r - med) for r in ratios) * 1.4826
        limit = max(OUTLIER_MADS * mad, OUTLIER_FLOOR * abs(med))
        kept = [p for p, r in zip(pairs, ratios, strict=True) if abs(r - med) <= limit]
    else:
        kept = pairs
    return Estimate(sum(n for n, _ in kept) / sum(rx for _, rx in kept), len(kept), len(pairs))


class _Bench:
    """The lab, its counters and the flood settings; measures one configuration at a time."""

    def __init__(self, lab: Lab, stack: contextlib.ExitStack, *, pps: int, seconds: float, baseline: float,
                 recipe: str, wait_quiet: float) -> None:
        topo = lab.topology
        self.wait_quiet = wait_quiet
        self.lab = lab
        self.pps = pps
        self.seconds = seconds
        self.baseline = baseline
        self.recipe = recipe
        self.gw = stack.enter_context(LinkCounter(topo, lab.gateway, lab.gateway_ingress.ifname))
        atk = lab.attackers[0]
        self.atk = stack.enter_context(LinkCounter(topo, atk.ns, atk.ifname))
        self.srv = stack.enter_context(LinkCounter(topo, lab.server, lab.server_link.ifname))
        self.ksoftirqd = _ksoftirqd_pids()
        self.startup_ns = 0.0

    def _point(self) -> Point:
        return Point(CpuTimes.read(), self.gw.read().rx_packets)

    def _flood(self, pps: int, seconds: float) -> Flood:
        return Flood(self.lab, self.recipe, pps=pps, duration=seconds, seed=FLOOD_SEED)

    def calibrate(self) -> float:
        """CPU of starting and stopping trafgen (one packet): subtracted from every attributed window."""
        costs = []
        for _ in range(2):
            before = _children_cpu_ns()
            flood = self._flood(1, 1.0)
            try:
                flood.start()
                flood.wait(timeout=15.0)
            finally:
                flood.stop()
            costs.append(_children_cpu_ns() - before)
        self.startup_ns = float(min(costs))
        return self.startup_ns

    def _idle_rate(self) -> float:
        """Busy ns per second with nothing flooding: the mean of the baseline's quiet slices."""
        points = [CpuTimes.read()]
        for i in range(1, max(1, round(self.baseline / BASELINE_SLICE_SECONDS)) + 1):
            time.sleep(max(0.0, points[0].t + i * BASELINE_SLICE_SECONDS - time.monotonic()))
            points.append(CpuTimes.read())
        rates = [(b.busy_ns - a.busy_ns) / (b.t - a.t) for a, b in itertools.pairwise(points)]
        med = statistics.median(rates)
        return statistics.fmean(r for r in rates if r <= med + IDLE_TOLERANCE_CPUS * 1e9)

    def _quiet_idle_rate(self) -> tuple[float, float]:
        """The idle rate, measured again while other work keeps the machine busy, for at most
        ``wait_quiet`` seconds; returns it and how long it waited."""
        started = time.monotonic()
        while True:
            idle = self._idle_rate()
            waited = time.monotonic() - started
            if idle <= QUIET_CPUS * 1e9 or waited + self.baseline > self.wait_quiet:
                return idle, waited

    def measure(self, config: Config, round_: int) -> Window:
        config.install()
        try:
            time.sleep(SETTLE_SECONDS)
            idle, waited = self._quiet_idle_rate()
            # Packets sent, dropped and let through count from before the flood starts to after it drained.
            d0 = config.dropped()
            a0, s0 = self.atk.read().tx_packets, self.srv.read().rx_packets
            ru0, ks0 = _children_cpu_ns(), _tasks_cpu_ns(self.ksoftirqd)
            rx0 = self.gw.read().rx_packets
            flood = self._flood(self.pps, self.seconds)
            try:
                flood.start()
                # CPU counts from here: trafgen's start-up is not per-packet work. gw-in's packets
                # count from before the start: trafgen sends as soon as it is running, before
                # start() returns, and those packets belong to the first slice.
                points = [Point(CpuTimes.read(), rx0)]
                deadline = points[0].cpu.t + self.seconds + 10.0
                k = 1
                while flood.running and time.monotonic() < deadline:
                    boundary = points[0].cpu.t + k * SLICE_SECONDS
                    while flood.running and time.monotonic() < boundary:
                        time.sleep(0.02)
                    if flood.running:
                        points.append(self._point())
                        k += 1
                end = time.monotonic()
            finally:
                flood.stop()
            time.sleep(DRAIN_SECONDS)
            points.append(self._point())
            a1, s1 = self.atk.read().tx_packets, self.srv.read().rx_packets
            ru1, ks1 = _children_cpu_ns(), _tasks_cpu_ns(self.ksoftirqd)
            d1 = config.dropped()
        finally:
            config.remove()
        # The flood's last lanes finish just before its end: the short tail (plus the drain) joins
        # the slice before it.
        if len(points) >= 3 and points[-1].cpu.t - points[-2].cpu.t < SLICE_SECONDS:
            del points[-2]
        return Window(
            config=config.name,
            round=round_,
            idle_ns_per_s=idle,
            slices=[Slice.between(a, b) for a, b in itertools.pairwise(points)],
            sent=a1 - a0,
            reached_server=s1 - s0,
            dropped=None if d0 is None or d1 is None else d1 - d0,
            attributed_ns=(ru1 - ru0 - self.startup_ns) + (ks1 - ks0),
            flood=(points[0].cpu.t, end),
            waited_for_quiet=waited,
        )


# --- the run --------------------------------------------------------------------------------------


def _order(names: Sequence[str], round_: int) -> list[str]:
    ordered = [n for n in RUN_ORDER if n in names]
    k = round_ % len(ordered)
    return ordered[k:] + ordered[:k]


def _load_configs(stack: contextlib.ExitStack, lab: Lab, root: str, workdir: str, names: Sequence[str],
                  say: Callable[[str], None], notes: list[str]) -> dict[str, Config]:
    """Build and load everything before the first window, so no window pays for a compiler."""
    loaders: dict[str, Callable[[], Config]] = {
        "xdp_drop": lambda: load_xdp_drop(stack, lab, f"{root}/xdp-drop"),
        "floodguard": lambda: load_floodguard(stack, lab, f"{root}/floodguard", workdir),
        "xdp_filter": lambda: load_xdp_filter(stack, lab, f"{root}/xdp-filter"),
        "nftables_ingress": lambda: NftIngress(lab),
        "iptables_raw": lambda: IptablesRaw(lab),
        "no_filter": NoFilter,
    }
    out: dict[str, Config] = {}
    for name in names:
        say(f"{name}: setting up")
        try:
            out[name] = loaders[name]()
        except E2eError as e:
            notes.append(f"{name}: not measured: {e}")
            say(f"{name}: not measured: {e}")
    return out


def _disagreement(w: Window) -> float:
    """How far the window's /proc/stat figure is from its attributed one (0.1 = 10%; inf: no figure)."""
    est = estimate([w])
    if est.ns_per_packet is None or w.rx == 0 or w.attributed_ns <= 0:
        return math.inf
    attributed = w.attributed_ns / w.rx
    return abs(est.ns_per_packet - attributed) / attributed


def _summary(w: Window) -> str:
    est = estimate([w])
    waited = f" after waiting {w.waited_for_quiet:.0f} s for quiet" if w.waited_for_quiet else ""
    return (f"{w.rx:,} packets at gw-in, {_fmt(est.ns_per_packet, ',.0f')} ns of CPU each ({est.used}/{est.total} "
            f"slices, idle {w.idle_ns_per_s / 1e9:.2f} CPUs{waited}), "
            f"attributed {w.attributed_ns / max(w.rx, 1):,.0f} ns")


def _legit_window(w: Window, timeout: float) -> tuple[float, float]:
    """Requests that started during the flood and were settled before it ended, when the flood is long
    enough: a request started in its last seconds retries after it, with the flood gone (or, for a filter,
    removed), and would count as a success of the configuration."""
    start, end = w.flood
    return (start, end - timeout) if end - start >= 2 * timeout else (start, end)


def run(
    pps: int = DEFAULT_PPS,
    seconds: float = DEFAULT_SECONDS,
    *,
    baseline: float = DEFAULT_BASELINE,
    rounds: int = 1,
    recipe: str = DEFAULT_RECIPE,
    link_mbit: float | None = DEFAULTS.server_link_mbit,
    configs: Sequence[str] = CONFIGS,
    wait_quiet: float = DEFAULT_WAIT_QUIET,
    retries: int = DEFAULT_RETRIES,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build a lab, measure every configuration, tear it all down; the result is what ``--json`` prints."""
    from agent.lab.topology import build_lab, run_prefix
    from agent.lab.traffic import LegitServer, limit_server_link

    say = progress or (lambda _msg: None)
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown configuration(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    if recipe not in RECIPES:
        raise ValueError(f"unknown flood recipe {recipe!r}; known: {', '.join(RECIPES)}")
    names = [c for c in CONFIGS if c in configs or c == REFERENCE]
    started = time.monotonic()
    notes: list[str] = []
    windows: list[Window] = []
    legit: dict[str, list[ProbeStats]] = {}
    with contextlib.ExitStack() as stack:
        # Holds signals_end_the_run: SIGTERM and SIGHUP clean up as Ctrl-C does.
        root = stack.enter_context(_util.pin_root("floodguard-bench-e2e"))
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="floodguard-bench-e2e-"))
        say("building the lab")
        lab = stack.enter_context(build_lab(run_prefix("e2e"), attackers=1, clients=1, ipv6=False))
        loaded = _load_configs(stack, lab, root, workdir, names, say, notes)
        if link_mbit:
            stack.enter_context(limit_server_link(lab, link_mbit))
        stack.enter_context(LegitServer(lab))
        probe = Probe(lab, "http")
        stack.callback(probe.stop)
        probe.start()
        bench = _Bench(lab, stack, pps=pps, seconds=seconds, baseline=baseline, recipe=recipe,
                       wait_quiet=wait_quiet)
        startup = bench.calibrate()
        say(f"trafgen start-up and exit: {startup / 1e6:.1f} ms of CPU (subtracted from the attributed figure)")
        for r in range(rounds):
            for name in _order(list(loaded), r):
                say(f"{name}: measuring" + (f" (round {r + 1} of {rounds})" if rounds > 1 else ""))
                tries = [bench.measure(loaded[name], r)]
                say(f"{name}: {_summary(tries[-1])}")
                while _disagreement(tries[-1]) > DISAGREEMENT and len(tries) <= retries:
                    say(f"{name}: other work on the machine inflated /proc/stat; measuring again")
                    tries.append(bench.measure(loaded[name], r))
                    say(f"{name}: {_summary(tries[-1])}")
                best = min(tries, key=_disagreement)
                best.tries = len(tries)
                windows.append(best)
        probe.stop()  # requests in flight finish: every window's samples are in
        for w in windows:
            legit.setdefault(w.config, []).append(probe.stats(*_legit_window(w, probe.timeout)))
    return _result(names, windows=windows, legit=legit, notes=notes, pps=pps, seconds=seconds,
                   baseline=baseline, rounds=rounds, recipe=recipe, link_mbit=link_mbit,
                   what={n: c.what for n, c in loaded.items()}, startup_ns=bench.startup_ns,
                   took=time.monotonic() - started)


def _row(name: str, ws: Sequence[Window], legit: Sequence[ProbeStats], what: str) -> dict[str, Any]:
    rx = sum(w.rx for w in ws)
    est = estimate(ws)
    slices = [s for w in ws for s in w.slices]
    raw = sum(s.busy_ns for s in slices)
    drops = [w.dropped for w in ws]
    attempts = sum(s.attempts for s in legit)
    successes = sum(s.successes for s in legit)
    flood_seconds = sum(w.flood[1] - w.flood[0] for w in ws)
    return {
        "cpu_ns_per_packet": None if est.ns_per_packet is None else round(est.ns_per_packet, 1),
        "ratio_to_xdp_drop": None,
        "packets": rx,
        "dropped": None if any(d is None for d in drops) else sum(d for d in drops if d is not None),
        "extra_ns_over_xdp_drop": None,
        "attributed_ns_per_packet": round(sum(w.attributed_ns for w in ws) / rx, 1) if rx else None,
        "attributed_ratio_to_xdp_drop": None,
        "cpu_ns_per_packet_raw": round(raw / rx, 1) if rx else None,
        "slices_used": f"{est.used}/{est.total}",
        "sent": sum(w.sent for w in ws),
        "reached_server": sum(w.reached_server for w in ws),
        "flood_pps": round(sum(w.sent for w in ws) / flood_seconds) if flood_seconds > 0 else None,
        "idle_busy_cpus": round(statistics.fmean(w.idle_ns_per_s for w in ws) / 1e9, 3),
        "waited_for_quiet_seconds": round(sum(w.waited_for_quiet for w in ws), 1),
        "remeasured": sum(w.tries - 1 for w in ws),
        "flood_busy_cpus": round(raw / sum(s.seconds for s in slices) / 1e9, 3) if slices else None,
        "steal_ns_per_packet": round(sum(s.steal_ns for s in slices) / rx, 1) if rx else None,
        "legit_http_success_pct": (round(100.0 * successes / attempts, 1)
                                   if attempts and name != REFERENCE else None),
        "legit_http_attempts": attempts,
        "what": what,
    }


def _doubts(name: str, row: dict[str, Any]) -> list[str]:
    """What makes a row's /proc/stat figure less trustworthy, in one note (or none)."""
    why = []
    if row["idle_busy_cpus"] > QUIET_CPUS:
        why.append(f"other work kept {row['idle_busy_cpus']:.2f} CPUs busy before its flood (waited "
                   f"{row['waited_for_quiet_seconds']:g} s for it to pass)")
    used, total = (int(x) for x in row["slices_used"].split("/"))
    if used < total:
        why.append(f"{total - used} of {total} one-second slices left out (far from the others: other work)")
    if row["remeasured"]:
        why.append(f"measured again {row['remeasured']} time(s) (other work disturbed /proc/stat), the window "
                   "closest to the attributed figure kept")
    att, ns = row["attributed_ns_per_packet"], row["cpu_ns_per_packet"]
    disturbed = bool(att) and abs(ns - att) > DISAGREEMENT * att
    if disturbed:
        why.append(f"/proc/stat says {ns:,.0f} ns, the attributed figure {att:,.0f} ns")
    if not why:
        return []
    return [f"{name}: " + "; ".join(why) + (": trust the attributed figure" if disturbed else "")]


def _result(names: Sequence[str], *, windows: Sequence[Window], legit: dict[str, list[ProbeStats]],
            notes: list[str], pps: int, seconds: float, baseline: float, rounds: int, recipe: str,
            link_mbit: float | None, what: dict[str, str], startup_ns: float, took: float) -> dict[str, Any]:
    """Pool each configuration's windows, take the ratios, say what looks wrong."""
    configs: dict[str, dict[str, Any]] = {}
    for name in names:
        ws = [w for w in windows if w.config == name]
        if ws:
            configs[name] = _row(name, ws, legit.get(name, []), what.get(name, ""))
        else:
            configs[name] = {"cpu_ns_per_packet": None, "ratio_to_xdp_drop": None, "packets": 0, "dropped": None,
                             "what": what.get(name, "not measured")}
    ref = configs.get(REFERENCE, {})
    for row in configs.values():
        ns, att = row.get("cpu_ns_per_packet"), row.get("attributed_ns_per_packet")
        if ns is not None and ref.get("cpu_ns_per_packet"):
            row["ratio_to_xdp_drop"] = round(ns / ref["cpu_ns_per_packet"], 3)
            row["extra_ns_over_xdp_drop"] = round(ns - ref["cpu_ns_per_packet"], 1)
        if att is not None and ref.get("attributed_ns_per_packet"):
            row["attributed_ratio_to_xdp_drop"] = round(att / ref["attributed_ns_per_packet"], 3)
    ref_ns, ref_att = ref.get("cpu_ns_per_packet"), ref.get("attributed_ns_per_packet")
    if ref_ns is not None and ref_att and abs(ref_ns - ref_att) > DISAGREEMENT * ref_att:
        notes.append("xdp_drop, the reference, has a disturbed /proc/stat figure: every /proc/stat ratio is off by "
                     "as much; read the attributed ratios")
    for name, row in configs.items():
        if row.get("cpu_ns_per_packet") is None:
            continue
        dropped, sent = row["dropped"], row["sent"]
        if name != "no_filter" and dropped is not None and sent and dropped < 0.99 * sent:
            notes.append(f"{name}: dropped only {dropped:,} of the {sent:,} flood packets sent: its figure is not "
                         "the cost of dropping the whole flood")
        notes.extend(_doubts(name, row))
    link = f"{link_mbit:g} Mbit/s" if link_mbit else "unlimited"
    accounting = _cpu_accounting_note()
    all_notes = [
        (f"flood: one trafgen process, recipe {recipe} from spoofed sources in the foreign range, {pps:,} pps for "
        f"{seconds:g} s per configuration and round ({rounds} round(s)); the gateway's link to the servers "
        f"{link}"),
        ("cpu_ns_per_packet: CPU time of the whole machine (/proc/stat, all CPUs: user+nice+system+irq+softirq+"
        "steal) in each one-second slice of the flood, minus the idle busy rate measured for "
        f"{baseline:g} s just before (same filter installed, no flood), over the packets gw-in received in the "
        "slice; slices far from the median are left out, the rest pooled. cpu_ns_per_packet_raw: every slice, "
        "nothing subtracted"),
        ("attributed_ns_per_packet: the CPU time of trafgen's process tree (rusage; without IRQ time accounting "
        "the softirq work done in its context, which is the whole path through the lab, is charged to it) plus "
        f"the ksoftirqd threads, minus trafgen's start-up ({startup_ns / 1e6:.1f} ms per run), over the same "
        "packets: blind to other work on the machine, and to work done from timers in other contexts (the "
        "server link's queue)"),
        ("every figure includes the generator and the upstream router's forwarding, the same in every "
        "configuration: ratios are compressed towards 1; extra_ns_over_xdp_drop is what the configuration adds "
        "over the cheapest drop"),
        ("XDP on a veth is not XDP on a NIC: the packet reaches gw-in as an skb the upstream router built, and "
        "veth's native XDP first moves it through a ring into NAPI and, as it has less than 256 bytes of "
        "headroom, copies it into a fresh page (veth_convert_skb_to_xdp_buff) before the program runs. So every "
        "XDP configuration here pays more per packet than nftables' ingress hook or iptables' raw table, which "
        "drop the skb as it is. On a NIC driver XDP runs on the receive buffer before any skb exists. Compare "
        "the XDP configurations with each other and with xdp_drop; the skb hooks' figures are what they cost "
        "on a veth"),
        ("floodguard: the program and a policy applied with PolicyRuntime (the daemon's path), not the daemon "
        "process: this is the data plane's CPU"),
        ("legitimate success: HTTP probes (new connection + GET, 20/s, 2 s timeout) from a client namespace to "
        "the server, those started during the flood and settled before it ended; xdp_drop drops every packet, "
        "legitimate ones too (it is the floor, not a filter), so it has no figure"),
        *([accounting] if accounting else []),
        *notes,
    ]
    return {
        "pps": pps,
        "seconds": seconds,
        "configs": configs,
        "legit_success_pct": {name: configs.get(name, {}).get("legit_http_success_pct") for name in LEGIT_CONFIGS},
        "notes": all_notes,
        "recipe": recipe,
        "rounds": rounds,
        "baseline_seconds": baseline,
        "link_mbit": link_mbit,
        "took_seconds": round(took, 1),
    }


# --- output ---------------------------------------------------------------------------------------


def _fmt(x: float | int | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def render(result: dict[str, Any]) -> str:
    """The human table; everything in it comes from the result."""
    lines = [
        (f"floodguard bench e2e — CPU per packet of the whole machine while each configuration drops the same "
        f"flood on the gateway's ingress ({result['recipe']}, {result['pps']:,} pps, {result['seconds']:g} s, "
        f"{result['rounds']} round(s))"),
        "",
        f"{'':<17} {'/proc/stat':^23}  {'attributed':^15}",
        (f"{'config':<17} {'ns/pkt':>7} {'x drop':>7} {'+ns':>7}  {'ns/pkt':>7} {'x drop':>7} {'packets':>10} "
        f"{'dropped':>10} {'to server':>10} {'legit http':>10}"),
    ]
    for name, row in result["configs"].items():
        legit = row.get("legit_http_success_pct")
        lines.append(
            f"{name:<17} {_fmt(row['cpu_ns_per_packet'], '7,.0f')} {_fmt(row['ratio_to_xdp_drop'], '7.2f')} "
            f"{_fmt(row.get('extra_ns_over_xdp_drop'), '+7,.0f')}  "
            f"{_fmt(row.get('attributed_ns_per_packet'), '7,.0f')} "
            f"{_fmt(row.get('attributed_ratio_to_xdp_drop'), '7.2f')} {row['packets']:>10,} "
            f"{_fmt(row['dropped'], '10,')} {_fmt(row.get('reached_server'), '10,')} "
            f"{_fmt(legit, '9.1f')}{'%' if legit is not None else ' '}"
        )
    lp = result["legit_success_pct"]
    lines += [
        "",
        (f"legitimate HTTP success during the flood: no filter {_fmt(lp['no_filter'], '.1f')}%, "
        f"floodguard {_fmt(lp['floodguard'], '.1f')}%"),
        "",
        "what each configuration is:",
        *(f"  {name:<17} {row['what']}" for name, row in result["configs"].items()),
        "notes:",
        *(f"  - {n}" for n in result["notes"]),
        f"took {result['took_seconds']:.0f} s",
    ]
    return "\n".join(lines)


EPILOG = """\
examples:
  floodguard bench e2e                          the table (about 2 minutes)
  floodguard bench e2e --json                   the same as JSON (progress goes to stderr)
  floodguard bench e2e --seconds 20 --rounds 2  longer windows, two rounds: steadier (about 6 minutes)
  floodguard bench e2e --configs floodguard,no_filter
                                                only these (xdp_drop, the reference, always runs)
  floodguard bench e2e --recipe syn_flood --link-mbit 0
                                                another flood, no capacity on the server link

Needs root, trafgen (netsniff-ng), iptables, nftables, xdp-tools and kernel
headers (make setup). Builds a throwaway lab of network namespaces and
removes it, with every rule, program and pin, when it ends (Ctrl-C too).
Run it on a quiet machine: other work inflates the /proc/stat figure (the
attributed one is blind to it; the notes say when the two disagree).
"""


def _configs_arg(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in CONFIGS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown configuration(s) {', '.join(bad)}; known: {', '.join(CONFIGS)}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="floodguard bench e2e",
        description="CPU per packet of the whole machine (/proc/stat) while floodguard, iptables (raw), "
        "nftables (netdev ingress), xdp-filter, no filter and a trivial XDP_DROP each handle the same trafgen "
        "flood on the lab gateway's ingress; ratios to the XDP_DROP, and legitimate HTTP success with and "
        "without floodguard.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--pps", type=int, default=DEFAULT_PPS, help=f"flood rate (default {DEFAULT_PPS:,})")
    p.add_argument("--seconds", type=float, default=DEFAULT_SECONDS,
                   help=f"flood length per configuration and round (default {DEFAULT_SECONDS:g})")
    p.add_argument("--baseline", type=float, default=DEFAULT_BASELINE,
                   help=f"idle seconds measured before each flood (default {DEFAULT_BASELINE:g})")
    p.add_argument("--rounds", type=int, default=1, help="measure every configuration this many times (default 1)")
    p.add_argument("--recipe", choices=sorted(RECIPES), default=DEFAULT_RECIPE,
                   help=f"the flood (agent.lab.traffic.RECIPES; default {DEFAULT_RECIPE})")
    p.add_argument("--link-mbit", type=float, default=DEFAULTS.server_link_mbit,
                   help=f"capacity of the gateway's link to the servers; 0: unlimited "
                   f"(default {DEFAULTS.server_link_mbit:g})")
    p.add_argument("--configs", type=_configs_arg, default=list(CONFIGS),
                   help=f"comma-separated subset of {','.join(CONFIGS)} (default: all)")
    p.add_argument("--wait-quiet", type=float, default=DEFAULT_WAIT_QUIET,
                   help=f"before each flood, wait up to this long while other work keeps more than {QUIET_CPUS:g} "
                   f"CPUs busy (default {DEFAULT_WAIT_QUIET:g})")
    p.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                   help=f"measure a window again this many times when its /proc/stat figure is more than "
                   f"{DISAGREEMENT * 100:.0f}%% from the attributed one (default {DEFAULT_RETRIES})")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    if args.pps < 1 or args.seconds <= 0 or args.baseline <= 0 or args.rounds < 1:
        p.error("--pps, --seconds, --baseline and --rounds must be positive")

    from agent import log

    # The lab and the loader log events; on stderr, and only the ones that matter, so --json stays JSON.
    log.configure("warning", "auto", sys.stderr)

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"  {msg}", file=sys.stderr, flush=True)

    from agent.datapath.errors import DatapathError
    from agent.lab.topology import TopologyError

    try:
        result = run(args.pps, args.seconds, baseline=args.baseline, rounds=args.rounds, recipe=args.recipe,
                     link_mbit=args.link_mbit or None, configs=args.configs, wait_quiet=max(0.0, args.wait_quiet),
                     retries=max(0, args.retries), progress=say)
    except KeyboardInterrupt:
        print("floodguard bench e2e: interrupted; the lab, its rules, programs and pins are removed", file=sys.stderr)
        return 130
    except (E2eError, TopologyError, DatapathError) as e:
        print(f"floodguard bench e2e: {e}", file=sys.stderr)
        return 1
    _util.print_result(result, args.json, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
