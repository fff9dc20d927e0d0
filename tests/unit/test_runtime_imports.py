"""The runtime stands apart from its lab: the daemon and the controller, imported and ticking,
pull in no lab, bench, plotting or packet-crafting module.

It runs in a fresh interpreter: this one has imported the lab already (the
shared fixtures build namespaces with it). Every module of the runtime is
imported, found by walking the package rather than listed, so a module
added or renamed later is covered too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNIT = Path(__file__).resolve().parent

# agent.lab and agent.bench ship in the wheel but only `floodguard demo` and
# `floodguard bench` import them; matplotlib comes with the lab extra, scapy
# with the test extra.
FORBIDDEN = ("agent.lab", "agent.bench", "matplotlib", "scapy")

PROBE = """
import importlib, json, pkgutil, sys
sys.path.insert(0, UNIT)

import agent

imported = []
for info in pkgutil.iter_modules(agent.__path__):
    if info.name in ("lab", "bench"):
        continue
    module = importlib.import_module(f"agent.{info.name}")
    imported.append(module.__name__)
    if info.ispkg:
        for sub in pkgutil.walk_packages(module.__path__, prefix=f"{module.__name__}."):
            imported.append(importlib.import_module(sub.name).__name__)

import agent.daemon
from agent.cli import build_parser
from agent.control.controller import Controller, TickReport

build_parser()
from synthetic import Scenario, lab

scenario = Scenario.build(lab())
assert isinstance(scenario.controller, Controller)
reports = scenario.run(scenario.tick_s)

print(json.dumps({
    "imported": sorted(imported),
    "ticks": [type(r).__name__ for r in reports],
    "tick_report": TickReport.__name__,
    "modules": sorted(sys.modules),
}))
"""


def _probe() -> dict[str, list[str] | str]:
    out = subprocess.run(
        [sys.executable, "-c", f"UNIT = {str(UNIT)!r}\n{PROBE}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    result: dict[str, list[str] | str] = json.loads(out.stdout.splitlines()[-1])
    return result


def test_the_daemon_and_a_controller_tick_import_no_lab_bench_or_plotting() -> None:
    result = _probe()
    assert result["ticks"] == [result["tick_report"]], "the controller ran one tick"
    imported = result["imported"]
    for name in ("agent.cli", "agent.daemon", "agent.control.controller", "agent.datapath.loader",
                 "agent.metrics", "agent.log", "agent.policy.compile", "agent.contract.abi"):
        assert name in imported, f"{name} was not imported: the probe covers less than the runtime"
    leaked = [m for m in result["modules"] if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert leaked == [], f"the runtime imported {', '.join(leaked)}"
