"""agent/control/bans.py and prefixes.py: who may be banned, for how long, how many."""

from __future__ import annotations

import ipaddress

import pytest
from synthetic import lab

from agent.contract.keys import prefix_key
from agent.control.bans import MAX_OFFENDERS, OFFENDER_MEMORY_S, BanBook, ban_prefix, why_not_ban
from agent.control.matcher import PrefixMatcher
from agent.control.settings import Settings
from agent.policy.compile import compile_policy
from agent.policy.model import Mitigation

NS = 1_000_000_000


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def test_ban_prefix_is_the_address_or_the_ipv6_bucket_prefix() -> None:
    assert ban_prefix(ipaddress.ip_address("198.18.1.2"), 64) == net("198.18.1.2/32")
    assert ban_prefix(ipaddress.ip_address("2001:db8:f:1:2:3:4:5"), 64) == net("2001:db8:f:1::/64")
    assert ban_prefix(ipaddress.ip_address("2001:db8:f:1:2:3:4:5"), 128) == net("2001:db8:f:1:2:3:4:5/128")


@pytest.mark.parametrize(
    ("prefix", "why"),
    [
        ("100.64.99.7/32", "allowlisted"),
        ("192.0.2.1/32", "infrastructure"),
        ("203.0.113.9/32", "protected asset"),
        ("198.51.100.255/32", "protected asset"),
        ("2001:db8:1::/64", "infrastructure"),  # holds the router 2001:db8:1::1
        ("2001:db8:5::/64", "protected asset"),
        ("198.18.0.1/32", None),
        ("2001:db8:f::/64", None),
    ],
)
def test_never_ban_what_the_policy_protects(prefix: str, why: str | None) -> None:
    policy = lab()
    settings = Settings.build(policy, compile_policy(policy))
    assert why_not_ban(net(prefix), settings) == why


def test_ban_ttl_escalates_for_repeat_offenders_up_to_the_maximum() -> None:
    m = Mitigation(ban_ttl=600, ban_escalation=2.0, ban_ttl_max=3000)
    book = BanBook()
    n = net("198.18.0.1/32")
    seen = []
    for i in range(5):
        ttl, previous = book.ttl_s(n, m)
        seen.append((ttl, previous))
        book.add(n, 1, i * 10_000 * NS, i * NS)
    assert seen == [(600, 0), (1200, 1), (2400, 2), (3000, 3), (3000, 4)]
    assert book.counts == {"198.18.0.1/32": 5}
    assert book.total == 5


def test_bans_are_counted_per_group_and_forgotten_when_they_expire() -> None:
    book = BanBook()
    book.add(net("198.18.0.1/32"), 1, 10 * NS, 0)
    book.add(net("198.18.0.2/32"), 1, 20 * NS, 0)
    book.add(net("198.18.0.3/32"), 2, 30 * NS, 0)
    assert (book.count(), book.count(1), book.count(2)) == (3, 2, 1)
    book.prune(20 * NS)
    assert set(book.active) == {net("198.18.0.3/32")}
    # Banned again before the old expiry came up: the newer expiry counts.
    book.add(net("198.18.0.3/32"), 2, 90 * NS, 25 * NS)
    book.prune(40 * NS)
    assert book.is_banned(net("198.18.0.3/32"))
    book.remove(net("198.18.0.3/32"))
    assert book.count() == 0


def test_offenders_are_forgotten_after_a_week_and_the_table_stays_bounded() -> None:
    book = BanBook({"198.18.0.9/32": 4})
    book.forget_old(0)  # counts loaded from the state file start their clock now
    book.add(net("198.18.0.1/32"), 1, NS, 0)
    book.forget_old(OFFENDER_MEMORY_S * NS - 1)
    assert set(book.counts) == {"198.18.0.9/32", "198.18.0.1/32"}
    book.forget_old(OFFENDER_MEMORY_S * NS + 1)
    assert book.counts == {}
    for i in range(MAX_OFFENDERS + 1):
        book.counts[f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}/32"] = 1
    book.add(net("198.18.0.1/32"), 1, NS, 0)
    assert len(book.counts) <= MAX_OFFENDERS // 2 + 1


def test_prefix_matcher_covers_and_overlaps() -> None:
    keys = [prefix_key(net(p)) for p in ("10.0.0.0/8", "192.0.2.1/32", "2001:db8:5::/64", "2001:db8:5::7/128")]
    m = PrefixMatcher(keys)
    assert len(m) == 4
    assert m.covers(ipaddress.ip_address("10.1.2.3")) and not m.covers(ipaddress.ip_address("11.0.0.1"))
    assert m.longest(6, int(ipaddress.ip_address("2001:db8:5::7"))) == prefix_key(net("2001:db8:5::7/128"))
    assert m.longest(6, int(ipaddress.ip_address("2001:db8:5::8"))) == prefix_key(net("2001:db8:5::/64"))
    assert m.longest(6, int(ipaddress.ip_address("2001:db8:5::7")), max_len=64) == prefix_key(net("2001:db8:5::/64"))
    assert m.overlaps(net("192.0.2.0/24")), "contains a prefix"
    assert m.overlaps(net("10.9.9.9/32")), "inside a prefix"
    assert not m.overlaps(net("192.0.3.0/24"))
    assert not m.overlaps(net("2001:db8:6::/64"))
    assert PrefixMatcher([]).longest(4, 1) is None
