"""An in-memory ControlPort for pure-logic tests of agent/control.

Tests advance the clock, add traffic to the cumulative counters and queue
samples; every write is kept (current state) and logged in ``writes``
(history, with the clock at the time of the write). Not part of the
product: the runtime has no test doubles.
"""

from __future__ import annotations

from collections.abc import Iterator, KeysView, Sequence, ValuesView
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

import numpy as np
import pytest
from numpy.typing import NDArray

from agent.contract.abi import LIMIT_CLASSES
from agent.contract.keys import IPAddress, IPNetwork
from agent.contract.specs import RuleSpec
from agent.control.port import GROUP_FIELDS, ControlPort, DstSnapshot, PacketSample

K = TypeVar("K")
V = TypeVar("V")


class WatchedDict(dict[K, V]):
    """A dict that counts every walk over its entries (``walks``): put in place of a
    component's table to prove that some work never looks at every entry."""

    walks = 0

    def __iter__(self) -> Iterator[K]:
        self.walks += 1
        return super().__iter__()

    def keys(self) -> KeysView[K]:
        self.walks += 1
        return super().keys()

    def values(self) -> ValuesView[V]:
        self.walks += 1
        return super().values()

    def items(self) -> Any:
        self.walks += 1
        return super().items()


def count_heap_pops(monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> list[int]:
    """Count the entries ``module`` takes off its heaps (it imports ``heappop`` by name); [n]."""
    popped = [0]
    real = module.heappop

    def pop(heap: list[Any]) -> Any:
        popped[0] += 1
        return real(heap)

    monkeypatch.setattr(module, "heappop", pop)
    return popped


@dataclass(frozen=True)
class BanWrite:
    expires_ns: int
    monitor: bool
    reason: str


@dataclass
class FakePort:
    """An in-memory `ControlPort` for pure-logic tests.

    Tests advance the clock, add traffic to the cumulative counters and queue
    samples; every write is kept (current state) and logged in ``writes``
    (history, with the clock at the time of the write).
    """

    groups: int = 16
    clock_ns: int = 1_000_000_000_000
    group_counters: NDArray[np.uint64] = field(init=False)
    hosts: dict[tuple[int, int], tuple[int, NDArray[np.uint64]]] = field(default_factory=dict)
    samples: list[PacketSample] = field(default_factory=list)
    syn_auth: dict[int, int] = field(default_factory=dict)
    rules: list[RuleSpec] = field(default_factory=list)
    bans: dict[IPNetwork, BanWrite] = field(default_factory=dict)
    downstream_drops: dict[int, int] = field(default_factory=dict)  # gid -> cumulative drops towards it
    writes: list[tuple[int, str, object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.group_counters = np.zeros((self.groups, LIMIT_CLASSES, len(GROUP_FIELDS)), dtype=np.uint64)

    # --- feeding --------------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        self.clock_ns += round(seconds * 1e9)

    def count_group(
        self, gid: int, cls: int, packets: int, nbytes: int, dropped: int = 0, dropped_bytes: int = 0,
        new_sources: int = 0,
    ) -> None:
        """Add to the cumulative counters of (gid, cls)."""
        self.group_counters[gid, cls] += np.array(
            [packets, nbytes, dropped, dropped_bytes, new_sources], dtype=np.uint64
        )

    def count_host(self, addr: IPAddress, gid: int, cls: int, packets: int, nbytes: int, dropped: int = 0) -> None:
        """Add to the cumulative counters of one destination host."""
        key = (addr.version, int(addr))
        if key not in self.hosts:
            self.hosts[key] = (gid, np.zeros((3, LIMIT_CLASSES), dtype=np.uint64))
        self.hosts[key][1][:, cls] += np.array([packets, nbytes, dropped], dtype=np.uint64)

    def forget_host(self, addr: IPAddress) -> None:
        """The LRU evicted the host's counters."""
        self.hosts.pop((addr.version, int(addr)), None)

    # --- ControlPort ------------------------------------------------------------------------------

    def now_ns(self) -> int:
        return self.clock_ns

    def read_group_stats(self) -> NDArray[np.uint64]:
        return self.group_counters.copy()

    def read_dst_stats(self) -> DstSnapshot:
        keys = list(self.hosts)
        return DstSnapshot.build(keys, [self.hosts[k][0] for k in keys], [self.hosts[k][1] for k in keys])

    def drain_samples(self) -> list[PacketSample]:
        out, self.samples = self.samples, []
        return out

    def read_downstream(self) -> dict[int, int]:
        return dict(self.downstream_drops)

    def set_syn_auth(self, gid: int, expires_ns: int | None) -> None:
        if expires_ns is None:
            self.syn_auth.pop(gid, None)
        else:
            self.syn_auth[gid] = expires_ns
        self.writes.append((self.clock_ns, "syn_auth", (gid, expires_ns)))

    def set_auto_rules(self, rules: Sequence[RuleSpec]) -> None:
        self.rules = list(rules)
        self.writes.append((self.clock_ns, "rules", tuple(rules)))

    def ban(self, net: IPNetwork, expires_ns: int, monitor: bool, reason: str) -> None:
        self.bans[net] = BanWrite(expires_ns, monitor, reason)
        self.writes.append((self.clock_ns, "ban", (net, expires_ns, monitor, reason)))

    def unban(self, net: IPNetwork) -> None:
        self.bans.pop(net, None)
        self.writes.append((self.clock_ns, "unban", net))

    # --- inspection ---------------------------------------------------------------------------------

    def live_bans(self) -> dict[IPNetwork, BanWrite]:
        """Bans the kernel would still enforce now."""
        return {n: b for n, b in self.bans.items() if b.expires_ns > self.clock_ns}

    def written(self, kind: str) -> list[tuple[int, object]]:
        """(time, payload) of every write of one kind, oldest first."""
        return [(t, what) for t, k, what in self.writes if k == kind]


def _implements_the_port(port: FakePort) -> ControlPort:
    """Never called: mypy checks here that FakePort is a ControlPort."""
    return port
