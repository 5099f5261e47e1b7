"""Logging set-up for the service and the command-line tools.

Ownership: the handler and format on the `cri_resmgr` logger tree, the configured
levels (`[log] level`, `[log] debug`), live level changes on reload, and the SIGUSR1
debug toggle. Logs go to stderr; under systemd (stderr is the journal, detected via
`JOURNAL_STREAM`) lines carry no timestamp of their own because journald adds one.
"""

from __future__ import annotations

import functools
import logging
import os
import pkgutil
import sys
from typing import IO, List, Optional, Sequence, Tuple

ROOT = "cri_resmgr"
_FORMAT_JOURNAL = "%(levelname)s %(name)s: %(message)s"
_FORMAT_PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@functools.cache
def module_names() -> Tuple[str, ...]:
    """Every module and package of `cri_resmgr`, by full name, ``cri_resmgr`` itself too.

    These are the names `[log] debug` can select: every logger of the program is named
    after its module (``logging.getLogger(__name__)``). Found on disk, without importing
    anything. Only ``(ROOT,)`` when the package's files cannot be listed.
    """
    names: List[str] = [ROOT]

    def walk(directory: str, prefix: str) -> None:
        for info in pkgutil.iter_modules([directory], prefix):
            names.append(info.name)
            if info.ispkg:
                walk(os.path.join(directory, info.name.rsplit(".", 1)[1]), info.name + ".")

    walk(os.path.dirname(os.path.abspath(__file__)), ROOT + ".")
    return tuple(sorted(set(names)))


def stderr_is_journal(stream: IO[str] = sys.stderr) -> bool:
    """True when `stream` is the journal stream systemd connected (JOURNAL_STREAM=dev:ino)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in value:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return value == f"{st.st_dev}:{st.st_ino}"


class Logging:
    """The process's logging: one handler on the root logger, levels per module."""

    def __init__(self, stream: Optional[IO[str]] = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.level = logging.INFO
        self.debug_modules: Sequence[str] = ()
        self.debug_all = False  # SIGUSR1 toggle
        self.handler = logging.StreamHandler(self.stream)
        fmt = _FORMAT_JOURNAL if stderr_is_journal(self.stream) else _FORMAT_PLAIN
        self.handler.setFormatter(logging.Formatter(fmt))
        root = logging.getLogger()
        for old in list(root.handlers):
            root.removeHandler(old)
        root.addHandler(self.handler)
        root.setLevel(logging.WARNING)  # third-party libraries: warnings only
        # hpack logs every header field at DEBUG; never useful to an operator.
        logging.getLogger("hpack").setLevel(logging.WARNING)

    def configure(self, level: str, debug: Sequence[str] = ()) -> None:
        """Apply `[log] level` (debug|info|warning|error) and `[log] debug` modules."""
        self.level = logging.getLevelName(level.upper())
        if not isinstance(self.level, int):
            raise ValueError(f"unknown log level {level!r}")
        for name in self.debug_modules:
            logging.getLogger(name).setLevel(logging.NOTSET)
        self.debug_modules = tuple(debug)
        self._apply()

    def toggle_debug(self) -> bool:
        """SIGUSR1: debug logging for every module on/off. Returns the new state."""
        self.debug_all = not self.debug_all
        self._apply()
        return self.debug_all

    def _apply(self) -> None:
        top = logging.getLogger(ROOT)
        everything = self.debug_all or "*" in self.debug_modules
        top.setLevel(logging.DEBUG if everything else self.level)
        for name in self.debug_modules:
            if name != "*":
                logging.getLogger(name).setLevel(logging.DEBUG)
