"""Read and change interface features (``ethtool -k/-K``) through pyroute2.

pyroute2's :class:`~pyroute2.ethtool.Ethtool` talks to the kernel through an
ioctl socket and a generic-netlink socket that it opens when constructed; the
kernel resolves interface names in the namespace of those sockets. Call these
functions from a thread that sits in the interface's namespace
(:func:`agent.lab._netns.run_in_thread`).
"""

from __future__ import annotations

from collections.abc import Mapping

from pyroute2.ethtool import Ethtool

# Feature names as `ethtool -k` prints them.
GRO = "rx-gro"
TX_CHECKSUM = "tx-checksum-ip-generic"


class FeatureError(Exception):
    """The interface lacks a feature or refused to change it."""


def get_features(ifname: str) -> dict[str, bool]:
    """Every feature of ``ifname`` and whether it is on."""
    with Ethtool() as et:
        return {str(k): bool(v.enable) for k, v in et.get_features(ifname).features.items()}


def set_features(ifname: str, wanted: Mapping[str, bool]) -> None:
    """Switch features of ``ifname`` on or off and check that the kernel agreed."""
    with Ethtool() as et:
        current = et.get_features(ifname)
        for name, enable in wanted.items():
            feature = current.features.get(name)
            if feature is None or not feature.available:
                raise FeatureError(
                    f"interface {ifname} cannot change feature {name!r}: the driver does not offer it"
                )
            feature.enable = enable
        et.set_features(ifname, current)
        after = et.get_features(ifname).features
    refused = [name for name, enable in wanted.items() if bool(after[name].enable) != enable]
    if refused:
        raise FeatureError(f"interface {ifname} refused to change {', '.join(refused)}")
