# shellcheck shell=sh
# lib.sh: the shell shared by setup.sh, clean.sh, install.sh, the Debian maintainer
# scripts and the RPM scriptlets, so that pointing kubelet at the relay and back is
# one code path. Installed as /usr/share/cri-resource-manager/lib.sh; the scripts in
# the source tree read the copy next to them. POSIX sh (dash), safe under `set -eu`.
# Names are prefixed crm_ (functions, variables) so that they do not clash with the
# caller's. docs/install.md and docs/packaging.md describe the behaviour.
#
# The caller sets, before calling the kubelet functions:
#   CRM_NAME    the message prefix (setup.sh, clean.sh, cri-resource-manager)
#   ROOT        / or a directory tree (on a tree nothing is restarted or stopped)
#   CRI_RESMGR  the cri-resmgr command
#   crm_host    true when ROOT is / (crm_script_init and crm_package_init set all four)

CRM_UNIT=cri-resource-manager.service
CRM_BACKUP_DIR=/var/lib/cri-resmgr/kubelet-backup
CRM_NAME=${CRM_NAME:-cri-resource-manager}

crm_say() { printf '%s: %s\n' "$CRM_NAME" "$*"; }
crm_warn() { printf '%s: warning: %s\n' "$CRM_NAME" "$*" >&2; }
crm_die() { printf '%s: error: %s\n' "$CRM_NAME" "$*" >&2; exit 1; }

# crm_script_init WHY HINT: the checks of setup.sh and clean.sh. WHY says what root is
# needed for, HINT is added to "CRI_RESMGR is needed but not found".
crm_script_init() {
    ROOT=${ROOT:-/}
    case "$ROOT" in
        /*) ;;
        *) crm_die "ROOT must be an absolute path, not '$ROOT'" ;;
    esac
    crm_host=false
    [ "$ROOT" != / ] || crm_host=true
    if $crm_host && [ "$(id -u)" != 0 ]; then
        crm_die "run as root ($1): sudo $0"
    fi
    [ -d "$ROOT" ] || crm_die "ROOT=$ROOT is not a directory"
    if [ -z "${CRI_RESMGR:-}" ]; then
        if $crm_host; then
            CRI_RESMGR=/usr/bin/cri-resmgr
        else
            CRI_RESMGR=cri-resmgr
        fi
    fi
    command -v "$CRI_RESMGR" >/dev/null 2>&1 ||
        crm_die "$CRI_RESMGR is needed but not found$2"
    if $crm_host; then
        command -v systemctl >/dev/null 2>&1 || crm_die "systemctl is needed but not found"
    fi
}

# crm_package_init: the settings of the package's maintainer scripts. Never from the
# environment: an exported ROOT must not send `apt remove` to another tree.
crm_package_init() {
    CRM_NAME=cri-resource-manager
    ROOT=/
    crm_host=true
    CRI_RESMGR=/usr/bin/cri-resmgr
}

# --- systemd ------------------------------------------------------------------------

crm_systemd_running() { [ -d /run/systemd/system ]; }

crm_kubelet_unit_exists() {
    [ -n "$(systemctl list-unit-files --no-legend kubelet.service 2>/dev/null)" ]
}

# crm_restart_kubelet: daemon-reload (a unit file may have changed), then restart
# kubelet if it runs: a stopped kubelet is not started (it reads the new setting when
# it starts). In a dpkg maintainer script (postinst calling setup.sh, prerm) through
# deb-systemd-invoke, which honours policy-rc.d (image builds). Returns non-zero when
# systemctl fails; the caller decides whether that is fatal.
crm_restart_kubelet() {
    systemctl daemon-reload || return 1
    if ! systemctl is-active --quiet kubelet.service; then
        crm_say "kubelet is not running: not restarted (it uses the new setting when it starts)"
        return 0
    fi
    crm_say "restarting kubelet"
    if [ -n "${DPKG_MAINTSCRIPT_NAME:-}" ] && command -v deb-systemd-invoke >/dev/null 2>&1; then
        deb-systemd-invoke try-restart kubelet.service || return 1
    else
        systemctl try-restart kubelet.service || return 1
    fi
}

# crm_kubelet_on_relay: the running kubelet was started with the relay socket on its
# command line (for example after `cri-resmgr kubelet disable` by hand without a
# restart). The socket is the configured one (`cri-resmgr kubelet endpoint`).
crm_kubelet_on_relay() {
    crm_pid=$(systemctl show -p MainPID --value kubelet.service 2>/dev/null || echo 0)
    [ "${crm_pid:-0}" != 0 ] && [ -r "/proc/$crm_pid/cmdline" ] || return 1
    crm_endpoint=$("$CRI_RESMGR" kubelet endpoint --root "$ROOT" 2>/dev/null) || return 1
    crm_socket=${crm_endpoint#unix://}
    crm_socket=${crm_socket#/var}  # /var/run/x.sock and /run/x.sock are one socket
    tr '\0' ' ' < "/proc/$crm_pid/cmdline" | grep -qF -- "$crm_socket"
}

# --- kubelet back at the runtime ------------------------------------------------------

# crm_kubelet_back MODE FORCE: point kubelet back at the runtime before the relay goes
# away: `cri-resmgr kubelet disable` (restores what enable saved), then `cri-resmgr
# kubelet status` must say that kubelet does not point at the relay (exit 3), then
# kubelet is restarted if something changed or it still runs on the relay.
#   MODE   clean (clean.sh) or remove (prerm, %preun: the messages name
#          CRI_RESMGR_FORCE_REMOVE)
#   FORCE  1: go on with a warning where it would refuse
# Refuses (exits 1, nothing restarted) when kubelet still points at the relay, or when
# status fails (exit other than 0 and 3: kubelet's files unreadable, cri-resmgr
# broken...): going on could take the node down. Otherwise returns 0, and sets
# crm_incomplete=true when disable could not restore every file although kubelet no
# longer points at the relay.
crm_kubelet_back() {
    crm_mode=$1
    crm_force=${2:-0}
    crm_incomplete=false
    crm_changed=false
    crm_rc=0
    crm_report=$("$CRI_RESMGR" kubelet disable --root "$ROOT" 2>&1) || crm_rc=$?
    case "$crm_report" in
        "disable: done"*) crm_changed=true ;;
    esac
    [ "$crm_rc" = 0 ] || crm_incomplete=true
    if [ "$crm_mode" = remove ] && $crm_changed; then
        crm_say "pointing kubelet back at the runtime first"
    fi
    if [ "$crm_rc" != 0 ]; then
        printf '%s\n' "$crm_report" >&2
    elif [ "$crm_mode" = clean ] || $crm_changed; then
        printf '%s\n' "$crm_report"
    fi

    crm_rc=0
    crm_status=$("$CRI_RESMGR" kubelet status --root "$ROOT" 2>&1) || crm_rc=$?
    case "$crm_rc" in
        3) ;;
        0)
            printf '%s\n' "$crm_status" >&2
            if $crm_incomplete; then
                crm_refuse "kubelet could not be restored completely and still points at the relay (see above)"
            else
                crm_refuse "kubelet still points at the relay through a setting \`cri-resmgr kubelet enable\` did not make (listed above): change it by hand"
            fi
            ;;
        *)
            printf '%s\n' "$crm_status" >&2
            crm_refuse "cannot tell whether kubelet uses the relay: \`cri-resmgr kubelet status\` failed (exit $crm_rc, see above)"
            ;;
    esac
    if $crm_incomplete && [ "$crm_mode" = remove ]; then
        crm_warn "kubelet no longer points at the relay, but some files could not be" \
            "restored (see above); the saved copies stay in $CRM_BACKUP_DIR"
    fi

    if $crm_host && crm_systemd_running && crm_kubelet_unit_exists; then
        if $crm_changed || crm_kubelet_on_relay; then
            crm_restart_kubelet ||
                crm_warn "restarting kubelet failed (systemctl status kubelet)"
        fi
    fi
}

# crm_refuse MESSAGE: stop (exit 1), or with FORCE go on with a warning.
crm_refuse() {
    if [ "$crm_mode" = remove ]; then
        if [ "$crm_force" = 1 ]; then
            crm_warn "$1; removing anyway (CRI_RESMGR_FORCE_REMOVE=1)"
            if [ -f "$ROOT$CRM_BACKUP_DIR/manifest.json" ]; then
                crm_warn "the kubelet files saved by \`cri-resmgr kubelet enable\` stay in" \
                    "$CRM_BACKUP_DIR (manifest.json lists each file and its saved copy)"
            fi
            return 0
        fi
        crm_die "$1.
Removing the package now could take this node down: kubelet would lose its runtime.
Point kubelet back at the runtime first (\`cri-resmgr kubelet status\` shows where it
is set; \`cri-resmgr kubelet disable --force\` puts the saved files back), or remove
anyway with CRI_RESMGR_FORCE_REMOVE=1 in the environment of the removal."
    fi
    crm_die "$1; $CRM_UNIT left running"
}

# --- packages -------------------------------------------------------------------------

# crm_installed_version FORMAT PKG: the installed version of PKG (deb or rpm), or
# nothing. `rpm -q --qf` prints "package PKG is not installed" on stdout.
crm_installed_version() {
    if [ "$1" = deb ]; then
        dpkg-query -W -f='${Status} ${Version}' "$2" 2>/dev/null |
            sed -n 's/^install ok installed //p'
    elif rpm -q "$2" >/dev/null 2>&1; then
        rpm -q --qf '%{VERSION}-%{RELEASE}' "$2" 2>/dev/null || true
    fi
}

# crm_relink_venv VENV: the interpreter the bundled virtualenv is tied to was upgraded
# (dpkg trigger): point the venv's broken interpreter links at it again, record its
# version in pyvenv.cfg, and warn when the program no longer loads. The interpreter
# is pyvenv.cfg's `executable =` (only Python >= 3.11 writes it), else `home =` with
# the major.minor of `version =`, else where the venv's python3 link leads.
crm_relink_venv() {
    crm_venv=$1
    crm_cfg=$crm_venv/pyvenv.cfg
    crm_python=$(sed -n 's/^executable *= *//p' "$crm_cfg")
    if [ -z "$crm_python" ] || [ ! -x "$crm_python" ]; then
        crm_home=$(sed -n 's/^home *= *//p' "$crm_cfg")
        crm_ver=$(sed -n 's/^version *= *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' "$crm_cfg")
        if [ -n "$crm_home" ] && [ -n "$crm_ver" ] && [ -x "$crm_home/python$crm_ver" ]; then
            crm_python=$crm_home/python$crm_ver
        fi
    fi
    if [ -z "$crm_python" ] || [ ! -x "$crm_python" ]; then
        # python3 -> python3.X -> /usr/bin/python3.X: follow the links inside the venv
        # to the first one that leaves it (which may be broken now).
        crm_link=$crm_venv/bin/python3
        crm_n=0
        while [ -L "$crm_link" ] && [ "$crm_n" -lt 8 ]; do
            crm_target=$(readlink "$crm_link")
            case "$crm_target" in
                /*) crm_link=$crm_target; break ;;
                *) crm_link=$crm_venv/bin/$crm_target ;;
            esac
            crm_n=$((crm_n + 1))
        done
        case "$crm_link" in
            "$crm_venv"/*) ;;
            *) crm_python=$crm_link ;;
        esac
    fi
    if [ -z "$crm_python" ] || [ ! -x "$crm_python" ]; then
        crm_warn "the Python interpreter of $crm_venv (${crm_python:-unknown}) is missing;" \
            "reinstall cri-resource-manager"
        return 0
    fi
    crm_pyver=${crm_python##*/}
    for crm_name in "$crm_pyver" python3 python; do
        crm_path=$crm_venv/bin/$crm_name
        if [ -L "$crm_path" ] && [ ! -e "$crm_path" ]; then
            if [ "$crm_name" = "$crm_pyver" ]; then
                ln -sfn "$crm_python" "$crm_path"
            else
                ln -sfn "$crm_pyver" "$crm_path"
            fi
        fi
    done
    crm_version=$("$crm_python" -c 'import platform; print(platform.python_version())')
    sed -i "s/^version *= .*/version = $crm_version/" "$crm_cfg"
    if ! "$crm_venv/bin/python" -c 'import cri_resmgr.cli, grpc, yaml' >/dev/null 2>&1; then
        crm_warn "the bundled virtualenv no longer loads with $crm_python $crm_version;" \
            "reinstall cri-resource-manager"
    fi
}
