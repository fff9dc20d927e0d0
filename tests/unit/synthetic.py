"""Synthetic traffic for the pure-logic tests and demos: flows replayed into a `FakePort`.

A `Flow` is traffic of one class towards one protected host at a rate that
may follow time (steps, ramps, daily cycles). `Replay` advances the fake
clock, adds each flow's packets to the group and host counters, queues
1 in ``sample_every`` packets as samples, and plays a crude data plane so
that what the controller wrote has an effect: drop rules, rate-limit
rules, bans and per-source limit rules turn into dropped counters.
Everything is deterministic for a given seed.
"""

from __future__ import annotations

import ipaddress
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fakes import FakePort

from agent.contract.abi import RuleAction, TrafficClass
from agent.contract.keys import IPAddress
from agent.control.controller import Controller, TickReport
from agent.control.port import PacketSample
from agent.policy.compile import compile_policy
from agent.policy.model import Policy

Rate = float | Callable[[float], float]

_PROTO = {
    TrafficClass.TCP_SYN: 6,
    TrafficClass.TCP_OTHER: 6,
    TrafficClass.UDP: 17,
    TrafficClass.ICMP: 1,
    TrafficClass.FRAGMENT: 17,
    TrafficClass.OTHER: 47,
}
_FLAGS = {TrafficClass.TCP_SYN: 0x02, TrafficClass.TCP_OTHER: 0x10}


@dataclass(frozen=True)
class Flow:
    """Packets of one class to one host. No ``sources``: every packet has a new forged source."""

    dst: IPAddress
    gid: int
    cls: int
    pps: Rate
    size: int = 200
    sources: tuple[IPAddress, ...] = ()
    sport: int | None = None
    dport: int | None = 80
    tcp_flags: int | None = None
    start_s: float = 0.0
    stop_s: float = math.inf

    def rate(self, t: float) -> float:
        if not self.start_s <= t < self.stop_s:
            return 0.0
        return float(self.pps(t)) if callable(self.pps) else float(self.pps)

    @property
    def proto(self) -> int:
        if self.cls == TrafficClass.ICMP and self.dst.version == 6:
            return 58
        return _PROTO.get(TrafficClass(self.cls), 0)


class Replay:
    """Drives a FakePort with flows; ``t`` is seconds since the replay started."""

    def __init__(self, port: FakePort, sample_every: int, seed: int = 1, monitor: frozenset[int] = frozenset()) -> None:
        """``monitor``: groups whose per-source drops are only counted (monitor mode)."""
        self.port = port
        self.sample_every = sample_every
        self.monitor = monitor
        self.flows: list[Flow] = []
        self.t = 0.0
        self._rng = random.Random(seed)
        self._seen: set[int] = set()
        self._spoof_base = int(ipaddress.IPv4Address("198.18.0.0"))

    def add(self, *flows: Flow) -> None:
        self.flows.extend(flows)

    def step(self, dt: float) -> None:
        """Advance the clock by dt and count what every flow sent meanwhile."""
        mid = self.t + dt / 2
        for f in self.flows:
            pps = f.rate(mid)
            if pps <= 0:
                continue
            self._flow(f, pps, dt)
        self.t += dt
        self.port.advance(dt)

    def _flow(self, f: Flow, pps: float, dt: float) -> None:
        packets = self._round(pps * dt)
        if packets == 0:
            return
        spoofed = not f.sources
        per_src = packets / len(f.sources) if f.sources else 1.0
        dropped = self._dropped(f, pps, packets, per_src / dt if f.sources else 0.0)
        new = packets if spoofed else 0
        if not spoofed and id(f) not in self._seen:
            # Real sources are new once: the first time their flow sends.
            self._seen.add(id(f))
            new = min(len(f.sources), packets)
        self.port.count_group(f.gid, f.cls, packets, packets * f.size, dropped, dropped * f.size, new)
        self.port.count_host(f.dst, f.gid, f.cls, packets, packets * f.size, dropped)
        n = self._round(packets / self.sample_every) if self.sample_every else 0
        for i in range(n):
            if spoofed:
                src: IPAddress = ipaddress.IPv4Address(self._spoof_base + self._rng.randrange(1 << 17))
            else:
                src = f.sources[(i + self._rng.randrange(len(f.sources))) % len(f.sources)]
            self.port.samples.append(
                PacketSample(
                    src=src,
                    dst=f.dst,
                    sport=f.sport if f.sport is not None else self._rng.randrange(1024, 65536),
                    dport=f.dport if f.dport is not None else self._rng.randrange(1, 65536),
                    group=f.gid,
                    length=f.size,
                    proto=f.proto,
                    cls=f.cls,
                    tcp_flags=f.tcp_flags if f.tcp_flags is not None else _FLAGS.get(TrafficClass(f.cls), 0),
                    ts_ns=self.port.clock_ns,
                )
            )

    def _dropped(self, f: Flow, pps: float, packets: int, per_source_pps: float) -> int:
        """What a simple data plane would drop of this flow now."""
        now = self.port.clock_ns
        source_limit = 0
        for r in self.port.rules:
            if r.monitor or r.expires_ns <= now or f.dst not in r.dst or r.proto not in (0, f.proto):
                continue
            if r.traffic_class is not None and r.traffic_class != f.cls:
                continue
            sport = f.sport if f.sport is not None else 40000
            if not r.sport[0] <= sport <= r.sport[1]:
                continue
            dport = f.dport if f.dport is not None else 40000
            if not r.dport[0] <= dport <= r.dport[1]:
                continue
            if r.action == RuleAction.DROP:
                return packets
            if r.action == RuleAction.SOURCE_LIMIT:
                source_limit = r.pps  # each source's limit, in place of the group's
                break
            return round(packets * max(0.0, 1 - r.pps / pps)) if r.pps else 0
        if f.sources:
            banned = sum(
                1 for s in f.sources
                for net, b in self.port.bans.items()
                if not b.monitor and b.expires_ns > now and s in net
            )
            left = len(f.sources) - banned
            dropped = packets * banned / len(f.sources)
            limit = source_limit
            if limit and left and per_source_pps > limit:
                dropped += packets * left / len(f.sources) * (1 - limit / per_source_pps)
            return round(dropped)
        return 0

    def _round(self, x: float) -> int:
        """x rounded up or down at random in proportion to its fraction (unbiased)."""
        whole = math.floor(x)
        return whole + (1 if self._rng.random() < x - whole else 0)


def noisy(rate: Rate, relative: float, seed: int = 7) -> Callable[[float], float]:
    """rate(t) times (1 + relative * a standard normal draw), the same draw for the same t."""

    def f(t: float) -> float:
        base = float(rate(t)) if callable(rate) else float(rate)
        return max(0.0, base * (1.0 + relative * random.Random(hash((seed, round(t * 1000)))).gauss(0.0, 1.0)))

    return f


@dataclass
class Scenario:
    """A policy, a FakePort, a Controller and a Replay wired together, on the policy's tick."""

    policy: Policy
    port: FakePort
    controller: Controller
    replay: Replay

    @classmethod
    def build(cls, policy: Policy, seed: int = 1, **controller_kw: Any) -> Scenario:
        compiled = compile_policy(policy)
        port = FakePort(groups=compiled.capacity.groups)
        controller = Controller(policy, compiled, port, wall_clock=lambda: 1_800_000_000.0, **controller_kw)
        monitor = frozenset(
            g.gid for g in compiled.groups if g.group is not None and (policy.mode == "monitor" or g.group.monitor)
        )
        return cls(policy, port, controller, Replay(port, policy.detection.sample_every, seed, monitor))

    @property
    def tick_s(self) -> float:
        return self.policy.detection.tick

    def gid(self, name: str) -> int:
        return self.controller.gid(name)

    def run(self, seconds: float) -> list[TickReport]:
        """Replay `seconds` of traffic, one controller tick per policy tick."""
        out = []
        for _ in range(round(seconds / self.tick_s)):
            self.replay.step(self.tick_s)
            out.append(self.controller.tick())
        return out

    def run_until(self, seconds: float, done: Callable[[TickReport], bool]) -> TickReport | None:
        """Tick until done(report) or `seconds` have passed; the report that was done, if any."""
        for _ in range(round(seconds / self.tick_s)):
            self.replay.step(self.tick_s)
            report = self.controller.tick()
            if done(report):
                return report
        return None


def lab_data() -> dict[str, Any]:
    """A small policy shaped like etc/lab-policy.yaml (fast ticks, small limits), as plain data.

    Groups: ``servers`` (203.0.113.0/24, 2001:db8:5::/64; floors, SYN auth on
    attack) and ``office`` (198.51.100.0/24). Sampling is 1 in 100 so that
    floods of 10^5 packets/s stay cheap to replay.
    """
    return {
        "interfaces": ["eth0"],
        "infrastructure": {"prefixes": ["192.0.2.1/32", "2001:db8:1::1/128"]},
        "allow": {"prefixes": ["100.64.99.0/24"]},
        "limits": {
            "tcp_syn": {"pps": 100, "bps": "1Mbit"},
            "udp": {"pps": "5k", "bps": "50Mbit"},
            "icmp": {"pps": 50, "bps": "500kbit"},
        },
        "protect": [
            {
                "name": "servers",
                "prefixes": ["203.0.113.0/24", "2001:db8:5::/64"],
                "thresholds": {"udp": {"pps": "20k"}, "tcp_syn": {"pps": "2k"}, "icmp": {"pps": "1k"}},
                "syn_auth": "on_attack",
            },
            {"name": "office", "prefixes": ["198.51.100.0/24"]},
        ],
        "detection": {
            "tick": "250ms",
            "consecutive": 2,
            "hold_down": "3s",
            "sample_every": 100,
            "baseline": {"half_life": "1m", "warmup": "0s", "min_pps": 500},
            "carpet_hosts": 8,
        },
        "mitigation": {
            "ttl": "10s",
            "ban_ttl": "30s",
            "ban_ttl_max": "5m",
            "max_bans": "1k",
            "uplink": {"bps": "10Gbit", "pps": "2M"},
        },
        "capacity": {"groups": 16},
    }


def lab(**changes: Any) -> Policy:
    """The lab policy with top-level keys replaced (dicts merged one level deep)."""
    data = lab_data()
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Policy.model_validate(data)


def with_group(**group: Any) -> Policy:
    """The lab policy with the ``servers`` group changed."""
    data = lab_data()
    data["protect"][0] = {**data["protect"][0], **group}
    return Policy.model_validate(data)
