"""Opening a policy's files: regular files only, of a bounded size.

An include or a prefix file may name anything the operator (or a template)
writes: ``/dev/zero`` would be read forever, a FIFO would block the reload
(and the daemon's main loop) until someone writes to it. Only regular files
are read, and at most a size a policy could sensibly have; anything else is
an ``OSError`` whose ``strerror`` says what the path is and what to do, so the
callers that already report unreadable files report these the same way.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

#: A policy YAML file (with its includes, each on its own) is a few KiB; this is generous.
MAX_POLICY_BYTES = 16 << 20
#: A prefix file holds one prefix a line: 10 million lines fit.
MAX_PREFIX_FILE_BYTES = 512 << 20

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class FileKindError(OSError):
    """Not a regular file (a FIFO, a device, a socket), or larger than its limit."""


def open_regular(path: Path, limit: int) -> BinaryIO:
    """``path`` opened for binary reading, if it is a regular file of at most ``limit`` bytes."""
    # O_NONBLOCK: opening a FIFO for reading must not wait for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
            raise FileKindError(errno.EINVAL, f"is {kind}, not a regular file: name a file", str(path))
        if st.st_size > limit:
            raise FileKindError(errno.EFBIG, f"is {st.st_size:,} bytes, more than the {limit:,} allowed",
                                str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path, limit: int) -> bytes:
    """The whole of ``path`` (see :func:`open_regular`); a file that grows past ``limit`` while read fails too."""
    with open_regular(path, limit) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FileKindError(errno.EFBIG, f"is more than the {limit:,} bytes allowed", str(path))
    return data


__all__ = ["MAX_POLICY_BYTES", "MAX_PREFIX_FILE_BYTES", "FileKindError", "open_regular", "read_regular"]
