"""install.sh and the debconf offer on a real systemd (a booted Debian 12 root).

One machine for the module, tests in order: the debconf "yes" path and a purge while
kubelet uses the relay, then install.sh installing, re-run, re-configured, pointed at
a runtime that is not there, and purged.
"""

from __future__ import annotations

import time
from typing import Dict

import pytest
from node import (
    CONTAINERD,
    RELAY,
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
    machine = machine_factory("scripts")
    setup_kubelet(machine)
    return machine


@pytest.fixture(scope="module")
def kubelet_before(m: Machine) -> Dict[str, str]:
    return kubelet_files(m)


def is_active(m: Machine) -> str:
    return m.run(f"systemctl is-active {UNIT}", check=False).stdout.strip()


@pytest.mark.timeout(900)
def test_debconf_yes_points_kubelet(m: Machine, deb_package, kubelet_before) -> None:  # type: ignore[no-untyped-def]
    """Preseeded yes: postinst starts the service, then points kubelet at it."""
    starts = kubelet_starts(m)
    m.run(
        "debconf-set-selections",
        input="cri-resource-manager cri-resource-manager/kubelet-enable boolean true\n",
    )
    out = apt(m, "install", f"/src/dist/{deb_package.name}")
    # postinst ran the shipped setup.sh: it checked the service and restarted kubelet.
    assert "enable: done" in out and "setup.sh: restarting kubelet" in out, out
    assert is_active(m) == "active"
    assert kubelet_starts(m) == starts + 1
    last = kubelet_log(m).splitlines()[-1]
    assert last.startswith("start relay=up ") and RELAY in last, last
    assert kubelet_files(m) != kubelet_before
    # An action, not a setting: the answer is back to no, so upgrades do not repeat it.
    assert "kubelet-enable: false" in m.run("debconf-show cri-resource-manager").stdout


def test_purge_while_kubelet_uses_relay(m: Machine, kubelet_before) -> None:  # type: ignore[no-untyped-def]
    out = apt(m, "purge", "cri-resource-manager")
    assert "pointing kubelet back at the runtime first" in out
    last = kubelet_log(m).splitlines()[-1]
    assert last.startswith("start relay=up ") and CONTAINERD in last, last
    assert kubelet_files(m) == kubelet_before
    assert m.run("ls /var/lib/cri-resmgr /etc/cri-resmgr /run/cri-resmgr", check=False).stdout == ""


@pytest.mark.timeout(600)
def test_install_sh(m: Machine, kubelet_before) -> None:  # type: ignore[no-untyped-def]
    """Defaults: containerd, policy null, the CRI dump to /tmp/cri.dump."""
    out = m.run("/src/install.sh", timeout=300).stdout
    assert "systemctl status cri-resource-manager" in out
    assert "ls -l /var/run/cri-resmgr/cri-resmgr.sock" in out
    assert is_active(m) == "active"
    assert m.run(f"systemctl is-enabled {UNIT}").stdout.strip() == "enabled"
    conf = m.read("/etc/cri-resmgr/90-install.conf").decode()
    assert "runner = containerd" in conf and "name = null" in conf
    default = m.read("/etc/default/cri-resource-manager").decode()
    assert "POLICY_OPTIONS=\"-dump='reset,full:.*' -dump-file=/tmp/cri.dump\"" in default
    assert cri_version(m).startswith("containerd ")
    wait_for(lambda: "Version" in m.run("cat /tmp/cri.dump", check=False).stdout, "the dump")
    assert kubelet_files(m) == kubelet_before  # install.sh leaves kubelet alone


def test_install_sh_again_changes_nothing(m: Machine) -> None:
    pid = main_pid(m)
    files = m.run("sha256sum /etc/cri-resmgr/* /etc/default/cri-resource-manager").stdout
    out = m.run("/src/install.sh").stdout
    assert "nothing changed: not restarted" in out and "wrote" not in out
    assert main_pid(m) == pid
    assert m.run("sha256sum /etc/cri-resmgr/* /etc/default/cri-resource-manager").stdout == files


def test_install_sh_new_settings_restart(m: Machine) -> None:
    pid = main_pid(m)
    out = m.run(
        "/src/install.sh", env={"CRI_RESMGR_DEBUG_OPTIONS": "-log-level=debug -debug=relay"}
    ).stdout
    assert "wrote /etc/default/cri-resource-manager" in out and "restarting" in out
    assert main_pid(m) != pid and is_active(m) == "active"
    args = m.run(f"tr '\\0' ' ' < /proc/{main_pid(m)}/cmdline").stdout
    assert "-log-level=debug -debug=relay" in args


def test_install_sh_missing_runtime(m: Machine) -> None:
    """RUNNER=crio without CRI-O: a clear error; RUNNER=containerd repairs it."""
    done = m.run("/src/install.sh", env={"RUNNER": "crio"}, check=False, timeout=300)
    assert done.returncode == 1
    assert "/var/run/crio/crio.sock does not exist" in done.stderr, done.stderr
    # the old instance may still be stopping (restart is --no-block): then it waits
    deadline = time.monotonic() + 60
    while is_active(m) == "deactivating" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert is_active(m) == "activating"  # waiting for CRI-O
    m.run("/src/install.sh", timeout=300)
    assert is_active(m) == "active"
    assert cri_version(m).startswith("containerd ")


def test_purge_after_install_sh(m: Machine) -> None:
    apt(m, "purge", "cri-resource-manager")
    left = m.run(
        "ls -d /etc/cri-resmgr /var/lib/cri-resmgr /run/cri-resmgr /opt/venvs /tmp/cri.dump 2>&1",
        check=False,
    ).stdout
    assert left.count("No such file") == 5, left  # the dump install.sh turned on, too
    assert is_active(m) == "inactive"
