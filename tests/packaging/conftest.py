"""Fixtures for the packaging tests: real packages, a real systemd.

* every test under tests/packaging/ is marked `packaging`; they need root (package
  builds, debootstrap, systemd-nspawn) and are skipped otherwise. As root, missing
  Debian packages are installed (scripts/ensure-deps.sh deb rpm nspawn).
* `deb_package` / `rpm_package` (session): `make deb` / `make rpm`, once per session.
* `nspawn_root` (session): the Debian 12 root under build/nspawn-root, made once
  (debootstrap, ~1 min) and reused across runs, with the .deb's dependencies and
  logrotate.
* `boot` (function): `boot(name) -> Machine`, an ephemeral boot of that root with
  the repository at /src (read-only); every machine is stopped after the test or
  module that asked for it (see `machine_factory`).
* `timings`: seconds of the expensive steps, printed at the end of the session.
* `cri_resmgr`: the project's `cri-resmgr` command from the test virtualenv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BUILD = REPO / "build"
sys.path.insert(0, str(HERE))

from nspawn import Machine, NspawnError, ensure_packages, ensure_root  # noqa: E402

NOT_ROOT = "packaging tests build packages and boot systemd containers: run as root"
TIMINGS: Dict[str, float] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    for item in items:
        if HERE not in Path(item.path).resolve().parents:
            continue
        item.add_marker(pytest.mark.packaging)
        if os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason=NOT_ROOT))


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if TIMINGS:
        terminalreporter.write_sep("-", "packaging timings")
        for what, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{what}: {seconds:.1f} s")


@pytest.fixture(scope="session")
def timings() -> Dict[str, float]:
    return TIMINGS


@pytest.fixture(scope="session")
def packaging_deps() -> None:
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT)
    done = subprocess.run(
        [str(REPO / "scripts/ensure-deps.sh"), "deb", "rpm", "nspawn"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"ensure-deps.sh deb rpm nspawn failed:\n{done.stderr}", pytrace=False)


def _make(target: str) -> str:
    start = time.monotonic()
    done = subprocess.run(
        ["make", "--no-print-directory", target],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    TIMINGS[f"make {target}"] = time.monotonic() - start
    if done.returncode != 0:
        pytest.fail(f"make {target} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done.stdout


@pytest.fixture(scope="session")
def deb_package(packaging_deps: None) -> Path:
    """dist/cri-resource-manager_*.deb, built once per session."""
    _make("deb")
    (deb,) = sorted((REPO / "dist").glob("cri-resource-manager_*.deb"))
    return deb


@pytest.fixture(scope="session")
def rpm_package(packaging_deps: None) -> Path:
    """dist/cri-resource-manager-*.rpm, built once per session."""
    _make("rpm")
    (rpm,) = sorted((REPO / "dist").glob("cri-resource-manager-[0-9]*.rpm"))
    return rpm


@pytest.fixture(scope="session")
def nspawn_root(packaging_deps: None, deb_package: Path) -> Path:
    """build/nspawn-root with the .deb's dependencies (reused across runs)."""
    root = BUILD / "nspawn-root"
    try:
        seconds = ensure_root(root, BUILD / "debootstrap.log")
        TIMINGS["debootstrap (first) or cached root"] = seconds
        depends = subprocess.run(
            ["dpkg-deb", "-f", str(deb_package), "Depends"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        # First alternative of each dependency, without versions.
        names = [d.split("|")[0].split("(")[0].strip() for d in depends.split(",")]
        # logrotate: test_deb_install.py rotates the CRI dump with the shipped file.
        ensure_packages(root, [n for n in names if n] + ["logrotate"])
    except NspawnError as exc:
        pytest.fail(str(exc), pytrace=False)
    return root


@pytest.fixture(scope="module")
def machine_factory(nspawn_root: Path) -> Iterator[Callable[[str], Machine]]:
    """`boot(name)`: a booted machine, stopped when the module is done."""
    machines: List[Machine] = []

    def boot(name: str) -> Machine:
        log = BUILD / f"nspawn-{name}.log"
        machine = Machine(nspawn_root, name, {str(REPO): "/src"}, log)
        machines.append(machine)
        try:
            machine.start()
        except NspawnError as exc:
            pytest.fail(str(exc), pytrace=False)
        TIMINGS[f"boot {name}"] = machine.boot_seconds
        return machine

    yield boot
    for machine in machines:
        machine.stop()


@pytest.fixture(scope="session")
def cri_resmgr() -> str:
    """The cri-resmgr command of the test virtualenv (no package needed)."""
    path = Path(sys.executable).parent / "cri-resmgr"
    if not path.exists():
        found = shutil.which("cri-resmgr")
        if found is None:
            pytest.fail("no cri-resmgr in the test virtualenv: run make venv", pytrace=False)
        return found
    return str(path)
