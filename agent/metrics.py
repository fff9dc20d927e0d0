"""Prometheus metrics: a collector that reads the program's maps at scrape time.

Nothing is copied into prometheus_client objects between scrapes: the
counters live in per-CPU BPF maps, and :class:`FloodguardCollector` sums them
inside ``collect()`` (as prometheus_client's own process_collector reads
/proc). So a scrape always shows what the kernel counted, even counts made
while the daemon was dead, and an idle agent costs nothing between scrapes.

One thing is an event rather than state — the duration of a control tick —
and that is an ordinary histogram in :class:`Instruments`, observed by the
daemon. The detection loop keeps its own counts (attacks by vector, a
time-to-mitigate histogram) and hands a snapshot over as :class:`AttackStats`.

Everything the collector needs from the daemon goes through the small
:class:`MetricsSource` protocol; the registry is always passed in (never the
global one), so tests scrape a fresh registry with a fake source.

docs/metrics.md lists every metric; tests keep it, the Grafana dashboard and
the alert rules in step with what :func:`metric_names` returns.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np
import psutil
import structlog
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.contract import abi
from agent.datapath.addrtable import count_bans
from agent.datapath.errors import DatapathError
from agent.datapath.mapport import MapPort
from agent.datapath.maps import Table, count_hash_entries, count_lpm_entries
from agent.metrics_http import MetricsListenError, MetricsServer, parse_listen, serve

# A control tick should take a few ms (at most 100 ms with a million sources);
# the top buckets catch one that eats its whole interval.
TICK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


_BPF_MAP_TYPE_NAMES = {
    1: "hash",
    2: "array",
    5: "percpu_hash",
    6: "percpu_array",
    9: "lru_hash",
    10: "lru_percpu_hash",
    11: "lpm_trie",
}
_HASH_TYPES = {"hash", "percpu_hash", "lru_hash", "lru_percpu_hash"}

# Verdict reasons that drop a packet (unless counted under monitor); used by
# the alert rules and the dashboard as a regular expression too.
DROP_REASONS = tuple(sorted(abi.DROPPING))


# --------------------------------------------------------------------------- what the daemon provides


@dataclass(frozen=True)
class AttackStats:
    """The detection loop's counts, as the collector shows them (a snapshot the
    loop makes; agent/control/stats.py ControlStats maps onto it field by field).

    Vectors are the detector's names (``syn_flood``, ``udp_reflection``, ...);
    they are bounded by the detector, never by traffic. A vector stays in
    ``total`` once seen, so its ``active`` gauge drops to 0 instead of
    vanishing when its last attack ends.
    """

    active: Mapping[str, int] = field(default_factory=dict)
    """vector -> attacks in progress now."""
    total: Mapping[str, int] = field(default_factory=dict)
    """vector -> attacks started since the agent started (monotonic)."""
    time_to_mitigate: Sequence[tuple[str, int]] = ()
    """Seconds from an attack's first tick over threshold to its first
    mitigation in the maps, as a cumulative histogram: [(upper bound, count of
    observations <= it), ..., ("+Inf", count of all)]. Empty: not shown."""
    time_to_mitigate_sum: float = 0.0
    """Sum of every observation of time_to_mitigate."""
    escalations_total: int = 0
    """Escalations signalled since the agent started: inbound traffic to a
    target, or in total, over the uplink capacity set in the policy."""

    def __post_init__(self) -> None:
        if self.time_to_mitigate and self.time_to_mitigate[-1][0] != "+Inf":
            raise ValueError("time_to_mitigate must end with the +Inf bucket")


@dataclass(frozen=True)
class UpstreamStats:
    """Upstream escalation over BGP (agent/upstream/manager.py Stats maps onto it field by field).

    Peers are the policy's ``upstream.peers`` names, kinds ``flowspec`` and
    ``rtbh``, reasons agent/upstream/guard.py's REASONS: all bounded by the
    policy or the code, never by traffic.
    """

    speaker_up: bool = False
    """gobgpd's API answered at the last tick."""
    sessions: Mapping[str, bool] = field(default_factory=dict)
    """peer name -> BGP session established."""
    announcements: Mapping[str, int] = field(default_factory=dict)
    """kind -> announcements the speaker holds now (monitor mode: none)."""
    refused: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """(kind, reason) -> announcements refused since the agent started."""
    changes: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """(kind, action) -> announced / withdrawn since the agent started."""


class MetricsSource(Protocol):
    """What the collector asks the daemon at each scrape.

    Every member is called from the HTTP server's thread while the control
    tick runs: return snapshots the daemon keeps (or computes under its own
    lock), never a live structure the tick is changing, and return quickly —
    a scrape waits for all of them.
    """

    @property
    def port(self) -> MapPort | None:
        """The maps to read; None before the program is built (the scrape then
        says ``floodguard_up 0``)."""
        ...

    def interfaces(self) -> Mapping[int, str]:
        """Counter slot -> interface name, for the ``interface`` label. Slot 0
        counts every interface without a slot and is labelled ``other``."""
        ...

    def group_names(self) -> Mapping[int, str]:
        """Group id -> protected group name, for the ``group`` label; 0 is
        ``default`` (everything not protected). Only these groups are shown."""
        ...

    def watch_names(self) -> Mapping[int, str]:
        """Watch set id -> name (policy ``watch``), for the ``watch`` label."""
        ...

    def xdp_modes(self) -> Mapping[str, str]:
        """Attached interface -> XDP mode in force (``native`` or ``generic``)."""
        ...

    def reloads(self) -> tuple[int, int]:
        """Policy reloads since start: (applied, rejected)."""
        ...

    def policy_loaded_at(self) -> float:
        """Unix time the policy in force was loaded; 0 = none yet."""
        ...

    def build_seconds(self) -> float:
        """How long BCC took to compile and load the program at start."""
        ...

    def bans_by_origin(self) -> Mapping[str, int]:
        """Enforced bans in force now by origin label (``policy``, ``operator``,
        ``auto``). Read under the agent's lock: the address table recounts only
        after a change (``AddressTable.ban_counts``), never per scrape."""
        ...

    def active_rules(self) -> int:
        """Mitigation rules in force now."""
        ...

    def attack_stats(self) -> AttackStats:
        """Attacks by vector (the detection loop fills it; empty until then)."""
        ...

    def upstream_stats(self) -> UpstreamStats | None:
        """Upstream escalation's state; None when the policy has no upstream block."""
        ...


# --------------------------------------------------------------------------- the host: CPU, memory, NICs


class NicCounters(NamedTuple):
    """Receive counters of one interface since boot, as the kernel keeps them."""

    packets: int
    bytes: int
    dropped: int


class HostProbe(Protocol):
    """The agent's own resource use and the NICs' receive counters."""

    def agent_cpu_seconds(self) -> float: ...

    def agent_memory_bytes(self) -> int: ...

    def nic_counters(self) -> Mapping[str, NicCounters]: ...


class PsutilProbe:
    """HostProbe over psutil: this process, and /proc/net/dev of its namespace."""

    def __init__(self, pid: int | None = None) -> None:
        self._proc = psutil.Process(pid)

    def agent_cpu_seconds(self) -> float:
        t = self._proc.cpu_times()
        return float(t.user + t.system)

    def agent_memory_bytes(self) -> int:
        return int(self._proc.memory_info().rss)

    def nic_counters(self) -> Mapping[str, NicCounters]:
        nics = psutil.net_io_counters(pernic=True)
        return {name: NicCounters(c.packets_recv, c.bytes_recv, c.dropin) for name, c in nics.items()}


# --------------------------------------------------------------------------- map fill


@dataclass(frozen=True)
class MapFill:
    """How full one map is. ``entries`` is None where it means nothing: arrays
    indexed by something else (every /24, every counter) are full by design."""

    name: str
    type: str
    capacity: int
    entries: int | None
    exact: bool = True


def map_type_name(table: Table) -> str:
    return _BPF_MAP_TYPE_NAMES.get(table.map_type, f"type{table.map_type}")


def read_map_fill(port: MapPort, groups_in_use: int) -> list[MapFill]:
    """Capacity of every map, and entries where that says how close it is to
    refusing inserts (bans, prefixes, rules, groups) or to evicting (LRU).

    Arrays carry their "used" count from the model that indexes them:
    src_entries from the address table (index 0 is never used), rules from
    fg_config.n_rules, groups from the policy, ifslots against the counter
    slots (FG_IF_SLOTS - 1: slot 0 is "other").
    """
    out: list[MapFill] = []
    maps = port.maps
    for name in sorted(maps.tables):
        t = maps[name]
        kind = map_type_name(t)
        capacity = t.max_entries
        entries: int | None = None
        exact = True
        if name == "src_entries":
            capacity -= 1
            entries = len(port.addresses.src)
        elif name == "rules":
            entries = int(port.read_config().n_rules)
        elif name == "groups":
            entries = groups_in_use
        elif name == "ifslots":
            capacity = abi.IF_SLOTS - 1
            entries = len(port.ifslots())
        elif kind in _HASH_TYPES:
            entries, exact = count_hash_entries(t)
        elif kind == "lpm_trie":
            entries = count_lpm_entries(t)
        out.append(MapFill(name, kind, capacity, entries, exact))
    return out


# --------------------------------------------------------------------------- the collector


@dataclass(frozen=True)
class _Spec:
    name: str
    kind: str  # counter | gauge | histogram
    labels: tuple[str, ...]
    help: str


_IFACE_LABELS = ("interface", "reason", "class", "monitor")
_GROUP_LABELS = ("group", "class")
_MAP_LABELS = ("map", "type")

# Every metric: what the collector emits plus the two Instruments histograms.
# docs/metrics.md says the same in prose; a test compares the two.
SPECS: tuple[_Spec, ...] = (
    _Spec("floodguard_up", "gauge", (), "1 when this scrape read the program's maps, 0 when it could not"),
    _Spec("floodguard_build_info", "gauge", ("version", "abi"), "Agent version and map ABI version (always 1)"),
    _Spec("floodguard_packets_total", "counter", _IFACE_LABELS, "Packets by interface, verdict reason, class and "
          "monitor flag (monitor=true: would have been dropped, passed)"),
    _Spec("floodguard_bytes_total", "counter", _IFACE_LABELS, "Bytes (whole frames) by interface, verdict reason, "
          "class and monitor flag"),
    _Spec("floodguard_group_packets_total", "counter", _GROUP_LABELS, "IP packets offered to a protected group"),
    _Spec("floodguard_group_bytes_total", "counter", _GROUP_LABELS, "IP bytes offered to a protected group"),
    _Spec("floodguard_group_dropped_packets_total", "counter", _GROUP_LABELS,
          "Packets to a protected group really dropped (monitor drops excluded)"),
    _Spec("floodguard_group_dropped_bytes_total", "counter", _GROUP_LABELS,
          "Bytes to a protected group really dropped (monitor drops excluded)"),
    _Spec("floodguard_group_new_sources_total", "counter", _GROUP_LABELS,
          "Per-source buckets created for a protected group: a spoofing signal"),
    _Spec("floodguard_watch_packets_total", "counter", ("watch", "reason", "monitor"),
          "Packets from a watched source set (policy watch) by verdict reason: what floodguard did to them"),
    _Spec("floodguard_watch_bytes_total", "counter", ("watch", "reason", "monitor"),
          "Bytes from a watched source set by verdict reason"),
    _Spec("floodguard_bans_active", "gauge", ("origin",), "Enforced bans in force, by who made them"),
    _Spec("floodguard_rules_active", "gauge", (), "Mitigation rules in force"),
    _Spec("floodguard_policy_reloads_total", "counter", ("result",), "Policy reloads, applied (ok) or rejected "
          "(failed: the previous policy stays in force)"),
    _Spec("floodguard_policy_loaded_timestamp_seconds", "gauge", (), "Unix time the policy in force was loaded"),
    _Spec("floodguard_tick_duration_seconds", "histogram", (), "Duration of one control tick"),
    _Spec("floodguard_map_entries", "gauge", _MAP_LABELS, "Entries in a map (hash maps over 65536 entries: "
          "estimated from a sample)"),
    _Spec("floodguard_map_capacity", "gauge", _MAP_LABELS, "Entries a map can hold"),
    _Spec("floodguard_program_build_seconds", "gauge", (), "Time BCC took to compile and load the program at start"),
    _Spec("floodguard_interface_info", "gauge", ("interface", "mode"), "Interfaces running the program and their "
          "XDP mode (always 1)"),
    _Spec("floodguard_agent_cpu_seconds_total", "counter", (), "CPU time (user + system) used by the agent"),
    _Spec("floodguard_agent_memory_bytes", "gauge", (), "Resident memory of the agent"),
    _Spec("floodguard_nic_receive_packets_total", "counter", ("interface",),
          "Packets the kernel counted as received on an attached interface"),
    _Spec("floodguard_nic_receive_bytes_total", "counter", ("interface",),
          "Bytes the kernel counted as received on an attached interface"),
    _Spec("floodguard_nic_receive_dropped_packets_total", "counter", ("interface",),
          "Received packets the kernel dropped on an attached interface (rings full, no buffer)"),
    _Spec("floodguard_attacks_active", "gauge", ("vector",), "Attacks in progress, by vector"),
    _Spec("floodguard_attacks_total", "counter", ("vector",), "Attacks detected since the agent started, by vector"),
    _Spec("floodguard_escalations_total", "counter", (), "Escalations signalled: inbound traffic over the uplink "
          "capacity, which only upstream can stop"),
    _Spec("floodguard_upstream_speaker_up", "gauge", (), "1 when the BGP speaker's API (gobgpd) answers"),
    _Spec("floodguard_upstream_session_up", "gauge", ("peer",), "1 when the BGP session with the peer is "
          "established"),
    _Spec("floodguard_upstream_announcements", "gauge", ("kind",), "Announcements the speaker holds, by kind "
          "(flowspec, rtbh)"),
    _Spec("floodguard_upstream_refused_total", "counter", ("kind", "reason"), "Announcements refused by the "
          "guardrails, the cap or the rate limit, by kind and reason"),
    _Spec("floodguard_upstream_changes_total", "counter", ("kind", "action"), "Announcements announced and "
          "withdrawn, by kind"),
    _Spec("floodguard_time_to_mitigate_seconds", "histogram", (),
          "Time from an attack's first tick over threshold to its first mitigation in the maps"),
)
_BY_NAME = {s.name: s for s in SPECS}
# Families read from the maps: absent from a scrape that could not read them.
_DATAPATH = frozenset(
    {"floodguard_packets_total", "floodguard_bytes_total", "floodguard_map_entries", "floodguard_map_capacity"}
    | {s.name for s in SPECS if s.name.startswith(("floodguard_group_", "floodguard_watch_"))}
)


def metric_names() -> list[str]:
    """Every metric family the agent exports (counters with their _total)."""
    return [s.name for s in SPECS]


_Family = CounterMetricFamily | GaugeMetricFamily


def _family(name: str) -> _Family:
    s = _BY_NAME[name]
    if s.kind == "counter":
        return CounterMetricFamily(s.name, s.help, labels=s.labels)
    return GaugeMetricFamily(s.name, s.help, labels=s.labels)


def _histogram(name: str) -> HistogramMetricFamily:
    s = _BY_NAME[name]
    return HistogramMetricFamily(s.name, s.help, labels=s.labels)


_TTM = "floodguard_time_to_mitigate_seconds"


def _le(bound: str) -> str:
    """A bucket bound as prometheus_client writes it ("1" -> "1.0", "+Inf")."""
    value = float(bound)
    return "+Inf" if value == float("inf") else repr(value)


def _version() -> str:
    try:
        return importlib.metadata.version("floodguard")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


FillReader = Callable[[MapPort, int], Sequence[MapFill]]


class FloodguardCollector(Collector):
    """Reads the maps and asks the source at every scrape; keeps no counts itself.

    ``host`` and ``fill`` are injectable so unit tests run without psutil's
    view of this machine or a kernel; ``registry``, when given, registers the
    collector there.
    """

    def __init__(
        self,
        source: MetricsSource,
        *,
        host: HostProbe | None = None,
        fill: FillReader = read_map_fill,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._source = source
        self._host = host if host is not None else PsutilProbe()
        self._fill = fill
        self._version = _version()
        self._log = structlog.get_logger("floodguard.metrics")
        if registry is not None:
            registry.register(self)

    def describe(self) -> Iterable[Metric]:
        """Names only, so the registry can refuse a clash at register time."""
        return [_family(s.name) for s in SPECS if s.kind != "histogram"] + [_histogram(_TTM)]

    def collect(self) -> Iterable[Metric]:
        """One scrape: the maps, the source's state, the host. Families without
        a sample are left out rather than sent empty."""
        fams = {s.name: _family(s.name) for s in SPECS if s.kind != "histogram"}
        src = self._source
        groups = dict(src.group_names())

        up = 0
        port = src.port
        if port is not None:
            try:
                fams.update(self._datapath(port, groups))
                up = 1
            except (DatapathError, OSError) as e:
                # The endpoint stays useful (CPU, reloads, ...) and says what
                # is wrong; floodguard_up 0 raises the alert.
                self._log.warning("metrics_datapath_unreadable", error=str(e))
        fams["floodguard_up"].add_metric([], up)
        fams["floodguard_build_info"].add_metric([self._version, str(abi.ABI_VERSION)], 1)

        bans = src.bans_by_origin()
        for o in abi.Origin:
            fams["floodguard_bans_active"].add_metric([o.label], bans.get(o.label, 0))
        fams["floodguard_rules_active"].add_metric([], src.active_rules())
        ok, failed = src.reloads()
        fams["floodguard_policy_reloads_total"].add_metric(["ok"], ok)
        fams["floodguard_policy_reloads_total"].add_metric(["failed"], failed)
        loaded = src.policy_loaded_at()
        if loaded > 0:
            fams["floodguard_policy_loaded_timestamp_seconds"].add_metric([], loaded)
        fams["floodguard_program_build_seconds"].add_metric([], src.build_seconds())
        modes = src.xdp_modes()
        for ifname in sorted(modes):
            fams["floodguard_interface_info"].add_metric([ifname, modes[ifname]], 1)

        attacks = src.attack_stats()
        for vector in sorted(set(attacks.total) | set(attacks.active)):
            fams["floodguard_attacks_active"].add_metric([vector], attacks.active.get(vector, 0))
            fams["floodguard_attacks_total"].add_metric([vector], attacks.total.get(vector, 0))
        fams["floodguard_escalations_total"].add_metric([], attacks.escalations_total)
        self._upstream(src.upstream_stats(), fams)
        ttm = _histogram(_TTM)
        if attacks.time_to_mitigate:
            # "1" and "1.0" are different label values: write le as
            # prometheus_client writes it for the tick histogram
            buckets = [(_le(le), float(n)) for le, n in attacks.time_to_mitigate]
            ttm.add_metric([], buckets, attacks.time_to_mitigate_sum)

        self._host_metrics(modes, fams)
        return [f for f in (*fams.values(), ttm) if f.samples]

    # --- parts of a scrape ----------------------------------------------------

    def _datapath(self, port: MapPort, groups: Mapping[int, str]) -> dict[str, _Family]:
        """The families read from the maps, all or nothing."""
        fams = {s.name: _family(s.name) for s in SPECS if s.name in _DATAPATH}
        names = self._source.interfaces()
        stats = port.read_stats()
        # Only series that ever counted: 16 slots x 12 reasons x 7 classes x 2
        # would be 2,688 mostly-zero series per metric. The label set is the
        # same on every series.
        for slot, reason, cls, mon in np.argwhere(stats.any(axis=-1)).tolist():
            labels = [
                names.get(slot) or ("other" if slot == 0 else f"slot{slot}"),
                abi.Reason(reason).label,
                abi.TrafficClass(cls).label,
                "true" if mon else "false",
            ]
            pkts, byts = stats[slot, reason, cls, mon].tolist()
            fams["floodguard_packets_total"].add_metric(labels, pkts)
            fams["floodguard_bytes_total"].add_metric(labels, byts)

        gstats = port.read_group_stats()
        fields = ("packets", "bytes", "dropped_packets", "dropped_bytes", "new_sources")
        for gid in sorted(groups):
            if not 0 <= gid < gstats.shape[0]:
                continue
            for cls in abi.LIMIT_CLASS_LIST:
                row = gstats[gid, cls].tolist()
                if not any(row):
                    continue
                for fieldname, value in zip(fields, row, strict=True):
                    fams[f"floodguard_group_{fieldname}_total"].add_metric([groups[gid], cls.label], value)

        watch_names = self._source.watch_names()
        if watch_names:
            wstats = port.read_watch_stats()
            for wid, reason, mon in np.argwhere(wstats.any(axis=-1)).tolist():
                if wid not in watch_names:
                    continue
                labels = [watch_names[wid], abi.Reason(reason).label, "true" if mon else "false"]
                pkts, byts = wstats[wid, reason, mon].tolist()
                fams["floodguard_watch_packets_total"].add_metric(labels, pkts)
                fams["floodguard_watch_bytes_total"].add_metric(labels, byts)

        for m in self._fill(port, len(groups)):
            fams["floodguard_map_capacity"].add_metric([m.name, m.type], m.capacity)
            if m.entries is not None:
                fams["floodguard_map_entries"].add_metric([m.name, m.type], m.entries)
        return fams

    @staticmethod
    def _upstream(st: UpstreamStats | None, fams: dict[str, _Family]) -> None:
        if st is None:
            return
        fams["floodguard_upstream_speaker_up"].add_metric([], int(st.speaker_up))
        for peer in sorted(st.sessions):
            fams["floodguard_upstream_session_up"].add_metric([peer], int(st.sessions[peer]))
        for kind in sorted(st.announcements):
            fams["floodguard_upstream_announcements"].add_metric([kind], st.announcements[kind])
        for (kind, reason), n in sorted(st.refused.items()):
            fams["floodguard_upstream_refused_total"].add_metric([kind, reason], n)
        for (kind, action), n in sorted(st.changes.items()):
            fams["floodguard_upstream_changes_total"].add_metric([kind, action], n)

    def _host_metrics(self, modes: Mapping[str, str], fams: dict[str, _Family]) -> None:
        fams["floodguard_agent_cpu_seconds_total"].add_metric([], self._host.agent_cpu_seconds())
        fams["floodguard_agent_memory_bytes"].add_metric([], self._host.agent_memory_bytes())
        nics = self._host.nic_counters()
        for ifname in sorted(modes):
            c = nics.get(ifname)
            if c is None:  # gone since it was attached; the netlink watcher will notice
                continue
            fams["floodguard_nic_receive_packets_total"].add_metric([ifname], c.packets)
            fams["floodguard_nic_receive_bytes_total"].add_metric([ifname], c.bytes)
            fams["floodguard_nic_receive_dropped_packets_total"].add_metric([ifname], c.dropped)


# --------------------------------------------------------------------------- events the daemon observes


@dataclass(frozen=True)
class Instruments:
    """Histograms of events the daemon observes where they happen.

    ``tick``: after every control tick, ``tick.observe(seconds)``.
    """

    tick: Histogram


def register(
    source: MetricsSource,
    registry: CollectorRegistry,
    *,
    host: HostProbe | None = None,
    fill: FillReader = read_map_fill,
) -> Instruments:
    """Register the collector and the event histograms in ``registry``."""
    FloodguardCollector(source, host=host, fill=fill, registry=registry)
    tick = _BY_NAME["floodguard_tick_duration_seconds"]
    return Instruments(tick=Histogram(tick.name, tick.help, tick.labels, registry=registry, buckets=TICK_BUCKETS))


# --------------------------------------------------------------------------- the HTTP endpoint


@dataclass
class Exporter:
    """What :func:`start` gives the daemon: the endpoint and the histograms it observes."""

    server: MetricsServer
    instruments: Instruments

    def shutdown(self) -> None:
        self.server.shutdown()


def start(
    source: MetricsSource, listen: str, registry: CollectorRegistry | None = None, *, host: HostProbe | None = None
) -> Exporter:
    """Everything the daemon needs in one call: a fresh registry (unless
    given), the collector, the histograms and the endpoint.

    Raises MetricsListenError (an OSError) when it cannot listen.
    """
    registry = registry if registry is not None else CollectorRegistry()
    instruments = register(source, registry, host=host)
    return Exporter(serve(registry, listen), instruments)


__all__ = [
    "DROP_REASONS",
    "AttackStats",
    "Exporter",
    "FloodguardCollector",
    "HostProbe",
    "Instruments",
    "MapFill",
    "MetricsListenError",
    "MetricsServer",
    "MetricsSource",
    "NicCounters",
    "PsutilProbe",
    "UpstreamStats",
    "count_bans",
    "count_hash_entries",
    "count_lpm_entries",
    "metric_names",
    "parse_listen",
    "read_map_fill",
    "register",
    "serve",
    "start",
]
