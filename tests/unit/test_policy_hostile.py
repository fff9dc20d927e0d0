"""Hostile policy input: alias bombs, files that never end, FIFOs, unknown tags.

Each must end in an ordinary policy error (file:line and what to do) without
exhausting the daemon, never in an exception that escapes the loader.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from agent.policy import load_policy
from agent.policy._regular import MAX_POLICY_BYTES
from agent.policy._yaml import MAX_NODES

BASE = "interfaces: [eth0]\n"


def load_errors(path: Path) -> list[str]:
    """The errors of loading ``path``, from a thread: a loader that blocks fails the test, not the run."""
    out: list[list[str]] = []
    t = threading.Thread(target=lambda: out.append([str(e) for e in load_policy(path).errors]), daemon=True)
    t.start()
    t.join(60)
    assert out, f"loading {path} did not return (blocked on a FIFO or a device?)"
    return out[0]


def test_an_alias_bomb_stops_at_the_node_cap(tmp_path: Path) -> None:
    # 9 levels of 9 aliases: 9**9 = 387 million values from a file of a few hundred bytes.
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    (tmp_path / "policy.yaml").write_text(BASE + "\n".join(lines) + "\n")
    assert (tmp_path / "policy.yaml").stat().st_size < 600
    (err,) = load_errors(tmp_path / "policy.yaml")
    assert f"more than {MAX_NODES:,} values (runaway aliases?)" in err
    assert MAX_NODES <= 1_000_000


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_an_include_naming_a_device_is_refused(tmp_path: Path, device: str) -> None:
    (tmp_path / "policy.yaml").write_text(BASE + f"include: [{device}]\n")
    (err,) = load_errors(tmp_path / "policy.yaml")
    assert f"{device}:1:1" in err and "is a character device, not a regular file" in err


def test_an_include_naming_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.yaml")
    (tmp_path / "policy.yaml").write_text(BASE + "include: [pipe.yaml]\n")
    (err,) = load_errors(tmp_path / "policy.yaml")
    assert "pipe.yaml:1:1" in err and "is a FIFO, not a regular file" in err


def test_a_prefix_file_naming_a_device_or_fifo_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "deny.fifo")
    (tmp_path / "policy.yaml").write_text(BASE + "deny:\n  files: [/dev/zero, deny.fifo]\n")
    errs = load_errors(tmp_path / "policy.yaml")
    assert len(errs) == 2
    assert "cannot read /dev/zero: is a character device, not a regular file" in errs[0]
    assert "deny.fifo: is a FIFO, not a regular file" in errs[1]


def test_an_oversized_policy_file_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "huge.yaml"
    with big.open("wb") as f:
        f.truncate(MAX_POLICY_BYTES + 1)  # sparse: costs no disk
    (tmp_path / "policy.yaml").write_text(BASE + "include: [huge.yaml]\n")
    (err,) = load_errors(tmp_path / "policy.yaml")
    assert "huge.yaml:1:1" in err and f"more than the {MAX_POLICY_BYTES:,} allowed" in err


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("mode: !foo x\n", "policy.yaml:2:7: YAML syntax error: could not determine a constructor for the tag '!foo'"),
        ("limits: !!python/object:os.system {}\n",
         "policy.yaml:2:9: the tag 'tag:yaml.org,2002:python/object:os.system' has no meaning in a policy: remove it"),
        ("protect: !!set {a: null}\n", "policy.yaml:2:10: the tag 'tag:yaml.org,2002:set' has no meaning"),
        ("log: {level: !!timestamp 2024-13-45}\n", "policy.yaml:2:14: YAML value error: month must be in 1..12"),
        ("log: {level: !!int abc}\n", "policy.yaml:2:14: YAML value error: invalid literal for int()"),
    ],
)
def test_unknown_tags_and_bad_typed_values_are_policy_errors(tmp_path: Path, text: str, expect: str) -> None:
    (tmp_path / "policy.yaml").write_text(BASE + text)
    (err,) = load_errors(tmp_path / "policy.yaml")
    assert err.startswith(str(tmp_path / expect)), err
