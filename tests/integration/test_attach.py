"""agent/datapath/attach.py against the real kernel: veth pairs in namespaces.

Two builds of the program share one pin directory (and so their maps), as a
restart or an upgrade does; a tiny foreign program (foreign_xdp.c) stands in
for another tool's XDP program.
"""

from __future__ import annotations

import ctypes as ct
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bcc import BPF
from pyroute2 import IPRoute
from wire import Sent, Track, Traffic, ban, build_program

from agent.contract import abi
from agent.datapath import attach as attach_mod
from agent.datapath import bpfsys as sysbpf
from agent.datapath.attach import (
    XDP_FLAGS_DRV_MODE,
    XDP_FLAGS_REPLACE,
    XDP_FLAGS_SKB_MODE,
    XDP_FLAGS_UPDATE_IF_NOEXIST,
    AttachRaceError,
    XdpMode,
    attach,
    detach,
    xdp_state,
)
from agent.datapath.errors import (
    ForeignProgramError,
    InterfaceError,
    MissingPrivilegeError,
    UnknownInterfaceError,
)
from agent.datapath.loader import Program
from agent.datapath.mapport import MapPort
from agent.datapath.maps import Maps
from agent.lab.topology import VethPair

BANNED = "192.0.2.66"
LEGIT = "192.0.2.1"
SLOT = 2
REPLACEMENTS = 20


@pytest.fixture(scope="module")
def fg_program_b(fg_pin_dir: str, fg_program: Program) -> Iterator[Program]:
    """A second build in the same pin directory: a new program on the same maps."""
    prog = build_program(fg_pin_dir)
    try:
        yield prog
    finally:
        prog.close()


@pytest.fixture(scope="module")
def foreign_fd() -> Iterator[int]:
    """Another tool's XDP program (name xdp_foreign), loaded with BCC."""
    bpf = BPF(src_file=str(Path(__file__).with_name("foreign_xdp.c")).encode())
    try:
        yield int(bpf.load_func(b"xdp_foreign", BPF.XDP).fd)
    finally:
        bpf.cleanup()


def prog_id(fd: int) -> int:
    return int(sysbpf.prog_info(fd).id)


def raw_set(ns: str, ifindex: int, fd: int, flags: int, expected_fd: int | None = None) -> None:
    """What another tool does: one netlink call, not through floodguard."""
    attrs: list[tuple[str, int]] = [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", flags)]
    if expected_fd is not None:
        attrs.append(("IFLA_XDP_EXPECTED_FD", expected_fd))
    with IPRoute(netns=ns, flags=0) as ipr:
        ipr.link("set", index=ifindex, xdp={"attrs": attrs})


def add_bridge(pair: VethPair, name: str) -> str:
    """A bridge in the target namespace: a device whose driver has no native XDP."""
    ifname = pair.topology.ifname(name)
    with pair.topology.iproute(pair.target.ns) as ipr:
        ipr.link("add", ifname=ifname, kind="bridge")
    return ifname


# --- attach, state, replace ------------------------------------------------------


def test_attach_native_then_state_shows_native_and_our_program(
    veth_pair: VethPair, fg_program: Program, detach_after: Track
) -> None:
    t = veth_pair.target
    detach_after(t.ifname, t.ns)
    assert xdp_state(t.ifname, netns=t.ns).mode_attached == "none"

    result = attach(t.ifname, fg_program.fd, XdpMode.NATIVE, netns=t.ns)

    assert (result.ifindex, result.ifname, result.mode) == (t.ifindex, t.ifname, XdpMode.NATIVE)
    assert (result.prog_id, result.replaced_prog_id, result.fallback) == (fg_program.id, None, None)
    state = xdp_state(t.ifname, netns=t.ns)
    assert (state.ifindex, state.mode_attached, state.prog_id) == (t.ifindex, "native", fg_program.id)
    # By index as well as by name.
    assert xdp_state(t.ifindex, netns=t.ns) == state
    # Attaching the running program again (a restart that reuses it) changes nothing.
    again = attach(t.ifname, fg_program.fd, netns=t.ns)
    assert (again.mode, again.prog_id, again.replaced_prog_id) == (
        XdpMode.NATIVE,
        fg_program.id,
        fg_program.id,
    )
    assert xdp_state(t.ifname, netns=t.ns) == state


def test_auto_picks_native_on_veth(veth_pair: VethPair, fg_program: Program, detach_after: Track) -> None:
    t = veth_pair.target
    detach_after(t.ifname, t.ns)
    result = attach(t.ifname, fg_program.fd, netns=t.ns)
    assert (result.mode, result.fallback) == (XdpMode.NATIVE, None)
    assert xdp_state(t.ifname, netns=t.ns).mode_attached == "native"


@pytest.mark.parametrize("mode", [XdpMode.NATIVE, XdpMode.GENERIC])
def test_replace_changes_program_keeps_mode(
    mode: XdpMode, veth_pair: VethPair, fg_program: Program, fg_program_b: Program, detach_after: Track
) -> None:
    t = veth_pair.target
    detach_after(t.ifname, t.ns)
    attach(t.ifname, fg_program.fd, mode, netns=t.ns)

    # AUTO on a running program means "the mode it runs in".
    result = attach(t.ifname, fg_program_b.fd, XdpMode.AUTO, netns=t.ns)

    assert fg_program_b.id != fg_program.id
    assert (result.mode, result.prog_id) == (mode, fg_program_b.id)
    assert (result.replaced_prog_id, result.replaced_name) == (fg_program.id, "xdp_floodguard")
    state = xdp_state(t.ifname, netns=t.ns)
    assert (state.mode_attached, state.prog_id) == (mode.value, fg_program_b.id)
    # Same pin directory: the second build runs on the first one's pinned maps
    # (bans, counters); only per-instance maps (scratch, sample ring) are its own.
    with Maps.from_pins(fg_program.pin_dir) as pinned:
        pinned_ids = {t.map_id for t in pinned.tables.values()}
        stats_id = pinned["stats"].map_id
    uses_a = set(sysbpf.prog_map_ids(fg_program.fd)) & pinned_ids
    uses_b = set(sysbpf.prog_map_ids(fg_program_b.fd)) & pinned_ids
    assert uses_a == uses_b
    assert stats_id in uses_b


def test_replace_in_another_mode_is_refused_and_leaves_the_program(
    veth_pair: VethPair, fg_program: Program, fg_program_b: Program, detach_after: Track
) -> None:
    t = veth_pair.target
    detach_after(t.ifname, t.ns)
    attach(t.ifname, fg_program.fd, XdpMode.GENERIC, netns=t.ns)

    with pytest.raises(InterfaceError) as err:
        attach(t.ifname, fg_program_b.fd, XdpMode.NATIVE, netns=t.ns)

    msg = str(err.value)
    assert "generic mode and native was asked for" in msg
    assert "floodguard detach" in msg
    state = xdp_state(t.ifname, netns=t.ns)
    assert (state.mode_attached, state.prog_id) == ("generic", fg_program.id)


# --- no gap while replacing ------------------------------------------------------


def test_replacing_repeatedly_under_traffic_never_lets_a_banned_packet_through(
    veth_pair: VethPair,
    traffic: Traffic,
    fg_program: Program,
    fg_program_b: Program,
    fg_port: MapPort,
    detach_after: Track,
) -> None:
    t = veth_pair.target
    traffic.add_source(BANNED)
    fg_port.set_ifslot(t.ifindex, SLOT)
    ban(fg_port, f"{BANNED}/32")
    detach_after(t.ifname, t.ns)
    attach(t.ifname, fg_program.fd, XdpMode.NATIVE, netns=t.ns)
    before = fg_port.read_stats()[SLOT]

    rx = traffic.listen(socket.AF_INET)
    link_before = veth_pair.topology.link_stats(t.ns, t.ifname)
    banned_tx, legit_tx = traffic.sender(BANNED), traffic.sender(LEGIT)
    banned, legit = Sent(), Sent()
    got: Counter[str] = Counter()
    stop = threading.Event()
    failures: list[BaseException] = []

    def send() -> None:
        try:
            while not stop.is_set():
                traffic.send(banned_tx, 1, banned)
                traffic.send(legit_tx, 1, legit)
        except BaseException as e:  # noqa: BLE001 — kept and re-raised in the test's thread
            failures.append(e)

    def receive() -> None:
        try:
            traffic.drain(rx, got, until=lambda: stop.is_set() and got[LEGIT] >= legit.packets, timeout=30)
        except BaseException as e:  # noqa: BLE001 — kept and re-raised in the test's thread
            failures.append(e)

    threads = [threading.Thread(target=send), threading.Thread(target=receive)]
    for th in threads:
        th.start()
    results = []
    try:
        programs = [fg_program_b, fg_program]
        for i in range(REPLACEMENTS):
            mark = banned.packets
            while banned.packets < mark + 20 and not failures:  # traffic flows before each swap
                time.sleep(0.001)
            results.append(attach(t.ifname, programs[i % 2].fd, XdpMode.AUTO, netns=t.ns))
        mark = banned.packets
        while banned.packets < mark + 20 and not failures:
            time.sleep(0.001)
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=60)
    assert not failures, failures

    # Each swap replaced exactly the program the previous one attached, in native mode.
    ids = [fg_program.id] + [r.prog_id for r in results]
    assert [r.replaced_prog_id for r in results] == ids[:-1]
    assert {r.mode for r in results} == {XdpMode.NATIVE}
    assert banned.packets >= 20 * (REPLACEMENTS + 1)

    assert got[BANNED] == 0, f"{got[BANNED]} of {banned.packets} banned datagrams reached the socket"
    assert got[LEGIT] == legit.packets
    cls = abi.TrafficClass.UDP
    deadline = time.monotonic() + 3
    while True:
        delta = fg_port.read_stats()[SLOT] - before
        if int(delta[abi.Reason.BANNED, cls, 0, 0]) >= banned.packets or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    # Every banned datagram was seen and dropped by one program or the other.
    assert int(delta[abi.Reason.BANNED, cls, 0, 0]) == banned.packets
    assert int(delta[abi.Reason.BANNED, cls, 0, 1]) == banned.bytes
    assert int(delta[abi.Reason.PASSED, cls, 0, 0]) == legit.packets
    assert int(delta[..., 0].sum()) == banned.packets + legit.packets
    # ... and every frame that reached the interface went through a program.
    link_after = veth_pair.topology.link_stats(t.ns, t.ifname)
    assert link_after.rx_packets - link_before.rx_packets == banned.packets + legit.packets


def test_generic_mode_drops_banned_and_passes_others(
    veth_pair: VethPair, traffic: Traffic, fg_program: Program, fg_port: MapPort, detach_after: Track
) -> None:
    t = veth_pair.target
    traffic.add_source(BANNED)
    fg_port.set_ifslot(t.ifindex, SLOT)
    ban(fg_port, f"{BANNED}/32")
    detach_after(t.ifname, t.ns)
    result = attach(t.ifname, fg_program.fd, XdpMode.GENERIC, netns=t.ns)
    assert result.mode is XdpMode.GENERIC
    assert xdp_state(t.ifname, netns=t.ns).mode_attached == "generic"
    before = fg_port.read_stats()[SLOT]

    rx = traffic.listen(socket.AF_INET)
    banned = traffic.send(traffic.sender(BANNED), 50)
    legit = traffic.send(traffic.sender(LEGIT), 50)
    got: Counter[str] = Counter()
    traffic.drain(rx, got, until=lambda: got[LEGIT] >= legit.packets, timeout=3)

    assert (got[BANNED], got[LEGIT]) == (0, legit.packets)
    # Generic XDP runs in the sender's transmit path: counted by the time sendto returns.
    delta = fg_port.read_stats()[SLOT] - before
    cls = abi.TrafficClass.UDP
    assert int(delta[abi.Reason.BANNED, cls, 0, 0]) == banned.packets
    assert int(delta[abi.Reason.PASSED, cls, 0, 0]) == legit.packets


def test_auto_falls_back_to_generic_without_native_support(
    veth_pair: VethPair, fg_program: Program, detach_after: Track
) -> None:
    ns = veth_pair.target.ns
    bridge = add_bridge(veth_pair, "br0")
    detach_after(bridge, ns)

    with pytest.raises(InterfaceError) as err:
        attach(bridge, fg_program.fd, XdpMode.NATIVE, netns=ns)
    assert "cannot run XDP natively" in str(err.value)
    assert "use mode generic" in str(err.value)
    assert xdp_state(bridge, netns=ns).mode_attached == "none"

    result = attach(bridge, fg_program.fd, XdpMode.AUTO, netns=ns)

    assert result.mode is XdpMode.GENERIC
    assert result.fallback is not None and "no native XDP" in result.fallback
    assert "generic mode" in result.fallback
    state = xdp_state(bridge, netns=ns)
    assert (state.mode_attached, state.prog_id) == ("generic", fg_program.id)


# --- foreign programs ------------------------------------------------------------


def test_foreign_program_is_refused_and_untouched_then_replaced_with_force(
    veth_pair: VethPair, fg_program: Program, foreign_fd: int, detach_after: Track
) -> None:
    t = veth_pair.target
    detach_after(t.ifname, t.ns)
    raw_set(t.ns, t.ifindex, foreign_fd, XDP_FLAGS_UPDATE_IF_NOEXIST | XDP_FLAGS_DRV_MODE)
    foreign_id = prog_id(foreign_fd)

    with pytest.raises(ForeignProgramError) as err:
        attach(t.ifname, fg_program.fd, netns=t.ns)

    assert (err.value.prog_name, err.value.prog_id) == ("xdp_foreign", foreign_id)
    msg = str(err.value)
    assert f"xdp_foreign, id {foreign_id}" in msg
    assert "--force" in msg and "xdp-loader unload" in msg
    state = xdp_state(t.ifname, netns=t.ns)
    assert (state.mode_attached, state.prog_id) == ("native", foreign_id)

    result = attach(t.ifname, fg_program.fd, netns=t.ns, force=True)

    assert (result.replaced_prog_id, result.replaced_name) == (foreign_id, "xdp_foreign")
    assert (result.mode, result.prog_id) == (XdpMode.NATIVE, fg_program.id)
    assert xdp_state(t.ifname, netns=t.ns).prog_id == fg_program.id


def test_detach_removes_only_ours(
    veth_pair: VethPair, fg_program: Program, foreign_fd: int, detach_after: Track
) -> None:
    t = veth_pair.target
    detach_after(t.ifname, t.ns)
    attach(t.ifname, fg_program.fd, XdpMode.GENERIC, netns=t.ns)

    gone = detach(t.ifname, netns=t.ns)

    assert (gone.detached, gone.prog_id, gone.prog_name, gone.mode) == (
        True,
        fg_program.id,
        "xdp_floodguard",
        XdpMode.GENERIC,
    )
    assert xdp_state(t.ifname, netns=t.ns).mode_attached == "none"
    again = detach(t.ifname, netns=t.ns)
    assert (again.detached, again.prog_id) == (False, None)

    raw_set(t.ns, t.ifindex, foreign_fd, XDP_FLAGS_UPDATE_IF_NOEXIST | XDP_FLAGS_DRV_MODE)
    with pytest.raises(ForeignProgramError) as err:
        detach(t.ifname, netns=t.ns)
    assert "left in place" in str(err.value) and "--force" in str(err.value)
    assert xdp_state(t.ifname, netns=t.ns).prog_id == prog_id(foreign_fd)

    forced = detach(t.ifname, netns=t.ns, only_floodguard=False)
    assert (forced.detached, forced.prog_name) == (True, "xdp_foreign")
    assert xdp_state(t.ifname, netns=t.ns).mode_attached == "none"


# --- races: someone else changes the interface while we work ----------------------


def swap_behind_our_back(monkeypatch: pytest.MonkeyPatch, name: str, action: Callable[[], None]) -> None:
    """Run `action` once, right after attach.py's step `name` first returns (the race window)."""
    original = getattr(attach_mod, name)
    pending = [action]

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        while pending:
            pending.pop()()
        return out

    monkeypatch.setattr(attach_mod, name, wrapped)


def test_replace_fails_when_the_program_changed_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
    veth_pair: VethPair,
    fg_program: Program,
    fg_program_b: Program,
    foreign_fd: int,
    detach_after: Track,
) -> None:
    t = veth_pair.target
    detach_after(t.ifname, t.ns)
    attach(t.ifname, fg_program.fd, netns=t.ns)
    # After attach.py opened the program it saw, another tool swaps in its own.
    swap_behind_our_back(
        monkeypatch,
        "_open_current",
        lambda: raw_set(
            t.ns, t.ifindex, foreign_fd, XDP_FLAGS_REPLACE | XDP_FLAGS_DRV_MODE, expected_fd=fg_program.fd
        ),
    )

    with pytest.raises(AttachRaceError) as err:
        attach(t.ifname, fg_program_b.fd, netns=t.ns)

    assert "changed while floodguard was updating it" in str(err.value)
    assert "nothing was changed" in str(err.value)
    assert xdp_state(t.ifname, netns=t.ns).prog_id == prog_id(foreign_fd)


def test_detach_never_removes_a_program_swapped_in_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
    veth_pair: VethPair,
    fg_program: Program,
    fg_program_b: Program,
    detach_after: Track,
) -> None:
    t = veth_pair.target
    detach_after(t.ifname, t.ns)
    attach(t.ifname, fg_program.fd, XdpMode.GENERIC, netns=t.ns)
    swap_behind_our_back(
        monkeypatch,
        "_open_current",
        lambda: raw_set(
            t.ns,
            t.ifindex,
            fg_program_b.fd,
            XDP_FLAGS_REPLACE | XDP_FLAGS_SKB_MODE,
            expected_fd=fg_program.fd,
        ),
    )

    with pytest.raises(AttachRaceError):
        detach(t.ifname, netns=t.ns)

    assert xdp_state(t.ifname, netns=t.ns).prog_id == fg_program_b.id


def test_attach_fails_when_someone_attached_first(
    monkeypatch: pytest.MonkeyPatch,
    veth_pair: VethPair,
    fg_program: Program,
    foreign_fd: int,
    detach_after: Track,
) -> None:
    t = veth_pair.target
    detach_after(t.ifname, t.ns)
    # attach.py saw an empty interface; another tool attaches before it does.
    swap_behind_our_back(
        monkeypatch,
        "_state_of",
        lambda: raw_set(t.ns, t.ifindex, foreign_fd, XDP_FLAGS_UPDATE_IF_NOEXIST | XDP_FLAGS_DRV_MODE),
    )

    with pytest.raises(AttachRaceError) as err:
        attach(t.ifname, fg_program.fd, netns=t.ns)

    assert "it saw no program" in str(err.value)
    assert xdp_state(t.ifname, netns=t.ns).prog_id == prog_id(foreign_fd)


def test_interface_vanishing_midway_is_reported(
    monkeypatch: pytest.MonkeyPatch, veth_pair: VethPair, fg_program: Program
) -> None:
    ns = veth_pair.target.ns
    bridge = add_bridge(veth_pair, "br1")

    def delete() -> None:
        with veth_pair.topology.iproute(ns) as ipr:
            ipr.link("del", ifname=bridge)

    swap_behind_our_back(monkeypatch, "_resolve", delete)

    with pytest.raises(InterfaceError) as err:
        attach(bridge, fg_program.fd, XdpMode.GENERIC, netns=ns)

    assert not isinstance(err.value, UnknownInterfaceError)
    assert f"{bridge} (network namespace {ns}) disappeared" in str(err.value)
    assert "check that the interface exists" in str(err.value)


# --- clear errors ------------------------------------------------------------------


def test_unknown_interface_namespace_or_index(veth_pair: VethPair, fg_program: Program) -> None:
    ns = veth_pair.target.ns
    with pytest.raises(UnknownInterfaceError) as err:
        attach("fgnosuch0", fg_program.fd, netns=ns)
    assert "no interface named 'fgnosuch0'" in str(err.value)
    assert "`ip link` lists them" in str(err.value)

    with pytest.raises(UnknownInterfaceError) as err:
        xdp_state(4000, netns=ns)
    assert "with index 4000" in str(err.value)

    with pytest.raises(UnknownInterfaceError):
        detach("fgnosuch0", netns=ns)

    with pytest.raises(InterfaceError) as err2:
        attach(veth_pair.target.ifname, fg_program.fd, netns="fg-no-such-namespace")
    assert "network namespace 'fg-no-such-namespace' does not exist" in str(err2.value)
    assert not os.path.exists("/run/netns/fg-no-such-namespace"), "looking must not create it"


_CAP_NET_ADMIN = 12
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ct.Structure):
    _fields_ = [("version", ct.c_uint32), ("pid", ct.c_int)]


class _CapData(ct.Structure):
    _fields_ = [("effective", ct.c_uint32), ("permitted", ct.c_uint32), ("inheritable", ct.c_uint32)]


def _drop_capability(cap: int) -> None:
    libc = ct.CDLL(None, use_errno=True)
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capget(ct.byref(hdr), data) != 0:
        raise OSError(ct.get_errno(), "capget")
    data[cap // 32].effective &= ~(1 << (cap % 32))
    if libc.capset(ct.byref(hdr), data) != 0:
        raise OSError(ct.get_errno(), "capset")


def _attach_result(fn: Callable[[], object]) -> tuple[str, str]:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 — any failure of the probe is the test's result
        return type(e).__name__, str(e)
    return "", "no error"


def test_missing_privilege_says_run_as_root(veth_pair: VethPair, fg_program: Program) -> None:
    t = veth_pair.target

    def without_net_admin() -> tuple[str, str]:
        # Runs in a forked child already inside the target namespace.
        _drop_capability(_CAP_NET_ADMIN)
        return _attach_result(lambda: attach(t.ifname, fg_program.fd, XdpMode.NATIVE))

    def as_nobody() -> tuple[str, str]:
        os.setresuid(65534, 65534, 65534)  # every capability goes with uid 0
        return _attach_result(lambda: attach(t.ifname, fg_program.fd, XdpMode.NATIVE))

    kind, msg = veth_pair.topology.call_in_child(t.ns, without_net_admin)
    assert kind == MissingPrivilegeError.__name__, msg
    assert f"cannot attach the XDP program on {t.ifname}: run as root" in msg

    kind, msg = veth_pair.topology.call_in_child(t.ns, as_nobody)
    assert kind == MissingPrivilegeError.__name__, msg
    assert "cannot attach " in msg and ": run as root" in msg
    assert xdp_state(t.ifname, netns=t.ns).mode_attached == "none"
