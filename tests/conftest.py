"""Fixtures shared by all test suites.

`topology_root`: a session-scoped factory ``topology_root(name) -> Path`` returning a
directory that contains ``sys/...`` extracted from ``tests/data/topologies/NAME.tar.xz``
(a real machine's sysfs). Each tarball is extracted once per session; treat the tree
as read-only (copy it with ``shutil.copytree(..., symlinks=True)`` to modify it).
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Callable, Dict

import pytest

TOPOLOGIES_DIR = Path(__file__).parent / "data" / "topologies"


def topology_names() -> list:
    """Names of the committed topology tarballs ("desktop", "server", ...)."""
    return sorted(p.name[: -len(".tar.xz")] for p in TOPOLOGIES_DIR.glob("*.tar.xz"))


def _extract(tarball: Path, dest: Path) -> None:
    with tarfile.open(tarball, "r:xz") as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.9.17 / 3.11.4
            tar.extractall(dest, filter="data")
        else:  # pragma: no cover - old interpreters
            tar.extractall(dest)  # noqa: S202 - our own committed test data


@pytest.fixture(scope="session")
def topology_root(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Factory: ``topology_root("server")`` -> root directory containing ``sys/``."""
    cache: Dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            tarball = TOPOLOGIES_DIR / f"{name}.tar.xz"
            if not tarball.is_file():
                raise FileNotFoundError(
                    f"no topology {name!r}: {tarball} does not exist "
                    f"(have: {', '.join(topology_names())})"
                )
            dest = tmp_path_factory.mktemp(f"topology-{name}")
            _extract(tarball, dest)
            cache[name] = dest
        return cache[name]

    return get
