"""The clock the program checks expiries against: CLOCK_MONOTONIC, in nanoseconds."""

from __future__ import annotations

import time

#: Nanoseconds per second.
NS = 1_000_000_000


def monotonic_ns() -> int:
    """CLOCK_MONOTONIC in ns: what bpf_ktime_get_coarse_ns() reads in the program (to a jiffy)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)
