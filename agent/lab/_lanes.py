"""Run one flood as many staggered trafgen processes, so that it is smooth at the asked rate.

trafgen 0.6.8 paces ``--rate`` with a per-second budget: it sends the
second's packets back to back at its top speed, then sleeps to the end of
the second (``shaper_delay`` in trafgen.c). One process at 50 kpps is
therefore a 0.1 s burst and 0.9 s of silence, which no attack tool or
botnet looks like and which turns every probe of legitimate service into a
lottery: a probe that falls between two bursts succeeds.

Its other pacing modes cost a timer per packet: ``--gap`` sleeps after
every packet (about 25 kpps at most on a small VM, and a rate that depends
on how fast the machine wakes up), and the qdisc path behind a ``tbf``
kept a whole core busy at 50 kpps (trafgen spins while the queue is full).

This launcher runs ``lanes`` trafgen processes instead, each with an equal
share of the rate (and of ``--num``), lane ``i`` started ``i / lanes``
seconds after the first. Each lane still sends its share in one burst per
second, but the bursts of 100 lanes are 10 ms apart, so the flood is even at
every scale from 10 ms up (measured at 50 kpps: no empty 10 ms window, the
packets per 100 ms within ±5% of the mean) for the CPU cost of one trafgen
(the same packets; the processes sleep). Lanes get different seeds, so
their random fields differ.

Run inside the attacker's namespace (``nsenter ... python -m
agent.lab._lanes ...``): it prints ``Running!`` once the first lane runs (as
trafgen itself does, which is what :meth:`agent.lab.traffic.Flood.start`
waits for), goes on starting the others, and on exit prints ``N packets
outgoing`` with the lanes' sum. SIGINT and SIGTERM go to every lane; the
lanes share the launcher's process group, so a signal to the group (what
``timeout(1)`` and :class:`agent.lab.traffic.Flood` send) reaches them
directly as well.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

#: Lanes are at least this many packets per second each, and at most MAX_LANES of them.
MIN_LANE_PPS = 20
MAX_LANES = 100
_SUMMARY_RE = re.compile(r"^\s*(\d+) packets outgoing", re.MULTILINE)


def lanes_for(pps: int) -> int:
    """How many lanes a flood of ``pps`` gets: bursts 10 ms apart at 2 kpps and more."""
    return max(1, min(MAX_LANES, pps // MIN_LANE_PPS))


def shares(total: int, n: int) -> list[int]:
    """``total`` split into ``n`` integer shares that differ by at most one."""
    base, extra = divmod(total, n)
    return [base + (1 if i < extra else 0) for i in range(n)]


def lane_argv(trafgen: Sequence[str], pps: int, count: int | None, seed: int | None) -> list[str]:
    out = [*trafgen, "--rate", f"{pps}pps"]
    if count is not None:
        out += ["--num", str(count)]
    if seed is not None:
        out += ["--seed", str(seed)]
    return out


class Lanes:
    """The lane processes of one flood and their output."""

    def __init__(self, trafgen: Sequence[str], pps: int, count: int | None, seed: int | None, lanes: int) -> None:
        if pps <= 0:
            raise ValueError("the rate must be positive")
        self.n = max(1, min(lanes, pps))
        self.trafgen = list(trafgen)
        self.rates = shares(pps, self.n)
        self.counts: list[int | None] = list(shares(count, self.n)) if count is not None else [None] * self.n
        self.seed = seed
        self.procs: list[subprocess.Popen[bytes]] = []
        self.output: dict[int, bytearray] = {}
        self.running: set[int] = set()
        self._sel = selectors.DefaultSelector()
        self._stopping = False

    def _start(self, i: int) -> None:
        count = self.counts[i]
        if count == 0:
            return  # a short flood has fewer packets than lanes
        seed = None if self.seed is None else self.seed + i
        proc = subprocess.Popen(lane_argv(self.trafgen, self.rates[i], count, seed), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        self.output[proc.pid] = bytearray()
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        self._sel.register(proc.stdout, selectors.EVENT_READ, proc)

    def _pump(self, timeout: float) -> None:
        for key, _ in self._sel.select(timeout):
            proc: subprocess.Popen[bytes] = key.data
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                self._sel.unregister(key.fileobj)
                continue
            buf = self.output[proc.pid]
            buf += chunk
            if proc.pid not in self.running and b"Running!" in buf:
                self.running.add(proc.pid)
                if len(self.running) == 1:
                    # trafgen's own marker: the flood is on.
                    print(f"Running! (lanes: {self.n})", flush=True)

    def stop(self, *_: object) -> None:
        self._stopping = True
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGINT)

    def run(self) -> int:
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGTERM, self.stop)
        t0 = time.monotonic()
        for i in range(self.n):
            due = t0 + i / self.n
            while not self._stopping and time.monotonic() < due:
                self._pump(max(0.0, due - time.monotonic()))
            if self._stopping:
                break
            self._start(i)
            if i == 0:
                # A broken configuration fails in the first lane: say so before starting 99 more.
                first = self.procs[0]
                while not self.running and any(k.data is first for k in self._sel.get_map().values()):
                    self._pump(0.05)
                if not self.running:
                    break
                # Stagger from the moment the first lane sends: every lane takes about as long to start.
                t0 = time.monotonic()
        while self._sel.get_map():
            self._pump(0.2)
        codes = [p.wait() for p in self.procs]
        total = 0
        for p in self.procs:
            text = self.output[p.pid].decode(errors="replace")
            m = _SUMMARY_RE.search(text)
            total += int(m.group(1)) if m else 0
        if not self.running and self.procs:
            # trafgen's own error, for the caller's message
            sys.stdout.write(self.output[self.procs[0].pid].decode(errors="replace"))
        print(f"\n{total} packets outgoing (from {len(self.procs)} lanes)", flush=True)
        failed = [c for c in codes if c not in (0, -signal.SIGINT, 128 + signal.SIGINT)]
        if not self.running:
            return codes[0] or 1 if codes else 1
        return 1 if failed and total == 0 else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.lab._lanes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pps", type=int, required=True, help="the flood's rate, all lanes together")
    parser.add_argument("--num", type=int, help="packets in all, all lanes together (default: until stopped)")
    parser.add_argument("--seed", type=int, help="seed of lane 0; lane i gets seed + i")
    parser.add_argument("--lanes", type=int, help=f"number of lanes (default: rate / {MIN_LANE_PPS}, at most "
                                                    f"{MAX_LANES})")
    parser.add_argument("trafgen", nargs=argparse.REMAINDER, help="-- trafgen argv without --rate/--num/--seed")
    args = parser.parse_args(argv)
    trafgen = args.trafgen[1:] if args.trafgen[:1] == ["--"] else args.trafgen
    if not trafgen:
        parser.error("the trafgen command line is missing (after --)")
    lanes = args.lanes if args.lanes is not None else lanes_for(args.pps)
    return Lanes(trafgen, args.pps, args.num, args.seed, lanes).run()


if __name__ == "__main__":
    sys.exit(main())
