"""Performance smoke tests: big policies load and are counted right. Times are printed, never asserted.

Targets (measured by hand and in `floodguard bench policy`, not here): 100,000
prefixes parsed and validated in about a second, 1,000,000 in under ten.
Run with ``-s`` to see the times.
"""

from __future__ import annotations

import time
from pathlib import Path

from agent.policy import load_policy


def test_a_100k_prefix_deny_file_loads(tmp_path: Path) -> None:
    with open(tmp_path / "deny.txt", "w") as handle:
        for i in range(100_000):
            handle.write(f"{10 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.0/24 feed-{i % 7}\n")
    (tmp_path / "policy.yaml").write_text(
        "interfaces: [eth0]\n"
        "allow: {prefixes: [192.0.2.0/24]}\n"
        "deny: {files: [deny.txt]}\n"
        "protect: [{name: web, prefixes: [203.0.113.0/24]}]\n"
    )
    start = time.perf_counter()
    result = load_policy(tmp_path / "policy.yaml")
    elapsed = time.perf_counter() - start
    print(f"\n100,000-prefix deny file: loaded and validated in {elapsed:.2f} s")
    assert result.errors == [] and result.warnings == []
    assert result.policy is not None
    assert len(result.policy.deny.prefixes) == 100_000
    assert result.policy.deny.prefixes[99_999].reason == "feed-4"


def test_32000_protected_prefixes_in_1000_groups_load(tmp_path: Path) -> None:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    for group in range(1000):
        base = 0x64000000 + group * 32 * 256  # 100.0.0.0 onwards, 32 /24s per group
        lines = [
            "protect:",
            f"  - name: cust-{group:04d}",
            "    thresholds: {udp: {pps: 100k}}",
            "    prefixes:",
        ]
        for n in range(32):
            address = base + n * 256
            lines.append(f"      - {address >> 24}.{(address >> 16) & 255}.{(address >> 8) & 255}.0/24")
        (conf / f"cust-{group:04d}.yaml").write_text("\n".join(lines) + "\n")
    (tmp_path / "policy.yaml").write_text("include: [conf.d/*.yaml]\ninterfaces: [eth0]\n")
    start = time.perf_counter()
    result = load_policy(tmp_path / "policy.yaml")
    elapsed = time.perf_counter() - start
    print(f"\n32,000 protected prefixes in 1,000 groups (1,001 files): loaded in {elapsed:.2f} s")
    assert result.errors == [] and result.warnings == []
    assert result.policy is not None
    summary = result.policy.summary()
    assert (summary.protected, summary.groups) == (32_000, 1000)
    assert len(result.files) == 1001
