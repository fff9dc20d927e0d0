"""The ctypes mirror (agent/contract/abi.py) matches what the compiler made
of bpf/abi.h: sizes, offsets, constants and enum values; and the capacity
defaults (agent/contract/capacity.py) are the ones bpf/maps.h falls back to.

The assertions are generated from the mirror and compiled by BCC's clang,
the compiler that builds the program; a mismatch fails the compile and
names every field that drifted.
"""

from __future__ import annotations

import ctypes as ct

import pytest

from agent.contract import abi
from agent.datapath import loader
from agent.datapath.maps import MAP_TYPES, Maps


def static_asserts() -> list[str]:
    out = []
    for cname, cls in abi.C_STRUCTS.items():
        out.append(f'_Static_assert(sizeof(struct {cname}) == {ct.sizeof(cls)}, "sizeof(struct {cname})");')
        for fname, _ftype in cls._fields_:
            field = getattr(cls, fname)
            cf = abi.C_FIELD_NAMES.get(fname, fname)
            out.append(
                f"_Static_assert(__builtin_offsetof(struct {cname}, {cf}) == {field.offset}, "
                f'"offset of {cname}.{cf}");'
            )
            out.append(
                f"_Static_assert(sizeof(((struct {cname} *)0)->{cf}) == {field.size}, "
                f'"size of {cname}.{cf}");'
            )
    for name, value in abi.C_CONSTANTS.items():
        out.append(f'_Static_assert({name} == {value}, "{name}");')
    for prefix, enum in abi.C_ENUMS.items():
        for member in enum:
            out.append(f'_Static_assert({prefix}{member.name} == {int(member)}, "{prefix}{member.name}");')
    return out


def test_mirror_matches_compiled_header() -> None:
    from bcc import BPF

    src = loader.source_dir()
    text = "\n".join(["#include <uapi/linux/bpf.h>", '#include "abi.h"', *static_asserts()])
    with loader._capture_stderr() as err:
        try:
            BPF(text=text.encode(), cflags=[f"-I{src}"])
        except Exception as e:  # noqa: BLE001 — BCC raises a bare Exception on compile errors
            failed: Exception | None = e
        else:
            failed = None
    if failed is not None:
        drift = [line for line in "".join(err).splitlines() if "static assertion failed" in line]
        pytest.fail("abi.py and abi.h disagree:\n" + "\n".join(drift or ["".join(err)[-3000:]]))


def test_capacity_defaults_are_the_ones_maps_h_falls_back_to() -> None:
    """maps.h's ``#ifndef FG_X / #define FG_X n`` defaults: the sizes of Capacity() and of the policy's defaults."""
    import re

    from agent.contract.capacity import Capacity
    from agent.policy.model import Capacities

    text = (loader.source_dir() / "maps.h").read_text()
    fallback = {name: int(value) for name, value in re.findall(r"#ifndef (FG_\w+)\n#define \1 (\d+)", text)}
    assert fallback == Capacity().defines()
    assert Capacities().to_capacity() == Capacity(), "the policy's capacity defaults are the contract's"
    assert set(Capacities.model_fields) == {f for f in Capacity.__dataclass_fields__ if f != "sample_pages"}


def test_policy_classes_are_the_kernel_classes_in_order() -> None:
    from agent.policy.model import CLASSES

    assert [abi.TrafficClass[name.upper()] for name in CLASSES] == list(range(abi.LIMIT_CLASSES))


def test_every_reason_has_a_fate() -> None:
    assert set(abi.FATE) == set(abi.Reason)
    assert abi.Reason.SYN_CHALLENGED in abi.NOT_DELIVERED and abi.Reason.PASSED not in abi.NOT_DELIVERED
    assert abi.fate(abi.Reason.MALFORMED, malformed_pass=True) is abi.Fate.DELIVERED


def test_enough_assertions_are_checked() -> None:
    # Every struct field, constant and enum member is asserted.
    n_fields = sum(len(c._fields_) for c in abi.C_STRUCTS.values())
    assert len(static_asserts()) >= 2 * n_fields + len(abi.C_CONSTANTS)


def test_every_map_has_the_mirrored_key_and_value_sizes(program: loader.Program) -> None:
    maps = Maps.from_program(program)
    try:
        for name, (key_t, value_t, _percpu) in MAP_TYPES.items():
            t = maps[name]
            assert (t.key_size, t.value_size) == (ct.sizeof(key_t), ct.sizeof(value_t)), name
            bcc_table = program.table(name)
            assert ct.sizeof(bcc_table.Key) == ct.sizeof(key_t), name
            # per-CPU tables: BCC's Leaf is an array over CPUs, sLeaf one CPU's value
            leaf = getattr(bcc_table, "sLeaf", bcc_table.Leaf)
            assert ct.sizeof(leaf) == ct.sizeof(value_t), name
    finally:
        maps.close()


def test_a_drifted_mirror_is_caught() -> None:
    # The check must be able to fail: shift one offset and compile.
    from bcc import BPF

    src = loader.source_dir()
    bad = '_Static_assert(__builtin_offsetof(struct fg_rule, dst_len) == 42, "offset of fg_rule.dst_len");'
    with loader._capture_stderr() as err, pytest.raises(Exception, match="Failed to compile"):
        BPF(text=f'#include <uapi/linux/bpf.h>\n#include "abi.h"\n{bad}'.encode(), cflags=[f"-I{src}"])
    assert "offset of fg_rule.dst_len" in "".join(err)
