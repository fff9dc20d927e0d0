#!/usr/bin/env bash
# `make uninstall` (PURGE=1 also removes the policy, saved state and group).
#
# Order matters: the service is stopped first (a running agent would attach
# again), then `floodguard detach` removes the XDP program from every
# interface and its pins — stopping alone leaves protection in place, by
# design. Only when that worked are the program's files removed, so a failed
# detach never leaves a program attached with no tool left to remove it.
#
# FLOODGUARD_ROOT=/some/dir works on a tree made by install.sh with the same
# variable (for tests): no systemctl and no detach on this host.
set -euo pipefail

root=${FLOODGUARD_ROOT:-}
root=${root%/}
prefix=$root/opt/floodguard
venv=$prefix/venv
unit=$root/etc/systemd/system/floodguard.service
etc=$root/etc/floodguard
state=$root/var/lib/floodguard
sysusers=$root/etc/sysusers.d/floodguard.conf
group=floodguard
purge=${PURGE:-0}

die() { printf 'floodguard uninstall: %s\n' "$*" >&2; exit 1; }
say() { printf 'floodguard uninstall: %s\n' "$*"; }

[[ $(id -u) -eq 0 ]] || die "must run as root (it stops the service and removes /opt/floodguard): re-run with sudo."

speaker_unit=$root/etc/systemd/system/floodguard-speaker.service
if [[ -z $root ]]; then
    # The speaker first: stopping it ends the BGP sessions, so the peers withdraw every announcement.
    if [[ -d /run/systemd/system ]] && systemctl cat floodguard-speaker.service >/dev/null 2>&1; then
        systemctl disable --now floodguard-speaker.service >/dev/null 2>&1 \
            || die "systemctl disable --now floodguard-speaker failed: see systemctl status floodguard-speaker."
        say "stopped and disabled floodguard-speaker.service"
    fi
    if [[ -d /run/systemd/system ]] && systemctl cat floodguard.service >/dev/null 2>&1; then
        systemctl disable --now floodguard.service >/dev/null 2>&1 \
            || die "systemctl disable --now floodguard failed: see systemctl status floodguard."
        say "stopped and disabled floodguard.service"
    fi
    if [[ -x $venv/bin/floodguard ]]; then
        # No -c: without a daemon, detach looks at every interface, so one
        # dropped from the policy since the start is not forgotten.
        "$venv/bin/floodguard" detach \
            || die "floodguard detach failed (above), nothing was removed: fix that, or remove the program with \`ip link set dev IFACE xdp off\` and the pins with \`rm -r /sys/fs/bpf/floodguard\`, then run make uninstall again."
    elif [[ -e /sys/fs/bpf/floodguard ]]; then
        say "warning: floodguard is not installed but pins remain in /sys/fs/bpf/floodguard; remove them with \`rm -r /sys/fs/bpf/floodguard\` after \`ip link set dev IFACE xdp off\`"
    fi
fi

if [[ -e $speaker_unit ]]; then
    rm -f "$speaker_unit"
    say "removed $speaker_unit"
fi
if [[ -e $unit ]]; then
    rm -f "$unit"
    say "removed $unit"
    if [[ -z $root && -d /run/systemd/system ]]; then
        systemctl daemon-reload || die "systemctl daemon-reload failed: see journalctl -b for why."
    fi
fi
if [[ -e $prefix ]]; then
    rm -rf "$prefix"
    say "removed $prefix (the venv and documentation)"
fi

if [[ $purge == 1 ]]; then
    for d in "$etc" "$state"; do
        if [[ -e $d ]]; then
            rm -rf "$d"
            say "removed $d"
        fi
    done
    rm -f "$sysusers"
    if [[ -z $root ]] && getent group "$group" >/dev/null; then
        groupdel "$group" || die "groupdel $group failed: a user may still have it as primary group."
        say "removed group $group"
    elif [[ -n $root ]] && grep -qs "^$group:" "$root/etc/group"; then
        for f in "$root/etc/group" "$root/etc/gshadow"; do
            [[ -f $f ]] && sed -i "/^$group:/d" "$f"
        done
        say "removed group $group"
    fi
else
    kept=()
    for d in "$etc" "$state"; do [[ -e $d ]] && kept+=("$d"); done
    if ((${#kept[@]})); then
        say "kept ${kept[*]} and group $group (make uninstall PURGE=1 removes them)"
    fi
fi
say "floodguard is uninstalled"
