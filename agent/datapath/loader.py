"""Build the XDP program with BCC, load it, pin it and its maps.

The program is compiled at start from bpf/floodguard.bpf.c with -D constants
(pin directory, map capacities, bench-only features): a -D flag is the only
way Python shapes the program. Maps are declared pinned in maps.h, so BCC
reuses the maps of an earlier run when their pins exist — bans and counters
survive a restart — and creates and pins them otherwise.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import dataclasses
import os
import platform
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import structlog

from agent.contract import abi
from agent.contract.capacity import Capacity

from . import bpfsys as sysbpf
from .errors import (
    BpffsError,
    BuildError,
    DatapathError,
    MissingHeadersError,
    MissingPrivilegeError,
    VerifierError,
)

log = structlog.get_logger()

PROGRAM_NAME = "xdp_floodguard"
BPFFS = "/sys/fs/bpf"
DEFAULT_PIN_ROOT = f"{BPFFS}/floodguard"
_VERIFIER_LOG_SIZE = 64 << 20
_BPF_PROG_TYPE_XDP = 6


def default_pin_dir(root: str = DEFAULT_PIN_ROOT) -> str:
    return f"{root}/v{abi.ABI_VERSION}"


def source_dir() -> Path:
    """bpf/ in a source checkout, or agent/bpf/ inside an installed wheel."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "bpf", here.parent / "bpf"):
        if (candidate / "floodguard.bpf.c").is_file():
            return candidate
    raise BuildError(f"cannot find floodguard.bpf.c next to {here}: the installation is incomplete")


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    pin_dir: str = dataclasses.field(default_factory=default_pin_dir)
    capacity: Capacity = dataclasses.field(default_factory=Capacity)
    # Bench-only: rewrite the source address of every test-run packet
    # (bpf/bench.h). Keys are FG_BENCH_* names without the prefix.
    bench: Mapping[str, int] | None = None
    source: str = "floodguard.bpf.c"
    function: str = PROGRAM_NAME

    def cflags(self, src: Path) -> list[str]:
        # Every warning is an error: the program runs on every packet, and a
        # warning there (an unused result, a mismatched type) is a bug until
        # shown otherwise. The bench and lab programs are built here too.
        flags = ["-Wall", "-Werror", f"-I{src}", f'-DFG_PIN_DIR="{self.pin_dir}"']
        flags += [f"-D{k}={v}" for k, v in self.capacity.defines().items()]
        if self.bench is not None:
            flags.append("-DFG_BENCH=1")
            flags += [f"-DFG_BENCH_{k}={v}U" for k, v in self.bench.items()]
        return flags


class Program:
    """A built and loaded program: its fd, its maps, how long the build took."""

    def __init__(self, bpf: Any, fd: int, options: BuildOptions, build_seconds: float, insns: int) -> None:
        self._bpf = bpf
        self.fd = fd
        self.options = options
        self.build_seconds = build_seconds
        self.insns = insns
        info = sysbpf.prog_info(fd)
        self.id = int(info.id)
        self.tag = bytes(info.tag).hex()

    @property
    def pin_dir(self) -> str:
        return self.options.pin_dir

    def map_fd(self, name: str) -> int:
        fd: int = self._bpf[name.encode()].map_fd
        return fd

    def table(self, name: str) -> Any:
        """BCC's own table object (ring buffers need it)."""
        return self._bpf[name.encode()]

    @property
    def bcc(self) -> Any:
        return self._bpf

    def pin_program(self) -> str:
        """Pin the program as <pin_dir>/<name>, replacing an older pin."""
        path = f"{self.pin_dir}/{self.options.function}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        sysbpf.obj_pin(self.fd, path)
        return path

    def close(self) -> None:
        """Release the program and map fds (pinned and attached objects stay)."""
        bpf, self._bpf = self._bpf, None
        if bpf is not None:
            bpf.cleanup()


def check_environment(pin_dir: str) -> None:
    """Fail early, with what to do, on the usual set-up problems."""
    if os.geteuid() != 0:
        raise MissingPrivilegeError("load an XDP program")
    if not _on_bpffs(pin_dir):
        raise BpffsError(pin_dir)
    release = platform.release()
    build = Path(f"/lib/modules/{release}/build")
    if not (build / "include").exists():
        raise MissingHeadersError(release)


def _on_bpffs(path: str) -> bool:
    """True when path (or its nearest existing parent) is on a bpf filesystem."""
    p = Path(path)
    while not p.exists():
        p = p.parent
    target = str(p.resolve())
    best, fstype = "", ""
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            mnt = fields[1]
            inside = target == mnt or target.startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= len(best):
                best, fstype = mnt, fields[2]
    return fstype == "bpf"


@contextlib.contextmanager
def _capture_stderr() -> Iterator[list[str]]:
    """Capture fd 2 (clang and libbpf write there) for the error message."""
    out: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


def build(options: BuildOptions | None = None) -> Program:
    """Compile, load and verify the program; its maps are pinned on the way."""
    from bcc import BPF, libbcc  # deferred: importing bcc is slow and needs root only here

    options = options or BuildOptions()
    check_environment(options.pin_dir)
    os.makedirs(options.pin_dir, exist_ok=True)
    src = source_dir()
    start = time.monotonic()
    with _capture_stderr() as err:
        try:
            bpf = BPF(src_file=str(src / options.source).encode(), cflags=options.cflags(src))
        except Exception as e:  # noqa: BLE001 — BCC raises a bare Exception on compile errors
            compiled = False
            exc: Exception | None = e
        else:
            compiled = True
            exc = None
    if not compiled:
        text = "".join(err)
        if "file not found" in text and ("linux/" in text or "asm/" in text):
            raise MissingHeadersError(platform.release()) from exc
        tail = "\n".join(line for line in text.strip().splitlines()[-20:])
        raise BuildError(f"BCC could not compile {options.source}: {exc}\n{tail}") from exc

    name = options.function.encode()
    lib = libbcc.lib
    fd, err_no, _ = _load(lib, bpf, name, log_level=0)
    if fd < 0:
        if err_no == 1:
            bpf.cleanup()
            raise MissingPrivilegeError("load an XDP program")
        # The first attempt runs without a log (faster); load again with one for the message.
        fd2, _, verifier = _load(lib, bpf, name, log_level=1)
        if fd2 >= 0:
            os.close(fd2)
        bpf.cleanup()
        raise VerifierError(options.function, err_no, verifier)
    # Register the fd with BCC so that it is released with the module.
    bpf.funcs[name] = BPF.Function(bpf, name, fd)
    insns = int(lib.bpf_function_size(bpf.module, name)) // 8
    elapsed = time.monotonic() - start
    return Program(bpf, fd, options, elapsed, insns)


def _load(lib: Any, bpf: Any, name: bytes, log_level: int) -> tuple[int, int, str]:
    """Load one function of a compiled module: (fd or -1, errno, verifier log)."""
    logbuf = ct.create_string_buffer(_VERIFIER_LOG_SIZE if log_level else 1)
    with _capture_stderr():
        fd = lib.bcc_func_load(
            bpf.module,
            _BPF_PROG_TYPE_XDP,
            name,
            lib.bpf_function_start(bpf.module, name),
            lib.bpf_function_size(bpf.module, name),
            lib.bpf_module_license(bpf.module),
            lib.bpf_module_kern_version(bpf.module),
            log_level,
            logbuf if log_level else None,
            _VERIFIER_LOG_SIZE if log_level else 0,
            None,
            -1,
        )
    err_no = ct.get_errno() if fd < 0 else 0
    return int(fd), err_no, logbuf.value.decode(errors="replace") if log_level else ""


def remove_pins(pin_dir: str) -> None:
    """Remove a pin directory and everything pinned in it."""
    p = Path(pin_dir)
    if not p.exists():
        return
    for child in p.iterdir():
        try:
            child.unlink()
        except IsADirectoryError:
            remove_pins(str(child))
    try:
        p.rmdir()
    except OSError as e:
        raise DatapathError(f"cannot remove {pin_dir}: {e}") from e
