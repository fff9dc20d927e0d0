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

Two kinds of legitimate users. Probes (:class:`agent.lab.traffic.Probe`:
HTTP to port 443 and UDP echo, 20 requests a second each, served by
:class:`agent.lab.traffic.LegitServer`) give the success rate second by
second. A real HTTP load gives the service's throughput: nginx
(:class:`agent.lab.web.WebServer`) on port 80, the port the SYN flood aims
at, and wrk (:class:`agent.lab.web.HttpLoad`) from a client at its top
speed, a new TCP connection per request, from one second into the first
calm act and into each attack until a second before the act ends. Each
such act ends with a line: the load's requests per second and errors next
to what floodguard decided in that act (the attack record's verdict: kind,
lever, why); the summary compares each attack's requests per second with
calm's. wrk's rate is what this machine manages with everything else
running on it: it says how the service fares, not how fast floodguard is.
The load crosses the lab policy's thresholds by itself: floodguard records
it as a surge (real clients), shown in the act's line and never counted in
the summary's attacks, unless its verdict made it an attack; a record that
limits or bans the load's own address says so.
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


#: nginx serves the HTTP load on the SYN flood's first port; the probes' server keeps the second.
WEB_PORT = 80
PROBE_HTTP_PORT = 443
#: The HTTP load starts this long into an act and ends this long before it (wrk runs whole seconds).
LOAD_MARGIN_S = 1
#: The legitimate clients' watch set in etc/lab-policy.yaml (its first: id 1).
CLIENTS_WATCH = 1


@dataclass
class Act:
    name: str  # calm | scenario name
    seconds: float
    title: str
    load: bool = False  # run the HTTP load (wrk) in this act


STORY = (
    Act("calm", 12, "calm: legitimate clients use the web and UDP services", load=True),
    Act("reflection_dns", 20, "DNS reflection: 50,000 pps of 1,200-byte answers from forged resolvers", load=True),
    Act("calm", 10, "calm again"),
    Act("syn_flood", 20, "SYN flood: 50,000 pps from forged sources at the web server", load=True),
    Act("calm", 13, "calm: mitigations relax and expire"),
)
SHORT_STORY = (
    Act("calm", 4, "calm", load=True),
    Act("reflection_dns", 8, "DNS reflection", load=True),
    Act("calm", 4, "calm"),
    Act("syn_flood", 8, "SYN flood", load=True),
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
class HttpPhase:
    """One act's HTTP load and what floodguard decided during that act."""

    act: str
    rps: float
    requests: int
    errors: int
    error_kinds: dict[str, int]
    verdicts: list[dict[str, Any]]  # kind, vector, lever, why of the records in force during the act


@dataclass
class Recorder:
    points: list[Point] = field(default_factory=list)
    acts: list[tuple[str, float, float]] = field(default_factory=list)  # name, start, end (monotonic)
    http: list[HttpPhase] = field(default_factory=list)


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


def _vector(a: dict[str, Any]) -> str:
    return str(a["vector"]) + (f"/{a['service']}" if a.get("service") else "")


def _mono(iso: str, wall0: float, mono0: float) -> float:
    """A record's ISO time as this process's monotonic clock."""
    return mono0 + (datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() - wall0)


def _verdicts(attacks: list[dict[str, Any]], since: float, until: float, wall0: float, mono0: float,
              client: str) -> list[dict[str, Any]]:
    """What floodguard decided (as it stands now) about the records in force between ``since`` and ``until``
    (monotonic): those that started before ``until`` and had not ended by ``since``. ``client`` is the
    load's address: a record that limits or bans it says so."""
    out = []
    for a in sorted(attacks, key=lambda x: x["started_at"]):
        ended = a.get("ended_at")
        if _mono(a["started_at"], wall0, mono0) > until or (ended and _mono(ended, wall0, mono0) < since):
            continue
        v = a.get("verdict") or {}
        sources = [str(x.get("source")) for x in (v.get("evidence") or {}).get("abusive_sources") or ()]
        hit = client in sources or any(str(b).split("/")[0] == client for b in a.get("banned") or ())
        out.append({"kind": a["kind"], "vector": _vector(a), "lever": v.get("lever"), "why": v.get("why"),
                    "hits_client": client if hit else None})
    # The attacks first: they are what the act is about; a surge of the load itself comes after.
    return sorted(out, key=lambda x: x["kind"] != "attack")


def _verdict_text(verdicts: list[dict[str, Any]]) -> str:
    if not verdicts:
        return "nothing to decide"
    return "; ".join(f"{v['kind']} {v['vector']}, lever {v['lever']}: {v['why']}"
                     + (f" [it limits or bans {v['hits_client']}, the legitimate load's own address]"
                        if v["hits_client"] else "")
                     for v in verdicts)


def _http_line(h: HttpPhase) -> str:
    errs = ", ".join(f"{k} {n:,}" for k, n in h.error_kinds.items()) if h.errors else "no"
    return (f"{h.act}: legitimate HTTP {h.rps:,.0f} req/s ({h.requests:,} requests, {errs} errors); "
            f"floodguard: {_verdict_text(h.verdicts)}")


def run(out: TextIO, png: Path, short: bool = False) -> int:  # noqa: PLR0915 — the demo's script, act by act, reads top to bottom
    from agent.datapath.errors import DatapathError
    from agent.lab.runagent import LabAgent
    from agent.lab.scenarios import SCENARIOS
    from agent.lab.topology import build_lab
    from agent.lab.traffic import DEFAULTS, Flood, LegitServer, Probe, attach_upstream_pass, limit_server_link
    from agent.lab.web import HttpLoad, WebServer

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
            stack.enter_context(LegitServer(lab, tcp_ports=(PROBE_HTTP_PORT,)))
            web = stack.enter_context(WebServer(lab, port=WEB_PORT))
            print("floodguard demo: starting the agent (building the XDP program)...", file=out, flush=True)
            try:
                agent = LabAgent(lab).start()
            except (RuntimeError, DatapathError) as e:
                print(f"floodguard demo: the agent did not start: {e}", file=sys.stderr)
                return 1
            stack.callback(agent.close)
            probes = {"http": Probe(lab, "http", port=PROBE_HTTP_PORT), "udp": Probe(lab, "udp")}
            for p in probes.values():
                stack.callback(p.stop)
                p.start()
            maps, port = agent.port()
            stack.callback(maps.close)
            stack.callback(port.close)
            prev = port.read_stats()
            prev_t = time.monotonic()
            clients0 = port.read_watch_stats()[CLIENTS_WATCH, :, 0, 0].copy()
            for act in story:
                start = time.monotonic()
                flood = None
                if act.name != "calm":
                    scenario = SCENARIOS[act.name]
                    flood = Flood(lab, scenario.recipe, pps=DEFAULTS.flood_pps, duration=act.seconds)
                    stack.callback(flood.stop)
                    flood.start()
                load = None
                while time.monotonic() < start + act.seconds:
                    # One-second windows: what the table shows is a rate an operator reads.
                    time.sleep(1.0)
                    now = time.monotonic()
                    if act.load and load is None and now >= start + LOAD_MARGIN_S:
                        load = HttpLoad(lab, web.url, seconds=max(1, act.seconds - 2 * LOAD_MARGIN_S)).start()
                        stack.callback(load.stop)
                    stats = port.read_stats()
                    dt = max(now - prev_t, 1e-3)
                    d = (stats - prev)[..., 0].sum(axis=(0, 2, 3)) / dt
                    prev, prev_t = stats, now
                    by_reason = {abi.Reason(i).label: float(v) for i, v in enumerate(d) if v > 0}
                    legit = _legit(probes, now - 3, now - 0.5)
                    rec.points.append(Point(now - mono0, float(d.sum()), by_reason, legit, act.name))
                    attacks = agent.call("attacks", recent=0)["active"]
                    _draw(out, live, act, now - start, rec.points[-1], attacks, rec.http, load is not None)
                if load is not None:
                    result = load.wait()
                    got = agent.call("attacks", recent=100)
                    phase = HttpPhase(act.name, result.rps, result.requests, result.error_count,
                                      {k: v for k, v in result.errors.items() if v},
                                      _verdicts(got["active"] + got["recent"], start, time.monotonic(), wall0, mono0,
                                                str(lab.clients[0].ipv4)))
                    rec.http.append(phase)
                    if not live:
                        print(f"[{time.monotonic() - mono0:5.1f}s] {_http_line(phase)}", file=out, flush=True)
                if flood is not None:
                    flood.stop()
                rec.acts.append((act.name, start - mono0, time.monotonic() - mono0))
            time.sleep(1.0)
            for p in probes.values():
                p.stop()
            # What floodguard did to the legitimate clients, from the kernel's counters for their watch set
            # (etc/lab-policy.yaml): the promise is that it discarded none of their packets.
            clients = port.read_watch_stats()[CLIENTS_WATCH, :, 0, 0] - clients0
            clients_dropped = int(sum(int(clients[r]) for r in abi.DROPPING))
            attacks = agent.call("attacks", recent=100)
            summary = _summary([a for a in attacks["active"] + attacks["recent"] if a["kind"] == "attack"], probes,
                               wall0, mono0)
    finally:
        lab.topology.teardown()
    _print_summary(out, summary)
    _print_http(out, rec.http)
    try:
        _plot(png, rec, summary)
        print(f"\ntimeline: {png}", file=out)
    except ImportError:
        print("\ntimeline not written: matplotlib is missing: pip install 'floodguard[lab]'", file=sys.stderr)
    ok = sum(1 for s in summary if s["legit_pct"] is not None and s["legit_pct"] >= 95.0)
    print(f"{len(summary)} attack(s) detected; {ok} with legitimate success >= 95% during the attack; "
          f"legitimate clients' packets discarded by floodguard: {clients_dropped}; lab removed", file=out)
    return 0


def _draw(out: TextIO, live: bool, act: Act, elapsed: float, p: Point, attacks: list[dict[str, Any]],
          http: list[HttpPhase], loading: bool) -> None:
    drops = {k: v for k, v in p.by_reason.items() if k in {r.label for r in DROP_REASONS}}
    passed = p.pps_in - sum(drops.values())
    legit = "-" if p.legit_pct is None else f"{p.legit_pct:.0f}%"
    if not live:
        att = ", ".join(_vector(a) + (" (surge)" if a["kind"] == "surge" else "") for a in attacks) or "none"
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
    lines.append("  legitimate HTTP load (wrk, a new connection per request): "
                 + ("measuring this act" if loading else "idle in this act"))
    for h in http:
        lines.append(f"    {h.act:16} {h.rps:>8,.0f} req/s, {h.errors:,} errors")
    lines.append("")
    lines.append(f"  active attacks: {len([a for a in attacks if a['kind'] == 'attack'])}")
    for a in attacks:
        vec = _vector(a)
        if a["kind"] == "surge":
            lines.append(f"    {vec:24} on {a['target']['host'] or a['group']}: a surge of real clients, not mitigated")
            continue
        steps = ", ".join(dict.fromkeys(m["step"] for m in a["mitigations"] if m["action"] == "applied")) or "detecting"
        lines.append(f"    {vec:24} on {a['target']['host'] or a['group']}: peak {_rate(a['peak_pps'])} pps, "
                     f"mitigations: {steps}" + (" (forged sources: no bans)" if a["spoofed"] else ""))
    out.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
    out.flush()


def _summary(attacks: list[dict[str, Any]], probes: dict[str, Any], wall0: float, mono0: float) -> list[dict[str, Any]]:
    rows = []
    for a in sorted(attacks, key=lambda x: x["started_at"]):
        s_mono = _mono(a["started_at"], wall0, mono0)
        e_mono = s_mono + a["duration_s"]
        rows.append({
            "vector": _vector(a),
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


def _print_http(out: TextIO, phases: list[HttpPhase]) -> None:
    """The HTTP load per act with floodguard's verdicts, and the closing comparison with calm."""
    if not phases:
        return
    print("\nlegitimate HTTP (nginx behind the gateway; wrk from one client, a new connection per request)",
          file=out)
    for h in phases:
        print(f"  {_http_line(h)}", file=out)
    calm = next((h for h in phases if h.act == "calm"), None)
    attacks = [h for h in phases if h.act != "calm"]
    if calm is None or not attacks:
        return
    if calm.rps <= 0:
        print("legitimate HTTP during attacks: no request completed in calm, nothing to compare with", file=out)
        return
    parts = ", ".join(f"{h.act} {h.rps:,.0f} req/s ({h.rps / calm.rps:.0%} of calm)" for h in attacks)
    print(f"legitimate HTTP during attacks: {parts}; calm {calm.rps:,.0f} req/s", file=out)


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
    for tool, package in (("wrk", "wrk"), ("nginx", "nginx-light")):
        if shutil.which(tool) is None and not os.access(f"/usr/sbin/{tool}", os.X_OK):
            print(f"floodguard demo: {tool} is missing: run `make setup` (installs {package})", file=sys.stderr)
            return 1
    try:
        return run(sys.stdout, Path(args.png), short=args.short)
    except KeyboardInterrupt:
        print("\nfloodguard demo: interrupted; the lab was removed", file=sys.stderr)
        return 130
