"""The real agent (`floodguard run`) as a process in a test namespace.

Starts the daemon inside the target namespace of a veth pair with nsenter
(bpffs stays visible), waits for systemd's READY=1 on a real notify socket,
talks to it through the real CLI, and always stops it, detaches it and
removes its pins.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from notify_listener import NotifyListener

from agent.datapath import attach, loader
from agent.lab.topology import VethPair

FLOODGUARD = str(Path(sys.executable).parent / "floodguard")

POLICY = """
interfaces: [{{name: {ifname}, mode: native}}]
deny:
  prefixes: [{{prefix: 10.99.0.0/16, reason: "policy deny"}}]
protect:
  - name: web
    prefixes: [192.0.2.0/24, "2001:db8::/64"]
detection: {{tick: 250ms}}
control: {{socket: {dir}/control.sock, group: null}}
state_dir: {dir}/state
metrics: {{listen: "127.0.0.1:{metrics_port}"}}
log: {{level: debug, format: json}}
capacity:
  prefixes: 4096
  hosts4: 4096
  prefixes6: 1024
  groups: 16
  sources: 4096
  sources6: 1024
  destinations: 1024
  verified: 1024
{extra}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AgentProc:
    """One `floodguard run` in the target namespace of a pair."""

    def __init__(self, pair: VethPair, workdir: Path, *, extra_policy: str = "", interfaces: list[str] | None = None):
        self.pair = pair
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pin_root = f"/sys/fs/bpf/fgtest-{os.getpid()}-agent-{workdir.name}"
        self.metrics_port = free_port()
        self.policy = self.dir / "policy.yaml"
        self.write_policy(extra_policy, interfaces)
        self.proc: subprocess.Popen[bytes] | None = None
        self.listener: NotifyListener | None = None
        self.log_path = self.dir / "agent.log"

    def write_policy(self, extra: str = "", interfaces: list[str] | None = None) -> None:
        text = POLICY.format(ifname=self.pair.target.ifname, dir=self.dir, metrics_port=self.metrics_port,
                             extra=extra)
        if interfaces:
            names = ", ".join(f"{{name: {n}, mode: auto}}" for n in interfaces)
            text = text.replace(f"interfaces: [{{name: {self.pair.target.ifname}, mode: native}}]",
                                f"interfaces: [{{name: {self.pair.target.ifname}, mode: native}}, {names}]")
        self.policy.write_text(text)

    @property
    def socket_path(self) -> str:
        return str(self.dir / "control.sock")

    def start(self, *, watchdog_usec: int | None = None, wait: bool = True) -> None:
        if self.listener is not None:
            self.listener.__exit__(None, None, None)
        self.listener = NotifyListener(self.dir)
        self.listener.__enter__()
        env = {**os.environ, **self.listener.env(watchdog_usec=watchdog_usec)}
        with open(self.log_path, "ab") as out:
            self.proc = self.pair.topology.popen(
                self.pair.target.ns,
                [FLOODGUARD, "run", "-c", str(self.policy), "--pin-root", self.pin_root],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> Any:
        assert self.listener is not None and self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(AssertionError):
                return self.listener.wait_for("READY", timeout=0.5)
            if self.proc.poll() is not None:
                raise AssertionError(f"the agent exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
        raise AssertionError(f"the agent was not ready within {timeout} s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                ev = json.loads(line)
                if ev.get("event") == name:
                    out.append(ev)
        return out

    def wait_event(self, name: str, timeout: float = 60) -> list[dict[str, Any]]:
        """The agent's log events called ``name``, once there is at least one."""
        deadline = time.monotonic() + timeout
        while not (found := self.events(name)):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {name} event within {timeout} s:\n{self.log()[-4000:]}")
            time.sleep(0.1)
        return found

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([FLOODGUARD, *args, "--socket", self.socket_path], capture_output=True, text=True,
                           timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"floodguard {' '.join(args)} exited {r.returncode}: {r.stderr}")
        return r

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout: float = 20) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        rc = self.proc.returncode
        if self.listener is not None:
            self.listener.__exit__(None, None, None)
            self.listener = None
        return rc

    def xdp_prog_id(self, ifname: str | None = None) -> int:
        st = attach.xdp_state(ifname or self.pair.target.ifname, netns=self.pair.target.ns)
        return int(st.prog_id or 0)

    def cleanup(self) -> None:
        self.stop()
        for ifname in (self.pair.target.ifname,):
            with contextlib.suppress(Exception):
                attach.detach(ifname, netns=self.pair.target.ns)
        root = Path(self.pin_root)
        if root.exists():
            for d in root.iterdir():
                loader.remove_pins(str(d))
            with contextlib.suppress(OSError):
                root.rmdir()
