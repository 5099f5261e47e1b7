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
# which points kubelet at the relay socket of /etc/cri-resmgr ([relay] socket),
# restarts kubelet when something changed and kubelet runs, and prints the kubelet
# command line that results. Running it again changes nothing and restarts nothing.
# The Debian package's postinst runs it when debconf's answer is yes. The functions
# shared with clean.sh and the packages are in lib.sh (next to this script).
set -eu

HERE=$(dirname "$(readlink -f "$0")")
# shellcheck source=lib.sh
. "$HERE/lib.sh"
CRM_NAME=setup.sh
FORCE=${FORCE:-0}

crm_script_init "it edits kubelet's configuration and restarts kubelet" \
    ": install cri-resource-manager first (install.sh)"
if $crm_host; then
    # Type=notify: active means the relay socket is open and the runtime answered. A
    # socket file alone proves nothing: a killed relay leaves it behind.
    if ! systemctl is-active --quiet "$CRM_UNIT"; then
        if [ "$FORCE" = 1 ]; then
            crm_warn "$CRM_UNIT is not running: kubelet has no runtime until it starts"
        else
            crm_die "$CRM_UNIT is not running: kubelet would lose its runtime. Start it first
(install.sh, or systemctl start $CRM_UNIT), or set FORCE=1."
        fi
    fi
fi

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
    crm_die "kubelet was not changed (see above)"
fi
printf '%s\n' "$report"

case "$report" in
    "enable: done"*) changed=true ;;
    *) changed=false ;;
esac

if ! $crm_host; then
    crm_say "changed $ROOT only; nothing restarted"
    exit 0
fi

if ! crm_systemd_running || ! crm_kubelet_unit_exists; then
    crm_say "no kubelet.service here, or systemd is not running: restart kubelet yourself" \
        "for the change to take effect"
    exit 0
fi
if $changed; then
    crm_restart_kubelet || crm_die "restarting kubelet failed (systemctl status kubelet)"
elif systemctl is-active --quiet kubelet.service; then
    crm_say "kubelet already points at the relay: not restarted"
fi

if systemctl is-active --quiet kubelet.service && cmdline=$(kubelet_cmdline); then
    crm_say "kubelet now runs as:"
    printf '  %s\n' "$cmdline"
else
    crm_say "kubelet is not running (systemctl status kubelet); when it starts, it uses the relay"
fi
