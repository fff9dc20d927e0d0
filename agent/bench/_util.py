"""What the benchmarks share: a bpffs directory that always goes away, one
CPU to run on, timing through test-run, frames built by hand, the build
probe run in a child process, and xdp-filter's objects loaded with libbpf.

Nothing here runs on import; every resource is taken by a context manager
or a function call and released by it.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import dataclasses
import json
import os
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import FrameType
from typing import Any

from agent.contract.capacity import Capacity
from agent.datapath import bpfsys as sysbpf
from agent.datapath import loader
from agent.datapath.errors import DatapathError
from agent.datapath.loader import BuildOptions

BPFFS = "/sys/fs/bpf"
XDP_ACTIONS = {0: "aborted", 1: "drop", 2: "pass", 3: "tx", 4: "redirect"}
# bench.h's default: odd, so n * MULT visits every index below a mask 2^k - 1.
BENCH_MULT = 2654435761


class BenchError(DatapathError):
    """A benchmark could not set itself up; the message says what to do."""


# --- signals end the run; a bpffs directory that always goes away ---------------


@contextlib.contextmanager
def signals_end_the_run() -> Iterator[None]:
    """SIGTERM and SIGHUP end the run as Ctrl-C does, so every clean-up runs; in this process only.

    While held, SIGTERM and SIGHUP raise SystemExit(128 + signal) and SIGINT
    raises KeyboardInterrupt, so ``finally`` blocks and ``with`` exits run on
    any of them; the previous handlers come back afterwards. A signal ignored
    on purpose (SIGINT of a background job) stays ignored. Outside the main
    thread, where Python cannot set handlers, it does nothing.

    pyroute2 forks helpers (``IPRoute(netns=...)``, ``netns.create``) that
    inherit these handlers and a copy of this process's stack, and stops
    them with SIGTERM; Ctrl-C reaches them too (same process group). A helper
    that raised instead of dying would unwind the copied stack and run its
    ``finally`` blocks: the lab's teardown among them, destroying the lab
    under this process. So in any other process the handler exits at once.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if os.getpid() != owner:
            os._exit(128 + signum)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    wanted = [sig for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if signal.getsignal(sig) != signal.SIG_IGN]
    previous = {sig: signal.signal(sig, on_signal) for sig in wanted}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def pin_root(name: str) -> Iterator[str]:
    """/sys/fs/bpf/<name>-<pid>, removed with everything in it however the run ends
    (:func:`signals_end_the_run` is held meanwhile)."""
    root = f"{BPFFS}/{name}-{os.getpid()}"
    loader.check_environment(root)
    with signals_end_the_run():
        try:
            loader.remove_pins(root)
            os.makedirs(root)
            yield root
        finally:
            loader.remove_pins(root)


def share_pins(src_dir: str, dst_dir: str, names: Sequence[str]) -> None:
    """Pin the maps pinned in src_dir into dst_dir as well.

    BCC reuses a pinned map when its pin exists, so a program built into
    dst_dir afterwards works on the same maps (the restart path of the
    agent): scenarios share one populated table, each program keeps a pin
    directory of its own.
    """
    os.makedirs(dst_dir, exist_ok=True)
    for name in names:
        fd = sysbpf.obj_get(f"{src_dir}/{name}")
        try:
            sysbpf.obj_pin(fd, f"{dst_dir}/{name}")
        finally:
            sysbpf.close(fd)


@contextlib.contextmanager
def one_cpu() -> Iterator[int]:
    """Run on one CPU (the last one allowed) until the block ends.

    The bench counter in bench.h is per CPU: on one CPU every program sees
    the same address sequence from the same start, so answers can be
    checked packet for packet in total, and runs do not migrate mid-way.
    """
    allowed = os.sched_getaffinity(0)
    cpu = max(allowed)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, allowed)


# --- timing --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Timing:
    """Test-run results of one program on one packet."""

    ns_per_packet: float        # median over runs of the kernel's mean ns per repeat
    samples: tuple[int, ...]    # each run's mean ns per repeat
    retval: int                 # XDP action of the last packet
    packets: int                # packets run, warm-up included

    @property
    def action(self) -> str:
        return XDP_ACTIONS.get(self.retval, str(self.retval))


def time_program(fd: int, frame: bytes, repeat: int, runs: int) -> Timing:
    """One warm-up run, then `runs` runs of `repeat` packets; the median.

    One call with a large repeat per run: the kernel times its own loop,
    and a call costs a fixed ~15-20 ms that a small repeat would not
    amortise. The warm-up fills caches, and creates the per-source state a
    steady-state scenario needs before it is measured.
    """
    if repeat < 1 or runs < 1:
        raise ValueError("repeat and runs must be at least 1")
    sysbpf.prog_test_run(fd, frame, repeat=repeat)
    samples: list[int] = []
    retval = 0
    for _ in range(runs):
        res = sysbpf.prog_test_run(fd, frame, repeat=repeat)
        samples.append(int(res.duration_ns))
        retval = int(res.retval)
    return Timing(float(statistics.median(samples)), tuple(samples), retval, repeat * (runs + 1))


def time_program_on(fd: int, frame: bytes, repeat: int, runs: int, cpus: Sequence[int]) -> list[Timing]:
    """:func:`time_program` on every CPU of ``cpus`` at once: a thread pinned to each, released together.

    The test-run syscall releases the GIL (ctypes), so the programs really run side by side and
    contend for what they share: LRU locks, the same buckets, counters. bench.h's counter is per
    CPU, so every CPU visits the same sources in the same order: the worst case for shared state.
    """
    if not cpus:
        raise ValueError("no CPU to run on")
    start = threading.Barrier(len(cpus))
    results: list[Timing | None] = [None] * len(cpus)
    errors: list[BaseException] = []

    def work(i: int, cpu: int) -> None:
        try:
            os.sched_setaffinity(0, {cpu})  # this thread only
            start.wait()
            results[i] = time_program(fd, frame, repeat, runs)
        except BaseException as e:  # noqa: BLE001 — re-raised in the caller's thread
            start.abort()
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i, cpu), name=f"bench-cpu{cpu}") for i, cpu in enumerate(cpus)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:  # the first real error, not the barrier another thread's error broke
        raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
    return [t for t in results if t is not None]


def parse_cpus(text: str) -> tuple[int, ...]:
    """``--cpus``: a comma-separated list of CPUs this process may run on ("0,1"), each once."""
    try:
        cpus = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--cpus {text!r}: give CPU numbers separated by commas, e.g. 0,1") from None
    allowed = os.sched_getaffinity(0)
    bad = [c for c in cpus if c not in allowed]
    if bad:
        raise ValueError(f"--cpus {text!r}: CPU {', '.join(map(str, bad))} is not one this process may use "
                         f"({', '.join(map(str, sorted(allowed)))})")
    if len(set(cpus)) != len(cpus):
        raise ValueError(f"--cpus {text!r}: a CPU is listed twice")
    return cpus


# --- frames ----------------------------------------------------------------------

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
IPPROTO_TCP = 6
IPPROTO_UDP = 17
TCP_SYN = 0x02
TCP_ACK = 0x10
_MACS = bytes.fromhex("020000000002") + bytes.fromhex("020000000001")
_MIN_FRAME = 60  # without the FCS


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _l4(proto: int, tcp_flags: int, payload: bytes, sport: int, dport: int | None) -> bytes:
    if proto == IPPROTO_TCP:
        # sport, dport, seq, ack, data offset 5, flags, window, csum, urg
        return struct.pack("!HHIIBBHHH", sport, 443 if dport is None else dport, 1, 1, 5 << 4, tcp_flags,
                           65535, 0, 0) + payload
    return struct.pack("!HHHH", sport, 53 if dport is None else dport, 8 + len(payload), 0) + payload


def frame(
    src: str,
    dst: str,
    *,
    proto: int = IPPROTO_UDP,
    tcp_flags: int = TCP_ACK,
    vlans: Sequence[tuple[int, int]] = (),
    payload: bytes = b"",
    sport: int = 40000,
    dport: int | None = None,
    fragment_offset: int = 0,
) -> bytes:
    """An Ethernet frame (padded to 60 bytes) with optional VLAN tags
    ((TPID, VID), outermost first), IPv4 or IPv6 by the address form, and a
    TCP or UDP header (``dport`` None: 443 for TCP, 53 for UDP). A
    ``fragment_offset`` (IPv4, in 8-byte units) makes it a non-first
    fragment: the bytes after the IP header are then data, not a header.
    Built by hand so the bench needs no scapy."""
    import ipaddress

    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version != d.version:
        raise ValueError(f"{src} and {dst} are not of one family")
    if fragment_offset and s.version != 4:
        raise ValueError("fragment_offset is IPv4 only")
    if not 0 <= fragment_offset < 1 << 13:
        raise ValueError(f"fragment_offset {fragment_offset} does not fit 13 bits")
    l4 = _l4(proto, tcp_flags, payload, sport, dport)
    if s.version == 4:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, fragment_offset, 64, proto, 0, s.packed,
                          d.packed)
        hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
        l3, ethertype = hdr + l4, ETH_P_IP
    else:
        hdr = struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64, s.packed, d.packed)
        l3, ethertype = hdr + l4, ETH_P_IPV6
    # After the MACs: the outermost type, then per tag its TCI and the next type.
    types = [tpid for tpid, _vid in vlans] + [ethertype]
    eth = _MACS + struct.pack("!H", types[0])
    for i, (_tpid, vid) in enumerate(vlans):
        eth += struct.pack("!HH", vid, types[i + 1])
    data = eth + l3
    return data.ljust(_MIN_FRAME, b"\0")


# --- output ----------------------------------------------------------------------


def print_result(result: Mapping[str, Any], as_json: bool, render: Callable[[Any], str]) -> None:
    """A bench's result on stdout: as indented JSON, or as its human table."""
    if as_json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render(result))


# --- the build probe: the real program, in a child process ---------------------------------------


@dataclasses.dataclass(frozen=True)
class BuildProbe:
    seconds: float
    peak_rss_mb: float


def probe_build(pin_dir: str, capacity: Capacity) -> BuildProbe:
    """Build the real program (no bench flags) in a child process: its build
    time, and its peak RSS from the kernel's accounting of that child alone
    (wait4), so nothing this process or its earlier children did counts."""
    cap = json.dumps(dataclasses.asdict(capacity))
    code = "import sys; from agent.bench._util import build_child; sys.exit(build_child(sys.argv[1:]))"
    # stderr goes to a file: a pipe that fills up while stdout is read would block the child.
    with tempfile.TemporaryFile() as errfile:
        proc = subprocess.Popen([sys.executable, "-c", code, pin_dir, cap], stdout=subprocess.PIPE, stderr=errfile)
        assert proc.stdout is not None
        reaped = False
        try:
            out = proc.stdout.read()
            _pid, status, usage = os.wait4(proc.pid, 0)
            reaped = True
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if not reaped:
                # Interrupted: the child must not outlive us, nor pin into a directory being removed.
                proc.kill()
                proc.wait()
            proc.stdout.close()
        errfile.seek(0)
        err = errfile.read()
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-5:]
        raise BenchError("building the program in a child process failed:\n" + "\n".join(tail))
    seconds = float(json.loads(out)["build_seconds"])
    return BuildProbe(seconds, usage.ru_maxrss / 1024)


def build_child(argv: Sequence[str]) -> int:
    """Child side of probe_build: build into argv[0], print the time, clean up."""
    pin_dir, cap = argv[0], Capacity(**json.loads(argv[1]))
    try:
        prog = loader.build(BuildOptions(pin_dir=pin_dir, capacity=cap))
        try:
            print(json.dumps({"build_seconds": prog.build_seconds}))
        finally:
            prog.close()
    finally:
        loader.remove_pins(pin_dir)
    return 0


# --- libbpf, for xdp-filter's objects -----------------------------------------------------------

BPF_XDP_ATTACH = 37  # enum bpf_attach_type BPF_XDP: what libbpf gives SEC("xdp")


class LibbpfObject:
    """A BPF ELF object opened, adjusted and loaded with libbpf (ctypes).

    For the peer benchmark: xdp-filter ships compiled objects, and loading
    them as its own loader does (libbpf) keeps its code and its maps as
    they are. Pinned maps go where the caller says, never to the default
    /sys/fs/bpf/<name>, where a real xdp-filter may keep its own.
    """

    _SIGNATURES: Mapping[str, tuple[Any, list[Any]]] = {
        "libbpf_set_print": (ct.c_void_p, [ct.c_void_p]),
        "bpf_object__open_file": (ct.c_void_p, [ct.c_char_p, ct.c_void_p]),
        "bpf_object__load": (ct.c_int, [ct.c_void_p]),
        "bpf_object__close": (None, [ct.c_void_p]),
        "bpf_object__next_map": (ct.c_void_p, [ct.c_void_p, ct.c_void_p]),
        "bpf_object__find_map_by_name": (ct.c_void_p, [ct.c_void_p, ct.c_char_p]),
        "bpf_object__find_program_by_name": (ct.c_void_p, [ct.c_void_p, ct.c_char_p]),
        "bpf_map__name": (ct.c_char_p, [ct.c_void_p]),
        "bpf_map__set_pin_path": (ct.c_int, [ct.c_void_p, ct.c_char_p]),
        "bpf_map__set_max_entries": (ct.c_int, [ct.c_void_p, ct.c_uint32]),
        "bpf_map__fd": (ct.c_int, [ct.c_void_p]),
        "bpf_program__fd": (ct.c_int, [ct.c_void_p]),
        "bpf_program__set_expected_attach_type": (ct.c_int, [ct.c_void_p, ct.c_int]),
    }

    def __init__(self, path: str, pin_dir: str) -> None:
        try:
            lib = ct.CDLL("libbpf.so.1", use_errno=True)
        except OSError as e:
            raise BenchError("libbpf.so.1 is missing: install libbpf1 (apt-get install libbpf1)") from e
        for name, (restype, argtypes) in self._SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        # libbpf's notes about sections it skips (xdp-filter's "features")
        # would land in the middle of the table.
        lib.libbpf_set_print(None)
        self._lib = lib
        self.path = path
        obj = lib.bpf_object__open_file(path.encode(), None)
        if not obj:
            raise BenchError(f"libbpf cannot open {path}: {os.strerror(ct.get_errno())}")
        self._obj: int | None = obj
        self.loaded = False
        os.makedirs(pin_dir, exist_ok=True)
        m = None
        while True:
            m = lib.bpf_object__next_map(obj, m)
            if not m:
                break
            name = lib.bpf_map__name(m).decode()
            self._check(lib.bpf_map__set_pin_path(m, f"{pin_dir}/{name}".encode()), f"pin path of {name}")

    def _check(self, rc: int, what: str) -> None:
        if rc < 0:
            raise BenchError(f"libbpf: {what} in {self.path}: {os.strerror(-rc)}")

    def _handle(self) -> int:
        if self._obj is None:
            raise BenchError(f"{self.path} is closed")
        return self._obj

    def _map(self, name: str) -> int:
        m: int | None = self._lib.bpf_object__find_map_by_name(self._handle(), name.encode())
        if not m:
            raise BenchError(f"{self.path} has no map {name}")
        return m

    def _prog(self, name: str) -> int:
        p: int | None = self._lib.bpf_object__find_program_by_name(self._handle(), name.encode())
        if not p:
            raise BenchError(f"{self.path} has no program {name}")
        return p

    def set_max_entries(self, name: str, n: int) -> None:
        """Resize a map; only before load."""
        self._check(self._lib.bpf_map__set_max_entries(self._map(name), n), f"resizing {name}")

    def set_expected_attach_type(self, program: str, attach_type: int) -> None:
        self._check(
            self._lib.bpf_program__set_expected_attach_type(self._prog(program), attach_type),
            f"attach type of {program}",
        )

    def load(self) -> None:
        rc = self._lib.bpf_object__load(self._handle())
        if rc < 0:
            err = -rc if rc < -1 else ct.get_errno()
            raise BenchError(f"the kernel refused {self.path}: {os.strerror(err)}")
        self.loaded = True

    def program_fd(self, name: str) -> int:
        fd: int = self._lib.bpf_program__fd(self._prog(name))
        if fd < 0:
            raise BenchError(f"{name} in {self.path} is not loaded")
        return fd

    def map_fd(self, name: str) -> int:
        fd: int = self._lib.bpf_map__fd(self._map(name))
        if fd < 0:
            raise BenchError(f"map {name} in {self.path} is not loaded")
        return fd

    def close(self) -> None:
        obj, self._obj = self._obj, None
        if obj:
            self._lib.bpf_object__close(obj)

    def __enter__(self) -> LibbpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
