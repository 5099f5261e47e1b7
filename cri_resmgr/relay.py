"""The CRI relay: a unix-socket gRPC front that forwards every call to the runtime.

Ownership: the listening socket, the connections to kubelet (and any other CRI client)
and to the runtime, the per-call bookkeeping, the dispatch of hooks and observers,
and graceful shutdown. No CRI message is decoded here; no policy is imported.

How it forwards. Each client connection gets its own connection to the runtime and
the relay copies HTTP/2 frames between the two (a frame relay, not a gRPC server:
see docs/performance.md for the measurements behind this choice). Client frames go to
the runtime unchanged, so the client's header compression context stays the runtime's.
Runtime header blocks are decoded and re-encoded without indexing, which lets the
relay add its own blocks (replies to hooked calls, errors) to the client connection.
Deadlines (`grpc-timeout`), cancellation (RST_STREAM), metadata, status codes and
details therefore pass unchanged, and any method, known or not, is forwarded.

Hooks. A call whose method has a hook is answered by the relay: its request header
block still goes to the runtime (to keep the runtime's decoder in step) followed at
once by RST_STREAM, and the hook runs in a worker thread with a `Forward` callable that
makes the real call over a grpcio channel. Hooks run concurrently in a worker pool
(they serialize their own policy decisions; see hooks.py). The hook may decode
and replace the request, sees the reply, and returns reply bytes (or raises). HTTP/2
flow control stays exact: request bytes the relay absorbs are granted back to the
client, and reply bytes it writes are deducted from the client's next window updates
before they reach the runtime (`_Conn._client_conn_window`), with server data held back
(and split to the window) while the real window is short. Frames the runtime still
sends for such a stream are dropped. Client PINGs are answered by the relay (a runtime
that sees pings but sends no data would count them as abuse); the runtime's own pings
and their acknowledgements pass through.

A separate image socket: every client connection still goes to the runtime socket (a
gRPC client sends no call before the server's SETTINGS, so the first call cannot pick
the socket); ImageService calls are answered like hooked ones, via grpcio.

Observers see finished calls (method, timing, status, and message bytes when they ask:
up to MAX_RECORDED per direction) as the reply goes out; they must only enqueue.

Sizes are bytes; times are `time.monotonic()` seconds unless named `wall`.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

import grpc

from cri_resmgr import errors, http2, sockets
from cri_resmgr.cri import client as cri_client
from cri_resmgr.cri import methods as cri_methods

log = logging.getLogger(__name__)

MAX_MESSAGE = cri_client.MAX_MESSAGE_BYTES  # as kubelet: 16 MiB both ways
MAX_RECORDED = MAX_MESSAGE + 5  # message bytes per direction kept for observers
GRPC_OPTIONS = cri_client.CHANNEL_OPTIONS
#: Methods whose observer wishes are remembered (clients choose paths freely).
_WANTS_KEPT = 4096

# What an observer wants of a method's calls.
WANT_NONE = 0
WANT_STATUS = 1  # method, timing, status
WANT_MESSAGES = 2  # ... and the request and reply bytes

# Headers that belong to the HTTP/2 or gRPC transport, not to the call's metadata.
_TRANSPORT_HEADERS = frozenset(
    {
        "content-type",
        "te",
        "grpc-timeout",
        "grpc-encoding",
        "grpc-accept-encoding",
        "user-agent",
        "grpc-status",
        "grpc-message",
        "grpc-status-details-bin",
    }
)

# Of those, what the runtime's trailing metadata may carry on to the client.
_NOT_TRAILING_METADATA = _TRANSPORT_HEADERS - {"grpc-status-details-bin"}
_IMAGE_PREFIX = "/" + cri_methods.IMAGE_SERVICE + "/"
_CLIENT_CONTROL = frozenset({http2.RST_STREAM, http2.SETTINGS, http2.WINDOW_UPDATE, http2.PING})
# How many finished local streams to remember: the runtime may still send a frame or
# two for a stream the relay reset, and those must not reach the client.
_GONE_KEPT = 256
_RST_TO_CODE = {http2.CANCEL: 1, http2.REFUSED_STREAM: 14, http2.NO_ERROR: 13}


class ForwardError(Exception):
    """The runtime (or the transport to it) failed a forwarded call."""

    def __init__(
        self, code: grpc.StatusCode, details: str, trailing_metadata: Sequence[Tuple[str, Any]] = ()
    ) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.trailing_metadata = tuple(trailing_metadata or ())


@dataclass
class CallInfo:
    """What a hook knows about the call it handles."""

    method: str  # full path, e.g. /runtime.v1.RuntimeService/CreateContainer
    metadata: Tuple[Tuple[str, Any], ...]  # invocation metadata (binary values as bytes)
    deadline: Optional[float]  # monotonic seconds, None = no deadline
    cancelled: threading.Event = field(default_factory=threading.Event)

    def remaining(self) -> Optional[float]:
        """Seconds left before the client's deadline (None when it set none)."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())


Forward = Callable[[bytes], bytes]
Hook = Callable[[bytes, Forward, CallInfo], bytes]


@dataclass
class CallRecord:
    """One finished call, as observers see it."""

    method: str
    start: float  # monotonic
    end: float  # monotonic
    wall: float  # time.time() at start
    code: int  # gRPC status code value (0 = OK)
    details: str
    # gRPC-framed DATA bytes; None unless WANT_MESSAGES, and None when that direction
    # carried more than MAX_RECORDED bytes (a long server stream, say).
    request: Optional[bytes] = None
    reply: Optional[bytes] = None
    hooked: bool = False
    # Seconds spent waiting for the runtime: from forwarding the request's last frame to
    # the reply's first header block (the relay's calls to it, for hooked ones). None
    # when not measured. `end - start - runtime` is the time the relay added.
    runtime: Optional[float] = None


class Observer:
    """Base class of call observers (the dump, metrics). Both methods must be cheap."""

    def wants(self, method: str) -> int:
        """WANT_NONE, WANT_STATUS or WANT_MESSAGES for calls of `method`."""
        return WANT_NONE

    def observe(self, record: CallRecord) -> None:
        """Called on the relay's event loop for each finished call it asked for."""


# --- per-call state ------------------------------------------------------------


class _Stream:
    """One call on a client connection."""

    __slots__ = (
        "sid",
        "method",
        "want",
        "start",
        "wall",
        "request",
        "reply",
        "code",
        "details",
        "local",
        "sent",
        "answered",
        "observers",
    )

    def __init__(self, sid: int, method: str, want: int) -> None:
        self.sid = sid
        self.method = method
        self.want = want
        self.start = time.monotonic()
        self.wall = time.time()
        self.request: Optional[bytearray] = bytearray() if want >= WANT_MESSAGES else None
        self.reply: Optional[bytearray] = bytearray() if want >= WANT_MESSAGES else None
        self.code = 0
        self.details = ""
        self.sent = 0.0  # monotonic: request's last frame forwarded (observed calls)
        self.answered = 0.0  # monotonic: the runtime's first header block arrived
        self.observers: Tuple[Observer, ...] = ()  # who asked, when the call started
        self.local: Optional[_LocalCall] = None

    def keep_request(self, data: bytes | memoryview) -> None:
        """Record request bytes for observers (only while `request` is not None)."""
        kept = self.request
        assert kept is not None
        kept += data
        if len(kept) > MAX_RECORDED:
            self.request = None

    def keep_reply(self, data: bytes | memoryview) -> None:
        """Record reply bytes for observers (only while `reply` is not None)."""
        kept = self.reply
        assert kept is not None
        kept += data
        if len(kept) > MAX_RECORDED:
            self.reply = None


class _LocalCall:
    """A call the relay answers itself (hooked, or routed to the other runtime socket)."""

    def __init__(
        self, stream: _Stream, headers: http2.Headers, send_window: int, hook: Optional[Hook]
    ) -> None:
        self.stream = stream
        self.hook = hook
        self.body = bytearray()
        self.send_window = send_window  # client's receive window for this stream
        self.pending: List[bytes] = []  # DATA payloads waiting for window
        self.trailers: Optional[bytes] = None  # trailers block waiting behind pending data
        self.headers_sent = False
        self.finished = False
        self.runtime = 0.0  # seconds this call's forwards waited for the runtime
        metadata: List[Tuple[str, Any]] = []
        deadline = None
        for name, value in headers:
            if name.startswith(":") or name in _TRANSPORT_HEADERS:
                if name == "grpc-timeout":
                    seconds = http2.parse_timeout(value)
                    if seconds is not None:
                        deadline = stream.start + seconds
                continue
            if name.endswith("-bin"):
                raw = _b64decode(value)
                if raw is not None:
                    metadata.append((name, raw))
            elif value.isascii() and value.isprintable():
                metadata.append((name, value))
            else:  # grpcio refuses to send such a value on
                log.debug(
                    "relay: dropping metadata %s of %s: not printable ASCII", name, stream.method
                )
        self.info = CallInfo(stream.method, tuple(metadata), deadline)
        self.future: Optional[grpc.Future] = None
        self.lock = threading.Lock()

    def cancel(self) -> None:
        """The client reset the stream: stop the runtime call the hook is waiting on."""
        self.info.cancelled.set()
        with self.lock:
            fut = self.future
        if fut is not None:
            fut.cancel()


def _b64decode(value: str) -> Optional[bytes]:
    """The bytes of a `-bin` header value (a latin-1 string, see http2.BlockDecoder).

    None when it is not base64 (padded or not).
    """
    if value.startswith("\x00"):
        return value[1:].encode("latin-1")  # true binary metadata (grpc-core extension)
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except ValueError:  # binascii.Error
        return None


def _metadata_headers(
    metadata: Sequence[Tuple[str, Any]], skip: frozenset = _TRANSPORT_HEADERS
) -> List[Tuple[str, str]]:
    """Header fields for grpcio metadata (`-bin` values base64 encoded)."""
    out = []
    for key, value in metadata or ():
        if key in skip or key.startswith(":"):
            continue
        if key.endswith("-bin"):
            raw = value if isinstance(value, bytes) else str(value).encode()
            out.append((key, base64.b64encode(raw).decode().rstrip("=")))
        else:
            out.append((key, str(value)))
    return out


@dataclass
class _Result:
    """What a local call produced: reply messages (framed) and status."""

    messages: List[bytes]
    code: grpc.StatusCode
    details: str
    initial_metadata: Sequence[Tuple[str, Any]] = ()
    trailing_metadata: Sequence[Tuple[str, Any]] = ()


# --- one client connection -----------------------------------------------------


class _Upstream(asyncio.Protocol):
    def __init__(self, conn: _Conn) -> None:
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        self.conn.server_bytes(data)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.conn.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.conn.pause_client()

    def resume_writing(self) -> None:
        self.conn.resume_client()


class _Conn(asyncio.Protocol):
    """One client connection and its connection to the runtime."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.loop = relay.loop
        self.down: Optional[asyncio.Transport] = None
        self.up: Optional[asyncio.Transport] = None
        self.up_pending: List[bytes] = []  # client bytes before the runtime connection is up
        self.cbuf = b""  # unparsed client bytes
        self.sbuf = b""  # unparsed server bytes
        self.preface = True
        self.client_headers = http2.BlockDecoder()
        self.server_headers = http2.BlockDecoder()
        self.cblock: Optional[Tuple[int, int, List[bytes]]] = None  # (sid, flags, fragments)
        self.sblock: Optional[Tuple[int, int, List[bytes]]] = None
        self.streams: Dict[int, _Stream] = {}
        self.first_block = True
        self.client_max_frame = http2.DEFAULT_MAX_FRAME  # in force for our own frames
        self.client_initial_window = http2.DEFAULT_WINDOW
        self.unacked: Deque[Dict[int, int]] = collections.deque()  # client SETTINGS sent
        self.release_pending = False  # resume waiting replies after this read's output
        self.acked: Dict[int, int] = {}  # client settings the runtime acknowledged
        self.down_window = http2.DEFAULT_WINDOW  # real connection window towards the client
        self.debt = 0  # reply bytes we wrote that the runtime does not know about
        self.held: Deque[Tuple[bytes, int]] = collections.deque()  # (frames, DATA bytes)
        self.waiting: Dict[int, _Stream] = {}  # local calls with reply data waiting for window
        self.gone: Dict[int, None] = {}  # recently finished local streams, oldest first
        self.last_sid = 0
        self.draining = False
        self.closed = False
        self.connecting: Optional[asyncio.Task] = None  # a reference keeps the task alive

    # -- connection events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.down = transport  # type: ignore[assignment]
        self.relay._conns.add(self)
        if self.relay._draining:
            transport.close()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        self.relay._conns.discard(self)
        if self.up is not None:
            self.up.close()
        self._fail_open_streams(1, "client connection closed")  # CANCELLED

    def upstream_lost(self, exc: Optional[Exception]) -> None:
        if not self.closed:
            log.debug("runtime closed the connection: %s", exc)
            self._fail_open_streams(14, "runtime connection closed")
            if self.down is not None:
                self._release(force=True)
                self.down.close()

    def pause_client(self) -> None:
        if self.down is not None:
            self.down.pause_reading()

    def resume_client(self) -> None:
        if self.down is not None:
            self.down.resume_reading()

    def pause_writing(self) -> None:
        if self.up is not None:
            self.up.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None:
            self.up.resume_reading()

    async def _connect(self, target: str) -> None:
        try:
            transport, _ = await self.loop.create_unix_connection(lambda: _Upstream(self), target)
        except OSError as exc:
            self.relay._runtime_down(target, exc)
            if self.down is not None:
                self.down.close()
            return
        self.relay._runtime_up(target)
        if self.closed:
            transport.close()
            return
        self.up = transport  # type: ignore[assignment]
        if self.up_pending:
            transport.write(b"".join(self.up_pending))  # type: ignore[attr-defined]
            self.up_pending = []

    def _up_write(self, data: bytes) -> None:
        if self.up is not None:
            self.up.write(data)
        else:
            self.up_pending.append(data)

    def _fail_open_streams(self, code: int, details: str) -> None:
        streams = list(self.streams.values())
        self.streams.clear()  # first: _finish() checks whether a draining relay is idle
        for stream in streams:
            if stream.local is not None:
                stream.local.cancel()
            stream.code, stream.details = code, details
            self._finish(stream)

    # -- client -> runtime

    def data_received(self, data: bytes) -> None:
        buf = self.cbuf + data if self.cbuf else data
        pos = 0
        if self.preface:
            if len(buf) < len(http2.PREFACE):
                if not http2.PREFACE.startswith(buf):
                    self._protocol_error("client did not send the HTTP/2 preface")
                self.cbuf = buf
                return
            if not buf.startswith(http2.PREFACE):
                self._protocol_error("client did not send the HTTP/2 preface")
                return
            self.preface = False
            self._start_upstream()
            pos = len(http2.PREFACE)
        try:
            self._client_frames(buf, pos, 0)
        except http2.ProtocolError as exc:
            self._protocol_error(f"client: {exc}")

    def _start_upstream(self) -> None:
        """Connect to the runtime socket (image calls go there too unless split).

        The connection cannot wait for the first call to pick a socket: gRPC clients
        send no call before the server's SETTINGS, which come from the runtime. With a
        separate image socket, image calls are answered via grpcio (`_LocalCall`).
        """
        self.connecting = self.loop.create_task(self._connect(self.relay.runtime_target))

    def _client_frames(self, buf: bytes, pos: int, run: int) -> None:
        """Parse client frames from `pos`; bytes from `run` on are forwarded unless cut.

        The hot path (DATA, HEADERS, connection WINDOW_UPDATE) is inline; other frames
        the relay cares about go to `_client_control`.
        """
        end = len(buf)
        streams = self.streams
        while end - pos >= 9:
            length, ftype, flags, sid = http2.read_header(buf, pos)
            nxt = pos + 9 + length
            if nxt > end:
                break
            if ftype == http2.DATA:
                stream = streams.get(sid)
                if stream is not None:
                    if stream.local is not None:
                        self._forward(buf, run, pos)
                        run = nxt
                        self._local_data(stream, flags, buf[pos + 9 : nxt], length)
                    else:
                        if stream.request is not None:
                            stream.keep_request(
                                http2.strip_padding(flags, buf[pos + 9 : nxt], False)
                            )
                        if flags & http2.FLAG_END_STREAM and stream.want:
                            stream.sent = time.monotonic()
                elif sid in self.gone:
                    # More request data for a stream we answered (or refused) and reset
                    # upstream already: not the runtime's; give the client its window back.
                    self._forward(buf, run, pos)
                    run = nxt
                    if length and self.down is not None:
                        self.down.write(http2.window_update(0, length))
            elif ftype in (http2.HEADERS, http2.CONTINUATION):
                self._forward(buf, run, nxt)
                run = nxt
                self._client_headers_frame(ftype, flags, sid, buf[pos + 9 : nxt])
            elif ftype == http2.WINDOW_UPDATE and not (
                sid or self.debt or self.held or self.waiting
            ):
                self.down_window += http2.read_u32(buf, pos + 9) & 0x7FFFFFFF
            elif ftype in _CLIENT_CONTROL:
                run = self._client_control(ftype, flags, sid, buf, pos=pos, nxt=nxt, run=run)
            pos = nxt
        self._forward(buf, run, pos)
        self.cbuf = buf[pos:] if pos < end else b""

    def _client_control(
        self, ftype: int, flags: int, sid: int, buf: bytes, *, pos: int, nxt: int, run: int
    ) -> int:
        """RST_STREAM, SETTINGS, PING and the WINDOW_UPDATEs the relay accounts for.

        Returns where the forwarded run continues: `nxt` when this frame is cut.
        """
        if ftype == http2.PING:
            if flags & http2.FLAG_ACK:
                return run  # the client answering the runtime's ping
            # Answer it here. Forwarded, a ping while the relay answers the calls itself
            # looks to the runtime like pings without data: grpc-go's keepalive policy
            # (containerd) then sends GOAWAY too_many_pings and the connection is lost.
            self._forward(buf, run, pos)
            if self.down is not None:
                self.down.write(http2.frame(http2.PING, http2.FLAG_ACK, 0, buf[pos + 9 : nxt]))
            return nxt
        if ftype == http2.SETTINGS:
            if not flags & http2.FLAG_ACK:
                self._client_settings(http2.parse_settings(buf[pos + 9 : nxt]))
            return run
        stream = self.streams.get(sid) if sid else None
        if ftype == http2.RST_STREAM:
            if stream is None:
                return run
            stream.code, stream.details = 1, "cancelled by the client"
            self._finish(self.streams.pop(sid))
            if stream.local is None:
                return run
            self._forward(buf, run, pos)  # the runtime has forgotten this stream already
            stream.local.cancel()
            stream.local.finished = True
            return nxt
        # WINDOW_UPDATE
        if sid == 0:
            self._forward(buf, run, pos)
            self._client_conn_window(http2.read_u32(buf, pos + 9) & 0x7FFFFFFF)
            return nxt
        if stream is None or stream.local is None:
            return run
        self._forward(buf, run, pos)
        stream.local.send_window += http2.read_u32(buf, pos + 9) & 0x7FFFFFFF
        self._pump_local(stream)
        return nxt

    def _forward(self, buf: bytes, start: int, stop: int) -> None:
        if stop > start:
            self._up_write(buf if start == 0 and stop == len(buf) else buf[start:stop])

    def _client_settings(self, settings: Dict[int, int]) -> None:
        """The client's SETTINGS (on their way to the runtime, which acknowledges them).

        For the frames the relay itself sends: a smaller window or frame size applies
        at once; a larger one only once the runtime's SETTINGS ACK is on its way to the
        client, because until the client has seen that ACK it may still enforce the
        old value (grpc-core does).
        """
        if http2.SETTINGS_HEADER_TABLE_SIZE in settings:
            self.server_headers.allow_table_size(settings[http2.SETTINGS_HEADER_TABLE_SIZE])
        self.unacked.append(settings)
        self._apply_client_limits(increase=False)

    def _client_settings_acked(self) -> None:
        """The runtime acknowledged the client's oldest unacknowledged SETTINGS."""
        if self.unacked:
            self.acked.update(self.unacked.popleft())
            self._apply_client_limits(increase=True)

    def _apply_client_limits(self, increase: bool) -> None:
        def target(ident: int, default: int) -> int:
            values = [self.acked.get(ident, default)]
            values += [s[ident] for s in self.unacked if ident in s]
            return min(values) if increase else min(values[-1], values[0])

        frame = target(http2.SETTINGS_MAX_FRAME_SIZE, http2.DEFAULT_MAX_FRAME)
        if frame < self.client_max_frame or (increase and frame > self.client_max_frame):
            self.client_max_frame = frame
        window = target(http2.SETTINGS_INITIAL_WINDOW_SIZE, http2.DEFAULT_WINDOW)
        delta = window - self.client_initial_window
        if delta < 0 or (increase and delta > 0):
            self.client_initial_window = window
            for stream in self.streams.values():
                if stream.local is not None:
                    stream.local.send_window += delta
            if delta > 0 and self.waiting:
                # after this read's frames (the ACK among them) have been written
                self.release_pending = True

    def _client_conn_window(self, inc: int) -> None:
        """A client WINDOW_UPDATE on the connection: keep what pays for our own replies."""
        self.down_window += inc
        skim = min(inc, self.debt)
        self.debt -= skim
        inc -= skim
        if inc:
            self._up_write(http2.window_update(0, inc))
        self._release()

    def _client_headers_frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if ftype == http2.HEADERS:
            if self.cblock is not None:
                raise http2.ProtocolError("HEADERS while a header block is open")
            fragment = http2.strip_padding(flags, payload, True)
            if flags & http2.FLAG_END_HEADERS:
                self._client_block(sid, flags, bytes(fragment))
            else:
                self.cblock = (sid, flags, [bytes(fragment)])
        else:
            if self.cblock is None or self.cblock[0] != sid:
                raise http2.ProtocolError("CONTINUATION without an open header block")
            self.cblock[2].append(bytes(payload))
            if flags & http2.FLAG_END_HEADERS:
                bsid, bflags, frags = self.cblock
                self.cblock = None
                self._client_block(bsid, bflags, b"".join(frags))

    def _client_block(self, sid: int, flags: int, block: bytes) -> None:
        headers = self.client_headers.decode(block)
        if sid in self.streams or sid <= self.last_sid:
            return  # trailers from the client, or a block for a finished stream
        if self.draining:
            # Sent after our GOAWAY: the client treats it as refused (and may retry it
            # elsewhere), so the runtime must not run it.
            self._up_write(http2.rst_stream(sid, http2.CANCEL))
            self._emit(http2.rst_stream(sid, http2.REFUSED_STREAM), 0)
            self._forget(sid)  # its DATA, if any follows, is not the runtime's
            return
        self.last_sid = sid
        method = ""
        for name, value in headers:
            if name == ":path":
                method = value
                break
        relay = self.relay
        want, observers = relay._want(method)
        stream = _Stream(sid, method, want)
        stream.observers = observers
        self.streams[sid] = stream
        hook = relay._hooks.get(method)
        if hook is not None or (relay.split and method.startswith(_IMAGE_PREFIX)):
            # Answer it ourselves; tell the runtime to forget the stream it just saw.
            self._up_write(http2.rst_stream(sid, http2.CANCEL))
            stream.local = _LocalCall(stream, headers, self.client_initial_window, hook)
            if flags & http2.FLAG_END_STREAM:
                self._dispatch_local(stream)

    def _local_data(self, stream: _Stream, flags: int, payload: bytes, length: int) -> None:
        """Request bytes of a call we answer: keep them and give the window back."""
        call = stream.local
        assert call is not None
        if length:
            self.down.write(  # type: ignore[union-attr]
                http2.window_update(0, length) + http2.window_update(stream.sid, length)
            )
        call.body += http2.strip_padding(flags, payload, False)
        if len(call.body) > MAX_MESSAGE + 5:
            call.finished = True
            self._local_reply(
                stream,
                _Result(
                    [], grpc.StatusCode.RESOURCE_EXHAUSTED, "cri-resmgr: request larger than 16 MiB"
                ),
            )
            return
        if flags & http2.FLAG_END_STREAM:
            self._dispatch_local(stream)

    # -- runtime -> client

    def server_bytes(self, data: bytes) -> None:
        buf = self.sbuf + data if self.sbuf else data
        try:
            self._server_frames(buf)
        except http2.ProtocolError as exc:
            self._protocol_error(f"runtime: {exc}")

    def _server_frames(self, buf: bytes) -> None:
        """Parse runtime frames; forward runs of them unchanged, re-encode header blocks.

        The hot path (DATA, HEADERS) is inline; other frames the relay cares about go to
        `_server_control`. DATA of streams the relay answers itself is dropped.
        """
        end = len(buf)
        pos = run = run_cost = 0
        out: List[bytes] = []
        streams = self.streams
        while end - pos >= 9:
            length, ftype, flags, sid = http2.read_header(buf, pos)
            nxt = pos + 9 + length
            if nxt > end:
                break
            cut = False  # the frame is not forwarded as it is
            if ftype == http2.DATA:
                stream = streams.get(sid)
                if (stream.local is not None) if stream is not None else (sid in self.gone):
                    cut = True  # data for a stream we reset: give the runtime its window back
                    if length:
                        self._up_write(http2.window_update(0, length))
                else:
                    if stream is not None and stream.reply is not None:
                        stream.keep_reply(http2.strip_padding(flags, buf[pos + 9 : nxt], False))
                    if self.held or (self.debt and length > self.down_window - run_cost):
                        # The runtime counts on window our own replies used: wait for more.
                        self._emit_run(buf, run, pos, run_cost, out)
                        run, run_cost = nxt, 0
                        if out:  # what came before goes first
                            self._emit(b"".join(out) if len(out) > 1 else out[0], 0)
                            out.clear()
                        self._emit(buf[pos:nxt], length)
                    else:
                        run_cost += length
            elif ftype in (http2.HEADERS, http2.CONTINUATION):
                cut = True
                encoded = self._server_headers_frame(ftype, flags, sid, buf[pos + 9 : nxt])
                if encoded:
                    self._emit_run(buf, run, pos, run_cost, out)
                    run, run_cost = nxt, 0
                    out.append(encoded)
            elif sid or ftype != http2.WINDOW_UPDATE:
                cut = self._server_control(ftype, flags, sid, buf[pos + 9 : nxt])
            if cut:
                self._emit_run(buf, run, pos, run_cost, out)
                run, run_cost = nxt, 0
            pos = nxt
        self._emit_run(buf, run, pos, run_cost, out)
        self.sbuf = buf[pos:] if pos < end else b""
        if out:
            self._emit(b"".join(out) if len(out) > 1 else out[0], 0)
        if self.release_pending:  # a larger client window is in force from here on
            self.release_pending = False
            self._release()

    def _server_control(self, ftype: int, flags: int, sid: int, payload: bytes) -> bool:
        """Runtime frames other than DATA, HEADERS and connection WINDOW_UPDATE.

        Returns True when the frame must not reach the client.
        """
        if ftype == http2.PUSH_PROMISE:
            raise http2.ProtocolError("PUSH_PROMISE is not used by gRPC")
        if sid:
            stream = self.streams.get(sid)
            if stream is None:
                return sid in self.gone  # a late frame for a stream we answered
            if stream.local is not None:
                return True  # the runtime side of a stream we answer: ours to ignore
            if ftype == http2.RST_STREAM:
                rst = http2.read_u32(payload)
                stream.code = _RST_TO_CODE.get(rst, 13)
                stream.details = f"stream reset by the runtime (HTTP/2 error code {rst})"
                self._finish(self.streams.pop(sid))
            return False
        if ftype == http2.SETTINGS:
            if flags & http2.FLAG_ACK:
                self._client_settings_acked()
            else:
                size = http2.parse_settings(payload).get(http2.SETTINGS_HEADER_TABLE_SIZE)
                if size is not None:
                    self.client_headers.allow_table_size(size)
        elif ftype == http2.GOAWAY:
            return self.draining  # we already sent ours; a second one could confuse it
        return False

    def _emit_run(self, buf: bytes, start: int, stop: int, cost: int, out: List[bytes]) -> None:
        """Queue frames forwarded unchanged; `cost` = their DATA bytes (window they use)."""
        if stop > start:
            out.append(buf if start == 0 and stop == len(buf) else buf[start:stop])
            self.down_window -= cost
        if out and self.held:
            self._emit(b"".join(out), 0)
            out.clear()

    def _emit(self, data: bytes, cost: int) -> None:
        """Write frames to the client in order; DATA waits while the real window is short.

        `cost` > 0 means `data` is exactly one DATA frame of that payload length.
        """
        if self.held or (cost and self.debt and cost > self.down_window):
            self.held.append((data, cost))
            if len(self.held) == 1:
                self._flush_held(False)
            return
        self.down_window -= cost
        if self.down is not None:
            self.down.write(data)

    def _flush_held(self, force: bool) -> None:
        """Write held frames, in order, as far as the client's window allows.

        A DATA frame larger than the window is split: the client sees a window that
        is short but not empty as no reason to send WINDOW_UPDATE, so waiting for the
        whole frame to fit could wait forever.
        """
        held = self.held
        while held:
            data, cost = held[0]
            if cost and self.debt and cost > self.down_window and not force:
                room = self.down_window
                if room <= 0 or data[4] & http2.FLAG_PADDED:
                    return
                flags, sid = http2.read_header(data, 0)[2:]
                head = http2.frame(http2.DATA, 0, sid, data[9 : 9 + room])
                held[0] = (http2.frame(http2.DATA, flags, sid, data[9 + room :]), cost - room)
                self.down_window -= room
                if self.down is not None:
                    self.down.write(head)
                return
            held.popleft()
            self.down_window -= cost
            if self.down is not None:
                self.down.write(data)

    def _release(self, force: bool = False) -> None:
        """The client's window grew: write what was held back, then waiting replies."""
        self._flush_held(force)
        if self.waiting and not self.held:
            for stream in list(self.waiting.values()):
                self._pump_local(stream)

    def _server_headers_frame(
        self, ftype: int, flags: int, sid: int, payload: bytes
    ) -> Optional[bytes]:
        if ftype == http2.HEADERS:
            if self.sblock is not None:
                raise http2.ProtocolError("HEADERS while a header block is open")
            fragment = bytes(http2.strip_padding(flags, payload, True))
            if not flags & http2.FLAG_END_HEADERS:
                self.sblock = (sid, flags, [fragment])
                return None
            return self._server_block(sid, flags, fragment)
        if self.sblock is None or self.sblock[0] != sid:
            raise http2.ProtocolError("CONTINUATION without an open header block")
        self.sblock[2].append(bytes(payload))
        if not flags & http2.FLAG_END_HEADERS:
            return None
        bsid, bflags, frags = self.sblock
        self.sblock = None
        return self._server_block(bsid, bflags, b"".join(frags))

    def _server_block(self, sid: int, flags: int, block: bytes) -> Optional[bytes]:
        headers = self.server_headers.decode(block)
        stream = self.streams.get(sid)
        if (stream.local is not None) if stream is not None else (sid in self.gone):
            return None  # the runtime answering a stream we reset: not for the client
        end_stream = flags & http2.FLAG_END_STREAM
        if stream is not None and stream.want and not stream.answered:
            stream.answered = time.monotonic()
        if end_stream and stream is not None:
            code, details = 2, ""  # UNKNOWN unless the trailers say
            for name, value in headers:
                if name == "grpc-status":
                    code = int(value) if value.isdigit() else 2
                elif name == "grpc-message":
                    details = http2.percent_decode(value)
            stream.code, stream.details = code, details
            self._finish(self.streams.pop(sid))
        encoded = http2.encode_block(headers, first=self.first_block)
        self.first_block = False
        return http2.split_frames(http2.HEADERS, end_stream, sid, encoded, self.client_max_frame)

    # -- calls answered by the relay

    def _dispatch_local(self, stream: _Stream) -> None:
        call = stream.local
        assert call is not None
        if stream.request is not None:
            stream.keep_request(call.body)
        relay = self.relay
        executor = relay._executor if call.hook is not None else relay._plain_executor
        fut = self.loop.run_in_executor(executor, relay._run_local, call, bytes(call.body), self)
        fut.add_done_callback(lambda f: self._local_done(stream, f))

    def _local_done(self, stream: _Stream, fut: asyncio.Future) -> None:
        if fut.cancelled():  # shutdown cancelled it before it ran: the connection closes
            return
        try:
            result = fut.result()
        except BaseException as exc:  # noqa: BLE001 - the executor itself failed
            log.exception("relay: local call %s failed", stream.method)
            result = _Result([], grpc.StatusCode.INTERNAL, f"cri-resmgr: {exc}")
        self._local_reply(stream, result)

    def stream_message(
        self, stream: _Stream, message: bytes, initial_metadata: Sequence[Tuple[str, Any]] = ()
    ) -> None:
        """Send one reply message of a call we answer (on the loop, via call_soon_threadsafe)."""
        call = stream.local
        assert call is not None
        if call.finished or self.closed:
            return
        self._local_headers(stream, initial_metadata)
        framed = http2.grpc_frame(message)
        if stream.reply is not None:
            stream.keep_reply(framed)
        call.pending.append(framed)
        self._pump_local(stream)

    def _local_headers(self, stream: _Stream, metadata: Sequence[Tuple[str, Any]]) -> None:
        call = stream.local
        assert call is not None
        if call.headers_sent:
            return
        call.headers_sent = True
        headers = [(":status", "200"), ("content-type", "application/grpc")]
        headers += _metadata_headers(metadata)
        self._write_block(stream.sid, 0, headers)

    def _write_block(self, sid: int, flags: int, headers: Sequence[Tuple[str, str]]) -> None:
        block = http2.encode_block(headers, first=self.first_block)
        self.first_block = False
        self._emit(http2.split_frames(http2.HEADERS, flags, sid, block, self.client_max_frame), 0)

    def _local_reply(self, stream: _Stream, result: _Result) -> None:
        call = stream.local
        assert call is not None
        if self.closed or self.streams.get(stream.sid) is not stream:
            return  # the client went away or reset the stream
        call.finished = True
        stream.code, stream.details = result.code.value[0], result.details
        status = [("grpc-status", str(result.code.value[0]))]
        if result.details:
            status.append(("grpc-message", http2.percent_encode(result.details)))
        status += _metadata_headers(result.trailing_metadata, _NOT_TRAILING_METADATA)
        if not call.headers_sent and not result.messages:
            # Trailers-only response.
            call.headers_sent = True
            headers = [(":status", "200"), ("content-type", "application/grpc")]
            headers += _metadata_headers(result.initial_metadata)
            self._write_block(stream.sid, http2.FLAG_END_STREAM, headers + status)
            self._finish(self.streams.pop(stream.sid))
            return
        self._local_headers(stream, result.initial_metadata)
        for message in result.messages:
            framed = http2.grpc_frame(message)
            if stream.reply is not None:
                stream.keep_reply(framed)
            call.pending.append(framed)
        call.trailers = http2.encode_block(status)
        self._pump_local(stream)

    def _pump_local(self, stream: _Stream) -> None:
        """Write pending reply data as the windows allow, then the trailers."""
        call = stream.local
        assert call is not None
        while call.pending:
            room = min(call.send_window, self.down_window, self.client_max_frame)
            if self.held or room <= 0:
                # _release() (connection window) or a stream WINDOW_UPDATE calls again.
                self.waiting[stream.sid] = stream
                return
            chunk = call.pending[0]
            piece, rest = chunk[:room], chunk[room:]
            if rest:
                call.pending[0] = rest
            else:
                call.pending.pop(0)
            call.send_window -= len(piece)
            self.debt += len(piece)
            self._emit(http2.frame(http2.DATA, 0, stream.sid, piece), len(piece))
        self.waiting.pop(stream.sid, None)
        if call.trailers is not None:
            block, call.trailers = call.trailers, None
            self._emit(
                http2.split_frames(
                    http2.HEADERS, http2.FLAG_END_STREAM, stream.sid, block, self.client_max_frame
                ),
                0,
            )
            if self.streams.get(stream.sid) is stream:
                self._finish(self.streams.pop(stream.sid))

    # -- bookkeeping

    def _finish(self, stream: _Stream) -> None:
        """A call is over (the stream is already out of `streams`)."""
        if stream.local is not None:
            self.waiting.pop(stream.sid, None)
            self._forget(stream.sid)
        if stream.want:
            self.relay._observe(stream)
        if self.draining:
            self.relay._check_drained()

    def _forget(self, sid: int) -> None:
        """Remember a stream the relay reset upstream: late frames for it are dropped."""
        gone = self.gone
        gone[sid] = None
        if len(gone) > _GONE_KEPT:
            del gone[next(iter(gone))]

    def _protocol_error(self, message: str) -> None:
        log.warning("relay: closing connection: %s", message)
        if self.down is not None:
            self.down.close()
        if self.up is not None:
            self.up.close()

    def drain(self) -> None:
        """Shutdown: tell the client to open no new streams here."""
        if self.draining or self.closed:
            return
        self.draining = True
        if self.down is not None and not self.preface:
            self._emit(http2.goaway(self.last_sid), 0)


# --- the relay -----------------------------------------------------------------


class Relay:
    """The relay server. Build it, `await start(path)`, `await stop()`.

    `hooks` maps full method paths to `Hook`s; `observers` see finished calls. Both
    can be replaced while running (`set_hooks`, `set_observers`); calls in flight keep
    what they started with. Hooks run in `hook_workers` threads at the same time (a
    pod's containers are created in parallel; the hooks lock what must be serialized);
    calls the relay answers without a hook have a pool of their own.
    """

    def __init__(
        self,
        runtime_socket: str,
        image_socket: Optional[str] = None,
        hooks: Optional[Mapping[str, Hook]] = None,
        observers: Sequence[Observer] = (),
        hook_workers: int = 8,
    ) -> None:
        self.runtime_target = sockets.socket_path(runtime_socket)
        self.image_target = sockets.socket_path(image_socket or runtime_socket)
        self.split = self.image_target != self.runtime_target
        self._hooks: Dict[str, Hook] = dict(hooks or {})
        self._observers: Tuple[Observer, ...] = tuple(observers)
        self._wants: Dict[str, Tuple[int, Tuple[Observer, ...]]] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=hook_workers, thread_name_prefix="cri-hook"
        )
        # Calls answered without a hook (image calls with a separate image socket): a
        # long PullImage must not take a worker hooks need.
        self._plain_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=64, thread_name_prefix="cri-forward"
        )
        self._channels: Dict[str, grpc.Channel] = {}
        self._callables: Dict[Tuple[str, str, bool], Any] = {}
        self._channel_lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self._server: Optional[asyncio.base_events.Server] = None
        self._socket_path: Optional[str] = None
        self._draining = False
        self._drained: Optional[asyncio.Event] = None  # made on the loop (python 3.9)
        self._runtime_ok: Dict[str, bool] = {}
        self.loop: Optional[asyncio.AbstractEventLoop] = None

    # -- configuration

    def set_hooks(self, hooks: Mapping[str, Hook]) -> None:
        self._hooks = dict(hooks)

    def set_observers(self, observers: Sequence[Observer]) -> None:
        self._observers = tuple(observers)
        self._wants = {}

    def _want(self, method: str) -> Tuple[int, Tuple[Observer, ...]]:
        """What the observers want of `method`'s calls, and which observers."""
        entry = self._wants.get(method)
        if entry is None:
            wanted = [(o.wants(method), o) for o in self._observers]
            level = max((w for w, _ in wanted), default=WANT_NONE)
            entry = (level, tuple(o for w, o in wanted if w > WANT_NONE))
            if len(self._wants) < _WANTS_KEPT:
                self._wants[method] = entry
        return entry

    def _observe(self, stream: _Stream) -> None:
        """A call is over: its observers (those of when it started) get its record."""
        local = stream.local
        if local is not None:
            runtime: Optional[float] = local.runtime if local.hook is not None else None
        elif stream.sent and stream.answered >= stream.sent:
            runtime = stream.answered - stream.sent
        else:
            runtime = None
        record = CallRecord(
            method=stream.method,
            start=stream.start,
            end=time.monotonic(),
            wall=stream.wall,
            code=stream.code,
            details=stream.details,
            request=bytes(stream.request) if stream.request is not None else None,
            reply=bytes(stream.reply) if stream.reply is not None else None,
            hooked=local is not None and local.hook is not None,
            runtime=runtime,
        )
        for observer in stream.observers:
            try:
                observer.observe(record)
            except Exception:  # noqa: BLE001 - an observer must never break a call
                log.exception("relay: observer %r failed", observer)

    def _target_for(self, method: str) -> str:
        if method.startswith(_IMAGE_PREFIX):
            return self.image_target
        return self.runtime_target

    # -- runtime reachability, logged once per change

    def _runtime_down(self, target: str, exc: OSError) -> None:
        if self._runtime_ok.get(target, True):
            log.warning(
                "runtime at %s does not accept connections (%s); "
                "calls fail with UNAVAILABLE until it is back",
                target,
                exc.strerror,
            )
        self._runtime_ok[target] = False

    def _runtime_up(self, target: str) -> None:
        if self._runtime_ok.get(target) is False:
            log.info("runtime at %s is reachable again", target)
        self._runtime_ok[target] = True

    def runtime_reachable(self) -> bool:
        """False when the last connection attempt to a runtime socket failed."""
        return all(self._runtime_ok.values()) if self._runtime_ok else True

    # -- local calls (worker threads)

    def _callable(self, method: str, streaming: bool) -> Any:
        target = self._target_for(method)
        key = (target, method, streaming)
        fn = self._callables.get(key)
        if fn is None:
            with self._channel_lock:
                channel = self._channels.get(target)
                if channel is None:
                    channel = grpc.insecure_channel("unix:" + target, options=GRPC_OPTIONS)
                    self._channels[target] = channel
                if streaming:
                    fn = channel.unary_stream(method)
                else:
                    fn = channel.unary_unary(method)
                self._callables[key] = fn
        return fn

    def _run_local(self, call: _LocalCall, body: bytes, conn: _Conn) -> _Result:
        """Worker thread: run the hook (or plain forwarding) for a call we answer."""
        method = call.stream.method
        try:
            messages = [m for compressed, m in http2.grpc_messages(body) if not compressed]
            if len(messages) != 1:
                raise ForwardError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    "cri-resmgr: expected one uncompressed request message",
                )
            request = messages[0]
            info = cri_methods.METHODS.get(method)
            if call.hook is None and info is not None and info.server_streaming:
                return self._run_stream(call, request, conn)
            state: Dict[str, Any] = {}

            def forward(req: bytes) -> bytes:
                return self._forward_unary(call, req, state)

            if call.hook is not None:
                if call.info.cancelled.is_set():
                    raise ForwardError(grpc.StatusCode.CANCELLED, "cancelled by the client")
                reply = call.hook(request, forward, call.info)
                if not isinstance(reply, bytes):
                    if not isinstance(reply, (bytearray, memoryview)):
                        raise TypeError(f"hook returned {type(reply).__name__}, not bytes")
                    reply = bytes(reply)
            else:
                reply = forward(request)
            return _Result(
                [reply], grpc.StatusCode.OK, "", state.get("initial", ()), state.get("trailing", ())
            )
        except ForwardError as exc:
            return _Result([], exc.code, exc.details, (), exc.trailing_metadata)
        except http2.ProtocolError as exc:
            return _Result([], grpc.StatusCode.INTERNAL, f"cri-resmgr: {exc}")
        except Exception as exc:  # noqa: BLE001 - the one error boundary of hooks
            name, details = errors.grpc_status(exc)
            if not isinstance(exc, (errors.Error, TimeoutError)):
                log.exception("relay: hook for %s failed", method)
            else:
                log.warning("relay: %s refused: %s", method, details)
            return _Result([], grpc.StatusCode[name], details)

    def _forward_unary(self, call: _LocalCall, request: bytes, state: Dict[str, Any]) -> bytes:
        if call.info.cancelled.is_set():
            raise ForwardError(grpc.StatusCode.CANCELLED, "cancelled by the client")
        fn = self._callable(call.stream.method, False)
        fut = fn.future(request, timeout=call.info.remaining(), metadata=call.info.metadata)
        with call.lock:
            call.future = fut
        if call.info.cancelled.is_set():
            fut.cancel()
        started = time.monotonic()
        try:
            reply = fut.result()
        except grpc.RpcError as exc:
            raise ForwardError(
                exc.code(),
                exc.details() or "",  # type: ignore[attr-defined]
                exc.trailing_metadata() or (),
            ) from None  # type: ignore[attr-defined]
        except grpc.FutureCancelledError:
            raise ForwardError(grpc.StatusCode.CANCELLED, "cancelled by the client") from None
        finally:
            call.runtime += time.monotonic() - started
            with call.lock:
                call.future = None
        state["initial"] = fut.initial_metadata() or ()
        state["trailing"] = fut.trailing_metadata() or ()
        return reply  # type: ignore[no-any-return]

    def _run_stream(self, call: _LocalCall, request: bytes, conn: _Conn) -> _Result:
        """Forward a server-streaming call to the other runtime socket, message by message."""
        fn = self._callable(call.stream.method, True)
        it = fn(request, timeout=call.info.remaining(), metadata=call.info.metadata)
        with call.lock:
            call.future = it
        loop = self.loop
        assert loop is not None
        try:
            initial: Optional[Sequence[Tuple[str, Any]]] = None
            for message in it:
                if initial is None:
                    initial = it.initial_metadata() or ()
                loop.call_soon_threadsafe(conn.stream_message, call.stream, message, initial)
            return _Result([], grpc.StatusCode.OK, "", (), it.trailing_metadata() or ())
        except grpc.RpcError as exc:
            return _Result(
                [],
                exc.code(),
                exc.details() or "",  # type: ignore[attr-defined]
                (),
                exc.trailing_metadata() or (),
            )  # type: ignore[attr-defined]

    # -- lifecycle

    async def start(self, path: str, mode: int = 0o660, owner_of: Optional[str] = None) -> None:
        """Listen on `path`: the socket appears, fully set up, only once it accepts calls.

        The socket is bound under a temporary name, given `mode` and the owner/group of
        `owner_of` (the runtime socket), then renamed into place. A stale socket is
        replaced; a live one (another server answers there) is an error.
        """
        self.loop = asyncio.get_running_loop()
        self._drained = asyncio.Event()
        path = sockets.socket_path(path)
        loop = self.loop

        async def serve(sock: socket.socket) -> asyncio.base_events.Server:
            return await loop.create_unix_server(lambda: _Conn(self), sock=sock)

        self._server = await sockets.listen(
            path,
            mode,
            serve,
            owner_of=owner_of,
            hint="is cri-resmgr already running? stop it or choose another -relay-socket",
            key="[relay] socket (-relay-socket)",
        )
        self._socket_path = path  # ours now: stop() removes it
        log.info(
            "relay listening on %s, forwarding to %s%s",
            path,
            self.runtime_target,
            "" if self.image_target == self.runtime_target else f" (images: {self.image_target})",
        )

    def _busy(self) -> bool:
        return any(c.streams for c in self._conns)

    def _check_drained(self) -> None:
        if self._draining and self._drained is not None and not self._busy():
            self._drained.set()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting, let calls in flight finish for up to `grace` s, then close.

        Hooks not started yet are cancelled; hooks running are waited for (within the
        grace period, at least a second) so that their state is complete before the
        caller saves it: a hook's own runtime calls end by their deadlines.
        """
        deadline = time.monotonic() + grace
        self._draining = True
        if self._server is not None:
            self._server.close()
        if self._socket_path:
            sockets.release(self._socket_path)
        for conn in list(self._conns):
            conn.drain()
        if self._drained is not None and self._busy():
            self._drained.clear()
            try:
                await asyncio.wait_for(self._drained.wait(), timeout=grace)
            except asyncio.TimeoutError:
                pass
        if self._busy():
            log.warning(
                "shutdown: %d calls still in flight after %.1fs; closing",
                sum(len(c.streams) for c in self._conns),
                grace,
            )
        for conn in list(self._conns):
            if conn.down is not None:
                conn.down.close()
        if self._server is not None:
            await self._server.wait_closed()
        loop = asyncio.get_running_loop()
        for executor in (self._executor, self._plain_executor):
            executor.shutdown(wait=False, cancel_futures=True)
        try:
            await asyncio.wait_for(
                loop.run_in_executor(None, self._executor.shutdown, True),
                timeout=max(1.0, deadline - time.monotonic()),
            )
        except asyncio.TimeoutError:
            log.warning("shutdown: hooks still running; their calls end by their deadlines")
        for channel in self._channels.values():
            channel.close()

    def connections(self) -> int:
        return len(self._conns)


def wait_for_runtime(
    address: str, timeout: Optional[float] = None, sleep: Callable[[float], None] = time.sleep
) -> str:
    """Block until the runtime answers Version; return its name and version.

    Retries with exponential backoff (0.1 s doubling to 5 s). Logs one line when it
    starts waiting and one when the runtime answers. Raises RuntimeUnavailable when
    `timeout` (seconds) passes.
    """
    path = sockets.socket_path(address)
    deadline = None if timeout is None else time.monotonic() + timeout
    delay, waiting = 0.1, False
    with cri_client.CriClient("unix:" + path, options=GRPC_OPTIONS) as client:
        while True:
            try:
                reply = client.version(timeout=2.0)
                if waiting:
                    log.info(
                        "runtime at %s answers: %s %s",
                        path,
                        reply.runtime_name,
                        reply.runtime_version,
                    )
                return f"{reply.runtime_name} {reply.runtime_version}"
            except grpc.RpcError as exc:
                if not waiting:
                    log.warning(
                        "waiting for the runtime at %s to answer Version (%s)",
                        path,
                        exc.code().name,
                    )  # type: ignore[attr-defined]
                    waiting = True
            if deadline is not None and time.monotonic() + delay > deadline:
                raise errors.RuntimeUnavailable(
                    f"runtime at {path} did not answer Version within {timeout:g}s"
                )
            sleep(delay)
            delay = min(delay * 2, 5.0)
