"""A tiny protobuf wire-format codec and raw CRI calls that need no generated modules.

The harness must work before (and independently of) `cri_resmgr.cri`: it only needs a
handful of CRI calls to wait for a runtime, list images and clean up pods. Messages are
built as bytes with `field_*` helpers and parsed with `decode()` into
`{field number: [values]}` (varints as int, length-delimited fields as bytes).
Field numbers are those of `runtime.v1` in kubernetes/cri-api `api.proto`.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Union

import grpc

log = logging.getLogger(__name__)

RUNTIME = "/runtime.v1.RuntimeService/"
IMAGE = "/runtime.v1.ImageService/"

# 16 MiB both ways, like the relay and kubelet.
MAX_MESSAGE = 16 * 1024 * 1024

Value = Union[int, bytes]
Fields = Dict[int, List[Value]]

# NamespaceMode
POD, CONTAINER, NODE, TARGET = 0, 1, 2, 3


def channel_options() -> list[tuple[str, int]]:
    """Options for channels to a runtime that may restart: fast reconnect, 16 MiB limits."""
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


def connect(address: str) -> grpc.Channel:
    """An insecure channel to `address` (`unix:///path`) with `channel_options()`."""
    return grpc.insecure_channel(address, options=channel_options())


# --- encoding -------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(num: int, value: int) -> bytes:
    """A varint field (int32/int64/uint32/uint64/bool/enum); omitted when 0 (proto3)."""
    if not value:
        return b""
    return _varint(num << 3) + _varint(int(value))


def field_bytes(num: int, value: Union[bytes, str], keep_empty: bool = False) -> bytes:
    """A length-delimited field (string, bytes, embedded message)."""
    data = value.encode() if isinstance(value, str) else value
    if not data and not keep_empty:
        return b""
    return _varint((num << 3) | 2) + _varint(len(data)) + data


def field_message(num: int, body: bytes) -> bytes:
    """An embedded message field; present even when empty."""
    return field_bytes(num, body, keep_empty=True)


def field_strings(num: int, values: Sequence[str]) -> bytes:
    """A repeated string field."""
    return b"".join(field_bytes(num, v, keep_empty=True) for v in values)


def field_map(num: int, mapping: Optional[Dict[str, str]]) -> bytes:
    """A `map<string, string>` field."""
    if not mapping:
        return b""
    return b"".join(
        field_message(num, field_bytes(1, k) + field_bytes(2, v))
        for k, v in sorted(mapping.items())
    )


# --- decoding -------------------------------------------------------------------------


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def decode(data: bytes) -> Fields:
    """Parse one message into `{field number: [values]}` (unknown wire types fail)."""
    fields: Fields = {}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            value = data[pos : pos + size]
            pos += size
        elif wire == 1:
            value = int.from_bytes(data[pos : pos + 8], "little")
            pos += 8
        elif wire == 5:
            value = int.from_bytes(data[pos : pos + 4], "little")
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire} for field {num}")
        fields.setdefault(num, []).append(value)
    return fields


def get_str(fields: Fields, num: int) -> str:
    """The last value of a string field, '' when absent."""
    values = fields.get(num)
    return bytes(values[-1]).decode() if values else ""  # type: ignore[arg-type]


def get_strs(fields: Fields, num: int) -> list[str]:
    """All values of a repeated string field."""
    return [bytes(v).decode() for v in fields.get(num, [])]  # type: ignore[arg-type]


def get_int(fields: Fields, num: int) -> int:
    """The last value of a varint field, 0 when absent (int64 two's complement undone)."""
    values = fields.get(num)
    if not values:
        return 0
    v = int(values[-1])  # type: ignore[arg-type]
    return v - (1 << 64) if v >= 1 << 63 else v


def get_msg(fields: Fields, num: int) -> Fields:
    """The last embedded message of a field, {} when absent."""
    values = fields.get(num)
    return decode(bytes(values[-1])) if values else {}  # type: ignore[arg-type]


def get_msgs(fields: Fields, num: int) -> list[Fields]:
    """All embedded messages of a repeated field."""
    return [decode(bytes(v)) for v in fields.get(num, [])]  # type: ignore[arg-type]


def get_map(fields: Fields, num: int) -> dict[str, str]:
    """A `map<string, string>` field."""
    return {get_str(e, 1): get_str(e, 2) for e in get_msgs(fields, num)}


# --- raw calls ------------------------------------------------------------------------


def call(
    channel: grpc.Channel,
    method: str,
    request: bytes = b"",
    timeout: Optional[float] = 10.0,
    wait_for_ready: bool = False,
) -> bytes:
    """One unary call with identity serializers; `method` is the full path."""
    stub = channel.unary_unary(method)
    return stub(request, timeout=timeout, wait_for_ready=wait_for_ready)


def version(channel: grpc.Channel, timeout: Optional[float] = 5.0) -> dict[str, str]:
    """RuntimeService/Version as a dict with the field names of VersionResponse."""
    f = decode(call(channel, RUNTIME + "Version", field_bytes(1, "v1"), timeout))
    return {
        "version": get_str(f, 1),
        "runtime_name": get_str(f, 2),
        "runtime_version": get_str(f, 3),
        "runtime_api_version": get_str(f, 4),
    }


def list_images(channel: grpc.Channel, timeout: Optional[float] = 10.0) -> list[dict]:
    """ImageService/ListImages: [{'id', 'repo_tags', 'repo_digests', 'size'}]."""
    f = decode(call(channel, IMAGE + "ListImages", b"", timeout))
    return [
        {
            "id": get_str(img, 1),
            "repo_tags": get_strs(img, 2),
            "repo_digests": get_strs(img, 3),
            "size": get_int(img, 4),
        }
        for img in get_msgs(f, 1)
    ]


def list_pod_sandboxes(channel: grpc.Channel, timeout: Optional[float] = 10.0) -> list[dict]:
    """RuntimeService/ListPodSandbox: [{'id', 'name', 'uid', 'namespace', 'state'}]."""
    f = decode(call(channel, RUNTIME + "ListPodSandbox", b"", timeout))
    out = []
    for item in get_msgs(f, 1):
        meta = get_msg(item, 2)
        out.append(
            {
                "id": get_str(item, 1),
                "name": get_str(meta, 1),
                "uid": get_str(meta, 2),
                "namespace": get_str(meta, 3),
                "state": get_int(item, 3),
            }
        )
    return out


def list_containers(channel: grpc.Channel, timeout: Optional[float] = 10.0) -> list[dict]:
    """RuntimeService/ListContainers: [{'id', 'pod_sandbox_id', 'name', 'state'}]."""
    f = decode(call(channel, RUNTIME + "ListContainers", b"", timeout))
    return [
        {
            "id": get_str(c, 1),
            "pod_sandbox_id": get_str(c, 2),
            "name": get_str(get_msg(c, 3), 1),
            "state": get_int(c, 6),
        }
        for c in get_msgs(f, 1)
    ]


def stop_pod_sandbox(channel: grpc.Channel, pod_id: str, timeout: Optional[float] = 30.0):
    """RuntimeService/StopPodSandbox."""
    call(channel, RUNTIME + "StopPodSandbox", field_bytes(1, pod_id), timeout)


def remove_pod_sandbox(channel: grpc.Channel, pod_id: str, timeout: Optional[float] = 30.0):
    """RuntimeService/RemovePodSandbox."""
    call(channel, RUNTIME + "RemovePodSandbox", field_bytes(1, pod_id), timeout)
