#!/usr/bin/env bash
# Host set-up for floodguard: idempotent, safe to run before every `make` target.
#
# Installs the Debian/Ubuntu packages the agent, its tests and its benchmarks
# need, makes kernel headers visible to BCC, mounts bpffs and builds .venv.
# Every failure is one sentence that says what is missing and what to do.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv="${FLOODGUARD_VENV:-$here/.venv}"
stamp="$venv/.floodguard-setup"

die() { printf 'floodguard setup: %s\n' "$*" >&2; exit 1; }
say() { printf 'floodguard setup: %s\n' "$*"; }

[[ $(id -u) -eq 0 ]] || die "must run as root (XDP, bpffs and apt need it): re-run with sudo."
command -v apt-get >/dev/null || die "no apt-get: this set-up supports Debian and Ubuntu; install python3-bpfcc, kernel headers, iproute2, netsniff-ng and xdp-tools by hand."
# /sys/fs/bpf exists exactly when the kernel has the bpf syscall (CONFIG_BPF_SYSCALL).
[[ -d /sys/fs/bpf ]] || die "the running kernel $(uname -r) has no BPF support: boot a kernel built with CONFIG_BPF_SYSCALL=y."


packages=(
    python3-bpfcc       # BCC: compiles and loads the XDP program
    python3-venv python3-pip
    iproute2            # ip, for humans; the agent itself uses pyroute2
    netsniff-ng         # trafgen: floods in the lab, tests and benchmarks
    xdp-tools           # xdp-filter: the peer in `make bench`
    prometheus          # promtool: checks metrics and alert rules in tests
    iptables nftables   # peers in the end-to-end benchmark
    ethtool util-linux kmod
    systemd-container   # systemd-nspawn: the unit's test boots it under a real systemd
    linux-headers-amd64
    gobgpd              # the BGP speaker of upstream escalation (agent/upstream)
    golang-github-osrg-gobgp-dev  # GoBGP's .proto files: the agent's gRPC stubs are generated from them
    bird2               # the independent BGP peer of the upstream tests, the lab and the bench
    nginx-light         # the lab's web server: legitimate HTTP behind the gateway (agent/lab/web.py)
    wrk                 # the lab's HTTP load generator: requests per second of legitimate clients
    stress-ng           # CPU pressure for `make test-repeat STRESS=1`: the suite must not depend on speed
)
missing=()
for p in "${packages[@]%% *}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed: check the network or the apt sources."
    # The exact header package for the running kernel is preferred; the generic one is the fallback.
    exact="linux-headers-$(uname -r)"
    if apt-cache show "$exact" >/dev/null 2>&1; then missing+=("$exact"); fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed: run it by hand to see why."
    # Debian starts a freshly installed nginx on port 80 of the host; the lab runs its own nginx in
    # a namespace, so the one this script installed is stopped and left disabled.
    if [[ " ${missing[*]} " == *" nginx-light "* ]] && [[ -d /run/systemd/system ]]; then
        systemctl disable --now nginx.service >/dev/null 2>&1 || true
    fi
fi

# BCC compiles against /lib/modules/$(uname -r)/build. The program includes only
# UAPI headers, so the distribution's generic headers serve any recent kernel.
mod="/lib/modules/$(uname -r)"
if [[ ! -e $mod/build/include ]]; then
    amd=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1 || true)
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1 || true)
    [[ -n $amd && -n $common ]] || die "no kernel headers for $(uname -r): install linux-headers-$(uname -r) or linux-headers-amd64."
    mkdir -p "$mod"
    ln -sfn "$amd" "$mod/build"
    ln -sfn "$common" "$mod/source"
    say "no headers for $(uname -r): linked $mod/build -> $amd and source -> $common (UAPI headers only are used)"
fi

if ! mountpoint -q /sys/fs/bpf; then
    mount -t bpf bpf /sys/fs/bpf || die "cannot mount bpffs on /sys/fs/bpf: the kernel needs CONFIG_BPF_SYSCALL."
    say "mounted bpffs on /sys/fs/bpf"
fi

# BCC is a Debian package (python3-bpfcc); the PyPI package named bcc is
# unrelated, so the venv sees the system site-packages.
if [[ ! -x $venv/bin/python ]]; then
    /usr/bin/python3 -m venv --system-site-packages "$venv" || die "cannot create $venv: install python3-venv."
fi
"$venv/bin/python" -c 'import bcc' 2>/dev/null || die "python3-bpfcc is installed but 'import bcc' fails in $venv: reinstall python3-bpfcc."
# The extras: test (pytest, scapy, linters) and lab (what only the demo and the
# benchmarks use, matplotlib). The stamp holds them, so a changed list installs
# again even when pyproject.toml did not change.
extras="test,lab,upstream"
if [[ ! -f $stamp || $here/pyproject.toml -nt $stamp || $(<"$stamp") != "$extras" ]]; then
    say "installing floodguard with its extras [$extras] into $venv"
    log="$venv/pip-install.log"
    if ! "$venv/bin/pip" install -q --disable-pip-version-check -e "$here[$extras]" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        die "pip install into $venv failed: the full log is $log."
    fi
    printf '%s\n' "$extras" >"$stamp"
fi
# GoBGP's API stubs, generated from the .proto files of the gobgpd installed (a no-op when up to date).
"$venv/bin/python" -m agent.upstream.stubs >/dev/null || die "cannot generate the GoBGP API stubs (above): reinstall golang-github-osrg-gobgp-dev."
