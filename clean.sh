#!/bin/sh
# clean.sh: point kubelet back at the runtime, restart kubelet, then stop
# cri-resource-manager. Undoes setup.sh (and the running part of install.sh).
#
# Usage, as root:  ./clean.sh
#
#   ROOT        a directory tree to change instead of this machine (nothing restarted
#               or stopped)
#   CRI_RESMGR  the cri-resmgr command (default /usr/bin/cri-resmgr, on a tree: from PATH)
#
# It runs `cri-resmgr kubelet disable`, which puts back the bytes `enable` saved
# (docs/kubelet.md). The service is stopped only once kubelet no longer points at it;
# it stays enabled (systemctl disable cri-resource-manager, or remove the package).
# Running it again changes nothing.
set -eu

UNIT=cri-resource-manager.service
ROOT=${ROOT:-/}

say() { printf 'clean.sh: %s\n' "$*"; }
die() { printf 'clean.sh: error: %s\n' "$*" >&2; exit 1; }

case "$ROOT" in
    /*) ;;
    *) die "ROOT must be an absolute path, not '$ROOT'" ;;
esac
host=false
[ "$ROOT" != / ] || host=true
if $host && [ "$(id -u)" != 0 ]; then
    die "run as root (it edits kubelet's configuration and restarts services): sudo $0"
fi
[ -d "$ROOT" ] || die "ROOT=$ROOT is not a directory"

if [ -n "${CRI_RESMGR:-}" ]; then
    :
elif $host; then
    CRI_RESMGR=/usr/bin/cri-resmgr
else
    CRI_RESMGR=cri-resmgr
fi
command -v "$CRI_RESMGR" >/dev/null 2>&1 ||
    die "$CRI_RESMGR is needed but not found (removing the package already points kubelet back)"
if $host; then
    command -v systemctl >/dev/null 2>&1 || die "systemctl is needed but not found"
fi

if ! report=$("$CRI_RESMGR" kubelet disable --root "$ROOT" 2>&1); then
    printf '%s\n' "$report" >&2
    die "kubelet could not be restored completely (see above); $UNIT left running"
fi
printf '%s\n' "$report"
case "$report" in
    "disable: done"*) changed=true ;;
    *) changed=false ;;
esac

rc=0
status=$("$CRI_RESMGR" kubelet status --root "$ROOT" 2>&1) || rc=$?
case "$rc" in
    3) ;;
    0)
        printf '%s\n' "$status" >&2
        die "kubelet still points at the relay through a setting setup.sh did not make
(listed above): change it by hand; $UNIT left running"
        ;;
    *)
        printf '%s\n' "$status" >&2
        die "cannot read kubelet's configuration (see above); $UNIT left running"
        ;;
esac

if ! $host; then
    say "changed $ROOT only; nothing restarted or stopped"
    exit 0
fi

# A kubelet started while its files named the relay still uses it (e.g. after a
# `cri-resmgr kubelet disable` by hand without a restart): restart that one too.
running_on_relay() {
    pid=$(systemctl show -p MainPID --value kubelet.service 2>/dev/null || echo 0)
    [ "${pid:-0}" != 0 ] && [ -r "/proc/$pid/cmdline" ] &&
        tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q 'cri-resmgr/cri-resmgr\.sock'
}

if [ -n "$(systemctl list-unit-files --no-legend kubelet.service 2>/dev/null)" ]; then
    if $changed || running_on_relay; then
        systemctl daemon-reload
        say "restarting kubelet"
        systemctl restart kubelet.service
    fi
fi

if systemctl is-active --quiet "$UNIT"; then
    say "stopping $UNIT"
    systemctl stop "$UNIT"
else
    say "$UNIT is not running"
fi
say "done: kubelet uses the runtime directly; $UNIT is stopped (still enabled: it starts"
say "again at boot; systemctl disable $UNIT or remove the package to keep it off)"
