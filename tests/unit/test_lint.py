"""Strict tooling is part of the suite: ruff on everything, mypy --strict on agent/."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_ruff_is_clean() -> None:
    out = subprocess.run([str(BIN / "ruff"), "check", "agent", "tests", "scripts"], cwd=REPO, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout[-4000:]


def test_mypy_strict_is_clean() -> None:
    out = subprocess.run([str(BIN / "mypy")], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:]


def _sources() -> list[Path]:
    return [p for top in ("agent", "bpf", "tests", "scripts") for p in sorted((REPO / top).rglob("*"))
            if p.suffix in {".py", ".c", ".h"} and "__pycache__" not in p.parts]


def test_no_comment_names_an_issue_number() -> None:
    # Comments say what and why; the tracker's numbers mean nothing to a reader of the code.
    pattern = re.compile(r"\bissue\s*#?\d+", re.IGNORECASE)
    found = [f"{p.relative_to(REPO)}:{n}" for p in _sources()
             for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if pattern.search(line)]
    assert found == []


def test_no_two_modules_share_a_name() -> None:
    # One name per thing: `port.py` twice once meant two different ports. Bench and lab modules
    # are named after the part they drive (bench/upstream.py drives upstream/), so they may repeat it.
    names: dict[str, list[str]] = {}
    for p in sorted((REPO / "agent").rglob("*.py")):
        rel = p.relative_to(REPO / "agent")
        if p.name == "__init__.py" or rel.parts[0] in {"bench", "lab"}:
            continue
        names.setdefault(p.name, []).append(str(rel))
    assert {n: where for n, where in names.items() if len(where) > 1} == {}
