"""agent/bench/e2e.py, tiny: every configuration yields a figure and really drops the flood.

Benchmarks are not tests, so nothing here asserts on time: a figure exists
for every configuration (a busy machine may even make the /proc/stat one
negative), each filter's own counter says it dropped (nearly) every flood
packet and let the flood nowhere near the server, the legitimate figures
for no filter and floodguard exist, and the run leaves nothing behind: no
namespace, no pin, no process.
"""

from __future__ import annotations

import json
import math
import os

import psutil
import pytest

from agent.bench import e2e
from agent.lab.topology import run_prefix

PPS = 5_000
SECONDS = 2.0
FILTERS = ("floodguard", "iptables_raw", "nftables_ingress", "xdp_filter", "xdp_drop")


@pytest.mark.slow
def test_every_configuration_is_measured_and_every_filter_drops_the_flood() -> None:
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    xdp_filter_pins = os.path.exists("/sys/fs/bpf/xdp-filter")

    result = e2e.run(PPS, SECONDS, baseline=0.5, wait_quiet=0.0, retries=0)

    json.dumps(result)  # what --json prints
    rows = result["configs"]
    assert set(rows) == set(e2e.CONFIGS), result["notes"]
    flood = PPS * SECONDS
    for name, row in rows.items():
        for key in ("cpu_ns_per_packet", "ratio_to_xdp_drop", "attributed_ns_per_packet"):
            assert isinstance(row[key], float) and math.isfinite(row[key]), (name, key, row, result["notes"])
        # Everything trafgen sent crossed the upstream router to gw-in (the probes add a little).
        assert row["sent"] == flood, (name, row)
        assert row["packets"] >= 0.95 * flood, (name, row)
    assert rows["xdp_drop"]["ratio_to_xdp_drop"] == 1.0
    for name in FILTERS:
        row = rows[name]
        assert row["dropped"] >= 0.99 * row["sent"], (name, row)
        # What reached the server is the legitimate probes' traffic, not the flood.
        assert row["reached_server"] < 0.05 * flood, (name, row)
    assert rows["no_filter"]["dropped"] is None
    assert rows["no_filter"]["reached_server"] > 0.05 * flood, rows["no_filter"]

    legit = result["legit_success_pct"]
    assert set(legit) == {"no_filter", "floodguard"}
    for name in ("no_filter", "floodguard"):
        assert isinstance(legit[name], float) and 0.0 <= legit[name] <= 100.0, legit
        assert rows[name]["legit_http_attempts"] >= 10, rows[name]
    assert "legit" in e2e.render(result)

    leftovers = [ns for ns in os.listdir("/run/netns") if ns.startswith(run_prefix("e2e"))]
    assert leftovers == []
    assert not os.path.exists(f"/sys/fs/bpf/floodguard-bench-e2e-{os.getpid()}")
    assert os.path.exists("/sys/fs/bpf/xdp-filter") == xdp_filter_pins  # its loader, not the xdp-filter command
    new = [p for p in psutil.Process().children(recursive=True) if p.pid not in children_before and p.is_running()
           and p.status() != psutil.STATUS_ZOMBIE]
    assert new == [], [p.cmdline() for p in new]


def test_help_lists_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        e2e.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "floodguard bench e2e --json" in out and "--pps" in out and "--seconds" in out
