"""agent/control: what one tick costs at scale. Measured and printed, never asserted (STYLE.md).

32,000 protected prefixes in 1,000 groups, ~100,000 hosts in the
per-destination counters (read in a stable order, then in a new order every
tick: the worst case for matching hosts between reads), 5,000 samples per
tick, and ten attacks running.
Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import ipaddress
import statistics
import time

import numpy as np
import pytest
from fakes import FakePort
from structlog.testing import capture_logs

from agent.contract.abi import LIMIT_CLASSES, TrafficClass
from agent.control.controller import Controller
from agent.control.port import DST_KINDS, DstSnapshot, PacketSample
from agent.policy.compile import compile_policy
from agent.policy.model import Policy

GROUPS, PREFIXES_PER_GROUP, HOSTS, ATTACKS, SAMPLES = 1000, 32, 100_000, 10, 5000
BASE = int(ipaddress.IPv4Address("10.0.0.0"))


class ScalePort(FakePort):
    """A FakePort whose per-destination counters are arrays, as the daemon's from_raw gives them."""

    def __init__(self, groups: int, hosts: int, gids: np.ndarray, seed: int = 1) -> None:
        super().__init__(groups=groups)
        self.rng = np.random.default_rng(seed)
        self.n = hosts
        self.gids = gids
        self.addr = np.zeros(hosts, dtype=np.uint64)
        self.cum = np.zeros((hosts, DST_KINDS, LIMIT_CLASSES), dtype=np.uint64)

    shuffle = False
    snapshot = DstSnapshot.empty()

    def prepare(self) -> None:
        """Build the next read outside the timed tick (the daemon's read is timed separately)."""
        # A hash map keeps its order while its keys do not change; shuffling is the worst case.
        o = self.rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        self.snapshot = DstSnapshot(np.full(self.n, 4, np.uint8), np.zeros(self.n, np.uint64), self.addr[o],
                                    self.gids[o], self.cum[o])

    def read_dst_stats(self) -> DstSnapshot:
        return self.snapshot


@pytest.mark.slow
def test_tick_cost_at_scale() -> None:
    groups = [
        {
            "name": f"g{g}",
            "prefixes": [str(ipaddress.IPv4Network((BASE + (g * PREFIXES_PER_GROUP + i) * 256, 24)))
                         for i in range(PREFIXES_PER_GROUP)],
            "thresholds": {"udp": {"pps": "50k"}},
        }
        for g in range(GROUPS)
    ]
    policy = Policy.model_validate({
        "interfaces": ["eth0"],
        "protect": groups,
        "detection": {"sample_every": 100, "baseline": {"warmup": "0s"}},
        "capacity": {"hosts4": 1 << 22},
    })
    compiled = compile_policy(policy)
    assert len(compiled.destinations) == GROUPS * PREFIXES_PER_GROUP

    rng = np.random.default_rng(7)
    group_of = rng.integers(0, GROUPS, HOSTS * 2)
    addr = BASE + (group_of * PREFIXES_PER_GROUP + rng.integers(0, PREFIXES_PER_GROUP, len(group_of))) * 256
    addr = addr + rng.integers(1, 255, len(group_of))
    addr, first = np.unique(addr, return_index=True)
    addr, group_of = addr[:HOSTS], group_of[first][:HOSTS]
    ids = np.array([compiled.group_ids[f"g{g}"] for g in range(GROUPS)])
    port = ScalePort(compiled.capacity.groups, len(addr), ids[group_of].astype(np.int64))
    port.addr = addr.astype(np.uint64)
    controller = Controller(policy, compiled, port)
    normal = rng.uniform(5, 100, (len(addr), LIMIT_CLASSES))
    victims = rng.choice(len(addr), ATTACKS, replace=False)

    def tick(attack: bool) -> tuple[float, float]:
        pps = normal * rng.uniform(0.95, 1.05, normal.shape)
        if attack:
            pps[victims, TrafficClass.UDP] += 200_000
        pk = pps.astype(np.uint64)
        port.cum = port.cum + np.stack([pk, pk * 300, np.zeros_like(pk)], axis=1)
        np.add.at(port.group_counters[:, :, 0], port.gids, pk)
        np.add.at(port.group_counters[:, :, 1], port.gids, pk * 300)
        srcs = rng.integers(1 << 24, 1 << 31, SAMPLES)
        victim = ipaddress.IPv4Address(int(addr[victims[0]]))
        port.samples = [
            PacketSample(ipaddress.IPv4Address(int(s)), victim, 123, 80, int(port.gids[victims[0]]), 500, 17,
                         TrafficClass.UDP)
            for s in srcs
        ]
        port.advance(1.0)
        port.prepare()
        wall, cpu = time.perf_counter(), time.process_time()
        controller.tick()
        return time.perf_counter() - wall, time.process_time() - cpu

    with capture_logs() as logs:
        calm = [tick(False) for _ in range(15)][2:]
        hot = [tick(True) for _ in range(15)][3:]
        port.shuffle = True
        shuffled = [tick(True) for _ in range(10)]
    started = [e for e in logs if e["event"] == "attack_started"]
    assert len(started) == ATTACKS, f"{len(started)} attacks started, expected {ATTACKS}"
    assert len(controller.attacks()) == ATTACKS

    def line(name: str, xs: list[tuple[float, float]]) -> str:
        wall = sorted(x[0] * 1e3 for x in xs)
        cpu = sorted(x[1] * 1e3 for x in xs)
        return (f"{name}: wall median {statistics.median(wall):.1f} ms, max {wall[-1]:.1f} ms; "
                f"cpu median {statistics.median(cpu):.1f} ms")

    # The daemon's side: turning a raw batch read of 100k hosts on 2 CPUs into a snapshot.
    keys = np.zeros((HOSTS, 20), dtype=np.uint8)
    keys[:, :4] = addr.astype(">u4").view(np.uint8).reshape(-1, 4)
    keys[:, 16] = 4
    values = np.zeros((HOSTS, 2, 19), dtype="<u8")
    t0 = time.perf_counter()
    snap = DstSnapshot.from_raw(keys.tobytes(), values.tobytes(), HOSTS, 2)
    raw_ms = (time.perf_counter() - t0) * 1e3
    assert snap.address(0) == ipaddress.IPv4Address(int(addr[0]))

    print(f"\ntick cost: {GROUPS} groups, {GROUPS * PREFIXES_PER_GROUP} prefixes, {HOSTS} hosts, "
          f"{SAMPLES} samples/tick (target <= 100 ms)")
    print(line("calm", calm))
    print(line(f"{ATTACKS} attacks", hot))
    print(line(f"{ATTACKS} attacks, hosts read in a new order every tick", shuffled))
    print(f"DstSnapshot.from_raw of {HOSTS} hosts x 2 CPUs: {raw_ms:.1f} ms")
