"""`floodguard run`: build the parts, wire them, loop until stopped — and never drop the guard.

Start-up order matters: the policy is validated before anything is built;
the program is built against the pinned maps of an earlier run (bans and
counters survive a restart) or, after an upgrade, gets the operator and
automatic entries of the old pins (agent/datapath/pins.py) or, after a
reboot, those of the state file; the policy is applied; only then is the
program attached — replacing a running floodguard atomically — and systemd
told READY=1.

The main loop waits on signals, the policy watcher, netlink link events and
the tick timer. Stopping leaves the program attached and enforcing:
`floodguard detach` removes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from agent import log as logsetup
from agent import metrics
from agent.contract import abi
from agent.contract.clock import monotonic_ns
from agent.contract.keys import IPNetwork, key_network
from agent.control.controller import Controller
from agent.control.kernel import KernelPort
from agent.datapath import loader, pins, synauth
from agent.datapath.addrtable import AddressTable
from agent.datapath.errors import DatapathError
from agent.datapath.mapport import MapPort
from agent.datapath.maps import Maps
from agent.policy import LoadResult, Policy, load_policy
from agent.policy.compile import CompiledPolicy, compile_policy
from agent.policy.watch import PolicyWatcher
from agent.upstream.service import UpstreamService

from . import StartupError
from .api import ControlServer
from .downstream import Downstream
from .instance import InstanceLock, lock_path
from .interfaces import InterfaceWatcher
from .metrics_source import AgentMetrics
from .parts import Parts, Throughput
from .reload import PolicyRuntime
from .restore import put_back
from .sdnotify import Notifier
from .signals import Signals
from .state import Capture, Reasons, State, StateStore, restore
from .verbs import Verbs

log = structlog.get_logger()


class Supervisor:
    """Builds the parts, wires them together and runs the main loop.

    ``lock`` serialises everything that touches the maps: the tick, reloads
    and the control socket's verbs (served from its own threads).
    """

    def __init__(self, policy_path: str | Path, *, pin_root: str = loader.DEFAULT_PIN_ROOT,
                 notifier: Notifier | None = None) -> None:
        self.policy_path = Path(policy_path)
        self.pin_root = pin_root
        self.pin_dir = loader.default_pin_dir(pin_root)
        self.notifier = notifier or Notifier.from_env()
        self.lock = threading.RLock()
        self.parts: Parts | None = None
        self.remove_pins_on_exit = False
        self.tick_seconds: list[float] = []
        self.on_tick: list[Callable[[float], None]] = []
        self._signals = Signals()
        self._stop = self._signals.stop
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._policy_watcher: PolicyWatcher | None = None
        self._control: ControlServer | None = None
        self._exporter: metrics.Exporter | None = None
        self._ban_counts: dict[str, int] = {}
        self._syn_rotated = 0.0
        self._locks: list[InstanceLock] = []  # the control socket's directory, the pin root

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        self._signals.catch()
        try:
            self._start()
        except BaseException:
            self._signals.restore()  # a start that fails leaves the process as it found it
            raise

    def _start(self) -> None:
        result, policy = self._load_policy()
        logsetup.configure(policy.log.level, policy.log.format)
        # Before anything is touched: a second agent must not take the socket or share the pins.
        self._locks.append(InstanceLock.take(lock_path(policy.control.socket)))
        self._locks.append(InstanceLock.take_dir(Path(self.pin_root)))
        store = StateStore(policy.state_dir)
        saved = store.load()
        reasons = Reasons(saved.reasons if saved is not None else None)
        self._ban_counts = dict(saved.ban_counts) if saved is not None else {}
        try:
            compiled = compile_policy(policy, saved.group_ids if saved is not None and saved.group_ids else None)
        except ValueError as e:  # e.g. the policy's prefixes and the bans do not fit its capacity
            raise StartupError(f"the policy {self.policy_path} cannot run: {e}") from None

        migrated = pins.prepare(self.pin_root, self.pin_dir, compiled.capacity)
        program = loader.build(loader.BuildOptions(pin_dir=self.pin_dir, capacity=compiled.capacity))
        program.pin_program()
        maps = Maps.from_program(program)
        port = MapPort(maps)
        found = port.addresses.load_from_kernel()

        runtime = PolicyRuntime(self.policy_path, port)
        outcome = runtime.adopt(result, compiled)
        if not outcome.ok:
            raise StartupError("cannot apply the policy: " + "; ".join(outcome.errors))
        _restore(port.addresses, found, migrated, saved, reasons)
        self._rotate_syn_key(port, force=True)

        downstream = Downstream(group_prefixes(runtime.compiled))
        controller = _controller(program, port, runtime, reasons, self._ban_counts, store, downstream)
        interfaces = InterfaceWatcher(port, program.fd, program.id, [(i.name, i.mode) for i in policy.interfaces],
                                      self.lock)
        interfaces.attach_all()
        interfaces.open()
        self.parts = parts = Parts(program=program, maps=maps, port=port, runtime=runtime, controller=controller,
                                   reasons=reasons, store=store, interfaces=interfaces, throughput=Throughput(),
                                   downstream=downstream,
                                   upstream=UpstreamService(policy, policy.state_dir))
        self._policy_watcher = PolicyWatcher(runtime.files, runtime.include_globs)
        verbs = Verbs(parts, self, self._capture)
        self._control = ControlServer(policy.control.socket, policy.control.group, verbs.table(self.lock).serve)
        self._control.start()
        self._start_metrics(parts, policy.metrics.listen)
        store.save_now(self._capture())
        attached = interfaces.attached()
        self.notifier.ready(status=f"protecting {', '.join(attached) or 'no interface yet'}")
        log.info("started", interfaces=attached, pin_dir=self.pin_dir, program_id=program.id,
                 build_seconds=round(program.build_seconds, 2))

    def _load_policy(self) -> tuple[LoadResult, Policy]:
        result = load_policy(self.policy_path)
        if result.policy is None:
            lines = "\n".join(str(e) for e in result.errors)
            raise StartupError(f"the policy {self.policy_path} is not valid:\n{lines}")
        blockers = result.policy.run_blockers()
        if blockers:
            raise StartupError(f"{self.policy_path}: " + "; ".join(blockers))
        return result, result.policy

    def _start_metrics(self, parts: Parts, listen: str) -> None:
        try:
            self._exporter = metrics.start(AgentMetrics(parts, self.lock), listen)
        except OSError as e:
            log.error("metrics_unavailable", listen=listen, error=e.strerror)
            return
        self.on_tick.append(self._exporter.instruments.tick.observe)

    def _running(self) -> Parts:
        assert self.parts is not None, "the agent has not started"
        return self.parts

    # ------------------------------------------------------------------ loop

    def run(self) -> int:
        """The main loop; returns the exit code."""
        p = self._running()
        assert self._policy_watcher is not None
        watcher = self._policy_watcher
        self._signals.catch()
        old_wakeup = signal.set_wakeup_fd(self._wake_w)
        assert p.runtime.policy is not None
        tick = p.runtime.policy.detection.tick
        next_tick = time.monotonic() + tick
        watchdog = self.notifier.watchdog_interval()
        next_ping = time.monotonic()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                waits = [next_tick - now]
                if watchdog:
                    waits.append(next_ping - now)
                wt = watcher.timeout()
                if wt is not None:
                    waits.append(wt)
                netlink = p.interfaces.fileno()
                fds = [self._wake_r, watcher.fileno(), *([netlink] if netlink is not None else [])]
                try:
                    ready, _, _ = select.select(fds, [], [], max(0.0, min(waits)))
                except InterruptedError:
                    ready = []
                if self._wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                if netlink is not None and netlink in ready:
                    self._guard("netlink", p.interfaces.on_readable)
                if watcher.poll(0):
                    self._guard("reload", lambda: self.reload("file change"))
                if self._signals.take_reload():
                    self._guard("reload", lambda: self.reload("SIGHUP"))
                now = time.monotonic()
                if now >= next_tick:
                    self._guard("tick", self.tick)
                    next_tick = max(next_tick + tick, now + tick / 2)
                if watchdog and now >= next_ping:
                    self.notifier.watchdog()
                    next_ping = now + watchdog
                if p.interfaces.detaching:
                    break
        finally:
            signal.set_wakeup_fd(old_wakeup)
            self._signals.restore()
        return 0

    @staticmethod
    def _guard(what: str, fn: Callable[[], object]) -> None:
        """A bug in one step must not take the guard down: the program keeps
        enforcing, and the loop goes on (the error is logged with its trace)."""
        try:
            fn()
        except Exception as e:
            log.exception("loop_error", step=what, error=str(e))

    def tick(self) -> None:
        start = time.perf_counter()
        p = self._running()
        with self.lock:
            # Detection failing must not stop expiry and the rest of the tick.
            self._guard("detection", p.controller.tick)
            if p.upstream is not None and p.upstream.enabled:
                # The records, not the controller: the upstream worker reconciles on its own thread.
                p.upstream.submit([a.to_dict() for a in p.controller.attacks(active=True)])
            counts = p.controller.ban_counts()
            if counts != self._ban_counts:
                self._ban_counts = counts
                p.store.changed()
            table = p.port.addresses
            if table.pending:
                table.commit(monotonic_ns())
            now = monotonic_ns()
            gone = table.expire(now)
            if gone:
                table.commit(now)
                kept = [g for g in gone if g[2] != abi.Origin.POLICY]
                bans = [g for g in kept if g[1] == abi.SRC_BAN]
                if bans:
                    log.info("ban_expired", count=len(bans), sample=[str(key_network(k)) for k, *_ in bans[:5]])
                if kept:
                    p.store.changed()
            p.throughput.update(p.port.read_stats())
            self._rotate_syn_key(p.port)
            p.interfaces.check()
            p.store.maybe_save(self._capture)  # a copy here; JSON and fsync on the store's thread
        elapsed = time.perf_counter() - start
        self.tick_seconds.append(elapsed)
        del self.tick_seconds[:-1000]
        for f in self.on_tick:
            f(elapsed)

    def _rotate_syn_key(self, port: MapPort, force: bool = False) -> None:
        """A new SYN challenge key every syn_auth.key_rotation; the program
        accepts the current and the previous one."""
        now = time.monotonic()
        runtime = self.parts.runtime if self.parts is not None else None
        policy = runtime.policy if runtime is not None else None
        if not force and (policy is None or now - self._syn_rotated < policy.syn_auth.key_rotation):
            return
        synauth.rotate_keys(port)
        self._syn_rotated = now

    def _capture(self) -> Capture:
        """What the state file holds now (called under the lock).

        Reason texts no record refers to any more are dropped here: every
        automatic ban has a text of its own, so they would pile up for ever.
        """
        p = self._running()
        compiled = p.runtime.compiled
        records = list(p.port.addresses.records())
        p.reasons.prune({rec[3] for _k, _kind, _o, rec in records})
        return Capture.of(records, p.reasons, compiled.group_ids if compiled else {}, self._ban_counts)

    # ------------------------------------------------------------------ what the verbs may ask of the agent

    def reload(self, trigger: str) -> dict[str, object]:
        p = self._running()
        with self.lock:
            assert self._policy_watcher is not None
            self.notifier.reloading()
            ok = False
            try:
                before = dict(p.runtime.compiled.group_ids) if p.runtime.compiled else {}
                outcome = p.runtime.reload(trigger)
                self._policy_watcher.update(p.runtime.files, p.runtime.include_globs)
                if outcome.ok and p.runtime.policy is not None and p.runtime.compiled is not None:
                    p.controller.update_policy(p.runtime.policy, p.runtime.compiled)
                    p.downstream.set_groups(group_prefixes(p.runtime.compiled))
                    if p.upstream is not None:
                        p.upstream.update_policy(p.runtime.policy)
                    if dict(p.runtime.compiled.group_ids) != before:
                        p.store.changed()
                ok = outcome.ok
            finally:
                # Always: systemd waits for READY=1 after RELOADING=1 (and fails the reload job).
                self.notifier.ready(status="policy reloaded" if ok else "policy rejected, previous kept")
            return {"ok": outcome.ok, "errors": outcome.errors, "warnings": outcome.warnings,
                    "prefixes_changed": outcome.prefixes_changed, "seconds": round(outcome.seconds, 3)}

    def detach(self) -> dict[str, object]:
        """Remove the program from every interface and its pins, then stop."""
        p = self._running()
        results = p.interfaces.detach_all()
        self.remove_pins_on_exit = True
        self._stop.set()
        os.write(self._wake_w, b"d")
        return {"interfaces": results, "pins_removed": self.pin_dir}

    # ------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Leave the program attached and enforcing; release everything else."""
        self.notifier.stopping()
        if self._control is not None:
            self._control.close()
        p = self.parts
        with self.lock:
            if p is not None:
                p.store.close(self._capture())
            if self._exporter is not None:
                with contextlib.suppress(Exception):
                    self._exporter.shutdown()
            if self._policy_watcher is not None:
                self._policy_watcher.close()
            if p is not None:
                p.interfaces.close()
                p.controller.close()
                p.downstream.close()
                if p.upstream is not None:
                    p.upstream.close()  # announcements stay with the speaker, each until its expiry
                p.port.close()
                p.maps.close()
                p.program.close()
        log.info("stopped", attached_program_stays=not (p is not None and p.interfaces.detaching))
        if not self.remove_pins_on_exit:
            self.release_instance()  # a detaching agent keeps it until its pins are gone (see run)

    def release_instance(self) -> None:
        while self._locks:
            self._locks.pop().release()


def _restore(table: AddressTable, found: int, migrated: list[pins.Entry], saved: State | None,
             reasons: Reasons) -> None:
    """After the policy: the records of old pins or, after a reboot, of the state file, as far as they fit."""
    records = migrated or (restore(saved, reasons) if found == 0 and saved is not None else [])
    restored, left_out = put_back(table, records, monotonic_ns()) if records else (0, 0)
    log.info("state_found", pinned_prefixes=found, restored=restored, left_out=left_out,
             source="migration" if migrated else "state file" if restored else "pins")


class _SamplesRing:
    """The program's samples ring buffer, drained once per tick for the controller."""

    def __init__(self, program: loader.Program) -> None:
        self._program = program
        self._got: list[abi.Sample] = []
        program.table("samples").open_ring_buffer(self._on_sample)

    def _on_sample(self, _ctx: object, data: int, size: int) -> None:
        n = ctypes.sizeof(abi.Sample)
        if size >= n:
            self._got.append(abi.Sample.from_buffer_copy(ctypes.string_at(data, n)))

    def drain(self) -> list[abi.Sample]:
        self._program.bcc.ring_buffer_consume()
        got, self._got = self._got, []
        return got


class _SavingPort(KernelPort):
    """The controller's port; its bans and unbans tell the state store to save."""

    def __init__(self, maps: MapPort, store: StateStore, *, drain: Callable[[], list[abi.Sample]],
                 reason_id: Callable[[str], int], downstream: Downstream) -> None:
        super().__init__(maps, drain=drain, reason_id=reason_id, downstream=downstream)
        self._store = store

    def ban(self, net: IPNetwork, expires_ns: int, monitor: bool, reason: str) -> None:
        super().ban(net, expires_ns, monitor, reason)
        self._store.changed()

    def unban(self, net: IPNetwork) -> None:
        super().unban(net)
        self._store.changed()


def group_prefixes(compiled: CompiledPolicy | None) -> dict[int, list[IPNetwork]]:
    """Each protected group's prefixes, for finding the way to it."""
    if compiled is None:
        return {}
    return {g.gid: [e.network for e in g.group.prefixes] for g in compiled.groups if g.group is not None}


def _controller(program: loader.Program, port: MapPort, runtime: PolicyRuntime, reasons: Reasons,
                ban_counts: dict[str, int], store: StateStore, downstream: Downstream) -> Controller:
    """The detection loop (agent/control), fed by the samples ring, knowing the automatic bans in force."""
    assert runtime.policy is not None and runtime.compiled is not None
    now = monotonic_ns()
    auto_bans = {key_network(k): rec[0] for k, kind, _o, rec in port.addresses.records(abi.Origin.AUTO)
                 if kind == abi.SRC_BAN and (rec[0] == 0 or rec[0] > now)}
    kernel = _SavingPort(port, store, drain=_SamplesRing(program).drain, reason_id=reasons.id_of,
                         downstream=downstream)
    return Controller(runtime.policy, runtime.compiled, kernel, ban_counts=ban_counts, auto_bans=auto_bans)


def run(policy_path: str, pin_root: str) -> int:
    """`floodguard run`: start, loop until stopped, stop (the program stays attached unless detached)."""
    supervisor = Supervisor(policy_path, pin_root=pin_root)
    try:
        supervisor.start()
    except (StartupError, DatapathError) as e:
        log.error("start_failed", error=str(e))
        supervisor.notifier.status(f"failed: {e}")
        raise
    try:
        rc = supervisor.run()
    finally:
        try:
            supervisor.stop()
            if supervisor.remove_pins_on_exit:
                pins.remove_all(pin_root)
        finally:
            supervisor.release_instance()
    return rc


__all__ = ["Supervisor", "run"]
