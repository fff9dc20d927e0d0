"""agent/daemon/state.py: the state file's format, and the store that decides when to write it.

The store writes only when something changed, at most once a second, on its
own thread; an operator's ban is written at once. Time is a fake clock, so
"at most once a second" is decided in ticks, not by the machine's speed.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.contract import abi
from agent.contract.keys import PrefixKey, Record, prefix_key
from agent.daemon.state import (
    FILENAME,
    Capture,
    Reasons,
    SavedEntry,
    State,
    StateStore,
    load,
    restore,
    save,
    snapshot,
)

NS = 1_000_000_000


def key(text: str) -> PrefixKey:
    return prefix_key(ipaddress.ip_network(text))


def mono() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Disk:
    """A write function that records what it was given (and can be made to fail or wait)."""

    def __init__(self) -> None:
        self.states: list[State] = []
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, directory: Path, state: State) -> None:  # noqa: ARG002 — the fake keeps the real writer's signature
        self.gate.wait(10)
        if self.fail:
            raise OSError(28, "No space left on device")
        self.states.append(state)


def capture(n: int = 1) -> Capture:
    now = mono()
    recs: list[tuple[PrefixKey, int, int, Record]] = [
        (key(f"198.51.100.{i}/32"), abi.SRC_BAN, abi.Origin.OPERATOR, (now + 60 * NS, now, abi.SRC_BAN, 0))
        for i in range(n)
    ]
    return Capture.of(recs, Reasons(), {"web": 1}, {})


def store_with(tmp_path: Path) -> tuple[StateStore, Clock, Disk]:
    clock, disk = Clock(), Disk()
    return StateStore(tmp_path, clock=clock, write=disk), clock, disk


def test_nothing_changed_nothing_written(tmp_path: Path) -> None:
    store, clock, disk = store_with(tmp_path)
    captured = []

    def cap() -> Capture:
        captured.append(1)
        return capture()

    for _ in range(50):  # fifty ticks of 100 ms
        clock.t += 0.1
        assert not store.maybe_save(cap)
    store.flush()
    assert disk.states == [] and captured == [] and store.writes == 0
    store.close()


def test_changes_are_written_at_most_once_a_second(tmp_path: Path) -> None:
    store, clock, disk = store_with(tmp_path)
    store.changed()
    assert store.maybe_save(lambda: capture(1))
    store.flush()
    assert len(disk.states) == 1 and not store.dirty
    # A change every tick for the next second: nothing is written before it is over.
    for _ in range(9):
        clock.t += 0.1
        store.changed()
        assert not store.maybe_save(lambda: capture(2))
    assert store.dirty
    clock.t += 0.1
    assert store.maybe_save(lambda: capture(3))
    store.flush()
    assert [len(s.entries) for s in disk.states] == [1, 3]  # the latest state, once
    clock.t += 5
    assert not store.maybe_save(lambda: capture(4))  # written, not changed since
    store.close()
    assert store.writes == 2


def test_an_operator_ban_is_written_at_once(tmp_path: Path) -> None:
    store, clock, disk = store_with(tmp_path)
    store.changed()
    assert store.maybe_save(lambda: capture(1))
    store.flush()
    clock.t += 0.1  # well within the second
    assert store.save_now(capture(2))
    assert [len(s.entries) for s in disk.states] == [1, 2]  # written before save_now returned
    assert not store.dirty
    store.close()


def test_the_tick_only_copies_the_writer_thread_writes(tmp_path: Path) -> None:
    store, _clock, disk = store_with(tmp_path)
    disk.gate.clear()  # the disk is slow
    store.changed()
    assert store.maybe_save(lambda: capture(1))  # returns although the write has not happened
    assert disk.states == []
    disk.gate.set()
    store.flush()
    assert len(disk.states) == 1
    assert any(t.name == "state-writer" for t in threading.enumerate())
    store.close()
    assert not any(t.name == "state-writer" for t in threading.enumerate())


def test_a_failed_write_is_logged_and_tried_again(tmp_path: Path) -> None:
    store, clock, disk = store_with(tmp_path)
    disk.fail = True
    store.changed()
    with capture_logs() as logs:
        assert not store.save_now(capture(1))
    assert [e["event"] for e in logs] == ["state_save_failed"] and "No space" in logs[0]["error"]
    assert store.dirty
    disk.fail = False
    clock.t += 1
    assert store.maybe_save(lambda: capture(1))
    store.flush()
    assert len(disk.states) == 1 and not store.dirty
    store.close()


def test_close_writes_the_final_state_and_stops_the_writer(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.changed()
    assert store.maybe_save(lambda: capture(1))
    store.flush()
    store.close(capture(3))
    st = load(tmp_path)
    assert st is not None and len(st.entries) == 3 and store.writes == 2
    assert not any(t.name == "state-writer" for t in threading.enumerate())


def test_capture_keeps_operator_and_automatic_records_only() -> None:
    now = mono()
    recs: list[tuple[PrefixKey, int, int, Record]] = [
        (key("10.99.0.0/16"), abi.SRC_BAN, abi.Origin.POLICY, (0, 0, abi.SRC_BAN, 0)),
        (key("198.51.100.7/32"), abi.SRC_BAN, abi.Origin.OPERATOR, (0, now, abi.SRC_BAN, 1)),
        (key("2001:db8::/48"), abi.SRC_BAN, abi.Origin.AUTO, (now + NS, now, abi.SRC_BAN_MONITOR, 2)),
    ]
    reasons = Reasons({1: "scanner", 2: "syn flood"})
    cap = Capture.of(recs, reasons, {"web": 1}, {"2001:db8::/48": 2})
    reasons.id_of("added later")  # the capture is a copy
    st = cap.state()
    assert [e.prefix for e in st.entries] == ["198.51.100.7/32", "2001:db8::/48"]
    assert st.reasons == {1: "scanner", 2: "syn flood"} and st.group_ids == {"web": 1}
    assert st.ban_counts == {"2001:db8::/48": 2} and st.entries[1].monitor


def test_round_trip_through_the_file(tmp_path: Path) -> None:
    now = mono()
    recs: list[tuple[PrefixKey, int, int, Record]] = [
        (key("198.51.100.7/32"), abi.SRC_BAN, abi.Origin.OPERATOR, (now + 3600 * NS, now, abi.SRC_BAN, 1)),
        (key("192.0.2.0/24"), abi.SRC_ALLOW, abi.Origin.OPERATOR, (0, now, abi.SRC_ALLOW, 0)),
        (key("203.0.113.9/32"), abi.SRC_BAN, abi.Origin.AUTO, (now - NS, now - 2 * NS, abi.SRC_BAN, 0)),  # expired
    ]
    save(tmp_path, snapshot(recs, Reasons({1: "scanner"}), {"web": 1}, {"203.0.113.9/32": 3}))
    st = load(tmp_path)
    assert st is not None and st.ban_counts == {"203.0.113.9/32": 3}
    got = {(k, kind, o): rec for k, kind, o, rec in restore(st, Reasons())}
    assert set(got) == {(key("198.51.100.7/32"), abi.SRC_BAN, abi.Origin.OPERATOR),
                        (key("192.0.2.0/24"), abi.SRC_ALLOW, abi.Origin.OPERATOR)}
    expires = got[(key("198.51.100.7/32"), abi.SRC_BAN, abi.Origin.OPERATOR)][0]
    assert abs(expires - (now + 3600 * NS)) < NS  # wall clock in the file, monotonic again after


def test_a_state_file_written_by_an_earlier_version_loads(tmp_path: Path) -> None:
    """The format is fixed by what is on disk already: this is what the daemon has always written."""
    future = time.time() + 3600
    (tmp_path / FILENAME).write_text(json.dumps({
        "version": 1, "saved_at": time.time(), "group_ids": {"web": 1, "dns": 2},
        "reasons": {"1": "scanner"}, "ban_counts": {"198.51.100.7/32": 2},
        "entries": [{"prefix": "198.51.100.7/32", "kind": "ban", "origin": "operator", "monitor": False,
                     "expires": future, "created": time.time() - 60, "reason": "scanner"},
                    {"prefix": "2001:db8::/48", "kind": "ban", "origin": "auto", "monitor": True,
                     "expires": 0, "created": 0, "reason": ""}],
    }, separators=(",", ":")))
    store = StateStore(tmp_path)
    st = store.load()
    assert st is not None and st.group_ids == {"web": 1, "dns": 2} and st.reasons == {1: "scanner"}
    reasons = Reasons(st.reasons)
    recs = restore(st, reasons)
    assert [(k, o) for k, _kind, o, _r in recs] == [(key("198.51.100.7/32"), abi.Origin.OPERATOR),
                                                    (key("2001:db8::/48"), abi.Origin.AUTO)]
    assert recs[1][3][:3] == (0, 0, abi.SRC_BAN_MONITOR) and recs[0][3][3] == reasons.id_of("scanner")
    store.close()


def test_an_unreadable_file_is_kept_aside_and_the_agent_starts_without_it(tmp_path: Path) -> None:
    # It used to be logged, then overwritten by the first save: the bans it held were gone.
    (tmp_path / FILENAME).write_text("{not json")
    with capture_logs() as logs:
        assert StateStore(tmp_path).load() is None
    (kept,) = tmp_path.glob(f"{FILENAME}.bad-*")
    assert kept.read_text() == "{not json" and not (tmp_path / FILENAME).exists()
    assert logs[0]["event"] == "state_unreadable" and logs[0]["kept"] == str(kept)
    assert StateStore(tmp_path).load() is None


@pytest.mark.parametrize("text", [
    json.dumps({"version": 2, "entries": []}),
    json.dumps([1, 2, 3]),
    b"\xff\xfe not utf-8",
])
def test_an_unknown_version_or_shape_is_kept_aside(tmp_path: Path, text: str | bytes) -> None:
    path = tmp_path / FILENAME
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert load(tmp_path) is None
    assert len(list(tmp_path.glob(f"{FILENAME}.bad-*"))) == 1 and not path.exists()


def test_each_entry_is_checked_on_its_own_and_the_valid_ones_are_restored(tmp_path: Path) -> None:
    good = {"prefix": "198.51.100.7/32", "kind": "ban", "origin": "operator", "monitor": False,
            "expires": 0, "created": 0, "reason": "scanner"}
    (tmp_path / FILENAME).write_text(json.dumps({
        "version": 1,
        "group_ids": {"web": 1, "dns": "x"},
        "reasons": {"1": "scanner", "two": "bad id"},
        "ban_counts": [["198.51.100.7/32", 2]],  # wrong shape: raised TypeError
        "entries": [
            good,
            ["not", "an", "object"],  # raised TypeError
            {**good, "prefix": "10.0.0.1/8"},  # raised ValueError outside any handler
            {**good, "prefix": "192.0.2.1", "kind": "Ban"},  # was restored as an allow
            {**good, "prefix": "192.0.2.2", "origin": "policy"},
            {**good, "prefix": "192.0.2.3", "expires": "soon"},
            {"prefix": "192.0.2.4"},
        ],
    }))
    with capture_logs() as logs:
        st = load(tmp_path)
    assert st is not None
    assert st.entries == [SavedEntry(**good)] and st.group_ids == {"web": 1} and st.reasons == {1: "scanner"}
    assert st.ban_counts == {}
    recs = restore(st, Reasons(st.reasons))
    assert [(k, kind) for k, kind, _o, _r in recs] == [(key("198.51.100.7/32"), abi.SRC_BAN)]
    (skipped,) = [e for e in logs if e["event"] == "state_entries_skipped"]
    assert "9 invalid item(s)" in skipped["error"]
    (kept,) = tmp_path.glob(f"{FILENAME}.bad-*")
    assert (tmp_path / FILENAME).exists() and kept.read_bytes() == (tmp_path / FILENAME).read_bytes()


def test_a_saved_expiry_past_the_longest_ttl_is_cut_to_it() -> None:
    # An expiry 1e11 s away overflowed the kernel's u64 clock: the start raised, the service crash-looped.
    from agent.contract.clock import MAX_TTL

    entry = SavedEntry(prefix="10.0.0.0/8", kind="ban", origin="operator", monitor=False,
                       expires=time.time() + 1e11, created=0.0, reason="")
    ((_k, _kind, _o, rec),) = restore(State(entries=[entry]), Reasons())
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    assert now < rec[0] <= now + (MAX_TTL + 5) * 10**9


def test_restore_never_guesses_a_kind() -> None:
    entry = SavedEntry(prefix="10.0.0.0/8", kind="Ban", origin="operator", monitor=False,
                       expires=0.0, created=0.0, reason="")
    assert restore(State(entries=[entry]), Reasons()) == []


