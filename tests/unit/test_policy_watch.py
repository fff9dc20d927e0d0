"""The reload watcher: every way tools change files gives exactly one debounced reload.

Real inotify on a temporary directory; only the clock is fake, so the tests
never sleep. inotify queues an event before the syscall that caused it
returns, so ``poll(0)`` right after a change already sees it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.policy import load_policy
from agent.policy.watch import PolicyWatcher


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "policy.yaml").write_text(
        "include: [conf.d/*.yaml]\ninterfaces: [eth0]\ndeny: {files: [deny.txt]}\n"
    )
    (tmp_path / "deny.txt").write_text("192.0.2.0/24\n")
    (tmp_path / "conf.d" / "a.yaml").write_text("limits: {udp: {pps: 1k}}\n")
    return tmp_path


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def watcher(layout: Path, clock: Clock) -> Iterator[PolicyWatcher]:
    result = load_policy(layout / "policy.yaml")
    assert result.policy is not None
    with PolicyWatcher(result.files, result.include_globs, debounce=1.0, clock=clock) as watch:
        yield watch


def reloads(watcher: PolicyWatcher, clock: Clock) -> list[bool]:
    """Poll through the debounce window and well past it; one True means one reload."""
    seen = [watcher.poll(0)]
    for step in (0.5, 0.6, 5.0, 30.0):
        clock.now += step
        seen.append(watcher.poll(0))
    return seen


def rename_over(layout: Path) -> None:
    tmp = layout / ".policy.yaml.tmp"
    tmp.write_text("include: [conf.d/*.yaml]\ninterfaces: [eth1]\n")
    os.rename(tmp, layout / "policy.yaml")


def write_in_place(layout: Path) -> None:
    with open(layout / "deny.txt", "a") as handle:
        handle.write("198.51.100.0/24\n")


def delete(layout: Path) -> None:
    (layout / "conf.d" / "a.yaml").unlink()


def new_glob_match(layout: Path) -> None:
    (layout / "conf.d" / "b.yaml").write_text("limits: {icmp: {pps: 10}}\n")


def chmod(layout: Path) -> None:
    os.chmod(layout / "policy.yaml", 0o600)


@pytest.mark.parametrize(
    "change",
    [rename_over, write_in_place, delete, new_glob_match, chmod],
    ids=["rename over", "in-place write", "delete", "new file matching a glob", "chmod"],
)
def test_each_change_triggers_exactly_one_reload(
    change: Callable[[Path], None], layout: Path, watcher: PolicyWatcher, clock: Clock
) -> None:
    assert watcher.poll(0) is False
    change(layout)
    # Not before the debounce (1 s after the event), exactly once after it.
    assert reloads(watcher, clock) == [False, False, True, False, False]


def test_unrelated_files_are_ignored(layout: Path, watcher: PolicyWatcher, clock: Clock) -> None:
    (layout / "conf.d" / ".a.yaml.swp").write_text("x")
    (layout / "conf.d" / "a.yaml~").write_text("x")
    (layout / "notes.txt").write_text("x")
    assert reloads(watcher, clock) == [False] * 5


def test_a_burst_of_changes_is_one_reload_after_the_last(
    layout: Path, watcher: PolicyWatcher, clock: Clock
) -> None:
    for _ in range(5):
        write_in_place(layout)
        clock.now += 0.5
        assert watcher.poll(0) is False  # each change pushes the reload back
    clock.now += 1.0
    assert watcher.poll(0) is True
    assert watcher.poll(0) is False


def test_a_file_rewritten_forever_still_reloads_after_max_delay(layout: Path, clock: Clock) -> None:
    result = load_policy(layout / "policy.yaml")
    with PolicyWatcher(result.files, result.include_globs, debounce=1.0, max_delay=3.0, clock=clock) as watch:
        due = []
        for _ in range(10):
            write_in_place(layout)
            due.append(watch.poll(0))
            clock.now += 0.5
        assert due == [False] * 6 + [True] + [False] * 3


def test_timeout_and_fileno_serve_a_select_loop(layout: Path, watcher: PolicyWatcher, clock: Clock) -> None:
    assert watcher.timeout() is None
    assert isinstance(watcher.fileno(), int) and watcher.fileno() >= 0
    chmod(layout)
    watcher.poll(0)
    assert watcher.pending()
    assert watcher.timeout() == pytest.approx(1.0)
    clock.now += 0.25
    assert watcher.timeout() == pytest.approx(0.75)


def test_update_follows_a_new_file_list(layout: Path, watcher: PolicyWatcher, clock: Clock) -> None:
    other = layout / "lists"
    other.mkdir()
    (other / "allow.txt").write_text("10.0.0.0/8\n")
    (layout / "policy.yaml").write_text("interfaces: [eth0]\nallow: {files: [lists/allow.txt]}\n")
    assert reloads(watcher, clock).count(True) == 1
    result = load_policy(layout / "policy.yaml")
    watcher.update(result.files, result.include_globs)
    # Dropping the conf.d watch is not itself a change.
    assert reloads(watcher, clock) == [False] * 5
    (other / "allow.txt").write_text("10.0.0.0/8\n172.16.0.0/12\n")
    assert reloads(watcher, clock) == [False, False, True, False, False]
    # conf.d is no longer included: its files no longer count.
    new_glob_match(layout)
    assert reloads(watcher, clock) == [False] * 5


def test_a_conf_d_created_later_is_noticed(tmp_path: Path, clock: Clock) -> None:
    (tmp_path / "policy.yaml").write_text("include: [conf.d/*.yaml]\ninterfaces: [eth0]\n")
    result = load_policy(tmp_path / "policy.yaml")
    with PolicyWatcher(result.files, result.include_globs, clock=clock) as watch:
        (tmp_path / "conf.d").mkdir()
        assert reloads(watch, clock) == [False] * 5  # an empty directory changes nothing
        (tmp_path / "conf.d" / "x.yaml").write_text("mode: monitor\n")
        assert reloads(watch, clock) == [False, False, True, False, False]


def test_deleting_a_watched_directory_reloads(layout: Path, watcher: PolicyWatcher, clock: Clock) -> None:
    delete(layout)
    (layout / "conf.d").rmdir()
    assert reloads(watcher, clock) == [False, False, True, False, False]
    (layout / "conf.d").mkdir()
    new_glob_match(layout)
    assert reloads(watcher, clock) == [False, False, True, False, False]
