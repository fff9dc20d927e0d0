"""Whether the protected side hurts: drops on the gateway's way to each protected group.

A flood that fills a protected target's access link shows as drops on the
gateway's interface towards it — in its queue discipline (a shaper, a full
fq or pfifo) or in the driver (``tx_dropped``). The controller reads this
as distress (agent/control/judge.py): a target that hurts gets its attacks
started at the first tick over the threshold and is escalated; a target
that serves a surge without distress is left alone.

Each group's egress interfaces are found by asking the kernel's routing
table for the first address of each of its prefixes (pyroute2, as `ip route
get` would), again every ``REFRESH_S`` seconds and after a reload, so a
route change is followed. Reading is one link dump and one qdisc dump per
interface per tick; the root qdisc's counter already includes its
children's drops.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.contract.keys import IPNetwork

log = structlog.get_logger()

#: How often the routes towards the groups are looked up again.
REFRESH_S = 30.0
TC_H_ROOT = 0xFFFFFFFF


class Downstream:
    """Cumulative drops towards each protected group, for `ControlPort.read_downstream`."""

    def __init__(self, groups: Mapping[int, Iterable[IPNetwork]]) -> None:
        self._groups = {gid: tuple(nets) for gid, nets in groups.items()}
        self._ipr: IPRoute | None = None
        self._egress: dict[int, set[int]] = {}  # gid -> ifindexes
        self._resolved_at = -REFRESH_S

    def set_groups(self, groups: Mapping[int, Iterable[IPNetwork]]) -> None:
        """A reloaded policy: resolve again at the next read."""
        self._groups = {gid: tuple(nets) for gid, nets in groups.items()}
        self._resolved_at = -REFRESH_S

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def __call__(self) -> dict[int, int]:
        """group id -> packets dropped towards it so far (interface tx drops and its root qdisc's drops)."""
        try:
            ipr = self._ipr or IPRoute()
            self._ipr = ipr
            now = time.monotonic()
            if now - self._resolved_at >= REFRESH_S:
                self._resolve(ipr)
                self._resolved_at = now
            per_if = self._drops(ipr, {i for ifs in self._egress.values() for i in ifs})
        except (OSError, NetlinkError) as e:
            log.warning("downstream_unreadable", error=str(e))
            self.close()
            return {}
        return {gid: sum(per_if.get(i, 0) for i in ifs) for gid, ifs in self._egress.items() if ifs}

    def _resolve(self, ipr: IPRoute) -> None:
        egress: dict[int, set[int]] = {}
        for gid, nets in self._groups.items():
            found: set[int] = set()
            for net in nets[:8]:  # a few prefixes say where a group lives; thousands would cost a tick
                try:
                    routes = ipr.route("get", dst=str(net.network_address))
                except NetlinkError:
                    continue  # no route: the group is not behind this gateway (yet)
                for r in routes:
                    oif = r.get_attr("RTA_OIF")
                    if oif:
                        found.add(int(oif))
            egress[gid] = found
        self._egress = egress

    @staticmethod
    def _drops(ipr: IPRoute, ifindexes: set[int]) -> dict[int, int]:
        out: dict[int, int] = {}
        for index in ifindexes:
            n = 0
            for link in ipr.link("get", index=index):
                stats = link.get_attr("IFLA_STATS64")
                if stats is not None:
                    n += int(stats["tx_dropped"])
            for q in ipr.get_qdiscs(index=index):
                if q["parent"] != TC_H_ROOT:
                    continue
                st = q.get_attr("TCA_STATS2")
                queue = st.get_attr("TCA_STATS_QUEUE") if st is not None else None
                if queue is not None:
                    n += int(queue["drops"])
            out[index] = n
        return out
