"""The metrics collector's view of the running agent (agent.metrics.MetricsSource).

Called from the HTTP server's thread at scrape time: members that read
what the tick changes take the agent's lock; the rest read values that
only change by replacement.
"""

from __future__ import annotations

import threading

from agent.contract.clock import monotonic_ns
from agent.datapath.mapport import MapPort
from agent.metrics import AttackStats, MetricsSource, UpstreamStats

from .parts import Parts


class AgentMetrics:
    """MetricsSource over the parts the supervisor built."""

    def __init__(self, parts: Parts, lock: threading.RLock) -> None:
        self._parts = parts
        self._lock = lock

    @property
    def port(self) -> MapPort | None:
        return self._parts.port

    def interfaces(self) -> dict[int, str]:
        return self._parts.interfaces.slots()

    def group_names(self) -> dict[int, str]:
        compiled = self._parts.runtime.compiled
        return {g.gid: g.name for g in compiled.groups} if compiled else {0: "default"}

    def watch_names(self) -> dict[int, str]:
        compiled = self._parts.runtime.compiled
        return dict(compiled.watch_names) if compiled else {}

    def xdp_modes(self) -> dict[str, str]:
        return self._parts.interfaces.modes()

    def reloads(self) -> tuple[int, int]:
        runtime = self._parts.runtime
        return runtime.reloads_ok, runtime.reloads_failed

    def policy_loaded_at(self) -> float:
        return self._parts.runtime.loaded_at

    def build_seconds(self) -> float:
        return self._parts.program.build_seconds

    def bans_by_origin(self) -> dict[str, int]:
        with self._lock:
            return self._parts.port.addresses.ban_counts(monotonic_ns())

    def active_rules(self) -> int:
        return int(self._parts.port.read_config().n_rules)

    def attack_stats(self) -> AttackStats:
        with self._lock:
            st = self._parts.controller.stats()
        return AttackStats(active=st.active_by_vector, total=st.started_by_vector,
                           time_to_mitigate=st.time_to_mitigate, time_to_mitigate_sum=st.time_to_mitigate_sum,
                           escalations_total=st.escalations_total)


    def upstream_stats(self) -> UpstreamStats | None:
        up = self._parts.upstream
        st = up.stats() if up is not None else None
        if st is None:
            return None
        return UpstreamStats(speaker_up=st.speaker_up, sessions=st.sessions, announcements=st.announcements,
                             refused=st.refused, changes=st.changes)


def _is_a_source(source: AgentMetrics) -> MetricsSource:
    """Never called: mypy checks here that AgentMetrics is a MetricsSource."""
    return source


__all__ = ["AgentMetrics"]
