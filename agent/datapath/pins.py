"""The pin directories under the pin root: reuse them, migrate out of them, remove them.

Maps live under ``<pin root>/v<ABI>/``. A start with the same ABI version and
the same map sizes reuses them as they are (bans and counters survive a
restart). Anything else — another version's directory, or this version's
with other sizes — is read and unpinned: its operator and automatic entries
come back to the caller to be written into the new maps. The old maps stay
alive and enforcing through the program still attached to them until the new
program replaces it (bpffs does not rename directories, so the new maps
cannot simply take the old ones' place).

Entries are read with :meth:`AddressTable.load_from_kernel`, the same decoder
a restart uses on its own pins, so there is one reading of src_entries.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import structlog

from agent.contract import abi
from agent.contract.capacity import Capacity
from agent.contract.keys import PrefixKey, Record

from . import bpfsys as sysbpf
from .addrtable import AddressTable
from .errors import DatapathError
from .loader import remove_pins
from .maps import Maps

log = structlog.get_logger()

#: One origin's record about one prefix, as the address table takes it back: (key, kind, origin, record).
Entry = tuple[PrefixKey, int, int, Record]

#: The maps an AddressTable reads.
_ADDRESS_MAPS = ("src_entries", "dir4", "host4", "lpm6")
#: Entries of these origins move to new maps; policy entries come from the policy.
_KEPT_ORIGINS = (abi.Origin.OPERATOR, abi.Origin.AUTO)


def prepare(pin_root: str, pin_dir: str, capacity: Capacity) -> list[Entry]:
    """Make ``pin_dir`` ready for a program of ``capacity``; return the entries to move into it.

    Empty when the pins can be reused or there are none. Every other pin
    directory under ``pin_root`` is read and removed.
    """
    root = Path(pin_root)
    stale: list[Path] = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if not d.is_dir() or not d.name.startswith("v"):
                continue
            if d == Path(pin_dir):
                if fits(d, capacity):
                    continue
                log.warning("capacity_changed", pin_dir=str(d), action="migrating entries to new maps")
            else:
                log.warning("abi_changed", old=str(d), new=pin_dir, action="migrating entries")
            stale.append(d)
    entries: list[Entry] = []
    for d in stale:
        entries += read_entries(d)
        remove_pins(str(d))
    return entries


def fits(pin_dir: Path, capacity: Capacity) -> bool:
    """Whether every map that ``capacity`` sizes is pinned in ``pin_dir`` with that size."""
    for name, size in capacity.map_sizes().items():
        path = pin_dir / name
        if not path.exists():
            return False
        fd = sysbpf.obj_get(str(path))
        try:
            if sysbpf.map_info(fd).max_entries != size:
                return False
        finally:
            os.close(fd)
    return True


def read_entries(pin_dir: Path) -> list[Entry]:
    """The operator and automatic records held in ``pin_dir``'s address maps.

    Pins of a layout this version cannot read (another struct fg_src_entry)
    give nothing: the entries come back from the state file instead. A
    version that changes the layout adds its reader here.
    """
    if not (pin_dir / "src_entries").exists():
        return []
    fds: dict[str, int] = {}
    try:
        for name in _ADDRESS_MAPS:
            fds[name] = sysbpf.obj_get(str(pin_dir / name))
        maps = Maps(fds, str(pin_dir))
    except DatapathError as e:
        sysbpf.close(list(fds.values()))
        log.error("migration_unknown_layout", pin_dir=str(pin_dir), error=str(e),
                  action="entries come back from the state file instead")
        return []
    try:
        table = AddressTable(maps)
        try:
            table.load_from_kernel()
            return [r for origin in _KEPT_ORIGINS for r in table.records(origin)]
        finally:
            table.close()
    finally:
        maps.close()


def remove_all(pin_root: str) -> list[str]:
    """Remove every floodguard pin directory under ``pin_root`` (all versions), then the root."""
    removed = []
    root = Path(pin_root)
    if root.is_dir():
        for d in root.iterdir():
            if d.is_dir():
                remove_pins(str(d))
                removed.append(str(d))
        with contextlib.suppress(OSError):
            root.rmdir()
    return removed


__all__ = ["Entry", "fits", "prepare", "read_entries", "remove_all"]
