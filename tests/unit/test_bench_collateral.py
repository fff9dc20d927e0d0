"""agent/bench/collateral.py's pure parts: the default policy, ratios, targets, the table, the arguments."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest

import agent
from agent.bench import collateral as c
from agent.bench._util import BenchError

SERVERS = [ipaddress.IPv4Network("203.0.113.0/24"), ipaddress.IPv6Network("2001:db8:5::/64")]
LAB_POLICY: dict[str, Any] = {
    "interfaces": [{"name": "gw-in", "mode": "auto"}],
    "mode": "enforce",
    "watch": [{"name": "clients", "prefixes": ["100.64.0.0/10"]}, {"name": "attackers", "prefixes": []}],
    "protect": [
        {"name": "elsewhere", "prefixes": ["192.0.2.0/24"]},
        {"name": "servers", "prefixes": ["203.0.113.0/24", {"prefix": "2001:db8:5::/64", "reason": "v6"},
                                         "198.51.100.0/24"],
         "thresholds": {"udp": {"pps": "20k"}}, "syn_auth": "always"},
    ],
    "detection": {"tick": "100ms"},
}


def row(config: str, load: str, phase: str, rps: float, *, packets: int | None = None,
        banned: tuple[str, ...] = ()) -> dict[str, Any]:
    legit = None if packets is None else {"packets": packets, "by_reason": {}, "banned_sources": list(banned)}
    return {"config": config, "load": load, "phase": phase, "rps": rps, "errors": 0, "ratio": None,
            "requests": int(rps * 6), "error_kinds": {}, "p99_ms": 3.0, "flood_pps": None if phase == "calm"
            else 50_000, "records": None if config == "none" else [], "legit_discarded": legit}


def test_default_policy_has_the_interfaces_and_the_servers_group_only() -> None:
    got = c.default_policy(LAB_POLICY, SERVERS)
    assert got == {"interfaces": [{"name": "gw-in", "mode": "auto"}],
                   "protect": [{"name": "servers", "prefixes": ["203.0.113.0/24", "2001:db8:5::/64"]}]}


def test_default_policy_without_a_group_for_the_servers_is_an_error() -> None:
    with pytest.raises(BenchError, match=r"protects no group with 203\.0\.113\.0/24"):
        c.default_policy({"interfaces": [], "protect": [{"name": "x", "prefixes": ["192.0.2.0/24"]}]}, SERVERS)


def test_watch_ids_count_from_one_in_policy_order() -> None:
    assert c.watch_id(LAB_POLICY) == 1
    assert c.watch_id(LAB_POLICY, "attackers") == 2
    assert c.watch_id({"protect": []}) is None


def test_ratio_rounds_and_refuses_a_missing_reference() -> None:
    assert c.ratio(950.0, 1000.0) == 0.95
    assert c.ratio(1.0, 3.0) == 0.333
    assert c.ratio(5.0, 0.0) is None
    assert c.ratio(5.0, None) is None
    assert c.ratio(None, 5.0) is None


def test_ratios_are_taken_against_calm_without_floodguard_of_the_same_load() -> None:
    rows = [row("none", "single", "calm", 1000.0), row("none", "crowd", "calm", 500.0),
            row("lab", "single", "syn_flood", 900.0), row("lab", "crowd", "syn_flood", 900.0),
            row("none", "single", "syn_flood", 10.0)]
    c.add_ratios(rows)
    assert [r["ratio"] for r in rows] == [1.0, 1.0, 0.9, 1.8, 0.01]


def test_the_reference_is_the_mean_of_calm_measured_first_and_last() -> None:
    rows = [row("none", "single", "calm", 1000.0), row("lab", "single", "calm", 900.0),
            row("none", "single", "calm_end", 800.0), row("none", "crowd", "calm", 500.0)]
    assert c.references(rows) == {"single": {"measured": [1000.0, 800.0], "rps": 900.0},
                                  "crowd": {"measured": [500.0], "rps": 500.0}}
    c.add_ratios(rows)
    assert [r["ratio"] for r in rows] == [1.111, 1.0, 0.889, 1.0]
    t = {x["name"]: x for x in c.targets(rows)}
    assert [(x["config"], x["phase"]) for x in t["calm"]["checks"]] == [("lab", "calm")], "calm_end is no target"


def test_targets_judge_only_the_rows_with_floodguard() -> None:
    rows = [
        row("none", "single", "calm", 1000.0),
        row("none", "single", "syn_flood", 10.0),  # the unprotected attack: no target
        row("lab", "single", "calm", 960.0, packets=0),
        row("lab", "single", "syn_flood", 905.0, packets=0),
        row("default", "single", "calm", 940.0, packets=0, banned=("100.64.0.2/32",)),
        row("default", "single", "heavy_hitter", 100.0, packets=0),
    ]
    c.add_ratios(rows)
    t = {x["name"]: x for x in c.targets(rows)}
    assert t["calm"]["met"] is False
    assert [(x["config"], x["met"]) for x in t["calm"]["checks"]] == [("lab", True), ("default", False)]
    assert t["attack"]["met"] is False
    assert [(x["config"], x["phase"], x["value"], x["met"]) for x in t["attack"]["checks"]] == [
        ("lab", "syn_flood", 0.905, True), ("default", "heavy_hitter", 0.1, False)]
    assert [(x["config"], x["value"], x["met"]) for x in t["calm_clean"]["checks"]] == [
        ("lab", 0, True), ("default", 1, False)]
    assert t["calm_clean"]["met"] is False


def test_targets_met_when_every_check_holds_and_unmeasured_without_rows() -> None:
    rows = [row("none", "crowd", "calm", 1000.0), row("lab", "crowd", "calm", 1000.0, packets=0),
            row("lab", "crowd", "icmp_flood", 990.0, packets=0)]
    c.add_ratios(rows)
    assert [x["name"] for x in c.targets(rows)] == ["calm", "attack", "attack_of_ceiling", "calm_clean"]
    assert [x["met"] for x in c.targets(rows)] == [True, True, None, True], "no ceiling row: not measured"
    assert [x["met"] for x in c.targets([row("none", "crowd", "calm", 1000.0)])] == [None, None, None, None]


def test_agent_rows_are_also_taken_against_the_perfect_filter_of_the_same_phase() -> None:
    rows = [row("none", "single", "calm", 1000.0), row("none", "single", "syn_flood", 300.0),
            row("ceiling", "single", "syn_flood", 800.0), row("default", "single", "syn_flood", 600.0, packets=0),
            row("lab", "single", "syn_flood", 760.0, packets=0), row("lab", "single", "calm", 990.0, packets=0),
            row("lab", "crowd", "syn_flood", 500.0, packets=0)]
    c.add_ratios(rows)
    assert [r["of_ceiling"] for r in rows] == [None, None, None, 0.75, 0.95, None, None]
    t = {x["name"]: x for x in c.targets(rows)}
    assert [(x["config"], x["value"], x["met"]) for x in t["attack_of_ceiling"]["checks"]] == [
        ("default", 0.75, False), ("lab", 0.95, True)]
    assert t["attack_of_ceiling"]["met"] is False
    assert [x["config"] for x in t["attack"]["checks"]] == ["default", "lab", "lab"], "the ceiling is no agent"


def test_the_lab_programs_know_exactly_the_labs_foreign_ranges() -> None:
    """bpf/lab.h, shared by the perfect filter (lab_ceiling) and the upstream pass (lab_pass)."""
    from agent.lab.topology import FOREIGN_V4, FOREIGN_V6

    text = (Path(agent.__file__).parent.parent / "bpf" / "lab.h").read_text()
    defines = dict(re.findall(r"#define (LAB_FOREIGN\w*) (0x[0-9A-Fa-f]+|\d+)", text))
    assert int(defines["LAB_FOREIGN_NET"].rstrip("U"), 0) == int(FOREIGN_V4.network_address)
    assert int(defines["LAB_FOREIGN_LEN"]) == FOREIGN_V4.prefixlen
    groups = FOREIGN_V6.network_address.exploded.split(":")
    assert FOREIGN_V6.prefixlen == 48
    assert [int(defines[f"LAB_FOREIGN6_{i}"], 0) for i in range(3)] == [int(g, 16) for g in groups[:3]]


def test_legit_discarded_packets_fail_the_calm_target() -> None:
    rows = [row("none", "single", "calm", 1000.0), row("lab", "single", "calm", 1000.0, packets=3)]
    c.add_ratios(rows)
    clean = next(x for x in c.targets(rows) if x["name"] == "calm_clean")
    assert clean["met"] is False and clean["checks"][0]["value"] == 3


def test_legit_bans_are_bans_on_client_addresses_in_force() -> None:
    nets = [ipaddress.IPv4Network("100.64.0.0/10"), ipaddress.IPv6Network("2001:db8:d::/48")]
    bans = [{"prefix": "198.18.0.2/32", "monitor": False}, {"prefix": "100.65.0.7/32", "monitor": False},
            {"prefix": "100.64.0.0/24", "monitor": True}, {"prefix": "2001:db8:d::/64", "monitor": False}]
    assert c.legit_bans(bans, nets) == ["100.65.0.7/32", "2001:db8:d::/64"]


def test_discarded_counts_dropping_reasons_only() -> None:
    counts = {"passed": 100, "rate_limited": 3, "syn_challenged": 5, "syn_verified": 5, "banned": 2}
    assert c.discarded(counts) == 5
    assert c.delta({"passed": 10, "banned": 2}, {"passed": 4, "banned": 2}) == {"passed": 6}


def test_summarise_record_keeps_the_decision() -> None:
    rec = {"kind": "attack", "vector": "udp_reflection", "service": "dns", "class": "udp", "active": True,
           "dropped_packets": 1234, "banned": [],
           "mitigations": [{"step": "rule", "action": "applied"}, {"step": "rule", "action": "applied"},
                           {"step": "ban", "action": "skipped"}],
           "verdict": {"kind": "attack", "lever": "shape", "why": "UDP answers from port 53", "collateral": ""}}
    assert c.summarise_record(rec) == {
        "kind": "attack", "vector": "udp_reflection/dns", "class": "udp", "lever": "shape",
        "why": "UDP answers from port 53", "collateral": None, "mitigations": ["rule"], "banned": 0,
        "dropped_packets": 1234, "active": True, "legit_targeted": []}
    assert c.summarise_record({"kind": "surge", "vector": "syn_flood", "class": "tcp_syn",
                               "verdict": None})["lever"] is None


CLIENT_NETS = [ipaddress.IPv4Network("100.64.0.0/10"), ipaddress.IPv6Network("2001:db8:d::/48")]


def test_a_record_that_limits_or_bans_a_client_names_it() -> None:
    rec = {"kind": "attack", "vector": "tcp_other_flood", "service": None, "class": "tcp_other",
           "banned": ["198.18.0.2", "100.64.0.9"], "mitigations": [{"step": "tighten", "action": "applied"}],
           "verdict": {"lever": "sources", "why": "real sources each far above 5000 pps",
                       "evidence": {"abusive_sources": [{"source": "100.64.0.2", "pps": 26000},
                                                        {"source": "198.18.0.7", "pps": 9000}]}}}
    got = c.summarise_record(rec, CLIENT_NETS)
    assert got["legit_targeted"] == ["100.64.0.2", "100.64.0.9"]
    assert got["mitigations"] == ["tighten"] and got["banned"] == 2
    assert c.targeted(rec, [ipaddress.IPv4Network("203.0.113.0/24")]) == []


def test_a_client_limited_in_calm_misses_the_calm_target() -> None:
    rows = [row("none", "single", "calm", 1000.0), row("lab", "single", "calm", 1000.0, packets=0)]
    rows[1]["legit_discarded"]["limited_sources"] = ["100.64.0.2/32"]
    c.add_ratios(rows)
    clean = next(x for x in c.targets(rows) if x["name"] == "calm_clean")
    assert clean["met"] is False and clean["checks"][0]["value"] == 1


def _result() -> dict[str, Any]:
    rows = [row("none", "single", "calm", 5000.0), row("lab", "single", "calm", 4900.0, packets=0),
            row("lab", "single", "reflection_dns", 2000.0, packets=7), row("none", "single", "calm_end", 5000.0)]
    rows[2]["records"] = [{"kind": "attack", "vector": "udp_reflection/dns", "class": "udp", "lever": "shape",
                           "mitigations": ["rule"]}]
    rows[2]["legit_discarded"]["by_reason"] = {"rule_drop": 7}
    c.add_ratios(rows)
    return {"configs": {k: {"summary": v} for k, v in c.CONFIG_SUMMARY.items()}, "loads": c.LOAD_SUMMARY,
            "reference": c.references(rows), "rows": rows, "targets": c.targets(rows),
            "setup": {"seconds": 6.0, "settle_s": 1.0, "link_mbit": 100.0, "connections": 64, "took_s": 12.3}}


def test_the_table_has_every_row_its_records_and_the_targets() -> None:
    text = c.render(_result())
    lines = text.splitlines()
    assert "server link 100 Mbit/s" in lines[0]
    dns = next(x for x in lines if "reflection_dns" in x)
    assert "2,000" in dns and "0.40" in dns and "50,000" in dns
    assert "7 pkts (rule_drop 7)" in dns and "attack udp_reflection/dns/udp lever shape [rule]" in dns
    assert "with floodguard, calm rps >= 95% of calm without: target met" in text
    assert "during each attack >= 90% of calm without: target missed" in text
    assert "    missed: lab single reflection_dns: 0.40" in text
    clean = "0 legitimate sources limited or banned in calm (no client packet discarded, no client address banned)"
    assert f"{clean}: target met" in text
    assert "  single: 5,000 and 5,000 req/s, reference 5,000" in lines
    assert lines[-1] == "took 12 s"


def test_the_table_says_when_a_target_was_not_measured() -> None:
    res = _result()
    res["rows"] = res["rows"][:1]
    res["targets"] = c.targets(res["rows"])
    assert "with floodguard, calm rps >= 95% of calm without: not measured" in c.render(res)


@pytest.mark.parametrize("argv", [
    ["--seconds", "0.5"], ["--settle", "-1"], ["--pps", "0"], ["--link-mbit", "-3"], ["--connections", "0"],
    ["--repeat", "0"],
    ["--config", "nothing"], ["--phase", "mix"], ["--load", "many"],
], ids=["seconds", "settle", "pps", "link", "connections", "repeat", "config", "phase", "load"])
def test_bad_arguments_exit_2_with_a_message(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as err:
        c.parse_args(argv)
    assert err.value.code == 2
    assert "floodguard bench collateral: error:" in capsys.readouterr().err


def test_arguments_default_to_the_brief() -> None:
    a = c.parse_args([])
    assert (a.seconds, a.settle, a.link_mbit, a.pps, a.connections) == (6.0, 1.0, 100.0, None, 64)
    a = c.parse_args(["--json", "--phase", "syn_flood", "--phase", "icmp_flood", "--config", "lab"])
    assert a.json and a.phase == ["syn_flood", "icmp_flood"] and a.config == ["lab"]


def test_unknown_selections_are_refused_before_any_lab_is_built() -> None:
    with pytest.raises(ValueError, match="unknown phase"):
        c._ordered(["calm", "mix"], c.PHASES, "phase")
    assert c._ordered(["icmp_flood"], c.PHASES, "phase", c.CALM) == ["calm", "icmp_flood"]
    assert c._ordered(None, c.LOADS, "load") == ["single", "crowd"]


def test_every_attack_phase_is_a_scenario_with_a_rate() -> None:
    from agent.lab.scenarios import SCENARIOS

    assert set(c.ATTACKS) <= set(SCENARIOS)
    assert c.flood_pps("syn_flood", None) == 50_000
    assert c.flood_pps("icmp_flood", 20_000) == 20_000


def test_the_tick_comes_from_the_policy_or_its_default() -> None:
    assert c.tick_s(LAB_POLICY) == 0.1
    assert c.tick_s(c.default_policy(LAB_POLICY, SERVERS)) == 1.0


def test_repeated_measurements_become_one_row_with_their_median() -> None:
    ms = [row("none", "single", "calm", 1000.0), row("lab", "single", "calm", 900.0, packets=0),
          row("none", "single", "calm", 800.0), row("lab", "single", "calm", 990.0, packets=2),
          row("none", "single", "calm", 1200.0), row("lab", "single", "calm", 960.0, packets=1,
                                                       banned=("100.64.0.2/32",))]
    ms[3]["legit_discarded"]["by_reason"] = {"rate_limited": 2}
    ms[5]["legit_discarded"]["by_reason"] = {"rate_limited": 1}
    rows = c.combine(ms)
    assert [(r["config"], r["rps"], r["rps_measured"], r["runs"], r["spread"]) for r in rows] == [
        ("none", 1000.0, [1000.0, 800.0, 1200.0], 3, 0.4), ("lab", 960.0, [900.0, 990.0, 960.0], 3, 0.094)]
    lab = rows[1]
    assert lab["legit_discarded"]["packets"] == 3 and lab["legit_discarded"]["by_reason"] == {"rate_limited": 3}
    assert lab["legit_discarded"]["banned_sources"] == ["100.64.0.2/32"]
    assert lab["requests"] == sum(m["requests"] for m in ms[1::2])
    assert c.references(rows)["single"] == {"measured": [1000.0, 800.0, 1200.0], "rps": 1000.0}
    c.add_ratios(rows)
    assert lab["ratio"] == 0.96


def test_an_even_number_of_runs_takes_the_mean_of_the_middle_two() -> None:
    rows = c.combine([row("ceiling", "crowd", "calm", 100.0), row("ceiling", "crowd", "calm", 300.0)])
    assert rows[0]["rps"] == 200.0 and rows[0]["spread"] == 1.0
