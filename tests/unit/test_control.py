"""control: the root-only control socket, its two request forms, and the client."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import threading
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest
from loop_thread import LoopThread

from cri_resmgr import control


async def _echo(req: Dict[str, Any]) -> Dict[str, Any]:
    return {"echo": req}


async def _boom(req: Dict[str, Any]) -> None:
    raise RuntimeError("kaput")


@pytest.fixture
def server(loop: LoopThread, tmp_path: Path) -> Iterator[control.ControlServer]:
    srv = control.ControlServer(
        str(tmp_path / "ctl.sock"), {"status": _echo, "ping": _echo, "boom": _boom}
    )
    loop.run(srv.start())
    yield srv
    loop.run(srv.stop())


def _raw(path: str, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(data)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def test_socket_is_root_only_and_answers(server: control.ControlServer) -> None:
    st = os.stat(server.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert control.request(server.path, "status", x=1) == {"echo": {"x": 1, "op": "status"}}
    assert control.request("unix://" + server.path, "ping") == {"echo": {"op": "ping"}}
    leftovers = [p for p in os.listdir(os.path.dirname(server.path)) if p.endswith(".tmp")]
    assert leftovers == []


def test_json_line_errors(server: control.ControlServer) -> None:
    with pytest.raises(control.ControlError, match="unknown op 'nope'; known: boom, ping"):
        control.request(server.path, "nope")
    with pytest.raises(control.ControlError, match="boom failed: RuntimeError: kaput"):
        control.request(server.path, "boom")
    reply = json.loads(_raw(server.path, b"not json\n"))
    assert reply["ok"] is False and "not JSON" in reply["error"]
    reply = json.loads(_raw(server.path, b"[1, 2]\n"))
    assert reply == {"ok": False, "error": "request must be a JSON object"}


def test_http_get(server: control.ControlServer) -> None:
    raw = _raw(server.path, b"GET /status?verbose=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK")
    assert b"Content-Type: application/json" in head
    assert json.loads(body) == {"echo": {"verbose": "1", "op": "status"}}
    assert _raw(server.path, b"GET / HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 200")  # default op
    raw = _raw(server.path, b"HEAD /ping HTTP/1.1\r\n\r\n")
    assert raw.startswith(b"HTTP/1.0 200") and raw.endswith(b"\r\n\r\n")
    assert _raw(server.path, b"GET /nope HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.0 404")
    assert _raw(server.path, b"POST /status HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.0 405")
    raw = _raw(server.path, b"GET /boom HTTP/1.1\r\n\r\n")
    assert raw.startswith(b"HTTP/1.0 500") and b"kaput" in raw
    assert _raw(server.path, b"GET /status HTTP/1.1\r\nbroken header\r\n\r\n").startswith(
        b"HTTP/1.0 400"
    )


def test_oversized_and_silent_requests(
    server: control.ControlServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = b'{"op": "status", "x": "' + b"y" * (control.MAX_REQUEST + 10) + b'"}\n'
    try:
        reply = json.loads(_raw(server.path, big))
        assert reply == {"ok": False, "error": "request larger than 65536 bytes or slower than 5s"}
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed while we were still sending
    monkeypatch.setattr(control, "READ_TIMEOUT", 0.2)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(server.path)
        assert b"slower than 0.2s" in s.recv(1000)  # the server gives up on a silent client
    assert control.request(server.path, "ping") == {"echo": {"op": "ping"}}  # still serving


def test_handler_timeout(loop: LoopThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def slow(req: Dict[str, Any]) -> None:
        await asyncio.sleep(5)

    monkeypatch.setattr(control, "HANDLER_TIMEOUT", 0.1)
    srv = control.ControlServer(str(tmp_path / "c.sock"), {"status": slow})
    loop.run(srv.start())
    try:
        with pytest.raises(control.ControlError, match="did not finish within 0.1s"):
            control.request(srv.path, "status")
    finally:
        loop.run(srv.stop())


def test_stop_removes_the_socket(loop: LoopThread, tmp_path: Path) -> None:
    srv = control.ControlServer(str(tmp_path / "c.sock"), {"status": _echo})
    loop.run(srv.start())
    loop.run(srv.stop())
    assert not os.path.exists(srv.path)
    loop.run(srv.stop())  # twice is fine


def test_stale_socket_is_replaced_and_live_one_refused(loop: LoopThread, tmp_path: Path) -> None:
    path = str(tmp_path / "c.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: what a crash leaves
    first = control.ControlServer(path, {"status": _echo})
    loop.run(first.start())
    try:
        assert control.request(path) == {"echo": {"op": "status"}}
        second = control.ControlServer(path, {"status": _echo})
        with pytest.raises(control.SocketInUse, match="another server is listening"):
            loop.run(second.start())
    finally:
        loop.run(first.stop())
    regular = tmp_path / "file"
    regular.write_text("x")
    with pytest.raises(control.SocketInUse, match="is not a socket"):
        loop.run(control.ControlServer(str(regular), {}).start())
    assert regular.read_text() == "x"


def test_client_not_running(tmp_path: Path) -> None:
    missing = str(tmp_path / "none.sock")
    with pytest.raises(control.NotRunning, match=f"not running: no control socket {missing}"):
        control.request(missing)
    stale = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()
    with pytest.raises(control.NotRunning, match="stale socket"):
        control.request(stale)


def test_client_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def deny(self: socket.socket, address: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(socket.socket, "connect", deny)
    with pytest.raises(control.ControlError, match="root only"):
        control.request(str(tmp_path / "x.sock"))


def test_client_timeout_and_bad_answers(tmp_path: Path) -> None:
    path = str(tmp_path / "mute.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    answers: list = [None, b"", b"garbage", b'{"no": 1}', b'{"ok": false}']

    def serve() -> None:
        for answer in answers:
            conn, _ = listener.accept()
            conn.recv(1000)
            if answer is None:
                conn.recv(1000)  # never answers; the client times out and closes
            else:
                conn.sendall(answer)
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with pytest.raises(control.ControlError, match="did not answer within 0.2s"):
            control.request(path, timeout=0.2)
        with pytest.raises(control.ControlError, match="without an answer"):
            control.request(path)
        with pytest.raises(control.ControlError, match="not JSON"):
            control.request(path)
        with pytest.raises(control.ControlError, match="not a control reply"):
            control.request(path)
        with pytest.raises(control.ControlError, match=": failed"):
            control.request(path)
    finally:
        t.join(5)
        listener.close()


def test_tcp_listener_serves_http(loop: LoopThread) -> None:
    async def handler(req: control.HttpRequest) -> control.HttpResponse:
        return control.HttpResponse(200, "text/plain", f"{req.path} {req.query}".encode())

    async def cb(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await control.serve_connection(reader, writer, http=handler)

    server = loop.run(control.start_tcp_server(cb, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /metrics?a=b HTTP/1.1\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        assert data.startswith(b"HTTP/1.0 200 OK")
        assert data.endswith(b"/metrics {'a': 'b'}")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b'{"op": "status"}\n')  # no JSON line handler here
            assert s.recv(4096).startswith(b"HTTP/1.0 400")
    finally:
        server.close()
        loop.run(server.wait_closed())
