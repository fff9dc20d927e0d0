"""`floodguard bench upstream`: from the escalation signal to the route in BIRD's table.

Builds the gateway/upstream pair of agent/lab/upstream.py (BIRD 2 as the
upstream, `floodguard speaker` with gobgpd on the gateway, eBGP between
them), then, ``--runs`` times: hands the upstream manager an attack record
that has just been marked escalated — the moment the controller's
escalation signal reaches the upstream part — and polls ``birdc`` until both
the Flowspec rule (flowtab4) and the RTBH route (master4, blackhole) are
there; then ends the attack and waits for both to be withdrawn. Prints the
p50 and p95 of the announce times (and of the withdrawals), in ms.

The time includes one gRPC call per route, gobgpd's UPDATE, BIRD's import
and the polling interval (``--poll``, 5 ms by default), so the numbers are
an upper bound of what the agent adds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from agent.lab.bird import nets
from agent.lab.upstream import UpstreamLab, policy_text
from agent.policy import load_policy
from agent.upstream.manager import Manager
from agent.upstream.service import gobgp_speaker


def _record(i: int, active: bool = True) -> dict[str, object]:
    return {"id": f"bench-{i}", "active": active, "escalated": True, "group": "web", "class": "udp",
            "flood": "udp_reflection", "target": {"group": "web", "host": f"203.0.113.{10 + i % 200}",
                                                   "prefixes": []},
            "mitigations": [], "top_source_ports": [{"port": 53, "share": 0.95}]}


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="floodguard bench upstream", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--poll", type=float, default=0.005, help="seconds between two birdc reads")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    announce: list[float] = []
    withdraw: list[float] = []
    with tempfile.TemporaryDirectory(prefix="fg-bench-upstream-") as tmp:
        work = Path(tmp)
        with UpstreamLab(work, policy_text(work, upstream="  hold_down: 0s\n  changes_per_minute: 1000\n")) as lab:
            policy = load_policy(lab.policy_path).policy
            assert policy is not None and lab.bird is not None
            bird = lab.bird
            m = Manager(policy, gobgp_speaker(policy), state_dir=work / "state")
            m.tick([])
            for i in range(args.runs):
                rec = _record(i)
                host = f"{rec['target']['host']}/32"  # type: ignore[index]
                t0 = time.perf_counter()
                m.tick([rec])
                while not (host in nets(bird, "master4") and len(nets(bird, "flowtab4")) == 1):
                    time.sleep(args.poll)
                announce.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                m.tick([_record(i, active=False)])
                while nets(bird, "master4") or nets(bird, "flowtab4"):
                    time.sleep(args.poll)
                withdraw.append(time.perf_counter() - t0)
    out = {
        "runs": args.runs,
        "announce_ms": {"p50": round(statistics.median(announce) * 1e3, 2),
                        "p95": round(_quantile(announce, 0.95) * 1e3, 2),
                        "max": round(max(announce) * 1e3, 2)},
        "withdraw_ms": {"p50": round(statistics.median(withdraw) * 1e3, 2),
                        "p95": round(_quantile(withdraw, 0.95) * 1e3, 2),
                        "max": round(max(withdraw) * 1e3, 2)},
        "what": "escalated attack record handed to the upstream manager -> Flowspec and RTBH routes in "
                "BIRD's tables (birdc), through gobgpd and an eBGP session",
        "poll_s": args.poll,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"upstream: escalation -> route in BIRD, {args.runs} runs: p50 {out['announce_ms']['p50']} ms, "
              f"p95 {out['announce_ms']['p95']} ms; withdrawal p50 {out['withdraw_ms']['p50']} ms, "
              f"p95 {out['withdraw_ms']['p95']} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
