#!/bin/sh
# setup.sh: point kubelet at cri-resource-manager and restart kubelet.
#
# Usage, as root:  ./setup.sh          (undo with clean.sh)
#
#   ROOT        a directory tree to change instead of this machine (nothing restarted)
#   CRI_RESMGR  the cri-resmgr command (default /usr/bin/cri-resmgr, on a tree: from PATH)
#   FORCE=1     even when the relay is not running (kubelet then has no runtime until
#               it starts)
#
# It runs `cri-resmgr kubelet enable` (docs/kubelet.md: what it edits, the backups),
# restarts kubelet when something changed, and prints the kubelet command line that
# results. Running it again changes nothing and restarts nothing.
set -eu

UNIT=cri-resource-manager.service
ROOT=${ROOT:-/}
FORCE=${FORCE:-0}

say() { printf 'setup.sh: %s\n' "$*"; }
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }

case "$ROOT" in
    /*) ;;
    *) die "ROOT must be an absolute path, not '$ROOT'" ;;
esac
host=false
[ "$ROOT" != / ] || host=true
if $host && [ "$(id -u)" != 0 ]; then
    die "run as root (it edits kubelet's configuration and restarts kubelet): sudo $0"
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
    die "$CRI_RESMGR is needed but not found: install cri-resource-manager first (install.sh)"
if $host; then
    command -v systemctl >/dev/null 2>&1 || die "systemctl is needed but not found"
    if ! systemctl is-active --quiet "$UNIT"; then
        if [ "$FORCE" = 1 ]; then
            say "warning: $UNIT is not running: kubelet has no runtime until it starts"
        else
            die "$UNIT is not running: kubelet would lose its runtime. Start it first
(install.sh, or systemctl start $UNIT), or set FORCE=1."
        fi
    fi
fi

kubelet_unit_exists() {
    [ -n "$(systemctl list-unit-files --no-legend kubelet.service 2>/dev/null)" ]
}

# The command line of the running kubelet (its main process), once it has exec'd.
kubelet_cmdline() {
    tries=0
    while [ "$tries" -lt 50 ]; do
        pid=$(systemctl show -p MainPID --value kubelet.service 2>/dev/null || echo 0)
        if [ "${pid:-0}" != 0 ] && [ -r "/proc/$pid/cmdline" ]; then
            line=$(tr '\0' ' ' < "/proc/$pid/cmdline")
            case "$line" in
                *kubelet*) printf '%s\n' "${line% }"; return 0 ;;
            esac
        fi
        sleep 0.1
        tries=$((tries + 1))
    done
    return 1
}

if ! report=$("$CRI_RESMGR" kubelet enable --root "$ROOT" 2>&1); then
    printf '%s\n' "$report" >&2
    die "kubelet was not changed (see above)"
fi
printf '%s\n' "$report"

case "$report" in
    "enable: done"*) changed=true ;;
    *) changed=false ;;
esac

if ! $host; then
    say "changed $ROOT only; nothing restarted"
    exit 0
fi

if ! kubelet_unit_exists; then
    say "no kubelet.service here: restart kubelet yourself for the change to take effect"
    exit 0
fi
if $changed; then
    systemctl daemon-reload
    say "restarting kubelet"
    systemctl restart kubelet.service
elif systemctl is-active --quiet kubelet.service; then
    say "kubelet already points at the relay: not restarted"
fi

if systemctl is-active --quiet kubelet.service && cmdline=$(kubelet_cmdline); then
    say "kubelet now runs as:"
    printf '  %s\n' "$cmdline"
else
    say "kubelet is not running (systemctl status kubelet); when it starts, it uses the relay"
fi
