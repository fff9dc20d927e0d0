"""`floodguard run`: load, attach, tick, reload, stop — and never drop the guard.

Start-up order matters: the policy is validated before anything is built;
the program is built against the pinned maps of an earlier run (bans and
counters survive a restart) or, after a reboot, gets the saved operator and
automatic entries back from the state directory; the policy is applied;
only then is the program attached — replacing a running floodguard
atomically — and systemd told READY=1.

The main loop waits on signals, the policy watcher, netlink link events and
the tick timer. Stopping leaves the program attached and enforcing:
`floodguard detach` removes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from agent import state as saved
from agent.api import ControlServer, RequestError
from agent.contract import abi
from agent.contract.capacity import Capacity
from agent.contract.clock import NS, monotonic_ns
from agent.contract.keys import PrefixKey, Record, key_network, prefix_key
from agent.contract.rates import describe
from agent.datapath import attach, loader
from agent.datapath import bpfsys as sysbpf
from agent.datapath.errors import DatapathError, InterfaceError
from agent.datapath.mapport import MapPort
from agent.datapath.maps import Maps
from agent.policy import LoadResult, load_policy
from agent.policy.compile import compile_policy
from agent.policy.watch import PolicyWatcher
from agent.reload import PolicyRuntime
from agent.sdnotify import Notifier

log = structlog.get_logger()

RTMGRP_LINK = 1
NETLINK_ROUTE = 0


class StartupError(Exception):
    """The agent cannot start; the message says why and what to do."""


@dataclass
class Iface:
    name: str
    mode: str
    slot: int
    ifindex: int = 0
    attached_mode: str = ""
    prog_id: int = 0
    error: str = ""


@dataclass
class Rates:
    """Packets and bytes per second over the last tick, by reason."""

    at: float = 0.0
    pps_in: float = 0.0
    bps_in: float = 0.0
    pps_by_reason: dict[str, float] = field(default_factory=dict)


class Agent:
    """The running agent. Public methods take the lock: the control socket
    calls them from its threads."""

    def __init__(self, policy_path: str | Path, *, pin_root: str = loader.DEFAULT_PIN_ROOT,
                 notifier: Notifier | None = None) -> None:
        self.policy_path = Path(policy_path)
        self.pin_root = pin_root
        self.pin_dir = loader.default_pin_dir(pin_root)
        self.notifier = notifier or Notifier.from_env()
        self.lock = threading.RLock()
        self.started_at = time.time()
        self.program: loader.Program | None = None
        self.maps: Maps | None = None
        self.port: MapPort | None = None
        self.runtime: PolicyRuntime | None = None
        self.watcher: PolicyWatcher | None = None
        self.control: ControlServer | None = None
        self.metrics_server: Any = None
        self.controller: Any = None
        self.reasons = saved.Reasons()
        self.ban_counts: dict[str, int] = {}
        self.ifaces: dict[str, Iface] = {}
        self.rates = Rates()
        self._last_stats: np.ndarray[Any, Any] | None = None
        self._stop = threading.Event()
        self._reload_requested = False
        self._state_dirty = False
        self._detach_requested = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._netlink: Any = None
        self._next_iface_check = 0.0
        self._syn_rotated = 0.0
        self.tick_seconds: list[float] = []
        self.on_tick: list[Callable[[float], None]] = []

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        result = load_policy(self.policy_path)
        if result.policy is None:
            lines = "\n".join(str(e) for e in result.errors)
            raise StartupError(f"the policy {self.policy_path} is not valid:\n{lines}")
        policy = result.policy
        blockers = policy.run_blockers()
        if blockers:
            raise StartupError(f"{self.policy_path}: " + "; ".join(blockers))
        from agent import log as logsetup

        logsetup.configure(policy.log.level, policy.log.format)

        st = self._load_state(policy.state_dir)
        compiled = compile_policy(policy, st.group_ids if st is not None and st.group_ids else None)

        migrated = self._prepare_pins(compiled.capacity)
        self.program = loader.build(loader.BuildOptions(pin_dir=self.pin_dir, capacity=compiled.capacity))
        self.program.pin_program()
        self.maps = Maps.from_program(self.program)
        self.port = MapPort(self.maps)
        table = self.port.addresses
        found = table.load_from_kernel()
        restored = 0
        if migrated:
            for key, kind, origin, rec in migrated:
                table.set_record(key, kind, origin, rec)
            restored = len(migrated)
        elif found == 0 and st is not None:
            for key, kind, origin, rec in saved.restore(st, self.reasons):
                table.set_record(key, kind, origin, rec)
                restored += 1
        log.info("state_found", pinned_prefixes=found, restored=restored,
                 source="migration" if migrated else "state file" if restored else "pins")

        self.runtime = PolicyRuntime(self.policy_path, self.port)
        outcome = self.runtime.adopt(result, compiled)
        if not outcome.ok:
            raise StartupError("cannot apply the policy: " + "; ".join(outcome.errors))
        self._state_dirty = True
        self._rotate_syn_key(force=True)

        self._make_controller()
        for i, wanted in enumerate(policy.interfaces, start=1):
            self.ifaces[wanted.name] = Iface(wanted.name, wanted.mode, slot=min(i, abi.IF_SLOTS - 1))
        for itf in self.ifaces.values():
            self._attach(itf)
        self._open_netlink()
        self.watcher = PolicyWatcher(self.runtime.files, self.runtime.include_globs)
        self.control = ControlServer(policy.control.socket, policy.control.group, self.handle_request)
        self.control.start()
        self._start_metrics(policy.metrics.listen)
        self._save_state()
        attached = [i.name for i in self.ifaces.values() if i.prog_id]
        self.notifier.ready(status=f"protecting {', '.join(attached) or 'no interface yet'}")
        log.info("started", interfaces=attached, pin_dir=self.pin_dir, program_id=self.program.id,
                 build_seconds=round(self.program.build_seconds, 2))

    def _load_state(self, directory: Path) -> saved.State | None:
        try:
            st = saved.load(directory)
        except ValueError as e:
            log.error("state_unreadable", error=str(e))
            return None
        if st is not None:
            self.reasons = saved.Reasons(st.reasons)
            self.ban_counts = dict(st.ban_counts)
        return st

    def _make_controller(self) -> None:
        """The detection loop (agent/control), fed by the samples ring."""
        from agent.control.controller import Controller
        from agent.control.kernel import KernelPort

        assert self.program is not None and self.port is not None and self.runtime is not None
        assert self.runtime.policy is not None and self.runtime.compiled is not None
        self._samples: list[Any] = []
        ring = self.program.table("samples")
        sample_t = abi.Sample

        def on_sample(_ctx: object, data: int, size: int) -> None:
            if size >= ctypes.sizeof(sample_t):
                self._samples.append(sample_t.from_buffer_copy(ctypes.string_at(data, ctypes.sizeof(sample_t))))

        ring.open_ring_buffer(on_sample)

        def drain() -> list[Any]:
            assert self.program is not None
            self.program.bcc.ring_buffer_consume()
            got, self._samples = self._samples, []
            return got

        now = monotonic_ns()
        auto_bans = {key_network(k): rec[0] for k, kind, o, rec in self.port.addresses.records(abi.Origin.AUTO)
                     if kind == abi.SRC_BAN and (rec[0] == 0 or rec[0] > now)}
        self._kernel_port = KernelPort(self.port, drain=drain, reason_id=self.reasons.id_of)
        self.controller = Controller(self.runtime.policy, self.runtime.compiled, self._kernel_port,
                                     ban_counts=self.ban_counts, auto_bans=auto_bans)

    # ------------------------------------------------------------------ pins

    def _prepare_pins(self, capacity: Capacity) -> list[tuple[PrefixKey, int, int, Record]]:
        """Reuse pins of the same version and sizes; otherwise read the
        operator and automatic entries out of the old pins (they stay in
        force through the old program until the swap) and move them aside."""
        root = Path(self.pin_root)
        records: list[tuple[PrefixKey, int, int, Record]] = []
        old_dirs = []
        if root.is_dir():
            for d in sorted(root.iterdir()):
                if not d.is_dir() or not d.name.startswith("v"):
                    continue
                if d == Path(self.pin_dir):
                    if self._pins_fit(d, capacity):
                        continue
                    log.warning("capacity_changed", pin_dir=str(d), action="migrating entries to new maps")
                else:
                    log.warning("abi_changed", old=str(d), new=self.pin_dir, action="migrating entries")
                old_dirs.append(d)
        for d in old_dirs:
            # Read the entries, then unpin: the attached old program keeps its
            # maps alive (and enforcing) until the new program replaces it.
            # (bpffs does not rename directories.)
            records += self._read_old_entries(d)
            loader.remove_pins(str(d))
        return records

    def _pins_fit(self, d: Path, capacity: Capacity) -> bool:
        want = {
            "src_entries": capacity.src_entries, "host4": capacity.hosts4, "lpm6": capacity.prefixes6,
            "groups": capacity.groups, "buckets4": capacity.sources, "buckets6": capacity.sources6,
            "dst_stats": capacity.destinations, "verified4": capacity.verified,
        }
        for name, size in want.items():
            path = d / name
            if not path.exists():
                return False
            fd = sysbpf.obj_get(str(path))
            try:
                if sysbpf.map_info(fd).max_entries != size:
                    return False
            finally:
                os.close(fd)
        return True

    def _read_old_entries(self, d: Path) -> list[tuple[PrefixKey, int, int, Record]]:
        """Operator and automatic records from another version's src_entries.

        Each pinned-structure version that changes struct fg_src_entry adds
        its reader here; the current layout reads itself.
        """
        path = d / "src_entries"
        if not path.exists():
            return []
        fd = sysbpf.obj_get(str(path))
        try:
            info = sysbpf.map_info(fd)
            if info.value_size != np.dtype(abi.SrcEntry).itemsize:
                log.error("migration_unknown_layout", pin_dir=str(d), value_size=int(info.value_size),
                          action="entries come back from the state file instead")
                return []
            from agent.datapath.maps import Table

            t = Table("src_entries", os.dup(fd), ctypes.c_uint32, abi.SrcEntry, False)
            mm = t.mmap()
            view = np.frombuffer(mm, dtype=np.dtype(abi.SrcEntry), count=t.max_entries)
            used = view[view["family"] != 0].copy()  # a copy: the mmap can close
            del view
            mm.close()
            t.close()
            out: list[tuple[PrefixKey, int, int, Record]] = []
            for e in used:
                fam = int(e["family"])
                raw = b"".join(int(w).to_bytes(4, "little") for w in e["addr"].tolist())
                addr = int.from_bytes(raw[:4] if fam == 4 else raw, "big")
                key: PrefixKey = (fam, addr, int(e["prefix_len"]))
                for o in (abi.Origin.OPERATOR, abi.Origin.AUTO):
                    for kind, field_name in ((abi.SRC_BAN, "ban"), (abi.SRC_ALLOW, "allow")):
                        r = e[field_name][o]
                        if int(r["flags"]):
                            out.append((key, kind, int(o),
                                        (int(r["expires"]), int(r["created"]), int(r["flags"]), int(r["reason"]))))
            return out
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ interfaces

    def _attach(self, itf: Iface) -> bool:
        assert self.program is not None and self.port is not None
        try:
            res = attach.attach(itf.name, self.program.fd, attach.XdpMode(itf.mode))
        except InterfaceError as e:
            if itf.error != str(e):
                log.warning("interface_unavailable", interface=itf.name, error=str(e))
            itf.error, itf.prog_id, itf.ifindex = str(e), 0, 0
            return False
        if itf.ifindex and itf.ifindex != res.ifindex:
            self.port.set_ifslot(itf.ifindex, 0)
        itf.ifindex, itf.attached_mode, itf.prog_id, itf.error = res.ifindex, res.mode.value, res.prog_id, ""
        self.port.set_ifslot(res.ifindex, itf.slot)
        log.info("attached", interface=itf.name, ifindex=res.ifindex, mode=itf.attached_mode,
                 program_id=res.prog_id, replaced=res.replaced_prog_id or None,
                 fallback=res.fallback or None)
        return True

    def _open_netlink(self) -> None:
        """A plain non-blocking rtnetlink socket subscribed to link events.

        Not pyroute2's IPRoute.get(): it buffers datagrams internally, so a
        select() on its fd can sleep while link events wait unread. Here
        every readable wake-up drains the socket; pyroute2 only parses.
        """
        from pyroute2.netlink.rtnl.marshal import MarshalRtnl

        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                          NETLINK_ROUTE)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind((0, RTMGRP_LINK))
        self._netlink = s
        self._marshal = MarshalRtnl()

    def _netlink_events(self) -> None:
        assert self._netlink is not None
        msgs: list[Any] = []
        while True:
            try:
                data = self._netlink.recv(1 << 20)
            except BlockingIOError:
                break
            except OSError as e:  # ENOBUFS: events were lost; check every interface
                log.warning("netlink_overrun", error=e.strerror)
                self._next_iface_check = 0.0
                continue
            msgs.extend(self._marshal.parse(data))
        if self._detach_requested:
            return  # our own detach shows up as a link change: do not undo it
        for msg in msgs:
            name = msg.get_attr("IFLA_IFNAME")
            itf = self.ifaces.get(name) if name else None
            if itf is None:
                continue
            log.debug("link_event", interface=name, change=msg["event"], ifindex=msg["index"])
            if msg["event"] == "RTM_DELLINK":
                log.warning("interface_lost", interface=name, ifindex=itf.ifindex)
                if self.port is not None and itf.ifindex:
                    self.port.set_ifslot(itf.ifindex, 0)
                itf.prog_id, itf.ifindex = 0, 0
                continue
            xdp = msg.get_attr("IFLA_XDP")
            prog_id = xdp.get_attr("IFLA_XDP_PROG_ID") if xdp is not None else None
            if msg["index"] != itf.ifindex or not prog_id or (self.program and prog_id != self.program.id):
                with self.lock:
                    if not self._detach_requested:
                        self._attach(itf)

    def _check_interfaces(self) -> None:
        """Belt and braces for missed netlink events: every few seconds."""
        now = time.monotonic()
        if now < self._next_iface_check or self.program is None or self._detach_requested:
            return
        self._next_iface_check = now + 5.0
        for itf in self.ifaces.values():
            try:
                st = attach.xdp_state(itf.name)
            except InterfaceError:
                if itf.prog_id:
                    log.warning("interface_lost", interface=itf.name)
                itf.prog_id = 0
                continue
            if st.prog_id != self.program.id:
                self._attach(itf)

    # ------------------------------------------------------------------ metrics

    def _start_metrics(self, listen: str) -> None:
        try:
            from agent import metrics  # type: ignore[attr-defined,unused-ignore]
        except ImportError:
            return
        try:
            self.metrics_server = metrics.start(self, listen)
        except OSError as e:
            log.error("metrics_unavailable", listen=listen, error=e.strerror)
            return
        self.on_tick.append(self.metrics_server.instruments.tick.observe)

    # MetricsSource (agent/metrics.py): called from the HTTP thread at scrape time.

    def interfaces(self) -> dict[int, str]:
        return {i.slot: i.name for i in self.ifaces.values()}

    def group_names(self) -> dict[int, str]:
        compiled = self.runtime.compiled if self.runtime else None
        return {g.gid: g.name for g in compiled.groups} if compiled else {0: "default"}

    def xdp_modes(self) -> dict[str, str]:
        return {i.name: i.attached_mode for i in self.ifaces.values() if i.prog_id}

    def reloads(self) -> tuple[int, int]:
        return (self.runtime.reloads_ok, self.runtime.reloads_failed) if self.runtime else (0, 0)

    def policy_loaded_at(self) -> float:
        return self.runtime.loaded_at if self.runtime else 0.0

    def build_seconds(self) -> float:
        return self.program.build_seconds if self.program else 0.0

    def bans_by_origin(self) -> dict[str, int]:
        with self.lock:
            return self._ban_counts()

    def active_rules(self) -> int:
        return int(self.port.read_config().n_rules) if self.port else 0

    def attack_stats(self) -> Any:
        from agent.metrics import AttackStats

        if self.controller is None:
            return AttackStats()
        with self.lock:
            st = self.controller.stats()
        return AttackStats(active=st.active_by_vector, total=st.started_by_vector,
                           time_to_mitigate=st.time_to_mitigate, time_to_mitigate_sum=st.time_to_mitigate_sum,
                           escalations_total=st.escalations_total)

    # ------------------------------------------------------------------ loop

    def run(self) -> int:
        """The main loop; returns the exit code."""
        handlers = {}
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            handlers[sig] = signal.signal(sig, self._on_signal)
        old_wakeup = signal.set_wakeup_fd(self._wake_w)
        assert self.runtime is not None and self.runtime.policy is not None
        tick = self.runtime.policy.detection.tick
        next_tick = time.monotonic() + tick
        watchdog = self.notifier.watchdog_interval()
        next_ping = time.monotonic()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                waits = [next_tick - now]
                if watchdog:
                    waits.append(next_ping - now)
                assert self.watcher is not None
                wt = self.watcher.timeout()
                if wt is not None:
                    waits.append(wt)
                timeout = max(0.0, min(waits))
                fds = [self._wake_r, self.watcher.fileno()]
                if self._netlink is not None:
                    fds.append(self._netlink.fileno())
                try:
                    ready, _, _ = select.select(fds, [], [], timeout)
                except InterruptedError:
                    ready = []
                if self._wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                if self._netlink is not None and self._netlink.fileno() in ready:
                    self._guard("netlink", self._netlink_events)
                if self.watcher.poll(0):
                    self._guard("reload", lambda: self.reload("file change"))
                if self._reload_requested:
                    self._reload_requested = False
                    self._guard("reload", lambda: self.reload("SIGHUP"))
                now = time.monotonic()
                if now >= next_tick:
                    self._guard("tick", self.tick)
                    next_tick = max(next_tick + tick, now + tick / 2)
                if watchdog and now >= next_ping:
                    self.notifier.watchdog()
                    next_ping = now + watchdog
                if self._detach_requested:
                    break
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, h in handlers.items():
                signal.signal(sig, h)
        return 0

    @staticmethod
    def _guard(what: str, fn: Callable[[], object]) -> None:
        """A bug in one step must not take the guard down: the program keeps
        enforcing, and the loop goes on (the error is logged with its trace)."""
        try:
            fn()
        except Exception as e:
            log.exception("loop_error", step=what, error=str(e))

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self._reload_requested = True
        else:
            log.info("stopping", signal=signal.Signals(signum).name)
            self._stop.set()

    def tick(self) -> None:
        start = time.perf_counter()
        with self.lock:
            assert self.port is not None
            if self.controller is not None:
                # Detection failing must not stop expiry and the rest of the tick.
                self._guard("detection", self.controller.tick)
                self.ban_counts = self.controller.ban_counts()
                if self.port.addresses.pending:
                    self.port.addresses.commit(monotonic_ns())
                self._state_dirty = True
            now = monotonic_ns()
            gone = self.port.addresses.expire(now)
            if gone:
                self.port.addresses.commit(now)
                bans = [g for g in gone if g[1] == abi.SRC_BAN and g[2] != abi.Origin.POLICY]
                if bans:
                    log.info("ban_expired", count=len(bans),
                             sample=[str(key_network(k)) for k, *_ in bans[:5]])
                self._state_dirty = True
            self._update_rates()
            self._rotate_syn_key()
            self._check_interfaces()
            if self._state_dirty:
                self._save_state()
        elapsed = time.perf_counter() - start
        self.tick_seconds.append(elapsed)
        del self.tick_seconds[:-1000]
        for f in self.on_tick:
            f(elapsed)

    def _rotate_syn_key(self, force: bool = False) -> None:
        """A new SYN challenge key every syn_auth.key_rotation; the program
        accepts the current and the previous one."""
        assert self.port is not None and self.runtime is not None and self.runtime.policy is not None
        now = time.monotonic()
        if not force and now - self._syn_rotated < self.runtime.policy.syn_auth.key_rotation:
            return
        from agent.datapath.synauth import new_key

        cur = self.port.read_config().syn_key[0]
        previous = (int(cur.k0), int(cur.k1)) if cur.k0 or cur.k1 else new_key()
        self.port.set_syn_keys(current=new_key(), previous=previous)
        self._syn_rotated = now

    def _update_rates(self) -> None:
        assert self.port is not None
        stats = self.port.read_stats()
        now = time.monotonic()
        if self._last_stats is not None and self.rates.at:
            dt = max(now - self.rates.at, 1e-3)
            d = (stats - self._last_stats).astype(np.float64)
            by_reason = d[..., 0].sum(axis=(0, 2, 3)) / dt
            self.rates = Rates(
                at=now,
                pps_in=float(d[..., 0].sum() / dt),
                bps_in=float(d[..., 1].sum() * 8 / dt),
                pps_by_reason={abi.Reason(i).label: round(float(v), 1) for i, v in enumerate(by_reason) if v},
            )
        else:
            self.rates = Rates(at=now)
        self._last_stats = stats

    def reload(self, trigger: str) -> dict[str, Any]:
        with self.lock:
            assert self.runtime is not None and self.watcher is not None
            self.notifier.reloading()
            outcome = self.runtime.reload(trigger)
            self.watcher.update(self.runtime.files, self.runtime.include_globs)
            if outcome.ok and self.controller is not None and self.runtime.policy is not None:
                self.controller.update_policy(self.runtime.policy, self.runtime.compiled)
            self.notifier.ready(status="policy reloaded" if outcome.ok else "policy rejected, previous kept")
            return {"ok": outcome.ok, "errors": outcome.errors, "warnings": outcome.warnings,
                    "prefixes_changed": outcome.prefixes_changed, "seconds": round(outcome.seconds, 3)}

    def _save_state(self) -> None:
        assert self.port is not None and self.runtime is not None and self.runtime.policy is not None
        recs = [r for r in self.port.addresses.records() if r[2] != abi.Origin.POLICY]
        ids = dict(self.runtime.compiled.group_ids) if self.runtime.compiled else {}
        try:
            saved.save(self.runtime.policy.state_dir, saved.snapshot(recs, self.reasons, ids, self.ban_counts))
        except OSError as e:
            log.error("state_save_failed", dir=str(self.runtime.policy.state_dir), error=e.strerror)
            return
        self._state_dirty = False

    def stop(self) -> None:
        """Leave the program attached and enforcing; release everything else."""
        self.notifier.stopping()
        if self.control is not None:
            self.control.close()
        with self.lock:
            if self.port is not None and self.runtime is not None and self.runtime.policy is not None:
                self._save_state()
            if self.metrics_server is not None:
                with contextlib.suppress(Exception):
                    self.metrics_server.shutdown()
            if self.watcher is not None:
                self.watcher.close()
            if self._netlink is not None:
                self._netlink.close()
            if self.controller is not None:
                self.controller.close()
            if self.port is not None:
                self.port.close()
            if self.maps is not None:
                self.maps.close()
            if self.program is not None:
                self.program.close()
        log.info("stopped", attached_program_stays=not self._detach_requested)

    # ------------------------------------------------------------------ requests

    def handle_request(self, verb: str, args: dict[str, Any]) -> Any:
        handler = getattr(self, f"req_{verb}", None)
        if handler is None:
            raise RequestError(f"unknown request {verb!r}")
        with self.lock:
            return handler(**args)

    def req_status(self) -> dict[str, Any]:
        assert self.runtime is not None and self.program is not None and self.port is not None
        pol = self.runtime.policy
        return {
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "program": {"id": self.program.id, "tag": self.program.tag, "pin_dir": self.pin_dir,
                        "build_seconds": round(self.program.build_seconds, 2), "abi": abi.ABI_VERSION},
            "interfaces": [
                {"name": i.name, "ifindex": i.ifindex, "mode": i.attached_mode or "-", "requested": i.mode,
                 "attached": bool(i.prog_id), "error": i.error or None}
                for i in self.ifaces.values()
            ],
            "policy": {
                "path": str(self.policy_path),
                "loaded_at": self.runtime.loaded_at,
                "mode": pol.mode if pol else None,
                "summary": str(pol.summary()) if pol else None,
                "reloads_ok": self.runtime.reloads_ok,
                "reloads_failed": self.runtime.reloads_failed,
                "last_errors": self.runtime.last_errors,
            },
            "rates": {"pps_in": round(self.rates.pps_in, 1), "bps_in": round(self.rates.bps_in, 1),
                      "pps_by_reason": self.rates.pps_by_reason},
            "bans": self._ban_counts(),
            "attacks_active": len(self.controller.attacks(active=True)) if self.controller else 0,
        }

    def _ban_counts(self) -> dict[str, int]:
        from agent.metrics import count_bans

        assert self.port is not None
        return count_bans(self.port.addresses.records(), monotonic_ns())

    def req_bans(self, origin: str | None = None) -> list[dict[str, Any]]:
        assert self.port is not None
        now = monotonic_ns()
        out = []
        for key, kind, o, (expires, created, flags, reason) in self.port.addresses.records():
            if kind != abi.SRC_BAN or (origin and abi.Origin(o).label != origin):
                continue
            if expires and expires <= now:
                continue
            out.append({
                "prefix": str(key_network(key)),
                "origin": abi.Origin(o).label,
                "ttl_seconds": None if expires == 0 else round((expires - now) / NS, 1),
                "monitor": bool(flags & abi.SRC_BAN_MONITOR),
                "reason": self._reason_text(key, o, reason),
                "age_seconds": round((now - created) / NS, 1) if created else None,
            })
        out.sort(key=lambda b: (b["origin"], b["prefix"]))
        return out

    def _reason_text(self, key: PrefixKey, origin: int, rid: int) -> str:
        if origin == abi.Origin.POLICY:
            entry = self._policy_entry(key)
            if entry is not None:
                return f"{entry.reason or 'policy'} ({entry.source})"
            return "policy"
        return self.reasons.text(rid)

    def _policy_entry(self, key: PrefixKey) -> Any:
        pol = self.runtime.policy if self.runtime else None
        if pol is None:
            return None
        for entries in (pol.deny.prefixes, pol.allow.prefixes, pol.infrastructure.prefixes):
            for e in entries:
                if (e[0], e[1], e[2]) == key:
                    return e
        return None

    @staticmethod
    def _parse_prefix(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        try:
            return ipaddress.ip_network(text)
        except ValueError:
            try:
                loose = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise RequestError(
                    f"{text!r} is not an IP address or prefix (e.g. 198.51.100.7 or 2001:db8::/48)"
                ) from None
            raise RequestError(f"{text} has host bits set; did you mean {loose}?") from None

    def req_ban(self, prefix: str, ttl: float | None = None, reason: str | None = None) -> dict[str, Any]:
        assert self.port is not None
        net = self._parse_prefix(prefix)
        key = prefix_key(net)
        now = monotonic_ns()
        if ttl is not None and ttl <= 0:
            raise RequestError("--ttl must be positive (or omit it for a permanent ban)")
        expires = now + int(ttl * NS) if ttl else 0
        rec: Record = (expires, now, abi.SRC_BAN, self.reasons.id_of(reason))
        self.port.addresses.set_record(key, abi.SRC_BAN, abi.Origin.OPERATOR, rec)
        self.port.addresses.commit(now)  # the map write: a packet sent after we answer is dropped
        self._save_state()
        warn = None
        eff = self.port.addresses.effective(key, now)
        if eff.flags & abi.SRC_ALLOW:
            warn = f"{net} is allowlisted: the allowlist wins, this ban has no effect while it is"
        log.info("ban_added", prefix=str(net), origin="operator", ttl=ttl, reason=reason)
        return {"prefix": str(net), "ttl_seconds": ttl, "warning": warn}

    def req_unban(self, prefix: str) -> dict[str, Any]:
        assert self.port is not None
        net = self._parse_prefix(prefix)
        key = prefix_key(net)
        table = self.port.addresses
        removed = []
        for o in (abi.Origin.OPERATOR, abi.Origin.AUTO):
            if table.get_record(key, abi.SRC_BAN, o) is not None:
                table.set_record(key, abi.SRC_BAN, o, None)
                removed.append(o.label)
        if not removed:
            if table.get_record(key, abi.SRC_BAN, abi.Origin.POLICY) is not None:
                entry = self._policy_entry(key)
                where = f" ({entry.source})" if entry is not None else ""
                raise RequestError(f"{net} is banned by the policy's deny list{where}: remove it there and reload")
            raise RequestError(f"{net} is not banned (`floodguard bans` lists the bans)")
        table.commit(monotonic_ns())
        self._save_state()
        log.info("ban_removed", prefix=str(net), origins=removed)
        return {"prefix": str(net), "removed": removed}

    def req_attacks(self, recent: int = 20) -> dict[str, Any]:
        if self.controller is None:
            return {"active": [], "recent": []}
        active = [a.to_dict() for a in self.controller.attacks(active=True)]
        ids = {a["id"] for a in active}
        recent_list = [a.to_dict() for a in self.controller.attacks(active=False, recent=recent)]
        return {"active": active, "recent": [a for a in recent_list if a["id"] not in ids]}

    def req_top(self, n: int = 10) -> dict[str, Any]:
        if self.controller is None:
            return {"destinations": [], "sources": [], "groups": []}
        out: dict[str, Any] = self.controller.top(n)
        out["rates"] = {"pps_in": round(self.rates.pps_in, 1), "bps_in": round(self.rates.bps_in, 1),
                        "pps_by_reason": self.rates.pps_by_reason}
        return out

    def req_reload(self) -> dict[str, Any]:
        return self.reload("control socket")

    def req_detach(self) -> dict[str, Any]:
        """Remove the program from every interface and its pins, then stop."""
        self._detach_requested = True  # before detaching: the loop must not re-attach
        results = []
        for itf in self.ifaces.values():
            try:
                r = attach.detach(itf.name)
                results.append({"interface": itf.name, "detached": r.detached})
            except InterfaceError as e:
                results.append({"interface": itf.name, "detached": False, "error": str(e)})
        self._detach_requested = True
        self._stop.set()
        os.write(self._wake_w, b"d")
        self._remove_pins_on_exit = True
        return {"interfaces": results, "pins_removed": self.pin_dir}

    def req_explain(self, ip: str) -> dict[str, Any]:
        assert self.port is not None and self.runtime is not None and self.runtime.compiled is not None
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            raise RequestError(f"{ip!r} is not an IP address") from None
        table = self.port.addresses
        now = monotonic_ns()
        entries = []
        for key in table.covering_sources(addr):
            ent = table.src[key]
            for kind, slots in (("ban", ent.ban), ("allow", ent.allow)):
                for o, rec in enumerate(slots):
                    if rec is None:
                        continue
                    expires = rec[0]
                    entries.append({
                        "prefix": str(key_network(key)), "kind": kind, "origin": abi.Origin(o).label,
                        "monitor": bool(rec[2] & (abi.SRC_BAN_MONITOR | abi.SRC_ALLOW_MONITOR)),
                        "active": expires == 0 or expires > now,
                        "ttl_seconds": None if expires == 0 else round((expires - now) / NS, 1),
                        "reason": self._reason_text(key, o, rec[3]),
                    })
        src_key, dst_key = table.lookup(addr)
        verdict = "passes to the later stages"
        if src_key is not None:
            st = table.effective(src_key, now)
            if st.flags & abi.SRC_ALLOW:
                verdict = "allowlisted: always passes"
            elif st.flags & abi.SRC_BAN:
                verdict = "banned: every packet is dropped"
            elif st.flags & abi.SRC_BAN_MONITOR:
                verdict = "banned in monitor mode: counted, passed"
        infra = [str(key_network((e[0], e[1], e[2]))) for e in self.runtime.policy.infrastructure.prefixes  # type: ignore[union-attr]
                 if _covers((e[0], e[1], e[2]), addr)]
        names = {g.gid: g.name for g in self.runtime.compiled.groups}
        as_dst = None
        if dst_key is not None:
            gid = table.dst[dst_key]
            g = self.port.read_group(gid)
            limits = {abi.TrafficClass(c).label: describe(g.base[c]) for c in range(abi.LIMIT_CLASSES)}
            counters = self.port.read_dst_stats().get((addr.version, int(addr)))
            as_dst = {
                "group": names.get(gid, str(gid)), "prefix": str(key_network(dst_key)),
                "per_source_limits": limits,
                "tightened": bool(g.flags & abi.GROUP_TIGHT) and (g.tight_expires == 0 or g.tight_expires > now),
                "counters": None if counters is None else {
                    abi.TrafficClass(c).label: {"packets": int(counters.packets[c]), "bytes": int(counters.bytes[c]),
                                                "dropped": int(counters.dropped[c])}
                    for c in range(abi.LIMIT_CLASSES) if counters.packets[c]
                },
            }
        buckets = self._buckets_of(addr, names, now)
        return {"ip": str(addr), "verdict": verdict, "entries": entries, "infrastructure": infra,
                "as_destination": as_dst, "source_buckets": buckets}

    def _buckets_of(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address, names: dict[int, str],
                    now: int) -> list[dict[str, Any]]:
        """This source's token buckets (scans the LRU map: fine for an operator request)."""
        assert self.port is not None
        out = []
        if addr.version == 4:
            want = int.from_bytes(addr.packed, "little")
            for k, b in self.port.maps["buckets4"].items():
                if k.addr == want:
                    g = self.port.read_group(k.group)
                    r = g.base[k.cls]
                    ahead = max(0, int(b.pkt_tat) - now)
                    out.append({"group": names.get(int(k.group), str(k.group)),
                                "class": abi.TrafficClass(k.cls).label,
                                "limit": describe(r),
                                "over_limit": r.pkt_cost_ns > 0 and ahead + r.pkt_cost_ns > r.pkt_tolerance_ns,
                                "credit_used_seconds": round(ahead / NS, 3)})
        return out


def _covers(key: PrefixKey, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    fam, net, plen = key
    if fam != addr.version:
        return False
    bits = 32 if fam == 4 else 128
    return plen == 0 or (int(addr) >> (bits - plen)) == (net >> (bits - plen))


def remove_all_pins(pin_root: str) -> list[str]:
    """Every floodguard pin directory under pin_root (all versions)."""
    removed = []
    root = Path(pin_root)
    if root.is_dir():
        for d in root.iterdir():
            if d.is_dir():
                loader.remove_pins(str(d))
                removed.append(str(d))
        with contextlib.suppress(OSError):
            root.rmdir()
    return removed


def detach_everything(policy_path: Path | None, pin_root: str, interfaces: list[str]) -> dict[str, Any]:
    """`floodguard detach` without a running daemon."""
    names = list(interfaces)
    if not names and policy_path is not None:
        result: LoadResult = load_policy(policy_path)
        if result.policy is not None:
            names = [i.name for i in result.policy.interfaces]
    if not names:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            names = [ln.get_attr("IFLA_IFNAME") for ln in ipr.get_links()]
    results = []
    for name in names:
        try:
            r = attach.detach(name)
        except InterfaceError as e:
            if "no interface" in str(e):
                continue
            results.append({"interface": name, "detached": False, "error": str(e)})
            continue
        if r.detached:
            results.append({"interface": name, "detached": True})
    return {"interfaces": results, "pins_removed": remove_all_pins(pin_root)}


def main(policy_path: str, pin_root: str) -> int:
    agent = Agent(policy_path, pin_root=pin_root)
    try:
        agent.start()
    except (StartupError, DatapathError) as e:
        log.error("start_failed", error=str(e))
        agent.notifier.status(f"failed: {e}")
        raise
    try:
        rc = agent.run()
    finally:
        agent.stop()
        if getattr(agent, "_remove_pins_on_exit", False):
            remove_all_pins(pin_root)
    return rc


__all__ = ["Agent", "StartupError", "detach_everything", "main", "remove_all_pins"]
