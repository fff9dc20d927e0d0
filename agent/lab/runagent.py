"""The real agent on the lab: `floodguard run` inside the gateway namespace.

The demo, the end-to-end tests and the benchmarks all run floodguard the way
an operator would: the daemon as its own process, configured by a policy
file, steered through its control socket. This module renders the lab
policy (etc/lab-policy.yaml) for one lab — its interface names, a private
socket, state directory, pin root and metrics port — starts the daemon with
nsenter (so bpffs stays visible), waits until the program is attached, and
always stops it, detaches the program and removes the pins.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Self

import yaml

from agent.daemon.api import ClientError, RequestError, call
from agent.datapath import attach, loader
from agent.datapath.mapport import MapPort
from agent.datapath.maps import Maps
from agent.lab.topology import Lab

REPO_POLICY = Path(__file__).resolve().parents[2] / "etc" / "lab-policy.yaml"


def lab_policy_path() -> Path:
    """etc/lab-policy.yaml of the checkout, or the copy shipped with the package."""
    if REPO_POLICY.is_file():
        return REPO_POLICY
    shipped = Path(__file__).resolve().parent / "lab-policy.yaml"
    if shipped.is_file():
        return shipped
    raise FileNotFoundError("etc/lab-policy.yaml not found: run from a floodguard checkout")


def _free_port(lab: Lab) -> int:
    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    got: int = lab.topology.call(lab.gateway, pick)
    return got


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class LabAgent:
    """One `floodguard run` on the lab's gateway."""

    def __init__(self, lab: Lab, *, workdir: Path | None = None, policy: Path | None = None,
                 overrides: dict[str, Any] | None = None, log_level: str = "info") -> None:
        self.lab = lab
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="floodguard-lab-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pin_root = f"/sys/fs/bpf/floodguard-lab-{os.getpid()}-{self.dir.name}"
        self.metrics_port = _free_port(lab)
        self.policy_path = self.dir / "policy.yaml"
        data = yaml.safe_load((policy or lab_policy_path()).read_text())
        data["interfaces"] = [{"name": lab.gateway_ingress.ifname, "mode": "native"}]
        data["control"] = {"socket": str(self.dir / "control.sock"), "group": None}
        data["state_dir"] = str(self.dir / "state")
        data["metrics"] = {"listen": f"127.0.0.1:{self.metrics_port}"}
        data["log"] = {"level": log_level, "format": "json"}
        if overrides:
            data = _merge(data, overrides)
        self.policy = data
        self.policy_path.write_text(yaml.safe_dump(data, sort_keys=False))
        self.log_path = self.dir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.dir / "control.sock"

    # --- lifetime --------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> Self:
        with open(self.log_path, "ab") as out:
            self.proc = self.lab.topology.popen(
                self.lab.gateway,
                [sys.executable, "-m", "agent.cli", "run", "-c", str(self.policy_path), "--pin-root", self.pin_root],
                stdout=out, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"floodguard exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(ClientError, RequestError, OSError, ValueError):
                st = self.call("status")
                if st["interfaces"] and all(i["attached"] for i in st["interfaces"]):
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"floodguard did not attach within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> int:
        """SIGTERM the daemon (the program stays attached, as in production)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def kill(self) -> None:
        """SIGKILL: what a crash looks like."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def close(self) -> None:
        """Stop, detach, remove the pins (and the work directory if it is ours)."""
        self.stop()
        with contextlib.suppress(Exception):
            attach.detach(self.lab.gateway_ingress.ifname, netns=self.lab.gateway)
        root = Path(self.pin_root)
        if root.exists():
            for d in root.iterdir():
                with contextlib.suppress(Exception):
                    loader.remove_pins(str(d))
            with contextlib.suppress(OSError):
                root.rmdir()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- talking to it ---------------------------------------------------------------

    def call(self, verb: str, **args: Any) -> Any:
        return call(self.socket_path, verb, args, timeout=30)

    def cli(self, *args: str) -> str:
        """Run the real CLI against this agent; its standard output."""
        out = subprocess.run([sys.executable, "-m", "agent.cli", *args, "--socket", str(self.socket_path)],
                             capture_output=True, text=True, timeout=60, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"floodguard {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self.log_path.exists():
            return out
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                ev = json.loads(line)
                if isinstance(ev, dict) and (name is None or ev.get("event") == name):
                    out.append(ev)
        return out

    def maps(self) -> Maps:
        """The agent's pinned maps, for reading counters directly (close it after)."""
        from agent.contract import abi

        return Maps.from_pins(f"{self.pin_root}/v{abi.ABI_VERSION}")

    def port(self) -> tuple[Maps, MapPort]:
        m = self.maps()
        return m, MapPort(m)

    def metrics_text(self) -> str:
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        body: bytes = self.lab.topology.call(self.lab.gateway, lambda: urllib.request.urlopen(url, timeout=10).read())
        return body.decode()
