"""Low-level network-namespace mechanics for the lab: enter, create, destroy, mark.

Everything here works on namespace *names* (files under ``/run/netns``) and
knows nothing about topologies. Three ways to act inside a namespace:

- :func:`run_in_thread` switches one fresh thread with ``setns(2)`` (which
  changes the namespace of the calling thread only), runs a callable and
  switches back. Sockets, netlink/ethtool sockets and ``/proc/sys/net`` writes
  made there belong to that namespace and keep it after the thread is gone.
  ``/proc/self/net`` still shows the *process's* namespace (the thread-group
  leader's); use ``/proc/thread-self/net`` instead.
- :func:`run_in_child` forks; the child enters the namespace, runs the
  callable and pickles the result back. Use it for libraries that read
  ``/proc/self/net`` or cache interface lists (scapy).
- :func:`nsenter_argv` builds ``nsenter --net=/run/netns/NAME -- argv`` for
  programs. Unlike ``ip netns exec`` it does not remount ``/sys``, so bpffs
  stays visible.

Ownership: a namespace created here carries an alias on its ``lo`` interface
(``floodguard-lab pid=<pid> start=<start time>``) naming the process that
built it, so leftovers of dead runs can be told apart from namespaces of runs
that are still alive.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import pickle
import re
import select
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from agent.lab._errors import NamespaceCallError, NamespaceError

T = TypeVar("T")

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
# Linux limits one path component (a namespace name) to NAME_MAX bytes.
NAME_MAX = 255
OWNER_MARK = "floodguard-lab"
_OWNER_RE = re.compile(rf"^{OWNER_MARK} pid=(\d+) start=(\d+)$")


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> str:
    """Path of the bind mount that names namespace ``name``."""
    return f"{NETNS_DIR}/{name}"


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace open at ``fd``."""
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET) failed: {os.strerror(err)}")


def _open_ns(name: str) -> int:
    try:
        return os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NamespaceError(
            f"network namespace {name!r} does not exist ({netns_path(name)} is missing): "
            "was the topology torn down or never built?"
        ) from None


def list_namespaces() -> list[str]:
    """Names of all named network namespaces."""
    return sorted(netns.listnetns(NETNS_DIR))


def exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def inode(name: str) -> int | None:
    """Inode of the namespace (nsfs) behind ``name``, or None if it is not there.

    Two namespaces created under the same name have different inodes, so a
    torn-down-and-rebuilt namespace is never mistaken for the original.
    """
    try:
        return os.stat(netns_path(name)).st_ino
    except FileNotFoundError:
        return None


def run_in_thread(name: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a new thread that sits in namespace ``name``; return its result."""
    result: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            target = _open_ns(name)
            try:
                home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    setns(target)
                    try:
                        result.append(fn())
                    finally:
                        setns(home)
                finally:
                    os.close(home)
            finally:
                os.close(target)
        except BaseException as exc:  # noqa: BLE001 — re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=body, name=f"netns:{name}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def _child_main(name: str, fn: Callable[[], Any], wfd: int) -> None:
    try:
        try:
            target = _open_ns(name)
            setns(target)
            os.close(target)
            payload: tuple[bool, Any] = (True, fn())
        except BaseException as exc:  # noqa: BLE001 — sent back to the parent and re-raised there
            payload = (False, (type(exc).__name__, str(exc), traceback.format_exc()))
        try:
            data = pickle.dumps(payload)
        except Exception as exc:  # noqa: BLE001 — sent back to the parent and re-raised there
            data = pickle.dumps((False, (type(exc).__name__, f"result cannot be pickled: {exc}", "")))
        view = memoryview(data)
        while view:
            view = view[os.write(wfd, view) :]
    finally:
        os._exit(0)


def run_in_child(name: str, fn: Callable[[], T], *, timeout: float = 30.0) -> T:
    """Fork, enter namespace ``name`` in the child, run ``fn`` there; return its result.

    The result must be picklable. An exception in the child is raised here as
    :class:`NamespaceCallError` with the child's traceback in the message.
    The child is killed if it runs longer than ``timeout`` seconds.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(rfd)
        _child_main(name, fn, wfd)
    os.close(wfd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                raise NamespaceCallError(
                    f"callable in namespace {name!r} did not finish within {timeout:g} s; it was killed"
                )
            ready, _, _ = select.select([rfd], [], [], left)
            if not ready:
                continue
            chunk = os.read(rfd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(rfd)
        os.waitpid(pid, 0)
    if not chunks:
        raise NamespaceCallError(f"child process for namespace {name!r} exited without a result")
    ok, value = pickle.loads(b"".join(chunks))  # noqa: S301 — our own forked child's answer, over a pipe we created
    if ok:
        return value  # type: ignore[no-any-return]
    kind, message, child_tb = value
    raise NamespaceCallError(f"{kind} in namespace {name!r}: {message}\n--- child traceback ---\n{child_tb}")


def nsenter_argv(name: str, argv: list[str]) -> list[str]:
    """``nsenter --net=/run/netns/NAME -- argv...`` (absolute nsenter path)."""
    nsenter = shutil.which("nsenter")
    if nsenter is None:
        raise NamespaceError("nsenter not found in PATH: install util-linux (apt-get install util-linux)")
    return [nsenter, f"--net={netns_path(name)}", "--", *argv]


def write_sysctl(key: str, value: int | str) -> None:
    """Write ``key`` (dotted, e.g. ``net.ipv4.ip_forward``) for the calling thread's namespace."""
    path = "/proc/sys/" + key.replace(".", "/")
    try:
        with open(path, "w") as f:
            f.write(f"{value}\n")
    except FileNotFoundError:
        raise NamespaceError(f"sysctl {key} does not exist ({path}): the kernel lacks that feature") from None


def read_sysctl(key: str) -> str:
    """Read ``key`` (dotted) for the calling thread's namespace."""
    with open("/proc/sys/" + key.replace(".", "/")) as f:
        return f.read().strip()


# --- ownership marks ------------------------------------------------------------------


@dataclass(frozen=True)
class Owner:
    """The process that built a namespace: pid plus its start time (guards pid reuse)."""

    pid: int
    start: int

    @property
    def mark(self) -> str:
        return f"{OWNER_MARK} pid={self.pid} start={self.start}"

    @classmethod
    def parse(cls, mark: str | None) -> Owner | None:
        m = _OWNER_RE.match(mark or "")
        return cls(int(m.group(1)), int(m.group(2))) if m else None

    @classmethod
    def current(cls) -> Owner:
        pid = os.getpid()
        start = _start_time(pid)
        if start is None:  # pragma: no cover - /proc is always there for ourselves
            raise NamespaceError("cannot read /proc/self/stat: is /proc mounted?")
        return cls(pid, start)

    def alive(self) -> bool:
        return _start_time(self.pid) == self.start


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Field 2 (comm) may contain spaces and parentheses: split after its last ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


def read_owner(name: str) -> Owner | None:
    """The owner recorded in namespace ``name``, or None if it carries no mark."""
    try:
        with IPRoute(netns=name, flags=0) as ipr:
            lo = ipr.link("get", index=1)[0]
            return Owner.parse(lo.get("IFLA_IFALIAS"))
    except (OSError, NetlinkError):
        return None


# --- create / destroy ---------------------------------------------------------------


def create(name: str, owner: Owner) -> int:
    """Create namespace ``name``, mark it with ``owner``, bring ``lo`` up; return its inode."""
    netns.create(name)
    try:
        ino = inode(name)
        if ino is None:
            raise NamespaceError(f"network namespace {name!r} vanished right after creation")
        with IPRoute(netns=name, flags=0) as ipr:
            ipr.link("set", index=1, ifalias=owner.mark, state="up")
    except BaseException:
        remove(name)
        raise
    return ino


def delete_links(name: str) -> list[str]:
    """Delete every interface but ``lo`` in namespace ``name``; return their names.

    Deleting explicitly (rather than relying on namespace destruction) makes
    veth pairs disappear at once even if a leaked socket or process keeps the
    namespace itself alive.
    """
    deleted: list[str] = []
    with IPRoute(netns=name, flags=0) as ipr:
        for link in ipr.link("dump"):
            index = int(link["index"])
            if index == 1:
                continue
            try:
                ipr.link("del", index=index)
                deleted.append(str(link.get("IFLA_IFNAME")))
            except NetlinkError as exc:
                # The peer of a veth deleted a moment ago goes with it.
                if exc.code != errno.ENODEV:
                    raise
    return deleted


def remove(name: str) -> None:
    """Unmount and unlink ``/run/netns/NAME`` (the kernel frees it once unused)."""
    netns.remove(name)


def holders(ino: int) -> list[int]:
    """Pids of processes whose network namespace has inode ``ino``."""
    pids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == ino:
                pids.append(int(entry))
        except OSError:
            continue
    return pids
