"""The daemon (`floodguard run`): a small supervisor wiring the parts together.

- ``supervisor`` — start-up, the main loop (signals, policy watcher, netlink, tick, watchdog), stop
- ``interfaces`` — the interface watcher: attach, re-attach, interface lost
- ``state`` — the state file and the store that decides when to write it
- ``verbs`` — the control socket's verb table; ``views`` — what `bans` and `explain` show
- ``api`` — the control socket's server and the CLI's client
- ``reload`` — the policy in force and its reloads; ``sdnotify`` — systemd's notify protocol
- ``parts``, ``metrics_source`` — the running parts, and the metrics collector's view of them

Importing this package is cheap (the CLI's client verbs go through
``agent.daemon.api``); ``main`` imports the rest.
"""

from __future__ import annotations

from pathlib import Path


class StartupError(Exception):
    """The agent cannot start; the message says why and what to do."""


def main(policy_path: str, pin_root: str) -> int:
    """`floodguard run`: start, loop until stopped, stop; returns the exit code."""
    from .supervisor import run

    return run(policy_path, pin_root)


def detach_everything(policy_path: Path | None, pin_root: str, interfaces: list[str]) -> dict[str, object]:
    """`floodguard detach` without a running daemon (see ``interfaces.detach_everything``)."""
    from .interfaces import detach_everything as detach

    return detach(policy_path, pin_root, interfaces)


__all__ = ["StartupError", "detach_everything", "main"]
