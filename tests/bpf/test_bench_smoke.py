"""The benchmarks run end to end, on tiny tables: every scenario and every
candidate produces a number and the verdict it should. Nothing here looks
at the numbers themselves — benchmarks measure, tests never assert on time.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from agent.bench import datapath, prefixes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def datapath_result() -> dict[str, Any]:
    return datapath.run(repeat=2_000, runs=1, smoke=True)


def test_every_scenario_has_a_number_and_a_reason(datapath_result: dict[str, Any]) -> None:
    rows = datapath_result["scenarios"]
    assert list(rows) == list(datapath.SCENARIOS)
    notes = "\n".join(datapath_result["notes"])
    for name, row in rows.items():
        assert set(row) == {"ns_per_packet", "ratio_to_trivial_drop", "ratio_to_one_miss", "peer", "ratio_to_peer",
                            "reason"}, name
        assert isinstance(row["ns_per_packet"], float) and row["ns_per_packet"] > 0, f"{name}: {row}\n{notes}"
        assert isinstance(row["ratio_to_trivial_drop"], float) and row["ratio_to_trivial_drop"] > 0, name
        assert isinstance(row["ratio_to_one_miss"], float) and row["ratio_to_one_miss"] > 0, name
        assert row["reason"], name
    assert rows["legit_pass"]["peer"] == "xdp_filter_pass" and rows["banned_32_of_1m"]["peer"] == "xdp_filter_drop"
    for name in ("legit_pass", "banned_32_of_1m"):
        assert isinstance(rows[name]["ratio_to_peer"], float) and rows[name]["ratio_to_peer"] > 0, name
    assert rows["spoofed_flood"]["peer"] is None and rows["spoofed_flood"]["ratio_to_peer"] is None


def test_reasons_are_what_the_program_counted(datapath_result: dict[str, Any]) -> None:
    rows = datapath_result["scenarios"]
    # "passed" only when every packet of every run was counted as passed.
    assert rows["legit_pass"]["reason"] == "passed"
    assert rows["banned_32_of_1m"]["reason"] == "banned"
    assert rows["banned_16_of_1m"]["reason"] == "banned"
    assert rows["allowlisted"]["reason"] == "allowlisted"
    assert rows["ipv6"]["reason"] == "passed"
    assert rows["qinq"]["reason"] == "passed"
    assert rows["trivial_drop"]["reason"] == "drop"
    assert rows["xdp_filter_pass"]["reason"] == "pass"
    assert rows["xdp_filter_drop"]["reason"] == "drop"
    assert rows["one_miss"]["reason"] == "drop", "every source the run visits is in one_miss's hash"
    assert rows["rule_drop"]["reason"] == "rule_drop", "the DNS reflection meets its rule, the 16th"
    assert rows["fragment"]["reason"] == "rule_drop", "the non-first fragments meet the fragment rule"


def test_json_shape_and_cleanup(datapath_result: dict[str, Any]) -> None:
    doc = json.loads(json.dumps(datapath_result))
    assert {"scenarios", "build_seconds", "build_peak_rss_mb"} <= set(doc)
    assert doc["build_seconds"] > 0 and doc["build_peak_rss_mb"] > 0
    assert "tail_call_drop" in doc, "the front's tail call into xdp-filter was refused: " + "; ".join(doc["notes"])
    assert set(doc["targets"]) == {f"{name}_vs_{against}" for name, against, _most in datapath.TARGETS}
    for entry in doc["targets"].values():
        assert entry["met"] in (True, False), entry  # every target measured in one run
    assert "met_without_front" in doc["targets"]["legit_pass_vs_xdp_filter_pass"]
    assert datapath.render(datapath_result)
    assert not os.path.exists(f"/sys/fs/bpf/floodguard-bench-{os.getpid()}")


def test_prefix_sets_are_half_matching_and_exact() -> None:
    ps = prefixes.make_set(5_000, seed=3)
    assert len(ps.addrs) == 5_000
    assert len({(int(a), int(p)) for a, p in zip(ps.addrs, ps.lens, strict=True)}) == 5_000
    assert abs(float(ps.covered.mean()) - 0.5) < 0.01
    mix = ps.mix()
    assert mix["/24"] > mix["/16-/22"] and mix["/32"] > mix["/16-/22"] and mix["/8-/12"] >= 1


def test_every_prefix_candidate_answers_exactly() -> None:
    result = prefixes.run(sizes=[1_000], repeat=2_000, runs=1)
    rows = result["sizes"]["1000"]["candidates"]
    assert set(rows) == {c.name for c in (*prefixes.CANDIDATES, prefixes.BASELINE)}
    for name, row in rows.items():
        if "skipped" in row:
            # Only a structure the installed BCC cannot declare may be skipped, with why.
            assert name == "bloom_hash" and "bloom_filter" in row["skipped"], row
            continue
        assert row["ns_per_packet"] > 0, name
        if name != prefixes.BASELINE.name:
            assert row["answers"] == "correct", (name, row)
    assert result["winner"] is not None
    assert prefixes.render(result)
    assert not os.path.exists(f"/sys/fs/bpf/floodguard-bench-prefixes-{os.getpid()}")
