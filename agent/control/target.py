"""Who is attacked inside a group: one host, or many at once (carpet bombing).

From the per-destination rates of the attacked class. One host *dominates*
when it receives at least half of the group's traffic of that class. A host
is *hit* when it receives at least threshold / carpet_hosts: its share of an
attack-sized rate spread over carpet_hosts hosts. Carpet bombing — many
hosts each below any per-host threshold, together over the group's — is
declared when carpet_hosts or more hosts are hit, or when no host dominates.
A carpet attack is matched by the group's own prefixes that hold the busiest
hit hosts (a few: rules are few), and those prefixes stay for the rest of
the attack so the rules do not churn as the busiest hosts change.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from agent.contract.keys import IPAddress

from .meter import DstRates
from .mitigate import MAX_CARPET_PREFIXES
from .settings import GroupView, Settings

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DOMINANT_SHARE = 0.5
#: The busiest hosts looked at for a carpet attack's prefixes.
CARPET_HOSTS_EXAMINED = 64


@dataclass(frozen=True)
class Target:
    carpet: bool
    host: IPAddress | None = None
    row: int | None = None  # the host's row in this tick's DstRates
    prefixes: tuple[IPNetwork, ...] = ()
    hits: int = 0
    top_hosts: list[tuple[IPAddress, float]] = field(default_factory=list)

    @property
    def nets(self) -> tuple[IPNetwork, ...]:
        """Destination prefixes a rule for this target matches."""
        if self.host is not None:
            return (ipaddress.ip_network(self.host),)
        return self.prefixes


def locate(
    rates: DstRates,
    rows: NDArray[np.int64],
    cls: int,
    threshold_pps: float,
    view: GroupView,
    settings: Settings,
    known: Sequence[IPNetwork] = (),
) -> Target | None:
    """The target of an attack on (view.gid, cls); ``rows`` are the group's rows in rates,
    ``known`` the prefixes the attack already has. None: no host data this tick."""
    if len(rows) == 0:
        return None
    pps = rates.pps[rows, cls]
    total = float(pps.sum())
    if total <= 0:
        return None
    carpet_hosts = settings.detection.carpet_hosts
    hits = int((pps >= threshold_pps / carpet_hosts).sum())
    k = min(CARPET_HOSTS_EXAMINED, len(pps))
    order = np.argpartition(-pps, k - 1)[:k]
    order = order[np.argsort(-pps[order])]
    top = [(rates.address(int(rows[i])), float(pps[i])) for i in order[:10]]
    best = int(order[0])
    if float(pps[best]) >= DOMINANT_SHARE * total and hits < carpet_hosts:
        return Target(False, top[0][0], int(rows[best]), (), hits, top)
    prefixes = list(known)
    if len(prefixes) < MAX_CARPET_PREFIXES:
        weight: dict[IPNetwork, float] = {}
        for i in order.tolist():
            if pps[i] <= 0:
                break
            r = int(rows[i])
            net = settings.group_prefix_of(
                int(rates.family[r]), (int(rates.addr_hi[r]) << 64) | int(rates.addr_lo[r]), view.gid
            )
            if net is not None and net not in prefixes:
                weight[net] = weight.get(net, 0.0) + float(pps[i])
        prefixes += sorted(weight, key=lambda n: -weight[n])[: MAX_CARPET_PREFIXES - len(prefixes)]
    if not prefixes and len(view.prefixes) <= MAX_CARPET_PREFIXES:
        prefixes = list(view.prefixes)
    return Target(True, None, None, tuple(prefixes), hits, top)
