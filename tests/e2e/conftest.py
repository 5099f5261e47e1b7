"""Fixtures for the end-to-end tests: a real, private containerd from `harness/`.

* every test collected under tests/e2e/ is marked `e2e`; when not running as root the
  e2e tests are skipped (containerd needs root). As root, missing dependencies are a
  failure that says to run `make deps`, never a silent skip.
* `containerd` (session): a started `harness.containerd.Containerd` (host-network pods;
  pause and busybox images imported), stopped with a full teardown at the end.
* `runtime` (function): the same object, running (started again if a test left it
  stopped) and with every pod a test created removed after the test.
* `containerd_factory` (function): `make(**kwargs) -> Containerd` for tests that need
  their own instance (e.g. `network=True`); all are stopped after the test.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
if str(REPO_ROOT) not in sys.path:  # `harness` is a top-level package, not installed
    sys.path.insert(0, str(REPO_ROOT))

from harness.containerd import Containerd, HarnessError, missing_dependencies  # noqa: E402

NOT_ROOT_REASON = "e2e tests drive a real containerd and need root (run as root: make e2e)"


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    not_root = os.geteuid() != 0
    for item in items:
        if HERE not in Path(item.path).resolve().parents:
            continue
        item.add_marker(pytest.mark.e2e)
        if not_root:
            item.add_marker(pytest.mark.skip(reason=NOT_ROOT_REASON))


def _require_deps() -> None:
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT_REASON)
    missing = missing_dependencies()
    if missing:
        pytest.fail(
            f"e2e dependencies missing: {', '.join(missing)}; run `make deps` "
            "(scripts/ensure-deps.sh e2e) as root",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def containerd() -> Iterator[Containerd]:
    """A private containerd for the whole session (host-network pods only)."""
    _require_deps()
    ctrd = Containerd()
    try:
        ctrd.start()
    except HarnessError as e:
        pytest.fail(f"starting the harness containerd failed: {e}", pytrace=False)
    try:
        yield ctrd
    finally:
        ctrd.stop()


@pytest.fixture
def runtime(containerd: Containerd) -> Iterator[Containerd]:
    """The session containerd, running, with the test's pods removed afterwards."""
    if not containerd.running:
        containerd.start_daemon()
    yield containerd
    if not containerd.running:
        containerd.start_daemon()
    problems = containerd.remove_all_pods()
    assert not problems, f"removing the test's pods failed: {problems}"


@pytest.fixture
def containerd_factory() -> Iterator[Callable[..., Containerd]]:
    """`make(**kwargs)`: start an extra private containerd, stopped after the test."""
    _require_deps()
    made: list[Containerd] = []

    def make(**kwargs: Any) -> Containerd:
        ctrd = Containerd(**kwargs)
        made.append(ctrd)
        return ctrd.start()

    yield make
    errors = []
    for ctrd in reversed(made):
        try:
            ctrd.stop()
        except HarnessError as e:
            errors.append(str(e))
    assert not errors, errors


@pytest.fixture
def relay_factory(runtime: Containerd) -> Iterator[Callable[..., Any]]:
    """`make(*flags, runtime_socket=None, workdir=None)`: a `cri-resmgr` service process
    (`harness.relay.RelayProcess`, started) in front of the session containerd, in a
    short private directory (unix socket paths are limited to 108 bytes). All are
    stopped after the test; a relay that died or logged a traceback fails the test."""
    import shutil  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from harness.relay import RelayProcess  # noqa: PLC0415

    made: list = []
    dirs: list = []

    def make(
        *flags: str, runtime_socket: Any = None, workdir: Any = None, start: bool = True
    ) -> RelayProcess:
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix="crr-", dir="/tmp")
            dirs.append(workdir)
        proc = RelayProcess(runtime_socket or runtime.socket, Path(workdir), *flags)
        made.append(proc)
        return proc.start() if start else proc

    yield make
    logs = []
    for proc in made:
        if proc.running:
            proc.stop()
        if "Traceback" in proc.log_text():
            logs.append(proc.log_text())
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    assert not logs, "relay logged a traceback:\n" + "\n".join(logs)
