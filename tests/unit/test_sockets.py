"""Listening unix sockets: too-long paths and unusable directories are clear errors."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

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
