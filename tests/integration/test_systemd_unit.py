"""systemd/floodguard.service and `make install`.

- systemd-analyze verify finds nothing in a copy rendered to point into the test
  venv, and does find a broken one (so its silence means something);
- the directives the design requires are there, the ones that break BCC are not;
- the capability set: the agent's kernel work (build, load, pin, attach,
  rebuild on the pins, atomic replace, map access, socket group) passes under
  exactly the unit's CapabilityBoundingSet, and fails without each one;
- the unit boots under a real systemd (systemd-nspawn, the host's own /usr,
  a throwaway /etc), with all its sandboxing (the system-call filter
  included): start, attach, reload, a rejected
  reload, restart, stop, a start refused by ExecStartPre;
- scripts/install.sh and uninstall.sh in a scratch root (FLOODGUARD_ROOT):
  idempotent, an existing policy untouched.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from agent.datapath import loader
from agent.lab.topology import VethPair

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "floodguard.service"
VENV = Path(sys.prefix)
TEST_FG = Path(sys.executable).parent / "floodguard"
INSTALLED_FG = "/opt/floodguard/venv/bin/floodguard"
INSTALLED_POLICY = "/etc/floodguard/policy.yaml"


def directives(text: str) -> dict[str, list[str]]:
    """``Section.Key`` → every value, in order (systemd keys may repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return out


UNIT_DIRECTIVES = directives(UNIT.read_text())


def render(directory: Path, policy: Path, *, run_args: str = "", text: str | None = None) -> Path:
    """The unit with its program in the test venv and its policy at ``policy``."""
    body = (text if text is not None else UNIT.read_text()).replace(INSTALLED_FG, str(TEST_FG))
    body = body.replace(INSTALLED_POLICY, str(policy))
    if run_args:
        body = body.replace(f"run -c {policy}", f"run -c {policy} {run_args}")
    # PrivateTmp=yes gives the service an empty /tmp: a checkout living there
    # (CI often clones into /tmp) is bound back in. Installed, it is /opt.
    hidden = [str(p) for p in (REPO, VENV, policy.parent) if str(p).startswith("/tmp/")]
    if hidden:
        body = body.replace("PrivateTmp=yes", "PrivateTmp=yes\nBindReadOnlyPaths=" + " ".join(hidden), 1)
    path = directory / "floodguard.service"
    path.write_text(body)
    return path


def analyze_verify(unit: Path) -> list[str]:
    """Lines of ``systemd-analyze verify`` about this unit (other units on the host may warn)."""
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                         cwd=unit.parent, timeout=120)
    lines = (out.stdout + out.stderr).splitlines()
    ours = [ln for ln in lines if unit.name in ln or str(unit.parent) in ln]
    if out.returncode != 0 and not ours:
        ours = lines or [f"systemd-analyze exited {out.returncode}"]
    return ours


# =====================================================================================
# The unit file itself.
# =====================================================================================


def test_systemd_analyze_verify_reports_nothing(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    shutil.copy(REPO / "etc" / "policy.yaml", policy)
    unit = render(tmp_path, policy)
    assert str(TEST_FG) in unit.read_text()
    assert analyze_verify(unit) == []


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """A misspelt key and a missing program: the verify test above would see them."""
    policy = tmp_path / "policy.yaml"
    shutil.copy(REPO / "etc" / "policy.yaml", policy)
    text = UNIT.read_text().replace("Type=notify\n", "Typ=notify\n").replace(INSTALLED_FG, "/nonexistent/floodguard")
    unit = render(tmp_path, policy, text=text)
    found = "\n".join(analyze_verify(unit))
    assert "Typ" in found
    assert "/nonexistent/floodguard" in found


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("Service.Type", ["notify"]),
        ("Service.NotifyAccess", ["main"]),
        ("Service.ExecStartPre", [f"{INSTALLED_FG} check {INSTALLED_POLICY}"]),
        ("Service.ExecStart", [f"{INSTALLED_FG} run -c {INSTALLED_POLICY}"]),
        ("Service.ExecReload", [f"{INSTALLED_FG} check {INSTALLED_POLICY}", "/bin/kill -HUP $MAINPID"]),
        ("Service.Restart", ["on-failure"]),
        ("Service.StateDirectory", ["floodguard"]),
        ("Service.RuntimeDirectory", ["floodguard"]),
        ("Service.NoNewPrivileges", ["yes"]),
        ("Service.ProtectSystem", ["strict"]),
        ("Service.ReadWritePaths", ["/sys/fs/bpf"]),
        ("Service.LimitMEMLOCK", ["infinity"]),
        ("Service.LimitNOFILE", ["65536"]),
        ("Service.SystemCallFilter", ["~@mount @swap @reboot @module @raw-io @obsolete @cpu-emulation"]),
        ("Service.SystemCallErrorNumber", ["EPERM"]),
        ("Service.SystemCallArchitectures", ["native"]),
        ("Service.Environment", ["PYTHONUNBUFFERED=1"]),
        ("Install.WantedBy", ["multi-user.target"]),
    ],
)
def test_required_directive(key: str, expected: list[str]) -> None:
    assert UNIT_DIRECTIVES.get(key) == expected


def test_watchdog_is_on() -> None:
    (value,) = UNIT_DIRECTIVES["Service.WatchdogSec"]
    assert re.fullmatch(r"\d+s", value) and int(value[:-1]) >= 10


def test_capability_bounding_set_holds_bpf_and_net_admin() -> None:
    caps = unit_capabilities()
    assert {"CAP_BPF", "CAP_NET_ADMIN"} <= set(caps)


@pytest.mark.parametrize(
    "key",
    ["ProtectKernelTunables", "MemoryDenyWriteExecute", "ProtectKernelModules", "ProcSubset", "User", "DynamicUser"],
)
def test_directive_that_breaks_the_agent_is_absent(key: str) -> None:
    """/sys read-only (pins), no W^X (LLVM JIT), no /lib/modules (headers), no /proc/stat, not root (bpffs)."""
    assert f"Service.{key}" not in UNIT_DIRECTIVES


def test_security_exposure_stays_low(tmp_path: Path) -> None:
    """systemd's own score of the sandbox: a regression in hardening shows up here."""
    policy = tmp_path / "policy.yaml"
    shutil.copy(REPO / "etc" / "policy.yaml", policy)
    unit = render(tmp_path, policy)
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    m = re.search(r"Overall exposure level for floodguard\.service: (\d+\.\d+)", out.stdout)
    assert m, out.stdout[-2000:] + out.stderr[-2000:]
    assert float(m.group(1)) <= 5.0, out.stdout


# =====================================================================================
# Capabilities: sufficient, and each one necessary.
# =====================================================================================


def unit_capabilities() -> list[str]:
    (value,) = UNIT_DIRECTIVES["Service.CapabilityBoundingSet"]
    return value.split()


# What `floodguard run` does with privileges, one step at a time, run as root
# with a reduced bounding set; prints OK/FAIL per step and stops at the first failure.
PROBE = r"""
import os, socket, sys
from agent.contract.capacity import Capacity
from agent.datapath import attach, loader
from agent.datapath.maps import Maps
from agent.contract.specs import ConfigSpec
from agent.datapath.mapport import MapPort

ifname, pin_dir, gid, sock_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
cap = Capacity(prefixes=63, hosts4=64, prefixes6=64, groups=4, sources=64, sources6=64,
                      destinations=64, verified=64, sample_pages=1)
options = loader.BuildOptions(pin_dir=pin_dir, capacity=cap)

def step(name, fn):
    try:
        result = fn()
    except BaseException as e:
        print("FAIL", name, type(e).__name__, " ".join(str(e).split())[-400:], flush=True)
        sys.exit(1)
    print("OK", name, flush=True)
    return result

def maps_from_pins():
    maps = Maps.from_pins(pin_dir)
    port = MapPort(maps)
    port.write_config(ConfigSpec())
    port.close()
    maps.close()

def control_socket():
    path = os.path.join(sock_dir, "control.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    os.chmod(path, 0o660)
    os.chown(path, 0, gid)
    s.close()

first = step("build", lambda: loader.build(options))
step("pin", first.pin_program)
step("attach", lambda: attach.attach(ifname, first.fd))
again = step("rebuild on pins", lambda: loader.build(options))
step("replace", lambda: attach.attach(ifname, again.fd))
step("maps from pins", maps_from_pins)
step("socket group", control_socket)
step("detach", lambda: attach.detach(ifname))
"""


def run_probe(pair: VethPair, caps: list[str], tmp_path: Path) -> list[str]:
    """The probe in the target namespace with exactly ``caps`` (and no_new_privs, as the unit sets)."""
    pin_dir = f"/sys/fs/bpf/fgtest-{os.getpid()}-caps-{uuid.uuid4().hex[:6]}"
    sock_dir = tmp_path / uuid.uuid4().hex[:6]
    sock_dir.mkdir()
    bounding = ",".join(["-all", *("+" + c.removeprefix("CAP_").lower() for c in caps)])
    # nogroup: a group root is not a member of, like the policy's control.group.
    gid = 65534
    argv = ["setpriv", "--no-new-privs", "--inh-caps=-all", f"--bounding-set={bounding}",
            sys.executable, "-c", PROBE, pair.target.ifname, pin_dir, str(gid), str(sock_dir)]
    try:
        proc = pair.topology.popen(pair.target.ns, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, cwd=str(REPO))
        out, _ = proc.communicate(timeout=300)
    finally:
        loader.remove_pins(pin_dir)
    return [ln for ln in out.splitlines() if ln.startswith(("OK ", "FAIL "))] or [out[-2000:]]


STEPS = ["build", "pin", "attach", "rebuild on pins", "replace", "maps from pins", "socket group", "detach"]


@pytest.mark.slow
def test_unit_capabilities_suffice(veth_pair: VethPair, tmp_path: Path) -> None:
    lines = run_probe(veth_pair, unit_capabilities(), tmp_path)
    assert lines == [f"OK {s}" for s in STEPS]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dropped", "fails_at", "because"),
    [
        # RTM_SETLINK with IFLA_XDP.
        (["CAP_NET_ADMIN"], "attach", "MissingPrivilegeError"),
        # BCC reopens pinned maps with BPF_MAP_GET_FD_BY_ID: CAP_SYS_ADMIN only.
        (["CAP_SYS_ADMIN"], "rebuild on pins", "could not open bpf map"),
        # The socket's group is one root is not a member of.
        (["CAP_CHOWN"], "socket group", "Operation not permitted"),
        # CAP_SYS_ADMIN implies the next two; without it, each is needed on its own.
        (["CAP_SYS_ADMIN", "CAP_PERFMON"], "build", "pointer -= pointer prohibited"),
        (["CAP_SYS_ADMIN", "CAP_BPF"], "build", "Operation not permitted"),
    ],
    ids=["net_admin", "sys_admin", "chown", "perfmon", "bpf"],
)
def test_each_capability_is_needed(
    veth_pair: VethPair, tmp_path: Path, dropped: list[str], fails_at: str, because: str
) -> None:
    caps = [c for c in unit_capabilities() if c not in dropped]
    lines = run_probe(veth_pair, caps, tmp_path)
    done = STEPS[: STEPS.index(fails_at)]
    assert lines[:-1] == [f"OK {s}" for s in done], lines
    assert lines[-1].startswith(f"FAIL {fails_at} "), lines
    assert because in lines[-1], lines


# =====================================================================================
# The unit under a real systemd: the host's OS booted in a throwaway container.
# =====================================================================================

CONTAINER_POLICY = """\
interfaces:
  - name: host0
    mode: auto
capacity: {prefixes: 1024, hosts4: 1024, prefixes6: 1024, groups: 16, sources: 4096, sources6: 1024,
           destinations: 1024, verified: 1024}
mitigation: {max_bans: 500}
"""

# Runs inside the container once floodguard.service has started; every
# finding is a "RESULT name value" line, then the container powers off.
CONTAINER_CHECK = r"""
exec >/fgout/check.log 2>&1
r() { printf 'RESULT %s %s\n' "$1" "$2"; }
show() { systemctl show floodguard -p "$1" --value; }
# /etc is empty in the container, so no /etc/alternatives: no awk, only grep and sed.
field() { sed -n "s/^$1:[[:space:]]*//p" "/proc/$2/status"; }
for _ in $(seq 120); do [ "$(show ActiveState)" = active ] && break; sleep 0.5; done
pid=$(show MainPID)
r active "$(show ActiveState)"
r restarts "$(show NRestarts)"
r status "$(show StatusText)"
r bounding "$(field CapBnd "$pid")"
r nonewprivs "$(field NoNewPrivs "$pid")"
r seccomp "$(field Seccomp "$pid")"
r xdp "$(ip -o link show host0 | grep -o 'prog/xdp id [0-9]* name [a-z_]*' | sed 's/.* name //')"
r socket "$(stat -c '%A %G' /run/floodguard/control.sock)"
r state_dir "$(stat -c '%a' /var/lib/floodguard)"
r cli "$(FG status >/dev/null 2>&1 && echo ok || echo failed)"
# SIGHUP's reload is asynchronous: wait (up to 10 s) for the status it ends with, not a fixed second.
systemctl reload floodguard; rc=$?
for _ in $(seq 40); do [ "$(show StatusText)" = "policy reloaded" ] && break; sleep 0.25; done
r reload "$rc $(show StatusText)"
cp /etc/floodguard/policy.yaml /fgout/good.yaml
printf 'interfaces: [oops\n' > /etc/floodguard/policy.yaml
systemctl reload floodguard; r bad_reload "$? $(show ActiveState) $(show MainPID | sed "s/^$pid$/same-pid/")"
cp /fgout/good.yaml /etc/floodguard/policy.yaml
systemctl restart floodguard
r restart "$(show ActiveState) $(journalctl -u floodguard -o cat | grep -c '"event": "xdp_replaced"')"
systemctl stop floodguard
r stopped "$(show ActiveState) $(ip -o link show host0 | grep -o 'name xdp_floodguard')"
printf 'interfaces: [oops\n' > /etc/floodguard/policy.yaml
systemctl start floodguard; r bad_start "$? $(show Result)"
r bad_start_log "$(journalctl -u floodguard -o cat | grep -c '/etc/floodguard/policy.yaml:2:1: YAML syntax error')"
journalctl -u floodguard -o cat --no-pager | head -n 60
systemctl poweroff
"""


def cap_mask(caps: list[str]) -> str:
    numbers = {"CAP_CHOWN": 0, "CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21, "CAP_PERFMON": 38, "CAP_BPF": 39}
    return f"{sum(1 << numbers[c] for c in caps):016x}"


@pytest.mark.slow
def test_unit_boots_under_systemd(tmp_path: Path) -> None:
    nspawn = shutil.which("systemd-nspawn")
    assert nspawn, "systemd-nspawn is missing: install systemd-container (scripts/setup.sh does)"
    machine = f"fgt{os.getpid() % 100000}"
    pin_root = f"/sys/fs/bpf/fgtest-{os.getpid()}-unit"
    units, etc, out, sysusers = (tmp_path / d for d in ("system", "etc", "out", "sysusers"))
    for d in (units, etc, out, sysusers):
        d.mkdir()
    (etc / "policy.yaml").write_text(CONTAINER_POLICY)
    render(units, Path(INSTALLED_POLICY), run_args=f"--pin-root {pin_root}")
    shutil.copy(REPO / "systemd" / "floodguard.sysusers", sysusers / "floodguard.conf")
    (out / "check.sh").write_text(CONTAINER_CHECK.replace("FG ", f"{TEST_FG} "))
    (units / "fgcheck.service").write_text(
        "[Unit]\nAfter=floodguard.service\nWants=floodguard.service\n"
        "[Service]\nType=oneshot\nExecStart=/bin/bash /fgout/check.sh\n"
    )
    wants = units / "multi-user.target.wants"
    wants.mkdir()
    for name in ("floodguard.service", "fgcheck.service"):
        (wants / name).symlink_to(f"../{name}")
    argv = [
        nspawn, "-q", "-D", "/", "--volatile=yes", "--register=no", "--keep-unit", "-M", machine,
        "--capability=all", "--system-call-filter=bpf", "--network-veth",
        "--bind=/sys/fs/bpf", f"--bind-ro={REPO}", f"--bind-ro={VENV}",
        f"--bind-ro={units}:/etc/systemd/system", f"--bind={etc}:/etc/floodguard",
        f"--bind-ro={sysusers}:/etc/sysusers.d", f"--bind={out}:/fgout",
        # tmp.mount would lay a tmpfs over /tmp and hide a checkout (and its
        # venv) that lives there, as CI clones often do.
        "--boot", "systemd.firstboot=off", "systemd.mask=tmp.mount",
    ]
    try:
        boot = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    finally:
        loader.remove_pins(pin_root)
    log = (out / "check.log").read_text() if (out / "check.log").exists() else ""
    results = dict(ln.split(" ", 2)[1:] for ln in log.splitlines() if ln.startswith("RESULT ") and ln.count(" ") >= 2)
    context = f"check.log:\n{log}\nconsole:\n{boot.stdout[-3000:]}{boot.stderr[-2000:]}"
    assert results.get("active") == "active", context
    assert results.get("restarts") == "0", context
    assert results.get("status") == "protecting host0", context
    assert results.get("bounding") == cap_mask(unit_capabilities()), context
    assert results.get("nonewprivs") == "1", context
    assert results.get("seccomp") == "2", context  # the unit's SystemCallFilter is in force (filter mode)
    assert results.get("xdp") == "xdp_floodguard", context
    assert results.get("socket") == "srw-rw---- floodguard", context
    assert results.get("state_dir") == "700", context
    assert results.get("cli") == "ok", context
    assert results.get("reload") == "0 policy reloaded", context
    # ExecReload's check refuses the broken file: reload fails, the same daemon runs on.
    assert results.get("bad_reload", "").split() == ["1", "active", "same-pid"], context
    # A restart builds on the pins and swaps the program atomically.
    assert results.get("restart") == "active 1", context
    assert results.get("stopped") == "inactive name xdp_floodguard", context
    # ExecStartPre refuses to start on a broken policy, with file:line in the journal.
    assert results.get("bad_start") == "1 exit-code", context
    assert int(results.get("bad_start_log", "0")) >= 1, context


# =====================================================================================
# make install / make uninstall in a scratch root.
# =====================================================================================


def run_script(name: str, root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(REPO / "scripts" / name)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "FLOODGUARD_ROOT": str(root), **env})


@pytest.mark.slow
def test_install_is_idempotent_and_keeps_the_policy(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = run_script("install.sh", root)
    assert first.returncode == 0, first.stdout + first.stderr
    venv = root / "opt/floodguard/venv"
    unit = root / "etc/systemd/system/floodguard.service"
    policy = root / "etc/floodguard/policy.yaml"
    assert unit.read_text() == UNIT.read_text()
    assert policy.read_text() == (REPO / "etc/policy.yaml").read_text()
    assert "floodguard:" in (root / "etc/group").read_text()
    assert (root / "opt/floodguard/doc/policy.md").is_file()
    assert f"installed the default policy as {policy}" in first.stdout

    # Non-editable: the installed package lives in the venv, not in the checkout.
    where = subprocess.run([str(venv / "bin/python"), "-c", ("import agent.datapath.loader as l; "
                            "print(l.__file__); print(l.source_dir())")],
                           capture_output=True, text=True, cwd=tmp_path, check=True).stdout.split()
    assert all(p.startswith(str(venv)) for p in where), where
    # The service's venv holds the runtime only: the lab and test extras stay out.
    listing = ("import importlib.metadata as m, sysconfig; site = sysconfig.get_paths()['purelib']; "
               "print(*sorted(d.metadata['Name'].lower() for d in m.distributions(path=[site])))")
    own = subprocess.run([str(venv / "bin/python"), "-c", listing], capture_output=True, text=True,
                         check=True).stdout.split()
    assert "floodguard" in own and not {"matplotlib", "scapy", "pytest"} & set(own), own
    check = subprocess.run([str(venv / "bin/floodguard"), "check", str(policy)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    mine = policy.read_text().replace("- name: eth0", "- name: uplink0") + "# the operator's edit\n"
    policy.write_text(mine)
    second = run_script("install.sh", root)
    assert second.returncode == 0, second.stdout + second.stderr
    assert policy.read_text() == mine
    assert f"kept your {policy}" in second.stdout
    assert f"unchanged {unit}" in second.stdout
    assert "group floodguard exists" in second.stdout
    assert (root / "etc/group").read_text().count("floodguard:") == 1

    removed = run_script("uninstall.sh", root)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert not unit.exists() and not (root / "opt/floodguard").exists()
    assert policy.read_text() == mine
    assert "PURGE=1" in removed.stdout

    purged = run_script("uninstall.sh", root, PURGE="1")
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert not (root / "etc/floodguard").exists()
    assert "floodguard:" not in (root / "etc/group").read_text()


@pytest.mark.slow
def test_install_failure_is_one_sentence(tmp_path: Path) -> None:
    """pip cannot reach an index: the script says where the log is, no traceback as its last word."""
    res = run_script("install.sh", tmp_path / "root", FLOODGUARD_PIP_ARGS="--no-index --find-links /nonexistent")
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"floodguard install: pip install into \S+ failed: the full log is \S+\.", last), res.stderr


# =====================================================================================
# docs/runbook.md agrees with the unit, the metrics reference and the dashboard.
# =====================================================================================

RUNBOOK = (REPO / "docs" / "runbook.md").read_text()


def test_runbook_names_the_units_capabilities() -> None:
    m = re.search(r"only `(CAP_[A-Z_ \n]+)`", RUNBOOK)
    assert m, "the runbook's troubleshooting section names the capability set"
    assert m.group(1).split() == unit_capabilities()


def test_runbook_metrics_are_documented() -> None:
    metrics = (REPO / "docs" / "metrics.md").read_text()
    named = set(re.findall(r"floodguard_[a-z_]+", RUNBOOK))
    assert named, "the runbook names metrics"
    missing = sorted(n for n in named if f"`{n}`" not in metrics)
    assert missing == []


def test_runbook_panels_exist_in_the_dashboard() -> None:
    import json

    dashboard = json.loads((REPO / "contrib" / "grafana-dashboard.json").read_text())
    titles: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("title"), str):
                titles.add(node["title"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(dashboard)
    table = RUNBOOK.split("| question | metric | panel |", 1)[1].split("\n\n", 1)[0]
    panels = [row.rsplit("|", 2)[1].strip() for row in table.strip().splitlines()[1:]]
    assert panels
    for cell in panels:
        for panel in cell.split(", "):
            assert panel in titles, f"{panel!r} is not a panel of contrib/grafana-dashboard.json"
