"""`floodguard bench policy`: how long a policy takes to reach the kernel.

For each case a child process writes a policy, then times load + validate
(the YAML and prefix files), compile (pure Python) and apply (the diff
written into a real program's maps), and reports its peak RSS. A last case
changes 1% of a 100,000-prefix policy and times the reload of the change
alone. Targets (measured, never asserted): 100,000 prefixes in <= 2 s, the
1% change in <= 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGETS = {"prefixes_100000": 2.0, "reload_1pct_of_100000": 0.2}


def _prefixes(n: int, seed: int) -> list[str]:
    """A deny list with a realistic mix: mostly /24 and /32, some /16-/22."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        r = rng.random()
        plen = 32 if r < 0.45 else 24 if r < 0.9 else rng.choice([16, 18, 20, 22])
        a = rng.randrange(1 << 32) & (((1 << plen) - 1) << (32 - plen))
        # keep clear of the protected range used below
        if (a >> 24) in (0, 10, 127, 203, 224) or a >> 28 >= 14:
            continue
        p = f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}/{plen}"
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def _capacity(n_prefixes: int, hosts: int = 0) -> str:
    size = max(4096, n_prefixes * 2)
    return (
        "capacity:\n"
        f"  prefixes: {size}\n  hosts4: {max(65536, hosts * 2)}\n  prefixes6: 4096\n"
        "  groups: 2048\n  sources: 65536\n  sources6: 4096\n  destinations: 65536\n  verified: 4096\n"
    )


def _write_policy(d: Path, deny: list[str], groups: int = 1, per_group: int = 1) -> Path:
    (d / "deny.txt").write_text("\n".join(deny) + "\n")
    lines = ["interfaces: [eth0]", "deny:", "  files: [deny.txt]", "protect:"]
    for g in range(groups):
        lines.append(f"  - name: g{g}")
        lines.append("    prefixes:")
        for i in range(per_group):
            n = g * per_group + i  # 32,000 /28s inside 10.0.0.0/8
            lines.append(f"      - 10.{(n >> 12) & 255}.{(n >> 4) & 255}.{(n & 15) << 4}/28")
    hosts = groups * per_group * 16 + sum(1 << (32 - int(p.rsplit("/", 1)[1])) for p in deny
                                           if int(p.rsplit("/", 1)[1]) > 24)
    lines.append(_capacity(len(deny), hosts))
    p = d / "policy.yaml"
    p.write_text("\n".join(lines) + "\n")
    return p


def _case(name: str, n_deny: int, groups: int, per_group: int, change_pct: float, q: Any) -> None:
    from agent.datapath import loader
    from agent.datapath.apply import apply_policy
    from agent.datapath.mapport import MapPort
    from agent.datapath.maps import Maps
    from agent.policy import load_policy_or_raise
    from agent.policy.compile import compile_policy

    pin = f"/sys/fs/bpf/floodguard-bench-{os.getpid()}"
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        deny = _prefixes(n_deny, seed=1)
        path = _write_policy(d, deny, groups, per_group)
        policy = load_policy_or_raise(path)
        compiled = compile_policy(policy)
        prog = loader.build(loader.BuildOptions(pin_dir=pin, capacity=compiled.capacity))
        maps = Maps.from_program(prog)
        port = MapPort(maps)
        try:
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t0 = time.perf_counter()
            policy = load_policy_or_raise(path)
            t1 = time.perf_counter()
            compiled = compile_policy(policy)
            t2 = time.perf_counter()
            apply_policy(port, compiled.desired)
            t3 = time.perf_counter()
            result: dict[str, Any] = {
                "prefixes": n_deny + groups * per_group,
                "load_seconds": round(t1 - t0, 3),
                "compile_seconds": round(t2 - t1, 3),
                "apply_seconds": round(t3 - t2, 3),
                "total_seconds": round(t3 - t0, 3),
            }
            if change_pct:
                k = int(n_deny * change_pct)
                changed = deny[k:] + _prefixes(n_deny + k, seed=2)[-k:]
                _write_policy(d, changed, groups, per_group)
                t4 = time.perf_counter()
                new_policy = load_policy_or_raise(path)
                new = compile_policy(new_policy, compiled.group_ids)
                stats = apply_policy(port, new.desired, compiled.desired)
                t5 = time.perf_counter()
                result = {
                    "prefixes": n_deny,
                    "changed_prefixes": stats.prefixes_changed,
                    "load_seconds": result["load_seconds"],
                    "total_seconds": round(t5 - t4, 3),
                    "first_load_seconds": result["total_seconds"],
                }
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            result["peak_rss_mb"] = round(peak / 1024, 1)
            result["rss_growth_mb"] = round((peak - rss_before) / 1024, 1)
            q.put((name, result))
        finally:
            port.close()
            maps.close()
            prog.close()
            loader.remove_pins(pin)


CASES = [
    ("prefixes_1000", 1_000, 1, 1, 0.0),
    ("prefixes_100000", 100_000, 1, 1, 0.0),
    ("prefixes_1000000", 1_000_000, 1, 1, 0.0),
    ("protected_32000_in_1000_groups", 0, 1000, 32, 0.0),
    ("reload_1pct_of_100000", 100_000, 1, 1, 0.01),
]
SMOKE = [("prefixes_1000", 1_000, 1, 1, 0.0), ("reload_1pct_of_1000", 1_000, 1, 1, 0.01)]


def run(smoke: bool = False) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    out: dict[str, Any] = {}
    for name, n, groups, per_group, pct in SMOKE if smoke else CASES:
        q: Any = ctx.Queue()
        p = ctx.Process(target=_case, args=(name, n, groups, per_group, pct, q))
        p.start()
        got = q.get(timeout=900)
        p.join()
        out[got[0]] = got[1]
    return {"cases": out, "targets_seconds": TARGETS}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="floodguard bench policy",
        description="Time load + validate + compile + apply of policies of growing size, "
        "and of a reload that changes 1% of 100,000 prefixes; peak memory per case.",
        epilog="examples:\n  floodguard bench policy\n  floodguard bench policy --json > policy-bench.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, to check the bench itself")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("floodguard bench policy: run as root (it loads the XDP program)", file=sys.stderr)
        return 1
    res = run(args.smoke)
    if args.json:
        json.dump(res, sys.stdout, indent=2)
        print()
        return 0
    print(f"{'case':34} {'prefixes':>10} {'load s':>8} {'total s':>8} {'peak MB':>8}  target")
    for name, r in res["cases"].items():
        target = TARGETS.get(name)
        tgt = f"<= {target} s" if target else ""
        print(f"{name:34} {r['prefixes']:>10,} {r['load_seconds']:>8} {r['total_seconds']:>8} "
              f"{r['peak_rss_mb']:>8}  {tgt}")
    return 0
