"""The control socket: the CLI's way to see and steer a running agent.

A Unix stream socket (default /run/floodguard/control.sock, mode 0660,
group from the policy) speaking one JSON object per line: a request
{"verb": ..., "args": {...}} and a response {"ok": true, "result": ...} or
{"ok": false, "error": "one sentence"}. Requests are served on their own
threads so a slow client never stalls the control loop, at most
MAX_CLIENTS at once, each line within READ_TIMEOUT; the verb table
(agent/daemon/verbs.py) validates them and serialises them with the agent's
lock.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from agent.bounded import BoundedThreadingMixIn

log = structlog.get_logger()

#: Serves one request: (verb, arguments) -> the result to send back; raises RequestError to refuse it.
Handler = Callable[[str, Mapping[str, object]], object]
#: Longest request line: the largest request (a ban with its reason) is a few hundred bytes.
MAX_REQUEST = 64 << 10
#: Clients served at once; one more is answered "busy" at once rather than queued.
MAX_CLIENTS = 16
#: A whole request line must arrive within this: a slow client cannot hold a thread.
READ_TIMEOUT = 5.0
#: An answer (`bans` can be large) must be taken within this.
WRITE_TIMEOUT = 30.0


class RequestError(Exception):
    """A request the agent refuses; the message goes back to the client."""


class ClientError(Exception):
    """The CLI could not talk to the agent; the message says what to do."""


class AgentNotRunningError(ClientError):
    """Nothing listens on the control socket (it is missing, or refuses connections)."""


class _SlowClientError(Exception):
    """The client did not send a whole request line in time."""


class _Server(BoundedThreadingMixIn, socketserver.UnixStreamServer):
    allow_reuse_address = True
    # Connections waiting to be accepted: beyond it a Unix socket refuses with EAGAIN, so a
    # burst of CLI calls (a script banning many prefixes) would fail rather than wait its turn.
    request_queue_size = 128
    handler: Handler
    read_timeout: float = READ_TIMEOUT
    max_clients: int = MAX_CLIENTS

    def refuse(self, request: Any) -> None:
        # Answered from the accepting thread without waiting: the socket buffer takes one line.
        _send(request, {"ok": False, "error": f"the agent is serving {self.max_clients} clients already: "
                                               f"try again in a few seconds"}, nonblocking=True)
        self.shutdown_request(request)


def _send(sock: socket.socket, resp: Mapping[str, object], nonblocking: bool = False) -> None:
    with contextlib.suppress(OSError):
        if nonblocking:
            sock.setblocking(False)
        else:
            sock.settimeout(WRITE_TIMEOUT)
        sock.sendall(json.dumps(resp, default=str).encode() + b"\n")


class _Connection(socketserver.BaseRequestHandler):
    request: socket.socket

    def handle(self) -> None:
        server: _Server = self.server  # type: ignore[assignment]
        try:
            line = self._read_line(server.read_timeout)
        except _SlowClientError:
            log.warning("control_client_slow", timeout=server.read_timeout)
            _send(self.request, {"ok": False, "error": f"no complete request within {server.read_timeout:g} s"})
            return
        except RequestError as e:
            _send(self.request, {"ok": False, "error": str(e)})
            return
        if not line:
            return
        _send(self.request, self._answer(server, line))

    def _read_line(self, timeout: float) -> bytes:
        """One request line, read against one deadline for the whole line (not per recv)."""
        sock, buf = self.request, bytearray()
        deadline = time.monotonic() + timeout
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _SlowClientError
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise _SlowClientError from None
            except OSError:
                return b""
            if not chunk:
                break  # the client closed its side: what came is the request
            buf += chunk
            if len(buf) > MAX_REQUEST and b"\n" not in buf[:MAX_REQUEST + 1]:
                raise RequestError(f"request longer than {MAX_REQUEST} bytes: one JSON object per line")
        return bytes(buf.split(b"\n", 1)[0])

    @staticmethod
    def _answer(server: _Server, line: bytes) -> dict[str, object]:
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("verb"), str):
                raise RequestError('a request is {"verb": "...", "args": {...}}')
            args = req.get("args") or {}
            if not isinstance(args, dict):
                raise RequestError("args must be an object")
            return {"ok": True, "result": server.handler(req["verb"], args)}
        except (RequestError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return {"ok": False, "error": str(e)}
        except Exception as e:  # a bug must not kill the agent: report it
            log.exception("control_request_failed", error=str(e))
            return {"ok": False, "error": f"internal error: {e}"}


def _answers(path: Path) -> bool:
    """Whether something listens on the socket at ``path`` (an agent that must not lose it)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
    except OSError:
        return False  # missing, stale (refused) or not a socket
    finally:
        s.close()
    return True


class ControlServer:
    """Serves the control socket on background threads."""

    def __init__(self, path: Path, group: str | None, handler: Handler, *, max_clients: int = MAX_CLIENTS,
                 read_timeout: float = READ_TIMEOUT) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if _answers(self.path):
            from . import StartupError

            raise StartupError(f"another floodguard answers on {self.path}: stop it first "
                               f"(`systemctl stop floodguard`), or give this one its own control.socket")
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket of an agent that died
        self._server = _Server(str(self.path), _Connection)
        self._server.handler = handler
        self._server.max_clients, self._server.read_timeout = max_clients, read_timeout
        self._server.slots = threading.BoundedSemaphore(max_clients)
        os.chmod(self.path, 0o660)
        if group:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                log.warning("control_group_missing", group=group, socket=str(self.path),
                            hint=f"create it with `groupadd --system {group}`; only root can use the socket")
            else:
                try:
                    os.chown(self.path, 0, gid)
                except PermissionError:
                    log.warning("control_group_not_set", group=group, socket=str(self.path),
                                hint="the agent lacks CAP_CHOWN; only root can use the socket")
        self._thread = threading.Thread(target=self._server.serve_forever, name="control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def call(path: Path | str, verb: str, args: Mapping[str, object] | None = None, timeout: float = 30.0) -> Any:
    """Send one request; return its result or raise ClientError/RequestError."""
    path = str(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except FileNotFoundError:
            raise AgentNotRunningError(
                f"floodguard is not running (no control socket at {path}): "
                f"start it with `systemctl start floodguard`"
            ) from None
        except ConnectionRefusedError:
            raise AgentNotRunningError(
                f"floodguard is not running (nothing listens on {path}): "
                f"start it with `systemctl start floodguard`"
            ) from None
        except PermissionError:
            raise ClientError(
                f"permission denied on {path}: run as root or join the socket's group "
                f"(`usermod -aG floodguard $USER`, then log in again)"
            ) from None
        except OSError as e:
            if e.errno == errno.ENOTSOCK:
                raise ClientError(f"{path} is not a socket: check control.socket in the policy") from None
            raise ClientError(f"cannot reach floodguard at {path}: {e.strerror}") from None
        s.sendall(json.dumps({"verb": verb, "args": args or {}}).encode() + b"\n")
        buf = bytearray()
        while not buf.endswith(b"\n"):
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                raise ClientError(f"floodguard did not answer within {timeout:.0f} s") from None
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    if not buf:
        raise ClientError("floodguard closed the connection without an answer: see `journalctl -u floodguard`")
    resp = json.loads(buf)
    if not resp.get("ok"):
        raise RequestError(resp.get("error") or "the request failed")
    return resp.get("result")
