"""agent/control/judge.py, and the controller's use of it: surges are recorded and never mitigated,
attacks get the lever their evidence allows, and a target that hurts is acted on at once.

Whole scenarios replay traffic into the in-memory port (tests/unit/synthetic.py); the verdicts are
decided by what the controller recorded and wrote.
"""

from __future__ import annotations

import ipaddress
from collections import Counter

from structlog.testing import capture_logs
from synthetic import Flow, Scenario, lab, lab_data

from agent.contract.abi import RuleAction, TrafficClass
from agent.control.judge import Distress, Inputs, Kind, Lever, completion, judge
from agent.control.profile import GroupProfile
from agent.control.samples import SourceStats, SpoofVerdict
from agent.control.vectors import Classification, Vector
from agent.policy.model import Policy

WEB = ipaddress.ip_address("203.0.113.10")
CLIENTS = tuple(ipaddress.ip_address(f"100.64.1.{i}") for i in range(1, 101))
CROWD = tuple(ipaddress.ip_address(f"100.65.0.{i}") for i in range(1, 251))
CGNAT = ipaddress.ip_address("100.64.200.1")
C = TrafficClass


def calm(sc: Scenario) -> None:
    gid = sc.gid("servers")
    sc.replay.add(Flow(WEB, gid, C.UDP, 1000, sources=CLIENTS, dport=53))
    sc.replay.add(Flow(WEB, gid, C.TCP_OTHER, 2000, sources=CLIENTS, dport=443))
    sc.replay.add(Flow(WEB, gid, C.TCP_SYN, 500, sources=CLIENTS, dport=443))
    sc.run(30)


def crowd(sc: Scenario, sources: tuple[ipaddress.IPv4Address, ...], syn_pps: float, t: float) -> None:
    """Real clients: each new connection's SYN comes with its ACKs and data (4 packets per SYN here)."""
    gid = sc.gid("servers")
    sc.replay.add(Flow(WEB, gid, C.TCP_SYN, syn_pps, sources=sources, dport=443, start_s=t))
    sc.replay.add(Flow(WEB, gid, C.TCP_OTHER, 4 * syn_pps, sources=sources, dport=443, start_s=t))


def test_a_flash_crowd_of_real_clients_is_a_surge_and_nothing_is_written() -> None:
    sc = Scenario.build(lab())
    calm(sc)
    writes = len(sc.port.writes)
    with capture_logs() as logs:
        crowd(sc, CROWD, 20_000, sc.replay.t)  # 40 times the calm SYN rate, over the 2k threshold
        sc.run(5)
    surges = sc.controller.attacks()
    assert {s.traffic_class for s in surges} == {"tcp_syn", "tcp_other"}, "both classes grew, both are surges"
    for surge in surges:
        assert surge.kind is Kind.SURGE and surge.verdict is not None and surge.verdict.lever is Lever.NONE
        assert "handshakes" in surge.verdict.why
        assert 0.5 <= surge.verdict.evidence["handshake_completion"] <= 2.0
        assert surge.history.mitigations == [] and surge.to_dict()["kind"] == "surge"
    assert len(sc.port.writes) == writes, "nothing enforced for real users"
    assert sc.controller.stats().started_by_vector == {}, "a surge is not counted as an attack"
    assert [e for e in logs if e["event"] == "attack_started" and e["kind"] == "surge"]


def test_one_busy_real_client_behind_a_cgnat_address_is_a_surge_not_an_attack() -> None:
    sc = Scenario.build(lab())
    calm(sc)
    crowd(sc, (CGNAT,), 6_000, sc.replay.t)  # one address: thousands of new connections a second
    sc.run(5)
    surges = sc.controller.attacks()
    assert surges and all(s.kind is Kind.SURGE for s in surges)
    assert sc.port.rules == [] and sc.port.bans == {} and sc.port.syn_auth == {}


def test_a_forged_syn_flood_on_top_of_real_traffic_is_an_attack_with_syn_auth() -> None:
    sc = Scenario.build(lab())
    calm(sc)
    gid = sc.gid("servers")
    sc.replay.add(Flow(WEB, gid, C.TCP_SYN, 30_000, size=60, dport=443, start_s=sc.replay.t))
    sc.run(3)
    (attack,) = sc.controller.attacks()
    assert attack.kind is Kind.ATTACK and attack.verdict is not None and attack.verdict.lever is Lever.SYN_AUTH
    assert gid in sc.port.syn_auth
    assert attack.verdict.evidence["handshake_completion"] < 0.5
    assert "retransmission" in attack.verdict.collateral


def without_thresholds() -> Policy:
    data = lab_data()
    group = data["protect"][0]
    del group["thresholds"]
    group["uplink"] = {"bps": "100Mbit"}
    data["detection"] = {**data["detection"], "baseline": {"half_life": "1m", "warmup": "0s", "min_pps": 1000},
                         "consecutive": 5}
    return Policy.model_validate(data)


def test_with_no_threshold_a_flood_that_fills_the_targets_link_is_acted_on_at_its_first_tick() -> None:
    """No threshold configured: the link's distress starts the attack without waiting for 5 ticks."""
    sc = Scenario.build(without_thresholds())
    calm(sc)
    t = sc.replay.t
    reflectors = tuple(ipaddress.ip_address(f"198.18.1.{i}") for i in range(1, 201))
    sc.replay.add(Flow(WEB, sc.gid("servers"), C.UDP, 20_000, size=1242, sources=reflectors, sport=53, dport=None,
                       start_s=t))
    report = sc.run_until(5, lambda r: bool(r.started))
    assert report is not None
    (attack,) = sc.controller.attacks()
    ticks = round((attack.start_ns - attack.first_over_ns) / 1e9 / sc.tick_s)
    assert ticks == 0, "started at its first tick over: the target hurts"
    assert attack.verdict is not None and attack.verdict.evidence["distress"]["hurting"] is True
    (rule,) = sc.port.rules
    assert (rule.action, rule.sport) == (RuleAction.DROP, (53, 53))


def test_drops_towards_a_group_are_distress_too() -> None:
    sc = Scenario.build(without_thresholds())
    calm(sc)
    gid = sc.gid("servers")
    reflectors = tuple(ipaddress.ip_address(f"198.18.1.{i}") for i in range(1, 201))
    sc.replay.add(Flow(WEB, gid, C.UDP, 5_000, size=600, sources=reflectors, sport=123, dport=None,
                       start_s=sc.replay.t))
    for _ in range(round(2 / sc.tick_s)):
        sc.port.downstream_drops[gid] = sc.port.downstream_drops.get(gid, 0) + 500  # the access link's queue
        sc.replay.step(sc.tick_s)
        sc.controller.tick()
    (attack,) = sc.controller.attacks()
    assert attack.verdict is not None
    assert attack.verdict.evidence["distress"]["drops_per_s"] > 1000


def test_a_surge_without_distress_under_no_threshold_never_starts_anything_urgent() -> None:
    sc = Scenario.build(without_thresholds())
    calm(sc)
    crowd(sc, CROWD, 2_000, sc.replay.t)  # 4x the calm SYN rate: over the learned threshold, not hurting
    sc.run(5)
    assert all(a.kind is Kind.SURGE for a in sc.controller.attacks())
    assert sc.port.rules == [] and sc.port.syn_auth == {}


# --- the verdict itself ---------------------------------------------------------------------------


def inputs(**kw: object) -> Inputs:
    base: dict[str, object] = {
        "cls": C.UDP, "shape": Classification(Vector.UDP_FLOOD, dport=53),
        "sources": SourceStats(0, 0, 0.0, ()), "spoof": SpoofVerdict(False, "few samples"),
        "profile": GroupProfile(), "class_pps": 50_000, "normal_pps": 1000, "syn_pps": 0, "syn_normal": 0,
        "other_pps": 0, "other_normal": 0, "distress": Distress(), "syn_auth": "on_attack",
    }
    base.update(kw)
    return Inputs(**base)  # type: ignore[arg-type]


def test_completion_tells_real_clients_from_syn_and_ack_floods() -> None:
    def c(syn: float, other: float, cls: TrafficClass = C.TCP_SYN) -> float | None:
        return completion(inputs(cls=cls, syn_pps=syn, syn_normal=100, other_pps=other, other_normal=400))

    assert c(1100, 4400) == 1.0, "a crowd: 4 packets per SYN, as in calm"
    assert c(10_100, 400) == 0.0, "a SYN flood"
    assert c(100, 40_000, C.TCP_OTHER) == float("inf"), "an ACK flood with no SYNs"
    assert c(100, 400) is None, "no surplus: nothing to judge"


def test_a_shape_absent_from_a_trusted_profile_is_dropped_even_from_real_sources() -> None:
    prof = GroupProfile()
    cp = prof.classes[C.UDP]
    cp.samples = 1000.0
    cp.dports.add(Counter({53: 1000}))
    v = judge(inputs(shape=Classification(Vector.UDP_FLOOD, dport=27015), profile=prof))
    assert (v.kind, v.lever, v.shape_pps) == (Kind.ATTACK, Lever.SHAPE, 0)
    assert v.legit_pps == 0.0 and "27015" in v.why
    v53 = judge(inputs(shape=Classification(Vector.UDP_FLOOD, dport=53), profile=prof))
    assert v53.lever is not Lever.SHAPE or v53.shape_pps > 0, "the group's own service port is never dropped"


def test_a_forged_flood_in_a_shape_the_group_has_is_limited_at_its_normal_rate_only_when_the_target_hurts() -> None:
    prof = GroupProfile()
    cp = prof.classes[C.UDP]
    cp.samples = 1000.0
    cp.dports.add(Counter({53: 1000}))
    hurting = Distress(True, "its link is 97% full", load=0.97)
    v = judge(inputs(shape=Classification(Vector.UDP_FLOOD, dport=53), profile=prof,
                     spoof=SpoofVerdict(True, "spoofed"), shape_headroom=3.0, distress=hurting))
    assert (v.lever, v.shape_pps) == (Lever.SHAPE, 3000), "3 x the learned 1000 pps of UDP to port 53"
    calm = judge(inputs(shape=Classification(Vector.UDP_FLOOD, dport=53), profile=prof,
                        spoof=SpoofVerdict(True, "spoofed")))
    assert calm.kind is Kind.SURGE, "sparse samples of a real crowd look forged too: only distress acts"


def test_per_source_limits_come_from_the_heaviest_legitimate_source_never_below_the_floor() -> None:
    prof = GroupProfile()
    prof.classes[C.UDP].heavy_source_pps = 800.0
    hitter = SourceStats(500, 1, 1.0, ((ipaddress.ip_address("198.18.0.2"), 50_000.0, 500),))
    v = judge(inputs(sources=hitter, profile=prof, source_headroom=10.0))
    assert (v.lever, v.source_pps) == (Lever.SOURCES, 8000)
    quiet = judge(inputs(sources=hitter, profile=GroupProfile(), source_headroom=10.0))
    assert quiet.source_pps == 2000, "no legitimate source seen yet: the class's floor"


def test_a_real_source_only_a_little_above_its_limit_is_not_an_attack_unless_the_target_hurts() -> None:
    busy = SourceStats(500, 1, 1.0, ((ipaddress.ip_address("100.64.200.1"), 5_000.0, 500),))
    assert judge(inputs(sources=busy)).kind is Kind.SURGE
    hurting = Distress(True, "its link is 95% full", load=0.95)
    v = judge(inputs(sources=busy, distress=hurting))
    assert (v.kind, v.lever) == (Kind.ATTACK, Lever.SOURCES)


def test_a_few_real_sources_in_a_class_silent_in_calm_are_limited_not_their_port_dropped() -> None:
    """Real clients may start using a service at the moment it is flooded: with no calm UDP at all,
    the profile cannot say port 7 is foreign, so the few real sources carrying the flood are limited."""
    hitter = SourceStats(500, 1, 1.0, ((ipaddress.ip_address("198.18.0.2"), 50_000.0, 500),))
    v = judge(inputs(shape=Classification(Vector.UDP_FLOOD, dport=7), sources=hitter, profile=GroupProfile(),
                     normal_pps=0.0, class_pps=50_000.0))
    assert (v.kind, v.lever) == (Kind.ATTACK, Lever.SOURCES), v
    forged = judge(inputs(shape=Classification(Vector.UDP_FLOOD, dport=7), profile=GroupProfile(),
                          spoof=SpoofVerdict(True, "spoofed"), normal_pps=0.0, class_pps=50_000.0))
    assert (forged.lever, forged.shape_pps) == (Lever.SHAPE, 0), "forged sources: the port nobody used is dropped"
    reflectors = judge(inputs(shape=Classification(Vector.UDP_REFLECTION, sport=53, service="dns"), sources=hitter,
                              profile=GroupProfile(), normal_pps=0.0, class_pps=50_000.0))
    assert (reflectors.lever, reflectors.shape_pps) == (Lever.SHAPE, 0), "answers nobody asked for: dropped"


def test_a_target_hurting_from_another_class_does_not_make_real_clients_the_cause() -> None:
    """A reflection fills the link; the real clients' TCP, a tenth of the traffic, stays a surge: its one
    busy source is above the per-source floor, but the distress is not its doing."""
    hurting = Distress(True, "its link is 98% full", load=0.98)
    busy = SourceStats(500, 1, 1.0, ((ipaddress.ip_address("100.64.0.2"), 5_800.0, 500),))
    tcp = {"cls": C.TCP_OTHER, "shape": Classification(Vector.TCP_OTHER_FLOOD, dport=80), "sources": busy,
           "class_pps": 5_800.0, "normal_pps": 5_000.0, "distress": hurting}
    v = judge(inputs(**tcp, class_share=0.1))
    assert v.kind is Kind.SURGE, v
    assert "not the cause" in str(v.evidence["distress"]["why"]) and v.evidence["class_share_of_traffic"] == 0.1
    flood = judge(inputs(**tcp, class_share=0.9))
    assert (flood.kind, flood.lever) == (Kind.ATTACK, Lever.SOURCES), "the class that fills the link is the cause"


def test_a_busy_source_of_other_tcp_opening_its_connections_is_a_client_not_a_flood() -> None:
    """One address far above the other-TCP floor, but with a SYN for every few packets (a new connection per
    request): a busy real client. The same rate with no SYN at all is an ACK flood from a real source."""
    src = ipaddress.ip_address("100.64.0.2")
    busy = SourceStats(500, 1, 1.0, ((src, 30_000.0, 500),))
    tcp = {"cls": C.TCP_OTHER, "shape": Classification(Vector.TCP_OTHER_FLOOD, dport=80), "sources": busy,
           "class_pps": 30_000.0, "normal_pps": 100.0}
    assert judge(inputs(**tcp, syns_from={src: 100})).kind is Kind.SURGE
    hurting = Distress(True, "its link is 98% full", load=0.98)
    assert judge(inputs(**tcp, syns_from={src: 100}, distress=hurting, class_share=0.3)).lever is not Lever.SOURCES
    flood = judge(inputs(**tcp, syns_from={}))
    assert (flood.kind, flood.lever) == (Kind.ATTACK, Lever.SOURCES)
