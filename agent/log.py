"""structlog set-up: JSON lines under systemd (the journal keeps the fields),
a readable console on a terminal.

Events are names with fields — log.info("attack_started", target=...,
vector=...) — never sentences, so they can be searched and counted.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Literal

import structlog

Format = Literal["auto", "json", "console"]


def use_json(fmt: Format, stream: object = sys.stderr) -> bool:
    """auto: JSON under systemd (INVOCATION_ID / JOURNAL_STREAM) or when not a TTY."""
    if fmt != "auto":
        return fmt == "json"
    if os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM"):
        return True
    isatty = getattr(stream, "isatty", None)
    return not (callable(isatty) and isatty())


def configure(level: str = "info", fmt: Format = "auto", stream: object = sys.stderr) -> None:
    """Configure structlog for the process (called once by `floodguard run`)."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    renderer: structlog.typing.Processor
    if use_json(fmt, stream):
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=getattr(stream, "isatty", lambda: False)())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=stream),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
