"""agent/daemon/mapviews.py against the real program: `explain` finds a source's buckets
by their exact keys (IPv4, and IPv6 by its bucket prefix) and judges them by the limits
the program applies now; `bans` names the policy entry behind a policy ban.

Packets go through the program with BPF_PROG_TEST_RUN, so the buckets are the ones the
program itself created.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from harness import Harness, eth, now_ns
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from agent.contract import abi
from agent.contract.keys import prefix_key
from agent.contract.specs import RuleSpec
from agent.daemon.api import RequestError
from agent.daemon.mapviews import PolicyIndex, bucket_address, explain, list_bans
from agent.daemon.parts import Parts
from agent.daemon.reload import PolicyRuntime
from agent.daemon.state import Capture, Reasons
from agent.daemon.verbs import Actions, Verbs, VerbTable

NS = 1_000_000_000

POLICY = """
interfaces: [eth0]
deny:
  prefixes: [{prefix: 198.51.100.0/24, reason: "known flooder"}]
infrastructure:
  prefixes: [192.0.2.0/28]
limits: {ipv6_prefix: 56}
protect:
  - name: web
    prefixes: [203.0.113.0/24, "2001:db8::/64"]
    limits: {udp: {pps: 1k}}
  - name: dns
    prefixes: [203.0.113.128/25]
    limits: {udp: {pps: 2k}}    # per-source limits are none by default: a bucket needs one
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

SRC4 = "192.0.2.7"
SRC6 = "2001:db8:1:2:3::5"
SAME_56 = "2001:db8:1:ff::9"  # another host of SRC6's /56: the same buckets


@pytest.fixture
def runtime(h: Harness, tmp_path: Path) -> PolicyRuntime:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    rt = PolicyRuntime(path, h.port)
    outcome = rt.reload("start")
    assert outcome.ok, outcome.errors
    return rt


def udp4(src: str, dst: str = "203.0.113.10") -> bytes:
    return bytes(eth() / IP(src=src, dst=dst) / UDP(sport=4000, dport=53) / Raw(b"x" * 32))


def udp6(src: str, dst: str = "2001:db8::10") -> bytes:
    return bytes(eth() / IPv6(src=src, dst=dst) / UDP(sport=4000, dport=53) / Raw(b"x" * 32))


def explained(h: Harness, rt: PolicyRuntime, ip: str) -> dict[str, object]:
    assert rt.policy is not None and rt.compiled is not None
    return explain(ipaddress.ip_address(ip), h.port, rt.policy, rt.compiled, PolicyIndex().entries(rt.policy),
                   Reasons(), now_ns())


def buckets(h: Harness, rt: PolicyRuntime, ip: str) -> list[dict[str, object]]:
    got = explained(h, rt, ip)["source_buckets"]
    assert isinstance(got, list)
    return got


def test_bucket_address_is_the_source_or_its_ipv6_prefix() -> None:
    assert bucket_address(ipaddress.ip_address(SRC4), 56) == int(ipaddress.ip_address(SRC4))
    assert bucket_address(ipaddress.ip_address(SRC6), 56) == int(ipaddress.ip_address("2001:db8:1::"))
    assert bucket_address(ipaddress.ip_address(SRC6), 128) == int(ipaddress.ip_address(SRC6))


def test_explain_finds_the_buckets_the_program_made_for_both_families(h: Harness, runtime: PolicyRuntime) -> None:
    assert buckets(h, runtime, SRC4) == [] and buckets(h, runtime, SRC6) == []
    for _ in range(3):
        assert h.run_raw(udp4(SRC4)).retval == abi.XDP_PASS
        assert h.run_raw(udp6(SRC6)).retval == abi.XDP_PASS
    assert h.run_raw(udp4(SRC4, dst="203.0.113.200")).retval == abi.XDP_PASS  # group dns

    got4 = buckets(h, runtime, SRC4)
    assert [(b["group"], b["class"], b["tightened"]) for b in got4] == [("web", "udp", False), ("dns", "udp", False)]
    web4 = got4[0]
    assert isinstance(web4["limit"], dict) and round(web4["limit"]["pps"]) == 1000
    got6 = buckets(h, runtime, SRC6)
    assert [(b["group"], b["class"]) for b in got6] == [("web", "udp")]
    assert buckets(h, runtime, SAME_56) == got6  # one bucket per /56, as the program keys it
    assert buckets(h, runtime, "2001:db8:2::5") == []
    assert buckets(h, runtime, "192.0.2.8") == []


def test_explain_judges_by_the_tightened_limits_while_they_last(h: Harness, runtime: PolicyRuntime) -> None:
    assert runtime.compiled is not None
    web = runtime.compiled.group_ids["web"]
    h.run_raw(udp4(SRC4))
    h.run_raw(udp6(SRC6))
    h.tighten(web, {abi.TrafficClass.UDP: (10, 0, 0)}, expires=now_ns() + 600 * NS)
    for ip in (SRC4, SRC6):
        (b,) = buckets(h, runtime, ip)
        assert b["tightened"] is True and isinstance(b["limit"], dict) and round(b["limit"]["pps"]) == 10, ip
    dst = explained(h, runtime, "203.0.113.10")["as_destination"]
    assert isinstance(dst, dict) and dst["group"] == "web" and dst["tightened"] is True
    assert round(dst["tightened_limits"]["udp"]["pps"]) == 10 and round(dst["per_source_limits"]["udp"]["pps"]) == 1000

    # Expired: the program is back on the base limits although the flag is still set.
    h.tighten(web, {abi.TrafficClass.UDP: (10, 0, 0)}, expires=now_ns() - NS)
    (b,) = buckets(h, runtime, SRC4)
    assert b["tightened"] is False and isinstance(b["limit"], dict) and round(b["limit"]["pps"]) == 1000
    dst = explained(h, runtime, "203.0.113.10")["as_destination"]
    assert isinstance(dst, dict) and dst["tightened"] is False and dst["tightened_limits"] is None


def test_explain_shows_an_attacks_per_source_limit_for_the_target_and_the_source(
        h: Harness, runtime: PolicyRuntime) -> None:
    """A SOURCE_LIMIT rule of an attack: the target lists it, and each source's bucket for that group and
    class is judged against the rule's rate as well as the group's limit."""
    assert runtime.compiled is not None
    web = runtime.compiled.group_ids["web"]
    h.rules(RuleSpec(dst=ipaddress.ip_network("203.0.113.10/32"), proto=17, action=abi.RuleAction.SOURCE_LIMIT,
                     pps=5, burst=5, group=web, traffic_class=abi.TrafficClass.UDP, expires_ns=now_ns() + 60 * NS))
    for _ in range(10):
        h.run_raw(udp4(SRC4))
    dst = explained(h, runtime, "203.0.113.10")["as_destination"]
    assert isinstance(dst, dict)
    (rule,) = dst["rules"]
    assert (rule["action"], rule["class"], rule["dst"], rule["proto"]) == ("source_limit", "udp", "203.0.113.10/32", 17)
    assert round(rule["limit"]["pps"]) == 5 and 0 < rule["ttl_seconds"] <= 60
    assert explained(h, runtime, "203.0.113.11")["as_destination"]["rules"] == [], "another host: not its rule"
    (b,) = buckets(h, runtime, SRC4)
    (limit,) = b["attack_limits"]
    assert limit["dst"] == "203.0.113.10/32" and round(limit["limit"]["pps"]) == 5
    assert limit["over_limit"] is True and b["over_limit"] is False, "over the attack's 5 pps, not the group's 1k"


def test_explain_shows_entries_infrastructure_and_destination_counters(h: Harness, runtime: PolicyRuntime) -> None:
    h.run_raw(udp4(SRC4))
    h.run_raw(udp4(SRC4))
    ex = explained(h, runtime, "198.51.100.9")
    assert ex["verdict"] == "banned: every packet is dropped"
    assert ex["entries"] == [{"prefix": "198.51.100.0/24", "kind": "ban", "origin": "policy", "monitor": False,
                              "active": True, "ttl_seconds": None, "reason": ex["entries"][0]["reason"]}]
    assert str(ex["entries"][0]["reason"]).startswith("known flooder (")
    assert explained(h, runtime, SRC4)["infrastructure"] == ["192.0.2.0/28"]
    dst = explained(h, runtime, "203.0.113.10")["as_destination"]
    assert isinstance(dst, dict) and dst["prefix"] == "203.0.113.0/24"
    assert dst["counters"] == {"udp": {"packets": 2, "bytes": 2 * len(udp4(SRC4)), "dropped": 0}}


def test_bans_name_the_policy_entry_and_the_operator_reason(h: Harness, runtime: PolicyRuntime) -> None:
    reasons = Reasons()
    now = now_ns()
    op = prefix_key(ipaddress.ip_network("192.0.2.66/32"))
    h.port.addresses.set_record(op, abi.SRC_BAN, abi.Origin.OPERATOR,
                                (now + 600 * NS, now, abi.SRC_BAN, reasons.id_of("scanner")))
    h.port.addresses.commit(now)
    entries = PolicyIndex().entries(runtime.policy)
    bans = list_bans(h.port, entries, reasons, None, now_ns())
    assert [(b["prefix"], b["origin"]) for b in bans] == [("192.0.2.66/32", "operator"), ("198.51.100.0/24", "policy")]
    assert bans[0]["reason"] == "scanner" and 590 < bans[0]["ttl_seconds"] <= 600
    assert str(bans[1]["reason"]).startswith("known flooder (") and bans[1]["ttl_seconds"] is None
    assert [b["prefix"] for b in list_bans(h.port, entries, reasons, "policy", now_ns())] == ["198.51.100.0/24"]


# --------------------------------------------------------------------------- operator bans


def _verbs(h: Harness, runtime: PolicyRuntime) -> tuple[VerbTable, list[object]]:
    """The agent's verb table over the real port; ``saved`` gets each state save."""
    saved: list[object] = []
    parts = SimpleNamespace(port=h.port, runtime=runtime, reasons=Reasons(),
                            store=SimpleNamespace(save_now=saved.append))
    verbs = Verbs(cast(Parts, parts), cast(Actions, None), cast(Callable[[], Capture], lambda: "capture"))
    return verbs.table(threading.RLock()), saved


def test_an_operator_ban_refused_for_a_full_map_is_not_listed_nor_saved(h: Harness, runtime: PolicyRuntime) -> None:
    table, saved = _verbs(h, runtime)
    t = h.port.addresses
    now = now_ns()
    for i in range(t.max_entries - 1 - len(t.src)):
        t.set_record((4, (10 << 24) | (i << 8), 24), abi.SRC_BAN, abi.Origin.AUTO, (0, now, abi.SRC_BAN, 0))
    t.commit(now)
    with pytest.raises(RequestError, match=r"100\.64\.0\.9/32 is not banned: src_entries is full"):
        table.serve("ban", {"prefix": "100.64.0.9", "reason": "scanner"})
    listed = table.serve("bans", {"origin": "operator"})
    assert listed == [] and saved == []
    assert t.get_record(prefix_key(ipaddress.ip_network("100.64.0.9/32")), abi.SRC_BAN, abi.Origin.OPERATOR) is None


def test_operator_bans_of_everything_or_of_infrastructure_need_force(h: Harness, runtime: PolicyRuntime) -> None:
    table, saved = _verbs(h, runtime)
    serve = table.serve
    with pytest.raises(RequestError, match=r"every address.*--force"):
        serve("ban", {"prefix": "0.0.0.0/0"})
    with pytest.raises(RequestError, match=r"every address.*--force"):
        serve("ban", {"prefix": "::/0"})
    with pytest.raises(RequestError, match=r"overlaps the infrastructure prefix 192\.0\.2\.0/28 \(.*policy.yaml:\d+\)"):
        serve("ban", {"prefix": "192.0.2.0/24"})
    with pytest.raises(RequestError, match="infrastructure"):
        serve("ban", {"prefix": "192.0.2.3"})
    assert saved == [] and list(h.port.addresses.records(abi.Origin.OPERATOR)) == []
    # With force the operator gets what they asked for.
    assert serve("ban", {"prefix": "192.0.2.3", "force": True, "ttl": 60})["prefix"] == "192.0.2.3/32"
    assert h.run_raw(udp4("192.0.2.3")).retval == abi.XDP_DROP and saved == ["capture"]
