"""Tests of cri_resmgr.http2: frames, header blocks, gRPC message framing, grpc-timeout,
grpc-message percent-encoding."""

from __future__ import annotations

import random
import struct
from typing import List, Tuple

import hpack
import pytest

from cri_resmgr import http2

# --- frames ------------------------------------------------------------------------


def test_frame_header_round_trip() -> None:
    for length in (0, 1, 16384, 70000, (1 << 24) - 1):
        data = http2.frame(http2.DATA, http2.FLAG_END_STREAM, 7, b"x" * length)
        assert len(data) == 9 + length
        assert http2.read_header(data, 0) == (length, http2.DATA, http2.FLAG_END_STREAM, 7)
    # The reserved bit of the stream id is ignored both ways.
    data = http2.frame(http2.HEADERS, 0, (1 << 31) | 5)
    assert http2.read_header(b"junk" + data, 4) == (0, http2.HEADERS, 0, 5)


def test_control_frames() -> None:
    wu = http2.window_update(3, 1000)
    assert http2.read_header(wu, 0) == (4, http2.WINDOW_UPDATE, 0, 3)
    assert http2.read_u32(wu, 9) == 1000
    assert http2.read_u32(http2.window_update(0, http2.MAX_WINDOW)[9:]) == http2.MAX_WINDOW
    rst = http2.rst_stream(9, http2.CANCEL)
    assert http2.read_header(rst, 0) == (4, http2.RST_STREAM, 0, 9)
    assert http2.read_u32(rst[9:]) == http2.CANCEL
    ga = http2.goaway(11, http2.NO_ERROR, b"bye")
    assert http2.read_header(ga, 0) == (11, http2.GOAWAY, 0, 0)
    assert struct.unpack(">II", ga[9:17]) == (11, 0) and ga[17:] == b"bye"


def test_parse_settings() -> None:
    payload = struct.pack(">HIHIHI", 4, 1 << 20, 1, 0, 4, 99)
    assert http2.parse_settings(payload) == {4: 99, 1: 0}  # later ones win
    assert http2.parse_settings(b"") == {}
    with pytest.raises(http2.ProtocolError):
        http2.parse_settings(b"\0" * 7)


def test_strip_padding() -> None:
    assert bytes(http2.strip_padding(0, b"abc", True)) == b"abc"
    padded = b"\x02" + b"abc" + b"\0\0"
    assert bytes(http2.strip_padding(http2.FLAG_PADDED, padded, False)) == b"abc"
    prio = b"\0\0\0\1\x10" + b"abc"
    assert bytes(http2.strip_padding(http2.FLAG_PRIORITY, prio, True)) == b"abc"
    assert bytes(http2.strip_padding(http2.FLAG_PRIORITY, prio, False)) == prio  # DATA
    both = b"\x01" + b"\0\0\0\1\x10" + b"abc" + b"\0"
    flags = http2.FLAG_PADDED | http2.FLAG_PRIORITY
    assert bytes(http2.strip_padding(flags, both, True)) == b"abc"
    with pytest.raises(http2.ProtocolError):
        http2.strip_padding(http2.FLAG_PADDED, b"", False)
    with pytest.raises(http2.ProtocolError):
        http2.strip_padding(http2.FLAG_PADDED, b"\x05ab", False)


def _frames(data: bytes) -> List[Tuple[int, int, int, bytes]]:
    out = []
    pos = 0
    while pos < len(data):
        length, ftype, flags, sid = http2.read_header(data, pos)
        out.append((ftype, flags, sid, data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    assert pos == len(data)
    return out


def test_split_frames_headers() -> None:
    block = bytes(range(256)) * 10  # 2560 bytes
    frames = _frames(http2.split_frames(http2.HEADERS, http2.FLAG_END_STREAM, 5, block, 1000))
    assert [(f[0], f[1], f[2], len(f[3])) for f in frames] == [
        (http2.HEADERS, http2.FLAG_END_STREAM, 5, 1000),
        (http2.CONTINUATION, 0, 5, 1000),
        (http2.CONTINUATION, http2.FLAG_END_HEADERS, 5, 560),
    ]
    assert b"".join(f[3] for f in frames) == block
    # Fits exactly: one frame with both flags.
    one = _frames(http2.split_frames(http2.HEADERS, http2.FLAG_END_STREAM, 5, block, 2560))
    assert [(f[0], f[1]) for f in one] == [
        (http2.HEADERS, http2.FLAG_END_STREAM | http2.FLAG_END_HEADERS)
    ]
    # Without END_STREAM, one byte over: two frames.
    two = _frames(http2.split_frames(http2.HEADERS, 0, 5, block, 2559))
    assert [(f[0], f[1], len(f[3])) for f in two] == [
        (http2.HEADERS, 0, 2559),
        (http2.CONTINUATION, http2.FLAG_END_HEADERS, 1),
    ]
    empty = _frames(http2.split_frames(http2.HEADERS, 0, 1, b"", 16384))
    assert empty == [(http2.HEADERS, http2.FLAG_END_HEADERS, 1, b"")]


def test_split_frames_data() -> None:
    payload = b"d" * 40000
    frames = _frames(http2.split_frames(http2.DATA, http2.FLAG_END_STREAM, 3, payload, 16384))
    assert [(f[0], f[1], len(f[3])) for f in frames] == [
        (http2.DATA, 0, 16384),
        (http2.DATA, 0, 16384),
        (http2.DATA, http2.FLAG_END_STREAM, 40000 - 32768),
    ]
    assert b"".join(f[3] for f in frames) == payload


# --- header blocks -----------------------------------------------------------------


def _reference(blocks: List[bytes]) -> List[Tuple[Tuple[str, str], ...]]:
    decoder = hpack.Decoder()
    return [
        tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in decoder.decode(b, raw=True))
        for b in blocks
    ]


def test_block_decoder_memo_follows_table_changes() -> None:
    """Decoding with the memo gives what a plain decoder gives, block after block."""
    rng = random.Random(7)
    encoder = hpack.Encoder()
    names = [":path", ":status", "content-type", "grpc-status", "x-a", "x-b", "x-long"]
    values = ["/x.Y/Z", "200", "application/grpc", "0", "1", "two", "v" * 300, "é"]
    blocks = []
    for i in range(3000):
        headers = [(rng.choice(names), rng.choice(values)) for _ in range(rng.randrange(1, 6))]
        if rng.random() < 0.2:
            headers.append(hpack.NeverIndexedHeaderTuple("x-secret", str(rng.randrange(5))))
        if i % 400 == 399:
            encoder.header_table_size = rng.choice([0, 256, 4096])  # emits a size update
        blocks.append(encoder.encode(headers, huffman=rng.random() < 0.5))
        # Steady state: the same block bytes again (memo hits).
        for _ in range(rng.randrange(3)):
            blocks.append(encoder.encode(headers))
    decoder = http2.BlockDecoder()
    got = [decoder.decode(b) for b in blocks]
    assert got == _reference(blocks)
    assert len(set(blocks)) < len(blocks)


def test_block_decoder_memo_hit_and_invalidation() -> None:
    encoder = hpack.Encoder()
    decoder = http2.BlockDecoder()
    first = encoder.encode([("x-key", "one")])  # literal with indexing: adds an entry
    indexed = encoder.encode([("x-key", "one")])  # now a single index into the table
    assert decoder.decode(first) == (("x-key", "one"),)
    hit = decoder.decode(indexed)
    assert hit == (("x-key", "one"),)
    assert decoder.decode(indexed) is hit  # memoized
    # Another entry pushes x-key down: the old index bytes now mean x-other.
    assert decoder.decode(encoder.encode([("x-other", "two")])) == (("x-other", "two"),)
    assert decoder.decode(indexed) == (("x-other", "two"),)
    assert decoder.decode(encoder.encode([("x-key", "one")])) == (("x-key", "one"),)


def test_block_decoder_index_shift_after_insert() -> None:
    """Index 62 names a different entry after an insertion: a memo must not survive."""
    decoder = http2.BlockDecoder()
    add_a = b"\x40" + bytes([3]) + b"x-a" + bytes([1]) + b"1"  # literal, incremental indexing
    add_b = b"\x40" + bytes([3]) + b"x-b" + bytes([1]) + b"2"
    idx62 = bytes([0x80 | 62])
    assert decoder.decode(add_a) == (("x-a", "1"),)
    assert decoder.decode(idx62) == (("x-a", "1"),)
    assert decoder.decode(idx62) == (("x-a", "1"),)  # memo hit
    assert decoder.decode(add_b) == (("x-b", "2"),)
    assert decoder.decode(idx62) == (("x-b", "2"),)  # newest entry is 62
    assert decoder.decode(bytes([0x80 | 63])) == (("x-a", "1"),)
    # The same insertion block twice inserts twice (never memoized).
    assert decoder.decode(add_b) == (("x-b", "2"),)
    assert decoder.decode(bytes([0x80 | 64])) == (("x-a", "1"),)
    # A table size update evicts: index 62 then fails, even though it was memoized.
    assert decoder.decode(idx62) == (("x-b", "2"),)
    assert decoder.decode(b"\x20") == ()
    with pytest.raises(http2.ProtocolError):
        decoder.decode(idx62)


def test_block_decoder_table_size_setting_and_errors() -> None:
    decoder = http2.BlockDecoder()
    update_8k = b"\x3f\xe1\x3f"  # dynamic table size update to 8192
    with pytest.raises(http2.ProtocolError):
        decoder.decode(update_8k)
    decoder = http2.BlockDecoder()
    decoder.allow_table_size(8192)
    assert decoder.decode(update_8k) == ()
    with pytest.raises(http2.ProtocolError):
        decoder.decode(b"\xff\xff\xff\xff\xff\xff")  # index out of range


def test_block_decoder_raw_bytes_values() -> None:
    """Values need not be UTF-8 (true binary metadata); latin-1 strings keep the bytes."""
    encoder = hpack.Encoder()
    block = encoder.encode([(b"x-data-bin", b"\x00\xff\xfe\x80")])
    headers = http2.BlockDecoder().decode(block)
    assert headers == (("x-data-bin", "\x00\xff\xfe\x80"),)
    # ... and encode_block writes back the very same bytes.
    again = hpack.Decoder().decode(http2.encode_block(headers), raw=True)
    assert again == [(b"x-data-bin", b"\x00\xff\xfe\x80")]


def test_encode_block_decodes_back_and_leaves_the_table_alone() -> None:
    headers = [
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("grpc-status", "0"),
        ("grpc-message", "x" * 200),  # 2-byte length
        ("x-" + "n" * 130, "v" * 20000),  # long name, 3-byte length
        ("x-empty", ""),
        (b"x-bytes", b"\x01\x02"),
    ]
    decoder = hpack.Decoder()
    # Give the decoder a table to lose.
    decoder.decode(hpack.Encoder().encode([("x-kept", "yes")]))
    table_before = list(decoder.header_table.dynamic_entries)
    size_before = decoder.header_table.maxsize
    block = http2.encode_block(headers)
    decoded = decoder.decode(block, raw=True)
    assert [(n, v) for n, v in decoded] == [
        (n.encode() if isinstance(n, str) else n, v.encode() if isinstance(v, str) else v)
        for n, v in headers
    ]
    assert list(decoder.header_table.dynamic_entries) == table_before
    assert decoder.header_table.maxsize == size_before
    assert http2.encode_block(headers) == block  # cached, same bytes
    # Static-table names are referenced by index, not spelled out.
    assert b"content-type" not in http2.encode_block([("content-type", "x")])
    assert b"x-custom" in http2.encode_block([("x-custom", "x")])


def test_encode_block_first_sets_table_size_zero() -> None:
    decoder = hpack.Decoder()
    decoder.decode(hpack.Encoder().encode([("x-kept", "yes")]))
    block = http2.encode_block([("grpc-status", "0")], first=True)
    assert block.startswith(b"\x20")
    assert decoder.decode(block) == [("grpc-status", "0")]
    assert decoder.header_table.maxsize == 0
    assert not decoder.header_table.dynamic_entries


# --- gRPC messages, timeouts, status messages --------------------------------------


def test_grpc_frame_and_messages() -> None:
    messages = [b"", b"a", b"x" * 70000]
    payload = b"".join(http2.grpc_frame(m) for m in messages)
    assert http2.grpc_frame(b"ab") == b"\0\0\0\0\2ab"
    assert list(http2.grpc_messages(payload)) == [(False, m) for m in messages]
    assert list(http2.grpc_messages(b"")) == []
    assert list(http2.grpc_messages(b"\1\0\0\0\1z")) == [(True, b"z")]
    with pytest.raises(http2.ProtocolError):
        list(http2.grpc_messages(b"\0\0\0"))
    with pytest.raises(http2.ProtocolError):
        list(http2.grpc_messages(b"\0\0\0\0\5abc"))


@pytest.mark.parametrize(
    "value,seconds",
    [
        ("1H", 3600.0),
        ("2M", 120.0),
        ("30S", 30.0),
        ("100m", 0.1),
        ("2500u", 0.0025),
        ("99999999n", 0.099999999),
        ("0S", 0.0),
    ],
)
def test_parse_timeout(value: str, seconds: float) -> None:
    assert http2.parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "S", "10", "10x", "-1S", "1.5S", " 1S", "²S", "1 S"])
def test_parse_timeout_malformed(value: str) -> None:
    assert http2.parse_timeout(value) is None


@pytest.mark.parametrize(
    "message",
    ["", "plain ascii", "100%", "%41 stays", "näive ✓ 日本", "tab\tnew\nline", "\x00\x7f", "~ %"],
)
def test_percent_round_trip(message: str) -> None:
    encoded = http2.percent_encode(message)
    assert all(0x20 <= ord(c) < 0x7F for c in encoded)
    assert http2.percent_decode(encoded) == message


def test_percent_encoding_details() -> None:
    assert http2.percent_encode("a b") == "a b"
    assert http2.percent_encode("100%") == "100%25"
    assert http2.percent_encode("é") == "%C3%A9"
    assert http2.percent_decode("%c3%a9") == "é"
    assert http2.percent_decode("bad %zz and %4") == "bad %zz and %4"
    assert http2.percent_decode("%FF") == "\ufffd"  # not UTF-8: replaced


def test_percent_round_trip_random() -> None:
    rng = random.Random(3)
    alphabet = "ab %\t\n~é✓日\x00\x7f\U0001f600"
    for _ in range(500):
        message = "".join(rng.choice(alphabet) for _ in range(rng.randrange(20)))
        assert http2.percent_decode(http2.percent_encode(message)) == message
