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


def test_environment_file_flags(m: Machine) -> None:
    """Quoted flags from /etc/default reach the program; the dump file is written, 0600."""
    default = m.read("/etc/default/cri-resource-manager")
    m.run(
        "sed -i \"s|^POLICY_OPTIONS=.*|POLICY_OPTIONS=\\\"-dump='reset,full:.*' "
        '-dump-file=/tmp/cri.dump\\"|" /etc/default/cri-resource-manager'
    )
    m.run(f"systemctl restart {UNIT}")
    cri_version(m)
    wait_for(lambda: "Version" in m.run("cat /tmp/cri.dump", check=False).stdout, "the dump")
    assert m.run("stat -c %a /tmp/cri.dump").stdout.strip() == "600"
    m.write("/etc/default/cri-resource-manager", default)
    m.run(f"systemctl restart {UNIT} && rm -f /tmp/cri.dump")


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
    """An upgrade of python3.11 fires the trigger; postinst re-links the venv."""
    venv = "/opt/venvs/cri-resource-manager"
    m.run(f"ln -sfn /usr/bin/python3.11-gone {venv}/bin/python3.11")
    assert m.run("cri-resmgr -version", check=False).returncode != 0
    m.run("dpkg-trigger --no-await /usr/bin/python3.11 && dpkg --triggers-only --pending")
    assert m.run(f"readlink {venv}/bin/python3.11").stdout.strip() == "/usr/bin/python3.11"
    assert m.run("cri-resmgr -version").stdout.startswith("cri-resmgr ")


def test_remove_points_kubelet_back_first(m: Machine, kubelet_before: Dict[str, str]) -> None:
    """apt remove while kubelet uses the relay: kubelet is put back and restarted while
    the relay still runs, then the service stops."""
    m.run(f"systemctl start {UNIT}")
    m.run("/usr/share/cri-resource-manager/setup.sh")
    assert RELAY in kubelet_log(m).splitlines()[-1]
    out = apt(m, "remove", "cri-resource-manager")
    assert "pointing it back first" in out
    last = kubelet_log(m).splitlines()[-1]
    assert last.startswith("start relay=up ") and f"={CONTAINERD}" in last, last
    assert kubelet_files(m) == kubelet_before
    assert m.run(f"systemctl is-active {UNIT}", check=False).stdout.strip() != "active"
    assert m.run("systemctl is-active kubelet").stdout.strip() == "active"


def test_purge_leaves_nothing(m: Machine) -> None:
    apt(m, "purge", "cri-resource-manager")
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
