"""Attach, replace and detach the XDP program on an interface, with pyroute2.

Every change is one RTM_SETLINK carrying IFLA_XDP, so the kernel decides it
atomically:

- nothing attached: ``XDP_FLAGS_UPDATE_IF_NOEXIST`` plus the mode, so a
  program someone attached after we looked is never overwritten;
- a program attached: ``XDP_FLAGS_REPLACE`` with ``IFLA_XDP_EXPECTED_FD``
  naming the program we saw, in the mode it runs in. The kernel swaps the
  pointer only if that program is still the one attached (else EEXIST), so
  there is no moment without a program — never detach-then-attach — and a
  concurrent change fails loudly instead of being overwritten;
- detach: the same replace, with ``IFLA_XDP_FD = -1``: it removes exactly the
  program we checked was floodguard's, never one swapped in meanwhile.

Only a program named ``xdp_floodguard`` is replaced or removed unless the
caller forces it; anything else raises ForeignProgramError.

Network namespaces: the program fd belongs to this process, and the kernel
resolves the fds inside IFLA_XDP in the context of the task that sends the
netlink message. ``IPRoute(netns=...)`` gives exactly that: its helper opens
the socket inside the namespace and hands it back, and this process sends on
it. (``flags=0`` so that a missing namespace is an error, not created.)
"""

from __future__ import annotations

import enum
import errno as errno_mod
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import bpfsys as sysbpf
from .errors import (
    BpfSyscallError,
    DatapathError,
    ForeignProgramError,
    InterfaceError,
    MissingPrivilegeError,
    UnknownInterfaceError,
    UnsupportedLinkError,
)
from .loader import PROGRAM_NAME

log = structlog.get_logger()

# linux/if_link.h
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3
XDP_FLAGS_REPLACE = 1 << 4

_BPF_PROG_TYPE_XDP = 6

# linux/if_arp.h: the link types an operator may name by mistake, for the message.
ARPHRD_ETHER = 1
_LINK_KINDS = {
    512: "PPP",
    768: "IPIP tunnel",
    769: "IPv6-in-IPv6 tunnel",
    772: "loopback",
    776: "SIT tunnel",
    778: "GRE tunnel",
    823: "IPv6 GRE tunnel",
    0xFFFE: "no link-layer header: tun, WireGuard",  # ARPHRD_NONE
    0xFFFF: "no link-layer header",  # ARPHRD_VOID
}

AttachedMode = Literal["none", "native", "generic", "hw", "multi"]

# IFLA_XDP_ATTACHED as pyroute2 decodes it (XDP_ATTACHED_* -> its value_map).
_ATTACHED: dict[Any, AttachedMode] = {
    None: "none",
    0: "none",
    "xdp": "native",
    1: "native",
    "xdpgeneric": "generic",
    2: "generic",
    "xdpoffload": "hw",
    3: "hw",
    "xdpmulti": "multi",
    4: "multi",
}
_MODE_FLAGS: dict[str, int] = {
    "native": XDP_FLAGS_DRV_MODE,
    "generic": XDP_FLAGS_SKB_MODE,
    "hw": XDP_FLAGS_HW_MODE,
}
_PER_MODE_ID_ATTRS = (
    ("native", "IFLA_XDP_DRV_PROG_ID"),
    ("generic", "IFLA_XDP_SKB_PROG_ID"),
    ("hw", "IFLA_XDP_HW_PROG_ID"),
)


class XdpMode(enum.Enum):
    """How the program runs: in the driver (native), after the stack builds an
    skb (generic: works everywhere, several times slower), or native when the
    driver supports it and generic otherwise (auto)."""

    NATIVE = "native"
    GENERIC = "generic"
    AUTO = "auto"


class AttachRaceError(InterfaceError):
    """The interface's XDP program changed between our look and our change.

    Someone else manages XDP on the interface at the same time; the kernel
    refused our change rather than overwrite theirs.
    """


@dataclass(frozen=True)
class XdpState:
    """What runs on an interface (IFLA_XDP).

    ``prog_id`` is the program that sees host traffic (native or generic);
    with several programs attached (``multi``: offloaded plus native or
    generic) ``prog_ids`` has each one by mode.
    """

    ifindex: int
    ifname: str
    mode_attached: AttachedMode
    prog_id: int | None
    prog_ids: Mapping[str, int] = field(default_factory=dict)

    @property
    def attached(self) -> bool:
        return self.mode_attached != "none"


@dataclass(frozen=True)
class AttachResult:
    """Where and how the program now runs.

    ``replaced_prog_id``/``replaced_name``: the program it replaced, if any.
    ``fallback``: why AUTO chose generic mode (None when it did not).
    """

    ifindex: int
    ifname: str
    mode: XdpMode
    prog_id: int
    replaced_prog_id: int | None = None
    replaced_name: str | None = None
    fallback: str | None = None


@dataclass(frozen=True)
class DetachResult:
    """What detach did: ``detached`` is False when nothing was attached."""

    ifindex: int
    ifname: str
    detached: bool
    prog_id: int | None = None
    prog_name: str | None = None
    mode: XdpMode | None = None


# --- netlink plumbing ------------------------------------------------------------


@contextmanager
def _rtnl(netns: str | None) -> Iterator[Any]:
    """A rtnetlink socket in ``netns`` (None: ours), used from this process."""
    try:
        ipr = IPRoute(netns=netns, flags=0) if netns else IPRoute()
    except FileNotFoundError:
        raise InterfaceError(
            f"network namespace {netns!r} does not exist (/run/netns/{netns} is missing): "
            "check the namespace name (`ls /run/netns`)"
        ) from None
    except OSError as e:
        if e.errno in (errno_mod.EPERM, errno_mod.EACCES):
            raise MissingPrivilegeError(f"enter network namespace {netns!r}") from e
        raise
    try:
        yield ipr
    finally:
        ipr.close()


def _where(ifname: str, netns: str | None) -> str:
    return f"{ifname} (network namespace {netns})" if netns else ifname


def _netlink_error(exc: NetlinkError, action: str, ifname: str, netns: str | None) -> DatapathError:
    """Turn a netlink errno into an error that says what to do."""
    code = int(exc.code)
    where = _where(ifname, netns)
    if code in (errno_mod.EPERM, errno_mod.EACCES):
        return MissingPrivilegeError(f"{action} on {where}")
    if code == errno_mod.ENODEV:
        return InterfaceError(
            f"{where} disappeared while floodguard tried to {action}: "
            "check that the interface exists (`ip link`) and run again"
        )
    return InterfaceError(f"cannot {action} on {where}: {os.strerror(code)} (errno {code})")


def _resolve(ipr: Any, iface: str | int, netns: str | None) -> tuple[int, str, Any]:
    """(ifindex, ifname, link message) of a name or an index."""
    if isinstance(iface, int):
        index = iface
    else:
        found = ipr.link_lookup(ifname=iface)
        if not found:
            raise UnknownInterfaceError(iface)
        index = int(found[0])
    try:
        msg = ipr.link("get", index=index)[0]
    except NetlinkError as e:
        if e.code == errno_mod.ENODEV and isinstance(iface, int):
            raise UnknownInterfaceError(f"with index {index}") from None
        # A name that was just found and is gone now vanished meanwhile.
        raise _netlink_error(e, "read its XDP state", str(iface), netns) from None
    return index, str(msg.get_attr("IFLA_IFNAME")), msg


def _check_ethernet(ifname: str, netns: str | None, msg: Any) -> None:
    """Refuse a link whose frames do not start with an Ethernet header.

    The program reads every frame as Ethernet (bpf/parse.h); on a PPP, tun or
    WireGuard device XDP sees a bare IP packet, so its first bytes would be
    read as MAC addresses and the packet passed as non-IP: attached, and
    filtering nothing. Loopback has Ethernet headers but no traffic from
    outside to protect.
    """
    arphrd = int(msg["ifi_type"])
    if arphrd != ARPHRD_ETHER:
        raise UnsupportedLinkError(_where(ifname, netns), _LINK_KINDS.get(arphrd, "non-Ethernet"), arphrd)


def _state_of(index: int, ifname: str, msg: Any) -> XdpState:
    xdp = msg.get_attr("IFLA_XDP")
    if xdp is None:
        return XdpState(index, ifname, "none", None)
    raw = xdp.get_attr("IFLA_XDP_ATTACHED")
    mode = _ATTACHED.get(raw)
    if mode is None:
        raise InterfaceError(
            f"{ifname} reports an XDP attachment type floodguard does not know ({raw!r}): "
            "upgrade floodguard for this kernel"
        )
    ids: dict[str, int] = {}
    for name, attr in _PER_MODE_ID_ATTRS:
        value = xdp.get_attr(attr)
        if value:
            ids[name] = int(value)
    prog_id = xdp.get_attr("IFLA_XDP_PROG_ID")
    if prog_id:
        prog_id = int(prog_id)
        if mode in _MODE_FLAGS:
            ids.setdefault(mode, prog_id)
    elif mode == "multi":
        prog_id = ids.get("native", ids.get("generic"))
    else:
        prog_id = None
    return XdpState(index, ifname, mode, prog_id, ids)


def _set_xdp(ipr: Any, index: int, fd: int, flags: int, expected_fd: int | None = None) -> None:
    attrs: list[tuple[str, int]] = [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", flags)]
    if expected_fd is not None:
        attrs.append(("IFLA_XDP_EXPECTED_FD", expected_fd))
    ipr.link("set", index=index, xdp={"attrs": attrs})


@dataclass
class _Current:
    """The attached program, opened so the kernel can compare it (expected fd)."""

    fd: int
    prog_id: int
    name: str
    mode: str


def _open_current(state: XdpState, netns: str | None) -> _Current:
    """Open an fd of the program that runs on the interface and read its name."""
    if state.mode_attached == "multi":
        mode = "native" if "native" in state.prog_ids else "generic"
    else:
        mode = state.mode_attached
    if mode == "hw":
        raise InterfaceError(
            f"{_where(state.ifname, netns)} runs an offloaded (hardware) XDP program; floodguard "
            "does not run offloaded: unload it with `xdp-loader unload` and attach in native mode"
        )
    assert state.prog_id is not None  # attached in native or generic mode has an id
    try:
        fd = sysbpf.prog_fd_by_id(state.prog_id)
    except BpfSyscallError as e:
        if e.errno in (errno_mod.EPERM, errno_mod.EACCES):
            raise MissingPrivilegeError(f"open the XDP program of {state.ifname}") from e
        if e.errno == errno_mod.ENOENT:
            raise AttachRaceError(
                f"the XDP program on {_where(state.ifname, netns)} (id {state.prog_id}) was removed "
                "while floodguard was replacing it: something else manages XDP on this interface; "
                "stop it and run again"
            ) from e
        raise
    try:
        name = sysbpf.prog_info(fd).name.decode(errors="replace")
    except BaseException:
        os.close(fd)
        raise
    return _Current(fd=fd, prog_id=state.prog_id, name=name, mode=mode)


def _race(ifname: str, netns: str | None, seen: str) -> AttachRaceError:
    return AttachRaceError(
        f"the XDP program on {_where(ifname, netns)} changed while floodguard was updating it "
        f"(it saw {seen}); nothing was changed: something else manages XDP on this interface "
        "(`ip link show` names it); stop it and run again"
    )


# --- public API ------------------------------------------------------------------


def xdp_state(iface: str | int, *, netns: str | None = None) -> XdpState:
    """The XDP program (and mode) attached to an interface, by name or index."""
    with _rtnl(netns) as ipr:
        index, ifname, msg = _resolve(ipr, iface, netns)
        return _state_of(index, ifname, msg)


def attach(
    ifname: str | int,
    prog_fd: int,
    mode: XdpMode = XdpMode.AUTO,
    *,
    force: bool = False,
    netns: str | None = None,
) -> AttachResult:
    """Attach prog_fd to ifname, or atomically replace what runs there.

    A running floodguard program (any version) is replaced in the mode it
    runs in; a foreign program only with ``force``. Switching modes cannot be
    atomic (the kernel refuses native and generic at once), so asking for an
    explicit mode other than the running one is an error: detach first.
    """
    try:
        info = sysbpf.prog_info(prog_fd)
    except BpfSyscallError as e:
        if e.errno in (errno_mod.EPERM, errno_mod.EACCES):
            raise MissingPrivilegeError("attach an XDP program") from e
        raise DatapathError(f"fd {prog_fd} is not a loaded BPF program ({e}): build the program first") from e
    if info.type != _BPF_PROG_TYPE_XDP:
        raise DatapathError(f"fd {prog_fd} is a BPF program of type {info.type}, not XDP")
    new_id = int(info.id)
    with _rtnl(netns) as ipr:
        index, name, msg = _resolve(ipr, ifname, netns)
        _check_ethernet(name, netns, msg)
        state = _state_of(index, name, msg)
        if not state.attached:
            return _attach_new(ipr, index, name, prog_fd, new_id, mode, netns)
        current = _open_current(state, netns)
        try:
            return _replace(ipr, state, current, prog_fd, new_id, mode, force, netns)
        finally:
            os.close(current.fd)


def _attach_new(
    ipr: Any, index: int, ifname: str, prog_fd: int, new_id: int, mode: XdpMode, netns: str | None
) -> AttachResult:
    fallback = None
    if mode in (XdpMode.NATIVE, XdpMode.AUTO):
        try:
            _set_xdp(ipr, index, prog_fd, XDP_FLAGS_UPDATE_IF_NOEXIST | XDP_FLAGS_DRV_MODE)
        except NetlinkError as e:
            if e.code in (errno_mod.EBUSY, errno_mod.EEXIST):
                raise _race(ifname, netns, "no program") from e
            no_native = e.code in (errno_mod.EOPNOTSUPP, errno_mod.EINVAL)
            if mode is XdpMode.NATIVE and no_native:
                raise InterfaceError(
                    f"the driver of {_where(ifname, netns)} cannot run XDP natively "
                    f"({os.strerror(e.code)}): use mode generic (or auto, which falls back to it)"
                ) from e
            if not (mode is XdpMode.AUTO and no_native):
                raise _netlink_error(e, "attach the XDP program", ifname, netns) from e
            fallback = (
                f"the driver of {ifname} has no native XDP ({os.strerror(e.code)}); "
                "running in generic mode, which is several times slower"
            )
            log.warning("xdp_native_unsupported", ifname=ifname, errno=e.code, mode="generic")
        else:
            log.info("xdp_attached", ifname=ifname, ifindex=index, mode="native", prog_id=new_id)
            return AttachResult(index, ifname, XdpMode.NATIVE, new_id)
    try:
        _set_xdp(ipr, index, prog_fd, XDP_FLAGS_UPDATE_IF_NOEXIST | XDP_FLAGS_SKB_MODE)
    except NetlinkError as e:
        if e.code in (errno_mod.EBUSY, errno_mod.EEXIST):
            raise _race(ifname, netns, "no program") from e
        raise _netlink_error(e, "attach the XDP program in generic mode", ifname, netns) from e
    log.info("xdp_attached", ifname=ifname, ifindex=index, mode="generic", prog_id=new_id)
    return AttachResult(index, ifname, XdpMode.GENERIC, new_id, fallback=fallback)


def _replace(
    ipr: Any,
    state: XdpState,
    current: _Current,
    prog_fd: int,
    new_id: int,
    mode: XdpMode,
    force: bool,
    netns: str | None,
) -> AttachResult:
    where = _where(state.ifname, netns)
    if current.name != PROGRAM_NAME and not force:
        raise ForeignProgramError(state.ifname, current.name, current.prog_id)
    running = XdpMode(current.mode)
    if mode is not XdpMode.AUTO and mode is not running:
        raise InterfaceError(
            f"{where} runs {current.name} (id {current.prog_id}) in {running.value} mode and "
            f"{mode.value} was asked for: the mode cannot change without a gap; keep "
            f"{running.value} (mode auto) or run `floodguard detach` first"
        )
    flags = XDP_FLAGS_REPLACE | _MODE_FLAGS[current.mode]
    try:
        _set_xdp(ipr, state.ifindex, prog_fd, flags, expected_fd=current.fd)
    except NetlinkError as e:
        if e.code == errno_mod.EEXIST:
            raise _race(state.ifname, netns, f"{current.name}, id {current.prog_id}") from e
        if e.code == errno_mod.EBUSY:
            raise InterfaceError(
                f"{where} holds {current.name} (id {current.prog_id}) through a BPF link, which "
                "netlink cannot replace (or it changed meanwhile): its owner must remove it "
                "(`xdp-loader unload` / `bpftool link detach`)"
            ) from e
        raise _netlink_error(e, "replace the XDP program", state.ifname, netns) from e
    log.info(
        "xdp_replaced",
        ifname=state.ifname,
        ifindex=state.ifindex,
        mode=running.value,
        prog_id=new_id,
        old_prog_id=current.prog_id,
        old_name=current.name,
        forced=current.name != PROGRAM_NAME,
    )
    return AttachResult(
        state.ifindex,
        state.ifname,
        running,
        new_id,
        replaced_prog_id=current.prog_id,
        replaced_name=current.name,
    )


class ForeignDetachError(ForeignProgramError):
    """detach found another tool's program and left it in place."""

    def __init__(self, ifname: str, prog_name: str, prog_id: int) -> None:
        super().__init__(ifname, prog_name, prog_id)
        self.args = (
            (f"{ifname} runs another XDP program ({prog_name or 'unnamed'}, id {prog_id}), not "
            f"floodguard's; it was left in place: remove it with `xdp-loader unload {ifname} --all` "
            "or detach with --force"),
        )


def detach(ifname: str | int, *, netns: str | None = None, only_floodguard: bool = True) -> DetachResult:
    """Remove floodguard's program from ifname; a no-op when nothing is attached.

    The removal names the program it expects, so a program swapped in after
    we looked is never removed (AttachRaceError instead); a foreign program
    is removed only with ``only_floodguard=False``.
    """
    with _rtnl(netns) as ipr:
        index, name, msg = _resolve(ipr, ifname, netns)
        state = _state_of(index, name, msg)
        if not state.attached:
            log.info("xdp_detach_nothing", ifname=name, ifindex=index)
            return DetachResult(index, name, detached=False)
        current = _open_current(state, netns)
        try:
            if only_floodguard and current.name != PROGRAM_NAME:
                raise ForeignDetachError(name, current.name, current.prog_id)
            flags = XDP_FLAGS_REPLACE | _MODE_FLAGS[current.mode]
            try:
                _set_xdp(ipr, index, -1, flags, expected_fd=current.fd)
            except NetlinkError as e:
                if e.code == errno_mod.EEXIST:
                    raise _race(name, netns, f"{current.name}, id {current.prog_id}") from e
                raise _netlink_error(e, "detach the XDP program", name, netns) from e
        finally:
            os.close(current.fd)
    log.info("xdp_detached", ifname=name, ifindex=index, prog_id=current.prog_id, prog_name=current.name)
    return DetachResult(
        index,
        name,
        detached=True,
        prog_id=current.prog_id,
        prog_name=current.name,
        mode=XdpMode(current.mode),
    )


__all__ = [
    "AttachRaceError",
    "AttachResult",
    "DetachResult",
    "ForeignDetachError",
    "XdpMode",
    "XdpState",
    "attach",
    "detach",
    "xdp_state",
]
