"""The interface watcher: keep the program attached to every interface the policy names.

An interface may not exist yet when the daemon starts, may be deleted and
created again, or may have its XDP program replaced by someone else. An
rtnetlink socket subscribed to link events wakes the main loop; each event
for a watched interface re-attaches where needed (atomically replacing
whatever is there) and a deleted interface frees its counter slot. Events
can be lost (the socket's buffer overruns), so every few seconds the tick
also checks each interface's XDP state: belt and braces.

Once a detach is requested the watcher stops re-attaching: our own detach
shows up as link changes and must not be undone.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.contract import abi
from agent.datapath import attach, pins
from agent.datapath.errors import InterfaceError
from agent.datapath.mapport import MapPort
from agent.policy import load_policy

log = structlog.get_logger()

RTMGRP_LINK = 1
NETLINK_ROUTE = 0
#: Seconds between two checks of every interface's XDP state.
CHECK_EVERY = 5.0


@dataclass
class Iface:
    """One interface the policy names, and what is attached to it."""

    name: str
    mode: str
    slot: int
    ifindex: int = 0
    attached_mode: str = ""
    prog_id: int = 0
    error: str = ""

    def status(self) -> dict[str, object]:
        return {"name": self.name, "ifindex": self.ifindex, "mode": self.attached_mode or "-",
                "requested": self.mode, "attached": bool(self.prog_id), "error": self.error or None}


class InterfaceWatcher:
    """Attaches one program to the policy's interfaces and keeps it attached."""

    def __init__(self, port: MapPort, prog_fd: int, prog_id: int, wanted: Iterable[tuple[str, str]],
                 lock: threading.RLock, *, clock: Callable[[], float] = time.monotonic) -> None:
        """``wanted``: (interface name, XDP mode) in policy order; the first gets counter slot 1."""
        self._port = port
        self._prog_fd, self._prog_id = prog_fd, prog_id
        self._lock = lock
        self._clock = clock
        self.ifaces: dict[str, Iface] = {}
        for i, (name, mode) in enumerate(wanted, start=1):
            self.ifaces[name] = Iface(name, mode, slot=min(i, abi.IF_SLOTS - 1))
        self.detaching = False
        self._socket: socket.socket | None = None
        self._marshal: Any = None  # pyroute2's MarshalRtnl: untyped
        self._next_check = 0.0

    # ------------------------------------------------------------------ attach

    def attach_all(self) -> list[str]:
        """Attach wherever possible; returns the interfaces attached."""
        for itf in self.ifaces.values():
            self._attach(itf)
        return self.attached()

    def attached(self) -> list[str]:
        return [i.name for i in self.ifaces.values() if i.prog_id]

    def _attach(self, itf: Iface) -> bool:
        try:
            res = attach.attach(itf.name, self._prog_fd, attach.XdpMode(itf.mode))
        except InterfaceError as e:
            if itf.error != str(e):
                log.warning("interface_unavailable", interface=itf.name, error=str(e))
            itf.error, itf.prog_id, itf.ifindex = str(e), 0, 0
            return False
        if itf.ifindex and itf.ifindex != res.ifindex:
            self._port.set_ifslot(itf.ifindex, 0)
        itf.ifindex, itf.attached_mode, itf.prog_id, itf.error = res.ifindex, res.mode.value, res.prog_id, ""
        self._port.set_ifslot(res.ifindex, itf.slot)
        log.info("attached", interface=itf.name, ifindex=res.ifindex, mode=itf.attached_mode,
                 program_id=res.prog_id, replaced=res.replaced_prog_id or None,
                 fallback=res.fallback or None)
        return True

    def detach_all(self) -> list[dict[str, object]]:
        """Stop watching, then remove the program from every interface."""
        self.detaching = True  # before detaching: the events it causes must not re-attach
        results: list[dict[str, object]] = []
        for itf in self.ifaces.values():
            try:
                r = attach.detach(itf.name)
                results.append({"interface": itf.name, "detached": r.detached})
            except InterfaceError as e:
                results.append({"interface": itf.name, "detached": False, "error": str(e)})
        return results

    # ------------------------------------------------------------------ netlink

    def open(self) -> None:
        """A plain non-blocking rtnetlink socket subscribed to link events.

        Not pyroute2's IPRoute.get(): it buffers datagrams internally, so a
        select() on its fd can sleep while link events wait unread. Here
        every readable wake-up drains the socket; pyroute2 only parses.
        """
        from pyroute2.netlink.rtnl.marshal import MarshalRtnl

        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                          NETLINK_ROUTE)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind((0, RTMGRP_LINK))
        self._socket = s
        self._marshal = MarshalRtnl()

    def fileno(self) -> int | None:
        """The socket to wait on (None before open)."""
        return self._socket.fileno() if self._socket is not None else None

    def on_readable(self) -> None:
        """Drain the link events; re-attach or forget the interfaces they name."""
        assert self._socket is not None
        msgs: list[Any] = []
        while True:
            try:
                data = self._socket.recv(1 << 20)
            except BlockingIOError:
                break
            except OSError as e:  # ENOBUFS: events were lost; check every interface
                log.warning("netlink_overrun", error=e.strerror)
                self._next_check = 0.0
                continue
            msgs.extend(self._marshal.parse(data))
        if self.detaching:
            return
        for msg in msgs:
            name = msg.get_attr("IFLA_IFNAME")
            itf = self.ifaces.get(name) if name else None
            if itf is not None:
                self._link_event(itf, msg)

    def _link_event(self, itf: Iface, msg: Any) -> None:
        log.debug("link_event", interface=itf.name, change=msg["event"], ifindex=msg["index"])
        if msg["event"] == "RTM_DELLINK":
            if itf.ifindex and msg["index"] != itf.ifindex:
                return  # a late report of an earlier interface of that name: the new one is fine
            self._lost(itf)
            return
        xdp = msg.get_attr("IFLA_XDP")
        prog_id = xdp.get_attr("IFLA_XDP_PROG_ID") if xdp is not None else None
        if msg["index"] != itf.ifindex or not prog_id or prog_id != self._prog_id:
            with self._lock:
                if not self.detaching:
                    self._attach(itf)

    def _lost(self, itf: Iface) -> None:
        """The interface is gone: free its counter slot, and say so once (the netlink event and the
        periodic check may both see the same deletion)."""
        if itf.ifindex or itf.prog_id:
            log.warning("interface_lost", interface=itf.name, ifindex=itf.ifindex)
        if itf.ifindex:
            self._port.set_ifslot(itf.ifindex, 0)
        itf.prog_id, itf.ifindex = 0, 0

    def check(self) -> None:
        """Belt and braces for missed netlink events: every few seconds, each interface's XDP state."""
        now = self._clock()
        if now < self._next_check or self.detaching:
            return
        self._next_check = now + CHECK_EVERY
        for itf in self.ifaces.values():
            try:
                st = attach.xdp_state(itf.name)
            except InterfaceError:
                self._lost(itf)
                continue
            if st.prog_id != self._prog_id:
                self._attach(itf)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    # ------------------------------------------------------------------ views

    def slots(self) -> dict[int, str]:
        """Counter slot -> interface name."""
        return {i.slot: i.name for i in self.ifaces.values()}

    def modes(self) -> dict[str, str]:
        """Attached interface -> XDP mode in force."""
        return {i.name: i.attached_mode for i in self.ifaces.values() if i.prog_id}

    def status(self) -> list[dict[str, object]]:
        return [i.status() for i in self.ifaces.values()]


def detach_everything(policy_path: Path | None, pin_root: str, interfaces: list[str]) -> dict[str, object]:
    """`floodguard detach` without a running daemon: the named interfaces (else the
    policy's, else every interface), then every pin directory."""
    names = list(interfaces)
    if not names and policy_path is not None:
        result = load_policy(policy_path)
        if result.policy is not None:
            names = [i.name for i in result.policy.interfaces]
    if not names:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            names = [ln.get_attr("IFLA_IFNAME") for ln in ipr.get_links()]
    results: list[dict[str, object]] = []
    for name in names:
        try:
            r = attach.detach(name)
        except InterfaceError as e:
            if "no interface" in str(e):
                continue
            results.append({"interface": name, "detached": False, "error": str(e)})
            continue
        if r.detached:
            results.append({"interface": name, "detached": True})
    return {"interfaces": results, "pins_removed": pins.remove_all(pin_root)}


__all__ = ["Iface", "InterfaceWatcher", "detach_everything"]
