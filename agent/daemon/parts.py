"""The running parts the supervisor wires together, and the traffic rates each tick measures.

:class:`Parts` is what start-up built: the program and its maps, the policy
in force, the controller, the interfaces, the state store. The control
socket's verbs and the metrics collector read the agent through it; neither
holds the supervisor itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from agent.contract import abi
from agent.control.controller import Controller
from agent.datapath import loader
from agent.datapath.mapport import MapPort
from agent.datapath.maps import Maps
from agent.upstream.service import UpstreamService

from .downstream import Downstream
from .interfaces import InterfaceWatcher
from .reload import PolicyRuntime
from .state import Reasons, StateStore


@dataclass(frozen=True)
class Rates:
    """Packets and bytes per second over the last tick, by reason."""

    at: float = 0.0
    pps_in: float = 0.0
    bps_in: float = 0.0
    pps_by_reason: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        """As `status` and `top` show them."""
        return {"pps_in": round(self.pps_in, 1), "bps_in": round(self.bps_in, 1),
                "pps_by_reason": self.pps_by_reason}


class Throughput:
    """Rates from two successive reads of the verdict counters."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.rates = Rates()
        self._clock = clock
        self._last: NDArray[np.uint64] | None = None

    def update(self, stats: NDArray[np.uint64]) -> Rates:
        """Take this tick's counters ([slot, reason, class, mon, (packets, bytes)]); return the new rates."""
        now = self._clock()
        if self._last is not None and self.rates.at:
            dt = max(now - self.rates.at, 1e-3)
            d = (stats - self._last).astype(np.float64)
            by_reason = d[..., 0].sum(axis=(0, 2, 3)) / dt
            self.rates = Rates(
                at=now,
                pps_in=float(d[..., 0].sum() / dt),
                bps_in=float(d[..., 1].sum() * 8 / dt),
                pps_by_reason={abi.Reason(i).label: round(float(v), 1) for i, v in enumerate(by_reason) if v},
            )
        else:
            self.rates = Rates(at=now)
        self._last = stats
        return self.rates


@dataclass(frozen=True)
class Parts:
    """Everything start-up built; fixed for the life of the process."""

    program: loader.Program
    maps: Maps
    port: MapPort
    runtime: PolicyRuntime
    controller: Controller
    reasons: Reasons
    store: StateStore
    interfaces: InterfaceWatcher
    throughput: Throughput
    downstream: Downstream
    upstream: UpstreamService | None = None  # announcements over BGP (policy upstream:)
    started_at: float = field(default_factory=time.time)

    @property
    def pin_dir(self) -> str:
        return self.program.pin_dir


__all__ = ["Parts", "Rates", "Throughput"]
