"""The control socket: the CLI's way to see and steer a running agent.

A Unix stream socket (default /run/floodguard/control.sock, mode 0660,
group from the policy) speaking one JSON object per line: a request
{"verb": ..., "args": {...}} and a response {"ok": true, "result": ...} or
{"ok": false, "error": "one sentence"}. Requests are served on their own
threads so a slow client never stalls the control loop; the verb table
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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger()

#: Serves one request: (verb, arguments) -> the result to send back; raises RequestError to refuse it.
Handler = Callable[[str, Mapping[str, object]], object]
MAX_REQUEST = 1 << 20


class RequestError(Exception):
    """A request the agent refuses; the message goes back to the client."""


class ClientError(Exception):
    """The CLI could not talk to the agent; the message says what to do."""


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True
    handler: Handler


class _Connection(socketserver.StreamRequestHandler):
    timeout = 30

    def handle(self) -> None:
        server: _Server = self.server  # type: ignore[assignment]
        line = self.rfile.readline(MAX_REQUEST)
        if not line:
            return
        try:
            req = json.loads(line)
            if not isinstance(req, dict) or not isinstance(req.get("verb"), str):
                raise RequestError('a request is {"verb": "...", "args": {...}}')
            args = req.get("args") or {}
            if not isinstance(args, dict):
                raise RequestError("args must be an object")
            result = server.handler(req["verb"], args)
            resp: dict[str, object] = {"ok": True, "result": result}
        except (RequestError, ValueError) as e:
            resp = {"ok": False, "error": str(e)}
        except Exception as e:  # a bug must not kill the agent: report it
            log.exception("control_request_failed", error=str(e))
            resp = {"ok": False, "error": f"internal error: {e}"}
        with contextlib.suppress(OSError):
            self.wfile.write(json.dumps(resp, default=str).encode() + b"\n")


class ControlServer:
    """Serves the control socket on background threads."""

    def __init__(self, path: Path, group: str | None, handler: Handler) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = _Server(str(self.path), _Connection)
        self._server.handler = handler
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
            raise ClientError(
                f"floodguard is not running (no control socket at {path}): "
                f"start it with `systemctl start floodguard`"
            ) from None
        except ConnectionRefusedError:
            raise ClientError(
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
