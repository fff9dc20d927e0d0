"""Each way building or attaching the program fails says what went wrong and what to do.

The verifier and compiler cases build deliberately broken programs from
tests/bpf/broken/ with the real BCC and the real kernel.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import NetNS, netns

from agent.datapath import loader
from agent.datapath.attach import attach, xdp_state
from agent.datapath.errors import (
    BpffsError,
    BuildError,
    MissingHeadersError,
    MissingPrivilegeError,
    UnknownInterfaceError,
    UnsupportedLinkError,
    VerifierError,
)
from agent.datapath.loader import BuildOptions

BROKEN = Path(__file__).with_name("broken")


@pytest.fixture
def pin_dir() -> Iterator[str]:
    """A pin directory on bpffs for builds that fail (removed whatever they left)."""
    path = f"/sys/fs/bpf/fgtest-{os.getpid()}-errors"
    loader.remove_pins(path)
    try:
        yield path
    finally:
        loader.remove_pins(path)


def broken(pin_dir: str, source: str, function: str) -> BuildOptions:
    return BuildOptions(pin_dir=pin_dir, source=str(BROKEN / source), function=function)


def test_pin_dir_not_on_bpffs(tmp_path: Path) -> None:
    pins = tmp_path / "pins"
    with pytest.raises(BpffsError) as err:
        loader.build(BuildOptions(pin_dir=str(pins)))
    msg = str(err.value)
    assert f"{pins} is not on a bpf filesystem" in msg
    assert "mount -t bpf bpf /sys/fs/bpf" in msg
    assert not pins.exists(), "nothing is created on a failed check"


def test_missing_kernel_headers_names_the_package(monkeypatch: pytest.MonkeyPatch, pin_dir: str) -> None:
    monkeypatch.setattr(platform, "release", lambda: "0.0.0-fgtest")
    with pytest.raises(MissingHeadersError) as err:
        loader.build(BuildOptions(pin_dir=pin_dir))
    assert err.value.release == "0.0.0-fgtest"
    msg = str(err.value)
    assert "no kernel headers for 0.0.0-fgtest" in msg
    assert "install linux-headers-0.0.0-fgtest" in msg
    assert "make setup" in msg


def test_header_clang_cannot_find_is_reported_as_missing_headers(pin_dir: str) -> None:
    with pytest.raises(MissingHeadersError) as err:
        loader.build(broken(pin_dir, "missing_header.c", "xdp_headers"))
    assert f"install linux-headers-{platform.release()}" in str(err.value)


def test_not_root(monkeypatch: pytest.MonkeyPatch, pin_dir: str) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(MissingPrivilegeError) as err:
        loader.build(BuildOptions(pin_dir=pin_dir))
    assert str(err.value) == (
        "cannot load an XDP program: run as root (needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)"
    )


def test_verifier_rejection_carries_the_tail_of_the_log(pin_dir: str) -> None:
    with pytest.raises(VerifierError) as err:
        loader.build(broken(pin_dir, "verifier_oob.c", "xdp_oob"))
    e = err.value
    assert e.program == "xdp_oob"
    msg = str(e)
    assert msg.startswith("the kernel rejected xdp_oob (")
    assert "Last lines of the verifier log:" in msg and "report it with this log" in msg
    # The verifier's own reason, and the log's last line, reach the operator.
    assert "invalid access to packet, off=100" in msg
    assert e.log.strip().splitlines()[-1] in msg
    assert "processed 2 insns" in msg


def test_compile_error_carries_clangs_message(pin_dir: str) -> None:
    with pytest.raises(BuildError) as err:
        loader.build(broken(pin_dir, "compile_error.c", "xdp_broken"))
    assert not isinstance(err.value, MissingHeadersError)
    msg = str(err.value)
    assert "BCC could not compile" in msg and "compile_error.c" in msg
    assert "error: use of undeclared identifier 'fg_no_such_identifier'" in msg


def test_a_warning_fails_the_build(pin_dir: str) -> None:
    """-Wall -Werror: a warning in the program is an error, with clang's words."""
    with pytest.raises(BuildError) as err:
        loader.build(broken(pin_dir, "warning.c", "xdp_warns"))
    msg = str(err.value)
    assert "BCC could not compile" in msg and "warning.c" in msg
    assert "error: unused variable 'fg_unused' [-Werror,-Wunused-variable]" in msg


def test_unknown_interface(program: loader.Program) -> None:
    with pytest.raises(UnknownInterfaceError) as err:
        attach("fgnosuch0", program.fd)
    assert err.value.name == "fgnosuch0"
    assert str(err.value) == (
        "no interface named 'fgnosuch0': check `interfaces` in the policy (`ip link` lists them)"
    )
    with pytest.raises(UnknownInterfaceError):
        xdp_state("fgnosuch0")


@pytest.fixture
def tun_netns() -> Iterator[str]:
    """A throwaway network namespace holding a tun device (fgtun0, ARPHRD_NONE) and lo."""
    name = f"fgtest-{os.getpid()}-tun"
    netns.create(name)
    try:
        with NetNS(name) as ns:
            ns.link("add", ifname="fgtun0", kind="tuntap", mode="tun")
        yield name
    finally:
        netns.remove(name)


@pytest.mark.parametrize(("ifname", "kind"), [("fgtun0", "no link-layer header: tun, WireGuard"), ("lo", "loopback")])
def test_a_link_without_ethernet_frames_is_refused(program: loader.Program, tun_netns: str, ifname: str,
                                                   kind: str) -> None:
    # The parser reads every frame as Ethernet; on a tun, WireGuard or
    # PPP device it would read IP headers as MAC addresses and filter nothing.
    with pytest.raises(UnsupportedLinkError) as err:
        attach(ifname, program.fd, netns=tun_netns)
    msg = str(err.value)
    assert f"{ifname} (network namespace {tun_netns}) is not an Ethernet link ({kind}, ARPHRD" in msg
    assert "Attach floodguard to the Ethernet interface" in msg and "remove it from `interfaces`" in msg
    assert not xdp_state(ifname, netns=tun_netns).attached, "nothing was attached"
