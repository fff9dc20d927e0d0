"""`floodguard demo`: a real attack, really mitigated, in about 75 seconds.

It builds the lab (this package: attackers with foreign addresses, clients with
domestic ones, a gateway running floodguard on its ingress, a server
network behind it), starts the agent with etc/lab-policy.yaml, and plays a
story: calm, a DNS reflection flood, calm, a spoofed SYN flood, calm. A
live view shows the traffic arriving, what passed and what was dropped and
why, the attacks and their mitigations, and how the legitimate users fare.
It ends with a summary per attack and a PNG timeline, and always removes
the lab. The PNG needs matplotlib, which the lab extra brings
(``pip install 'floodguard[lab]'``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from agent.contract import abi

# What the demo counts as stopped: every reason whose packet never reaches the server.
DROP_REASONS = tuple(sorted(abi.NOT_DELIVERED))


@dataclass
class Act:
    name: str  # calm | scenario name
    seconds: float
    title: str


STORY = (
    Act("calm", 12, "calm: legitimate clients use the web and UDP services"),
    Act("reflection_dns", 20, "DNS reflection: 50,000 pps of 1,200-byte answers from forged resolvers"),
    Act("calm", 10, "calm again"),
    Act("syn_flood", 20, "SYN flood: 50,000 pps from forged sources at the web server"),
    Act("calm", 13, "calm: mitigations relax and expire"),
)
SHORT_STORY = (
    Act("calm", 4, "calm"),
    Act("reflection_dns", 8, "DNS reflection"),
    Act("calm", 4, "calm"),
    Act("syn_flood", 8, "SYN flood"),
    Act("calm", 6, "calm"),
)


@dataclass
class Point:
    t: float
    pps_in: float
    by_reason: dict[str, float]
    legit_pct: float | None
    act: str


@dataclass
class Recorder:
    points: list[Point] = field(default_factory=list)
    acts: list[tuple[str, float, float]] = field(default_factory=list)  # name, start, end (monotonic)


def _rate(pps: float) -> str:
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if pps >= div:
            return f"{pps / div:.1f}{unit}"
    return f"{pps:.0f}"


def _legit(probes: dict[str, Any], since: float, until: float) -> float | None:
    worst: float | None = None
    for p in probes.values():
        st = p.stats(since, until)
        if st.attempts:
            worst = st.success_pct if worst is None else min(worst, st.success_pct)
    return worst


def run(out: TextIO, png: Path, short: bool = False) -> int:  # noqa: PLR0915 — the demo's script, act by act, reads top to bottom
    from agent.datapath.errors import DatapathError
    from agent.lab.runagent import LabAgent
    from agent.lab.scenarios import SCENARIOS
    from agent.lab.topology import build_lab
    from agent.lab.traffic import DEFAULTS, Flood, LegitServer, Probe, attach_upstream_pass, limit_server_link

    story = SHORT_STORY if short else STORY
    live = out.isatty()
    rec = Recorder()
    wall0, mono0 = time.time(), time.monotonic()
    print("floodguard demo: building the lab (namespaces, veth pairs, routes)...", file=out, flush=True)
    lab = build_lab()
    try:
        with contextlib.ExitStack() as stack:
            up = attach_upstream_pass(lab)
            stack.callback(up.detach)
            stack.enter_context(limit_server_link(lab, DEFAULTS.server_link_mbit))
            stack.enter_context(LegitServer(lab))
            print("floodguard demo: starting the agent (building the XDP program)...", file=out, flush=True)
            try:
                agent = LabAgent(lab).start()
            except (RuntimeError, DatapathError) as e:
                print(f"floodguard demo: the agent did not start: {e}", file=sys.stderr)
                return 1
            stack.callback(agent.close)
            probes = {k: Probe(lab, k) for k in ("http", "udp")}
            for p in probes.values():
                stack.callback(p.stop)
                p.start()
            maps, port = agent.port()
            stack.callback(maps.close)
            stack.callback(port.close)
            prev = port.read_stats()
            prev_t = time.monotonic()
            for act in story:
                start = time.monotonic()
                flood = None
                if act.name != "calm":
                    scenario = SCENARIOS[act.name]
                    flood = Flood(lab, scenario.recipe, pps=DEFAULTS.flood_pps, duration=act.seconds)
                    stack.callback(flood.stop)
                    flood.start()
                while time.monotonic() < start + act.seconds:
                    # One-second windows: what the table shows is a rate an operator reads.
                    time.sleep(1.0)
                    now = time.monotonic()
                    stats = port.read_stats()
                    dt = max(now - prev_t, 1e-3)
                    d = (stats - prev)[..., 0].sum(axis=(0, 2, 3)) / dt
                    prev, prev_t = stats, now
                    by_reason = {abi.Reason(i).label: float(v) for i, v in enumerate(d) if v > 0}
                    legit = _legit(probes, now - 3, now - 0.5)
                    rec.points.append(Point(now - mono0, float(d.sum()), by_reason, legit, act.name))
                    attacks = agent.call("attacks", recent=0)["active"]
                    _draw(out, live, act, now - start, rec.points[-1], attacks)
                if flood is not None:
                    flood.stop()
                rec.acts.append((act.name, start - mono0, time.monotonic() - mono0))
            time.sleep(1.0)
            for p in probes.values():
                p.stop()
            attacks = agent.call("attacks", recent=100)
            summary = _summary(attacks["active"] + attacks["recent"], probes, wall0, mono0)
    finally:
        lab.topology.teardown()
    _print_summary(out, summary)
    try:
        _plot(png, rec, summary)
        print(f"\ntimeline: {png}", file=out)
    except ImportError:
        print("\ntimeline not written: matplotlib is missing: pip install 'floodguard[lab]'", file=sys.stderr)
    ok = sum(1 for s in summary if s["legit_pct"] is not None and s["legit_pct"] >= 95.0)
    print(f"{len(summary)} attack(s) detected; {ok} with legitimate success >= 95% during the attack; "
          f"lab removed", file=out)
    return 0


def _draw(out: TextIO, live: bool, act: Act, elapsed: float, p: Point, attacks: list[dict[str, Any]]) -> None:
    drops = {k: v for k, v in p.by_reason.items() if k in {r.label for r in DROP_REASONS}}
    passed = p.pps_in - sum(drops.values())
    legit = "-" if p.legit_pct is None else f"{p.legit_pct:.0f}%"
    if not live:
        att = ", ".join(f"{a['vector']}{'/' + a['service'] if a['service'] else ''}" for a in attacks) or "none"
        print(f"[{p.t:5.1f}s] {act.name:14} in {_rate(p.pps_in):>6} pps, passed {_rate(passed):>6}, "
              f"dropped/answered {_rate(sum(drops.values())):>6}; attacks: {att}; legit {legit}", file=out, flush=True)
        return
    lines = [f"floodguard demo — {act.title}  ({elapsed:4.1f}/{act.seconds:.0f} s)", ""]
    lines.append(f"  traffic in      {_rate(p.pps_in):>8} pps")
    lines.append(f"  passed          {_rate(passed):>8} pps")
    for reason, v in sorted(drops.items(), key=lambda kv: -kv[1]):
        verb = "answered" if reason == "syn_challenged" else "dropped"
        lines.append(f"  {verb} {reason:<22} {_rate(v):>8} pps")
    lines.append("")
    lines.append(f"  legitimate success (HTTP and UDP, last 3 s): {legit}")
    lines.append("")
    lines.append(f"  active attacks: {len(attacks)}")
    for a in attacks:
        vec = a["vector"] + (f"/{a['service']}" if a["service"] else "")
        steps = ", ".join(dict.fromkeys(m["step"] for m in a["mitigations"] if m["action"] == "applied")) or "detecting"
        lines.append(f"    {vec:24} on {a['target']['host'] or a['group']}: peak {_rate(a['peak_pps'])} pps, "
                     f"mitigations: {steps}" + (" (forged sources: no bans)" if a["spoofed"] else ""))
    out.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
    out.flush()


def _summary(attacks: list[dict[str, Any]], probes: dict[str, Any], wall0: float, mono0: float) -> list[dict[str, Any]]:
    rows = []
    for a in sorted(attacks, key=lambda x: x["started_at"]):
        start = datetime.fromisoformat(a["started_at"].replace("Z", "+00:00")).timestamp()
        s_mono = mono0 + (start - wall0)
        e_mono = s_mono + a["duration_s"]
        rows.append({
            "vector": a["vector"] + (f"/{a['service']}" if a["service"] else ""),
            "time_to_mitigate_s": a["time_to_mitigate_s"],
            "dropped": a["dropped_packets"],
            "peak_pps": a["peak_pps"],
            "legit_pct": _legit(probes, s_mono, e_mono),
            "mitigations": list(dict.fromkeys(m["step"] for m in a["mitigations"] if m["action"] == "applied")),
            "start_s": s_mono - mono0,
            "end_s": e_mono - mono0,
        })
    return rows


def _print_summary(out: TextIO, rows: list[dict[str, Any]]) -> None:
    print("\nsummary", file=out)
    header = ["ATTACK", "PEAK PPS", "MITIGATED IN", "DROPPED/ANSWERED", "LEGIT SUCCESS", "MITIGATIONS"]
    table = [[r["vector"], _rate(r["peak_pps"]),
              "-" if r["time_to_mitigate_s"] is None else f"{r['time_to_mitigate_s']:.2f} s",
              f"{r['dropped']:,}", "-" if r["legit_pct"] is None else f"{r['legit_pct']:.1f}%",
              ", ".join(r["mitigations"]) or "-"] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table, strict=False)]
    for row in [header, *table]:
        print("  " + "  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=False)).rstrip(), file=out)


def _plot(png: Path, rec: Recorder, summary: list[dict[str, Any]]) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    t = [p.t for p in rec.points]
    reasons = sorted({r for p in rec.points for r in p.by_reason}, key=lambda r: r != "passed")
    fig, ax = plt.subplots(figsize=(12, 5), dpi=100)
    series = [[p.by_reason.get(r, 0.0) / 1000 for p in rec.points] for r in reasons]
    if series:
        ax.stackplot(t, series, labels=reasons, alpha=0.85)
    for s in summary:
        ax.axvspan(s["start_s"], s["end_s"], color="red", alpha=0.08)
        ax.text(s["start_s"], ax.get_ylim()[1] * 0.95, s["vector"], fontsize=8, va="top")
    ax.set_xlabel("seconds")
    ax.set_ylabel("packets/s at the gateway (thousands), by verdict")
    ax.set_title("floodguard demo: traffic by verdict, attacks shaded; legitimate success on the right")
    ax2 = ax.twinx()
    ax2.plot(t, [p.legit_pct if p.legit_pct is not None else float("nan") for p in rec.points], color="black",
             linewidth=1.5, label="legitimate success %")
    ax2.set_ylim(0, 105)
    ax2.set_ylabel("legitimate success %")
    ax.legend(loc="upper left", fontsize=8, ncol=3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="floodguard demo",
        description="Build a lab of network namespaces, run floodguard on its gateway, play a DNS reflection "
        "flood and a spoofed SYN flood at its servers while legitimate clients use them, show it live, then "
        "summarise and draw a timeline. Needs root; removes the lab at the end.",
        epilog="examples:\n  floodguard demo\n  floodguard demo --png /tmp/timeline.png\n  make demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--png", default="floodguard-demo.png", help="where to write the timeline")
    ap.add_argument("--short", action="store_true", help="a 30-second story (for tests)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("floodguard demo: run as root (it builds network namespaces and loads an XDP program)",
              file=sys.stderr)
        return 1
    for tool in ("trafgen", "nsenter"):
        if shutil.which(tool) is None:
            print(f"floodguard demo: {tool} is missing: run `make setup` (installs netsniff-ng and util-linux)",
                  file=sys.stderr)
            return 1
    try:
        return run(sys.stdout, Path(args.png), short=args.short)
    except KeyboardInterrupt:
        print("\nfloodguard demo: interrupted; the lab was removed", file=sys.stderr)
        return 130
