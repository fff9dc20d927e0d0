"""Pydantic field types for human units and prefix lists.

Each type parses what an operator writes (``50k``, ``1Gbit``, ``10m``,
``10.0.0.0/8``), checks the range with a message in the same units, and
describes itself in the JSON Schema so that editors accept the unit strings.
They are ``Annotated`` metadata objects rather than validators scattered over
the models, so a range lives next to the field it limits and reads like one.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from agent.policy._units import (
    format_bps,
    format_count,
    format_duration,
    parse_bps,
    parse_count,
    parse_duration,
    parse_pps,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

UnitKind = Literal["pps", "bps", "count", "duration", "number"]

_PATTERNS: dict[UnitKind, str] = {
    "pps": r"^\s*[0-9][0-9_]*(\.[0-9]+)?\s*[kKMG]?\s*(pps)?\s*$",
    "bps": r"^\s*[0-9][0-9_]*(\.[0-9]+)?\s*([kKmMgGtT]?(bit|bits|bps|bit/s))?\s*$",
    "count": r"^\s*[0-9][0-9_]*(\.[0-9]+)?\s*[kKMG]?\s*$",
    "duration": r"^\s*([0-9][0-9_]*(\.[0-9]+)?\s*(ms|s|m|h|d)?)+\s*$",
}

_EXAMPLES: dict[UnitKind, str] = {
    "pps": "packets per second: 200, 50k, 1.5M, 2G (k = 1,000)",
    "bps": "bits per second: 800kbit, 100Mbit, 1.5Gbit, 1Gbps, or a plain number of bits/s",
    "count": "a count: 400, 200k, 1.5M (k = 1,000)",
    "duration": "a duration: 250ms, 30s, 10m, 2h, 1d, 1h30m; a plain number is seconds",
    "number": "a number",
}


def _format(kind: UnitKind, value: float) -> str:
    if kind == "pps":
        return f"{format_count(value)} packets/s"
    if kind == "bps":
        return format_bps(value)
    if kind == "duration":
        return format_duration(value)
    if kind == "count":
        return format_count(value)
    return f"{value:g}"


def _parse_number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        shown = f"'{value}'" if isinstance(value, str) else type(value).__name__
        raise ValueError(f"expected a number like 0.5, got {shown}")
    return float(value)


_PARSERS: dict[UnitKind, Callable[[object], float]] = {
    "pps": parse_pps,
    "bps": parse_bps,
    "count": parse_count,
    "duration": parse_duration,
    "number": _parse_number,
}


@dataclass(frozen=True)
class Unit:
    """``Annotated`` metadata: parse a value in ``kind`` units and keep it within [lo, hi]."""

    kind: UnitKind
    lo: float
    hi: float

    def parse(self, value: object) -> float:
        number = _PARSERS[self.kind](value)
        if number > self.hi or number < self.lo:
            written = value if isinstance(value, str) else _format(self.kind, number)
            side, bound = (
                ("above the maximum", self.hi) if number > self.hi else ("below the minimum", self.lo)
            )
            raise ValueError(f"{written} is {side} of {_format(self.kind, bound)}")
        return number

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_before_validator_function(self.parse, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        numeric: dict[str, Any] = {
            "type": "number" if self.kind in ("duration", "number") else "integer",
            "minimum": self.lo,
            "maximum": self.hi,
        }
        if self.kind == "number":
            return {**numeric, "description": _EXAMPLES[self.kind]}
        return {
            "anyOf": [numeric, {"type": "string", "pattern": _PATTERNS[self.kind]}],
            "description": _EXAMPLES[self.kind],
        }


class PrefixEntry(NamedTuple):
    """One allow/deny/infrastructure/protected prefix, with why and where it was written.

    A tuple of integers rather than a model or an ``ipaddress`` object: a deny
    list can hold a million of these, and the compiler wants integers for map
    keys anyway. ``network`` gives the ``ipaddress`` view when one is needed.
    ``file``/``line``/``column`` point at the policy line or prefix-file line the
    entry came from (``None`` when built in code), so ``explain`` can say which
    entry matched.
    """

    version: int  # 4 or 6
    address: int  # the network address as an integer
    prefixlen: int
    reason: str | None = None
    file: str | None = None
    line: int | None = None
    column: int | None = None

    @classmethod
    def of(cls, network: IPNetwork | str, reason: str | None = None) -> PrefixEntry:
        """An entry from an ``ipaddress`` network or a prefix string (for code and tests)."""
        net = parse_network(network) if isinstance(network, str) else network
        return cls(net.version, int(net.network_address), net.prefixlen, reason)

    @property
    def network(self) -> IPNetwork:
        """The prefix as an ``ipaddress`` network."""
        if self.version == 4:
            return ipaddress.IPv4Network((self.address, self.prefixlen))
        return ipaddress.IPv6Network((self.address, self.prefixlen))

    @property
    def last(self) -> int:
        """The highest address in the prefix, as an integer."""
        return self.address | ((1 << ((32 if self.version == 4 else 128) - self.prefixlen)) - 1)

    @property
    def source(self) -> str | None:
        """``file:line`` of the entry, if known."""
        return None if self.file is None else f"{self.file}:{self.line}"

    def __str__(self) -> str:
        return str(self.network)


def parse_network(text: str) -> IPNetwork:
    """Parse one prefix strictly; the ``ValueError`` says what is wrong in plain words.

    A bare address is a host prefix (/32 or /128). Host bits set is an error
    with the corrected prefix suggested, because ``10.1.2.3/24`` is usually a
    typo for one of two very different things and we must not guess silently.
    """
    try:
        if ":" in text:
            return ipaddress.IPv6Network(text)
        return ipaddress.IPv4Network(text)
    except ValueError as exc:
        message = str(exc)
        if message.endswith("has host bits set"):
            fixed = ipaddress.ip_network(text, strict=False)
            raise ValueError(f"{text} has host bits set; did you mean {fixed}?") from None
        family = "IPv6" if ":" in text else "IPv4"
        if not text.strip():
            raise ValueError("empty prefix") from None
        raise ValueError(f"'{text}' is not a valid {family} prefix: {message}") from None


def parse_prefix(text: str) -> tuple[int, int, int]:
    """``(version, address, prefixlen)`` of a prefix; ``ValueError`` as ``parse_network``.

    The fast path uses ``inet_pton`` (strict: no leading zeros, no short forms)
    and integer arithmetic, about five times faster than ``ipaddress``; anything
    unusual (netmask notation, scope ids, errors) goes through ``ipaddress`` so
    that what is accepted and the messages are exactly ``ipaddress``'s.
    """
    addr, slash, length = text.partition("/")
    family, version, bits = (socket.AF_INET6, 6, 128) if ":" in addr else (socket.AF_INET, 4, 32)
    try:
        address = int.from_bytes(socket.inet_pton(family, addr), "big")
    except OSError:
        address = -1
    if address >= 0 and (not slash or (length.isascii() and length.isdigit() and len(length) <= 3)):
        prefixlen = int(length) if slash else bits
        if prefixlen <= bits and not address & ((1 << (bits - prefixlen)) - 1):
            return version, address, prefixlen
    net = parse_network(text)
    return net.version, int(net.network_address), net.prefixlen


def parse_prefix_item(item: object) -> PrefixEntry:
    """An inline list item: ``"10.0.0.0/8"`` or ``{prefix: "10.0.0.0/8", reason: "…"}``."""
    if isinstance(item, PrefixEntry):
        return item
    if isinstance(item, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return PrefixEntry.of(item)
    if isinstance(item, str):
        return PrefixEntry(*parse_prefix(item.strip()))
    if isinstance(item, dict):
        unknown = set(item) - {"prefix", "reason"}
        if unknown:
            raise ValueError(f"unknown key {sorted(unknown)[0]!r}; a prefix entry has 'prefix' and 'reason'")
        prefix, reason = item.get("prefix"), item.get("reason")
        if not isinstance(prefix, str):
            raise ValueError("a prefix entry needs 'prefix' written as text, e.g. prefix: 192.0.2.0/24")
        if reason is not None and not isinstance(reason, str):
            raise ValueError("'reason' must be text")
        return PrefixEntry(*parse_prefix(prefix.strip()), reason)
    raise ValueError(f"expected a prefix like 192.0.2.0/24, got {type(item).__name__}")


def _validate_prefixes(value: object) -> tuple[PrefixEntry, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError("expected a list of prefixes")
    return tuple(item if type(item) is PrefixEntry else parse_prefix_item(item) for item in value)


def _serialize_prefixes(value: tuple[PrefixEntry, ...]) -> list[object]:
    return [
        str(e.network) if e.reason is None else {"prefix": str(e.network), "reason": e.reason} for e in value
    ]


_PREFIX_ITEM_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "description": "an IPv4 or IPv6 prefix, e.g. 192.0.2.0/24 or 2001:db8::/32"},
        {
            "type": "object",
            "properties": {"prefix": {"type": "string"}, "reason": {"type": "string"}},
            "required": ["prefix"],
            "additionalProperties": False,
        },
    ]
}


@dataclass(frozen=True)
class PrefixList:
    """``Annotated`` metadata for a tuple of ``PrefixEntry`` (fast path for pre-parsed entries)."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _validate_prefixes,
            serialization=core_schema.plain_serializer_function_ser_schema(_serialize_prefixes),
        )

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "array", "items": _PREFIX_ITEM_SCHEMA}
