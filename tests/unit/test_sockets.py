"""Listening unix sockets: too-long paths and unusable directories are clear errors."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from cri_resmgr import sockets


async def _serve(sock: socket.socket) -> asyncio.base_events.Server:
    return await asyncio.get_running_loop().create_unix_server(asyncio.Protocol, sock=sock)


def _listen(path: str, **kw: str) -> asyncio.base_events.Server:
    async def run() -> asyncio.base_events.Server:
        server = await sockets.listen(path, 0o600, _serve, **kw)
        server.close()
        await server.wait_closed()
        return server

    return asyncio.run(run())


def test_too_long_path_names_the_setting(tmp_path: Path) -> None:
    path = str(tmp_path / ("x" * (sockets.MAX_PATH - len(str(tmp_path)))))
    with pytest.raises(sockets.SocketError) as err:
        _listen(path, key="[relay] socket")
    text = str(err.value)
    assert path in text and "[relay] socket" in text and f"at most {sockets.MAX_PATH}" in text
    assert not os.path.exists(path)


def test_unusable_directory_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(sockets.SocketError, match=r"cannot create .*file.*\[relay\] socket"):
        _listen(str(blocker / "relay.sock"), key="[relay] socket")


def test_listen_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.sock"
    _listen(str(path))
    assert [p.name for p in tmp_path.iterdir()] == ["ok.sock"]


# --- nothing that is not ours is ever removed -----------------------------------------


def _serve_and_stop(path: str, between: Any = None) -> None:
    """listen(), run ``between()`` while serving, then stop the way the services do."""

    async def run() -> None:
        server = await sockets.listen(path, 0o600, _serve)
        if between is not None:
            between()
        server.close()
        sockets.release(path)
        await server.wait_closed()

    asyncio.run(run())


@pytest.mark.parametrize("what", ["file", "live socket"])
def test_what_stands_at_the_path_survives_a_refused_listen(tmp_path: Path, what: str) -> None:
    """A regular file (-relay-socket /etc/passwd) or another server's socket at the
    path: listen() refuses, and release() afterwards (a service's stop) leaves it."""
    path = tmp_path / "x.sock"
    other = None
    if what == "file":
        path.write_text("precious\n")
    else:
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(str(path))
        other.listen()
    try:
        with pytest.raises(sockets.SocketInUse):
            _listen(str(path))
        sockets.release(str(path))
        assert path.exists() and (what != "file" or path.read_text() == "precious\n")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["x.sock"]
    finally:
        if other is not None:
            other.close()


def test_a_directory_path_is_refused(tmp_path: Path) -> None:
    for path in (str(tmp_path) + "/", "/"):
        with pytest.raises(sockets.SocketError, match="names a directory"):
            sockets.check_path(path, "[relay] socket")


def test_release_removes_only_the_socket_it_placed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ok.sock"
    _serve_and_stop(str(path))
    assert not path.exists()  # ours: removed

    def replace() -> None:  # someone put a file there while we served
        path.unlink()
        path.write_text("theirs\n")

    _serve_and_stop(str(path), replace)
    assert path.read_text() == "theirs\n"
    assert "no longer the socket this process created" in caplog.text


def test_the_length_limit_does_not_depend_on_the_pid(tmp_path: Path) -> None:
    """The temporary name has one length whatever the pid: a path is accepted or
    refused the same way on every start."""
    names = set()
    for pid in (1, 99, 4194304):
        with mock.patch("os.getpid", return_value=pid):
            names.add(len(sockets._tmp_name(str(tmp_path / "r.sock"))))  # noqa: SLF001
    assert names == {len(str(tmp_path)) + 1 + sockets._TMP_NAME_LEN}  # noqa: SLF001
    # the longest short-named path that fits, and one byte more
    room = sockets.MAX_PATH - len(str(tmp_path)) - 1
    fits = str(tmp_path / ("r" * room))
    sockets.check_path(fits)
    with pytest.raises(sockets.SocketError, match="too long"):
        sockets.check_path(fits + "r")
