"""agent/daemon/supervisor.py: what start refuses before touching anything, and what a save keeps."""

from __future__ import annotations

import fcntl
import os
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from agent.contract import abi
from agent.daemon import StartupError
from agent.daemon.parts import Parts
from agent.daemon.state import Reasons
from agent.daemon.supervisor import Supervisor
from agent.datapath import pins


def test_a_second_agent_refuses_to_start_before_touching_socket_or_pins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A second `floodguard run` used to unlink the live agent's socket and share its pins.
    sock = tmp_path / "run" / "control.sock"
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"interfaces: [lo]\ncontrol: {{socket: {sock}, group: null}}\nstate_dir: {tmp_path / 'state'}\n")
    sock.parent.mkdir()
    held = os.open(sock.parent / "floodguard.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)  # the running agent
    os.write(held, b"4242\n")

    def reached(*_a: Any, **_kw: Any) -> None:
        raise AssertionError("the second agent went on to the pins")

    monkeypatch.setattr(pins, "prepare", reached)
    try:
        with pytest.raises(StartupError, match=r"already running \(pid 4242 holds .*floodguard.lock\)"):
            Supervisor(policy, pin_root=str(tmp_path / "bpf")).start()
    finally:
        os.close(held)


def test_a_second_agent_on_the_same_pin_root_refuses_even_with_its_own_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = tmp_path / "second" / "control.sock"
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"interfaces: [lo]\ncontrol: {{socket: {sock}, group: null}}\nstate_dir: {tmp_path / 'state'}\n")
    pin_root = tmp_path / "bpf"
    pin_root.mkdir()
    held = os.open(pin_root, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(held, fcntl.LOCK_EX)  # the first agent, which has another socket

    def reached(*_a: Any, **_kw: Any) -> None:
        raise AssertionError("the second agent went on to the pins")

    monkeypatch.setattr(pins, "prepare", reached)
    before = signal.getsignal(signal.SIGHUP)
    try:
        with pytest.raises(StartupError, match=f"another floodguard uses the pins under {pin_root}"):
            Supervisor(policy, pin_root=str(pin_root)).start()
    finally:
        os.close(held)
    assert signal.getsignal(signal.SIGHUP) is before  # a failed start gives the signals back


def test_a_save_drops_reason_texts_no_record_refers_to(tmp_path: Path) -> None:
    # Every automatic ban has a text of its own: kept for ever, they piled up in memory and on disk.
    records = [((4, 1, 32), abi.SRC_BAN, abi.Origin.OPERATOR, (0, 0, abi.SRC_BAN, 2))]
    reasons = Reasons({1: "auto: an attack long over", 2: "scanner", 3: "another"})
    sup = Supervisor(tmp_path / "policy.yaml")
    sup.parts = cast(Parts, SimpleNamespace(
        port=SimpleNamespace(addresses=SimpleNamespace(records=lambda: iter(records))),
        reasons=reasons, runtime=SimpleNamespace(compiled=None)))
    capture = sup._capture()
    assert reasons.texts == {2: "scanner"} and capture.reasons == {2: "scanner"}
    assert reasons.id_of("scanner") == 2


def test_a_pin_root_that_cannot_be_a_directory_is_one_sentence(tmp_path: Path) -> None:
    sock = tmp_path / "run" / "control.sock"
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"interfaces: [lo]\ncontrol: {{socket: {sock}, group: null}}\nstate_dir: {tmp_path / 'state'}\n")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StartupError, match=r"cannot use the pin root .*a-file/bpf: Not a directory; it must be"):
        Supervisor(policy, pin_root=str(tmp_path / "a-file" / "bpf")).start()
