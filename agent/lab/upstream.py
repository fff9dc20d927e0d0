"""A gateway and its upstream router, BGP between them: for the upstream tests and `bench upstream`.

Two namespaces joined by one veth pair, as the lab's ingress link is
(``up`` 192.0.2.1 / 2001:db8:1::1 — ``gw`` 192.0.2.2 / 2001:db8:1::2).
BIRD 2 runs in ``up`` as AS 64500 (agent/lab/bird.py); `floodguard
speaker` runs in ``gw`` as AS 64501 and peers with it over eBGP, connect
out only (no listener), its API on a Unix socket in the work directory —
which the caller's process reaches from the host namespace, as the agent
would. Nothing listens or connects outside the two namespaces.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from agent.lab.bird import Bird, bird_config
from agent.lab.topology import End, Link, Node, Topology, run_prefix

UP_V4, GW_V4 = "192.0.2.1", "192.0.2.2"
UP_V6, GW_V6 = "2001:db8:1::1", "2001:db8:1::2"
UP_AS, GW_AS = 64500, 64501
FLOODGUARD = str(Path(sys.executable).parent / "floodguard")


def policy_text(workdir: Path, *, extra: str = "", upstream: str = "", protect: str = "") -> str:
    """A policy for the gateway; ``upstream`` adds keys to the upstream block (indented two spaces)."""
    return f"""\
interfaces: [gw-in]
state_dir: {workdir}/state
infrastructure:
  prefixes: [198.51.100.53/32]
allow:
  prefixes: [203.0.113.200/32]
protect:
  - name: web
    prefixes: [203.0.113.0/24, "2001:db8:5::/64"]
  - name: dns
    prefixes: [198.51.100.0/24]
{protect}upstream:
  asn: {GW_AS}
  router_id: {GW_V4}
  peers:
    - {{name: transit, address: {UP_V4}, asn: {UP_AS}}}
  speaker:
    api: {workdir}/gobgp.sock
  rtbh:
    groups: [web]
    next_hop: {{ipv6: "{GW_V6}"}}      # a v6 route over a v4 session needs a v6 next hop
{upstream}{extra}"""


@dataclass
class UpstreamLab:
    """The built pair, BIRD and the speaker; a context manager that removes all of it."""

    workdir: Path
    policy: str
    topology: Topology | None = None
    bird: Bird | None = None
    speaker: subprocess.Popen[bytes] | None = None

    @property
    def policy_path(self) -> Path:
        return self.workdir / "policy.yaml"

    @property
    def api(self) -> Path:
        return self.workdir / "gobgp.sock"

    def __enter__(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.policy_path.write_text(self.policy)
        self.topology = Topology(run_prefix("u"), [Node("up"), Node("gw")], [
            Link(End("up", "up-gw", (f"{UP_V4}/24", f"{UP_V6}/64")),
                 End("gw", "gw-in", (f"{GW_V4}/24", f"{GW_V6}/64"))),
        ])
        try:
            self.topology.build()
            self.bird = Bird(self.topology, "up", self.workdir,
                             bird_config(router_id=UP_V4, local_as=UP_AS, neighbors=[(GW_V4, GW_AS)]))
            self.bird.start()
            self.start_speaker()
        except BaseException:
            self.close()
            raise
        return self

    def start_speaker(self, timeout: float = 30.0) -> None:
        assert self.topology is not None
        log = (self.workdir / "speaker.log").open("ab")
        self.speaker = self.topology.popen(
            "gw", [FLOODGUARD, "speaker", "-c", str(self.policy_path), "--gobgpd-config",
                   str(self.workdir / "gobgpd.json")], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while not self.api.exists():
            if self.speaker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"floodguard speaker did not start: {self.speaker_log()[-3000:]}")
            time.sleep(0.05)
        assert self.bird is not None
        self.bird.wait("the BGP session", lambda: self.bird is not None and self.bird.session() == "Established",
                       timeout)

    def stop_speaker(self) -> None:
        if self.speaker is not None and self.speaker.poll() is None:
            self.speaker.terminate()
            self.speaker.wait(timeout=15)

    def speaker_log(self) -> str:
        p = self.workdir / "speaker.log"
        return p.read_text() if p.exists() else ""

    def close(self) -> None:
        try:
            self.stop_speaker()
        finally:
            if self.bird is not None:
                self.bird.stop()
            if self.topology is not None:
                self.topology.teardown()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


__all__ = ["GW_AS", "GW_V4", "GW_V6", "UP_AS", "UP_V4", "UP_V6", "UpstreamLab", "policy_text"]
