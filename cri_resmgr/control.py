"""The control endpoint: a root-only unix socket that answers queries as JSON, and its client.

Ownership: the local socket plumbing shared by the control endpoint and the metrics
endpoint (binding a unix socket under a temporary name, giving it its mode and renaming
it into place, as the relay does; replacing a stale socket, refusing a live one; TCP
listeners for metrics), the two request forms the servers understand, the
`ControlServer` the service runs on its event loop, and the blocking client
`request()` that ``cri-resmgr status`` uses. What the answers contain is not decided
here: the service passes handlers (``{"status": coroutine function}``).

Protocol: one request per connection, the server closes after its answer.

* JSON line: the client sends ``{"op": "status", ...}\\n``; the answer is one line,
  ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``.
* HTTP/1.x ``GET /OP`` (or ``HEAD``): the answer is ``HTTP/1.0`` with the JSON result as
  the body (404 for an unknown op, 500 with the error text when the handler fails), so
  ``curl --unix-socket /var/run/cri-resmgr/cri-resmgr-control.sock http://x/status``
  works. Query parameters become request fields (``/status?x=1`` -> ``{"x": "1"}``).

The control socket has mode 0600 (root only: it names every pod on the node and
the configuration); there is no TCP control endpoint. A request line or header block
is limited to `MAX_REQUEST` bytes and must arrive within `READ_TIMEOUT` seconds; a
handler gets `HANDLER_TIMEOUT` seconds.

This module imports neither grpc nor anything above `config`/`errors`: the client
side runs in the ``cri-resmgr status`` command.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import json
import logging
import socket
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Tuple
from urllib.parse import parse_qsl, urlsplit

from cri_resmgr import errors, sockets

__all__ = [
    "ControlError",
    "ControlServer",
    "HttpRequest",
    "HttpResponse",
    "NotRunning",
    "SocketInUse",
    "socket_path",
    "request",
    "start_tcp_server",
    "start_unix_server",
]

log = logging.getLogger(__name__)

CONTROL_MODE = 0o600
MAX_REQUEST = 64 * 1024  # bytes: a request line, or an HTTP request head
MAX_REPLY = 256 * 1024 * 1024  # bytes the client reads at most
READ_TIMEOUT = 5.0  # seconds for a client to send its request
HANDLER_TIMEOUT = 30.0  # seconds a handler may take
_MAX_HEADERS = 100

Handler = Callable[[Dict[str, Any]], Awaitable[Any]]


class ControlError(errors.Error):
    """The control endpoint could not be asked, or answered with an error."""


class NotRunning(ControlError):
    """Nobody serves the control socket: cri-resmgr is not running (or elsewhere)."""


# What a socket that cannot be listened on raises (a live server there, not a socket).
SocketInUse = sockets.SocketInUse
socket_path = sockets.socket_path


ConnectedCb = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def start_unix_server(
    cb: ConnectedCb, path: str, mode: int, key: str = ""
) -> asyncio.base_events.Server:
    """Serve `cb` on unix socket `path` with permission bits `mode`.

    The socket is bound under a temporary name in the same directory, chmod-ed, listening
    and served before it is renamed to `path`: it is never connectable with a wider mode,
    and it answers as soon as it appears. A stale socket is replaced, a live one refused.
    """

    async def serve(sock: socket.socket) -> asyncio.base_events.Server:
        return await asyncio.start_unix_server(cb, sock=sock, limit=MAX_REQUEST)

    return await sockets.listen(
        path,
        mode,
        serve,
        backlog=64,
        hint="is another cri-resmgr running with the same sockets?",
        key=key,
    )


async def start_tcp_server(cb: ConnectedCb, host: str, port: int) -> asyncio.base_events.Server:
    """Serve `cb` on TCP `host`:`port` (host "" = every address; IPv6 without brackets)."""
    return await asyncio.start_server(
        cb, host=host or None, port=port, limit=MAX_REQUEST, reuse_address=True
    )


# --- requests ------------------------------------------------------------------------


@dataclass
class HttpRequest:
    """An HTTP/1.x request head (no body is read)."""

    method: str  # GET, HEAD, ...
    path: str  # without the query
    query: Dict[str, str]
    version: str  # HTTP/1.0, HTTP/1.1
    headers: Dict[str, str] = field(default_factory=dict)  # lower-case names


@dataclass
class HttpResponse:
    """What an HTTP handler answers. `body` is bytes."""

    status: int
    content_type: str
    body: bytes
    headers: List[Tuple[str, str]] = field(default_factory=list)


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]
_HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ")


def _parse_request_line(line: bytes) -> Optional[HttpRequest]:
    try:
        method, target, version = line.decode("latin-1").strip().split(" ")
    except ValueError:
        return None
    if not version.startswith("HTTP/1."):
        return None
    parts = urlsplit(target)
    return HttpRequest(method, parts.path or "/", dict(parse_qsl(parts.query)), version)


async def _read_head(reader: asyncio.StreamReader, req: HttpRequest) -> bool:
    """Read header lines up to the blank line; False if the head is malformed/too big."""
    total = 0
    for _ in range(_MAX_HEADERS):
        line = await reader.readline()
        total += len(line)
        if total > MAX_REQUEST:
            return False
        if line in (b"\r\n", b"\n", b""):
            return True
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            return False
        req.headers[name.strip().lower()] = value.strip()
    return False


async def _write_http(
    writer: asyncio.StreamWriter, resp: HttpResponse, head_only: bool = False
) -> None:
    reason = _REASONS.get(resp.status, "Unknown")
    lines = [
        f"HTTP/1.0 {resp.status} {reason}",
        f"Content-Type: {resp.content_type}",
        f"Content-Length: {len(resp.body)}",
        "Connection: close",
    ]
    lines += [f"{k}: {v}" for k, v in resp.headers]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if not head_only:
        writer.write(resp.body)
    await writer.drain()


def _text(status: int, message: str) -> HttpResponse:
    return HttpResponse(status, "text/plain; charset=utf-8", (message + "\n").encode())


async def serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    http: Optional[HttpHandler] = None,
    line: Optional[Callable[[bytes], Awaitable[bytes]]] = None,
) -> None:
    """Answer one request on a connection: HTTP (`http`) or a JSON line (`line`), then close.

    `line` gets the request line's bytes and returns the reply line (without newline).
    """
    try:
        try:
            first = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
        except (asyncio.TimeoutError, ValueError):  # ValueError: longer than the limit
            problem = f"request larger than {MAX_REQUEST} bytes or slower than {READ_TIMEOUT:g}s"
            if line is not None:
                writer.write(_json_bytes({"ok": False, "error": problem}) + b"\n")
                await writer.drain()
            elif http is not None:
                await _write_http(writer, _text(400, problem))
            return
        if not first.strip():
            return
        if first.startswith(_HTTP_METHODS):
            await _serve_http(reader, writer, first, http)
            return
        if line is None:
            await _write_http(writer, _text(400, "expected an HTTP request"))
            return
        reply = await line(first)
        writer.write(reply + b"\n")
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass  # the client went away
    except Exception:  # noqa: BLE001 - a broken request must not hurt the service
        log.exception("control: failed to answer a request")
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def _serve_http(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    first: bytes,
    http: Optional[HttpHandler],
) -> None:
    req = _parse_request_line(first)
    if req is None:
        await _write_http(writer, _text(400, "malformed HTTP request line"))
        return
    try:
        ok = await asyncio.wait_for(_read_head(reader, req), READ_TIMEOUT)
    except (asyncio.TimeoutError, ValueError):
        ok = False
    if not ok:
        await _write_http(writer, _text(400, "malformed or oversized HTTP request head"))
        return
    if req.method not in ("GET", "HEAD") or http is None:
        await _write_http(writer, _text(405, "only GET and HEAD are served"))
        return
    try:
        resp = await http(req)
    except Exception as exc:  # noqa: BLE001 - answer with the error rather than hang up
        log.exception("control: HTTP handler for %s failed", req.path)
        resp = _text(500, f"{type(exc).__name__}: {exc}")
    await _write_http(writer, resp, head_only=req.method == "HEAD")


# --- the control server ------------------------------------------------------------


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=False, default=str).encode()


class ControlServer:
    """The control endpoint on the service's event loop: ``await start()``, ``await stop()``.

    `handlers` maps an op name to a coroutine function taking the request (a dict, the
    op included) and returning a JSON-serializable result. Handlers run on the loop:
    anything that blocks (a policy snapshot under the hooks lock) belongs in
    ``loop.run_in_executor``. `mode` is the socket's permission bits (0600).
    """

    def __init__(
        self, path: str, handlers: Mapping[str, Handler], mode: int = CONTROL_MODE
    ) -> None:
        self.path = socket_path(path)
        self.handlers = dict(handlers)
        self.mode = mode
        self._server: Optional[asyncio.base_events.Server] = None
        self.served = 0  # requests answered

    async def start(self) -> None:
        self._server = await start_unix_server(
            self._connection, self.path, self.mode, key="[relay] control-socket"
        )
        log.info("control endpoint listening on %s", self.path)

    async def stop(self) -> None:
        """Stop listening and remove the socket (requests being answered finish)."""
        if self._server is None:
            return
        self._server.close()
        sockets.release(self.path)
        await self._server.wait_closed()
        self._server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_connection(reader, writer, http=self._http, line=self._line)

    async def call(self, req: Dict[str, Any]) -> Tuple[bool, Any]:
        """Run the handler of ``req["op"]``: (True, result) or (False, error text)."""
        op = req.get("op")
        handler = self.handlers.get(op) if isinstance(op, str) else None
        if handler is None:
            return False, f"unknown op {op!r}; known: {', '.join(sorted(self.handlers))}"
        self.served += 1
        try:
            return True, await asyncio.wait_for(handler(req), HANDLER_TIMEOUT)
        except asyncio.TimeoutError:
            return False, f"{op} did not finish within {HANDLER_TIMEOUT:g}s"
        except Exception as exc:  # noqa: BLE001 - the client gets the error text
            log.exception("control: %s failed", op)
            return False, f"{op} failed: {type(exc).__name__}: {exc}"

    async def _line(self, raw: bytes) -> bytes:
        try:
            req = json.loads(raw)
        except ValueError as exc:
            return _json_bytes({"ok": False, "error": f"request is not JSON: {exc}"})
        if not isinstance(req, dict):
            return _json_bytes({"ok": False, "error": "request must be a JSON object"})
        ok, value = await self.call(req)
        return _json_bytes({"ok": True, "result": value} if ok else {"ok": False, "error": value})

    async def _http(self, req: HttpRequest) -> HttpResponse:
        op = req.path.strip("/") or "status"
        if op not in self.handlers:
            return _text(404, f"no such op {op!r}; known: {', '.join(sorted(self.handlers))}")
        ok, value = await self.call({**req.query, "op": op})
        if not ok:
            return _text(500, str(value))
        return HttpResponse(200, "application/json", _json_bytes(value) + b"\n")


# --- the client ----------------------------------------------------------------------


def request(path: str, op: str = "status", timeout: float = 10.0, **fields: Any) -> Any:
    """Ask the control endpoint at `path` for `op`; its result (blocking).

    Raises `NotRunning` when nobody serves the socket (missing, or a stale file),
    `ControlError` for anything else (permission denied, timeout in seconds, an error
    answer). Messages name the socket and say what to do.
    """
    path = socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise NotRunning(f"cri-resmgr is not running: no control socket {path}") from None
        except ConnectionRefusedError:
            raise NotRunning(
                f"cri-resmgr is not running: nobody answers on {path} (a stale socket)"
            ) from None
        except PermissionError:
            raise ControlError(
                f"permission denied on {path}: the control socket is for root only"
            ) from None
        except OSError as exc:
            raise ControlError(f"cannot connect to {path}: {exc.strerror or exc}") from None
        try:
            sock.sendall(_json_bytes({**fields, "op": op}) + b"\n")
            chunks: List[bytes] = []
            size = 0
            while True:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_REPLY:
                    raise ControlError(f"the answer on {path} is larger than {MAX_REPLY} bytes")
        except socket.timeout:
            raise ControlError(f"cri-resmgr on {path} did not answer within {timeout:g}s") from None
        except OSError as exc:
            raise ControlError(f"talking to {path} failed: {exc.strerror or exc}") from None
    finally:
        sock.close()
    raw = b"".join(chunks)
    if not raw.strip():
        raise ControlError(f"cri-resmgr on {path} closed the connection without an answer")
    try:
        reply = json.loads(raw)
    except ValueError as exc:
        raise ControlError(f"the answer on {path} is not JSON: {exc}") from None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise ControlError(f"the answer on {path} is not a control reply")
    if not reply["ok"]:
        raise ControlError(f"cri-resmgr on {path}: {reply.get('error', 'failed')}")
    return reply.get("result")
