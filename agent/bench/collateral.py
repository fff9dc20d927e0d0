"""`floodguard bench collateral`: the legitimate side's HTTP service with and without floodguard, calm and under attack.

Why this exists
---------------
The first promise (DESIGN.md, "protect without harming"): a mitigation that
cuts legitimate users is an outage we caused. The integration tests decide
from counters that no legitimate packet is dropped; this bench measures what
the users get: the requests per second a real HTTP load completes through
the lab's gateway with no floodguard, with floodguard on its defaults and
with the lab's policy, in calm and during each attack, all in one run, as
ratios to calm without floodguard.

Configurations
--------------
``none``     no agent: the gateway routes everything.
``default``  the real daemon (``python -m agent.cli run``, :class:`agent.lab.runagent.LabAgent`)
             with a policy that says only which interface to attach to and what to protect:
             the lab policy's group for the servers' /24 (and its IPv6 /64), with those
             prefixes and nothing else; every other key is floodguard's default (1 s ticks,
             3 ticks to detect, no static thresholds, ``syn_auth: on_attack``). LabAgent adds
             the lab's plumbing only: the control socket, state directory, metrics port and
             log settings of this run.
``lab``      the real daemon with etc/lab-policy.yaml as LabAgent renders it (100 ms ticks,
             2 to detect, static thresholds, ``syn_auth: always``, a watch set ``clients``).
``ceiling``  no agent: the perfect filter (``bpf/lab_ceiling.bpf.c``, :func:`agent.lab.traffic.attach_ceiling`)
             on ``gw-in``, natively, where floodguard attaches. It knows the answer (every flood of
             the lab comes from the foreign ranges, every client from the domestic ones) and drops
             every foreign packet with no lookup at all. Measured in calm too, where it passes every
             packet: a veth with an XDP program attached takes another receive path, so calm with
             the ceiling, not calm with ``none``, is what any XDP program at that hook gives the
             load here (``of_ceiling`` in calm). What the load gets with it is the most any
             filter at the gateway can give on this machine: on two CPUs shared by trafgen, the
             upstream router's forwarding, nginx and wrk, a flood costs the load CPU even when
             every packet of it is dropped at the first hook. ``of_ceiling`` (each attack row of
             ``default`` and ``lab``) is the row's rps over the ceiling's in the same phase: the
             part of the loss that floodguard itself causes.

Loads
-----
``single``  wrk from the client's one address (:class:`agent.lab.web.HttpLoad`: one thread,
            ``--connections`` at once, every request a new TCP connection): a CGNAT address
            or a proxy, many users behind one source.
``crowd``   the same wrk inside ``ClientPool(lab, 0, 200)``: its connections leave from
            200 addresses, a flash crowd of real sources that complete their handshakes.

Phases
------
``calm``, then each attack of :data:`agent.lab.scenarios.SCENARIOS`: ``syn_flood``,
``reflection_dns``, ``reflection_ntp``, ``icmp_flood``, ``heavy_hitter``, each at its
scenario's default rate (``--pps`` for all). nginx (:class:`agent.lab.web.WebServer`) listens on
port 80, one of the two ports the SYN flood aims at, so that flood hits the service measured.
The gateway's link to the servers is limited to ``--link-mbit`` (100 Mbit/s) for the whole
bench (:func:`agent.lab.traffic.limit_server_link`): the reflection floods overfill it, which is
what hurts an unprotected server's users.

Measurement
-----------
For each load, ``--repeat`` passes (3), each over every phase and configuration in that
order (the configurations of one phase are measured one after the other, and each pass over
every phase, so drift in the machine's load touches them alike); each row is the median of its
passes (``rps_measured`` has every run, ``spread`` their range over the median). For each
measurement:

1. a fresh nginx, the crowd's address pool (``crowd``) and a fresh agent (unless ``none``);
2. the load starts and runs without a break until the end of the phase: the users are there
   before the attack. A fresh agent sees it in calm until its ``status`` shows rates (its
   second tick: about 0.2 s with the lab policy, 2 s with the defaults; ``warmup_s`` in each
   row): the first rate a baseline learns is taken as calm (a series never seen cannot start
   an attack), so a flood already running at that tick would be learned as normal, which an
   agent that has been running never sees;
3. for an attack, its flood (trafgen lanes, which reach the full rate within the first second);
4. ``--settle`` seconds (1 s): the agent needs a tick or two to see the flood and mitigate it
   (the lab policy: two 100 ms ticks; the defaults: three 1 s ticks, so the first two seconds
   of ``default``'s measurement run before any mitigation, as they would in production);
5. the measured run of the same load (wrk, ``--seconds``: 6 s) replaces the unmeasured one
   while the flood goes on; the flood stops after wrk's summary.

The figures: wrk's completed requests per second and its errors (connect, read, write, status,
timeout), and the ratio to the same load's calm without floodguard (the reference, always
measured): the mean of that calm measured first and again last of the load (``calm_end``), so
the machine's drift over the load shows (on a shared 2-CPU machine one 6 s run of wrk may
differ from the next by a quarter). wrk, nginx, trafgen and the gateway share the machine's CPUs: a flood costs the
load CPU even where floodguard drops every packet of it, and under a heavy load trafgen may
not reach its rate (each row has the rate it reached).

Every phase under an agent starts a new daemon and closes it afterwards (detach, pins
removed), so phases are independent: no attack, rule, ban, tightened limit, verified source or
learned baseline of one phase reaches the next. Waiting for the attacks to relax would not do
that within the bench's time: with the default policy an attack ends 30 s (``hold_down``) after
its flood, its rules last 60 s, a ban 10 minutes, and a verified source stays verified for 10
minutes either way. The cost is a daemon start per phase (a BCC build: about 4 s here) and an
agent that has learned only a moment of calm before its attack; one pass over both loads takes
about nine minutes on a 2-CPU machine, the default three about half an hour.

From the agent, for each phase with one: its attack records (kind, vector, class, the verdict's
lever and why, the ladder steps applied, sources banned), and the legitimate side's losses,
decided from the kernel's counters and the agent's bans, never from how many requests this
machine managed:

* with a watch set ``clients`` (the lab policy): the clients' packets floodguard discarded
  during the phase, by reason (every reason of :data:`agent.contract.abi.DROPPING`), from the
  program's watch counters;
* without one (the defaults): the TCP packets floodguard discarded (only the clients send TCP
  in the lab, except the SYN flood, whose phase counts non-SYN TCP only);
* in both: the bans in force on a client address (the lab's domestic range, the crowd's pool
  included) at the end of the phase, and the client addresses an attack record limited or
  banned (its verdict's abusive sources, its banned list).

Each row also has the daemon's CPU time over the phase (``agent_cpu_s``: its process tree,
from /proc), which on a 2-CPU machine is taken from the load and the flood alike.

Targets (printed, never a failure: the bench exits 0 once it has run): with floodguard, calm at
least 95% of calm without; during each attack at least 90% of calm without; during each attack
at least 90% of the ceiling's (the loss floodguard causes, apart from what the flood costs the
machine); no legitimate source limited or banned in calm.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent.contract import abi

from . import _util
from ._util import BenchError

CONFIGS = ("none", "ceiling", "default", "lab")
"""Every configuration, in the order each phase measures them; ``none`` is the reference."""
REFERENCE_CONFIG = "none"
CEILING_CONFIG = "ceiling"
AGENT_CONFIGS = ("default", "lab")
LOADS = ("single", "crowd")
CALM = "calm"
CALM_END = "calm_end"
"""The reference measured again at the end of each load: the machine's drift over the load shows."""
ATTACKS = ("syn_flood", "reflection_dns", "reflection_ntp", "icmp_flood", "heavy_hitter")
PHASES = (CALM, *ATTACKS)

CALM_TARGET = 0.95
ATTACK_TARGET = 0.90
CROWD_SIZE = 200
WEB_PORT = 80  # the SYN flood's first port: the flood hits the service measured
CLIENT = 0
WATCH_SET = "clients"
TCP_CLASSES = (abi.TrafficClass.TCP_SYN, abi.TrafficClass.TCP_OTHER)

DEFAULT_SECONDS = 6.0
DEFAULT_SETTLE = 1.0
DEFAULT_LINK_MBIT = 100.0
DEFAULT_CONNECTIONS = 64
DEFAULT_REPEAT = 3  # one 6 s run of wrk moves by up to a quarter on a shared 2-CPU machine: medians of 3
AGENT_START_TIMEOUT = 120.0
WARM_CAP_S = 120.0  # the unmeasured load before the measured one; stopped long before this

CONFIG_SUMMARY = {
    "none": "no agent: the gateway routes everything",
    "default": "floodguard with only the interface and the servers' group in its policy; every other key default",
    "lab": "floodguard with etc/lab-policy.yaml",
    "ceiling": "no agent: a perfect filter on gw-in drops every foreign source (and passes every other)",
}
LOAD_SUMMARY = {
    "single": "wrk from one client address (a CGNAT address)",
    "crowd": f"wrk from {CROWD_SIZE} addresses (ClientPool: a flash crowd)",
}

Progress = Callable[[str], None]


# --- policies ------------------------------------------------------------------------------------


def servers_group(lab_policy: Mapping[str, Any], server_nets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
                  ) -> tuple[str, list[str]]:
    """The lab policy's group that protects the servers: its name and its prefixes that cover them.

    ``server_nets`` are the lab's server networks (the /24, and the /64 if the lab has one); a
    prefix of the group counts if it overlaps one of them. Raises :class:`BenchError` when no group
    protects the servers' IPv4 network.
    """
    for g in lab_policy.get("protect") or ():
        prefixes = []
        for p in g.get("prefixes") or ():
            text = p["prefix"] if isinstance(p, Mapping) else p
            net = ipaddress.ip_network(text, strict=False)
            if any(net.version == s.version and net.overlaps(s) for s in server_nets):
                prefixes.append(str(net))
        if any(ipaddress.ip_network(p).version == 4 for p in prefixes):
            return str(g["name"]), prefixes
    raise BenchError(f"the lab policy protects no group with {server_nets[0]}: the bench needs one")


def default_policy(lab_policy: Mapping[str, Any],
                   server_nets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> dict[str, Any]:
    """The ``default`` configuration's policy: the lab policy's interfaces and servers' group, nothing else."""
    name, prefixes = servers_group(lab_policy, server_nets)
    return {"interfaces": [dict(i) for i in lab_policy.get("interfaces") or ()],
            "protect": [{"name": name, "prefixes": prefixes}]}


def watch_id(policy: Mapping[str, Any], name: str = WATCH_SET) -> int | None:
    """The id the program gives watch set ``name`` (sets are numbered from 1 in policy order), or None."""
    for i, w in enumerate(policy.get("watch") or (), start=1):
        if w.get("name") == name:
            return i
    return None


# --- what the agent says ---------------------------------------------------------------------------


Nets = Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]


def _within(address: str, nets: Nets) -> bool:
    try:
        a = ipaddress.ip_network(address, strict=False)
    except ValueError:
        return False
    return any(a.version == n.version and a.overlaps(n) for n in nets)


def targeted(r: Mapping[str, Any], legit_nets: Nets) -> list[str]:
    """The legitimate addresses an attack record limited (its verdict's abusive sources) or banned."""
    v = r.get("verdict") or {}
    ev = v.get("evidence") or {}
    sources = [str(x.get("source")) for x in ev.get("abusive_sources") or () if isinstance(x, Mapping)]
    banned = [str(x.get("prefix", x)) if isinstance(x, Mapping) else str(x) for x in r.get("banned") or ()]
    return sorted({a for a in (*sources, *banned) if _within(a, legit_nets)})


def summarise_record(r: Mapping[str, Any], legit_nets: Nets = ()) -> dict[str, Any]:
    """The fields of one attack record that say what floodguard decided and did, and to which client."""
    v = r.get("verdict") or {}
    vector = str(r.get("vector")) + (f"/{r['service']}" if r.get("service") else "")
    steps = list(dict.fromkeys(str(m["step"]) for m in r.get("mitigations") or () if m.get("action") == "applied"))
    return {"kind": r.get("kind"), "vector": vector, "class": r.get("class"), "lever": v.get("lever"),
            "why": v.get("why"), "collateral": v.get("collateral") or None, "mitigations": steps,
            "banned": len(r.get("banned") or ()), "dropped_packets": r.get("dropped_packets"),
            "active": r.get("active"), "legit_targeted": targeted(r, legit_nets)}


def legit_bans(bans: Iterable[Mapping[str, Any]], legit_nets: Nets) -> list[str]:
    """The banned prefixes (``floodguard bans`` rows) that cover a legitimate client address."""
    return [str(ipaddress.ip_network(str(b["prefix"]), strict=False)) for b in bans
            if not b.get("monitor") and _within(str(b["prefix"]), legit_nets)]  # monitor: counted, not enforced


def discarded(counts: Mapping[str, int]) -> int:
    """Packets of ``counts`` (reason label -> packets) whose verdict discarded them."""
    return sum(n for reason, n in counts.items() if abi.Reason[reason.upper()] in abi.DROPPING)


def delta(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


# --- repetitions ---------------------------------------------------------------------------------------


def _median(xs: Sequence[float]) -> float:
    ys = sorted(xs)
    n = len(ys)
    return ys[n // 2] if n % 2 else (ys[n // 2 - 1] + ys[n // 2]) / 2


def _merge_legit(ds: Sequence[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """The legitimate side's losses over every measurement of one row: packets summed, sources united."""
    got = [d for d in ds if d]
    if not got:
        return None
    by_reason: dict[str, int] = {}
    for d in got:
        for k, v in d["by_reason"].items():
            by_reason[k] = by_reason.get(k, 0) + v
    return {"counted": got[0].get("counted"), "packets": sum(int(d["packets"]) for d in got), "by_reason": by_reason,
            "banned_sources": sorted({a for d in got for a in d["banned_sources"]}),
            "limited_sources": sorted({a for d in got for a in d.get("limited_sources") or ()})}


def combine(measurements: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (config, load, phase) from its repeated measurements, in the order first measured.

    ``rps`` is the median of the measurements (``rps_measured``, in the order taken) and
    ``spread`` their range over that median: how far one 6 s run of wrk moves on this machine.
    Errors and requests are summed; the legitimate side's losses are summed over every
    measurement (a packet discarded in any run counts); the records are the last run's, with
    ``records_by_run`` keeping each; CPU figures are the median run's.
    """
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for m in measurements:
        groups.setdefault((m["config"], m["load"], m["phase"]), []).append(m)
    rows = []
    for ms in groups.values():
        rps = [float(m["rps"]) for m in ms]
        mid = _median(rps)
        median_run = min(ms, key=lambda m: abs(float(m["rps"]) - mid))
        row = dict(median_run)
        row.pop("repeat", None)
        row.update({
            "rps": round(mid, 1), "rps_measured": rps, "runs": len(ms),
            "spread": round((max(rps) - min(rps)) / mid, 3) if mid else None,
            "errors": sum(int(m["errors"]) for m in ms), "requests": sum(int(m["requests"]) for m in ms),
            "records": ms[-1].get("records"), "legit_discarded": _merge_legit([m.get("legit_discarded") for m in ms]),
        })
        if len(ms) > 1 and ms[-1].get("records") is not None:
            row["records_by_run"] = [m.get("records") for m in ms]
        rows.append(row)
    return rows


# --- ratios and targets ------------------------------------------------------------------------------


def ratio(rps: float | None, reference: float | None) -> float | None:
    """``rps`` over the reference, rounded to 3 places; None when either is missing or the reference is 0."""
    if rps is None or not reference:
        return None
    return round(rps / reference, 3)


def references(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per load, calm without floodguard: every measurement of it (first and last of each pass) and their mean."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["config"] == REFERENCE_CONFIG and r["phase"] in (CALM, CALM_END):
            out.setdefault(r["load"], {"measured": []})["measured"].extend(r.get("rps_measured") or [r["rps"]])
    for ref in out.values():
        ref["rps"] = round(sum(ref["measured"]) / len(ref["measured"]), 1)
    return out


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Set each row's ``ratio``: its rps over the same load's calm without floodguard (the mean of its measurements);
    and each agent row's ``of_ceiling``: its rps over the perfect filter's in the same load and phase (None without)."""
    ref = {load: x["rps"] for load, x in references(rows).items()}
    ceiling = {(r["load"], r["phase"]): r["rps"] for r in rows if r["config"] == CEILING_CONFIG}
    for r in rows:
        r["ratio"] = ratio(r["rps"], ref.get(r["load"]))
        r["of_ceiling"] = (ratio(r["rps"], ceiling.get((r["load"], r["phase"])))
                           if r["config"] in AGENT_CONFIGS else None)


def legit_hit(row: Mapping[str, Any]) -> int | None:
    """Legitimate packets discarded, plus legitimate sources banned or limited by a record (None: not measured)."""
    d = row.get("legit_discarded")
    if not d:
        return None
    return int(d.get("packets") or 0) + len(d.get("banned_sources") or ()) + len(d.get("limited_sources") or ())


def targets(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each target, every row it judges, and whether it holds (``met``: None when no row was measured)."""
    def check(r: Mapping[str, Any], value: float | int | None, ok: bool | None) -> dict[str, Any]:
        return {"config": r["config"], "load": r["load"], "phase": r["phase"], "value": value, "met": ok}

    agent_rows = [r for r in rows if r["config"] in AGENT_CONFIGS]
    calm = [check(r, r["ratio"], None if r["ratio"] is None else r["ratio"] >= CALM_TARGET)
            for r in agent_rows if r["phase"] == CALM]
    attack = [check(r, r["ratio"], None if r["ratio"] is None else r["ratio"] >= ATTACK_TARGET)
              for r in agent_rows if r["phase"] != CALM]
    of_ceiling = [check(r, r["of_ceiling"], r["of_ceiling"] >= ATTACK_TARGET)
                  for r in agent_rows if r["phase"] != CALM and r.get("of_ceiling") is not None]
    clean = []
    for r in agent_rows:
        if r["phase"] == CALM:
            hit = legit_hit(r)
            clean.append(check(r, hit, None if hit is None else hit == 0))

    def target(name: str, text: str, threshold: float, checks: list[dict[str, Any]]) -> dict[str, Any]:
        judged = [c["met"] for c in checks if c["met"] is not None]
        return {"name": name, "text": text, "threshold": threshold, "met": all(judged) if judged else None,
                "checks": checks}

    return [
        target("calm", f"with floodguard, calm rps >= {CALM_TARGET:.0%} of calm without", CALM_TARGET, calm),
        target("attack", f"with floodguard, rps during each attack >= {ATTACK_TARGET:.0%} of calm without",
               ATTACK_TARGET, attack),
        target("attack_of_ceiling", f"with floodguard, rps during each attack >= {ATTACK_TARGET:.0%} of the perfect "
               "filter's (ceiling) in the same attack: the loss floodguard itself causes", ATTACK_TARGET, of_ceiling),
        target("calm_clean", "0 legitimate sources limited or banned in calm (no client packet discarded, no client "
               "address banned)", 0, clean),
    ]


# --- one phase -----------------------------------------------------------------------------------------


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of process ``pid`` and its descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    procs: dict[int, tuple[int, int]] = {}  # pid -> (parent, clock ticks)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                text = f.read()
        except OSError:
            continue  # gone meanwhile
        fields = text[text.rindex(")") + 2:].split()  # the name may hold spaces and parentheses
        procs[int(name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        if p in procs:
            total += procs[p][1]
            todo += [c for c, (parent, _) in procs.items() if parent == p]
    return total / tick


CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq")


def machine_cpu() -> dict[str, float]:
    """The machine's CPU seconds so far, all CPUs, by kind (/proc/stat's first line)."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:1 + len(CPU_FIELDS)]
    return {k: int(v) / tick for k, v in zip(CPU_FIELDS, fields, strict=True)}


def comm_cpu() -> dict[str, float]:
    """CPU seconds so far of every live process, summed by command name (``nginx``, ``wrk``, ``trafgen``, ...)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                text = f.read()
        except OSError:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        comm = comm.split("/")[0]  # ksoftirqd/0, kworker/1:2 -> one name each
        fields = text[text.rindex(")") + 2:].split()
        out[comm] = out.get(comm, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_split(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    """Where the machine's CPU went between two :func:`machine_cpu` readings, in seconds by kind."""
    return {k: round(after[k] - before.get(k, 0.0), 2) for k in after}


@dataclass(frozen=True)
class Setup:
    seconds: float = DEFAULT_SECONDS
    settle: float = DEFAULT_SETTLE
    link_mbit: float = DEFAULT_LINK_MBIT
    connections: int = DEFAULT_CONNECTIONS
    pps: int | None = None
    repeat: int = DEFAULT_REPEAT


def tick_s(policy: Mapping[str, Any]) -> float:
    """The detection tick a policy sets (or the default it inherits), in seconds."""
    from agent.policy.model import Detection

    return float(Detection.model_validate(policy.get("detection") or {}).tick)


def learned_calm(agent: Any) -> float:
    """Wait until ``agent`` has learned a tick of what it sees now; the seconds waited.

    Its first rates come with its second tick (a count since start is not a rate), and that
    tick is the first its baseline learns from: once ``status`` shows rates, the baseline holds
    a calm value for every series. Gives up after 10 ticks (at least 10 s).
    """
    t0 = time.monotonic()
    deadline = t0 + max(10.0, 10 * tick_s(agent.policy))
    while time.monotonic() < deadline and not agent.call("status")["rates"]["pps_in"]:
        time.sleep(0.05)
    return time.monotonic() - t0


def flood_pps(phase: str, pps: int | None) -> int:
    """The rate of an attack phase: ``pps`` if given, else its scenario's default."""
    from agent.lab.scenarios import SCENARIOS
    from agent.lab.traffic import DEFAULTS

    return int(pps or SCENARIOS[phase].pps or DEFAULTS.flood_pps)


class _Bench:
    """The lab, its two policies and the measurement of one (config, load, phase)."""

    def __init__(self, lab: Any, workdir: Path, setup: Setup, progress: Progress) -> None:
        from agent.lab.runagent import lab_policy_path

        self.lab, self.workdir, self.setup, self.say = lab, workdir, setup, progress
        try:
            self.lab_policy_path = lab_policy_path()
        except FileNotFoundError as e:
            raise BenchError(str(e)) from e
        lab_policy = yaml.safe_load(self.lab_policy_path.read_text())
        nets = [lab.server_net_v4, lab.server_net_v6]
        self.default_policy = default_policy(lab_policy, nets)
        self.default_policy_path = workdir / "default-policy.yaml"
        self.default_policy_path.write_text(
            "# floodguard bench collateral: the `default` configuration (interfaces and the servers only)\n"
            + yaml.safe_dump(self.default_policy, sort_keys=False))
        self.legit_nets = [lab.domestic_v4, lab.domestic_v6]
        self.runs = 0

    def _agent(self, config: str, stack: contextlib.ExitStack) -> Any:
        from agent.lab.runagent import LabAgent

        self.runs += 1
        policy = self.default_policy_path if config == "default" else self.lab_policy_path
        agent = LabAgent(self.lab, workdir=self.workdir / f"agent-{self.runs}", policy=policy)
        stack.callback(agent.close)  # stopping leaves protection in place; closing removes it
        try:
            return agent.start(AGENT_START_TIMEOUT)
        except RuntimeError as e:  # it exited, or did not attach in time: the message has its log
            raise BenchError(f"floodguard ({config}) did not start: {e}") from e

    def _counts(self, agent: Any) -> dict[str, int]:
        """What the kernel counted of the legitimate side: the watch set's verdicts, else TCP's (reason.class)."""
        from agent.datapath.mapport import MapPort

        wid = watch_id(agent.policy)
        with agent.maps() as maps:
            port = MapPort(maps)
            try:
                if wid is not None:
                    w = port.read_watch_stats()[wid, :, 0, 0]
                    return {abi.Reason(r).label: int(w[r]) for r in range(abi.REASON_MAX) if w[r]}
                s = port.read_stats()[:, :, :, 0, 0].sum(axis=0)  # [reason, class], not under monitor
                return {f"{abi.Reason(r).label}.{c.label}": int(s[r, c]) for r in range(abi.REASON_MAX)
                        for c in TCP_CLASSES if s[r, c]}
            finally:
                port.close()

    def _legit(self, agent: Any, phase: str, before: dict[str, int], after: dict[str, int],
               records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        got = delta(after, before)
        if watch_id(agent.policy) is not None:
            how = f"watch set {WATCH_SET!r}: the clients' packets"
            by_reason = got
        else:
            how = "TCP packets (only the clients send TCP"
            if phase == "syn_flood":
                how += "; non-SYN TCP only, the flood's SYNs are TCP too"
                got = {k: v for k, v in got.items() if not k.endswith(f".{abi.TrafficClass.TCP_SYN.label}")}
            how += ")"
            by_reason = {}
            for k, v in got.items():
                reason = k.split(".", 1)[0]
                by_reason[reason] = by_reason.get(reason, 0) + v
        dropped = {k: v for k, v in by_reason.items() if abi.Reason[k.upper()] in abi.DROPPING}
        return {"counted": how, "packets": discarded(by_reason), "by_reason": dropped,
                "banned_sources": legit_bans(agent.call("bans"), self.legit_nets),
                "limited_sources": sorted({a for r in records for a in r["legit_targeted"]})}

    def measure(self, config: str, load: str, phase: str) -> dict[str, Any]:
        """One (config, load, phase): everything it starts is stopped and removed before it returns."""
        from agent.lab.scenarios import SCENARIOS
        from agent.lab.traffic import Flood, attach_ceiling
        from agent.lab.web import ClientPool, HttpLoad, WebServer

        s, lab = self.setup, self.lab
        report = None
        t0 = time.monotonic()
        with contextlib.ExitStack() as stack:
            web = stack.enter_context(WebServer(lab, port=WEB_PORT))
            if load == "crowd":
                stack.enter_context(ClientPool(lab, CLIENT, CROWD_SIZE))
            agent = self._agent(config, stack) if config in AGENT_CONFIGS else None
            if config == CEILING_CONFIG:
                stack.enter_context(attach_ceiling(lab))
            before = self._counts(agent) if agent is not None else {}
            cpu0 = tree_cpu_s(agent.proc.pid) if agent is not None else 0.0
            # The users are there before the attack, and stay: an unmeasured run of the same load from
            # now until the measured one starts.
            warm = HttpLoad(lab, web.url, client=CLIENT, connections=s.connections, seconds=WARM_CAP_S)
            stack.callback(warm.stop)
            warm.start()
            warmup = learned_calm(agent) if agent is not None else 0.0
            flood = None
            if phase not in (CALM, CALM_END):
                flood = Flood(lab, SCENARIOS[phase].recipe, pps=flood_pps(phase, s.pps))
                stack.callback(flood.stop)
                flood.start()
            time.sleep(s.settle)
            warm.stop()
            machine0, comm0 = machine_cpu(), comm_cpu()
            result = HttpLoad(lab, web.url, client=CLIENT, connections=s.connections, seconds=s.seconds).run()
            machine = cpu_split(machine_cpu(), machine0)
            comms = {k: round(v - comm0.get(k, 0.0), 2) for k, v in comm_cpu().items() if v - comm0.get(k, 0.0) >= 0.05}
            if flood is not None:
                report = flood.stop()
            cpu = tree_cpu_s(agent.proc.pid) - cpu0 if agent is not None else None
            row: dict[str, Any] = {
                "config": config, "load": load, "phase": phase, "rps": round(result.rps, 1),
                "errors": result.error_count, "ratio": None, "of_ceiling": None, "requests": result.requests,
                "error_kinds": {k: v for k, v in result.errors.items() if v}, "p99_ms": result.p99_ms,
                "flood_pps": None if report is None else round(report.pps),
                "records": None, "legit_discarded": None,
                "agent_cpu_s": None if cpu is None else round(cpu, 2), "warmup_s": round(warmup, 2),
                "machine_cpu_s": machine, "process_cpu_s": dict(sorted(comms.items(), key=lambda kv: -kv[1])),
            }
            if agent is not None:
                got = agent.call("attacks", recent=100)
                records = [summarise_record(r, self.legit_nets) for r in got["active"] + got["recent"]]
                row["records"] = records
                row["legit_discarded"] = self._legit(agent, phase, before, self._counts(agent), records)
        row["took_s"] = round(time.monotonic() - t0, 1)
        return row


# --- the run ------------------------------------------------------------------------------------------


def _ordered(chosen: Iterable[str] | None, every: Sequence[str], what: str, always: str | None = None) -> list[str]:
    if chosen is None:
        return list(every)
    chosen = set(chosen)
    unknown = chosen - set(every)
    if unknown:
        raise ValueError(f"unknown {what}(s) {', '.join(sorted(unknown))}; known: {', '.join(every)}")
    return [x for x in every if x in chosen or x == always]


def run(setup: Setup | None = None, *, configs: Iterable[str] | None = None, loads: Iterable[str] | None = None,
        phases: Iterable[str] | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Build a lab, measure every (load, phase, config), tear it all down; the result is what ``--json`` prints.

    The reference (``none`` in ``calm``) is measured for every load whatever ``configs`` and
    ``phases`` say: every ratio is taken against it.
    """
    from agent.lab.topology import build_lab, run_prefix
    from agent.lab.traffic import attach_upstream_pass, limit_server_link

    s = setup or Setup()
    say = progress or (lambda _msg: None)
    chosen = None if configs is None else list(configs)
    cfgs = _ordered(chosen, CONFIGS, "configuration", REFERENCE_CONFIG)
    reference_everywhere = chosen is None or REFERENCE_CONFIG in chosen
    lds = _ordered(loads, LOADS, "load")
    phs = _ordered(phases, PHASES, "phase", CALM)
    for tool, package in (("trafgen", "netsniff-ng"), ("wrk", "wrk"), ("nginx", "nginx-light"), ("nft", "nftables")):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            raise BenchError(f"{tool} is missing: install {package} (make setup)")
    started = time.monotonic()
    measurements: list[dict[str, Any]] = []
    with _util.signals_end_the_run(), contextlib.ExitStack() as stack:
        say("building the lab")
        lab = stack.enter_context(build_lab(run_prefix("col"), attackers=1, clients=1, ipv6=False))
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="floodguard-bench-collateral-")))
        # SYN authentication's challenges go back with XDP_TX: up-gw needs an XDP program to deliver them.
        stack.enter_context(attach_upstream_pass(lab))
        if s.link_mbit:
            stack.enter_context(limit_server_link(lab, s.link_mbit))
        bench = _Bench(lab, workdir, s, say)

        def one(config: str, load: str, phase: str, rep: int) -> None:
            m = bench.measure(config, load, phase)
            m["repeat"] = rep
            measurements.append(m)
            say(f"[{time.monotonic() - started:4.0f} s] {load:6} {phase:14} {config:7} "
                + (f"run {rep + 1}/{s.repeat} " if s.repeat > 1 else "")
                + f"{m['rps']:>9,.0f} req/s, {m['errors']} errors" + _records_text(m["records"], "; "))

        for load in lds:
            # Each pass measures every phase and configuration once: drift over the run touches them alike.
            for rep in range(s.repeat):
                for phase in phs:
                    for config in cfgs:
                        if config == REFERENCE_CONFIG and phase != CALM and not reference_everywhere:
                            continue
                        one(config, load, phase, rep)
                if len(phs) > 1:
                    one(REFERENCE_CONFIG, load, CALM_END, rep)
        default = bench.default_policy
    rows = combine(measurements)
    add_ratios(rows)
    return {
        "configs": {
            "none": {"summary": CONFIG_SUMMARY["none"]},
            "default": {"summary": CONFIG_SUMMARY["default"], "policy": default},
            "lab": {"summary": CONFIG_SUMMARY["lab"], "policy": str(bench.lab_policy_path)},
            "ceiling": {"summary": CONFIG_SUMMARY["ceiling"]},
        },
        "loads": {k: LOAD_SUMMARY[k] for k in lds},
        "reference": references(rows),
        "rows": rows,
        "measurements": measurements,
        "targets": targets(rows),
        "setup": {
            "seconds": s.seconds, "repeat": s.repeat, "settle_s": s.settle, "link_mbit": s.link_mbit or None,
            "connections": s.connections, "crowd_size": CROWD_SIZE, "web_port": WEB_PORT,
            "flood_pps": {p: flood_pps(p, s.pps) for p in phs if p != CALM},
            "http": "wrk, one thread, a new TCP connection per request (Connection: close), 2 s timeout",
            "agent": "a fresh `floodguard run` per phase (LabAgent), closed after it",
            "warmup": "the load runs until the agent's status has rates (its second tick) before a flood",
            "took_s": round(time.monotonic() - started, 1),
        },
    }


# --- output ----------------------------------------------------------------------------------------------


def _records_text(records: Sequence[Mapping[str, Any]] | None, prefix: str = "") -> str:
    if not records:
        return ""
    parts = [f"{r['kind']} {r['vector']}/{r['class']} lever {r['lever']}"
             + (f" [{', '.join(r['mitigations'])}]" if r["mitigations"] else "")
             + (f" on legit {', '.join(r['legit_targeted'])}" if r.get("legit_targeted") else "") for r in records]
    return prefix + "; ".join(parts)


def _legit_text(d: Mapping[str, Any] | None) -> str:
    if not d:
        return "-"
    text = f"{d['packets']:,} pkts"
    if d["by_reason"]:
        text += " (" + ", ".join(f"{k} {v:,}" for k, v in d["by_reason"].items()) + ")"
    if d["banned_sources"]:
        text += f", {len(d['banned_sources'])} banned"
    if d.get("limited_sources"):
        text += f", {len(d['limited_sources'])} limited"
    return text


def _ratio_text(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def render(result: Mapping[str, Any]) -> str:
    """The human table (everything in it comes from the result)."""
    s = result["setup"]
    link = "unlimited" if not s["link_mbit"] else f"{s['link_mbit']:g} Mbit/s"
    lines = [
        (f"floodguard bench collateral - legitimate HTTP through the lab's gateway (wrk, {s['connections']} "
         f"connections, a new connection per request, {s['seconds']:g} s per phase, attacks after "
         f"{s['settle_s']:g} s of flood, median of {s.get('repeat', 1)} passes); server link {link}"),
        "",
        (f"{'load':<7} {'phase':<15} {'config':<8} {'req/s':>9} {'spread':>6} {'ratio':>6} {'of ceil':>7} "
         f"{'errors':>7} {'flood pps':>9}  {'legit discarded':<24} floodguard's records"),
    ]
    for r in result["rows"]:
        flood = "-" if r["flood_pps"] is None else f"{r['flood_pps']:,}"
        lines.append(f"{r['load']:<7} {r['phase']:<15} {r['config']:<8} {r['rps']:>9,.0f} "
                     f"{_ratio_text(r.get('spread')):>6} {_ratio_text(r['ratio']):>6} "
                     f"{_ratio_text(r.get('of_ceiling')):>7} {r['errors']:>7,} {flood:>9}  "
                     f"{_legit_text(r['legit_discarded']):<24} "
                     f"{_records_text(r['records']) or '-'}")
    lines += ["", ("req/s: the median of the passes; spread: their range over it. ratio: requests/s over the same "
                   "load's calm without floodguard (config none: the mean of every calm, first of each pass, and "
                   "calm_end, last). of ceil: requests/s over the perfect filter's (config ceiling) in the same "
                   "phase.")]
    for load, ref in result.get("reference", {}).items():
        lines.append(f"  {load}: {' and '.join(f'{x:,.0f}' for x in ref['measured'])} req/s, reference "
                     f"{ref['rps']:,.0f}")
    lines += [
              "legit discarded: legitimate packets floodguard discarded during the phase, and client addresses banned."]
    for name, c in result["configs"].items():
        lines.append(f"  {name}: {c['summary']}")
    for name, text in result.get("loads", {}).items():
        lines.append(f"  {name}: {text}")
    lines += ["", "targets"]
    for t in result["targets"]:
        verdict = "not measured" if t["met"] is None else "target met" if t["met"] else "target missed"
        lines.append(f"  {t['text']}: {verdict}")
        for c in t["checks"]:
            if c["met"] is False:
                value = _ratio_text(c["value"]) if isinstance(c["value"], float) else str(c["value"])
                lines.append(f"    missed: {c['config']} {c['load']} {c['phase']}: {value}")
    lines.append(f"took {s['took_s']:.0f} s")
    return "\n".join(lines)


EPILOG = """\
examples:
  floodguard bench collateral                        the table (three passes: about half an hour)
  floodguard bench collateral --repeat 1             one pass (nine minutes; one run of wrk moves by a quarter)
  floodguard bench collateral --json                 as JSON (progress goes to stderr)
  floodguard bench collateral --phase syn_flood --load single
                                                     one attack, one load (calm without floodguard is always measured)

Needs root, trafgen (netsniff-ng), wrk, nginx-light, nftables, bpffs and kernel headers
(make setup). Builds a lab of network namespaces and removes it when it ends.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="floodguard bench collateral",
        description="Requests per second of a real HTTP load (a new connection per request, from one address "
        "and from a crowd of 200) through the lab's gateway, without floodguard, with its defaults and with "
        "the lab policy, in calm and during each attack, and with a perfect filter (every attacker dropped "
        "at gw-in) during each attack; ratios to calm without floodguard and to the perfect filter, and "
        "whether the targets hold.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--seconds", type=float, default=DEFAULT_SECONDS,
                   help=f"length of each load, whole seconds (default {DEFAULT_SECONDS:g})")
    p.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                   help=f"passes over every phase and configuration; each row is the median (default {DEFAULT_REPEAT})")
    p.add_argument("--settle", type=float, default=DEFAULT_SETTLE,
                   help=f"seconds of flood before the load starts (default {DEFAULT_SETTLE:g})")
    p.add_argument("--pps", type=int, default=None, help="flood rate of every attack (default: each scenario's)")
    p.add_argument("--link-mbit", type=float, default=DEFAULT_LINK_MBIT,
                   help=f"capacity of the gateway's link to the servers; 0: unlimited (default {DEFAULT_LINK_MBIT:g})")
    p.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS,
                   help=f"wrk's connections open at once (default {DEFAULT_CONNECTIONS})")
    p.add_argument("--config", action="append", choices=CONFIGS, default=None,
                   help="only this configuration (and the reference); repeatable (default: all)")
    p.add_argument("--load", action="append", choices=LOADS, default=None,
                   help="only this load; repeatable (default: all)")
    p.add_argument("--phase", action="append", choices=PHASES, default=None,
                   help="only this phase (and calm); repeatable (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--verbose", action="store_true", help="the lab's log events too (stderr)")
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, checked: errors exit 2 with argparse's message."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.seconds < 1:
        p.error("--seconds must be at least 1 (wrk runs whole seconds)")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.settle < 0:
        p.error("--settle must not be negative")
    if args.pps is not None and args.pps < 1:
        p.error("--pps must be positive")
    if args.link_mbit < 0:
        p.error("--link-mbit must not be negative (0: unlimited)")
    if args.connections < 1:
        p.error("--connections must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from agent import log
    from agent.datapath.errors import DatapathError
    from agent.lab.topology import TopologyError

    # The lab logs every flood and server start; stdout is for the table or the JSON.
    log.configure(level="info" if args.verbose else "warning", fmt="console", stream=sys.stderr)

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"  {msg}", file=sys.stderr, flush=True)

    setup = Setup(seconds=args.seconds, settle=args.settle, link_mbit=args.link_mbit,
                  connections=args.connections, pps=args.pps, repeat=args.repeat)
    try:
        result = run(setup, configs=args.config, loads=args.load, phases=args.phase, progress=say)
    except KeyboardInterrupt:
        print("floodguard bench collateral: interrupted; the lab, its agents and pins are removed", file=sys.stderr)
        return 130
    except (BenchError, TopologyError, DatapathError) as e:
        print(f"floodguard bench collateral: {e}", file=sys.stderr)
        return 1
    _util.print_result(result, args.json, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
