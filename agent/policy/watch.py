"""Reload watcher: notice policy file changes and say when a reload is due.

Directories are watched, not files: Ansible, Salt, editors and ``mv`` replace a
file by writing a temporary one and renaming it over the old name, which an
inotify watch on the old file never sees (it watches the inode that just went
away). A watch on the directory sees ``IN_MOVED_TO`` for the name instead.
Events for names that are neither a known policy/prefix file nor a match of an
include glob (editor swap files, ``.tmp`` files) are ignored, and include globs
are re-expanded on every event so a new ``conf.d/*.yaml`` file counts.

Bursts of events (an Ansible run touching ten files) are debounced into one
reload: a reload becomes due ``debounce`` seconds after the last relevant event,
but never later than ``max_delay`` after the first, so a file rewritten every
half second cannot postpone the reload forever.

inotify is reached through ``ctypes`` on libc: three calls and one struct do not
justify a dependency, and the maintained wrappers on PyPI either pull in asyncio
frameworks or are thin ctypes code like this.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import glob
import os
import select
import struct
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType

IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

#: What a change to a file in a watched directory looks like, however the tool made it.
WATCH_MASK = (
    IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)
_EVENT = struct.Struct("iIII")


class _Inotify:
    """The three inotify syscalls, via libc."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._add.restype = ctypes.c_int
        self._rm = libc.inotify_rm_watch
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        self._rm.restype = ctypes.c_int
        init = libc.inotify_init1
        init.argtypes = [ctypes.c_int]
        init.restype = ctypes.c_int
        self.fd: int = int(init(IN_NONBLOCK | IN_CLOEXEC))
        if self.fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_init1: {os.strerror(code)}")

    def add(self, directory: str) -> int:
        wd = self._add(self.fd, os.fsencode(directory), WATCH_MASK)
        if wd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), directory)
        return int(wd)

    def remove(self, wd: int) -> None:
        self._rm(self.fd, wd)  # EINVAL if the kernel already dropped it: nothing to do

    def read(self) -> list[tuple[int, int, str]]:
        """Pending events as (watch descriptor, mask, name); empty when none are queued."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        events = []
        offset = 0
        while offset < len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size
            name = os.fsdecode(data[offset : offset + length].rstrip(b"\0"))
            offset += length
            events.append((wd, mask, name))
        return events

    def close(self) -> None:
        os.close(self.fd)


def _literal_dir(pattern: str) -> str:
    """The deepest directory of a glob pattern that has no wildcard in it."""
    parts = Path(pattern).parts
    literal: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        literal.append(part)
    return str(Path(*literal)) if literal else "/"


class PolicyWatcher:
    """Watches the policy's files and include globs; ``poll()`` says when to reload.

    Give it ``LoadResult.files`` and ``LoadResult.include_globs`` and call
    ``update()`` with the new ones after every load, successful or not (a failed
    load still says which files to watch for the fix). ``fileno()`` can be put
    in the daemon's ``select``; ``timeout()`` says how long to wait at most.
    The clock is injectable so tests advance time instead of sleeping.
    """

    def __init__(
        self,
        files: Iterable[Path | str],
        include_globs: Iterable[str] = (),
        *,
        debounce: float = 1.0,
        max_delay: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.debounce = debounce
        self.max_delay = max_delay
        self._clock = clock
        self._inotify = _Inotify()
        self._dirs: dict[str, int] = {}  # directory → watch descriptor
        self._wds: dict[int, str] = {}
        self._files: set[str] = set()
        self._globs: list[str] = []
        self._matches: set[str] = set()
        self._first: float | None = None
        self._last: float | None = None
        self.update(files, include_globs)

    # --- set-up ----------------------------------------------------------------------------------

    def update(self, files: Iterable[Path | str], include_globs: Iterable[str] = ()) -> None:
        """Watch these files and globs from now on (after a reload, the set may have changed)."""
        names: set[str] = set()
        for file in files:
            path = os.path.abspath(os.fspath(file))
            names.add(path)
            # A symlinked policy changes when its target changes, too.
            names.add(os.path.realpath(path))
        self._files = names
        self._globs = [os.path.abspath(g) for g in include_globs]
        self._rescan()

    def _expand(self) -> set[str]:
        found: set[str] = set()
        for pattern in self._globs:
            found.update(m for m in glob.glob(pattern) if os.path.isfile(m))
        return found

    def _rescan(self) -> None:
        """Re-expand globs and watch every directory that matters, dropping the rest."""
        self._matches = self._expand()
        wanted: set[str] = {os.path.dirname(f) for f in self._files | self._matches}
        for pattern in self._globs:
            wanted.add(_literal_dir(pattern))
        watch: set[str] = set()
        for wanted_dir in wanted:
            # A directory that does not exist yet (conf.d not created) is watched through
            # its nearest existing parent, so its creation is noticed.
            existing = wanted_dir
            while existing != "/" and not os.path.isdir(existing):
                existing = os.path.dirname(existing)
            watch.add(existing)
        for directory in list(self._dirs):
            if directory not in watch:
                wd = self._dirs.pop(directory)
                self._wds.pop(wd, None)
                self._inotify.remove(wd)
        for directory in watch - set(self._dirs):
            try:
                wd = self._inotify.add(directory)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                    continue  # vanished between the check and the call; the next rescan retries
                raise
            self._dirs[directory] = wd
            self._wds[wd] = directory

    # --- the main-loop interface -------------------------------------------------------------------

    def fileno(self) -> int:
        """The inotify descriptor: readable when file events are pending."""
        return self._inotify.fd

    def pending(self) -> bool:
        """True while a reload is scheduled but not yet due."""
        return self._first is not None

    def timeout(self) -> float | None:
        """Seconds until a scheduled reload is due (``None`` if none is scheduled)."""
        due = self._due()
        return None if due is None else max(0.0, due - self._clock())

    def _due(self) -> float | None:
        if self._first is None or self._last is None:
            return None
        return min(self._last + self.debounce, self._first + self.max_delay)

    def drain(self) -> None:
        """Read queued events and schedule a reload if any of them concerns the policy."""
        relevant = False
        rescan = False
        for wd, mask, name in self._inotify.read():
            directory = self._wds.get(wd)
            if directory is None:
                continue  # includes IN_IGNORED for a watch that _rescan removed on purpose
            if mask & IN_IGNORED:
                # The kernel dropped the watch: the directory was deleted or unmounted.
                self._dirs.pop(directory, None)
                self._wds.pop(wd, None)
                rescan = relevant = True
                continue
            if mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                rescan = relevant = True
                continue
            path = os.path.join(directory, name)
            if path in self._files or path in self._matches:
                relevant = True
            # Any other name may be a new glob match or a new directory on a glob's path.
            rescan = rescan or bool(self._globs)
        if rescan:
            before = self._matches
            self._rescan()
            if self._matches != before:
                relevant = True
        if relevant:
            now = self._clock()
            if self._first is None:
                self._first = now
            self._last = now

    def poll(self, timeout: float = 0.0) -> bool:
        """Wait up to ``timeout`` seconds for events; True (once) when a reload is due.

        After it returns True the schedule is cleared: the caller reloads and
        then calls ``update()`` with the new file list.
        """
        wait = timeout
        remaining = self.timeout()
        if remaining is not None:
            wait = min(wait, remaining)
        if wait > 0:
            select.select([self._inotify.fd], [], [], wait)
        self.drain()
        due = self._due()
        if due is not None and self._clock() >= due:
            self._first = self._last = None
            return True
        return False

    def close(self) -> None:
        """Stop watching and release the descriptor."""
        self._inotify.close()

    def __enter__(self) -> PolicyWatcher:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
