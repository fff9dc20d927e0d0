"""The real ControlPort: the controller's reads and writes on the program's maps.

A thin adapter over ``agent.datapath.port.MapPort`` so the daemon only has
to supply what it alone owns: the samples ring (``drain`` returns the
``abi.Sample`` records collected since the last call), the reason-text
table (``reason_id``) and any rules of other origins that must stay in the
rule table (``other_rules``). The conversions themselves — per-CPU batch
reads into arrays, ring records into `PacketSample`, operator units into
token-bucket settings — live here, next to the port they serve.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from agent.contract import abi
from agent.contract.keys import IPNetwork, prefix_key
from agent.contract.specs import RuleSpec
from agent.datapath.mapport import MapPort

from .port import ControlPort, DstSnapshot, PacketSample, sample_from_raw


def _no_samples() -> Iterable[abi.Sample]:
    return ()


def _no_reason(_text: str) -> int:
    return 0


def _no_rules() -> Sequence[RuleSpec]:
    return ()


def _no_downstream() -> Mapping[int, int]:
    return {}


class KernelPort:
    """`ControlPort` over the pinned maps of one program."""

    def __init__(
        self,
        maps: MapPort,
        *,
        drain: Callable[[], Iterable[abi.Sample]] = _no_samples,
        reason_id: Callable[[str], int] = _no_reason,
        other_rules: Callable[[], Sequence[RuleSpec]] = _no_rules,
        downstream: Callable[[], Mapping[int, int]] = _no_downstream,
    ) -> None:
        """``downstream``: cumulative drops towards each group, read by the daemon (it owns netlink)."""
        self.maps = maps
        self._drain = drain
        self._reason_id = reason_id
        self._other_rules = other_rules
        self._downstream = downstream

    def now_ns(self) -> int:
        return time.clock_gettime_ns(time.CLOCK_MONOTONIC)

    def read_group_stats(self) -> NDArray[np.uint64]:
        return self.maps.read_group_stats()

    def read_dst_stats(self) -> DstSnapshot:
        table = self.maps.maps["dst_stats"]
        keys, values, n = table.read_raw()
        return DstSnapshot.from_raw(keys, values, n, table.ncpus)

    def drain_samples(self) -> list[PacketSample]:
        return [sample_from_raw(s) for s in self._drain()]

    def read_downstream(self) -> Mapping[int, int]:
        return self._downstream()

    def set_syn_auth(self, gid: int, expires_ns: int | None) -> None:
        self.maps.set_syn_auth(gid, expires_ns)

    def set_auto_rules(self, rules: Sequence[RuleSpec]) -> None:
        # Other origins first: the program applies the first matching rule.
        self.maps.set_rules([*self._other_rules(), *rules])

    def ban(self, net: IPNetwork, expires_ns: int, monitor: bool, reason: str) -> None:
        now = self.now_ns()
        flags = abi.SRC_BAN_MONITOR if monitor else abi.SRC_BAN
        record = (expires_ns, now, flags, self._reason_id(reason))
        table = self.maps.addresses
        table.set_record(prefix_key(net), abi.SRC_BAN, abi.Origin.AUTO, record)
        table.commit(now)

    def unban(self, net: IPNetwork) -> None:
        table = self.maps.addresses
        if table.set_record(prefix_key(net), abi.SRC_BAN, abi.Origin.AUTO, None):
            table.commit(self.now_ns())


def _implements_the_port(port: KernelPort) -> ControlPort:
    """Never called: mypy checks here that KernelPort is a ControlPort."""
    return port
