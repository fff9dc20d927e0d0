"""The running policy: load, validate, compile and apply — or keep the old one.

A reload parses and validates everything and compiles it before the kernel
is touched; any error (a broken or deleted file, a value that needs a
restart) leaves the running policy in place, logs every error with its
location and counts the failure. Only origin "policy" entries change:
operator and automatic bans survive every reload.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from agent.datapath.apply import apply_policy
from agent.datapath.mapport import MapPort
from agent.policy import LoadResult, load_policy, restart_required
from agent.policy.compile import CompiledPolicy, compile_policy
from agent.policy.model import Policy

log = structlog.get_logger()


@dataclass
class ReloadOutcome:
    ok: bool
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    prefixes_changed: int = 0
    seconds: float = 0.0


class PolicyRuntime:
    """Holds the policy in force and applies new versions of it."""

    def __init__(self, path: str | Path, port: MapPort) -> None:
        self.path = Path(path)
        self.port = port
        self.policy: Policy | None = None
        self.compiled: CompiledPolicy | None = None
        self.files: list[Path] = []
        self.include_globs: list[str] = []
        self.loaded_at = 0.0  # wall-clock time of the policy in force
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.last_errors: list[str] = []

    def reload(self, trigger: str = "manual") -> ReloadOutcome:
        """Load the file again; apply it if it is valid, else keep the old policy."""
        start = time.monotonic()
        try:
            result = load_policy(self.path)
        except Exception as e:  # no file makes a reload take the daemon down: the old policy stays
            log.exception("policy_load_crashed", path=str(self.path))
            return self._reject(trigger, [f"{self.path}: cannot load: {type(e).__name__}: {e}"], [], start)
        return self.adopt(result, None, trigger)

    def adopt(self, result: LoadResult, compiled: CompiledPolicy | None = None,
              trigger: str = "start") -> ReloadOutcome:
        """Apply an already loaded policy (the daemon loads it once at start)."""
        start = time.monotonic()
        # Watch whatever was read or looked for, even when the load failed,
        # so that fixing the file triggers the next reload.
        self.files, self.include_globs = result.files, result.include_globs
        warnings = [str(w) for w in result.warnings]
        if result.policy is None:
            return self._reject(trigger, [str(e) for e in result.errors], warnings, start)
        new = result.policy
        if self.policy is not None:
            blockers = restart_required(self.policy, new)
            if blockers:
                return self._reject(trigger, [f"{self.path}: {b}" for b in blockers], warnings, start)
        try:
            if compiled is None:
                compiled = compile_policy(new, self.compiled.group_ids if self.compiled else None)
            if self.compiled is not None and compiled.capacity != self.compiled.capacity:
                raise ValueError("restart required: capacity changed")
            stats = apply_policy(self.port, compiled.desired, self.compiled.desired if self.compiled else None)
        except Exception as e:  # noqa: BLE001 — anything the kernel says: the old entries stay (additions came first)
            return self._reject(trigger, [f"{self.path}: cannot apply: {e}"], warnings, start)
        self.policy, self.compiled = new, compiled
        self.loaded_at = time.time()
        self.reloads_ok += 1
        self.last_errors = []
        seconds = time.monotonic() - start
        for w in warnings:
            log.warning("policy_warning", warning=w)
        summary = new.summary()
        log.info(
            "policy_reloaded" if self.reloads_ok > 1 else "policy_loaded",
            path=str(self.path),
            trigger=trigger,
            prefixes_changed=stats.prefixes_changed,
            groups=summary.groups,
            deny=summary.deny,
            allow=summary.allow,
            protected=summary.protected,
            seconds=round(seconds, 3),
        )
        return ReloadOutcome(True, [], warnings, stats.prefixes_changed, seconds)

    def _reject(self, trigger: str, errors: list[str], warnings: list[str], start: float) -> ReloadOutcome:
        self.reloads_failed += 1
        self.last_errors = errors
        log.error(
            "policy_rejected",
            path=str(self.path),
            trigger=trigger,
            errors=errors,
            kept="previous policy" if self.policy is not None else "nothing loaded",
        )
        return ReloadOutcome(False, errors, warnings, 0, time.monotonic() - start)
