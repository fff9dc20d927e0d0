"""The wheel carries bpf/: an installed copy, away from the source tree,
builds and loads the program into the kernel. Installing it brings no
plotting or packet-crafting library: those come only with the lab and test
extras."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import os, sys
import agent
from agent.datapath import loader
from agent.contract.capacity import Capacity
src = loader.source_dir()
assert str(src).startswith(sys.prefix), (src, sys.prefix)
pin = "/sys/fs/bpf/fgtest-wheel-%d" % os.getpid()
cap = Capacity(prefixes=63, hosts4=64, prefixes6=64, groups=4, sources=64, sources6=64,
                      destinations=64, verified=64, sample_pages=1)
try:
    p = loader.build(loader.BuildOptions(pin_dir=pin, capacity=cap))
    print("AGENT", agent.__file__)
    print("SOURCE", src)
    print("PROGRAM", p.id, p.insns)
    p.close()
finally:
    loader.remove_pins(pin)
"""


def test_installed_wheel_builds_the_program(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(REPO)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("floodguard-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for f in ("agent/bpf/floodguard.bpf.c", "agent/bpf/abi.h", "agent/bpf/maps.h", "agent/bpf/parse.h",
              "agent/bpf/ratelimit.h", "agent/bpf/synauth.h", "agent/bpf/lab_pass.bpf.c", "agent/bpf/lab_ceiling.bpf.c",
              "agent/bpf/lab.h", "agent/lab/lab-policy.yaml"):
        assert f in names, f"{f} missing from the wheel"
    # pyproject.toml lists the packages by hand (bpf/ is mapped in): a new one must be listed too.
    packages = sorted(str(i.parent.relative_to(REPO)) for i in (REPO / "agent").rglob("__init__.py"))
    assert [p for p in packages if f"{p}/__init__.py" not in names] == [], "packages missing from the wheel"
    (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    headers = zipfile.ZipFile(wheel).read(meta).decode().split("\n\n", 1)[0].splitlines()
    requires = [h.removeprefix("Requires-Dist: ") for h in headers if h.startswith("Requires-Dist: ")]
    assert "Provides-Extra: lab" in headers, headers
    for lib in ("matplotlib", "scapy"):
        found = [r for r in requires if r.split(";")[0].strip().lower().startswith(lib)]
        assert found and all("extra ==" in r for r in found), f"pip install floodguard brings {lib}: {found}"

    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True)
    # Dependencies come from the test venv's site-packages (offline), added as a
    # plain path: its .pth files (the editable install of the checkout) stay inactive.
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    out = subprocess.run([str(py), "-c", PROBE], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert lines["AGENT"].startswith(str(venv)), lines
    assert lines["SOURCE"].startswith(str(venv)), lines
    prog_id, insns = lines["PROGRAM"].split()
    assert int(prog_id) > 0 and int(insns) > 100
