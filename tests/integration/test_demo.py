"""`floodguard demo` runs start to finish: at least two attacks mitigated with
legitimate success >= 95% during them, a PNG timeline, no namespace left."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from pyroute2 import netns

from agent.lab.topology import FAMILY_PREFIX, _to_base36


def test_demo_runs_and_cleans_up(tmp_path: Path) -> None:
    png = tmp_path / "timeline.png"
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "demo", "--short", "--png", str(png)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The lab's names start with the demo process's prefix (agent.lab.topology.run_prefix).
    prefix = f"{FAMILY_PREFIX}{_to_base36(proc.pid)}"
    text, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    m = re.search(r"(\d+) attack\(s\) detected; (\d+) with legitimate success >= 95%", text)
    assert m and int(m.group(2)) >= 2, text[-2000:]
    assert "udp_reflection/dns" in text and "syn_flood" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert not [n for n in netns.listnetns() if n.startswith(prefix)], "the demo removed its lab"
