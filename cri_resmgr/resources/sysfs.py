"""Reading kernel-exported files (sysfs, procfs) under a configurable root.

This module owns `Sysfs`: it locates the sysfs tree under a root directory and reads
single values from it, raising `cri_resmgr.errors.TopologyError` that names the full
path, what was found and what was expected. Every reader comes in two flavours:
without ``default`` the file is *essential* (missing -> TopologyError); with
``default=...`` it is *optional* (missing -> the default, logged at debug level).
Content that is present but malformed is always a TopologyError.

Units: CPU lists are returned as `CPUSet`; ``meminfo`` values are bytes (the kernel
prints kB = KiB); frequencies are returned as the kernel prints them (kHz).

Nothing is read at import time; only the methods touch the file system.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from cri_resmgr.errors import TopologyError, shorten
from cri_resmgr.resources.cpuset import CPUSet

__all__ = ["Sysfs", "TopologyError", "REQUIRED"]

log = logging.getLogger(__name__)


# errnos meaning "this file does not exist here" rather than "reading it failed"
_MISSING_ERRNOS = (errno.ENOENT, errno.ENOTDIR)

# A file this large is not a sysfs attribute (they are at most one page).
_MAX_READ = 1 << 20

_MEMINFO_UNITS = {"kB": 1024, "KB": 1024, "KiB": 1024, "MB": 1 << 20, "GB": 1 << 30}


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: object = _Required()
"""Default of the ``default`` parameters: the file is essential."""

PathLike = Union[str, "os.PathLike[str]"]


class Sysfs:
    """Reads files of one sysfs tree.

    ``root`` is the directory that contains ``sys/`` (``/`` on a host, or an extracted
    test tree); a sysfs mount point itself (``/sys``) is accepted too. Paths given to
    the readers are relative to the sysfs mount point: ``"devices/system/cpu/online"``.
    """

    def __init__(self, root: PathLike = "/") -> None:
        self.root = Path(root)
        self.path = self.locate(self.root)
        self._base = str(self.path) + os.sep

    @staticmethod
    def locate(root: Path) -> Path:
        """The sysfs mount point under ``root``: ``root/sys`` or ``root`` itself."""
        for candidate in (root / "sys", root):
            if (candidate / "devices" / "system" / "cpu").is_dir():
                return candidate
        raise TopologyError(
            f"no sysfs under {root}: neither {root / 'sys/devices/system/cpu'} nor "
            f"{root / 'devices/system/cpu'} is a directory; expected sysfs-root to be a "
            "directory containing sys/ (normally /) or the sysfs mount point (/sys)"
        )

    def __repr__(self) -> str:
        return f"Sysfs({str(self.path)!r})"

    # -- paths -------------------------------------------------------------------

    def join(self, rel: str) -> Path:
        """The full path of ``rel`` (relative to the sysfs mount point)."""
        return self.path / rel

    def exists(self, rel: str) -> bool:
        return self.join(rel).exists()

    def is_dir(self, rel: str) -> bool:
        return self.join(rel).is_dir()

    def indexed(self, rel_dir: str, prefix: str) -> Dict[int, str]:
        """Entries ``PREFIX<N>`` of a directory, e.g. ``cpu0``..: ``{N: "rel_dir/PREFIXN"}``.

        Sorted by N. A missing directory gives ``{}``.
        """
        pattern = re.compile(re.escape(prefix) + r"([0-9]+)\Z")
        try:
            names = os.listdir(self._base + rel_dir)
        except OSError as err:
            if err.errno in _MISSING_ERRNOS:
                return {}
            raise TopologyError(
                f"{self.join(rel_dir)}: cannot list directory: {err.strerror}"
            ) from None
        found = {}
        for name in names:
            m = pattern.match(name)
            if m is not None:
                found[int(m.group(1))] = f"{rel_dir}/{name}"
        return dict(sorted(found.items()))

    # -- raw text ------------------------------------------------------------------

    def text(self, rel: str, expected: str, default: object = REQUIRED) -> str:
        """The content of a file, stripped of surrounding whitespace.

        ``expected`` says in words what the file should hold; it goes into errors.
        """
        path = self._base + rel  # plain strings: pathlib costs more than the read
        try:
            with open(path, "rb") as f:
                data = f.read(_MAX_READ + 1)
        except OSError as err:
            if err.errno in _MISSING_ERRNOS and default is not REQUIRED:
                log.debug("optional %s is missing, using %r", path, default)
                return default  # type: ignore[return-value]
            if err.errno in _MISSING_ERRNOS:
                raise TopologyError(
                    f"{path} is missing; expected {expected}. Is sysfs-root "
                    f"({self.root}) right and sysfs mounted there?"
                ) from None
            if default is not REQUIRED:
                # present but unreadable (EIO/EINVAL from a driver, EACCES): an
                # optional value is dropped rather than failing start-up
                log.warning("cannot read %s (%s); ignoring it", path, err.strerror)
                return default  # type: ignore[return-value]
            raise TopologyError(
                f"cannot read {path}: {err.strerror}; expected {expected}"
            ) from None
        if len(data) > _MAX_READ:
            raise TopologyError(f"{path} is larger than {_MAX_READ} bytes; expected {expected}")
        try:
            return data.decode("ascii").strip()
        except UnicodeDecodeError:
            raise TopologyError(
                f"{path} is not ASCII text: {data[:40]!r}; expected {expected}"
            ) from None

    # -- typed readers ---------------------------------------------------------------

    def read_int(self, rel: str, expected: str, default: object = REQUIRED) -> int:
        """A single (possibly negative) decimal integer."""
        raw = self.text(rel, expected, default)
        if raw is default and default is not REQUIRED:
            return raw  # type: ignore[return-value]
        try:
            return int(raw, 10)
        except ValueError:
            raise TopologyError(
                f"{self.join(rel)} holds {_show(raw)}; expected {expected} (a decimal integer)"
            ) from None

    def read_ints(self, rel: str, expected: str, default: object = REQUIRED) -> Tuple[int, ...]:
        """Whitespace-separated decimal integers, e.g. a node's ``distance``."""
        raw = self.text(rel, expected, default)
        if raw is default and default is not REQUIRED:
            return raw  # type: ignore[return-value]
        try:
            return tuple(int(word, 10) for word in raw.split())
        except ValueError:
            raise TopologyError(
                f"{self.join(rel)} holds {_show(raw)}; expected {expected} "
                "(whitespace-separated decimal integers)"
            ) from None

    def read_cpuset(self, rel: str, expected: str, default: object = REQUIRED) -> CPUSet:
        """A list in the kernel's CPU (or node) list syntax, ``"0-3,8"``."""
        raw = self.text(rel, expected, default)
        if raw is default and default is not REQUIRED:
            return raw  # type: ignore[return-value]
        if raw == "(null)":  # e.g. nohz_full when unset
            return CPUSet()
        try:
            return CPUSet.parse(raw)
        except ValueError as err:
            raise TopologyError(f"{self.join(rel)}: {err}; expected {expected}") from None

    def read_mask(self, rel: str, expected: str, default: object = REQUIRED) -> CPUSet:
        """A hex CPU mask, ``"00000000,0000ff0f"``."""
        raw = self.text(rel, expected, default)
        if raw is default and default is not REQUIRED:
            return raw  # type: ignore[return-value]
        try:
            return CPUSet.from_mask(raw)
        except ValueError as err:
            raise TopologyError(f"{self.join(rel)}: {err}; expected {expected}") from None

    def read_meminfo(
        self, rel: str, expected: str = "meminfo lines", default: object = REQUIRED
    ) -> Dict[str, int]:
        """``meminfo`` as ``{key: bytes}`` (or a bare count where no unit is printed).

        Reads both forms: ``Node 0 MemTotal:  32372996 kB`` (node meminfo) and
        ``MemTotal:  32372996 kB`` (/proc/meminfo).
        """
        raw = self.text(rel, expected, default)
        if raw is default and default is not REQUIRED:
            return raw  # type: ignore[return-value]
        return parse_meminfo(raw, str(self.join(rel)))

    def read_proc_meminfo(self, default: object = REQUIRED) -> Dict[str, int]:
        """``/proc/meminfo`` next to this sysfs (``ROOT/proc/meminfo``) as ``{key: bytes}``."""
        path = self.path.parent / "proc" / "meminfo"
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                raw = f.read(_MAX_READ)
        except OSError as err:
            if default is not REQUIRED:
                log.debug("optional %s is unreadable (%s)", path, err.strerror)
                return default  # type: ignore[return-value]
            raise TopologyError(f"cannot read {path}: {err.strerror}") from None
        return parse_meminfo(raw, str(path))

    def link_target(self, rel: str, default: object = REQUIRED) -> str:
        """The target of a symbolic link, as written in the link."""
        path = self.join(rel)
        try:
            return os.readlink(path)
        except OSError as err:
            if default is not REQUIRED:
                return default  # type: ignore[return-value]
            raise TopologyError(f"cannot read link {path}: {err.strerror}") from None


def parse_meminfo(raw: str, where: str) -> Dict[str, int]:
    """Parse meminfo text into ``{key: bytes}``; ``where`` names the source in errors."""
    out: Dict[str, int] = {}
    for lineno, line in enumerate(raw.splitlines(), 1):
        words = line.split()
        if not words:
            continue
        # "Node 0 MemTotal: 123 kB" -> drop the "Node 0" prefix
        if len(words) >= 2 and words[0] == "Node" and words[1].isdigit():
            words = words[2:]
        key_at = _key_index(words)
        if key_at is None or key_at + 1 >= len(words):
            raise TopologyError(
                f"{where}:{lineno}: cannot parse {_show(line)}; expected '[Node N] Key: value [kB]'"
            )
        key = words[key_at][:-1]
        value_text = words[key_at + 1]
        unit = words[key_at + 2] if key_at + 2 < len(words) else ""
        try:
            value = int(value_text, 10)
        except ValueError:
            raise TopologyError(
                f"{where}:{lineno}: {key} is {_show(value_text)}; expected a decimal integer"
            ) from None
        if unit:
            scale = _MEMINFO_UNITS.get(unit)
            if scale is None:
                raise TopologyError(
                    f"{where}:{lineno}: unknown unit {_show(unit)} for {key}; "
                    f"expected one of {', '.join(sorted(_MEMINFO_UNITS))}"
                )
            value *= scale
        out[key] = value
    return out


def _key_index(words: List[str]) -> Optional[int]:
    for i, word in enumerate(words):
        if word.endswith(":") and len(word) > 1:
            return i
    return None


def _show(text: str, limit: int = 60) -> str:
    return repr(shorten(text, limit))
