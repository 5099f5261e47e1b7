"""The .deb on a real systemd: a Debian 12 root booted with systemd-nspawn.

One machine for the module; the tests run in order and each builds on the state the
previous one left (installed, configured, kubelet pointed, removed, purged). A fake
kubelet (a shell script under a kubeadm-style kubelet.service) records every start:
its arguments and whether the relay socket existed at that moment.
"""

from __future__ import annotations

import time
from typing import Dict

import pytest
from node import (
    CONTAINERD,
    RELAY,
    SOCKET,
    UNIT,
    apt,
    cri_version,
    kubelet_files,
    kubelet_log,
    kubelet_starts,
    main_pid,
    setup_kubelet,
    wait_for,
)
from nspawn import Machine


@pytest.fixture(scope="module")
def m(machine_factory, deb_package) -> Machine:  # type: ignore[no-untyped-def]
    machine = machine_factory("deb")
    assert machine.run("systemctl is-active containerd").stdout.strip() == "active"
    setup_kubelet(machine)
    return machine


@pytest.fixture(scope="module")
def deb_inside(deb_package) -> str:  # type: ignore[no-untyped-def]
    return f"/src/dist/{deb_package.name}"


@pytest.fixture(scope="module")
def kubelet_before(m: Machine) -> Dict[str, str]:
    return kubelet_files(m)


@pytest.mark.timeout(900)
def test_install(m: Machine, deb_inside: str, kubelet_before: Dict[str, str], timings) -> None:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    out = apt(m, "install", deb_inside)
    timings["apt install in the machine"] = time.monotonic() - start
    assert m.run(f"systemctl is-active {UNIT}").stdout.strip() == "active"
    assert m.run(f"systemctl is-enabled {UNIT}").stdout.strip() == "enabled"
    # Noninteractive: the debconf question says no, kubelet is left alone; a pointer.
    assert kubelet_files(m) == kubelet_before
    assert kubelet_starts(m) == 1
    assert "cri-resmgr kubelet enable" in out and "setup.sh" in out


def test_socket_and_directories(m: Machine) -> None:
    stat = m.run(f"stat -c '%F %a %U %G' {SOCKET} /var/lib/cri-resmgr /run/cri-resmgr").stdout
    assert stat.splitlines() == [
        "socket 660 root root",
        "directory 700 root root",
        "directory 755 root root",
    ]


def test_cri_call_through_socket(m: Machine) -> None:
    assert cri_version(m).startswith("containerd ")


def test_unit_verifies(m: Machine) -> None:
    # --man=no: the minimal root has no man(1) to look the man page up with.
    done = m.run(f"systemd-analyze verify --man=no {UNIT}", check=False)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_config_change_and_restart(m: Machine) -> None:
    """A changed /etc/cri-resmgr takes effect on `systemctl restart`."""
    m.write("/etc/cri-resmgr/99-test.conf", "[relay]\nsocket = /run/cri-resmgr/test.sock\n")
    m.run(f"systemctl restart {UNIT}")
    assert (
        m.run("test -S /run/cri-resmgr/test.sock && test ! -e " + SOCKET, check=False).returncode
        == 0
    )
    assert cri_version(m, "/run/cri-resmgr/test.sock").startswith("containerd ")
    m.run(f"rm /etc/cri-resmgr/99-test.conf && systemctl restart {UNIT}")
    assert cri_version(m).startswith("containerd ")


def test_reload(m: Machine) -> None:
    """`systemctl reload` (SIGHUP) applies a live change without a restart."""
    pid = main_pid(m)
    m.write("/etc/cri-resmgr/99-test.conf", "[log]\nlevel = debug\n")
    m.run(f"systemctl reload {UNIT}")
    wait_for(lambda: "reload: 1 live changes applied" in m.journal(UNIT), "the reload")
    assert main_pid(m) == pid
    m.run(f"rm /etc/cri-resmgr/99-test.conf && systemctl reload {UNIT}")


DUMP_OPTIONS = (
    "sed -i \"s|^POLICY_OPTIONS=.*|POLICY_OPTIONS=\\\"-dump='reset,full:.*' "
    '-dump-file=/tmp/cri.dump\\"|" /etc/default/cri-resource-manager'
)


def test_environment_file_flags(m: Machine) -> None:
    """Quoted flags from /etc/default reach the program; the dump file is written, 0600."""
    default = m.read("/etc/default/cri-resource-manager")
    m.run(DUMP_OPTIONS)
    m.run(f"systemctl restart {UNIT}")
    cri_version(m)
    wait_for(lambda: "Version" in m.run("cat /tmp/cri.dump", check=False).stdout, "the dump")
    assert m.run("stat -c %a /tmp/cri.dump").stdout.strip() == "600"
    m.write("/etc/default/cri-resource-manager", default)
    m.run(f"systemctl restart {UNIT} && rm -f /tmp/cri.dump")


def test_logrotate_rotates_the_dump(m: Machine) -> None:
    """The shipped logrotate file rotates /tmp/cri.dump (in /tmp: `su root root`), and
    the reload in postrotate makes the service write a new file without a restart."""
    default = m.read("/etc/default/cri-resource-manager")
    m.run(DUMP_OPTIONS)
    m.run(f"systemctl restart {UNIT}")
    cri_version(m)
    wait_for(lambda: "Version" in m.run("cat /tmp/cri.dump", check=False).stdout, "the dump")
    pid = main_pid(m)
    rotate = "logrotate -v -f -s /tmp/logrotate.state /etc/logrotate.d/cri-resource-manager 2>&1"
    out = m.run(rotate).stdout
    assert "error:" not in out and "rotating log /tmp/cri.dump" in out, out
    assert m.run("test -s /tmp/cri.dump.1", check=False).returncode == 0, out
    cri_version(m)
    wait_for(
        lambda: "Version" in m.run("cat /tmp/cri.dump", check=False).stdout, "the reopened dump"
    )
    assert m.run("stat -c %a /tmp/cri.dump").stdout.strip() == "600"
    assert main_pid(m) == pid  # a reload, not a restart
    m.run(rotate)
    listing = m.run("ls /tmp").stdout.split()
    assert {"cri.dump.1", "cri.dump.2.gz"} <= set(listing), listing  # delaycompress
    m.write("/etc/default/cri-resource-manager", default)
    m.run(f"systemctl restart {UNIT} && rm -f /tmp/cri.dump* /tmp/logrotate.state")


def test_policies_run_under_the_hardening(m: Machine) -> None:
    """Each policy reads the topology and writes its state with the unit's sandbox."""
    for policy in ("static", "topology-aware", "balloons"):
        m.write("/etc/cri-resmgr/99-test.conf", f"[policy]\nname = {policy}\n")
        m.run(f"systemctl restart {UNIT}")
        assert cri_version(m).startswith("containerd "), policy
        assert m.run("cri-resmgr status", check=False).returncode == 0, m.journal(UNIT)[-3000:]
    m.run(f"rm /etc/cri-resmgr/99-test.conf && systemctl restart {UNIT}")
    assert m.run("test -s /var/lib/cri-resmgr/state.json", check=False).returncode == 0


def test_setup_and_clean(m: Machine, kubelet_before: Dict[str, str]) -> None:
    starts = kubelet_starts(m)
    out = m.run("/usr/share/cri-resource-manager/setup.sh").stdout
    assert "enable: done" in out and "restarting kubelet" in out
    assert RELAY in out.split("kubelet now runs as:")[1]
    assert kubelet_starts(m) == starts + 1
    assert "start relay=up args=" in kubelet_log(m).splitlines()[-1]
    assert f"--container-runtime-endpoint={RELAY}" in kubelet_log(m).splitlines()[-1]
    assert m.run("cri-resmgr kubelet status", check=False).returncode == 0

    again = m.run("/usr/share/cri-resource-manager/setup.sh").stdout
    assert "not restarted" in again and kubelet_starts(m) == starts + 1

    out = m.run("/src/clean.sh").stdout
    assert "disable: done" in out and "stopping " + UNIT in out
    assert kubelet_files(m) == kubelet_before
    assert f"--container-runtime-endpoint={CONTAINERD}" in kubelet_log(m).splitlines()[-1]
    assert m.run(f"systemctl is-active {UNIT}", check=False).stdout.strip() == "inactive"

    again = m.run("/src/clean.sh").stdout
    assert "not running" in again and kubelet_starts(m) == starts + 2
    assert kubelet_files(m) == kubelet_before


def test_setup_uses_the_configured_socket(m: Machine, kubelet_before: Dict[str, str]) -> None:
    """With [relay] socket set, setup.sh points kubelet at that socket (not the
    default path) and clean.sh recognizes it."""
    m.write("/etc/cri-resmgr/99-test.conf", "[relay]\nsocket = /run/cri-resmgr/test.sock\n")
    m.run(f"systemctl restart {UNIT}")
    m.run("/usr/share/cri-resource-manager/setup.sh")
    last = kubelet_log(m).splitlines()[-1]
    assert "--container-runtime-endpoint=unix:///run/cri-resmgr/test.sock " in last, last
    assert m.run("cri-resmgr kubelet status", check=False).returncode == 0
    out = m.run("/usr/share/cri-resource-manager/clean.sh").stdout
    assert "disable: done" in out and "restarting kubelet" in out
    assert kubelet_files(m) == kubelet_before
    assert f"={CONTAINERD}" in kubelet_log(m).splitlines()[-1]
    m.run("rm /etc/cri-resmgr/99-test.conf")


def test_debconf_yes_with_a_dead_relay_leaves_kubelet(
    m: Machine, kubelet_before: Dict[str, str]
) -> None:
    """A killed relay leaves its socket file. postinst must not take that for a running
    service: with debconf's yes it runs setup.sh, which checks `systemctl is-active`."""
    m.run(f"systemctl start {UNIT}")
    # policy-rc.d forbids starts (an image build): postinst's restart does not happen.
    m.write("/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", "0755")
    m.run(f"systemctl kill --signal=SIGKILL {UNIT}; systemctl stop {UNIT}", check=False)
    assert m.run(f"test -S {SOCKET}", check=False).returncode == 0  # the stale socket
    assert m.run(f"systemctl is-active {UNIT}", check=False).stdout.strip() != "active"
    starts = kubelet_starts(m)
    m.run(
        "debconf-set-selections",
        input="cri-resource-manager cri-resource-manager/kubelet-enable boolean true\n",
    )
    done = m.run(
        "dpkg-reconfigure -f noninteractive cri-resource-manager 2>&1",
        check=False,
        env={"DEBIAN_FRONTEND": "noninteractive"},
    )
    m.run("rm /usr/sbin/policy-rc.d")
    assert done.returncode == 0, done.stdout
    assert "is not running" in done.stdout and "kubelet NOT changed" in done.stdout, done.stdout
    assert kubelet_files(m) == kubelet_before
    assert kubelet_starts(m) == starts
    assert "kubelet-enable: false" in m.run("debconf-show cri-resource-manager").stdout
    m.run(f"systemctl start {UNIT}")
    assert cri_version(m).startswith("containerd ")


def test_upgrade_keeps_kubelet(m: Machine, deb_inside: str) -> None:
    """An upgrade (here: a reinstall) restarts the relay and leaves kubelet alone."""
    m.run(f"systemctl start {UNIT}")
    m.run("/usr/share/cri-resource-manager/setup.sh")
    starts, pid = kubelet_starts(m), main_pid(m)
    out = apt(m, "install", "--reinstall", deb_inside)
    assert "pointing it back" not in out and "kubelet does not use it" not in out
    assert m.run(f"systemctl is-active {UNIT}").stdout.strip() == "active"
    assert main_pid(m) != pid
    assert kubelet_starts(m) == starts
    assert m.run("cri-resmgr kubelet status", check=False).returncode == 0


def test_python_upgrade_trigger(m: Machine) -> None:
    """An upgrade of python3.11 fires the trigger; postinst re-links the venv, also
    when pyvenv.cfg has no `executable =` line (venvs of Python < 3.11)."""
    venv = "/opt/venvs/cri-resource-manager"
    m.run(f"ln -sfn /usr/bin/python3.11-gone {venv}/bin/python3.11")
    m.run(f"cp {venv}/pyvenv.cfg /root/pyvenv.cfg && sed -i '/^executable/d' {venv}/pyvenv.cfg")
    assert m.run("cri-resmgr -version", check=False).returncode != 0
    m.run("dpkg-trigger --no-await /usr/bin/python3.11 && dpkg --triggers-only --pending")
    assert m.run(f"readlink {venv}/bin/python3.11").stdout.strip() == "/usr/bin/python3.11"
    assert m.run("cri-resmgr -version").stdout.startswith("cri-resmgr ")
    m.run(f"cp /root/pyvenv.cfg {venv}/pyvenv.cfg")  # dpkg --verify stays clean


BACKUP = "/var/lib/cri-resmgr/kubelet-backup"


def refused_remove(m: Machine) -> str:
    """apt remove, which must fail: the output; the package, service and kubelet are
    as they were."""
    starts = kubelet_starts(m)
    done = m.run(
        "apt-get -y -q remove cri-resource-manager 2>&1",
        env={"DEBIAN_FRONTEND": "noninteractive"},
        check=False,
        timeout=300,
    )
    assert done.returncode != 0, done.stdout
    assert "CRI_RESMGR_FORCE_REMOVE=1" in done.stdout, done.stdout
    status = m.run("dpkg-query -W -f='${Status}' cri-resource-manager").stdout
    assert status == "install ok installed", status
    assert m.run(f"systemctl is-active {UNIT}").stdout.strip() == "active"
    assert kubelet_starts(m) == starts and RELAY in kubelet_log(m).splitlines()[-1]
    return done.stdout


def test_remove_refused_with_a_damaged_manifest(m: Machine) -> None:
    """The confirmed case: a damaged kubelet-backup/manifest.json while kubelet uses
    the relay. prerm used to take `status`'s exit 1 for "not the relay" and go on."""
    m.run(f"systemctl start {UNIT}")
    m.run("/usr/share/cri-resource-manager/setup.sh")
    m.run(f"cp {BACKUP}/manifest.json /root/manifest.json && echo '{{' > {BACKUP}/manifest.json")
    out = refused_remove(m)
    assert "could not be restored completely and still points at the relay" in out, out
    m.run(f"cp /root/manifest.json {BACKUP}/manifest.json")


def test_remove_refused_when_status_fails(m: Machine) -> None:
    """`cri-resmgr kubelet status` fails (exit 1: kubelet's config is not YAML): nobody
    can tell whether kubelet uses the relay, so the removal stops."""
    config = "/var/lib/kubelet/config.yaml"
    m.run(f"cp {config} /root/config.yaml && echo 'foo: [' >> {config}")
    out = refused_remove(m)
    assert "cannot tell whether kubelet uses the relay" in out and "config.yaml" in out, out
    m.run(f"cp /root/config.yaml {config}")


def test_remove_points_kubelet_back_first(m: Machine, kubelet_before: Dict[str, str]) -> None:
    """apt remove while kubelet uses the relay: kubelet is put back and restarted while
    the relay still runs, then the service stops."""
    m.run(f"systemctl start {UNIT}")
    m.run("/usr/share/cri-resource-manager/setup.sh")
    assert RELAY in kubelet_log(m).splitlines()[-1]
    out = apt(m, "remove", "cri-resource-manager")
    assert "pointing kubelet back at the runtime first" in out
    last = kubelet_log(m).splitlines()[-1]
    assert last.startswith("start relay=up ") and f"={CONTAINERD}" in last, last
    assert kubelet_files(m) == kubelet_before
    assert m.run(f"systemctl is-active {UNIT}", check=False).stdout.strip() != "active"
    assert m.run("systemctl is-active kubelet").stdout.strip() == "active"


def test_purge_leaves_nothing(m: Machine) -> None:
    # The default CRI dump and its rotations go too; a file of another user stays.
    m.run(
        "touch /tmp/cri.dump /tmp/cri.dump.1 /tmp/cri.dump.2.gz /tmp/cri.dump.3.gz /tmp/cri.dumpx"
        " && chown 65534 /tmp/cri.dump.3.gz"
    )
    apt(m, "purge", "cri-resource-manager")
    tmp = m.run("ls /tmp").stdout.split()
    assert [n for n in tmp if n.startswith("cri.dump")] == ["cri.dump.3.gz", "cri.dumpx"], tmp
    m.run("rm /tmp/cri.dump.3.gz /tmp/cri.dumpx")
    left = m.run(
        "ls -d /run/cri-resmgr /var/lib/cri-resmgr /etc/cri-resmgr /opt/venvs "
        "/lib/systemd/system/cri-resource-manager.service /etc/default/cri-resource-manager "
        "2>/dev/null; find / -xdev \\( -path /src -o -path /proc -o -path /sys \\) -prune "
        "-o \\( -name '*cri-resmgr*' -o -name '*cri-resource-manager*' \\) -print",
        check=False,
    ).stdout
    assert left.strip() == "", left
    assert "cri-resource-manager" not in m.run("systemctl list-unit-files --no-legend").stdout
    state = m.run(f"systemctl is-active {UNIT}", check=False).stdout.strip()
    assert state == "inactive"
    assert m.run("debconf-show cri-resource-manager", check=False).stdout.strip() == ""


def test_journal_has_no_tracebacks(m: Machine) -> None:
    journal = m.journal(UNIT)
    assert "Traceback" not in journal, journal[-4000:]
