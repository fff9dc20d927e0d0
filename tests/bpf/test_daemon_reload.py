"""Policy reloads against the real program: 20 of them — valid, broken,
deleted, renamed over, needing a restart — while a banned source sends
continuously. Not one of its packets may pass, and an operator ban made
before the reloads must still be in force after them.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from pathlib import Path

import pytest
from harness import Harness, now_ns
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from agent.contract import abi
from agent.contract.keys import prefix_key
from agent.daemon.reload import PolicyRuntime
from agent.datapath import bpfsys as sysbpf
from agent.policy.watch import PolicyWatcher

CAPACITY = """
capacity:
  prefixes: 4095
  hosts4: 65536
  prefixes6: 1024
  groups: 16
  sources: 4096
  sources6: 1024
  destinations: 1024
  verified: 1024
"""

BASE = """
interfaces: [eth0]
deny:
  prefixes:
    - {prefix: 198.51.100.0/24, reason: "known flooder"}
    - EXTRA
protect:
  - name: web
    prefixes: [203.0.113.0/24]
    limits: {udp: {pps: LIMIT}}
""" + CAPACITY


def policy_text(extra: str = "192.0.2.128/25", limit: str = "1k") -> str:
    return BASE.replace("EXTRA", extra).replace("LIMIT", limit)


def packet(src: str) -> bytes:
    return bytes(
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src=src, dst="203.0.113.10")
        / UDP(sport=1234, dport=53)
        / Raw(b"x" * 40)
    )


class Flood(threading.Thread):
    """Sends the banned source's packet through the program until stopped."""

    def __init__(self, prog_fd: int, pkt: bytes) -> None:
        super().__init__(daemon=True)
        self.prog_fd, self.pkt = prog_fd, pkt
        self.sent = self.passed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            res = sysbpf.prog_test_run(self.prog_fd, self.pkt)
            self.sent += 1
            if res.retval != abi.XDP_DROP:
                self.passed += 1


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.rename(tmp, path)


def test_twenty_reloads_while_a_banned_source_floods(h: Harness, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text())
    (tmp_path / "conf.d").mkdir()
    runtime = PolicyRuntime(policy, h.port)
    assert runtime.reload("start").ok

    # An operator ban made before any reload.
    op = prefix_key(ipaddress.ip_network("192.0.2.99/32"))
    h.port.addresses.set_record(op, abi.SRC_BAN, abi.Origin.OPERATOR, (0, now_ns(), abi.SRC_BAN, 7))
    h.port.addresses.commit(now_ns())

    flood = Flood(h.prog_fd, packet("198.51.100.7"))
    flood.start()
    watcher = PolicyWatcher(runtime.files, runtime.include_globs, debounce=0.05, max_delay=1.0)
    outcomes: list[tuple[str, bool]] = []

    def step(name: str, change: object, expect_ok: bool) -> None:
        assert callable(change)
        change()
        deadline = time.monotonic() + 5.0
        while not watcher.poll(timeout=0.2):
            assert time.monotonic() < deadline, f"{name}: the watcher saw no change"
        result = runtime.reload(name)
        watcher.update(runtime.files, runtime.include_globs)
        outcomes.append((name, result.ok))
        assert result.ok == expect_ok, (name, result.errors)
        # Between every two reloads, the banned source is still dropped.
        assert h.run_raw(packet("198.51.100.9")).retval == abi.XDP_DROP, name

    include_line = 'include: ["conf.d/*.yaml"]\n'
    try:
        step("valid: another deny prefix", lambda: policy.write_text(policy_text("192.0.2.0/26")), True)
        step("broken: YAML syntax", lambda: policy.write_text(policy_text() + "\n  bad: [\n"), False)
        step("fixed again", lambda: policy.write_text(policy_text()), True)
        step("broken: unknown key", lambda: policy.write_text(policy_text().replace("prefixes:", "prefixs:", 1)),
             False)
        step("deleted", policy.unlink, False)
        step("restored by rename", lambda: write_atomically(policy, policy_text()), True)
        step("renamed over, new limit", lambda: write_atomically(policy, policy_text(limit="2k")), True)
        step("broken: host bits", lambda: write_atomically(policy, policy_text("192.0.2.1/24")), False)
        step("renamed over, valid", lambda: write_atomically(policy, policy_text("192.0.2.64/26")), True)
        step("capacity change needs a restart",
             lambda: policy.write_text(policy_text().replace("sources: 4096", "sources: 8192")), False)
        step("back", lambda: policy.write_text(policy_text()), True)
        step("include added", lambda: policy.write_text(include_line + policy_text()), True)
        step("included file appears",
             lambda: write_atomically(tmp_path / "conf.d" / "extra.yaml",
                                      "deny:\n  prefixes: [100.64.0.0/10]\n"), True)
        step("included file broken",
             lambda: (tmp_path / "conf.d" / "extra.yaml").write_text("deny:\n  prefixes: [100.64.0.1/10]\n"),
             False)
        step("included file removed", (tmp_path / "conf.d" / "extra.yaml").unlink, True)
        step("ban list emptied of the extra entry",
             lambda: policy.write_text(include_line + policy_text("192.0.2.192/26")), True)
        step("deleted again", policy.unlink, False)
        step("renamed back", lambda: write_atomically(policy, policy_text()), True)
        step("second group added", lambda: policy.write_text(policy_text().replace(
            "protect:\n", "protect:\n  - name: dns\n    prefixes: [192.0.2.0/28]\n")), True)
        step("second group removed", lambda: policy.write_text(policy_text()), True)
    finally:
        flood.stop.set()
        flood.join()
        watcher.close()

    assert len(outcomes) == 20
    assert flood.sent > 1000, "the flood must overlap the reloads"
    assert flood.passed == 0, f"{flood.passed} of {flood.sent} banned packets passed"
    assert runtime.reloads_failed == sum(1 for _, ok in outcomes if not ok)
    # Operator ban survived every reload and is enforced.
    assert h.port.addresses.get_record(op, abi.SRC_BAN, abi.Origin.OPERATOR) is not None
    assert h.run_raw(packet("192.0.2.99")).retval == abi.XDP_DROP
    assert h.run_raw(packet("198.51.100.7")).retval == abi.XDP_DROP


def test_a_reload_failing_at_commit_keeps_the_previous_limits_config_and_prefixes(
    h: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It used to write the new group limits and config first, then fail on the prefixes,
    # and report "previous kept" over a half-applied policy.
    from agent.datapath.errors import CapacityError

    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text(limit="1k"))
    runtime = PolicyRuntime(policy, h.port)
    assert runtime.reload("start").ok
    assert runtime.compiled is not None
    gid = runtime.compiled.group_ids["web"]
    group_before = bytes(h.port.read_group(gid))
    config_before = bytes(h.port.read_config())
    model_before = {k: e.records() for k, e in h.port.addresses.src.items()}

    table = h.port.addresses
    committer = table._committer
    real = committer._commit

    def full(now: int, full: bool) -> None:
        real(now, full)  # plans and writes, then the kernel refuses (as a full map would at the end)
        raise CapacityError("host4 is full: raise capacity.hosts4 in the policy and restart")

    monkeypatch.setattr(committer, "_commit", full)
    policy.write_text(policy_text("192.0.2.0/26", limit="5k") + "mode: monitor\n")
    outcome = runtime.reload("test")
    monkeypatch.setattr(committer, "_commit", real)
    assert not outcome.ok and "host4 is full" in outcome.errors[0]
    table.commit(now_ns())  # finishes putting the kernel back
    assert bytes(h.port.read_group(gid)) == group_before, "the group's limits are the previous ones"
    assert bytes(h.port.read_config()) == config_before, "the config is the previous one"
    assert {k: e.records() for k, e in table.src.items()} == model_before
    assert table.get_record(prefix_key(ipaddress.ip_network("192.0.2.0/26")), abi.SRC_BAN,
                            abi.Origin.POLICY) is None
    assert h.run_raw(packet("198.51.100.7")).retval == abi.XDP_DROP
