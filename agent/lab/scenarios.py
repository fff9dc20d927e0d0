"""Named attack scenarios for the lab, and a runner that measures legitimate traffic through them.

A :class:`Scenario` is a flood recipe (:data:`agent.lab.traffic.RECIPES`),
the attack vector floodguard's control loop should name it (the values of
``agent.control.vectors.Vector``, with the abused service for reflection),
and the legitimate traffic that shows whether users still get through.

:func:`run_scenario` plays one: a fresh legitimate server, a calm baseline
with the probes running, the flood for ``duration`` seconds, then the
probes' last requests; it returns a :class:`ScenarioResult` with legitimate
success and latency before and during the flood, the flood's packets and
what reached the gateway and the server. It knows nothing about floodguard:
``with_floodguard`` is any callable returning a context manager (start the
daemon on enter, stop it on exit), entered once the server runs and left
after the last probe finished; ``None`` measures the unprotected network.

What the floods do to the unprotected server
--------------------------------------------
Measured on the project's machine (2 vCPUs shared with other work, Linux
6.18) with ``python -m agent.lab.scenarios``: one trafgen process, 4 s of
flood after a 3 s baseline, probes at 20/s (HTTP timeout 2 s, UDP 1 s),
the server link at 50 Mbit/s. Legitimate success during the flood (100%
in every baseline), and the machine's CPU busy during it (of 2 CPUs):

====================  =====================  =====================  =====================
scenario              20 kpps                50 kpps (default)      100 kpps
====================  =====================  =====================  =====================
reflection_dns        http 93%  udp 91%      http 86%  udp 66%      http 61%  udp 49%
reflection_ntp        http 95%  udp 86%      http 88%  udp 65%      http 71%  udp 28%
reflection_memcached  http 95%  udp 91%      http 86%  udp 66%      http 67%  udp 36%
syn_flood             http 0%   connect 0%   http 0%   connect 0%   http 4%   connect 3%
icmp_flood            http 99%  udp 84%      http 94%  udp 70%      http 76%  udp 49%
fragment_flood        http 98%  udp 88%      http 96%  udp 71%      http 79%  udp 49%
heavy_hitter          udp 83%   http 95%     udp 59%   http 89%     udp 26%   http 64%
carpet_bombing        http 99%  udp 85%      http 85%  udp 68%      http 72%  udp 28%
mix                   http 0%   udp 89%      http 0%   udp 65%      http 0%   udp 39%
CPU busy              9-24%                  23-41%                 36-79%
====================  =====================  =====================  =====================

HTTP suffers less than UDP because TCP retransmits a lost SYN after 1 s,
inside the 2 s timeout (its p95 latency goes past 1 s); UDP success
tracks the share of each second the flood is on (trafgen's per-second
budget, see :mod:`agent.lab.traffic`). The SYN flood needs no link limit:
the 128-entry SYN queue is full within milliseconds and stays full (SYN
cookies are off). Without the link limit (``--link-mbit 0``) at 50 kpps
only the SYN flood (0%), the heavy hitter (UDP 93%: the echo service is
busy answering it) and the ICMP flood (UDP 93%, HTTP p95 240 ms) hurt;
the rest leave 100%. 50 kpps is the default: every scenario hurts
noticeably while the generator and the forwarding of the flood keep less
than one of the two CPUs busy; at 100 kpps the heavy hitter alone keeps
79% of the machine busy.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import structlog

from agent.lab.topology import Lab
from agent.lab.traffic import (
    DEFAULTS,
    Flood,
    FloodReport,
    LegitServer,
    LinkCounter,
    ListenCounters,
    Probe,
    ProbeKind,
    ProbeStats,
    Sample,
    limit_server_link,
    listen_counters,
)

__all__ = [
    "SCENARIOS",
    "Scenario",
    "ScenarioResult",
    "run_scenario",
]


def _log() -> Any:
    return structlog.get_logger("agent.lab.scenarios")


@dataclass(frozen=True)
class Scenario:
    """A flood recipe, what floodguard should call it, and which legitimate traffic to measure."""

    name: str
    recipe: str
    """Key of :data:`agent.lab.traffic.RECIPES`."""
    vector: str
    """The vector as ``agent.control.vectors.Vector`` names it."""
    summary: str
    service: str | None = None
    """For reflection: the abused service (``Classification.service``)."""
    legit: tuple[ProbeKind, ...] = ("http", "udp")
    """Legitimate traffic measured during the flood; the first is the headline."""
    also: tuple[str, ...] = ()
    """Further vectors a mixed flood shows."""
    pps: int | None = None
    """Flood rate; None: :attr:`agent.lab.traffic.Defaults.flood_pps`."""

    @property
    def label(self) -> str:
        """``udp_reflection/dns``, ``syn_flood``, … as ``Classification.label`` writes it."""
        return f"{self.vector}/{self.service}" if self.service else self.vector

    @property
    def vectors(self) -> tuple[str, ...]:
        return (self.vector, *self.also)


SCENARIOS: Mapping[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("reflection_dns", "reflection_dns", "udp_reflection",
                 "DNS reflection: 1200-byte answers from port 53, spoofed sources", service="dns"),
        Scenario("reflection_ntp", "reflection_ntp", "udp_reflection",
                 "NTP monlist reflection: 440-byte answers from port 123, spoofed sources", service="ntp"),
        Scenario("reflection_memcached", "reflection_memcached", "udp_reflection",
                 "memcached reflection: 1400-byte answers from port 11211, spoofed sources", service="memcached"),
        Scenario("syn_flood", "syn_flood", "syn_flood",
                 "SYN flood to ports 80/443 from spoofed sources", legit=("http", "connect")),
        Scenario("icmp_flood", "icmp_flood", "icmp_flood", "ICMP echo flood from spoofed sources"),
        Scenario("fragment_flood", "fragment_flood", "fragment_flood",
                 "non-first IPv4 fragments from spoofed sources"),
        Scenario("heavy_hitter", "heavy_hitter", "udp_flood",
                 "UDP flood from one real attacker address to the echo service", legit=("udp", "http")),
        Scenario("carpet_bombing", "carpet_bombing", "carpet_bombing",
                 "UDP to every host of 203.0.113.0/24 from spoofed sources"),
        Scenario("mix", "mix", "udp_reflection",
                 "DNS reflection + SYN flood + ICMP echo + fragments at once", service="dns",
                 legit=("http", "udp"), also=("syn_flood", "icmp_flood", "fragment_flood")),
    )
}
"""Every scenario by name."""


@dataclass(frozen=True)
class ScenarioResult:
    """What one run of a scenario measured. Times are ``time.monotonic()`` values."""

    scenario: str
    label: str
    protected: bool
    flood: FloodReport
    flood_window: tuple[float, float]
    baseline_window: tuple[float, float]
    baseline: Mapping[str, ProbeStats]
    during: Mapping[str, ProbeStats]
    samples: Mapping[str, tuple[Sample, ...]]
    gateway_rx_packets: int
    """Packets ``gw-in`` received during the flood (everything that reached the gateway)."""
    server_rx_packets: int
    """Packets the server's interface received during the flood (what got through the gateway)."""
    listen: ListenCounters
    """The server's listen-queue counters, change over the flood."""
    cpu_busy: float
    """Share of the machine's CPU time (all CPUs, 0..1) spent busy during the flood, from /proc/stat."""
    legit: tuple[str, ...] = field(default=())
    server_link: Mapping[str, int] | None = None
    """The server link queue's ``packets`` (sent on) and ``drops`` during the flood (None: not limited)."""

    @property
    def headline(self) -> str:
        return self.legit[0] if self.legit else next(iter(self.during))

    @property
    def legit_success_pct(self) -> float:
        """The worst legitimate success rate (%) of any kind measured during the flood."""
        return min(s.success_pct for s in self.during.values())

    @property
    def latency_p50(self) -> float | None:
        """Median latency (seconds) of the headline legitimate traffic during the flood."""
        return self.during[self.headline].p50

    @property
    def latency_p95(self) -> float | None:
        return self.during[self.headline].p95

    def stats(self, kind: str, since: float | None = None, until: float | None = None) -> ProbeStats:
        """Any window of one kind's samples (e.g. from ``flood_window[0] + 1.0`` to skip detection time)."""
        return ProbeStats.of(
            kind,
            [s for s in self.samples[kind] if (since is None or s.t >= since) and (until is None or s.t < until)],
        )

    def summary(self) -> str:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1000:.1f}ms"

        legit = "; ".join(
            f"{k} {self.baseline[k].success_pct:.0f}% -> {self.during[k].success_pct:.1f}% "
            f"(p50 {ms(self.during[k].p50)}, p95 {ms(self.during[k].p95)})"
            for k in self.during
        )
        link = "" if self.server_link is None else (
            f"server link sent {self.server_link['packets']:,} dropped {self.server_link['drops']:,}, ")
        return (
            f"{self.scenario} [{self.label}] {'protected' if self.protected else 'unprotected'}: "
            f"flood {self.flood.pps:,.0f} pps ({self.flood.packets_sent:,} packets, {self.flood.smoothness}), "
            f"gateway rx {self.gateway_rx_packets:,}, server rx {self.server_rx_packets:,}, {link}"
            f"listen drops {self.listen.listen_drops:,}, CPU busy {self.cpu_busy:.0%}; legit {legit}"
        )


Phase = Callable[[str, float], None]


def _cpu_times() -> list[int]:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def _busy(before: list[int], after: list[int]) -> float:
    delta = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(delta[:8])  # guest time is already inside user
    idle = delta[3] + delta[4]  # idle + iowait
    return (total - idle) / total if total else 0.0


def run_scenario(
    lab: Lab,
    name: str,
    duration: float = 10.0,
    *,
    with_floodguard: Callable[[], AbstractContextManager[Any]] | None = None,
    pps: int | None = None,
    baseline: float = 3.0,
    attacker: int = 0,
    client: int = 0,
    ipv6: bool = False,
    legit: Sequence[ProbeKind] | None = None,
    server_link_mbit: float | None = DEFAULTS.server_link_mbit,
    on_phase: Phase | None = None,
) -> ScenarioResult:
    """Play scenario ``name`` on ``lab`` and measure legitimate traffic before and during its flood.

    Order: start a fresh :class:`~agent.lab.traffic.LegitServer` (SYN
    cookies off); enter ``with_floodguard()`` if given; start the probes;
    ``baseline`` calm seconds; the flood (from attacker ``attacker``) for
    ``duration`` seconds; stop the flood, let the probes' last requests
    finish; leave the floodguard context; stop the server (which also drops
    half-open connections a SYN flood left behind). ``server_link_mbit``
    gives the gateway's link to the servers that capacity for the run
    (:func:`~agent.lab.traffic.limit_server_link`; None: unlimited, and
    then only floods that hit a service itself hurt). ``on_phase(name, t)``
    is called at ``baseline``, ``flood``, ``flood_stopped`` and ``done`` for
    live views. Everything started is stopped on any error.
    """
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    if duration <= 0 or baseline < 0:
        raise ValueError("duration must be positive and baseline not negative")
    scenario = SCENARIOS[name]
    kinds = tuple(legit) if legit is not None else scenario.legit
    rate = pps if pps is not None else scenario.pps or DEFAULTS.flood_pps

    def phase(what: str) -> float:
        now = time.monotonic()
        if on_phase is not None:
            on_phase(what, now)
        return now

    # A flood with a duration sends exactly pps * duration packets, evenly (staggered lanes, see
    # agent.lab._lanes), and is stopped at its end.
    flood = Flood(lab, scenario.recipe, pps=rate, attacker=attacker, ipv6=ipv6, duration=duration)
    probes = {k: Probe(lab, k, client=client, ipv6=ipv6) for k in kinds}
    topo = lab.topology
    link = None
    with contextlib.ExitStack() as stack:
        if server_link_mbit is not None:
            link = stack.enter_context(limit_server_link(lab, server_link_mbit))
        stack.enter_context(LegitServer(lab))
        if with_floodguard is not None:
            stack.enter_context(with_floodguard())
        gw = stack.enter_context(LinkCounter(topo, lab.gateway, lab.gateway_ingress.ifname))
        srv = stack.enter_context(LinkCounter(topo, lab.server, lab.server_link.ifname))
        for probe in probes.values():
            stack.callback(probe.stop)
            probe.start()
        b0 = phase("baseline")
        time.sleep(baseline)
        listen0 = listen_counters(lab)
        gw0, srv0 = gw.read(), srv.read()
        link0 = link.stats() if link is not None else {}
        cpu0 = _cpu_times()
        stack.callback(flood.stop)
        # The flood window opens before the first lane can send: a probe started in the instant
        # between would otherwise count as calm and fail.
        f0 = phase("flood")
        flood.start()
        time.sleep(max(0.0, f0 + duration - time.monotonic()))
        # The last lanes started up to a second after the first: wait (briefly) for their last
        # packets instead of cutting them off, so the flood sends exactly its count.
        report = flood.wait(timeout=2.0)
        f1 = phase("flood_stopped")
        cpu1 = _cpu_times()
        gw1, srv1 = gw.read(), srv.read()
        link1 = link.stats() if link is not None else {}
        listen1 = listen_counters(lab)
        for probe in probes.values():
            probe.stop()
        phase("done")
    result = ScenarioResult(
        scenario=name,
        label=scenario.label,
        protected=with_floodguard is not None,
        flood=report,
        flood_window=(f0, f1),
        baseline_window=(b0, f0),
        baseline={k: p.stats(b0, f0) for k, p in probes.items()},
        during={k: p.stats(f0, f1) for k, p in probes.items()},
        samples={k: tuple(p.samples()) for k, p in probes.items()},
        gateway_rx_packets=gw1.rx_packets - gw0.rx_packets,
        server_rx_packets=srv1.rx_packets - srv0.rx_packets,
        listen=listen1 - listen0,
        cpu_busy=_busy(cpu0, cpu1),
        legit=kinds,
        server_link={k: link1.get(k, 0) - link0.get(k, 0) for k in ("packets", "drops")} if link else None,
    )
    _log().info("scenario_done", scenario=name, protected=result.protected, flood_pps=round(report.pps),
                legit_success_pct=round(result.legit_success_pct, 1))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agent.lab.scenarios``: play scenarios on a fresh lab without floodguard and print the figures."""
    from agent.lab.topology import build_lab, run_prefix

    parser = argparse.ArgumentParser(prog="python -m agent.lab.scenarios", description=main.__doc__)
    parser.add_argument("names", nargs="*", help=f"scenarios (default: all): {', '.join(SCENARIOS)}")
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--baseline", type=float, default=3.0)
    parser.add_argument("--pps", type=int, action="append", help="flood rate; repeat to compare rates")
    parser.add_argument("--link-mbit", type=float, default=DEFAULTS.server_link_mbit,
                        help="capacity of the link to the servers; 0: unlimited")
    args = parser.parse_args(argv)
    names = args.names or list(SCENARIOS)
    rates = args.pps or [None]
    with build_lab(run_prefix("sc"), attackers=1, clients=1) as lab:
        for name in names:
            for rate in rates:
                result = run_scenario(lab, name, args.duration, baseline=args.baseline, pps=rate,
                                      server_link_mbit=args.link_mbit or None)
                print(result.summary(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
