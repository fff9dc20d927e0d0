"""agent/bench/datapath.py's pure parts: ratios to the floor and the peers, the targets, the rules, the frames."""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest

from agent.bench import _util
from agent.bench import datapath as d
from agent.contract import abi
from agent.datapath.errors import BpfSyscallError


def rows(**ns: float | None) -> dict[str, dict[str, Any]]:
    return {name: {"ns_per_packet": v, "ratio_to_trivial_drop": None, "reason": "passed"} for name, v in ns.items()}


def test_every_row_is_taken_against_one_miss_and_its_peer_on_the_same_packets() -> None:
    r = rows(one_miss=40.0, legit_pass=50.0, xdp_filter_pass=100.0, banned_32_of_1m=60.0, xdp_filter_drop=None,
             spoofed_flood=80.0)
    d.add_ratios(r)
    assert r["legit_pass"]["ratio_to_one_miss"] == 1.25 and r["legit_pass"]["peer"] == "xdp_filter_pass"
    assert r["legit_pass"]["ratio_to_peer"] == 0.5
    assert r["banned_32_of_1m"]["peer"] == "xdp_filter_drop" and r["banned_32_of_1m"]["ratio_to_peer"] is None
    assert r["spoofed_flood"]["peer"] is None and r["spoofed_flood"]["ratio_to_one_miss"] == 2.0
    assert r["one_miss"]["ratio_to_one_miss"] == 1.0


def test_without_one_miss_no_row_has_a_floor_ratio() -> None:
    r = rows(legit_pass=50.0)
    d.add_ratios(r)
    assert r["legit_pass"]["ratio_to_one_miss"] is None and r["legit_pass"]["ratio_to_peer"] is None


def _result(**ns: float | None) -> dict[str, Any]:
    every = dict.fromkeys({n for t in d.TARGETS for n in t[:2]}, 100.0)
    every.update(ns)
    return {"scenarios": rows(**every)}


def test_targets_are_the_issues_each_against_what_the_same_run_measured() -> None:
    res = _result(legit_pass=90.0, xdp_filter_pass=100.0, banned_32_of_1m=140.0, xdp_filter_drop=120.0,
                  one_miss=100.0, rule_drop=85.0, spoofed_flood=140.0, syn_challenge=200.0)
    t = d._targets(res)
    assert list(t) == ["legit_pass_vs_xdp_filter_pass", "banned_32_of_1m_vs_xdp_filter_drop",
                       "rule_drop_vs_legit_pass", "spoofed_flood_vs_legit_pass", "syn_challenge_vs_legit_pass",
                       "banned_32_of_1m_vs_one_miss"]
    assert {k: v["met"] for k, v in t.items()} == {
        "legit_pass_vs_xdp_filter_pass": True, "banned_32_of_1m_vs_xdp_filter_drop": False,
        "rule_drop_vs_legit_pass": True, "spoofed_flood_vs_legit_pass": False,
        "syn_challenge_vs_legit_pass": False, "banned_32_of_1m_vs_one_miss": False}
    assert t["spoofed_flood_vs_legit_pass"]["ratio"] == 1.556 and t["spoofed_flood_vs_legit_pass"]["target"] == (
        "spoofed_flood <= 1.5 x legit_pass")


def test_a_peer_is_also_judged_without_the_front_that_feeds_it() -> None:
    res = _result(legit_pass=90.0, xdp_filter_pass=100.0)
    res["tail_call_drop"] = {"ns_per_packet": 30.0, "overhead_ns": 15.0}
    e = d._targets(res)["legit_pass_vs_xdp_filter_pass"]
    assert e["met"] is True and e["against_without_front_ns"] == 85.0 and e["met_without_front"] is False
    assert "against_without_front_ns" not in d._targets(res)["rule_drop_vs_legit_pass"]


def test_a_scenario_not_measured_leaves_its_target_unjudged() -> None:
    assert d._targets(_result(one_miss=None))["banned_32_of_1m_vs_one_miss"]["met"] is None


def test_the_sixteen_rules_put_the_fragment_and_the_dns_rule_last() -> None:
    rules = d.bench_rules()
    assert len(rules) == d.LIVE_RULES == 16
    assert [r.sport for r in rules[:14]] == [(p, p) for p in d.REFLECTION_SPORTS]
    assert 53 not in d.REFLECTION_SPORTS
    assert rules[14].traffic_class is abi.TrafficClass.FRAGMENT and rules[14].proto == 0
    assert rules[15].sport == (53, 53) and rules[15].proto == _util.IPPROTO_UDP
    assert all(r.action is abi.RuleAction.DROP and str(r.dst) == d.PROTECTED4 for r in rules)
    assert len({r.rule_id for r in rules}) == 16


def test_frames_carry_the_ports_and_the_fragment_offset_asked_for() -> None:
    f = _util.frame("160.0.0.1", "203.0.113.10", sport=53, dport=40000)
    assert struct.unpack("!HH", f[34:38]) == (53, 40000)
    frag = _util.frame("160.0.0.1", "203.0.113.10", fragment_offset=185)
    assert struct.unpack("!H", frag[20:22])[0] == 185  # flags 0, offset 185 x 8 bytes: a non-first fragment
    assert struct.unpack("!H", _util.frame("10.0.0.1", "10.0.0.2")[20:22])[0] == 0
    with pytest.raises(ValueError, match="IPv4 only"):
        _util.frame("2001:db8::1", "2001:db8::2", fragment_offset=1)
    with pytest.raises(ValueError, match="13 bits"):
        _util.frame("10.0.0.1", "10.0.0.2", fragment_offset=1 << 13)


def test_cpus_are_checked_before_anything_runs() -> None:
    mine = sorted(os.sched_getaffinity(0))
    assert _util.parse_cpus(",".join(map(str, mine))) == tuple(mine)
    with pytest.raises(ValueError, match="separated by commas"):
        _util.parse_cpus("0-1")
    with pytest.raises(ValueError, match="not one this process may use"):
        _util.parse_cpus(str(max(mine) + 64))
    with pytest.raises(ValueError, match="listed twice"):
        _util.parse_cpus(f"{mine[0]},{mine[0]}")


def test_a_bad_cpus_argument_exits_2_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        d.main(["--cpus", "x"])
    assert e.value.code == 2 and "separated by commas" in capsys.readouterr().err


def test_timing_on_several_cpus_raises_the_first_real_error() -> None:
    with pytest.raises(ValueError, match="no CPU"):
        _util.time_program_on(-1, b"", 1, 1, [])
    with pytest.raises(BpfSyscallError, match="Bad file descriptor"):  # not the barrier the error broke
        _util.time_program_on(-1, b"\0" * 60, 1, 1, sorted(os.sched_getaffinity(0)))
