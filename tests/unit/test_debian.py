"""debian/ agrees with the rest of the checkout (the package's own test is tests/package)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEBIAN = REPO / "debian"


def test_the_native_package_has_pyprojects_version() -> None:
    """A native package: the version dpkg shows is the one `pip show floodguard` shows."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    m = re.fullmatch(r"floodguard \(([^)]+)\) \S+; urgency=\w+", first)
    assert m, first
    assert m.group(1) == project, "bump debian/changelog with pyproject.toml's version (dch -v VERSION)"


def test_python_constraints_pin_exact_versions() -> None:
    pins = [ln.strip() for ln in (DEBIAN / "python-constraints.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    assert pins
    bad = [p for p in pins if not re.fullmatch(r"[A-Za-z0-9._-]+==[0-9][A-Za-z0-9.+!-]*", p)]
    assert bad == []


def test_sysusers_file_is_the_one_make_install_uses() -> None:
    link = DEBIAN / "floodguard.sysusers"
    assert link.is_symlink() and link.resolve() == (REPO / "systemd" / "floodguard.sysusers").resolve()
