"""`floodguard speaker`: run gobgpd configured from the policy, and withdraw what expires.

The BGP speaker is GoBGP's ``gobgpd`` (docs/upstream.md says why), started
by this small supervisor under its own unit, ``floodguard-speaker.service``:

- it writes gobgpd's configuration from the policy's ``upstream:`` block
  (:func:`gobgpd_config`: the local AS and router id, the peers and their
  families, no listener unless ``speaker.listen`` asks for one, an export
  policy that sends only what floodguard originated — never a route learnt
  from one peer to another — and an import policy that keeps nothing);
- it runs gobgpd as its child with the gRPC API on a Unix socket only, and
  gobgpd dies with it (``PR_SET_PDEATHSIG``): no speaker, no session, and
  the peers withdraw everything — the fail-safe direction;
- every second it lists floodguard's routes and withdraws those whose
  expiry (carried in the route, agent/upstream/gobgp.py) has passed. This
  is what makes an announcement run out on its own when the agent is dead,
  as the data plane's rules do;
- SIGHUP (``systemctl reload``) writes the configuration again and has
  gobgpd apply it (peers added, changed, removed); a change of AS, router
  id or listener needs a restart, and says so;
- it reports READY to systemd once gobgpd's API answers.

The agent itself (``floodguard run``) is only a client of gobgpd's API, so
a restart or crash of the agent leaves the sessions and the routes up.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import structlog

from agent.daemon.sdnotify import Notifier
from agent.policy import load_policy
from agent.policy._upstream import Upstream

from .gobgp import GoBgp, SpeakerError

DEFAULT_CONFIG = Path("/run/floodguard-speaker/gobgpd.json")
SWEEP_S = 1.0
READY_TIMEOUT_S = 30.0
_PR_SET_PDEATHSIG = 1
EXPORT_POLICY = "floodguard-originated"

log = structlog.get_logger()


class SpeakerStartError(Exception):
    """The speaker cannot start; the message says why and what to do."""


def gobgpd_config(up: Upstream) -> dict[str, Any]:
    """gobgpd's configuration (its JSON form) for the policy's upstream block."""
    listen = up.speaker.listen_host_port
    glob: dict[str, Any] = {"as": up.asn, "router-id": up.router_id, "port": listen[1] if listen else -1}
    if listen:
        glob["local-address-list"] = [listen[0]]
    neighbors = []
    for p in up.peers:
        n: dict[str, Any] = {
            "config": {"neighbor-address": p.address, "peer-as": p.asn, "description": p.name},
            "timers": {"config": {"connect-retry": 5, "hold-time": 90, "keepalive-interval": 30}},
            "transport": {"config": {"passive-mode": p.passive, "remote-port": p.port,
                                     **({"local-address": p.local_address} if p.local_address else {})}},
            "afi-safis": [{"config": {"afi-safi-name": f}} for f in p.families],
        }
        if p.multihop:
            n["ebgp-multihop"] = {"config": {"enabled": True, "multihop-ttl": p.multihop}}
        if p.route_reflector_client:
            n["route-reflector"] = {"config": {"route-reflector-client": True,
                                               "route-reflector-cluster-id": up.router_id}}
        neighbors.append(n)
    return {
        "global": {
            "config": glob,
            # Only what floodguard originated goes out, and nothing received is kept: the
            # global import policy sees the API's own routes too, so it accepts those alone
            # (receiving Flowspec will open the import side for the families it needs).
            "apply-policy": {"config": {
                "export-policy-list": [EXPORT_POLICY], "default-export-policy": "reject-route",
                "import-policy-list": [EXPORT_POLICY], "default-import-policy": "reject-route",
            }},
        },
        "neighbors": neighbors,
        "policy-definitions": [{
            "name": EXPORT_POLICY,
            "statements": [{"name": "local-only", "conditions": {"bgp-conditions": {"route-type": "local"}},
                            "actions": {"route-disposition": "accept-route"}}],
        }],
    }


def _global(cfg: dict[str, Any]) -> object:
    return cfg["global"]["config"]


def write_config(path: Path, cfg: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    os.replace(tmp, path)


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def gobgpd_argv(up: Upstream, config: Path) -> list[str]:
    return [str(up.speaker.gobgpd), "-f", str(config), "-t", "json", "--api-hosts", f"unix://{up.speaker.api}",
            "--pprof-disable", "--log-level", "info"]


class SpeakerProcess:
    """gobgpd as a child, the expiry sweep, SIGHUP reloads; see the module docstring."""

    def __init__(self, policy_path: Path, config_path: Path = DEFAULT_CONFIG,
                 notifier: Notifier | None = None) -> None:
        self.policy_path = policy_path
        self.config_path = config_path
        self.notifier = notifier or Notifier.from_env()
        self._child: subprocess.Popen[bytes] | None = None
        self._stop = False
        self._reload = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def _upstream(self) -> Upstream:
        result = load_policy(self.policy_path)
        if result.policy is None:
            raise SpeakerStartError(f"the policy {self.policy_path} is not valid:\n"
                                    + "\n".join(str(e) for e in result.errors))
        if result.policy.upstream is None:
            raise SpeakerStartError(f"{self.policy_path} has no upstream block: there is nothing to announce "
                                    "(docs/policy.md, section upstream)")
        return result.policy.upstream

    def start(self) -> Upstream:
        up = self._upstream()
        if not up.speaker.gobgpd.exists():
            raise SpeakerStartError(f"{up.speaker.gobgpd} does not exist: apt-get install gobgpd")
        self._cfg = gobgpd_config(up)
        write_config(self.config_path, self._cfg)
        api = up.speaker.api
        api.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            api.unlink()  # a socket left by a killed gobgpd would make its listen fail
        self._child = subprocess.Popen(gobgpd_argv(up, self.config_path), preexec_fn=_die_with_parent)  # noqa: PLW1509 — prctl must run in the child
        self.client = GoBgp(str(api), up.tag_community, up.expiry_function)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self._child.poll() is not None:
                raise SpeakerStartError(f"gobgpd exited with status {self._child.returncode} at start "
                                        f"(its log is above; check {self.config_path} with gobgpd -d -t json -f)")
            try:
                self.client.ping()
                break
            except SpeakerError as e:
                if time.monotonic() > deadline:
                    raise SpeakerStartError(
                        f"gobgpd did not answer on {api} within {READY_TIMEOUT_S:.0f} s: {e}") from None
                time.sleep(0.1)
        self.notifier.ready(status=f"gobgpd {self._child.pid}: {len(up.peers)} peer(s)")
        log.info("speaker_started", pid=self._child.pid, api=str(api), config=str(self.config_path),
                 peers=[p.name for p in up.peers], listen=up.speaker.listen)
        return up

    def sweep(self, now: float | None = None) -> int:
        """Withdraw floodguard's routes whose expiry passed (or that carry none); returns how many."""
        now = time.time() if now is None else now
        gone = 0
        for h in self.client.held():
            if h.expires is not None and h.expires > now:
                continue
            self.client.delete(h)
            gone += 1
            log.warning("upstream_expired", key=h.announcement.key if h.announcement else None,
                        expired_s_ago=round(now - h.expires, 1) if h.expires is not None else None,
                        why="the agent did not refresh it in time: withdrawn by the speaker")
        return gone

    def reload(self) -> None:
        try:
            up = self._upstream()
        except SpeakerStartError as e:
            log.error("speaker_reload_rejected", error=str(e))
            return
        cfg = gobgpd_config(up)
        if _global(cfg) != _global(self._cfg):
            log.error("speaker_reload_rejected", error="restart required: upstream.asn, router_id or "
                      "speaker.listen changed (systemctl restart floodguard-speaker)")
            return
        write_config(self.config_path, cfg)
        self._cfg = cfg
        assert self._child is not None
        self._child.send_signal(signal.SIGHUP)
        log.info("speaker_reloaded", peers=[p.name for p in up.peers])

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stop = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"s")

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self.start()
        assert self._child is not None
        next_sweep = time.monotonic()
        try:
            while not self._stop:
                if self._child.poll() is not None:
                    log.error("speaker_gobgpd_exited", status=self._child.returncode)
                    return 1
                if self._reload:
                    self._reload = False
                    self.notifier.reloading()
                    self.reload()
                    self.notifier.ready(status="reloaded")
                if time.monotonic() >= next_sweep:
                    try:
                        self.sweep()
                    except SpeakerError as e:
                        log.error("speaker_sweep_failed", error=str(e))
                    next_sweep = time.monotonic() + SWEEP_S
                select.select([self._wake_r], [], [], max(0.0, next_sweep - time.monotonic()))
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 64)
        finally:
            self.stop()
        return 0

    def stop(self) -> None:
        self.notifier.stopping()
        child = self._child
        if child is not None and child.poll() is None:
            child.terminate()  # gobgpd sends CEASE: the peers withdraw what it announced
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        log.info("speaker_stopped")


def main(policy_path: str, config_path: str | None = None) -> int:
    from agent import log as logsetup

    logsetup.configure("info", "auto")
    proc = SpeakerProcess(Path(policy_path), Path(config_path) if config_path else DEFAULT_CONFIG)
    try:
        return proc.run()
    except SpeakerStartError as e:
        print(f"floodguard speaker: {e}", file=sys.stderr)
        proc.stop()
        return 1


__all__ = ["DEFAULT_CONFIG", "SpeakerProcess", "SpeakerStartError", "gobgpd_argv", "gobgpd_config", "main"]
