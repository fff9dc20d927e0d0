"""agent/datapath/pins.py against real pins: the size check, and the entries read out of
pins to migrate (the operator's and the automatic ones; the policy's come from the policy).

The end-to-end migration (old program attached, new one replacing it, its pins
removed) is tests/integration/test_daemon.py's upgrade test.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

from harness import TEST_CAPACITY, Harness, eth, now_ns
from scapy.layers.inet import IP, UDP
from structlog.testing import capture_logs

from agent.contract import abi
from agent.contract.keys import prefix_key
from agent.datapath import loader, pins

NS = 1_000_000_000


def test_pins_fit_their_own_capacity_only(program: loader.Program) -> None:
    d = Path(program.pin_dir)
    assert pins.fits(d, TEST_CAPACITY)
    for name, size in (("sources", 8192), ("groups", 32), ("verified", 2048), ("prefixes", 8191)):
        other = dataclasses.replace(TEST_CAPACITY, **{name: size})
        assert not pins.fits(d, other), name


def test_entries_are_read_back_as_the_table_holds_them(h: Harness, program: loader.Program) -> None:
    now = now_ns()
    h.ban("192.0.2.7/32", abi.Origin.OPERATOR, expires=now + 600 * NS)
    h.ban("2001:db8:1::/48", abi.Origin.AUTO, expires=now + 60 * NS, monitor=True)
    h.allow("203.0.113.0/24", abi.Origin.OPERATOR)
    h.ban("198.51.100.0/24", abi.Origin.POLICY)
    h.allow("10.0.0.0/8", abi.Origin.POLICY)

    got = pins.read_entries(Path(program.pin_dir))
    table = h.port.addresses
    want = [r for r in table.records() if r[2] != abi.Origin.POLICY]
    assert sorted(got) == sorted(want)
    assert {(k, kind, o) for k, kind, o, _ in got} == {
        (prefix_key(ipaddress.ip_network("192.0.2.7/32")), abi.SRC_BAN, abi.Origin.OPERATOR),
        (prefix_key(ipaddress.ip_network("2001:db8:1::/48")), abi.SRC_BAN, abi.Origin.AUTO),
        (prefix_key(ipaddress.ip_network("203.0.113.0/24")), abi.SRC_ALLOW, abi.Origin.OPERATOR),
    }
    # Reading opened the pins on their own: the running table is untouched and still right.
    assert table.get_record(prefix_key(ipaddress.ip_network("192.0.2.7/32")), abi.SRC_BAN,
                            abi.Origin.OPERATOR) is not None
    packet = eth() / IP(src="192.0.2.7", dst="203.0.113.1") / UDP(sport=1, dport=2)
    assert h.run_raw(bytes(packet)).retval == abi.XDP_DROP


def test_a_directory_without_address_maps_gives_nothing(tmp_path: Path) -> None:
    assert pins.read_entries(tmp_path) == []
    assert pins.remove_all(str(tmp_path / "none")) == []


def test_pins_it_cannot_read_are_logged_and_left_to_the_state_file(tmp_path: Path) -> None:
    (tmp_path / "src_entries").write_text("not a map")
    with capture_logs() as logs:
        assert pins.read_entries(tmp_path) == []
    (ev,) = [e for e in logs if e["event"] == "migration_unknown_layout"]
    assert ev["pin_dir"] == str(tmp_path) and "state file" in ev["action"]
