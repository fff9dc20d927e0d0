"""agent/control/hook.py: the operator's hook gets JSON on stdin and never stalls the loop."""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from synthetic import Flow, Scenario, lab_data

from agent.contract.abi import TrafficClass
from agent.control.hook import STDERR_TAIL, HookRunner, unsafe_hook
from agent.policy.model import Policy

WEB = ipaddress.ip_address("203.0.113.10")
DEADLINE_S = 20.0


def script(path: Path, body: str) -> Path:
    """An executable Python script (no shell anywhere)."""
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path


def wait_for(what: Callable[[], bool], message: str) -> None:
    """Poll until what() holds; fail with message after DEADLINE_S (the hook runs in another process)."""
    end = time.monotonic() + DEADLINE_S
    while not what():
        if time.monotonic() > end:
            pytest.fail(message)
        time.sleep(0.02)


@pytest.fixture
def runner_factory() -> Iterator[Callable[..., HookRunner]]:
    made: list[HookRunner] = []

    def make(path: Path, **kw: float | int) -> HookRunner:
        r = HookRunner(path, **kw)  # type: ignore[arg-type]
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def test_the_hook_gets_each_record_as_json_on_stdin(tmp_path: Path, runner_factory: Callable[..., HookRunner]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    hook = script(
        tmp_path / "hook",
        "import json, os, sys\n"
        f"d = json.load(sys.stdin)\nopen(os.path.join({str(out)!r}, d['id']), 'w').write(json.dumps(d))\n",
    )
    r = runner_factory(hook)
    for i in range(3):
        assert r.submit({"event": "attack_started", "id": f"a{i}", "target": {"host": "203.0.113.10"}})
    wait_for(lambda: len(list(out.iterdir())) == 3, "the hook did not run three times")
    got = json.loads((out / "a1").read_text())
    assert got == {"event": "attack_started", "id": "a1", "target": {"host": "203.0.113.10"}}
    wait_for(lambda: r.ran == 3, "runs not counted")


def test_no_shell_interprets_a_record(tmp_path: Path, runner_factory: Callable[..., HookRunner]) -> None:
    marker = tmp_path / "pwned"
    seen = tmp_path / "seen"
    hook = script(tmp_path / "hook", f"import sys\nopen({str(seen)!r}, 'w').write(sys.stdin.read())\n")
    r = runner_factory(hook)
    r.submit({"event": "x", "id": f"$(touch {marker}); `touch {marker}`"})
    wait_for(seen.exists, "the hook did not run")
    assert not marker.exists()
    assert "touch" in seen.read_text()


def test_a_failing_hook_is_logged_with_its_exit_code_and_stderr(
    tmp_path: Path, runner_factory: Callable[..., HookRunner]
) -> None:
    hook = script(tmp_path / "hook", "import sys\nsys.stdin.read()\nprint('no route to ticketing', file=sys.stderr)\n"
                                     "sys.exit(3)\n")
    r = runner_factory(hook)
    with capture_logs() as logs:
        r.submit({"event": "attack_ended", "id": "a1"})
        wait_for(lambda: r.failed == 1, "the failure was not counted")
    (e,) = [e for e in logs if e["event"] == "hook_failed"]
    assert e["exit_code"] == 3 and "no route to ticketing" in e["stderr"] and e["attack_id"] == "a1"


def test_a_missing_hook_is_logged_not_raised(tmp_path: Path, runner_factory: Callable[..., HookRunner]) -> None:
    r = runner_factory(tmp_path / "nope")
    with capture_logs() as logs:
        r.submit({"event": "attack_started", "id": "a1"})
        wait_for(lambda: r.failed == 1, "the failure was not counted")
    assert [e["event"] for e in logs] == ["hook_failed"]


def hook_with_a_child(tmp_path: Path, *, new_session: bool) -> tuple[Path, Path]:
    """A hook that starts a child (in a session of its own: setsid()), writes both pids, and hangs."""
    pids = tmp_path / "pids"
    hook = script(
        tmp_path / "hook",
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], "
        f"start_new_session={new_session})\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(600)\n",
    )
    return hook, pids


def test_a_slow_hook_is_killed_at_its_timeout_with_its_children(
    tmp_path: Path, runner_factory: Callable[..., HookRunner]
) -> None:
    hook, pids = hook_with_a_child(tmp_path, new_session=False)
    # The timeout is long enough for the hook to start its child and say so on any machine; the test
    # waits for that first, so what it then decides is the kill, not a race with Python's start-up.
    r = runner_factory(hook, timeout_s=3.0)
    with capture_logs() as logs:
        r.submit({"event": "attack_started", "id": "a1"})
        wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, "the hook never started its child")
        wait_for(lambda: r.failed == 1, "the timeout was not counted")
    assert [e["event"] for e in logs] == ["hook_timeout"]
    for pid in map(int, pids.read_text().split()):
        wait_for(lambda pid=pid: not _alive(pid), f"process {pid} of the hook outlived its timeout")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose (its parent reaps it later).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_grandchild_that_leaves_the_group_is_killed_too(
    tmp_path: Path, runner_factory: Callable[..., HookRunner]
) -> None:
    hook, pids = hook_with_a_child(tmp_path, new_session=True)
    r = runner_factory(hook, timeout_s=3.0)
    r.submit({"event": "attack_started", "id": "a1"})
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, "the hook never started its child")
    hook_pid, child_pid = map(int, pids.read_text().split())
    assert os.getpgid(child_pid) == child_pid != hook_pid  # it really left the group
    wait_for(lambda: r.failed == 1, "the timeout was not counted")
    wait_for(lambda: not _alive(child_pid), "the grandchild that called setsid() outlived the timeout")
    # Reaped, not left a zombie: the hook is no longer anybody's child here.
    assert not Path(f"/proc/{hook_pid}").exists() or Path(f"/proc/{hook_pid}/stat").read_text().split()[2] != "Z"


def test_a_hook_that_floods_stderr_costs_a_bounded_tail(
    tmp_path: Path, runner_factory: Callable[..., HookRunner]
) -> None:
    # 64 MiB on stderr, then failure: only the tail reaches the log (and memory).
    hook = script(tmp_path / "hook", "import sys\nsys.stdin.read()\nchunk = b'x' * (1 << 20)\n"
                                     "for _ in range(64):\n    sys.stderr.buffer.write(chunk)\n"
                                     "sys.stderr.buffer.write(b'THE END')\nsys.exit(1)\n")
    r = runner_factory(hook, timeout_s=60.0)
    tracemalloc.start()
    try:
        with capture_logs() as logs:
            r.submit({"event": "attack_started", "id": "a1"})
            wait_for(lambda: r.failed == 1, "the failure was not counted")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (e,) = [e for e in logs if e["event"] == "hook_failed"]
    assert e["stderr"].endswith("THE END") and len(e["stderr"]) == STDERR_TAIL
    assert peak < 8 << 20, f"{peak:,} bytes allocated at the peak for 64 MiB of stderr"


@pytest.mark.parametrize(
    ("mode", "owner", "reason"),
    [
        (0o757, 0, "writable by group and others: chmod go-w"),
        (0o775, 0, "writable by its group: chmod go-w"),
        (0o755, 1000, "belongs to uid 1000, not root: chown root"),
        (0o644, 0, "not executable: chmod +x"),
    ],
)
def test_a_hook_others_could_write_is_refused(
    tmp_path: Path, runner_factory: Callable[..., HookRunner], mode: int, owner: int, reason: str
) -> None:
    ran = tmp_path / "ran"
    hook = script(tmp_path / "hook", f"open({str(ran)!r}, 'w').write('ran')\n")
    hook.chmod(mode)
    os.chown(hook, owner, 0)
    r = runner_factory(hook)
    with capture_logs() as logs:
        r.submit({"event": "attack_started", "id": "a1"})
        wait_for(lambda: r.failed == 1, "the refusal was not counted")
    (e,) = [e for e in logs if e["event"] == "hook_refused"]
    assert reason in e["reason"] and not ran.exists()


def test_a_hook_in_a_directory_others_could_write_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "open"
    d.mkdir()
    hook = script(d / "hook", "pass\n")
    d.chmod(0o777)
    assert unsafe_hook(hook) == f"its directory {d} is writable by others: chmod go-w {d}"
    d.chmod(0o1777)  # sticky, like /tmp: nobody can replace another's file
    assert unsafe_hook(hook) is None


def test_a_full_queue_drops_records_with_a_log_line(tmp_path: Path, runner_factory: Callable[..., HookRunner]) -> None:
    started = tmp_path / "started"
    hook = script(tmp_path / "hook", f"import time\nopen({str(started)!r}, 'w')\ntime.sleep(600)\n")
    r = runner_factory(hook, timeout_s=300, queue_size=2)
    with capture_logs() as logs:
        r.submit({"event": "attack_started", "id": "running"})
        wait_for(started.exists, "the hook did not start")
        results = [r.submit({"event": "attack_started", "id": f"q{i}"}) for i in range(5)]
    assert results == [True, True, False, False, False]
    assert r.dropped == 3
    dropped = [e for e in logs if e["event"] == "hook_dropped"]
    assert [e["attack_id"] for e in dropped] == ["q2", "q3", "q4"]


# --- with the controller ---------------------------------------------------------------------------


def _policy(hook: Path) -> Policy:
    data = lab_data()
    data["mitigation"]["hook"] = str(hook)
    return Policy.model_validate(data)


def test_the_controller_hands_started_and_ended_attacks_to_the_hook(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    hook = script(
        tmp_path / "hook",
        "import json, os, sys\n"
        # written aside then renamed: the test sees each file whole or not at all
        f"d = json.load(sys.stdin)\np = os.path.join({str(out)!r}, d['event'])\n"
        "open(p + '.tmp', 'w').write(json.dumps(d))\nos.replace(p + '.tmp', p)\n",
    )
    sc = Scenario.build(_policy(hook))
    try:
        gid = sc.gid("servers")
        sc.replay.add(Flow(WEB, gid, TrafficClass.UDP, 1000, sources=(ipaddress.ip_address("100.64.1.1"),)))
        sc.run(10)
        sc.replay.add(Flow(WEB, gid, TrafficClass.UDP, 200_000, sport=123, dport=None, start_s=sc.replay.t,
                           stop_s=sc.replay.t + 3))
        sc.run(10)
        wait_for(lambda: {p.name for p in out.iterdir()} == {"attack_started", "attack_ended"},
                 "the hook did not get both events")
    finally:
        sc.controller.close()
    started = json.loads((out / "attack_started").read_text())
    ended = json.loads((out / "attack_ended").read_text())
    assert started["id"] == ended["id"] and started["vector"] == "udp_reflection" and started["service"] == "ntp"
    assert started["active"] is True and ended["active"] is False and ended["end_reason"] == "hold_down"
    assert started["target"]["host"] == str(WEB)


def test_a_hanging_hook_does_not_stall_the_ticks(tmp_path: Path) -> None:
    started = tmp_path / "started"
    hook = script(tmp_path / "hook", f"import time\nopen({str(started)!r}, 'w')\ntime.sleep(600)\n")
    sc = Scenario.build(_policy(hook), hook_timeout_s=300, hook_queue=1)
    try:
        gid = sc.gid("servers")
        sc.replay.add(Flow(WEB, gid, TrafficClass.UDP, 1000, sources=(ipaddress.ip_address("100.64.1.1"),)))
        sc.run(10)
        # Attacks that come and go: every start and end is a record for the hook.
        sc.replay.add(Flow(WEB, gid, TrafficClass.UDP, lambda t: 200_000 if int(t) % 10 < 3 else 0,
                           sport=123, dport=None, start_s=sc.replay.t))
        with capture_logs() as logs:
            sc.run(5)
            wait_for(started.exists, "the hook did not start")
            reports = sc.run(60)
        # 240 ticks ran while the hook slept: none waited for it.
        assert len(reports) == 60 / sc.tick_s
        assert not sc.controller._hook or sc.controller._hook.ran == 0
        ended = [e for e in logs if e["event"] == "attack_ended"]
        assert len(ended) >= 5
        assert [e for e in logs if e["event"] == "hook_dropped"], "records beyond the queue are dropped, logged"
        assert sc.controller.stats().hook_dropped > 0
    finally:
        sc.controller.close()
