#!/usr/bin/env bash
# `make install`: floodguard as a systemd service. Idempotent: run it again to
# upgrade (after `git pull`), it never overwrites an existing policy.
#
# Puts a venv under /opt/floodguard (the project, non-editable, with the
# distribution's BCC through --system-site-packages), the unit in
# /etc/systemd/system, the `floodguard` group (the control socket's), and
# /etc/floodguard/policy.yaml from etc/policy.yaml when there is none.
#
# FLOODGUARD_ROOT=/some/dir installs into that tree instead (for tests): the
# host is left alone (no apt, no bpffs mount, no systemctl, the group goes
# into that tree's /etc/group). FLOODGUARD_PIP_ARGS adds pip options, e.g.
# "--no-index --find-links /srv/wheels" on a machine without PyPI.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
root=${FLOODGUARD_ROOT:-}
root=${root%/}
prefix=$root/opt/floodguard
venv=$prefix/venv
unit=$root/etc/systemd/system/floodguard.service
etc=$root/etc/floodguard
policy=$etc/policy.yaml
sysusers=$root/etc/sysusers.d/floodguard.conf
group=floodguard
read -r -a pip_args <<<"${FLOODGUARD_PIP_ARGS:-}"

die() { printf 'floodguard install: %s\n' "$*" >&2; exit 1; }
say() { printf 'floodguard install: %s\n' "$*"; }

# Installs $1 as $2 (mode $3) and says whether anything changed.
put() {
    local src=$1 dst=$2 mode=$3
    if [[ -f $dst ]] && cmp -s "$src" "$dst"; then
        say "unchanged $dst"
    else
        local what=installed
        [[ -f $dst ]] && what=updated
        install -D -m "$mode" "$src" "$dst" || die "cannot write $dst: check the file system is writable."
        say "$what $dst"
    fi
}

[[ $(id -u) -eq 0 ]] || die "must run as root (it writes /opt, /etc and systemd's units): re-run with sudo."

# --- the host: BCC, kernel headers, bpffs (only for a real install) -----------
if [[ -z $root ]]; then
    command -v apt-get >/dev/null \
        || die "no apt-get: install python3-bpfcc, python3-venv and your kernel's headers by hand, then run again."
    [[ -d /sys/fs/bpf ]] || die "the running kernel $(uname -r) has no BPF support: boot a kernel with CONFIG_BPF_SYSCALL=y."
    arch=$(dpkg --print-architecture)
    # gobgpd and its API definitions: the speaker of upstream escalation (floodguard-speaker.service).
    packages=(python3-bpfcc python3-venv gobgpd golang-github-osrg-gobgp-dev)
    # The exact headers of the running kernel are best; the generic package is
    # the fallback (the program includes UAPI headers only).
    [[ -e /lib/modules/$(uname -r)/build/include ]] || packages+=("linux-headers-$arch")
    missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        say "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq || die "apt-get update failed: check the network or the apt sources."
        exact="linux-headers-$(uname -r)"
        if [[ " ${missing[*]} " == *" linux-headers-"* ]] && apt-cache show "$exact" >/dev/null 2>&1; then
            missing+=("$exact")
        fi
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
            || die "apt-get install ${missing[*]} failed: run it by hand to see why."
    fi
    mod=/lib/modules/$(uname -r)
    if [[ ! -e $mod/build/include ]]; then
        amd=$(ls -d /usr/src/linux-headers-*-"$arch" 2>/dev/null | sort -V | tail -n1 || true)
        common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1 || true)
        [[ -n $amd && -n $common ]] \
            || die "no kernel headers for $(uname -r): install linux-headers-$(uname -r) (BCC compiles against them)."
        mkdir -p "$mod"
        ln -sfn "$amd" "$mod/build"
        ln -sfn "$common" "$mod/source"
        say "no headers for $(uname -r): linked $mod/build -> $amd (UAPI headers only are used)"
    fi
    if ! mountpoint -q /sys/fs/bpf; then
        mount -t bpf bpf /sys/fs/bpf || die "cannot mount bpffs on /sys/fs/bpf: the kernel needs CONFIG_BPF_SYSCALL."
        say "mounted bpffs on /sys/fs/bpf"
    fi
    # systemd mounts bpffs itself at boot; without systemd, nothing does.
    if [[ ! -d /run/systemd/system ]] && ! grep -qs '^[^#]*[[:space:]]/sys/fs/bpf[[:space:]]' /etc/fstab; then
        say "note: systemd is not running, so nothing mounts bpffs at boot: add 'bpf /sys/fs/bpf bpf defaults 0 0' to /etc/fstab"
    fi
else
    say "FLOODGUARD_ROOT=$root: installing into that tree; host packages, bpffs and systemd are left alone"
fi

# --- the venv: the project, non-editable, next to the distribution's BCC ------
# A venv whose python no longer runs (the distribution's python was upgraded)
# is rebuilt rather than patched.
if [[ -e $venv ]] && ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    say "$venv is broken (its python does not start): rebuilding it"
    rm -rf "$venv"
fi
if [[ ! -x $venv/bin/python ]]; then
    mkdir -p "$prefix"
    /usr/bin/python3 -m venv --system-site-packages "$venv" || die "cannot create $venv: install python3-venv."
    say "created $venv"
fi
"$venv/bin/python" -c 'import bcc' 2>/dev/null \
    || die "'import bcc' fails in $venv: install python3-bpfcc (the PyPI package named bcc is unrelated)."
log=$prefix/pip-install.log
# --upgrade reinstalls the checkout (the same version number may hold new
# code) and upgrades dependencies only where the new version requires it.
if ! "$venv/bin/pip" install --disable-pip-version-check --no-input --upgrade --upgrade-strategy only-if-needed \
        "${pip_args[@]}" "$here[upstream]" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    die "pip install into $venv failed: the full log is $log."
fi
# GoBGP's API stubs for the agent, generated from the .proto files of the gobgpd installed.
if [[ -d /usr/share/gocode/src/github.com/osrg/gobgp/api ]]; then
    "$venv/bin/python" -m agent.upstream.stubs >>"$log" 2>&1 \
        || die "cannot generate the GoBGP API stubs: the log is $log."
else
    say "no GoBGP API definitions (golang-github-osrg-gobgp-dev): upstream escalation stays unavailable"
fi
version=$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("floodguard"))')
say "floodguard $version installed in $venv"

# Documentation beside the program, where the unit's Documentation= points.
for doc in "$here"/docs/*.md; do
    put "$doc" "$prefix/doc/$(basename "$doc")" 0644
done

# --- the group that may use the control socket ---------------------------------
# A sysusers.d entry recreates it on systems that rebuild /etc; creating it
# now means the first start already finds it.
put "$here/systemd/floodguard.sysusers" "$sysusers" 0644
has_group() {
    if [[ -n $root ]]; then grep -qs "^$group:" "$root/etc/group"; else getent group "$group" >/dev/null; fi
}
if has_group; then
    say "group $group exists"
else
    if command -v systemd-sysusers >/dev/null; then
        systemd-sysusers ${root:+--root="$root"} "$sysusers" >/dev/null 2>&1 || true
    else
        groupadd --system ${root:+--prefix "$root"} "$group" || true
    fi
    has_group || die "could not create group $group: create it with \`groupadd --system $group\` and run again."
    say "created group $group (members may use the CLI: usermod -aG $group USER)"
fi

# --- the policy: never overwritten ---------------------------------------------
mkdir -p "$etc/conf.d"
if [[ -e $policy ]]; then
    say "kept your $policy (an existing policy is never overwritten; the new default is $here/etc/policy.yaml)"
else
    install -D -m 0644 "$here/etc/policy.yaml" "$policy" || die "cannot write $policy."
    say "installed the default policy as $policy: set its interfaces before starting"
fi
if ! "$venv/bin/floodguard" check "$policy" >"$prefix/check.log" 2>&1; then
    cat "$prefix/check.log" >&2
    say "warning: $policy does not pass \`floodguard check\` with this version (above): fix it before (re)starting"
fi

# --- the unit --------------------------------------------------------------------
put "$here/systemd/floodguard.service" "$unit" 0644
# The BGP speaker: enabled by the operator once the policy has an upstream block.
put "$here/systemd/floodguard-speaker.service" "$root/etc/systemd/system/floodguard-speaker.service" 0644
running=no
if [[ -z $root && -d /run/systemd/system ]]; then
    systemctl daemon-reload || die "systemctl daemon-reload failed: see journalctl -b for why."
    systemctl is-active -q floodguard && running=yes
elif [[ -z $root ]]; then
    say "systemd is not running here (no /run/systemd/system): the unit is installed for when it is"
fi

cat <<EOF

floodguard $version is installed. Next:
  1. set the interfaces (and your protected prefixes) in $policy
  2. floodguard check $policy
  3. systemctl enable --now floodguard
  4. floodguard status
The runbook: $prefix/doc/runbook.md
EOF
if [[ $running == yes ]]; then
    echo "floodguard is running the previous version: \`systemctl restart floodguard\` swaps in the new program without a gap."
fi
