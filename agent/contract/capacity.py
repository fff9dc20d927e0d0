"""Map sizes: one place for their names, their defaults and the -D flags that set them.

The policy's ``capacity`` block has one key per field here (same names, same
defaults), the loader turns a :class:`Capacity` into the program's -D
constants, and tests/bpf/test_abi.py checks that bpf/maps.h falls back to
exactly these defaults. Capacities are fixed for the life of a pinned map
set: changing one needs a restart (the daemon migrates entries into new maps).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Capacity:
    """Map sizes; the defaults fit ~32,000 protected prefixes in ~1,000 groups with headroom."""

    prefixes: int = 262_144
    """allow + deny + ban entries (src_entries has one more: entry 0 means "none")."""
    hosts4: int = 262_144
    """IPv4 /25../32 entries expanded to hosts (host4)."""
    prefixes6: int = 65_536
    """IPv6 prefix entries (lpm6)."""
    groups: int = 4096
    """Protected groups + 1 (group 0 is the default)."""
    sources: int = 1_048_576
    """Per-source IPv4 buckets (buckets4, LRU)."""
    sources6: int = 262_144
    """Per-source IPv6 buckets (buckets6, LRU)."""
    destinations: int = 131_072
    """Per-destination counters (dst_stats, LRU)."""
    verified: int = 262_144
    """SYN-authenticated sources (verified4 and verified6, LRU)."""
    sample_pages: int = 64
    """Pages of the samples ring buffer (not a policy key)."""

    @property
    def src_entries(self) -> int:
        return self.prefixes + 1

    def defines(self) -> dict[str, int]:
        """The -D constants of bpf/maps.h that size its maps."""
        return {
            "FG_MAX_SRC_ENTRIES": self.src_entries,
            "FG_MAX_HOSTS4": self.hosts4,
            "FG_MAX_PREFIXES6": self.prefixes6,
            "FG_MAX_GROUPS": self.groups,
            "FG_MAX_SOURCES4": self.sources,
            "FG_MAX_SOURCES6": self.sources6,
            "FG_MAX_DSTS": self.destinations,
            "FG_MAX_VERIFIED": self.verified,
            "FG_SAMPLE_PAGES": self.sample_pages,
        }

    def map_sizes(self) -> dict[str, int]:
        """max_entries of each pinned map that a capacity sizes, by map name."""
        return {
            "src_entries": self.src_entries, "host4": self.hosts4, "lpm6": self.prefixes6,
            "groups": self.groups, "buckets4": self.sources, "buckets6": self.sources6,
            "dst_stats": self.destinations, "verified4": self.verified, "verified6": self.verified,
        }


DEFAULT = Capacity()
#: The policy keys of the capacity block, in order (every field but sample_pages).
POLICY_KEYS = tuple(f.name for f in dataclasses.fields(Capacity) if f.name != "sample_pages")
