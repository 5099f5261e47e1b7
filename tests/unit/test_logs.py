"""Logging: journal detection, levels per module, the SIGUSR1 toggle."""

from __future__ import annotations

import io
import logging
import os
import tempfile

import pytest

from cri_resmgr import logs


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name in ("cri_resmgr", "cri_resmgr.relay", "cri_resmgr.hooks"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def test_journal_is_detected_by_journal_stream(monkeypatch) -> None:
    with tempfile.TemporaryFile("w+") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logs.stderr_is_journal(f)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
        assert not logs.stderr_is_journal(f)  # stderr redirected elsewhere: not the journal
    monkeypatch.delenv("JOURNAL_STREAM")
    assert not logs.stderr_is_journal(io.StringIO())


def test_no_timestamps_of_our_own_under_the_journal(monkeypatch) -> None:
    with tempfile.TemporaryFile("w+") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        lg = logs.Logging(f)
        lg.configure("info")
        logging.getLogger("cri_resmgr.relay").info("hello %s", "journal")
        f.seek(0)
        assert f.read() == "INFO cri_resmgr.relay: hello journal\n"


def test_levels_debug_modules_and_toggle() -> None:
    out = io.StringIO()
    lg = logs.Logging(out)
    lg.configure("warning", ["cri_resmgr.hooks"])
    logging.getLogger("cri_resmgr.relay").info("not shown")
    logging.getLogger("cri_resmgr.hooks").debug("hooks debug shown")
    assert "not shown" not in out.getvalue() and "hooks debug shown" in out.getvalue()
    assert lg.toggle_debug() is True
    logging.getLogger("cri_resmgr.relay").debug("relay debug shown")
    assert "relay debug shown" in out.getvalue()
    assert lg.toggle_debug() is False
    logging.getLogger("cri_resmgr.relay").info("quiet again")
    assert "quiet again" not in out.getvalue()
    with pytest.raises(ValueError):
        lg.configure("loud")
