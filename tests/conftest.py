"""Fixtures shared by all test suites.

`topology_root`: a session-scoped factory ``topology_root(name) -> Path`` returning a
directory that contains ``sys/...`` extracted from ``tests/data/topologies/NAME.tar.xz``
(a real machine's sysfs). Each tarball is extracted once per session; treat the tree
as read-only (copy it with ``shutil.copytree(..., symlinks=True)`` to modify it).
"""

from __future__ import annotations

import io
import lzma
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Callable, Dict, List

import pytest

TOPOLOGIES_DIR = Path(__file__).parent / "data" / "topologies"


def topology_names() -> List[str]:
    """Names of the committed topology tarballs ("desktop", "server", ...)."""
    return sorted(p.name[: -len(".tar.xz")] for p in TOPOLOGIES_DIR.glob("*.tar.xz"))


def _extract(tarball: Path, dest: Path) -> None:
    """Extract a topology tarball: with tar(1) when present (fast), else in Python."""
    tar = shutil.which("tar")
    if tar is not None and shutil.which("xz") is not None:
        subprocess.run(
            [
                tar,
                "-xJf",
                str(tarball),
                "-C",
                str(dest),
                "--no-same-owner",
                "--no-same-permissions",
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
        return
    _extract_python(tarball, dest)


def _extract_python(tarball: Path, dest: Path) -> None:
    """Extract regular files, directories and symlinks only, refusing paths that escape.

    tarfile.extractall takes ~10 s for the 20k-member server tree (per-member chown,
    utime and seeks); this loop over the decompressed bytes takes ~1 s.
    """
    raw = lzma.decompress(tarball.read_bytes())
    made = set()

    def parent_of(path: str) -> None:
        parent = os.path.dirname(path)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)

    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for member in tar:
            name = os.path.normpath(member.name)
            if os.path.isabs(name) or name == ".." or name.startswith(".." + os.sep):
                raise ValueError(f"{tarball}: member {member.name!r} escapes the destination")
            path = os.path.join(dest, name)
            if member.isdir():
                os.makedirs(path, exist_ok=True)
                made.add(path)
            elif member.isfile():
                parent_of(path)
                source = tar.extractfile(member)
                assert source is not None
                with open(path, "wb") as out:
                    out.write(source.read())
            elif member.issym():
                parent_of(path)
                os.symlink(member.linkname, path)


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
