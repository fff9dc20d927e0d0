"""agent/metrics.py without a kernel: a fake source and a fake port, exact values.

The kernel-facing half (real maps, a live scrape through promtool) is in
tests/bpf/test_metrics_kernel.py.
"""

from __future__ import annotations

import re
import socket
import subprocess
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from agent import metrics
from agent.contract import abi
from agent.datapath.errors import BpfSyscallError
from agent.datapath.mapport import MapPort

REPO = Path(__file__).resolve().parents[2]
R, C = abi.Reason, abi.TrafficClass
FIELDS = ("packets", "bytes", "dropped_packets", "dropped_bytes", "new_sources")


# --------------------------------------------------------------------------- fakes


class FakePort:
    """The two counter reads the collector makes, from arrays a test fills."""

    def __init__(self, groups: int = 4) -> None:
        self.stats = np.zeros((abi.IF_SLOTS, abi.REASON_MAX, abi.CLASS_MAX, 2, 2), dtype=np.uint64)
        self.group_stats = np.zeros((groups, abi.LIMIT_CLASSES, len(FIELDS)), dtype=np.uint64)
        self.watch_stats = np.zeros((abi.MAX_WATCH, abi.REASON_MAX, 2, 2), dtype=np.uint64)
        self.error: Exception | None = None

    def count(self, slot: int, reason: R, cls: C, monitor: int, packets: int, nbytes: int) -> None:
        self.stats[slot, reason, cls, monitor] = (packets, nbytes)

    def read_stats(self) -> np.ndarray[Any, Any]:
        if self.error is not None:
            raise self.error
        return self.stats.copy()

    def read_group_stats(self) -> np.ndarray[Any, Any]:
        return self.group_stats.copy()

    def read_watch_stats(self) -> np.ndarray[Any, Any]:
        return self.watch_stats.copy()


@dataclass
class FakeSource:
    """A MetricsSource with plain fields (the daemon computes these)."""

    fake_port: FakePort | None = field(default_factory=FakePort)
    ifnames: dict[int, str] = field(default_factory=lambda: {1: "eth0", 2: "eth1"})
    groups: dict[int, str] = field(default_factory=lambda: {0: "default", 1: "web", 2: "dns"})
    modes: dict[str, str] = field(default_factory=lambda: {"eth0": "native", "eth1": "generic"})
    reload_counts: tuple[int, int] = (3, 1)
    loaded_at: float = 1_700_000_000.5
    build: float = 2.25
    bans: dict[str, int] = field(default_factory=lambda: {"policy": 10, "operator": 2, "auto": 7})
    rules: int = 4
    attacks: metrics.AttackStats = field(default_factory=metrics.AttackStats)
    upstream: metrics.UpstreamStats | None = None

    @property
    def port(self) -> MapPort | None:
        return cast(MapPort, self.fake_port)

    def interfaces(self) -> Mapping[int, str]:
        return self.ifnames

    def group_names(self) -> Mapping[int, str]:
        return self.groups

    def watch_names(self) -> Mapping[int, str]:
        return {1: "cgnat"}

    def xdp_modes(self) -> Mapping[str, str]:
        return self.modes

    def reloads(self) -> tuple[int, int]:
        return self.reload_counts

    def policy_loaded_at(self) -> float:
        return self.loaded_at

    def build_seconds(self) -> float:
        return self.build

    def bans_by_origin(self) -> Mapping[str, int]:
        return self.bans

    def active_rules(self) -> int:
        return self.rules

    def attack_stats(self) -> metrics.AttackStats:
        return self.attacks

    def upstream_stats(self) -> metrics.UpstreamStats | None:
        return self.upstream


class FakeHost:
    def __init__(self) -> None:
        self.nics = {
            "eth0": metrics.NicCounters(1000, 64000, 3),
            "eth1": metrics.NicCounters(20, 1280, 0),
            "lo": metrics.NicCounters(5, 500, 0),
        }

    def agent_cpu_seconds(self) -> float:
        return 12.5

    def agent_memory_bytes(self) -> int:
        return 123_456_789

    def nic_counters(self) -> Mapping[str, metrics.NicCounters]:
        return self.nics


FILL = [
    metrics.MapFill("buckets4", "lru_hash", 1_048_576, 524_288, exact=False),
    metrics.MapFill("dir4", "array", 1 << 24, None),
    metrics.MapFill("src_entries", "array", 262_143, 29),
]


def fake_fill(port: MapPort, groups: int) -> Sequence[metrics.MapFill]:
    return [*FILL, metrics.MapFill("groups", "array", 1024, groups)]


def populated() -> FakeSource:
    """A source where every metric family has at least one series."""
    src = FakeSource()
    p = src.fake_port
    assert p is not None
    p.count(1, R.PASSED, C.UDP, 0, 100, 6400)
    p.count(1, R.BANNED, C.UDP, 0, 50, 3200)
    p.count(2, R.RATE_LIMITED, C.TCP_SYN, 1, 7, 420)
    p.count(0, R.NON_IP, C.NON_IP, 0, 2, 120)
    p.group_stats[1, C.UDP] = (150, 9600, 50, 3200, 12)
    p.watch_stats[1, R.PASSED, 0] = (40, 2560)
    p.watch_stats[1, R.RATE_LIMITED, 0] = (3, 192)
    src.attacks = metrics.AttackStats(
        active={"udp_reflection": 1},
        total={"udp_reflection": 2, "syn_flood": 1},
        time_to_mitigate=[("0.5", 0), ("1", 1), ("2", 2), ("+Inf", 2)],
        time_to_mitigate_sum=2.75,
        escalations_total=1,
    )
    src.upstream = metrics.UpstreamStats(
        speaker_up=True, sessions={"transit": True, "reflector": False}, announcements={"flowspec": 2, "rtbh": 1},
        refused={("rtbh", "too_short"): 3}, changes={("flowspec", "announced"): 4, ("flowspec", "withdrawn"): 2},
    )
    return src


def make_registry(src: FakeSource) -> CollectorRegistry:
    """The collector and the tick histogram for ``src``, one tick observed."""
    reg = CollectorRegistry()
    inst = metrics.register(src, reg, host=FakeHost(), fill=fake_fill)
    inst.tick.observe(0.004)
    return reg


def scrape_text(src: FakeSource | None = None) -> str:
    """The exposition text of a fully populated fake agent."""
    reg = make_registry(src or populated())
    return generate_latest(reg).decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def series(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples(text).items() if n == name}


def L(**kw: str) -> tuple[tuple[str, str], ...]:  # noqa: N802 — L(...) reads as a label set in the assertions
    return tuple(sorted(kw.items()))


def exported_names(text: str) -> set[str]:
    """Every sample name of a scrape (families' _total, _bucket, ... included)."""
    return {name for name, _ in samples(text)}


# --------------------------------------------------------------------------- verdict counters


def test_packets_and_bytes_by_interface_reason_class_monitor() -> None:
    text = scrape_text()
    assert series(text, "floodguard_packets_total") == {
        L(interface="eth0", reason="passed", **{"class": "udp"}, monitor="false"): 100,
        L(interface="eth0", reason="banned", **{"class": "udp"}, monitor="false"): 50,
        L(interface="eth1", reason="rate_limited", **{"class": "tcp_syn"}, monitor="true"): 7,
        L(interface="other", reason="non_ip", **{"class": "non_ip"}, monitor="false"): 2,
    }
    assert series(text, "floodguard_bytes_total") == {
        L(interface="eth0", reason="passed", **{"class": "udp"}, monitor="false"): 6400,
        L(interface="eth0", reason="banned", **{"class": "udp"}, monitor="false"): 3200,
        L(interface="eth1", reason="rate_limited", **{"class": "tcp_syn"}, monitor="true"): 420,
        L(interface="other", reason="non_ip", **{"class": "non_ip"}, monitor="false"): 120,
    }


def test_zero_series_are_left_out_and_an_unnamed_slot_keeps_its_number() -> None:
    src = FakeSource()
    assert src.fake_port is not None
    src.fake_port.count(5, R.MALFORMED, C.OTHER, 0, 0, 60)  # bytes alone still make a series
    text = scrape_text(src)
    assert series(text, "floodguard_packets_total") == {
        L(interface="slot5", reason="malformed", **{"class": "other"}, monitor="false"): 0,
    }
    assert series(text, "floodguard_bytes_total") == {
        L(interface="slot5", reason="malformed", **{"class": "other"}, monitor="false"): 60,
    }


def test_counters_beyond_2_to_the_53_are_floats_not_errors() -> None:
    src = FakeSource()
    assert src.fake_port is not None
    src.fake_port.count(1, R.PASSED, C.UDP, 0, 2**63 + 1, 2**64 - 1)
    got = series(scrape_text(src), "floodguard_packets_total")
    assert list(got.values()) == [float(2**63)]


def test_group_counters_by_name_and_class() -> None:
    text = scrape_text()
    for f, value in zip(FIELDS, (150, 9600, 50, 3200, 12), strict=True):
        assert series(text, f"floodguard_group_{f}_total") == {L(group="web", **{"class": "udp"}): value}, f


def test_groups_the_policy_does_not_name_are_not_shown() -> None:
    src = FakeSource(groups={0: "default"})
    assert src.fake_port is not None
    src.fake_port.group_stats[3, C.ICMP] = (1, 2, 3, 4, 5)
    src.fake_port.group_stats[0, C.ICMP] = (9, 9, 0, 0, 1)
    text = scrape_text(src)
    assert series(text, "floodguard_group_packets_total") == {L(group="default", **{"class": "icmp"}): 9}


# --------------------------------------------------------------------------- agent state


def test_state_from_the_source() -> None:
    text = scrape_text()
    assert series(text, "floodguard_up") == {(): 1}
    assert series(text, "floodguard_bans_active") == {
        L(origin="policy"): 10, L(origin="operator"): 2, L(origin="auto"): 7}
    assert series(text, "floodguard_rules_active") == {(): 4}
    assert series(text, "floodguard_policy_reloads_total") == {L(result="ok"): 3, L(result="failed"): 1}
    assert series(text, "floodguard_policy_loaded_timestamp_seconds") == {(): 1_700_000_000.5}
    assert series(text, "floodguard_program_build_seconds") == {(): 2.25}
    assert series(text, "floodguard_interface_info") == {
        L(interface="eth0", mode="native"): 1, L(interface="eth1", mode="generic"): 1}
    info = series(text, "floodguard_build_info")
    assert list(info.values()) == [1]
    assert dict(next(iter(info)))["abi"] == str(abi.ABI_VERSION)


def test_bans_of_an_origin_the_source_omits_read_zero() -> None:
    text = scrape_text(FakeSource(bans={"operator": 1}))
    assert series(text, "floodguard_bans_active") == {
        L(origin="policy"): 0, L(origin="operator"): 1, L(origin="auto"): 0}


def test_no_policy_yet_means_no_timestamp_rather_than_1970() -> None:
    assert series(scrape_text(FakeSource(loaded_at=0.0)), "floodguard_policy_loaded_timestamp_seconds") == {}


def test_map_fill() -> None:
    text = scrape_text()
    assert series(text, "floodguard_map_capacity") == {
        L(map="buckets4", type="lru_hash"): 1_048_576,
        L(map="dir4", type="array"): 1 << 24,
        L(map="src_entries", type="array"): 262_143,
        L(map="groups", type="array"): 1024,
    }
    # dir4 has a capacity but no meaningful entry count; groups come from the policy
    assert series(text, "floodguard_map_entries") == {
        L(map="buckets4", type="lru_hash"): 524_288,
        L(map="src_entries", type="array"): 29,
        L(map="groups", type="array"): 3,
    }


def test_host_metrics_cover_attached_interfaces_only() -> None:
    text = scrape_text()
    assert series(text, "floodguard_agent_cpu_seconds_total") == {(): 12.5}
    assert series(text, "floodguard_agent_memory_bytes") == {(): 123_456_789}
    assert series(text, "floodguard_nic_receive_packets_total") == {L(interface="eth0"): 1000,
                                                                    L(interface="eth1"): 20}
    assert series(text, "floodguard_nic_receive_bytes_total") == {L(interface="eth0"): 64000,
                                                                  L(interface="eth1"): 1280}
    assert series(text, "floodguard_nic_receive_dropped_packets_total") == {L(interface="eth0"): 3,
                                                                            L(interface="eth1"): 0}


def test_an_attached_interface_that_vanished_has_no_nic_series() -> None:
    src = FakeSource(modes={"eth0": "native", "gone0": "generic"})
    text = scrape_text(src)
    assert series(text, "floodguard_nic_receive_packets_total") == {L(interface="eth0"): 1000}
    assert L(interface="gone0", mode="generic") in series(text, "floodguard_interface_info")


def test_psutil_probe_reads_this_process_and_loopback() -> None:
    probe = metrics.PsutilProbe()
    assert probe.agent_cpu_seconds() > 0
    assert probe.agent_memory_bytes() > 1 << 20
    assert "lo" in probe.nic_counters()


# --------------------------------------------------------------------------- attacks and histograms


def test_attacks_by_vector_and_an_ended_vector_reads_zero() -> None:
    text = scrape_text()
    assert series(text, "floodguard_attacks_active") == {L(vector="udp_reflection"): 1, L(vector="syn_flood"): 0}
    assert series(text, "floodguard_attacks_total") == {L(vector="udp_reflection"): 2, L(vector="syn_flood"): 1}
    assert series(text, "floodguard_escalations_total") == {(): 1}


def test_time_to_mitigate_is_the_detectors_histogram() -> None:
    text = scrape_text()
    assert series(text, "floodguard_time_to_mitigate_seconds_bucket") == {
        L(le="0.5"): 0, L(le="1.0"): 1, L(le="2.0"): 2, L(le="+Inf"): 2}
    assert series(text, "floodguard_time_to_mitigate_seconds_count") == {(): 2}
    assert series(text, "floodguard_time_to_mitigate_seconds_sum") == {(): 2.75}


def test_a_histogram_without_its_inf_bucket_is_refused_where_it_is_made() -> None:
    with pytest.raises(ValueError, match=r"\+Inf"):
        metrics.AttackStats(time_to_mitigate=[("1", 0), ("2", 1)])


def test_no_attack_yet() -> None:
    text = scrape_text(FakeSource())
    assert series(text, "floodguard_attacks_total") == {}
    assert series(text, "floodguard_escalations_total") == {(): 0}
    assert series(text, "floodguard_time_to_mitigate_seconds_count") == {}


def test_tick_histogram_from_register_lands_in_the_same_registry() -> None:
    reg = CollectorRegistry()
    inst = metrics.register(FakeSource(), reg, host=FakeHost(), fill=fake_fill)
    inst.tick.observe(0.003)
    inst.tick.observe(0.2)
    text = generate_latest(reg).decode()
    assert series(text, "floodguard_tick_duration_seconds_count") == {(): 2}
    assert series(text, "floodguard_tick_duration_seconds_bucket")[L(le="0.005")] == 1
    assert series(text, "floodguard_tick_duration_seconds_bucket")[L(le="0.25")] == 2
    assert series(text, "floodguard_up") == {(): 1}


def test_register_twice_in_one_registry_is_refused() -> None:
    reg = CollectorRegistry()
    metrics.register(FakeSource(), reg, host=FakeHost())
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        metrics.register(FakeSource(), reg, host=FakeHost())


# --------------------------------------------------------------------------- failures


def test_unreadable_maps_say_up_0_and_keep_the_rest() -> None:
    src = populated()
    assert src.fake_port is not None
    src.fake_port.error = BpfSyscallError("BPF_MAP_LOOKUP_BATCH", 9, "stats")
    with capture_logs() as logs:
        text = scrape_text(src)
    assert series(text, "floodguard_up") == {(): 0}
    assert series(text, "floodguard_packets_total") == {}
    assert series(text, "floodguard_map_capacity") == {}
    assert series(text, "floodguard_rules_active") == {(): 4}
    assert series(text, "floodguard_agent_memory_bytes") == {(): 123_456_789}
    assert [e["event"] for e in logs] == ["metrics_datapath_unreadable"]
    assert "stats" in logs[0]["error"]


def test_no_port_yet_is_up_0() -> None:
    text = scrape_text(FakeSource(fake_port=None))
    assert series(text, "floodguard_up") == {(): 0}
    assert series(text, "floodguard_program_build_seconds") == {(): 2.25}


# --------------------------------------------------------------------------- count_bans


def test_count_bans_counts_enforced_unexpired_bans_per_origin() -> None:
    now = 1_000
    recs = [
        ("a", abi.SRC_BAN, abi.Origin.POLICY, (0, 1, abi.SRC_BAN, 0)),
        ("b", abi.SRC_BAN, abi.Origin.AUTO, (2_000, 1, abi.SRC_BAN, 0)),
        ("c", abi.SRC_BAN, abi.Origin.AUTO, (500, 1, abi.SRC_BAN, 0)),  # expired
        ("d", abi.SRC_BAN, abi.Origin.OPERATOR, (0, 1, abi.SRC_BAN_MONITOR, 0)),  # monitor: drops nothing
        ("e", abi.SRC_ALLOW, abi.Origin.OPERATOR, (0, 1, abi.SRC_ALLOW, 0)),
    ]
    assert metrics.count_bans(recs, now) == {"policy": 1, "operator": 0, "auto": 1}


# --------------------------------------------------------------------------- the endpoint


@pytest.mark.parametrize(
    ("listen", "expect"),
    [("127.0.0.1:9470", ("127.0.0.1", 9470)), ("[::1]:9470", ("::1", 9470)), ("[::]:0", ("::", 0)),
     ("localhost:80", ("localhost", 80))],
)
def test_parse_listen(listen: str, expect: tuple[str, int]) -> None:
    assert metrics.parse_listen(listen) == expect


@pytest.mark.parametrize("listen", ["9470", "::1:9470", "127.0.0.1:", ":9470", "127.0.0.1:http", "1.2.3.4:70000"])
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(ValueError, match="9470"):
        metrics.parse_listen(listen)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "[::1]:0"])
def test_start_serves_over_http_on_loopback(listen: str) -> None:
    if listen.startswith("[") and not _has_ipv6_loopback():
        pytest.fail("IPv6 loopback (::1) is needed: enable IPv6 on lo (sysctl net.ipv6.conf.lo.disable_ipv6=0)")
    exp = metrics.start(FakeSource(fake_port=None, rules=4), listen, host=FakeHost())
    try:
        exp.instruments.tick.observe(0.01)
        assert exp.server.host in ("127.0.0.1", "::1")
        text = _get(exp.server.url)
        assert series(text, "floodguard_rules_active") == {(): 4}
        assert series(text, "floodguard_tick_duration_seconds_count") == {(): 1}
    finally:
        exp.shutdown()
    with pytest.raises(OSError):  # noqa: PT011 — any OSError: the point is that the port is refused
        _get(exp.server.url)


def test_a_busy_port_says_what_to_do() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(metrics.MetricsListenError, match="another process listens there") as e:
            metrics.serve(CollectorRegistry(), f"127.0.0.1:{port}")
    assert isinstance(e.value, OSError) and e.value.strerror and f"127.0.0.1:{port}" in e.value.strerror


def test_shutdown_twice_is_harmless() -> None:
    server = metrics.serve(CollectorRegistry(), "127.0.0.1:0")
    server.shutdown()
    server.shutdown()
    with socket.socket() as s:
        s.bind(("127.0.0.1", server.port))  # the port is free again


# --------------------------------------------------------------------------- the exposition as a whole


def test_every_declared_metric_is_exported_and_nothing_else() -> None:
    fams = {f.name for f in text_string_to_metric_families(scrape_text())}
    # the parser names counters without _total; prometheus_client gives the
    # tick histogram (a prometheus_client Histogram) a _created gauge
    declared = {n.removesuffix("_total") for n in metrics.metric_names()}
    declared.add("floodguard_tick_duration_seconds_created")
    assert fams == declared


def test_no_per_ip_labels() -> None:
    labels = {k for _, ls in samples(scrape_text()) for k, _ in ls}
    assert labels == {"interface", "reason", "class", "monitor", "group", "origin", "result", "map", "type",
                      "mode", "vector", "version", "abi", "le", "peer", "kind", "action", "watch"}


def test_promtool_accepts_the_exposition() -> None:
    out = subprocess.run(["promtool", "check", "metrics"], input=scrape_text(), capture_output=True, text=True)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out.stdout + out.stderr


# --------------------------------------------------------------------------- docs/metrics.md


def _doc_names() -> set[str]:
    text = (REPO / "docs" / "metrics.md").read_text()
    return set(re.findall(r"^### `(floodguard_[a-z0-9_]+)`", text, flags=re.M))


def test_docs_list_every_metric_and_only_those() -> None:
    assert _doc_names() == set(metrics.metric_names())


def test_docs_state_each_metrics_type_and_labels() -> None:
    text = (REPO / "docs" / "metrics.md").read_text()
    for spec in metrics.SPECS:
        section = text.split(f"### `{spec.name}`", 1)[1].split("\n### ", 1)[0]
        assert f"Type: {spec.kind}" in section, spec.name
        for label in spec.labels:
            assert f"`{label}`" in section, (spec.name, label)
        if not spec.labels:
            assert "Labels: none" in section, spec.name


def test_docs_mention_no_metric_that_does_not_exist() -> None:
    text = (REPO / "docs" / "metrics.md").read_text()
    exported = exported_names(scrape_text()) | set(metrics.metric_names())
    for name in set(re.findall(r"floodguard_[a-z0-9_]+", text)):
        assert name in exported, name


def iter_fake_names() -> Iterator[str]:
    """Sample names of a fully populated scrape, for tests/unit/test_contrib.py."""
    yield from sorted(exported_names(scrape_text()))
