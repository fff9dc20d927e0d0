"""agent/control/bans.py and matcher.py: who may be banned, for how long, how many — and what it costs."""

from __future__ import annotations

import ipaddress

import pytest
from fakes import WatchedDict, count_heap_pops
from synthetic import lab

from agent.contract.keys import prefix_key
from agent.control import bans
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


def ten_thousand_bans(book: BanBook, expires_ns: int) -> list[ipaddress.IPv4Network]:
    nets = [ipaddress.IPv4Network((0xC6120000 + i, 32)) for i in range(10_000)]  # 198.18.0.0 up
    for i, n in enumerate(nets):
        book.add(n, 1 + i % 100, expires_ns + i, 0)
    return nets


def test_a_tick_with_10k_bans_and_none_due_does_no_per_ban_work(monkeypatch: pytest.MonkeyPatch) -> None:
    book = BanBook()
    nets = ten_thousand_bans(book, 3600 * NS)
    book._active = watched = WatchedDict(book._active)
    popped = count_heap_pops(monkeypatch, bans)
    for t in range(1, 11):  # what each tick asks of the book
        book.prune(t * NS)
        book.forget_old(t * NS)
        assert book.count() == 10_000 and book.count(7) == 100
        assert book.is_banned(nets[t]) and not book.is_banned(net("198.19.0.1/32"))
    assert (popped[0], watched.walks) == (0, 0)
    # Once some are due, the work is theirs alone.
    book.prune(3600 * NS + 9)
    assert popped[0] == 10 and book.count() == 9_990 and book.count(1) == 99 and book.count(11) == 100
    assert watched.walks == 0


def test_rebanned_and_unbanned_prefixes_leave_no_stale_expiry_behind() -> None:
    book = BanBook()
    a, b = net("198.18.0.1/32"), net("198.18.0.2/32")
    book.add(a, 1, 10 * NS, 0)
    book.add(a, 2, 50 * NS, 5 * NS)  # banned again, by another group's attack, for longer
    book.add(b, 1, 10 * NS, 0)
    book.remove(b)
    book.add(b, 1, 30 * NS, 20 * NS)
    book.prune(20 * NS)
    assert dict(book.active) == {a: (50 * NS, 2), b: (30 * NS, 1)}
    assert (book.count(1), book.count(2)) == (1, 1)
    book.prune(30 * NS)
    assert list(book.active) == [a]
    for i in range(5000):  # refreshed over and over: the heap stays bounded
        book.add(a, 2, (60 + i) * NS, 30 * NS)
    assert len(book._expiry) <= 2 * len(book.active) + bans._SLACK
    book.prune(6000 * NS)
    assert book.count() == 0 and book.count(2) == 0


def test_bans_loaded_at_start_count_until_they_run_out() -> None:
    book = BanBook()
    book.load(net("198.18.0.1/32"), 10 * NS)
    assert book.is_banned(net("198.18.0.1/32")) and book.count() == 1 and book.counts == {}
    book.prune(10 * NS)
    assert book.count() == 0 and not book.is_banned(net("198.18.0.1/32"))
    book.load(net("198.18.0.2/32"), 0)  # found without an expiry: it never runs out
    book.prune(10**18)
    assert book.is_banned(net("198.18.0.2/32")) and book.count() == 1


def test_forgetting_offenders_looks_only_at_those_due(monkeypatch: pytest.MonkeyPatch) -> None:
    book = BanBook({f"198.19.{i >> 8}.{i & 255}/32": 2 for i in range(10_000)})
    book.forget_old(0)  # the loaded offenders' week starts now
    popped = count_heap_pops(monkeypatch, bans)
    book.add(net("198.18.0.1/32"), 1, NS, OFFENDER_MEMORY_S * NS // 2)
    book.forget_old(OFFENDER_MEMORY_S * NS - 1)
    assert popped[0] == 0 and len(book.counts) == 10_001
    book.forget_old(OFFENDER_MEMORY_S * NS + 1)
    assert popped[0] == 10_000 and book.counts == {"198.18.0.1/32": 1}
