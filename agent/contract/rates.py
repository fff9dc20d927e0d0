"""Token-bucket settings in the program's units (struct fg_rate).

The program charges each packet pkt_cost_ns plus len * byte_cost_fp >> 16
nanoseconds of credit and lets a source run ahead of the clock by the
tolerance. Everything is precomputed here so the packet path never divides.
"""

from __future__ import annotations

from . import abi
from .clock import NS

# The program's clock moves in jiffies (up to 10 ms at HZ=100): a burst
# shorter than that would cap the rate at burst per jiffy.
MIN_TOLERANCE_NS = 10_000_000
FULL_FRAME = 1514


def make_rate(pps: int = 0, bps: int = 0, burst: int = 0) -> abi.Rate:
    """A rate of `pps` packets/s and `bps` bits/s (0 = unlimited in that
    dimension). `burst` packets may pass at once; the byte bucket allows the
    same burst time (burst / pps seconds, or `burst` full-size frames when
    only bps is set). The default burst is 1/10 s of the rate."""
    r = abi.Rate()
    if pps:
        r.pkt_cost_ns = max(1, round(NS / pps))
        b = burst or max(1, pps // 10)
        r.pkt_tolerance_ns = max(b * r.pkt_cost_ns, MIN_TOLERANCE_NS)
    if bps:
        per_byte_ns = 8 * NS / bps
        r.byte_cost_fp = max(1, round(per_byte_ns * (1 << abi.BYTE_COST_SHIFT)))
        if pps:
            burst_ns = (burst or max(1, pps // 10)) * NS / pps
        else:
            frames = burst or max(1, (bps // 8 // FULL_FRAME) // 10)
            burst_ns = frames * FULL_FRAME * per_byte_ns
        r.byte_tolerance_ns = max(round(burst_ns), MIN_TOLERANCE_NS)
    return r


def describe(r: abi.Rate) -> dict[str, float]:
    """The rate back in operator units (for `explain` and tests)."""
    out: dict[str, float] = {}
    if r.pkt_cost_ns:
        out["pps"] = NS / r.pkt_cost_ns
        out["burst"] = r.pkt_tolerance_ns / r.pkt_cost_ns
    if r.byte_cost_fp:
        out["bps"] = 8 * NS * (1 << abi.BYTE_COST_SHIFT) / r.byte_cost_fp
    return out
