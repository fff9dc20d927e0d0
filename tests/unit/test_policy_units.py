"""Human units: what operators write, what the agent gets, and what is refused."""

from __future__ import annotations

import pytest

from agent.policy._fields import PrefixEntry, parse_prefix
from agent.policy._units import (
    format_bps,
    format_count,
    format_duration,
    parse_bps,
    parse_count,
    parse_duration,
    parse_pps,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (200, 200),
        ("200", 200),
        ("50k", 50_000),
        ("50K", 50_000),
        ("1.5M", 1_500_000),
        ("2G", 2_000_000_000),
        ("50kpps", 50_000),
        ("1_000", 1000),
        (100.0, 100),
    ],
)
def test_packet_rates(text: object, value: int) -> None:
    assert parse_pps(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (1000, 1000),
        ("800kbit", 800_000),
        ("100Mbit", 100_000_000),
        ("1Gbit", 10**9),
        ("1.5Gbit", 1_500_000_000),
        ("1Tbit", 10**12),
        ("100mbit", 100_000_000),
        ("100Mbps", 100_000_000),
        ("1gbps", 10**9),
        ("64bit", 64),
    ],
)
def test_bit_rates(text: object, value: int) -> None:
    assert parse_bps(text) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("100MB", "100 MB/s is 800Mbit"),
        ("1GBps", "1 GB/s is 8Gbit"),
        ("5MiB", "looks like bytes"),
        ("10 bytes", "looks like bytes"),
        ("100M", "write 100Mbit"),
        ("3furlongs", "unknown unit"),
        (True, "got the boolean true"),
        ("fast", "not a bit rate"),
    ],
)
def test_bit_rates_refused(text: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_bps(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (30, 30.0),
        (0.25, 0.25),
        ("250ms", 0.25),
        ("30s", 30.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("45", 45.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10 minutes", "1y", "m", "", "1h 30x", None, [1]])
def test_durations_refused(text: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5m", "M is million"),
        ("5x", "unknown suffix 'x'"),
        ("1.5", "not a whole number"),
        ("lots", "not a number"),
        (None, "got nothing"),
    ],
)
def test_counts_refused(text: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_count(text)


def test_formatting_round_trips_through_the_parsers() -> None:
    for value in (1, 999, 1000, 1500, 2_000_000, 10**9):
        assert parse_pps(format_count(value)) == value
    for value in (64, 800_000, 1_500_000_000, 10**12):
        assert parse_bps(format_bps(value)) == value
    for seconds in (0.25, 30.0, 600.0, 5400.0, 86400.0):
        assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.0/8", (4, 10 << 24, 8)),
        ("192.0.2.1", (4, 0xC0000201, 32)),
        ("0.0.0.0/0", (4, 0, 0)),
        ("2001:db8::/32", (6, 0x20010DB8 << 96, 32)),
        ("::1", (6, 1, 128)),
        ("10.0.0.0/255.0.0.0", (4, 10 << 24, 8)),
    ],
)
def test_prefixes(text: str, expected: tuple[int, int, int]) -> None:
    assert parse_prefix(text) == expected
    entry = PrefixEntry(*expected)
    assert entry.network.version == expected[0]
    assert int(entry.network.network_address) == expected[1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.1.2.3/24", "did you mean 10.1.2.0/24"),
        ("01.2.3.4/32", "Leading zeros"),
        ("1.2.3/24", "Expected 4 octets"),
        ("10.0.0.0/33", "not a valid netmask"),
        ("10.0.0.0/+8", "not a valid netmask"),
        ("2001:db8::1/32", "did you mean 2001:db8::/32"),
        ("2001:db8:::/48", "not a valid IPv6 prefix"),
        ("", "empty prefix"),
    ],
)
def test_prefixes_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_prefix(text)


def test_prefix_entry_knows_its_range_and_source() -> None:
    entry = PrefixEntry(4, 10 << 24, 8, "office", "allow.txt", 3, 1)
    assert entry.last == (10 << 24) | 0xFFFFFF
    assert entry.source == "allow.txt:3"
    assert str(entry) == "10.0.0.0/8"
    assert PrefixEntry.of("10.0.0.0/8", "office")[:4] == entry[:4]
