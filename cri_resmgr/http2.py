"""HTTP/2 framing and header compression, as much as a transparent gRPC relay needs.

This module owns the wire format below gRPC (RFC 9113 frames, RFC 7541 HPACK) for
`relay.py`. It does not implement an HTTP/2 endpoint: the relay forwards the frames
of both peers and only looks at headers, window updates and settings. What lives here:

* frame constants, a frame header reader and frame builders;
* `BlockDecoder`: an HPACK decoder that memoizes decoded header blocks while its
  dynamic table does not change (in steady state gRPC peers send the same few indexed
  blocks for every call, so decoding becomes a dict lookup);
* `encode_block`: a stateless HPACK encoder (literal fields, never indexed), so that
  blocks the relay writes never touch the peer's dynamic table;
* gRPC message framing (the 5-byte length prefix) and `grpc-timeout` parsing.

Sizes are in bytes; timeouts in seconds.
"""

from __future__ import annotations

import functools
import struct
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 section 6).
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# Flags.
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

# SETTINGS identifiers.
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5

# Error codes.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9

DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME = 16384
DEFAULT_TABLE_SIZE = 4096
MAX_WINDOW = 2**31 - 1

FRAME_HEADER = 9
_HDR = struct.Struct(">BHBBI")  # length is 24 bits: high byte + low 16 bits
_WINDOW = struct.Struct(">I")
_GOAWAY = struct.Struct(">II")
_SETTING = struct.Struct(">HI")

Headers = Tuple[Tuple[str, str], ...]


class ProtocolError(Exception):
    """A peer broke HTTP/2 framing or header compression; the connection must close."""


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """Build one frame: 9-byte header + payload."""
    n = len(payload)
    return _HDR.pack(n >> 16, n & 0xFFFF, ftype, flags, stream_id & 0x7FFFFFFF) + payload


def window_update(stream_id: int, increment: int) -> bytes:
    """A WINDOW_UPDATE frame granting `increment` bytes (1 .. 2**31-1)."""
    return frame(WINDOW_UPDATE, 0, stream_id, _WINDOW.pack(increment & 0x7FFFFFFF))


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, _WINDOW.pack(code))


def goaway(last_stream_id: int, code: int = NO_ERROR, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, _GOAWAY.pack(last_stream_id & 0x7FFFFFFF, code) + debug)


def read_header(buf: bytes | bytearray | memoryview, pos: int) -> Tuple[int, int, int, int]:
    """Return (length, type, flags, stream id) of the frame header at `pos`."""
    hi, lo, ftype, flags, sid = _HDR.unpack_from(buf, pos)
    return (hi << 16) | lo, ftype, flags, sid & 0x7FFFFFFF


def read_u32(payload: bytes | memoryview, pos: int = 0) -> int:
    return int(_WINDOW.unpack_from(payload, pos)[0])


def parse_settings(payload: bytes | memoryview) -> Dict[int, int]:
    """Settings of a SETTINGS frame payload, identifier -> value (later ones win)."""
    if len(payload) % 6:
        raise ProtocolError(f"SETTINGS payload of {len(payload)} bytes is not a multiple of 6")
    out: Dict[int, int] = {}
    for off in range(0, len(payload), 6):
        ident, value = _SETTING.unpack_from(payload, off)
        out[ident] = value
    return out


def strip_padding(flags: int, payload: bytes | memoryview, priority: bool) -> memoryview:
    """The content of a DATA/HEADERS payload without pad length, priority and padding."""
    view = memoryview(payload)
    start, end = 0, len(view)
    if flags & FLAG_PADDED:
        if end < 1:
            raise ProtocolError("padded frame without a pad length")
        end -= view[0]
        start = 1
    if priority and flags & FLAG_PRIORITY:
        start += 5
    if end < start:
        raise ProtocolError("frame padding exceeds its payload")
    return view[start:end]


def split_frames(ftype: int, flags: int, stream_id: int, payload: bytes, max_size: int) -> bytes:
    """Frames carrying `payload`, split at `max_size`.

    For HEADERS the first frame is HEADERS and the rest CONTINUATION, END_HEADERS on the
    last; END_STREAM stays on the first HEADERS frame (RFC 9113 6.2) and on the last
    DATA frame.
    """
    if len(payload) <= max_size:
        if ftype == HEADERS:
            flags |= FLAG_END_HEADERS
        return frame(ftype, flags, stream_id, payload)
    parts: List[bytes] = []
    chunks = [payload[i : i + max_size] for i in range(0, len(payload), max_size)]
    last = len(chunks) - 1
    for i, chunk in enumerate(chunks):
        if ftype == HEADERS:
            t = HEADERS if i == 0 else CONTINUATION
            f = (flags & FLAG_END_STREAM) if i == 0 else 0
            if i == last:
                f |= FLAG_END_HEADERS
        else:
            t = ftype
            f = flags if i == last else 0
        parts.append(frame(t, f, stream_id, chunk))
    return b"".join(parts)


class BlockDecoder:
    """HPACK decoder for one direction of one connection, memoizing unchanged blocks.

    A decoded block depends on the block bytes and the dynamic table. The table only
    changes when a block inserts an entry or resizes it; we count those changes and keep
    the memo for as long as the count stays put.
    """

    _MEMO_LIMIT = 512

    def __init__(self) -> None:
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = 1 << 30  # the endpoints enforce limits
        table = self._decoder.header_table
        self._generation = 0
        self._memo: Dict[bytes, Headers] = {}
        add = table.add

        def counting_add(name: bytes, value: bytes) -> None:
            self._generation += 1
            add(name, value)

        table.add = counting_add  # type: ignore[method-assign]

    def allow_table_size(self, size: int) -> None:
        """The peer advertised SETTINGS_HEADER_TABLE_SIZE = size; accept updates up to it."""
        self._decoder.max_allowed_table_size = max(self._decoder.max_allowed_table_size, size)

    def decode(self, block: bytes) -> Headers:
        """Decode one complete header block into (name, value) pairs.

        Names and values are the header bytes as latin-1 strings (one char per byte).
        """
        hit = self._memo.get(block)
        if hit is not None:
            return hit
        before = self._generation
        table = self._decoder.header_table
        size_before = table.maxsize
        try:
            raw = self._decoder.decode(block, raw=True)
        except hpack.HPACKError as exc:
            raise ProtocolError(f"header compression error: {exc}") from exc
        # Latin-1 maps bytes 1:1 to str: values need not be UTF-8 (gRPC peers send
        # -bin metadata as raw bytes once both advertise true binary metadata), and
        # encode_block turns the strings back into the very same bytes.
        headers = tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in raw)
        if self._generation != before or table.maxsize != size_before:
            self._generation += 1
            self._memo.clear()
        elif len(self._memo) < self._MEMO_LIMIT:
            self._memo[block] = headers
        return headers


# RFC 7541 appendix A: static table names, first index wins.
_STATIC_NAMES: Dict[bytes, int] = {}
for _i, (_name, _value) in enumerate(hpack.table.HeaderTable.STATIC_TABLE, start=1):
    _STATIC_NAMES.setdefault(_name, _i)


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _hpack_str(data: bytes) -> bytes:
    return _hpack_int(len(data), 7, 0) + data


def _as_bytes(s: str | bytes) -> bytes:
    return s.encode("latin-1") if isinstance(s, str) else s


_TABLE_SIZE_ZERO = b"\x20"  # dynamic table size update to 0 (RFC 7541 6.3)


def encode_block(headers: Sequence[Tuple[str | bytes, str | bytes]], first: bool = False) -> bytes:
    """Encode headers as literal fields without indexing (RFC 7541 6.2.2).

    Such blocks leave the receiver's dynamic table alone, so the relay can write them
    on a connection whose other blocks come from elsewhere. `first` prefixes a table
    size update to 0, which makes the peer's SETTINGS_HEADER_TABLE_SIZE irrelevant.
    """
    block = _encode_literal(tuple(headers))
    return _TABLE_SIZE_ZERO + block if first else block


@functools.lru_cache(maxsize=1024)
def _encode_literal(headers: Tuple[Tuple[str | bytes, str | bytes], ...]) -> bytes:
    parts = []
    for name, value in headers:
        n = _as_bytes(name)
        idx = _STATIC_NAMES.get(n)
        if idx is not None:
            parts.append(_hpack_int(idx, 4, 0x00))
        else:
            parts.append(b"\x00" + _hpack_str(n))
        parts.append(_hpack_str(_as_bytes(value)))
    return b"".join(parts)


_MSG = struct.Struct(">BI")


def grpc_frame(message: bytes) -> bytes:
    """One uncompressed gRPC length-prefixed message."""
    return _MSG.pack(0, len(message)) + message


def grpc_messages(payload: bytes) -> Iterator[Tuple[bool, bytes]]:
    """Split a stream's DATA bytes into (compressed, message) pairs; raises on a partial one."""
    pos, end = 0, len(payload)
    while pos < end:
        if end - pos < 5:
            raise ProtocolError("truncated gRPC message prefix")
        flag, n = _MSG.unpack_from(payload, pos)
        pos += 5
        if end - pos < n:
            raise ProtocolError(f"truncated gRPC message: {end - pos} of {n} bytes")
        yield bool(flag), payload[pos : pos + n]
        pos += n


_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def parse_timeout(value: str) -> Optional[float]:
    """Seconds of a `grpc-timeout` header value (e.g. `100m`), None if malformed."""
    digits = value[:-1]
    if not digits or value[-1] not in _TIMEOUT_UNITS or not (digits.isascii() and digits.isdigit()):
        return None
    return int(value[:-1]) * _TIMEOUT_UNITS[value[-1]]


_PCT_SAFE = frozenset(range(0x20, 0x7F)) - {ord("%")}


def percent_encode(message: str) -> str:
    """Encode a status message for `grpc-message` (gRPC HTTP/2 protocol spec)."""
    raw = message.encode("utf-8")
    if all(b in _PCT_SAFE for b in raw):
        return message
    return "".join(chr(b) if b in _PCT_SAFE else f"%{b:02X}" for b in raw)


def percent_decode(value: str) -> str:
    """Decode a `grpc-message` value; invalid escapes are kept as they are."""
    if "%" not in value:
        return value
    raw = value.encode("latin-1", "replace")
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x25 and _is_hex(raw[i + 1 : i + 3]):
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "replace")


def _is_hex(b: bytes) -> bool:
    return len(b) == 2 and all(c in b"0123456789abcdefABCDEF" for c in b)
