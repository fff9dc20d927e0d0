"""A small sd_notify(3) client: tell systemd when the agent is ready, alive, reloading or stopping.

The unit is ``Type=notify``: systemd considers floodguard started only when it
sends ``READY=1``, which the daemon does once the XDP program is attached —
so ``systemctl start`` returning means the network is protected, and units
ordered after floodguard start after protection, not after a fork. With
``WatchdogSec=`` the main loop proves it is still ticking (a daemon stuck in
a kernel call or a deadlock is restarted; the attached program and its bans
keep enforcing meanwhile). ``RELOADING=1`` … ``READY=1`` lets ``systemctl
reload`` return only when the new policy is live or was rejected.

The protocol is one datagram of ``KEY=value`` lines to the AF_UNIX socket
named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace). It is simple enough that a dependency (python-systemd, sdnotify)
would cost more than these lines. Without ``$NOTIFY_SOCKET`` — a terminal,
a test, another supervisor — every method is a no-op, so callers never check.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Mapping, MutableMapping

import structlog

log = structlog.get_logger()

# Variables systemd passes to the service: the socket, and the watchdog's
# interval plus the PID it is meant for (a forked child must not ping).
ENV_SOCKET = "NOTIFY_SOCKET"
ENV_WATCHDOG_USEC = "WATCHDOG_USEC"
ENV_WATCHDOG_PID = "WATCHDOG_PID"
_ENV_ALL = (ENV_SOCKET, ENV_WATCHDOG_USEC, ENV_WATCHDOG_PID)


class NotifyError(ValueError):
    """``$NOTIFY_SOCKET`` or ``$WATCHDOG_USEC`` holds something this client cannot use."""


def parse_address(value: str) -> str:
    """The socket address for ``sendto()`` from a ``$NOTIFY_SOCKET`` value.

    ``@name`` is Linux's abstract namespace: the kernel spells it with a
    leading NUL byte, which Python's AF_UNIX addresses accept as ``"\\0name"``.
    Only absolute paths are accepted because a relative one would depend on
    the daemon's working directory; ``vsock:`` addresses (systemd ≥ 254, for
    VMs) are not supported by this client.
    """
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    raise NotifyError(f"{ENV_SOCKET}={value!r} is neither an absolute path nor an @abstract name: "
                      "floodguard supports only AF_UNIX notification sockets")


#: The longest a state change (READY, RELOADING, STOPPING) waits for room in the receiver's queue.
SEND_TIMEOUT_S = 1.0


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in µs, the clock systemd compares ``MONOTONIC_USEC=`` with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _one_line(text: str) -> str:
    # A newline would end the STATUS= field and start a bogus assignment.
    return " ".join(text.splitlines())


class Notifier:
    """Sends sd_notify datagrams to one socket; every method is a no-op when ``address`` is None.

    The daemon's sequence: ``ready(status=…)`` after attach, ``watchdog()``
    from every tick, ``reloading()`` … ``ready()`` around a policy reload,
    ``stopping()`` on SIGTERM. Send failures are logged, never raised: losing
    contact with systemd must not take the protection down with it (systemd
    notices on its own, through the start timeout or the watchdog).
    """

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self.address = address
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = True) -> Notifier:
        """The notifier systemd asked for through the environment (os.environ by default).

        ``unset`` removes the variables afterwards, like sd_notify's
        ``unset_environment``: the mitigation hook and anything else the
        daemon starts must not inherit the socket and impersonate it.
        A watchdog meant for another PID (``$WATCHDOG_PID``) is ignored.
        """
        env = os.environ if environ is None else environ
        raw = env.get(ENV_SOCKET) or None
        address = parse_address(raw) if raw is not None else None
        watchdog = _watchdog_from(env)
        if unset:
            for name in _ENV_ALL:
                env.pop(name, None)
        return cls(address, watchdog_usec=watchdog)

    @property
    def enabled(self) -> bool:
        """True when a supervisor listens; False makes every method a no-op."""
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between ``watchdog()`` calls, or None without a watchdog.

        Half of ``WatchdogSec``, as sd_watchdog_enabled(3) recommends: one
        late tick (a slow map read, a reload) must not kill the daemon.
        """
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def ready(self, status: str | None = None) -> bool:
        """Start-up or reload finished: systemd's start or reload job completes."""
        return self.send("READY=1", status=status)

    def reloading(self, status: str | None = None) -> bool:
        """A reload began; follow with ``ready()`` whatever its outcome.

        ``MONOTONIC_USEC`` is required by systemd ≥ 253 for
        ``Type=notify-reload`` (it orders the reload against the request) and
        ignored by older ones, so it is always sent.
        """
        return self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", status=status)

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown began: systemd does not mistake the exit for a crash in progress."""
        return self.send("STOPPING=1", status=status)

    def watchdog(self) -> bool:
        """The main loop is alive. Sent even without ``WatchdogSec`` (systemd ignores it then)."""
        return self.send("WATCHDOG=1", wait=False)

    def status(self, text: str) -> bool:
        """Free text for ``systemctl status`` (e.g. interfaces, active attacks)."""
        return self.send(status=text, wait=False)

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before the start/stop timeout fires (a slow BCC build)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def send(self, *assignments: str, status: str | None = None, wait: bool = True) -> bool:
        """Send ``KEY=value`` lines as one datagram; True when it was sent.

        False without a socket, or when the send failed (logged as
        ``sd_notify_failed`` with the errno). The main loop never blocks here
        for long: a receiver whose queue is full (systemd stuck, or a test
        listener that does not read) makes a state change (``wait``) give up
        after ``SEND_TIMEOUT_S``, and a watchdog ping or a status line give up
        at once — a ping systemd cannot take in is worth nothing anyway.
        """
        if self.address is None:
            return False
        lines = list(assignments)
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        if not lines:
            return False
        payload = "\n".join(lines).encode()
        try:
            if self._sock is None:
                # Connected, so that waiting for room means room in the receiver's queue.
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                try:
                    sock.connect(self.address)
                except OSError:
                    sock.close()
                    raise
                self._sock = sock
            self._sock.settimeout(SEND_TIMEOUT_S if wait else 0.0)
            self._sock.send(payload)
        except (TimeoutError, BlockingIOError) as e:
            log.warning("sd_notify_failed", socket=self.address.replace("\0", "@"), message=lines[0],
                        errno="ETIMEDOUT" if isinstance(e, TimeoutError) else "EAGAIN",
                        error=f"the receiver's queue is full (waited {SEND_TIMEOUT_S if wait else 0:g} s)")
            return False
        except OSError as e:
            self.close()  # the receiver went away (systemd re-executed?): connect again next time
            log.warning("sd_notify_failed", socket=self.address.replace("\0", "@"), message=lines[0],
                        errno=errno.errorcode.get(e.errno or 0, str(e.errno)), error=e.strerror)
            return False
        return True

    def close(self) -> None:
        """Release the socket; a later send opens a new one."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _watchdog_from(env: Mapping[str, str]) -> int | None:
    """``$WATCHDOG_USEC`` in µs when it is meant for this process, else None."""
    raw = env.get(ENV_WATCHDOG_USEC)
    if not raw:
        return None
    pid = env.get(ENV_WATCHDOG_PID)
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(raw)
    except ValueError:
        raise NotifyError(f"{ENV_WATCHDOG_USEC}={raw!r} is not a number of microseconds") from None
    return usec if usec > 0 else None
