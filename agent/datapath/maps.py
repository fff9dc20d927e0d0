"""Typed access to the program's maps.

`Table` wraps one map fd with the ctypes types of abi.py: single-element
get/set/delete, whole-map reads in batches (one syscall per 64k entries, not
one per key) and per-CPU sums. `Maps` opens every map of a program, either
from a freshly built Program or from the pins of a running one, so the CLI,
the daemon and the tests share one way in.
"""

from __future__ import annotations

import ctypes as ct
import errno
import mmap
import os
from collections.abc import Iterator
from typing import Any

from agent.contract import abi

from . import bpfsys as sysbpf
from .errors import BpfSyscallError, DatapathError

_BPF_MAP_TYPE_ARRAY = 2
_BPF_MAP_TYPE_PERCPU_ARRAY = 6
_BPF_MAP_TYPE_LPM_TRIE = 11

# ctypes types are too loosely typed for a generic Table to help mypy:
# keys and values are Any here and checked against the kernel's sizes.
K = Any
V = Any

# map name -> (key type, value type, per-CPU)
MAP_TYPES: dict[str, tuple[Any, Any, bool]] = {
    "config": (ct.c_uint32, abi.Config, False),
    "ifslots": (ct.c_uint32, abi.IfSlot, False),
    "dir4": (ct.c_uint32, abi.AddrInfo, False),
    "host4": (ct.c_uint32, abi.AddrInfo, False),
    "lpm6": (abi.Lpm6Key, abi.AddrInfo, False),
    "src_entries": (ct.c_uint32, abi.SrcEntry, False),
    "groups": (ct.c_uint32, abi.Group, False),
    "group_state": (ct.c_uint32, abi.GroupState, False),
    "challenge_state": (ct.c_uint32, abi.GroupState, False),
    "rules": (ct.c_uint32, abi.Rule, False),
    "rule_state": (ct.c_uint32, abi.RuleState, False),
    "buckets4": (abi.BucketKey4, abi.Bucket, False),
    "buckets6": (abi.BucketKey6, abi.Bucket, False),
    "stats": (ct.c_uint32, abi.Counter, True),
    "group_stats": (ct.c_uint32, abi.GroupCounter, True),
    "dst_stats": (abi.DstKey, abi.DstCounter, True),
    "rule_stats": (ct.c_uint32, abi.Counter, True),
    "watch_stats": (ct.c_uint32, abi.Counter, True),
    "verified4": (ct.c_uint32, abi.Verified, False),
    "verified6": (abi.VerifiedKey6, abi.Verified, False),
}
PINNED_MAPS = tuple(MAP_TYPES)


class Table:
    """One BPF map with typed keys and values."""

    def __init__(self, name: str, fd: int, key_type: Any, value_type: Any, percpu: bool) -> None:
        self.name = name
        self.fd = fd
        self.key_type = key_type
        self.value_type = value_type
        self.percpu = percpu
        info = sysbpf.map_info(fd)
        self.max_entries = int(info.max_entries)
        self.map_type = int(info.type)
        self.map_id = int(info.id)
        self.key_size = ct.sizeof(key_type)
        self.value_size = ct.sizeof(value_type)
        if info.key_size != self.key_size or info.value_size != self.value_size:
            raise DatapathError(
                f"map {name} has key/value sizes {info.key_size}/{info.value_size}, "
                f"expected {self.key_size}/{self.value_size}: the pins belong to another version; "
                f"run `floodguard detach` or let the daemon migrate them"
            )
        self.ncpus = sysbpf.possible_cpus() if percpu else 1
        self._stride = sysbpf.percpu_value_size(self.value_size) if percpu else self.value_size

    # --- single elements ---------------------------------------------------

    def key(self, k: Any) -> K:
        if isinstance(k, self.key_type):
            return k
        return self.key_type(k)

    def get(self, k: Any) -> V | None:
        """The value (per-CPU maps: the sum over CPUs) or None."""
        if self.percpu:
            raw = (ct.c_char * (self._stride * self.ncpus))()
            if not sysbpf.map_lookup(self.fd, self.key(k), raw):
                return None
            return self._sum(bytes(raw), 0)
        v = self.value_type()
        if not sysbpf.map_lookup(self.fd, self.key(k), v):
            return None
        return v

    def get_percpu(self, k: Any) -> list[V] | None:
        raw = (ct.c_char * (self._stride * self.ncpus))()
        if not sysbpf.map_lookup(self.fd, self.key(k), raw):
            return None
        data = bytes(raw)
        return [self.value_type.from_buffer_copy(data, i * self._stride) for i in range(self.ncpus)]

    def set(self, k: Any, v: V) -> None:
        if self.percpu:
            raw = (ct.c_char * (self._stride * self.ncpus))()
            for i in range(self.ncpus):
                ct.memmove(ct.addressof(raw) + i * self._stride, ct.addressof(v), self.value_size)
            sysbpf.map_update(self.fd, self.key(k), raw)
        else:
            sysbpf.map_update(self.fd, self.key(k), v)

    def delete(self, k: Any) -> bool:
        return sysbpf.map_delete(self.fd, self.key(k))

    # --- whole map ---------------------------------------------------------

    def read_raw(self) -> tuple[memoryview, memoryview, int]:
        """All entries as packed keys and values, in batches where the map
        type has them (LPM tries do not: key by key)."""
        vsize = self._stride * self.ncpus
        if self.map_type == _BPF_MAP_TYPE_LPM_TRIE:
            return sysbpf.lookup_iter(self.fd, self.key_size, vsize)
        return sysbpf.lookup_batch(self.fd, self.key_size, vsize, self.max_entries)

    def items(self) -> Iterator[tuple[K, V]]:
        """Every entry (per-CPU maps: summed over CPUs)."""
        keys, values, n = self.read_raw()
        vstride = self._stride * self.ncpus
        for i in range(n):
            k = self.key_type.from_buffer_copy(keys, i * self.key_size)
            if self.percpu:
                yield k, self._sum(values, i * vstride)
            else:
                yield k, self.value_type.from_buffer_copy(values, i * vstride)

    def update_many(self, pairs: list[tuple[Any, V]]) -> None:
        if not pairs:
            return
        if self.percpu:
            for k, v in pairs:
                self.set(k, v)
            return
        keys = b"".join(bytes(self.key(k)) for k, _ in pairs)
        values = b"".join(bytes(v) for _, v in pairs)
        sysbpf.update_batch(self.fd, keys, values, len(pairs))

    def delete_many(self, keys: list[Any]) -> None:
        if keys:
            sysbpf.delete_batch(self.fd, b"".join(bytes(self.key(k)) for k in keys), len(keys))

    @property
    def is_array(self) -> bool:
        return self.map_type in (_BPF_MAP_TYPE_ARRAY, _BPF_MAP_TYPE_PERCPU_ARRAY)

    def clear(self) -> None:
        """Delete every entry (hash maps) or zero every entry (arrays)."""
        if self.is_array:
            zeros = bytes(self._stride * self.ncpus * self.max_entries)
            keys = b"".join(i.to_bytes(4, "little") for i in range(self.max_entries))
            sysbpf.update_batch(self.fd, keys, zeros, self.max_entries)
            return
        raw_keys, _, n = self.read_raw()
        if n:
            sysbpf.delete_batch(self.fd, raw_keys, n)

    def _sum(self, data: bytes | memoryview, offset: int) -> V:
        """Sum a per-CPU value field by field (every field is a counter)."""
        total = self.value_type.from_buffer_copy(data, offset)
        for cpu in range(1, self.ncpus):
            other = self.value_type.from_buffer_copy(data, offset + cpu * self._stride)
            _add_into(total, other)
        return total

    def mmap(self) -> mmap.mmap:
        """Map an array created with BPF_F_MMAPABLE into this process."""
        size = (self.value_size * self.max_entries + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
        return mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def close(self) -> None:
        sysbpf.close(self.fd)


def _add_into(total: Any, other: Any) -> None:
    for name, ftype in total._fields_:
        if name.startswith("pad"):
            continue
        if isinstance(ftype, type) and issubclass(ftype, ct.Array):
            arr_t, arr_o = getattr(total, name), getattr(other, name)
            for i in range(len(arr_t)):
                arr_t[i] += arr_o[i]
        elif name == "group":
            # A label written by whichever CPU created the entry; the
            # other CPUs' copies hold 0.
            setattr(total, name, max(getattr(total, name), getattr(other, name)))
        else:
            setattr(total, name, getattr(total, name) + getattr(other, name))


class Maps:
    """Every map of one program instance (or of its pins)."""

    def __init__(self, fds: dict[str, int], pin_dir: str) -> None:
        self.pin_dir = pin_dir
        self.tables: dict[str, Table] = {}
        for name, fd in fds.items():
            key_t, val_t, percpu = MAP_TYPES[name]
            self.tables[name] = Table(name, fd, key_t, val_t, percpu)

    @classmethod
    def from_program(cls, program: Any) -> Maps:
        """Open the maps of a freshly built Program (duplicating its fds)."""
        return cls({name: os.dup(program.map_fd(name)) for name in PINNED_MAPS}, program.pin_dir)

    @classmethod
    def from_pins(cls, pin_dir: str) -> Maps:
        """Open the pinned maps of a running (or stopped) floodguard."""
        fds: dict[str, int] = {}
        try:
            for name in PINNED_MAPS:
                fds[name] = sysbpf.obj_get(f"{pin_dir}/{name}")
        except Exception:
            sysbpf.close(list(fds.values()))
            raise
        return cls(fds, pin_dir)

    def __getitem__(self, name: str) -> Table:
        return self.tables[name]

    def close(self) -> None:
        for t in self.tables.values():
            t.close()
        self.tables.clear()

    def __enter__(self) -> Maps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- counting entries without reading them all (map fill metrics) ------------------------

# Hash maps are counted exactly up to this many entries, and estimated
# beyond it (see count_hash_entries): a full walk of a 1M-entry LRU map costs
# ~0.35 s of kernel time, a sample of 64k costs ~20 ms.
SAMPLE_ENTRIES = 65_536
# ... and never more than this many bytes read per map per scrape: a per-CPU
# hash copies one value per CPU for every entry.
SAMPLE_BYTES = 16 << 20


def count_hash_entries(
    table: Table, max_entries: int = SAMPLE_ENTRIES, max_bytes: int = SAMPLE_BYTES
) -> tuple[int, bool]:
    """Entries of a hash map: (count, exact).

    Reads the map with BPF_MAP_LOOKUP_BATCH until it ends (exact) or the
    sample budget is spent. The batch token the kernel hands back is the
    index of the next hash bucket (kernel/bpf/hashtab.c), and keys spread
    uniformly over the roundup_pow_of_two(max_entries) buckets, so entries
    seen / buckets walked x buckets estimates the whole map (a 64k sample of a
    1M map: about ±0.4 %). If the token ever stops looking like a bucket index,
    the walk simply goes on to the end and is exact.

    """
    vsize = sysbpf.percpu_value_size(table.value_size) * table.ncpus if table.percpu else table.value_size
    entry = table.key_size + vsize
    n_buckets = 1 << max(0, table.max_entries - 1).bit_length()
    budget = max(1, min(max_entries, max_bytes // entry))
    chunk = max(64, min(budget, table.max_entries))
    keys = ct.create_string_buffer(table.key_size * chunk)
    values = ct.create_string_buffer(vsize * chunk)
    token = ct.c_uint64(0)
    total = 0
    first = True
    while True:
        attr = sysbpf.BatchAttr(
            in_batch=0 if first else ct.addressof(token),
            out_batch=ct.addressof(token),
            keys=ct.addressof(keys),
            values=ct.addressof(values),
            count=chunk,
            map_fd=table.fd,
        )
        try:
            sysbpf.bpf(sysbpf.BPF_MAP_LOOKUP_BATCH, attr, what=table.name)
        except BpfSyscallError as e:
            if e.errno == errno.ENOENT:
                return total + attr.count, True
            if e.errno == errno.ENOSPC and attr.count == 0:
                # one bucket holds more entries than the chunk: grow and retry it
                chunk *= 2
                keys = ct.create_string_buffer(table.key_size * chunk)
                values = ct.create_string_buffer(vsize * chunk)
                continue
            raise
        total += attr.count
        first = False
        walked = token.value & 0xFFFF_FFFF
        if total >= budget and 0 < walked < n_buckets:
            # a full map can estimate a little over its size; it is not
            return min(round(total * n_buckets / walked), table.max_entries), False


def count_lpm_entries(table: Table) -> int:
    """Entries of an LPM trie (no batch operations there): a key-only walk.

    Exact; ~4.5 µs a key, so 0.3 s for a full 64k-prefix lpm6 — the most
    expensive part of a scrape of full maps, and only the daemon writes the
    trie, so it is rarely anywhere near full.
    """
    a = (ct.c_char * table.key_size)()
    b = (ct.c_char * table.key_size)()
    cur: ct.Array[ct.c_char] | None = None
    nxt = a
    n = 0
    while sysbpf.next_key(table.fd, cur, nxt):
        n += 1
        cur, nxt = nxt, (b if nxt is a else a)
    return n
