"""agent/bench/_util.py's signals_end_the_run: SIGTERM, SIGHUP and SIGINT end the run with every
clean-up in this process, and a forked child (pyroute2's helpers) dies at once without unwinding."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from agent.bench import _util


@pytest.mark.parametrize(
    ("sig", "raised"),
    [(signal.SIGTERM, SystemExit), (signal.SIGHUP, SystemExit), (signal.SIGINT, KeyboardInterrupt)],
    ids=["term", "hup", "int"],
)
def test_a_signal_ends_the_run_and_finally_blocks_run(sig: signal.Signals, raised: type[BaseException]) -> None:
    # A run started under nohup, or in the background of a shell without job control, inherits SIGHUP or
    # SIGINT ignored, which signals_end_the_run rightly keeps ignored: start from the default disposition.
    inherited = signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    try:
        _ends_the_run(sig, raised)
    finally:
        signal.signal(sig, inherited)


def _ends_the_run(sig: signal.Signals, raised: type[BaseException]) -> None:
    before = signal.getsignal(sig)
    ran = []
    with pytest.raises(raised) as err, _util.signals_end_the_run():
        try:
            os.kill(os.getpid(), sig)
            time.sleep(30)
        finally:
            ran.append("finally")
    assert ran == ["finally"]
    if isinstance(err.value, SystemExit):
        assert err.value.code == 128 + sig
    assert signal.getsignal(sig) == before, "the previous handler is back"


def test_a_signal_ignored_on_purpose_stays_ignored() -> None:
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with _util.signals_end_the_run():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_forked_child_exits_at_once_without_unwinding(tmp_path: Path) -> None:
    unwound = tmp_path / "unwound"
    with _util.signals_end_the_run():
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            try:
                try:
                    os.close(r)
                    os.write(w, b"x")
                    time.sleep(30)
                finally:
                    unwound.write_text("the child ran the parent's finally blocks")
            finally:
                os._exit(0)
        os.close(w)
        assert os.read(r, 1) == b"x"
        os.close(r)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGTERM
    assert not unwound.exists()
