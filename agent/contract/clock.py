"""The clock the program checks expiries against: CLOCK_MONOTONIC, in nanoseconds."""

from __future__ import annotations

import time

#: Nanoseconds per second.
NS = 1_000_000_000


def monotonic_ns() -> int:
    """CLOCK_MONOTONIC in ns: what bpf_ktime_get_coarse_ns() reads in the program (to a jiffy)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)

#: The longest a ban or allow may last, in seconds (one year, as the policy's ban_ttl_max):
#: longer ones are refused at every edge (CLI, control socket, state file), so an expiry
#: always fits the kernel's u64 with room to spare.
MAX_TTL = 365 * 86400


def check_ttl(seconds: float, what: str = "--ttl") -> float:
    """``seconds`` if it is a usable lifetime (positive, finite, at most MAX_TTL), else ValueError."""
    if not seconds > 0:  # also refuses NaN
        raise ValueError(f"{what} must be positive (or omit it for a permanent ban), not {seconds}")
    if seconds > MAX_TTL:
        raise ValueError(f"{what} ({seconds:g} s) is longer than a year ({MAX_TTL} s): use a shorter one, "
                         f"or omit it for a permanent ban")
    return seconds
