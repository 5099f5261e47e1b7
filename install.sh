#!/bin/sh
# install.sh: install cri-resource-manager on this node, configure it, start it.
#
# Usage, as root:  [VARIABLE=value ...] ./install.sh
#
#   RUNNER                     runtime behind the relay: containerd (default) or crio
#   CRI_RESMGR_POLICY          resource policy (default null, which is none)
#   CRI_RESMGR_POLICY_OPTIONS  extra flags (default -dump='reset,full:.*' -dump-file=/tmp/cri.dump)
#   CRI_RESMGR_DEBUG_OPTIONS   logging flags, e.g. -log-level=debug (default none)
#   PACKAGE                    the .deb/.rpm to install (default: the newest one in dist/
#                              next to this script, else cri-resource-manager from the
#                              configured apt/dnf repository)
#   ROOT                       a directory tree to configure instead of this machine (an
#                              image with the package already installed); nothing is
#                              installed or started then
#   START_TIMEOUT              seconds to wait for the service to become active (default 90)
#
# What it writes (docs/install.md):
#   /etc/cri-resmgr/90-install.conf            [runtime] runner and [policy] name
#   /etc/default/cri-resource-manager (Debian) or /etc/sysconfig/cri-resource-manager
#   (RPM): POLICY_OPTIONS and DEBUG_OPTIONS; the rest of that file is kept.
# Running it again with the same variables changes nothing and restarts nothing.
set -eu

PKG=cri-resource-manager
UNIT=$PKG.service
HERE=$(cd "$(dirname "$0")" && pwd)
[ -r "$HERE/lib.sh" ] || {
    echo "install.sh: error: $HERE/lib.sh is missing: run install.sh from the source tree" >&2
    exit 1
}
# shellcheck source=lib.sh
. "$HERE/lib.sh"

RUNNER=${RUNNER:-containerd}
CRI_RESMGR_POLICY=${CRI_RESMGR_POLICY:-null}
CRI_RESMGR_POLICY_OPTIONS=${CRI_RESMGR_POLICY_OPTIONS-"-dump='reset,full:.*' -dump-file=/tmp/cri.dump"}
CRI_RESMGR_DEBUG_OPTIONS=${CRI_RESMGR_DEBUG_OPTIONS-}
PACKAGE=${PACKAGE:-}
ROOT=${ROOT:-/}
START_TIMEOUT=${START_TIMEOUT:-90}

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
need() {
    command -v "$1" >/dev/null 2>&1 || die "$1 is needed but not installed${2:+ ($2)}"
}

# --- checks ---------------------------------------------------------------------

case "$ROOT" in
    /*) ;;
    *) die "ROOT must be an absolute path, not '$ROOT'" ;;
esac
ROOT=${ROOT%/}
host=false
[ -n "$ROOT" ] || host=true

if $host && [ "$(id -u)" != 0 ]; then
    die "run as root (it installs a package and starts a system service): sudo $0"
fi
[ -d "$ROOT/" ] || die "ROOT=$ROOT is not a directory"

case "$RUNNER" in
    containerd|crio) ;;
    *) die "RUNNER must be containerd or crio, not '$RUNNER' (for another runtime set
[runtime] runner = custom and runtime-socket in /etc/cri-resmgr/local.conf)" ;;
esac
for value in "$CRI_RESMGR_POLICY" "$CRI_RESMGR_POLICY_OPTIONS" "$CRI_RESMGR_DEBUG_OPTIONS"; do
    case "$value" in
        *'"'*|*\\*|*'$'*|*'`'*)
            die "values may not contain \", \\, \$ or backquotes (they go into an environment file): $value" ;;
    esac
done
case "$CRI_RESMGR_POLICY" in
    *[!a-z0-9-]*|"") die "CRI_RESMGR_POLICY must be a policy name, not '$CRI_RESMGR_POLICY'" ;;
esac

if $host; then
    need systemctl "cri-resource-manager runs as a systemd service"
    if command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1; then
        format=deb
    elif command -v dnf >/dev/null 2>&1 || command -v yum >/dev/null 2>&1; then
        need rpm
        format=rpm
    else
        die "neither apt-get/dpkg nor dnf/yum found: install the package by hand"
    fi
elif [ -d "$ROOT/var/lib/dpkg" ]; then
    format=deb
else
    format=rpm
fi
# On a tree, the configuration directory in it (on the host: the service's own).
confdir_flag=
$host || confdir_flag=-config-dir=$ROOT/etc/cri-resmgr
# On a tree, this machine is not the one the configuration is for.
machine_flag=
$host || machine_flag=-files-only
if [ "$format" = deb ]; then
    envfile=/etc/default/$PKG
else
    envfile=/etc/sysconfig/$PKG
fi

# The cri-resmgr command used to check the configuration.
cri_resmgr() {
    if [ -n "${CRI_RESMGR:-}" ]; then
        "$CRI_RESMGR" "$@"
    elif $host; then
        /usr/bin/cri-resmgr "$@"
    else
        cri-resmgr "$@"
    fi
}
have_cri_resmgr() {
    if [ -n "${CRI_RESMGR:-}" ]; then
        command -v "$CRI_RESMGR" >/dev/null 2>&1
    elif $host; then
        [ -x /usr/bin/cri-resmgr ]
    else
        command -v cri-resmgr >/dev/null 2>&1
    fi
}

# --- the package ----------------------------------------------------------------

installed_version() {
    crm_installed_version "$format" "$PKG"
}

newest() {
    # The newest of the files named by the glob arguments (by version, then name).
    for f in "$@"; do
        [ -e "$f" ] && printf '%s\n' "$f"
    done | sort -V | tail -n 1
}

install_package() {
    if [ -z "$PACKAGE" ]; then
        if [ "$format" = deb ]; then
            PACKAGE=$(newest "$HERE"/dist/"${PKG}"_*.deb)
        else
            PACKAGE=$(newest "$HERE"/dist/"${PKG}"-[0-9]*.rpm)
        fi
    fi
    if [ -n "$PACKAGE" ]; then
        [ -f "$PACKAGE" ] || die "PACKAGE=$PACKAGE does not exist"
        case "$PACKAGE" in
            /*) ;;
            *) PACKAGE=$(pwd)/$PACKAGE ;;
        esac
        say "installing $PACKAGE"
        target=$PACKAGE
    else
        say "no package in $HERE/dist: installing $PKG from the configured repository"
        target=$PKG
    fi
    if [ "$format" = deb ]; then
        # Keep the admin's edits of configuration files; the debconf question about
        # kubelet gets its default (no): setup.sh does that part.
        set -- env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$target"
        if ! "$@"; then
            [ "$target" = "$PKG" ] || die "installing $target failed (see above)"
            say "retrying after apt-get update"
            apt-get update -q || die "apt-get update failed (see above)"
            "$@" || die "installing $PKG failed: is a repository that has it configured?"
        fi
    else
        if command -v dnf >/dev/null 2>&1; then
            dnf install -y "$target" || die "dnf install $target failed (see above)"
        else
            yum install -y "$target" || die "yum install $target failed (see above)"
        fi
    fi
}

# --- configuration --------------------------------------------------------------

changed=false

# replace FILE MODE: move FILE.new over FILE when they differ, else drop FILE.new.
replace() {
    if [ -f "$1" ] && cmp -s "$1.new" "$1"; then
        rm -f "$1.new"
    else
        chmod "$2" "$1.new"
        mv -f "$1.new" "$1"
        say "wrote $1"
        changed=true
    fi
}

write_conf() {
    conf=$ROOT/etc/cri-resmgr/90-install.conf
    mkdir -p "$ROOT/etc/cri-resmgr"
    cat > "$conf.new" <<EOF
# Written by install.sh from RUNNER and CRI_RESMGR_POLICY; rewritten when install.sh
# runs again. Files that sort after this one (cri-resmgr.conf, local.conf) override
# it key by key, and flags in $envfile override all files.

[runtime]
runner = $RUNNER

[policy]
name = $CRI_RESMGR_POLICY
EOF
    replace "$conf" 0644
}

# set_var FILE NAME VALUE: NAME="VALUE" in an environment file, other lines kept.
set_var() {
    awk -v name="$2" -v value="$3" '
        BEGIN { line = name "=\"" value "\"" }
        $0 ~ "^[ \t]*(export[ \t]+)?" name "=" { if (!done) print line; done = 1; next }
        { print }
        END { if (!done) print line }
    ' "$1" > "$1.tmp"
    mv -f "$1.tmp" "$1"
}

write_envfile() {
    file=$ROOT$envfile
    mkdir -p "${file%/*}"
    if [ -f "$file" ]; then
        cp -p "$file" "$file.new"
    else
        printf '# Extra flags of cri-resmgr (see cri-resource-manager.service).\n' > "$file.new"
    fi
    set_var "$file.new" POLICY_OPTIONS "$CRI_RESMGR_POLICY_OPTIONS"
    set_var "$file.new" DEBUG_OPTIONS "$CRI_RESMGR_DEBUG_OPTIONS"
    replace "$file" 0644
}

# The flags the service gets: the variables of the environment file, as systemd
# splits them (on blanks, without globbing).
service_flags() {
    (
        CONFIG_OPTIONS='' POLICY_OPTIONS='' DEBUG_OPTIONS=''
        # shellcheck source=/dev/null
        [ ! -f "$ROOT$envfile" ] || . "$ROOT$envfile"
        printf '%s %s %s\n' "$CONFIG_OPTIONS" "$POLICY_OPTIONS" "$DEBUG_OPTIONS"
    )
}

# check_config: cri-resmgr config check with the service's flags.
check_config() {
    flags=$(service_flags)
    set -f
    # shellcheck disable=SC2086 # split like systemd does
    cri_resmgr config check $flags $confdir_flag $machine_flag
    set +f
}

# effective SECTION KEY: "VALUE<TAB>SOURCE" of a key in -print-config.
effective() {
    flags=$(service_flags)
    set -f
    # shellcheck disable=SC2086
    cri_resmgr $flags $confdir_flag -print-config | awk -v section="[$1]" -v key="$2" '
        /^\[/ { in_section = ($0 == section); next }
        /^# from / { source = substr($0, 8); next }
        in_section && index($0, key " = ") == 1 { print substr($0, length(key) + 4) "\t" source; exit }
    '
    set +f
}

warn_overridden() {
    # $1 section, $2 key, $3 asked value, $4 canonical value
    line=$(effective "$1" "$2")
    value=${line%%"	"*}
    source=${line#*"	"}
    if [ "$value" != "$3" ] && [ "$value" != "$4" ]; then
        say "warning: [$1] $2 is '$value' from $source, not '$3'"
    fi
}

# --- the service ----------------------------------------------------------------

wait_active() {
    waited=0
    while :; do
        state=$(systemctl is-active "$UNIT" || true)
        case "$state" in
            active) return 0 ;;
            activating|reloading|deactivating) ;;
            *) [ "$waited" -ge 2 ] && return 1 ;;  # failed/inactive, after a restart delay
        esac
        [ "$waited" -lt "$START_TIMEOUT" ] || return 1
        sleep 1
        waited=$((waited + 1))
    done
}

start_service() {
    systemctl enable --quiet "$UNIT"
    if systemctl is-active --quiet "$UNIT" && ! $changed; then
        say "$UNIT is running and nothing changed: not restarted"
    else
        say "restarting $UNIT"
        systemctl --no-block restart "$UNIT"
    fi
    runtime=$(effective runtime runtime-socket)
    runtime=${runtime%%"	"*}
    runtime=${runtime#unix://}
    if [ ! -S "$runtime" ]; then
        die "$UNIT is enabled but waits for the runtime: $runtime does not exist. Start
the runtime (RUNNER=$RUNNER), or run install.sh again with the right RUNNER."
    fi
    if ! wait_active; then
        systemctl --no-pager status "$UNIT" >&2 || true
        die "$UNIT did not become active (journalctl -u $UNIT shows why)"
    fi
}

report() {
    socket=$(effective relay socket)
    socket=${socket%%"	"*}
    socket=${socket#unix://}
    cat <<EOF

cri-resource-manager $(installed_version) is running. Check it with:
  systemctl status $UNIT
  journalctl -u $UNIT
  ls -l $socket     (a socket, srw-rw----)
  cri-resmgr -print-config         (the configuration and where each value is from)
EOF
    if command -v crictl >/dev/null 2>&1; then
        printf '  crictl --runtime-endpoint unix://%s version\n' "$socket"
    fi
    cat <<EOF
Kubelet does not use it until you run setup.sh (clean.sh undoes both).
EOF
}

# --- main -----------------------------------------------------------------------

if $host; then
    before=$(installed_version)
    install_package
    after=$(installed_version)
    [ -n "$after" ] || die "$PKG is not installed after the installation step"
    if [ "$before" != "$after" ]; then
        changed=true
    fi
else
    [ -e "$ROOT/usr/bin/cri-resmgr" ] || [ -L "$ROOT/usr/bin/cri-resmgr" ] ||
        die "$ROOT/usr/bin/cri-resmgr does not exist: install the package into the tree first"
fi

if have_cri_resmgr; then
    # Check the requested settings, as flags, before anything is written.
    set -f
    # shellcheck disable=SC2086 # split like systemd does
    cri_resmgr config check -runner="$RUNNER" -policy="$CRI_RESMGR_POLICY" \
        $CRI_RESMGR_POLICY_OPTIONS $CRI_RESMGR_DEBUG_OPTIONS $confdir_flag $machine_flag >/dev/null ||
        die "the settings above are not valid; nothing was written"
    set +f
else
    $host && die "/usr/bin/cri-resmgr is missing although $PKG is installed"
    say "warning: no cri-resmgr command here (set CRI_RESMGR): the configuration is not checked"
fi

write_conf
write_envfile

if have_cri_resmgr; then
    check_config >/dev/null ||
        die "the configuration in $ROOT/etc/cri-resmgr is not valid (see above)"
    warn_overridden runtime runner "$RUNNER" "$RUNNER"
    canonical=$CRI_RESMGR_POLICY
    [ "$canonical" != null ] || canonical=none
    [ "$canonical" != memtier ] || canonical=topology-aware
    warn_overridden policy name "$CRI_RESMGR_POLICY" "$canonical"
fi

if $host; then
    start_service
    report
else
    if command -v systemctl >/dev/null 2>&1; then
        systemctl --root="$ROOT" enable --quiet "$UNIT"
    fi
    say "configured $ROOT; $UNIT starts when a system booted from it starts"
fi
