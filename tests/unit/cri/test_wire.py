"""Wire-format spot checks of the generated CRI messages against upstream field numbers.

Every check decodes or builds the bytes with the small protobuf reader/writer below,
not with the protobuf library, so a field number, wire type or type that differs from
the upstream runtime.v1 schema fails here.
"""

from __future__ import annotations

import struct
from typing import Dict, List, Tuple, Union

from cri_resmgr.cri import api_pb2

VARINT, I64, LEN, I32 = 0, 1, 2, 5
Value = Union[int, bytes]


def read_varint(buf: bytes, pos: int) -> Tuple[int, int]:
    """Decode the base-128 varint at `pos`; returns (value, next position)."""
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        assert shift < 64, "varint too long"


def decode(buf: bytes) -> List[Tuple[int, int, Value]]:
    """Split a serialized message into (field number, wire type, raw value) records."""
    out: List[Tuple[int, int, Value]] = []
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: Value
        if wire == VARINT:
            value, pos = read_varint(buf, pos)
        elif wire == LEN:
            length, pos = read_varint(buf, pos)
            value = buf[pos : pos + length]
            assert len(value) == length, "truncated"
            pos += length
        elif wire == I64:
            value = buf[pos : pos + 8]
            pos += 8
        elif wire == I32:
            value = buf[pos : pos + 4]
            pos += 4
        else:  # pragma: no cover - groups are not used by proto3
            raise AssertionError(f"unexpected wire type {wire}")
        out.append((number, wire, value))
    return out


def fields(buf: bytes) -> Dict[int, List[Tuple[int, Value]]]:
    """Records of `buf` grouped by field number: {number: [(wire type, value), ...]}."""
    grouped: Dict[int, List[Tuple[int, Value]]] = {}
    for number, wire, value in decode(buf):
        grouped.setdefault(number, []).append((wire, value))
    return grouped


def one(buf: bytes, number: int, wire: int) -> Value:
    """The single value of field `number`, asserting its wire type."""
    records = fields(buf).get(number)
    assert records is not None, f"field {number} absent"
    assert len(records) == 1, f"field {number} occurs {len(records)} times"
    got_wire, value = records[0]
    assert got_wire == wire, f"field {number}: wire type {got_wire}, expected {wire}"
    return value


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def ld(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return tag(number, LEN) + varint(len(payload)) + payload


def vi(number: int, value: int) -> bytes:
    """A varint field."""
    return tag(number, VARINT) + varint(value)


# --- encoding: our messages produce the upstream field numbers ---------------------


def _create_container_request() -> api_pb2.CreateContainerRequest:
    return api_pb2.CreateContainerRequest(
        pod_sandbox_id="sb-1",
        config=api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="app", attempt=1),
            image=api_pb2.ImageSpec(image="busybox", user_specified_image="busybox:1"),
            envs=[api_pb2.KeyValue(key="BIN", value=b"\xff\x00x")],
            linux=api_pb2.LinuxContainerConfig(
                resources=api_pb2.LinuxContainerResources(
                    cpu_period=100000,
                    cpu_quota=50000,
                    cpu_shares=512,
                    memory_limit_in_bytes=1 << 30,
                    cpuset_cpus="0-3",
                    cpuset_mems="0",
                )
            ),
            stop_signal=api_pb2.SIGNAL_SIGTERM,
        ),
        sandbox_config=api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(
                name="web-0", uid="uid-1", namespace="default", attempt=2
            ),
            labels={"app": "web"},
        ),
    )


def test_create_container_request_field_numbers() -> None:
    raw = _create_container_request().SerializeToString()
    assert one(raw, 1, LEN) == b"sb-1"  # pod_sandbox_id = 1

    config = one(raw, 2, LEN)  # config = 2
    assert isinstance(config, bytes)
    metadata = one(config, 1, LEN)  # ContainerConfig.metadata = 1
    assert isinstance(metadata, bytes)
    assert one(metadata, 1, LEN) == b"app"  # ContainerMetadata.name = 1
    assert one(metadata, 2, VARINT) == 1  # ContainerMetadata.attempt = 2
    image = one(config, 2, LEN)  # ContainerConfig.image = 2
    assert isinstance(image, bytes)
    assert one(image, 1, LEN) == b"busybox"  # ImageSpec.image = 1
    assert one(image, 18, LEN) == b"busybox:1"  # ImageSpec.user_specified_image = 18
    env = one(config, 6, LEN)  # ContainerConfig.envs = 6
    assert env == ld(1, b"BIN") + ld(2, b"\xff\x00x")  # KeyValue.key = 1, value = 2
    assert one(config, 18, VARINT) == 23  # stop_signal = 18, SIGTERM = 23

    linux = one(config, 15, LEN)  # ContainerConfig.linux = 15
    assert isinstance(linux, bytes)
    resources = one(linux, 1, LEN)  # LinuxContainerConfig.resources = 1
    assert isinstance(resources, bytes)
    assert one(resources, 1, VARINT) == 100000  # cpu_period = 1
    assert one(resources, 2, VARINT) == 50000  # cpu_quota = 2
    assert one(resources, 3, VARINT) == 512  # cpu_shares = 3
    assert one(resources, 4, VARINT) == 1 << 30  # memory_limit_in_bytes = 4
    assert one(resources, 6, LEN) == b"0-3"  # cpuset_cpus = 6
    assert one(resources, 7, LEN) == b"0"  # cpuset_mems = 7

    sandbox = one(raw, 3, LEN)  # sandbox_config = 3
    assert isinstance(sandbox, bytes)
    pod = one(sandbox, 1, LEN)  # PodSandboxConfig.metadata = 1
    assert isinstance(pod, bytes)
    assert one(pod, 1, LEN) == b"web-0"  # PodSandboxMetadata.name = 1
    assert one(pod, 2, LEN) == b"uid-1"  # uid = 2
    assert one(pod, 3, LEN) == b"default"  # namespace = 3
    assert one(pod, 4, VARINT) == 2  # attempt = 4
    label = one(sandbox, 6, LEN)  # PodSandboxConfig.labels = 6 (map entry)
    assert label == ld(1, b"app") + ld(2, b"web")


def test_exact_bytes_of_small_messages() -> None:
    # cpuset_cpus is field 6, length-delimited: tag 6<<3|2 = 0x32.
    res = api_pb2.LinuxContainerResources(cpuset_cpus="0-3")
    assert res.SerializeToString() == b"\x32\x030-3"
    # ImageSpec.runtime_handler = 19: tag 19<<3|2 = 154 = varint 0x9a 0x01.
    assert api_pb2.ImageSpec(runtime_handler="kata").SerializeToString() == b"\x9a\x01\x04kata"
    # Negative int64 (oom_score_adj = 5) is a ten-byte two's complement varint.
    assert api_pb2.LinuxContainerResources(oom_score_adj=-1).SerializeToString() == (
        b"\x28" + b"\xff" * 9 + b"\x01"
    )
    # PsiData.Avg10 = 2 is a double: fixed 64-bit, tag 2<<3|1 = 0x11.
    assert api_pb2.PsiData(Avg10=1.5).SerializeToString() == b"\x11" + struct.pack("<d", 1.5)
    # Repeated int32 PortForwardRequest.port = 2 is packed in proto3.
    assert api_pb2.PortForwardRequest(port=[80, 443]).SerializeToString() == (
        ld(2, varint(80) + varint(443))
    )


def test_update_container_resources_request() -> None:
    req = api_pb2.UpdateContainerResourcesRequest(
        container_id="c-1",
        linux=api_pb2.LinuxContainerResources(cpuset_cpus="4-7", cpuset_mems="1"),
        annotations={"k": "v"},
    )
    raw = req.SerializeToString()
    assert one(raw, 1, LEN) == b"c-1"
    assert one(raw, 2, LEN) == ld(6, b"4-7") + ld(7, b"1")
    assert one(raw, 4, LEN) == ld(1, b"k") + ld(2, b"v")


def test_update_pod_sandbox_resources_request() -> None:
    req = api_pb2.UpdatePodSandboxResourcesRequest(
        pod_sandbox_id="sb",
        overhead=api_pb2.LinuxContainerResources(cpu_shares=2),
        resources=api_pb2.LinuxContainerResources(cpuset_cpus="0"),
    )
    assert req.SerializeToString() == ld(1, b"sb") + ld(2, vi(3, 2)) + ld(3, ld(6, b"0"))


def test_streaming_list_responses() -> None:
    pod = api_pb2.PodSandbox(id="p")
    assert api_pb2.StreamPodSandboxesResponse(pod_sandboxes=[pod]).SerializeToString() == (
        ld(1, ld(1, b"p"))
    )
    ctr = api_pb2.Container(id="c", state=api_pb2.CONTAINER_RUNNING)
    assert api_pb2.StreamContainersResponse(containers=[ctr]).SerializeToString() == (
        ld(1, ld(1, b"c") + vi(6, 1))
    )
    stats = api_pb2.ContainerStats(attributes=api_pb2.ContainerAttributes(id="c"))
    assert api_pb2.StreamContainerStatsResponse(container_stats=[stats]).SerializeToString() == (
        ld(1, ld(1, ld(1, b"c")))
    )
    metrics = api_pb2.PodSandboxMetrics(pod_sandbox_id="p")
    assert api_pb2.StreamPodSandboxMetricsResponse(
        pod_sandbox_metrics=[metrics]
    ).SerializeToString() == ld(1, ld(1, b"p"))


# --- decoding: upstream-shaped bytes parse into the right fields --------------------


def test_parse_container_event() -> None:
    raw = (
        ld(1, b"c-9")
        + vi(2, 2)  # container_event_type = CONTAINER_STOPPED_EVENT
        + vi(3, 1_700_000_000_000_000_000)  # created_at, nanoseconds
        + ld(4, ld(1, b"sb-9") + vi(3, 1))  # pod_sandbox_status: id, state NOTREADY
        + ld(5, ld(1, b"c-9") + vi(7, 137))  # containers_statuses: id, exit_code
    )
    event = api_pb2.ContainerEventResponse.FromString(raw)
    assert event.container_id == "c-9"
    assert event.container_event_type == api_pb2.CONTAINER_STOPPED_EVENT
    assert event.created_at == 1_700_000_000_000_000_000
    assert event.pod_sandbox_status.id == "sb-9"
    assert event.pod_sandbox_status.state == api_pb2.SANDBOX_NOTREADY
    assert event.containers_statuses[0].exit_code == 137


def test_parse_container_status_response() -> None:
    resources = ld(1, ld(6, b"2-3") + vi(3, 256))  # ContainerResources.linux
    raw = ld(
        1,
        ld(1, b"c")
        + vi(3, 2)  # state = CONTAINER_EXITED
        + ld(10, b"OOMKilled")  # reason = 10
        + ld(16, resources)  # resources = 16
        + ld(17, b"sha256:abc")  # image_id = 17
        + ld(18, ld(1, vi(1, 1000) + vi(2, 1000) + ld(3, varint(5))))  # user.linux
        + vi(19, 13),  # stop_signal = SIGKILL
    ) + ld(2, ld(1, b"pid") + ld(2, b"42"))
    status = api_pb2.ContainerStatusResponse.FromString(raw)
    assert status.status.state == api_pb2.CONTAINER_EXITED
    assert status.status.reason == "OOMKilled"
    assert status.status.resources.linux.cpuset_cpus == "2-3"
    assert status.status.resources.linux.cpu_shares == 256
    assert status.status.image_id == "sha256:abc"
    assert status.status.user.linux.uid == 1000
    assert list(status.status.user.linux.supplemental_groups) == [5]
    assert status.status.stop_signal == api_pb2.SIGNAL_SIGKILL
    assert dict(status.info) == {"pid": "42"}


def test_parse_status_response_features() -> None:
    raw = (
        ld(1, ld(1, ld(1, b"RuntimeReady") + vi(2, 1)))
        + ld(3, ld(1, b"runc") + ld(2, vi(1, 1) + vi(2, 1)))
        + ld(4, vi(1, 1) + vi(2, 1) + vi(3, 1))
    )
    status = api_pb2.StatusResponse.FromString(raw)
    assert status.status.conditions[0].type == "RuntimeReady"
    assert status.status.conditions[0].status is True
    handler = status.runtime_handlers[0]
    assert handler.name == "runc"
    assert handler.features.recursive_read_only_mounts and handler.features.user_namespaces
    assert status.features.supplemental_groups_policy
    assert status.features.user_namespaces_host_network
    assert status.features.mount_options


def test_parse_checkpoint_and_restore_pod() -> None:
    req = api_pb2.CheckpointPodRequest.FromString(
        ld(1, b"sb") + ld(2, b"/ckpt") + ld(3, b"c1") + ld(3, b"c2") + ld(4, ld(1, b"k"))
    )
    assert (req.pod_sandbox_id, req.output_path) == ("sb", "/ckpt")
    assert list(req.container_ids) == ["c1", "c2"]
    assert dict(req.options) == {"k": ""}
    resp = api_pb2.RestorePodResponse.FromString(
        ld(1, b"sb2") + ld(2, ld(1, b"app") + ld(2, b"c3"))
    )
    assert resp.pod_sandbox_id == "sb2"
    assert (resp.restored_containers[0].name, resp.restored_containers[0].container_id) == (
        "app",
        "c3",
    )
    restore = api_pb2.RestorePodRequest(
        checkpoint_path="/ckpt",
        runtime_handler="runc",
        container_configs=[api_pb2.ContainerConfig(metadata=api_pb2.ContainerMetadata(name="a"))],
    )
    assert restore.SerializeToString() == (
        ld(1, b"/ckpt") + ld(3, b"runc") + ld(5, ld(1, ld(1, b"a")))
    )


def test_mount_and_security_fields() -> None:
    mount = api_pb2.Mount(
        container_path="/data",
        readonly=True,
        propagation=api_pb2.PROPAGATION_HOST_TO_CONTAINER,
        uidMappings=[api_pb2.IDMapping(host_id=100000, container_id=0, length=65536)],
        image_sub_path="sub",
        mount_options=["noexec"],
    )
    raw = mount.SerializeToString()
    assert one(raw, 1, LEN) == b"/data"
    assert one(raw, 3, VARINT) == 1
    assert one(raw, 5, VARINT) == 1
    assert one(raw, 6, LEN) == vi(1, 100000) + vi(3, 65536)
    assert one(raw, 10, LEN) == b"sub"
    assert one(raw, 11, LEN) == b"noexec"
    sec = api_pb2.LinuxContainerSecurityContext(
        run_as_group=api_pb2.Int64Value(value=7),
        supplemental_groups_policy=api_pb2.Strict,
        seccomp=api_pb2.SecurityProfile(
            profile_type=api_pb2.SecurityProfile.Localhost, localhost_ref="/p.json"
        ),
    )
    raw = sec.SerializeToString()
    assert one(raw, 12, LEN) == vi(1, 7)  # run_as_group = 12
    assert one(raw, 15, LEN) == vi(1, 2) + ld(2, b"/p.json")  # seccomp = 15
    assert one(raw, 17, VARINT) == 1  # supplemental_groups_policy = 17


def test_env_value_is_raw_bytes() -> None:
    # Upstream KeyValue.value is `bytes`: non-UTF-8 values survive a round trip.
    kv = api_pb2.KeyValue.FromString(ld(1, b"K") + ld(2, b"\xc3\x28"))
    assert kv.value == b"\xc3\x28"
    assert api_pb2.KeyValue(key="K", value=b"\xc3\x28").SerializeToString() == (
        ld(1, b"K") + ld(2, b"\xc3\x28")
    )


def test_unknown_fields_survive_reserialization() -> None:
    # A field from a newer schema (number 99 here) is kept, so the relay can decode,
    # rewrite and re-encode a request without dropping what it does not know.
    raw = _create_container_request().SerializeToString() + ld(99, b"future")
    req = api_pb2.CreateContainerRequest.FromString(raw)
    req.config.linux.resources.cpuset_cpus = "8-9"
    again = req.SerializeToString()
    assert one(again, 99, LEN) == b"future"
    config = one(again, 2, LEN)
    assert isinstance(config, bytes)
    linux = one(config, 15, LEN)
    assert isinstance(linux, bytes)
    resources = one(linux, 1, LEN)
    assert isinstance(resources, bytes)
    assert one(resources, 6, LEN) == b"8-9"


def test_reader_rejects_wrong_wire_type() -> None:
    # Self-check of the helper: asking for the wrong wire type fails.
    raw = api_pb2.VersionRequest(version="v1").SerializeToString()
    assert raw == ld(1, b"v1")
    try:
        one(raw, 1, VARINT)
    except AssertionError:
        pass
    else:  # pragma: no cover
        raise AssertionError("wire type mismatch not detected")
