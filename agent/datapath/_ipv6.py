"""IPv6 in the kernel: ``lpm6``, an LPM trie over every IPv6 prefix, each
node carrying the answer for itself (merged with the prefixes covering it)."""

from __future__ import annotations

from agent.contract import abi
from agent.contract.keys import PrefixKey, from_words, words

from ._addrmodel import AddressModel
from ._slots import Slots
from .errors import CapacityError
from .maps import Table

#: (src entry, group, flags): struct fg_addr_info.
_Answer = tuple[int, int, int]


class Lpm6:
    """lpm6's nodes, diffed against what the kernel holds."""

    def __init__(self, table: Table, model: AddressModel, slots: Slots) -> None:
        self._table = table
        self._model = model
        self._slots = slots
        # what the kernel holds, as we wrote it
        self._held: dict[tuple[int, int], _Answer] = {}

    def reread(self) -> None:
        """Take what the kernel holds as the starting point of the next diff."""
        self._held = {}
        for k, v in self._table.items():
            self._held[(from_words(6, k.addr), int(k.prefixlen))] = (
                int(v.src_entry), int(v.group), int(v.flags))

    def get(self, addr: int) -> _Answer:
        got = self._table.get(self._lpm_key(addr, 128))
        if got is None:
            return 0, 0, 0
        return int(got.src_entry), int(got.group), int(got.flags)

    def _answer(self, addr: int, plen: int) -> _Answer:
        idx, group = self._model.longest(6, addr, plen)
        return idx, group, self._slots.flags_of(idx)

    def plan(
        self, v6_dirty: list[PrefixKey], full: bool
    ) -> tuple[dict[tuple[int, int], _Answer], list[tuple[int, int]]]:
        if full:
            lens = (self._model.src_lens, self._model.dst_lens)
            consider = {(a, p) for k in lens for (f, p), s in k.by_len.items() if f == 6 for a in s}
            consider |= set(self._held)
        else:
            consider = set()
            for key in v6_dirty:
                consider.add((key[1], key[2]))
                for k in (*self._model.src_lens.inside(key), *self._model.dst_lens.inside(key)):
                    consider.add((k[1], k[2]))
        adds: dict[tuple[int, int], _Answer] = {}
        dels: list[tuple[int, int]] = []
        for a, p in consider:
            key = (6, a, p)
            if key in self._model.src or key in self._model.dst:
                v = self._answer(a, p)
                if self._held.get((a, p)) != v:
                    adds[(a, p)] = v
            elif (a, p) in self._held:
                dels.append((a, p))
        if len(self._held) + len(adds) - len(dels) > self._table.max_entries:
            raise CapacityError(
                f"lpm6 needs {len(self._held) + len(adds) - len(dels)} entries, capacity is "
                f"{self._table.max_entries}: raise capacity.prefixes6 in the policy and restart"
            )
        return adds, dels

    @staticmethod
    def _lpm_key(a: int, p: int) -> abi.Lpm6Key:
        k = abi.Lpm6Key(prefixlen=p)
        k.addr[:] = words(6, a)
        return k

    def write(self, adds: dict[tuple[int, int], _Answer]) -> None:
        # LPM tries have no batch update: one by one.
        for (a, p), (i, g, f) in adds.items():
            self._table.set(self._lpm_key(a, p), abi.AddrInfo(src_entry=i, group=g, flags=f))
        self._held.update(adds)

    def delete(self, dels: list[tuple[int, int]]) -> None:
        for a, p in dels:
            self._table.delete(self._lpm_key(a, p))
            self._held.pop((a, p), None)

