"""ctypes mirror of bpf/abi.h — the contract with the XDP program.

Every structure, constant and enum here has a twin in bpf/abi.h.
tests/bpf/test_abi.py compiles static assertions generated from this module
with the same compiler that builds the program, so the two cannot drift.
Besides the mirror: what each verdict reason does to a packet
(:data:`FATE`), the numpy dtypes of the structures read in bulk, and the
traffic classes' names as the policy spells them.
"""

from __future__ import annotations

import ctypes as ct
import enum
from collections.abc import Mapping
from typing import Any

import numpy as np

ABI_VERSION = 2

IF_SLOTS = 16
IFSLOT_TABLE = 256
MAX_RULES = 64
MAX_WATCH = 256
MAX_EXT_HDRS = 8
DIR4_BITS = 24
BYTE_COST_SHIFT = 16
LIMIT_CLASSES = 6

CFG_MONITOR = 1 << 0
CFG_MALFORMED_PASS = 1 << 1

ADDR_HOSTS = 1 << 0
ADDR_BANNED = 1 << 1

SRC_BAN = 1 << 0
SRC_BAN_MONITOR = 1 << 1
SRC_ALLOW = 1 << 2
SRC_ALLOW_MONITOR = 1 << 3

GROUP_MONITOR = 1 << 0
GROUP_TIGHT = 1 << 1
GROUP_SYN_AUTH = 1 << 2
GROUP_SYN_ALWAYS = 1 << 3

RULE_MONITOR = 1 << 0

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)


class Reason(enum.IntEnum):
    """Why a packet got its verdict (enum fg_reason)."""

    PASSED = 0
    NON_IP = 1
    ALLOWLISTED = 2
    BANNED = 3
    RULE_DROP = 4
    RULE_RATE_LIMITED = 5
    RATE_LIMITED = 6
    MALFORMED = 7
    SYN_CHALLENGED = 8
    SYN_CHALLENGE_LIMITED = 9
    SYN_VERIFIED = 10
    SYN_AUTH_FAILED = 11
    MPLS = 12

    @property
    def label(self) -> str:
        return self.name.lower()


REASON_MAX = len(Reason)


class Fate(enum.Enum):
    """What a verdict did to the packet."""

    DELIVERED = "delivered"  # passed on to the stack
    DROPPED = "dropped"  # discarded
    ANSWERED = "answered"  # answered from XDP instead (a SYN challenge): the stack never sees it
    CONSUMED = "consumed"  # the answer to a challenge, used up by the program


#: The one table of what each reason means; counters, metrics, the demo and the
#: benches all read it. MALFORMED is DROPPED unless the policy says ``malformed: pass``.
FATE: Mapping[Reason, Fate] = {
    Reason.PASSED: Fate.DELIVERED,
    Reason.NON_IP: Fate.DELIVERED,
    Reason.ALLOWLISTED: Fate.DELIVERED,
    Reason.BANNED: Fate.DROPPED,
    Reason.RULE_DROP: Fate.DROPPED,
    Reason.RULE_RATE_LIMITED: Fate.DROPPED,
    Reason.RATE_LIMITED: Fate.DROPPED,
    Reason.MALFORMED: Fate.DROPPED,
    Reason.SYN_CHALLENGED: Fate.ANSWERED,
    Reason.SYN_CHALLENGE_LIMITED: Fate.DROPPED,
    Reason.SYN_VERIFIED: Fate.CONSUMED,
    Reason.SYN_AUTH_FAILED: Fate.DROPPED,
    Reason.MPLS: Fate.DELIVERED,
}
#: Reasons that discard the packet (the metrics' "dropped", the alert rules' regular expression).
DROPPING = frozenset(r for r, f in FATE.items() if f is Fate.DROPPED)
#: Reasons whose packet does not reach the stack: what the program counts as dropped per group
#: and destination (its ``action != XDP_PASS``), when not under monitor.
NOT_DELIVERED = frozenset(r for r, f in FATE.items() if f is not Fate.DELIVERED)


def fate(reason: Reason | int, *, malformed_pass: bool = False) -> Fate:
    """What a verdict with this reason did to its packet (not under monitor)."""
    r = Reason(reason)
    if r is Reason.MALFORMED and malformed_pass:
        return Fate.DELIVERED
    return FATE[r]


class TrafficClass(enum.IntEnum):
    """Traffic classes (enum fg_class)."""

    TCP_SYN = 0
    TCP_OTHER = 1
    UDP = 2
    ICMP = 3
    FRAGMENT = 4
    OTHER = 5
    NON_IP = 6

    @property
    def label(self) -> str:
        return self.name.lower()


CLASS_MAX = len(TrafficClass)
LIMIT_CLASS_LIST = [c for c in TrafficClass if c < LIMIT_CLASSES]
#: The classes with per-source limits, by the names the policy uses (``limits.tcp_syn``, ...), in
#: enum order: index i of every per-class array is class i.
LIMIT_CLASS_NAMES: tuple[str, ...] = tuple(c.label for c in LIMIT_CLASS_LIST)


class Origin(enum.IntEnum):
    """Who wrote an entry (enum fg_origin)."""

    POLICY = 0
    OPERATOR = 1
    AUTO = 2

    @property
    def label(self) -> str:
        return self.name.lower()


ORIGIN_MAX = len(Origin)


class RuleAction(enum.IntEnum):
    DROP = 0
    RATE_LIMIT = 1
    SOURCE_LIMIT = 2


STATS_ENTRIES = IF_SLOTS * REASON_MAX * CLASS_MAX * 2
WATCH_ENTRIES = MAX_WATCH * REASON_MAX * 2


def stats_index(slot: int, reason: int, cls: int, monitor: int) -> int:
    """Index into the stats array (FG_STATS_INDEX)."""
    return (((slot * REASON_MAX + reason) * CLASS_MAX + cls) * 2) + monitor


def watch_index(watch: int, reason: int, monitor: int) -> int:
    """Index into the watch_stats array (FG_WATCH_INDEX)."""
    return ((watch * REASON_MAX) + reason) * 2 + monitor


u8, u16, u32, u64 = ct.c_uint8, ct.c_uint16, ct.c_uint32, ct.c_uint64
Addr = u32 * 4


class Key128(ct.Structure):
    _fields_ = [("k0", u64), ("k1", u64)]


class IfSlot(ct.Structure):
    _fields_ = [("ifindex", u32), ("slot", u32)]


class AddrInfo(ct.Structure):
    _fields_ = [("src_entry", u32), ("group", u16), ("flags", u8), ("pad", u8)]


class SrcRecord(ct.Structure):
    _fields_ = [("expires", u64), ("created", u64), ("flags", u32), ("reason", u32)]


class SrcEntry(ct.Structure):
    _fields_ = [
        ("ban_expires", u64),
        ("ban_monitor_expires", u64),
        ("allow_expires", u64),
        ("allow_monitor_expires", u64),
        ("flags", u32),
        ("family", u8),
        ("prefix_len", u8),
        ("watch", u16),
        ("addr", Addr),
        ("ban", SrcRecord * ORIGIN_MAX),
        ("allow", SrcRecord * ORIGIN_MAX),
    ]


class Rate(ct.Structure):
    _fields_ = [
        ("pkt_cost_ns", u64),
        ("pkt_tolerance_ns", u64),
        ("byte_cost_fp", u64),
        ("byte_tolerance_ns", u64),
    ]


class Config(ct.Structure):
    _fields_ = [
        ("flags", u32),
        ("sample_every", u32),
        ("n_rules", u32),
        ("v6_bucket_len", u32),
        ("v6_bucket_mask", Addr),
        ("generation", u64),
        ("syn_verified_ttl_ns", u64),
        ("syn_key", Key128 * 2),
        ("challenge_total", Rate),
    ]


class Group(ct.Structure):
    _fields_ = [
        ("base", Rate * LIMIT_CLASSES),
        ("tight", Rate * LIMIT_CLASSES),
        ("challenge", Rate),
        ("tight_expires", u64),
        ("syn_auth_expires", u64),
        ("flags", u32),
        ("tight_origin", u8),
        ("pad", u8 * 3),
    ]


class GroupState(ct.Structure):
    _fields_ = [("challenge_tat", u64), ("pad", u64)]


class Rule(ct.Structure):
    _fields_ = [
        ("expires", u64),
        ("dst", Addr),
        ("dst_mask", Addr),
        ("family", u8),
        ("dst_len", u8),
        ("proto", u8),
        ("action", u8),
        ("tcp_flags_mask", u8),
        ("tcp_flags_value", u8),
        ("origin", u8),
        ("flags", u8),
        ("sport_lo", u16),
        ("sport_hi", u16),
        ("dport_lo", u16),
        ("dport_hi", u16),
        ("id", u32),
        ("group", u16),
        ("class_match", u8),
        ("pad", u8),
        ("rate", Rate),
    ]


class RuleState(ct.Structure):
    _fields_ = [("pkt_tat", u64), ("byte_tat", u64)]


class BucketKey4(ct.Structure):
    _fields_ = [("addr", u32), ("group", u16), ("cls", u8), ("pad", u8)]


class BucketKey6(ct.Structure):
    _fields_ = [("addr", Addr), ("group", u16), ("cls", u8), ("pad", u8)]


class Bucket(ct.Structure):
    _fields_ = [("pkt_tat", u64), ("byte_tat", u64)]


class Counter(ct.Structure):
    _fields_ = [("packets", u64), ("bytes", u64)]


class GroupCounter(ct.Structure):
    _fields_ = [
        ("packets", u64),
        ("bytes", u64),
        ("dropped_packets", u64),
        ("dropped_bytes", u64),
        ("new_sources", u64),
    ]


class DstKey(ct.Structure):
    _fields_ = [("addr", Addr), ("family", u8), ("pad", u8 * 3)]


class DstCounter(ct.Structure):
    _fields_ = [
        ("packets", u64 * LIMIT_CLASSES),
        ("bytes", u64 * LIMIT_CLASSES),
        ("dropped", u64 * LIMIT_CLASSES),
        ("group", u16),
        ("pad", u16 * 3),
    ]


class VerifiedKey6(ct.Structure):
    _fields_ = [("addr", Addr)]


class Verified(ct.Structure):
    _fields_ = [("expires", u64)]


class Sample(ct.Structure):
    _fields_ = [
        ("ts", u64),
        ("src", Addr),
        ("dst", Addr),
        ("sport", u16),
        ("dport", u16),
        ("group", u16),
        ("len", u16),
        ("family", u8),
        ("proto", u8),
        ("cls", u8),
        ("reason", u8),
        ("tcp_flags", u8),
        ("monitor", u8),
        ("ifslot", u8),
        ("action", u8),
    ]


class Lpm6Key(ct.Structure):
    """Key of the lpm6 trie (maps.h: struct fg_lpm6_key)."""

    _fields_ = [("prefixlen", u32), ("addr", Addr)]


def dtype_of(struct: type[ct.Structure]) -> np.dtype[Any]:
    """The numpy dtype of a mirrored structure (same size, offsets and field names)."""
    return np.dtype(struct)


#: dtypes of the structures the agent reads and writes in bulk (mmap'd arrays, batch reads).
SRC_ENTRY_DTYPE = dtype_of(SrcEntry)
SRC_RECORD_DTYPE = dtype_of(SrcRecord)
ADDR_INFO_DTYPE = dtype_of(AddrInfo)


# C name of each mirrored struct, for the layout test. ctypes field names that
# differ from C because of Python keywords or clarity: `cls` is C's `class`.
C_STRUCTS: dict[str, type[ct.Structure]] = {
    "fg_key128": Key128,
    "fg_config": Config,
    "fg_ifslot": IfSlot,
    "fg_addr_info": AddrInfo,
    "fg_src_record": SrcRecord,
    "fg_src_entry": SrcEntry,
    "fg_rate": Rate,
    "fg_group": Group,
    "fg_group_state": GroupState,
    "fg_rule": Rule,
    "fg_rule_state": RuleState,
    "fg_bucket_key4": BucketKey4,
    "fg_bucket_key6": BucketKey6,
    "fg_bucket": Bucket,
    "fg_counter": Counter,
    "fg_group_counter": GroupCounter,
    "fg_dst_key": DstKey,
    "fg_dst_counter": DstCounter,
    "fg_verified_key6": VerifiedKey6,
    "fg_verified": Verified,
    "fg_sample": Sample,
}
C_FIELD_NAMES = {"cls": "class"}

# Constants checked against the header, by C macro name.
C_CONSTANTS: dict[str, int] = {
    "FG_ABI_VERSION": ABI_VERSION,
    "FG_IF_SLOTS": IF_SLOTS,
    "FG_IFSLOT_TABLE": IFSLOT_TABLE,
    "FG_MAX_RULES": MAX_RULES,
    "FG_MAX_WATCH": MAX_WATCH,
    "FG_WATCH_ENTRIES": WATCH_ENTRIES,
    "FG_MAX_EXT_HDRS": MAX_EXT_HDRS,
    "FG_DIR4_BITS": DIR4_BITS,
    "FG_BYTE_COST_SHIFT": BYTE_COST_SHIFT,
    "FG_LIMIT_CLASSES": LIMIT_CLASSES,
    "FG_CFG_MONITOR": CFG_MONITOR,
    "FG_CFG_MALFORMED_PASS": CFG_MALFORMED_PASS,
    "FG_ADDR_HOSTS": ADDR_HOSTS,
    "FG_ADDR_BANNED": ADDR_BANNED,
    "FG_SRC_BAN": SRC_BAN,
    "FG_SRC_BAN_MONITOR": SRC_BAN_MONITOR,
    "FG_SRC_ALLOW": SRC_ALLOW,
    "FG_SRC_ALLOW_MONITOR": SRC_ALLOW_MONITOR,
    "FG_GROUP_MONITOR": GROUP_MONITOR,
    "FG_GROUP_TIGHT": GROUP_TIGHT,
    "FG_GROUP_SYN_AUTH": GROUP_SYN_AUTH,
    "FG_GROUP_SYN_ALWAYS": GROUP_SYN_ALWAYS,
    "FG_RULE_MONITOR": RULE_MONITOR,
    "FG_STATS_ENTRIES": STATS_ENTRIES,
    "FG_REASON_MAX": REASON_MAX,
    "FG_CLASS_MAX": CLASS_MAX,
    "FG_ORIGIN_MAX": ORIGIN_MAX,
}
C_ENUMS: dict[str, type[enum.IntEnum]] = {
    "FG_REASON_": Reason,
    "FG_CLASS_": TrafficClass,
    "FG_ORIGIN_": Origin,
    "FG_RULE_ACTION_": RuleAction,
}
