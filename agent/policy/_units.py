"""Human units for rates, sizes and durations, parsed and printed.

Operators write ``50k`` packets/s, ``1Gbit`` and ``10m``; the rest of the agent
wants plain numbers (packets/s, bits/s, seconds). The parsers here are the only
place that knows the suffixes, so error messages and documentation agree. Every
parser raises ``ValueError`` with a sentence meant for a person, and the
formatters print values back in the same units so messages quote what the
operator would have written.

Decimal prefixes only (k = 1,000): rates in networking are decimal, and one
convention is easier to remember than two.
"""

from __future__ import annotations

import math
import re

#: Decimal multipliers shared by packet rates and counts.
_COUNT_SUFFIX = {"": 1, "k": 1_000, "K": 1_000, "M": 1_000_000, "G": 1_000_000_000}

#: Bit-rate prefixes, case-insensitive as in tc(8): ``mbit`` and ``Mbit`` mean the same.
_BIT_PREFIX = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000, "t": 1_000_000_000_000}

_DURATION_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_NUMBER = r"(?P<num>[0-9][0-9_]*(?:\.[0-9]+)?)"
_COUNT_RE = re.compile(rf"^\s*{_NUMBER}\s*(?P<suffix>[a-zA-Z/]*)\s*$")
_BITS_RE = re.compile(r"^(?P<prefix>[kKmMgGtT]?)(?:bit|bits|bps|bit/s)$")
# Upper-case B is bytes (MB, MBps, MiB); "byte" is bytes in any case.
_BYTES_RE = re.compile(r"^(?P<prefix>[kKmMgGtT]?)i?(?:B|Bps|B/s|[Bb]ytes?|[Bb]ytes/s)$")
_DURATION_PART_RE = re.compile(r"([0-9][0-9_]*(?:\.[0-9]+)?)\s*(ms|s|m|h|d)")


def describe(value: object) -> str:
    """Say in plain words what an unexpected value is (for error messages)."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def _whole(number: float, text: str, what: str) -> int:
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"{text} is not a whole number of {what}")
    return int(number)


def parse_count(value: object, what: str = "items") -> int:
    """A plain count with an optional decimal suffix: ``400``, ``200k``, ``1.5M``, ``2G``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number like 400 or 200k, got {describe(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return _whole(value, str(value), what)
    if not isinstance(value, str):
        raise ValueError(f"expected a number like 400 or 200k, got {describe(value)}")
    match = _COUNT_RE.match(value)
    if match is None:
        raise ValueError(f"'{value}' is not a number; write e.g. 400, 200k, 1.5M or 2G (k = 1,000)")
    suffix = match["suffix"]
    if suffix not in _COUNT_SUFFIX:
        hint = " (M is million; lower-case m is not accepted)" if suffix == "m" else ""
        raise ValueError(f"'{value}' has an unknown suffix '{suffix}'; use k, M or G{hint}")
    return _whole(float(match["num"].replace("_", "")) * _COUNT_SUFFIX[suffix], f"'{value}'", what)


def parse_pps(value: object) -> int:
    """A packet rate: ``200``, ``50k``, ``1.5M``, ``2G``, optionally followed by ``pps``."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.lower().endswith("pps"):
            stripped = stripped[:-3]
        try:
            return parse_count(stripped, "packets/s")
        except ValueError:
            raise ValueError(
                f"'{value}' is not a packet rate; write e.g. 200, 50k, 1.5M or 2G packets/s (k = 1,000)"
            ) from None
    try:
        return parse_count(value, "packets/s")
    except ValueError:
        raise ValueError(f"expected a packet rate like 200 or 50k, got {describe(value)}") from None


def parse_bps(value: object) -> int:
    """A bit rate: plain integers are bits/s; strings take ``bit``/``bps`` units (``100Mbit``, ``1Gbps``).

    Byte units (``MB``, ``MBps``, ``MiB``) are refused with the bit equivalent
    spelled out, because confusing the two is an eightfold mistake in a limit.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a bit rate like 100Mbit or 1Gbit, got {describe(value)}")
    if isinstance(value, int | float):
        return _whole(value, str(value), "bits/s")
    match = _COUNT_RE.match(value)
    if match is None:
        raise ValueError(
            f"'{value}' is not a bit rate; write e.g. 800kbit, 100Mbit, 1.5Gbit (or a plain bits/s)"
        )
    number = float(match["num"].replace("_", ""))
    suffix = match["suffix"]
    if suffix == "":
        return _whole(number, f"'{value}'", "bits/s")
    bits = _BITS_RE.match(suffix)
    if bits is not None:
        return _whole(number * _BIT_PREFIX[bits["prefix"].lower()], f"'{value}'", "bits/s")
    byte = _BYTES_RE.match(suffix)
    if byte is not None:
        prefix = byte["prefix"]
        as_bits = format_bps(round(number * 8 * _BIT_PREFIX[prefix.lower()]))
        raise ValueError(
            f"'{value}' looks like bytes; rates here are in bits per second: "
            f"{match['num']} {prefix}B/s is {as_bits}"
        )
    if suffix.lower() in _BIT_PREFIX:
        unit = {"k": "kbit", "m": "Mbit", "g": "Gbit", "t": "Tbit"}[suffix.lower()]
        raise ValueError(f"'{value}' has no unit; write {match['num']}{unit} for bits per second")
    raise ValueError(
        f"'{value}' has an unknown unit '{suffix}'; use bit, kbit, Mbit, Gbit or Tbit (or kbps, Mbps…)"
    )


def parse_duration(value: object) -> float:
    """Seconds from ``250ms``, ``30s``, ``10m``, ``2h``, ``1d`` or ``1h30m``; a plain number is seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a duration like 30s, 10m or 2h, got {describe(value)}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a duration")
        return float(value)
    text = value.strip()
    try:
        return float(text.replace("_", ""))
    except ValueError:
        pass
    total = 0.0
    pos = 0
    for part in _DURATION_PART_RE.finditer(text):
        if part.start() != pos:
            break
        total += float(part[1].replace("_", "")) * _DURATION_UNIT[part[2]]
        pos = part.end()
    if pos != len(text) or not text:
        raise ValueError(f"'{value}' is not a duration; write e.g. 250ms, 30s, 10m, 2h, 1d or 1h30m")
    return total


def _trim(number: float) -> str:
    return f"{number:.3f}".rstrip("0").rstrip(".")


def format_count(value: float) -> str:
    """Print a count the way an operator writes it: ``200``, ``50k``, ``1.5M``, ``1G``."""
    for suffix, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{_trim(value / size)}{suffix}"
    return _trim(value)


def format_bps(value: float) -> str:
    """Print a bit rate: ``800kbit``, ``1.5Gbit``, ``1Tbit``."""
    for prefix, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{_trim(value / size)}{prefix}bit"
    return f"{_trim(value)}bit"


def format_duration(seconds: float) -> str:
    """Print a duration with its largest whole unit: ``250ms``, ``30s``, ``10m``, ``1.5h``."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if abs(seconds) >= size:
            return f"{_trim(seconds / size)}{unit}"
    if seconds == 0:
        return "0s"
    return f"{_trim(seconds * 1000)}ms"
