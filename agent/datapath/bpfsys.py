"""The bpf(2) calls BCC's Python binding lacks, through ctypes.

Test-run, pinning, object lookup by id, info by fd and batched map
operations. Each function raises BpfSyscallError carrying the command and
errno, so callers can turn it into an operator-facing message.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno as errno_mod
import functools
import os
from collections.abc import Sequence
from typing import Any

from .errors import BpfSyscallError

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "riscv64": 280, "ppc64le": 361, "s390x": 351}

BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_MAP_LOOKUP_BATCH = 24
BPF_MAP_UPDATE_BATCH = 26
BPF_MAP_DELETE_BATCH = 27

BPF_ANY = 0

_COMMAND_NAMES = {
    BPF_MAP_LOOKUP_ELEM: "map lookup",
    BPF_MAP_UPDATE_ELEM: "map update",
    BPF_MAP_DELETE_ELEM: "map delete",
    BPF_MAP_GET_NEXT_KEY: "map next key",
    BPF_OBJ_PIN: "pin",
    BPF_OBJ_GET: "open pin",
    BPF_PROG_TEST_RUN: "test run",
    BPF_PROG_GET_FD_BY_ID: "program by id",
    BPF_MAP_GET_FD_BY_ID: "map by id",
    BPF_OBJ_GET_INFO_BY_FD: "object info",
    BPF_MAP_LOOKUP_BATCH: "batch lookup",
    BPF_MAP_UPDATE_BATCH: "batch update",
    BPF_MAP_DELETE_BATCH: "batch delete",
}


class _ElemAttr(ct.Structure):
    _fields_ = [
        ("map_fd", ct.c_uint32),
        ("pad", ct.c_uint32),
        ("key", ct.c_uint64),
        ("value", ct.c_uint64),
        ("flags", ct.c_uint64),
    ]


class _ObjAttr(ct.Structure):
    _fields_ = [
        ("pathname", ct.c_uint64),
        ("bpf_fd", ct.c_uint32),
        ("file_flags", ct.c_uint32),
        ("path_fd", ct.c_int32),
        ("pad", ct.c_uint32),
    ]


class _TestRunAttr(ct.Structure):
    _fields_ = [
        ("prog_fd", ct.c_uint32),
        ("retval", ct.c_uint32),
        ("data_size_in", ct.c_uint32),
        ("data_size_out", ct.c_uint32),
        ("data_in", ct.c_uint64),
        ("data_out", ct.c_uint64),
        ("repeat", ct.c_uint32),
        ("duration", ct.c_uint32),
        ("ctx_size_in", ct.c_uint32),
        ("ctx_size_out", ct.c_uint32),
        ("ctx_in", ct.c_uint64),
        ("ctx_out", ct.c_uint64),
        ("flags", ct.c_uint32),
        ("cpu", ct.c_uint32),
        ("batch_size", ct.c_uint32),
        ("pad", ct.c_uint32),
    ]


class _IdAttr(ct.Structure):
    _fields_ = [("id", ct.c_uint32), ("next_id", ct.c_uint32), ("open_flags", ct.c_uint32)]


class _InfoAttr(ct.Structure):
    _fields_ = [("bpf_fd", ct.c_uint32), ("info_len", ct.c_uint32), ("info", ct.c_uint64)]


class BatchAttr(ct.Structure):
    _fields_ = [
        ("in_batch", ct.c_uint64),
        ("out_batch", ct.c_uint64),
        ("keys", ct.c_uint64),
        ("values", ct.c_uint64),
        ("count", ct.c_uint32),
        ("map_fd", ct.c_uint32),
        ("elem_flags", ct.c_uint64),
        ("flags", ct.c_uint64),
    ]


class ProgInfo(ct.Structure):
    """The head of struct bpf_prog_info (the kernel copies what fits)."""

    _fields_ = [
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("tag", ct.c_uint8 * 8),
        ("jited_prog_len", ct.c_uint32),
        ("xlated_prog_len", ct.c_uint32),
        ("jited_prog_insns", ct.c_uint64),
        ("xlated_prog_insns", ct.c_uint64),
        ("load_time", ct.c_uint64),
        ("created_by_uid", ct.c_uint32),
        ("nr_map_ids", ct.c_uint32),
        ("map_ids", ct.c_uint64),
        ("name", ct.c_char * 16),
    ]


class MapInfo(ct.Structure):
    """The head of struct bpf_map_info."""

    _fields_ = [
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("key_size", ct.c_uint32),
        ("value_size", ct.c_uint32),
        ("max_entries", ct.c_uint32),
        ("map_flags", ct.c_uint32),
        ("name", ct.c_char * 16),
    ]


@functools.cache
def _libc() -> ct.CDLL:
    return ct.CDLL(None, use_errno=True)


@functools.cache
def _sys_bpf() -> int:
    machine = os.uname().machine
    if machine not in _SYS_BPF:
        raise BpfSyscallError("bpf", errno_mod.ENOSYS, f"unsupported architecture {machine}")
    return _SYS_BPF[machine]


def bpf(cmd: int, attr: ct.Structure, *, what: str = "") -> int:
    rc: int = _libc().syscall(_sys_bpf(), ct.c_int(cmd), ct.byref(attr), ct.c_uint(ct.sizeof(attr)))
    if rc < 0:
        err = ct.get_errno()
        raise BpfSyscallError(_COMMAND_NAMES.get(cmd, str(cmd)), err, what)
    return rc


@functools.cache
def possible_cpus() -> int:
    """Number of possible CPUs: per-CPU map values have one slot each."""
    with open("/sys/devices/system/cpu/possible") as f:
        spec = f.read().strip()
    n = 0
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        n = max(n, int(hi or lo) + 1)
    return n


def percpu_value_size(size: int) -> int:
    """Per-CPU values are laid out one per CPU, each rounded up to 8 bytes."""
    return (size + 7) // 8 * 8


# --- objects -----------------------------------------------------------------


def obj_pin(fd: int, path: str) -> None:
    p = ct.create_string_buffer(path.encode())
    bpf(BPF_OBJ_PIN, _ObjAttr(pathname=ct.addressof(p), bpf_fd=fd), what=path)


def obj_get(path: str) -> int:
    p = ct.create_string_buffer(path.encode())
    return bpf(BPF_OBJ_GET, _ObjAttr(pathname=ct.addressof(p)), what=path)


def prog_fd_by_id(prog_id: int) -> int:
    return bpf(BPF_PROG_GET_FD_BY_ID, _IdAttr(id=prog_id), what=f"program id {prog_id}")


def map_fd_by_id(map_id: int) -> int:
    return bpf(BPF_MAP_GET_FD_BY_ID, _IdAttr(id=map_id), what=f"map id {map_id}")


def prog_info(fd: int) -> ProgInfo:
    info = ProgInfo()
    bpf(BPF_OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=ct.sizeof(info), info=ct.addressof(info)))
    return info


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    bpf(BPF_OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=ct.sizeof(info), info=ct.addressof(info)))
    return info


def prog_map_ids(fd: int) -> list[int]:
    """Ids of the maps a program uses (to find its maps from an attached program)."""
    n = prog_info(fd).nr_map_ids
    ids = (ct.c_uint32 * max(n, 1))()
    info = ProgInfo(nr_map_ids=n, map_ids=ct.addressof(ids))
    bpf(BPF_OBJ_GET_INFO_BY_FD, _InfoAttr(bpf_fd=fd, info_len=ct.sizeof(info), info=ct.addressof(info)))
    return list(ids[:n])


# --- single elements ---------------------------------------------------------


def map_lookup(fd: int, key: Any, value: Any) -> bool:
    """Read one element into `value`; False when the key is absent."""
    attr = _ElemAttr(map_fd=fd, key=ct.addressof(key), value=ct.addressof(value))
    try:
        bpf(BPF_MAP_LOOKUP_ELEM, attr)
    except BpfSyscallError as e:
        if e.errno == errno_mod.ENOENT:
            return False
        raise
    return True


def map_update(fd: int, key: Any, value: Any, flags: int = BPF_ANY) -> None:
    attr = _ElemAttr(map_fd=fd, key=ct.addressof(key), value=ct.addressof(value), flags=flags)
    bpf(BPF_MAP_UPDATE_ELEM, attr)


def map_delete(fd: int, key: Any) -> bool:
    """Delete one element; False when it was absent."""
    attr = _ElemAttr(map_fd=fd, key=ct.addressof(key))
    try:
        bpf(BPF_MAP_DELETE_ELEM, attr)
    except BpfSyscallError as e:
        if e.errno == errno_mod.ENOENT:
            return False
        raise
    return True


# --- batches -----------------------------------------------------------------


def lookup_batch(fd: int, key_size: int, value_size: int, max_entries: int) -> tuple[memoryview, memoryview, int]:
    """Read a whole map in as few calls as the kernel allows.

    Returns (keys, values, count) as packed buffers: key i is
    keys[i*key_size:(i+1)*key_size]; for per-CPU maps pass the full per-CPU
    value size (percpu_value_size(size) * possible_cpus()). The kernel
    writes straight into one buffer per side: no per-chunk copies (a tick
    reads ~40 MB of per-destination counters).
    """
    import numpy as np

    cap = max(max_entries, 1)
    keys = np.empty(cap * key_size, dtype=np.uint8)
    values = np.empty(cap * value_size, dtype=np.uint8)
    kbase, vbase = keys.ctypes.data, values.ctypes.data
    batch = ct.create_string_buffer(max(key_size, 8))
    total = 0
    first = True
    while total < cap:
        attr = BatchAttr(
            in_batch=0 if first else ct.addressof(batch),
            out_batch=ct.addressof(batch),
            keys=kbase + total * key_size,
            values=vbase + total * value_size,
            count=min(65536, cap - total),
            map_fd=fd,
        )
        done = False
        try:
            bpf(BPF_MAP_LOOKUP_BATCH, attr)
        except BpfSyscallError as e:
            if e.errno != errno_mod.ENOENT:
                raise
            done = True
        total += attr.count
        first = False
        if done or attr.count == 0:
            break
    return keys.data[: total * key_size], values.data[: total * value_size], total


def next_key(fd: int, key: Any, out: Any) -> bool:
    """Fill `out` with the key after `key` (None: the first); False at the end."""
    attr = _ElemAttr(map_fd=fd, key=ct.addressof(key) if key is not None else 0, value=ct.addressof(out))
    try:
        bpf(BPF_MAP_GET_NEXT_KEY, attr)
    except BpfSyscallError as e:
        if e.errno == errno_mod.ENOENT:
            return False
        raise
    return True


def lookup_iter(fd: int, key_size: int, value_size: int) -> tuple[memoryview, memoryview, int]:
    """lookup_batch for maps without batch support (LPM tries): key by key."""
    keys = bytearray()
    values = bytearray()
    cur = None
    nxt = (ct.c_char * key_size)()
    val = (ct.c_char * value_size)()
    n = 0
    while next_key(fd, cur, nxt):
        k = (ct.c_char * key_size).from_buffer_copy(nxt)
        attr = _ElemAttr(map_fd=fd, key=ct.addressof(k), value=ct.addressof(val))
        try:
            bpf(BPF_MAP_LOOKUP_ELEM, attr)
        except BpfSyscallError as e:
            if e.errno != errno_mod.ENOENT:
                raise
        else:
            keys += bytes(k)
            values += bytes(val)
            n += 1
        cur = k
    return memoryview(keys), memoryview(values), n


def update_batch(fd: int, keys: bytes | bytearray, values: bytes | bytearray, count: int) -> None:
    """Write `count` packed key/value pairs in one call per 64k elements."""
    if count == 0:
        return
    key_size = len(keys) // count
    value_size = len(values) // count
    step = 65536
    kbuf = ct.create_string_buffer(bytes(keys), len(keys))
    vbuf = ct.create_string_buffer(bytes(values), len(values))
    for start in range(0, count, step):
        n = min(step, count - start)
        attr = BatchAttr(
            keys=ct.addressof(kbuf) + start * key_size,
            values=ct.addressof(vbuf) + start * value_size,
            count=n,
            map_fd=fd,
        )
        bpf(BPF_MAP_UPDATE_BATCH, attr)


def delete_batch(fd: int, keys: bytes | bytearray | memoryview, count: int) -> None:
    """Delete `count` packed keys; keys already absent are ignored."""
    if count == 0:
        return
    key_size = len(keys) // count
    kbuf = ct.create_string_buffer(bytes(keys), len(keys))
    step = 65536
    for start in range(0, count, step):
        n = min(step, count - start)
        attr = BatchAttr(keys=ct.addressof(kbuf) + start * key_size, count=n, map_fd=fd)
        try:
            bpf(BPF_MAP_DELETE_BATCH, attr)
        except BpfSyscallError as e:
            if e.errno != errno_mod.ENOENT:
                raise
            # The kernel stops at the first missing key: finish one by one.
            done = attr.count
            for i in range(start + done, start + n):
                k = ct.create_string_buffer(bytes(keys[i * key_size : (i + 1) * key_size]), key_size)
                attr1 = _ElemAttr(map_fd=fd, key=ct.addressof(k))
                try:
                    bpf(BPF_MAP_DELETE_ELEM, attr1)
                except BpfSyscallError as e1:
                    if e1.errno != errno_mod.ENOENT:
                        raise


# --- test run ----------------------------------------------------------------


class XdpMd(ct.Structure):
    """struct xdp_md as a test-run context (sets the ingress interface)."""

    _fields_ = [
        ("data", ct.c_uint32),
        ("data_end", ct.c_uint32),
        ("data_meta", ct.c_uint32),
        ("ingress_ifindex", ct.c_uint32),
        ("rx_queue_index", ct.c_uint32),
        ("egress_ifindex", ct.c_uint32),
    ]


class TestRunResult:
    """What BPF_PROG_TEST_RUN returned."""

    __slots__ = ("data_out", "duration_ns", "retval")

    def __init__(self, retval: int, data_out: bytes, duration_ns: int) -> None:
        self.retval = retval
        self.data_out = data_out
        self.duration_ns = duration_ns


def prog_test_run(
    prog_fd: int, data: bytes, *, repeat: int = 1, ingress_ifindex: int = 0, out_size: int | None = None
) -> TestRunResult:
    """Run an XDP program on one packet; duration is the mean ns per repeat."""
    size_out = out_size if out_size is not None else max(len(data) + 256, 1024)
    din = ct.create_string_buffer(data, len(data))
    dout = ct.create_string_buffer(size_out)
    attr = _TestRunAttr(
        prog_fd=prog_fd,
        data_size_in=len(data),
        data_in=ct.addressof(din),
        data_out=ct.addressof(dout),
        data_size_out=size_out,
        repeat=repeat,
    )
    ctx = None
    if ingress_ifindex:
        ctx = XdpMd(data=0, data_end=len(data), ingress_ifindex=ingress_ifindex)
        attr.ctx_in = ct.addressof(ctx)
        attr.ctx_size_in = ct.sizeof(ctx)
    bpf(BPF_PROG_TEST_RUN, attr)
    return TestRunResult(attr.retval, dout.raw[: attr.data_size_out], attr.duration)


def close(fds: Sequence[int] | int) -> None:
    for fd in [fds] if isinstance(fds, int) else fds:
        with contextlib.suppress(OSError):
            os.close(fd)
