"""The real daemon on a real veth pair: CLI verbs, kill and restart, reboot,
upgrade migration, interfaces that come and go, and the notify protocol.

Traffic is real: UDP datagrams from the sender namespace to a socket in the
target namespace, where the agent runs.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_proc import AgentProc
from wire import Traffic, ban, build_program

from agent.contract import abi
from agent.datapath import attach, loader
from agent.datapath.mapport import MapPort
from agent.datapath.maps import Maps
from agent.lab.topology import VethPair

BANNED = "192.0.2.66"
LEGIT = "192.0.2.77"


@pytest.fixture
def agent(veth_pair: VethPair, tmp_path: Path) -> Iterator[AgentProc]:
    a = AgentProc(veth_pair, tmp_path / "agent")
    try:
        yield a
    finally:
        a.cleanup()


@pytest.fixture
def traffic(veth_pair: VethPair) -> Iterator[Traffic]:
    t = Traffic(veth_pair)
    t.add_source(BANNED)
    t.add_source(LEGIT)
    try:
        yield t
    finally:
        t.close()


class Flood(threading.Thread):
    """Sends from one source until stopped; counts what the kernel accepted."""

    def __init__(self, traffic: Traffic, src: str) -> None:
        super().__init__(daemon=True)
        self.traffic, self.sock = traffic, traffic.sender(src)
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.sent += self.traffic.send(self.sock, 50).packets
            time.sleep(0.001)


def received(traffic: Traffic, listener: socket.socket, quiet: float = 0.3) -> Counter[str]:
    got: Counter[str] = Counter()
    Traffic.drain(listener, got, until=lambda: True, timeout=quiet)
    return got


def test_cli_verbs_against_a_running_daemon(agent: AgentProc, traffic: Traffic) -> None:
    agent.start()
    listener = traffic.listen(socket.AF_INET)

    st = agent.cli_json("status")
    (itf,) = st["interfaces"]
    assert itf["attached"] and itf["mode"] == "native" and itf["name"] == agent.pair.target.ifname
    assert st["program"]["id"] == agent.xdp_prog_id()
    assert "1 deny" in st["policy"]["summary"]
    human = agent.cli("status").stdout
    assert "INTERFACE" in human and agent.pair.target.ifname in human

    # ban answers only after the map write: the very next packet is dropped.
    banned_at = time.monotonic()
    out = agent.cli("ban", BANNED, "--ttl", "10m", "--reason", "scanner").stdout
    assert f"banned {BANNED}/32" in out
    traffic.send(traffic.sender(BANNED), 20)
    traffic.send(traffic.sender(LEGIT), 20)
    got = received(traffic, listener)
    assert got[BANNED] == 0 and got[LEGIT] == 20

    bans = {b["prefix"]: b for b in agent.cli_json("bans")}
    assert bans[f"{BANNED}/32"]["origin"] == "operator" and bans[f"{BANNED}/32"]["reason"] == "scanner"
    # what is left of the TTL is what it was given minus the time that passed (measured, not assumed)
    assert 600 - (time.monotonic() - banned_at) - 1 <= bans[f"{BANNED}/32"]["ttl_seconds"] <= 600
    assert bans["10.99.0.0/16"]["origin"] == "policy" and "policy deny" in bans["10.99.0.0/16"]["reason"]
    assert "scanner" in agent.cli("bans").stdout

    ex = agent.cli_json("explain", BANNED)
    assert ex["verdict"].startswith("banned") and ex["entries"][0]["reason"] == "scanner"
    ex = agent.cli_json("explain", str(agent.pair.target.ipv4))
    assert ex["as_destination"]["group"] == "web"
    assert "protected: group web" in agent.cli("explain", str(agent.pair.target.ipv4)).stdout

    r = agent.cli("unban", "10.99.0.0/16", check=False)
    assert r.returncode == 1 and "deny list" in r.stderr and "policy.yaml" in r.stderr
    assert "unbanned" in agent.cli("unban", BANNED).stdout
    traffic.send(traffic.sender(BANNED), 10)
    assert received(traffic, listener)[BANNED] == 10

    # Wrong arguments: one sentence, no traceback.
    bad = (
        (["ban", "300.1.2.3"], "not an IP address"),
        (["ban", "192.0.2.1/24"], "did you mean 192.0.2.0/24"),
        (["ban", BANNED, "--ttl", "soon"], "--ttl soon"),
        (["explain", "nope"], "not an IP address"),
    )
    for args, msg in bad:
        r = agent.cli(*args, check=False)
        assert r.returncode == 1 and msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)

    assert agent.cli_json("attacks") == {"active": [], "recent": []}
    assert "active attacks: 0" in agent.cli("attacks").stdout
    top = agent.cli_json("top")
    assert {"destinations", "sources", "groups", "rates"} <= set(top)
    assert "DESTINATION" in agent.cli("top", "--once").stdout

    assert "policy reloaded" in agent.cli("reload").stdout
    agent.policy.write_text(agent.policy.read_text().replace("reason:", "reasn:"))
    r = agent.cli("reload", check=False)
    assert r.returncode == 1 and "reasn" in r.stderr and "previous policy keeps running" in r.stderr

    res = agent.cli("detach").stdout
    assert "detached" in res
    assert agent.proc is not None and agent.proc.wait(20) == 0
    assert agent.xdp_prog_id() == 0 and not Path(agent.pin_root).exists(), agent.log()[-3000:]


def ticks_so_far(agent: AgentProc) -> int:
    """Control ticks the agent has run (its tick histogram's count, from its metrics endpoint)."""
    import urllib.request

    url = f"http://127.0.0.1:{agent.metrics_port}/metrics"
    body = agent.pair.topology.call(agent.pair.target.ns, lambda: urllib.request.urlopen(url, timeout=10).read())
    (line,) = [ln for ln in body.decode().splitlines() if ln.startswith("floodguard_tick_duration_seconds_count")]
    return int(float(line.rsplit(" ", 1)[1]))


def wait_ticks(agent: AgentProc, n: int, timeout: float = 60) -> None:
    until = ticks_so_far(agent) + n
    deadline = time.monotonic() + timeout
    while ticks_so_far(agent) < until:
        assert time.monotonic() < deadline, f"the agent ran fewer than {n} ticks in {timeout} s"
        time.sleep(0.1)


def test_the_state_file_is_written_when_something_changes_not_every_tick(agent: AgentProc) -> None:
    agent.start()
    path = agent.dir / "state" / "state.json"

    def version() -> tuple[int, int]:
        st = path.stat()  # every save is a new file renamed over the old one
        return st.st_ino, st.st_mtime_ns

    at_start = version()
    wait_ticks(agent, 8)
    assert version() == at_start, "ticks that changed nothing rewrote the state file"
    agent.cli("ban", BANNED, "--ttl", "1h", "--reason", "cadence")
    after_ban = version()
    assert after_ban != at_start  # saved before the verb answered
    saved = json.loads(path.read_text())
    assert [(e["prefix"], e["reason"]) for e in saved["entries"]] == [(f"{BANNED}/32", "cadence")]
    wait_ticks(agent, 8)
    assert version() == after_ban


def test_dead_daemon_says_so(tmp_path: Path) -> None:
    import subprocess

    from agent_proc import FLOODGUARD

    r = subprocess.run([FLOODGUARD, "status", "--socket", str(tmp_path / "none.sock")], capture_output=True, text=True)
    assert r.returncode == 1 and "not running" in r.stderr and "Traceback" not in r.stderr


def test_sigkill_leaves_bans_enforced_and_restart_finds_them(agent: AgentProc, traffic: Traffic) -> None:
    agent.start()
    listener = traffic.listen(socket.AF_INET)
    agent.cli("ban", BANNED, "--reason", "kill test")
    prog_before = agent.xdp_prog_id()
    flood = Flood(traffic, BANNED)
    flood.start()
    try:
        time.sleep(0.5)
        agent.kill()
        sent_at_kill = flood.sent
        time.sleep(1.0)  # the daemon is dead; the kernel still enforces
        assert flood.sent - sent_at_kill > 100
        assert agent.xdp_prog_id() == prog_before
        agent.start()
        assert agent.xdp_prog_id() != prog_before  # replaced atomically by the new build
        time.sleep(0.5)
    finally:
        flood.stop.set()
        flood.join()
    got = received(traffic, listener)
    assert got[BANNED] == 0, f"{got[BANNED]} of {flood.sent} banned datagrams got through"
    bans = {b["prefix"]: b for b in agent.cli_json("bans")}
    assert bans[f"{BANNED}/32"]["reason"] == "kill test"
    # counters survived: the banned datagrams of both lives are all counted
    st = agent.cli_json("status")
    assert st["bans"]["operator"] == 1
    with Maps.from_pins(f"{agent.pin_root}/v{abi.ABI_VERSION}") as maps:
        port = MapPort(maps)
        banned = int(port.read_stats()[:, abi.Reason.BANNED, abi.TrafficClass.UDP, 0, 0].sum())
        port.close()
    assert banned >= flood.sent * 0.95, (banned, flood.sent)
    assert agent.events("attached")[-1]["replaced"] == prog_before


def test_sigkill_during_a_reload_loses_nothing(agent: AgentProc, traffic: Traffic, tmp_path: Path) -> None:
    base = agent.policy.read_text().replace("  prefixes: 4096\n", "  prefixes: 262144\n")
    agent.policy.write_text(base)
    agent.start()
    listener = traffic.listen(socket.AF_INET)
    agent.cli("ban", BANNED, "--reason", "before the reload")
    # A reload with work in it: 100k deny prefixes to parse, compile and write.
    deny = tmp_path / "deny.txt"
    deny.write_text("".join(f"{10 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.0/24\n" for i in range(100_000)))
    old = 'deny:\n  prefixes: [{prefix: 10.99.0.0/16, reason: "policy deny"}]'
    assert old in base
    new = base.replace(old, old + f"\n  files: [{deny}]")
    flood = Flood(traffic, BANNED)
    flood.start()
    try:
        agent.policy.write_text(new)
        agent.signal(signal.SIGHUP)
        assert agent.listener is not None
        agent.listener.wait_for("RELOADING", timeout=30)
        agent.kill()  # in the middle of the reload (or just after it: the outcome must be the same)
        killed_at = flood.sent
        agent.start()
        deadline = time.monotonic() + 30
        while flood.sent - killed_at < 500 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        flood.stop.set()
        flood.join()
    # The ban held through the kill and the restart; the restarted agent runs the new file whole.
    got = received(traffic, listener)
    assert got[BANNED] == 0, f"{got[BANNED]} of {flood.sent} banned datagrams got through"
    bans = {b["prefix"]: b for b in agent.cli_json("bans")}
    assert bans[f"{BANNED}/32"]["reason"] == "before the reload"
    assert {"10.0.0.0/24", "11.134.159.0/24", "10.99.0.0/16"} <= set(bans)  # the file's first and last
    assert agent.cli_json("status")["bans"] == {"policy": 100_001, "operator": 1, "auto": 0}


def test_reboot_restores_bans_from_the_state_file(agent: AgentProc, traffic: Traffic) -> None:
    agent.start()
    banned_at = time.monotonic()
    agent.cli("ban", BANNED, "--ttl", "1h", "--reason", "before reboot")
    agent.stop()
    # A reboot: the program and every pin are gone; /var/lib stays.
    attach.detach(agent.pair.target.ifname, netns=agent.pair.target.ns)
    for d in Path(agent.pin_root).iterdir():
        loader.remove_pins(str(d))
    assert (agent.dir / "state" / "state.json").exists()
    agent.start()
    bans = {b["prefix"]: b for b in agent.cli_json("bans")}
    assert bans[f"{BANNED}/32"]["reason"] == "before reboot"
    assert 3600 - (time.monotonic() - banned_at) - 1 <= bans[f"{BANNED}/32"]["ttl_seconds"] <= 3600
    listener = traffic.listen(socket.AF_INET)
    traffic.send(traffic.sender(BANNED), 10)
    traffic.send(traffic.sender(LEGIT), 10)
    got = received(traffic, listener)
    assert got[BANNED] == 0 and got[LEGIT] == 10
    assert agent.events("state_found")[-1]["source"] == "state file"


def test_upgrade_migrates_the_pins_of_another_version(agent: AgentProc, traffic: Traffic) -> None:
    # An "older" floodguard: its pins under v0, attached, with an operator ban.
    old_dir = f"{agent.pin_root}/v0"
    old = build_program(old_dir)
    maps = Maps.from_program(old)
    port = MapPort(maps)
    ban(port, f"{BANNED}/32")
    attach.attach(agent.pair.target.ifname, old.fd, attach.XdpMode.NATIVE, netns=agent.pair.target.ns)
    old_id = old.id
    port.close()
    maps.close()
    old.close()
    listener = traffic.listen(socket.AF_INET)
    flood = Flood(traffic, BANNED)
    flood.start()
    try:
        time.sleep(0.3)
        agent.start()
        time.sleep(0.3)
    finally:
        flood.stop.set()
        flood.join()
    assert received(traffic, listener)[BANNED] == 0
    assert agent.xdp_prog_id() not in (0, old_id)
    bans = {b["prefix"]: b for b in agent.cli_json("bans")}
    assert bans[f"{BANNED}/32"]["origin"] == "operator"
    assert not Path(old_dir).exists() and not any(p.name.startswith("v0") for p in Path(agent.pin_root).iterdir())
    assert agent.events("abi_changed")


def test_interface_created_later_and_recreated_gets_the_program(agent: AgentProc, traffic: Traffic) -> None:
    pair = agent.pair
    agent.write_policy(interfaces=["fgx0"])  # and the pair's own interface, busy below
    agent.start()
    assert agent.events("interface_unavailable")
    flood = Flood(traffic, LEGIT)  # under load: the agent ticks over a busy interface meanwhile
    flood.start()
    with contextlib.ExitStack() as stop:
        stop.callback(flood.join)
        stop.callback(flood.stop.set)
        _recreate_twice(agent)
    assert flood.sent > 0
    assert agent.xdp_prog_id(pair.target.ifname) == agent.xdp_prog_id()  # the busy one kept its program


def _recreate_twice(agent: AgentProc) -> None:
    pair = agent.pair
    with pair.topology.iproute(pair.target.ns) as ipr:
        for _round in range(2):
            ipr.link("add", ifname="fgx0", kind="veth", peer={"ifname": "fgx1"})
            idx = ipr.link_lookup(ifname="fgx0")[0]
            ipr.link("set", index=idx, state="up")
            # Deadlines are timeouts only (the attach takes milliseconds): each step waits for the
            # event it needs, so a slow machine takes longer and decides the same.
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and not agent.xdp_prog_id("fgx0"):
                time.sleep(0.02)
            assert agent.xdp_prog_id("fgx0") == agent.xdp_prog_id(), agent.log()[-3000:]
            ipr.link("del", index=idx)
            deadline = time.monotonic() + 10.0
            while len(agent.events("interface_lost")) < _round + 1 and time.monotonic() < deadline:
                time.sleep(0.05)
    assert len(agent.events("interface_lost")) == 2, agent.log()[-3000:]


def test_sighup_during_the_build_is_a_reload_not_a_death(agent: AgentProc) -> None:
    agent.start(wait=False)
    assert agent.listener is not None and agent.proc is not None
    # The first log line comes after the handlers are in place and before BCC builds (seconds).
    deadline = time.monotonic() + 60
    while not agent.log().strip() and agent.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    agent.signal(signal.SIGHUP)
    agent.wait_ready()
    reloaded = agent.wait_event("policy_reloaded")
    assert reloaded[0]["trigger"] == "SIGHUP" and agent.proc.poll() is None
    assert agent.xdp_prog_id() != 0


def test_notify_protocol(agent: AgentProc) -> None:
    agent.start(watchdog_usec=400_000, wait=False)
    assert agent.listener is not None
    ready = agent.wait_ready()
    # READY=1 only once the program is attached
    assert agent.xdp_prog_id() != 0
    assert agent.proc is not None and ready.pid == agent.proc.pid
    pings = [agent.listener.wait_for("WATCHDOG", timeout=2) for _ in range(3)]
    assert all(p.pid == agent.proc.pid for p in pings)
    agent.signal(signal.SIGHUP)
    agent.listener.wait_for("RELOADING", timeout=10)
    agent.listener.wait_for("READY", timeout=10)
    # A file the YAML loader refuses (an unknown tag used to escape as an exception after
    # RELOADING=1), reloaded because it changed: rejected, counted, and READY=1 still follows.
    good = agent.policy.read_text()

    def events_once(name: str, n: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 30
        while len(found := agent.events(name)) < n and time.monotonic() < deadline:
            assert agent.listener is not None
            agent.listener.drain()  # read, as systemd does: a full queue would hold back READY=1
            time.sleep(0.1)
        assert len(found) >= n, f"no {name} #{n} within 30 s:\n{agent.log()[-3000:]}"
        return found

    agent.policy.write_text(good + "mode: !foo enforce\n")
    rejected = events_once("policy_rejected", 1)
    assert "the tag '!foo'" in " ".join(rejected[-1]["errors"]) and rejected[-1]["kept"] == "previous policy"
    assert agent.cli_json("status")["policy"]["reloads_failed"] == 1
    agent.policy.write_text(good)
    events_once("policy_reloaded", 2)  # the restored file, reloaded because it changed
    agent.signal(signal.SIGTERM)
    agent.listener.wait_for("STOPPING", timeout=10)
    assert agent.proc.wait(20) == 0
    # Stopping leaves the program attached and enforcing.
    assert agent.xdp_prog_id() != 0
    order = [k for k in agent.listener.keys() if k in ("READY", "RELOADING", "STOPPING")]  # noqa: SIM118
    assert order == ["READY", *["RELOADING", "READY"] * 3, "STOPPING"], order


def test_live_scrape_passes_promtool(agent: AgentProc, traffic: Traffic) -> None:
    import subprocess
    import urllib.request

    agent.start()
    agent.cli("ban", BANNED)
    listener = traffic.listen(socket.AF_INET)
    traffic.send(traffic.sender(BANNED), 30)
    traffic.send(traffic.sender(LEGIT), 20)
    received(traffic, listener)
    # The agent listens on the loopback of its own namespace.
    url = f"http://127.0.0.1:{agent.metrics_port}/metrics"
    body = agent.pair.topology.call(agent.pair.target.ns, lambda: urllib.request.urlopen(url, timeout=10).read())
    text = body.decode()
    iface = agent.pair.target.ifname
    banned = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                 if line.startswith("floodguard_packets_total{") and 'reason="banned"' in line
                 and f'interface="{iface}"' in line)
    assert banned == 30
    assert 'floodguard_bans_active{origin="operator"} 1.0' in text
    assert "floodguard_policy_reloads_total" in text and "floodguard_tick_duration_seconds_bucket" in text
    check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
    assert check.returncode == 0 and not check.stdout.strip() and not check.stderr.strip(), check


def test_the_cli_answers_while_2000_idle_connections_hold_the_metrics_port(agent: AgentProc) -> None:
    import resource
    import selectors
    import urllib.error
    import urllib.request

    import psutil

    from agent.metrics_http import MAX_CONNECTIONS

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The daemon gets the common default of 1024 descriptors (the unit raises it; the server must not need it).
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        agent.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 4096), hard), hard))
    daemon = psutil.Process(agent.proc.pid if agent.proc else 0)
    assert daemon.rlimit(psutil.RLIMIT_NOFILE)[0] <= 1024

    def connect(n: int) -> list[socket.socket]:
        out = []
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", agent.metrics_port))
            out.append(s)
        return out

    def answers(wave: list[socket.socket]) -> list[bytes]:
        """What each connection of ``wave`` was told, once all were told something (or 60 s passed)."""
        sel = selectors.DefaultSelector()
        for s in wave:
            sel.register(s, selectors.EVENT_READ)
        got: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(got) < len(wave) and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1.0):
                sel.unregister(key.fileobj)
                with contextlib.suppress(OSError):
                    got.append(key.fileobj.recv(4096))  # type: ignore[union-attr]
        sel.close()
        return got

    def in_ns(n: int) -> list[socket.socket]:
        return agent.pair.topology.call(agent.pair.target.ns, lambda: connect(n))

    # The first MAX_CONNECTIONS take every slot of the metrics server, saying nothing. The rest
    # come in waves that fit the accept queue (a wave larger than the listen backlog would
    # lose handshakes in the kernel, before the daemon could see them). The daemon holds no
    # connection past its deadline: each is answered 503 at once while the slots are taken, or
    # served and cut off (its stream ends) at the deadline of DEADLINE_S.
    idle = in_ns(MAX_CONNECTIONS)
    try:
        while len(idle) < 2000:
            wave = in_ns(min(32, 2000 - len(idle)))
            idle += wave
            told = answers(wave)
            assert len(told) == len(wave) and all(a.startswith(b"HTTP/1.1 503") or a == b"" for a in told), (
                f"{len(told)} of {len(wave)} connections after the first {len(idle) - len(wave)} were answered "
                "(a 503, or an end of stream at the deadline): the metrics server holds the others")

        # The CLI still reaches the agent, and a ban still lands, with all 2000 open.
        assert agent.cli_json("status")["interfaces"][0]["attached"]
        assert f"banned {BANNED}/32" in agent.cli("ban", BANNED, "--reason", "during the flood").stdout
        assert daemon.num_fds() < 512, "the metrics server holds at most a few connections"
        assert agent.wait_event("metrics_clients_refused")[0]["refused"] > 0
    finally:
        for s in idle:
            s.close()

    # With the idle clients gone, Prometheus is served again (a 503 while slots free up is retried).
    url = f"http://127.0.0.1:{agent.metrics_port}/metrics"

    def scrape() -> str:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=30) as r:
                    return str(r.read().decode())
            except urllib.error.HTTPError as e:
                if e.code != 503 or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    text = agent.pair.topology.call(agent.pair.target.ns, scrape)
    assert 'floodguard_bans_active{origin="operator"} 1.0' in text
