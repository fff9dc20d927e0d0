"""Time to mitigate, on the lab: from the first flood packet at the gateway to
the first packet dropped by a mitigation (a rule, a tightened limit, a ban).

The agent runs as in production (agent/lab/runagent.py) with the lab
policy and the tick under test; a DNS reflection flood from forged sources
starts, and a tight loop watches the gateway interface's receive counter
(the first flood packet) and the program's verdict counters (the first
mitigation drop). The flood then stops and the attack is allowed to end
before the next run.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from agent.contract import abi

MITIGATION_REASONS = (abi.Reason.RULE_DROP, abi.Reason.RULE_RATE_LIMITED, abi.Reason.RATE_LIMITED, abi.Reason.BANNED)


def _drops(port: Any) -> int:
    stats = port.read_stats()
    return int(sum(int(stats[:, r, :, 0, 0].sum()) for r in MITIGATION_REASONS))


def _quiet(agent: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not agent.call("attacks")["active"]:
            maps, port = agent.port()
            try:
                if port.read_config().n_rules == 0:
                    return
            finally:
                port.close()
                maps.close()
        time.sleep(0.2)


def measure(tick: str = "1s", runs: int = 10, scenario: str = "reflection_dns", pps: int = 50_000,
            consecutive: int = 2) -> dict[str, Any]:
    from agent.lab.runagent import LabAgent
    from agent.lab.topology import build_lab
    from agent.lab.traffic import Flood, LinkCounter

    lab = build_lab()
    agent = LabAgent(lab, overrides={"detection": {"tick": tick, "consecutive": consecutive},
                                     "mitigation": {"ttl": "3s"}})
    times: list[float] = []
    try:
        agent.start()
        rx = LinkCounter(lab.topology, lab.gateway, lab.gateway_ingress.ifname)
        maps, port = agent.port()
        try:
            for _ in range(runs):
                _quiet(agent)
                rx0, d0 = rx.read().rx_packets, _drops(port)
                flood = Flood(lab, scenario, pps=pps)
                flood.start()
                t_first = t_drop = None
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and t_drop is None:
                    now = time.monotonic()
                    if t_first is None and rx.read().rx_packets > rx0 + 10:
                        t_first = now
                    if t_first is not None and _drops(port) > d0:
                        t_drop = time.monotonic()
                flood.stop()
                if t_first is not None and t_drop is not None:
                    times.append(t_drop - t_first)
        finally:
            port.close()
            maps.close()
            rx.close()
    finally:
        agent.close()
        lab.topology.teardown()
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] if ordered else None
    return {
        "scenario": scenario,
        "pps": pps,
        "tick": tick,
        "consecutive": consecutive,
        "runs": len(times),
        "p50_s": round(statistics.median(times), 3) if times else None,
        "p95_s": round(p95, 3) if p95 is not None else None,
        "all_s": [round(t, 3) for t in times],
    }
