"""`floodguard bench detection`: what a control tick costs, and how fast an
attack is mitigated.

* tick cost: the real program with 32,000 protected prefixes in 1,000
  groups, 1,000,000 sources in the per-source bucket map and 100,000
  protected hosts in the per-destination counters; the controller ticks
  through the real KernelPort (it never scans the per-source maps). Target
  <= 100 ms per tick, measured, not asserted.
* time to mitigate: on the lab (agent/lab), a flood starts at a protected
  server while the agent runs; the time from the first flood packet to the
  first packet the mitigation dropped, p50 and p95 over several runs, with a
  1 s and a 100 ms tick (targets <= 1 s and <= 0.3 s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

TARGETS = {"tick_ms": 100.0, "time_to_mitigate_p50_s_tick_1s": 1.0, "time_to_mitigate_p50_s_tick_100ms": 0.3}


def _fill_buckets(port: Any, n: int) -> None:
    """n distinct sources in buckets4 (batch writes straight into the LRU map)."""
    from agent.contract import abi
    from agent.datapath import bpfsys as sysbpf

    t = port.maps["buckets4"]
    kd = np.dtype(abi.BucketKey4)
    vd = np.dtype(abi.Bucket)
    step = 1 << 16
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    for start in range(0, n, step):
        m = min(step, n - start)
        keys = np.zeros(m, dtype=kd)
        keys["addr"] = (np.arange(start, start + m, dtype=np.uint32) + np.uint32(0x0B000000)).byteswap()
        keys["group"] = (np.arange(m) % 1000 + 1).astype(np.uint16)
        keys["cls"] = 2
        vals = np.zeros(m, dtype=vd)
        vals["pkt_tat"] = now
        sysbpf.update_batch(t.fd, keys.tobytes(), vals.tobytes(), m)


def _fill_destinations(port: Any, hosts: int) -> None:
    """Per-destination counters for `hosts` protected hosts, moving a little each call."""
    from agent.contract import abi
    from agent.datapath import bpfsys as sysbpf

    t = port.maps["dst_stats"]
    kd = np.dtype(abi.DstKey)
    vd = np.dtype(abi.DstCounter)
    ncpu = t.ncpus
    step = 1 << 14
    for start in range(0, hosts, step):
        m = min(step, hosts - start)
        idx = np.arange(start, start + m)
        keys = np.zeros(m, dtype=kd)
        # hosts inside the protected /28s of 10.0.0.0/8 (see bench/policy.py)
        keys["addr"][:, 0] = (np.uint32(0x0A000000) + idx.astype(np.uint32)).byteswap()
        keys["family"] = 4
        vals = np.zeros((m, ncpu), dtype=vd)
        vals["packets"][:, :, 2] = np.random.randint(1000, 5000, size=(m, ncpu))
        vals["bytes"][:, :, 2] = vals["packets"][:, :, 2] * 200
        vals["group"] = (idx // 512 + 1)[:, None]
        sysbpf.update_batch(t.fd, keys.tobytes(), vals.tobytes(), m)


def tick_cost(ticks: int = 20, sources: int = 1_000_000, hosts: int = 100_000) -> dict[str, Any]:
    from agent.bench.policy import _write_policy
    from agent.control.controller import Controller
    from agent.control.kernel import KernelPort
    from agent.datapath import loader
    from agent.datapath.apply import apply_policy
    from agent.datapath.mapport import MapPort
    from agent.datapath.maps import Maps
    from agent.policy import load_policy_or_raise
    from agent.policy.compile import compile_policy

    pin = f"/sys/fs/bpf/floodguard-bench-{os.getpid()}-detection"
    with tempfile.TemporaryDirectory() as tmp:
        path = _write_policy(Path(tmp), [], groups=1000, per_group=32)
        text = path.read_text().replace("  sources: 65536", f"  sources: {int(sources * 1.1)}")
        text = text.replace("  destinations: 65536", f"  destinations: {int(hosts * 1.3)}")
        path.write_text(text)
        policy = load_policy_or_raise(path)
        compiled = compile_policy(policy)
        prog = loader.build(loader.BuildOptions(pin_dir=pin, capacity=compiled.capacity))
        maps = Maps.from_program(prog)
        port = MapPort(maps)
        try:
            apply_policy(port, compiled.desired)
            t0 = time.perf_counter()
            _fill_buckets(port, sources)
            fill_s = time.perf_counter() - t0
            controller = Controller(policy, compiled, KernelPort(port))
            wall: list[float] = []
            cpu: list[float] = []
            for i in range(ticks):
                _fill_destinations(port, hosts)  # counters move between ticks
                w, c = time.perf_counter(), time.process_time()
                controller.tick()
                cpu.append(time.process_time() - c)
                wall.append(time.perf_counter() - w)
                del i
            controller.close()
            steady = wall[2:] or wall
            return {
                "protected_prefixes": 32_000,
                "groups": 1000,
                "sources_in_bucket_map": port.count_entries("buckets4"),
                "hosts_in_destination_map": port.count_entries("dst_stats"),
                "bucket_fill_seconds": round(fill_s, 2),
                "tick_ms_p50": round(statistics.median(steady) * 1000, 1),
                "tick_ms_max": round(max(steady) * 1000, 1),
                "tick_cpu_ms_p50": round(statistics.median(cpu[2:] or cpu) * 1000, 1),
            }
        finally:
            port.close()
            maps.close()
            prog.close()
            loader.remove_pins(pin)


def run(smoke: bool = False, mitigation_runs: int = 10) -> dict[str, Any]:
    out: dict[str, Any] = {"targets": TARGETS}
    if smoke:
        out["tick_cost"] = tick_cost(ticks=4, sources=20_000, hosts=5_000)
    else:
        out["tick_cost"] = tick_cost()
    from agent.bench.mitigation import measure

    n = 2 if smoke else mitigation_runs
    # The lab policy starts an attack after 2 ticks over the threshold; at a
    # 1 s tick that alone is 1-2 s, so the 1 s case is measured with both.
    out["time_to_mitigate_tick_100ms"] = measure(tick="100ms", consecutive=2, runs=n)
    out["time_to_mitigate_tick_1s"] = measure(tick="1s", consecutive=1, runs=n)
    out["time_to_mitigate_tick_1s_consecutive_2"] = measure(tick="1s", consecutive=2, runs=n)
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="floodguard bench detection",
        description="Control-tick cost with 32,000 protected prefixes and 1,000,000 sources, and the time "
        "from the first flood packet to the first packet dropped by the mitigation (lab, real traffic).",
        epilog="examples:\n  floodguard bench detection\n  floodguard bench detection --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--json", action="store_true", help="print JSON")
    ap.add_argument("--runs", type=int, default=10, help="floods per tick setting (default 10)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, to check the bench itself")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("floodguard bench detection: run as root (it loads the XDP program)", file=sys.stderr)
        return 1
    res = run(args.smoke, args.runs)
    if args.json:
        json.dump(res, sys.stdout, indent=2)
        print()
        return 0
    tc = res["tick_cost"]
    print(f"tick with {tc['protected_prefixes']:,} protected prefixes, {tc['sources_in_bucket_map']:,} sources, "
          f"{tc['hosts_in_destination_map']:,} hosts: p50 {tc['tick_ms_p50']} ms, max {tc['tick_ms_max']} ms "
          f"(target <= {TARGETS['tick_ms']:.0f} ms)")
    for key, target in (("tick_1s", 1.0), ("tick_1s_consecutive_2", 1.0), ("tick_100ms", 0.3)):
        r = res[f"time_to_mitigate_{key}"]
        print(f"time to mitigate, tick {r['tick']}, {r['consecutive']} tick(s) over: p50 {r['p50_s']} s, "
              f"p95 {r['p95_s']} s over {r['runs']} floods (target p50 <= {target} s)")
    return 0
