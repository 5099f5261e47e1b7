"""Tests of cri_resmgr.dump: rule resolution, record format, the file, the queue."""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
from pathlib import Path
from typing import Iterator, List, Optional

import pytest
import yaml
from google.protobuf.message import Message

from cri_resmgr import dump, http2, relay
from cri_resmgr.config import parse_dump_rules
from cri_resmgr.cri import api_pb2
from cri_resmgr.cri.methods import METHODS, method_path

RUNTIME = "RuntimeService"
IMAGE = "ImageService"
TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
POD_ID = "a1" * 32
CTR_ID = "c3" * 32


def path_of(name: str) -> str:
    service = (
        IMAGE if name in ("PullImage", "ImageStatus", "RemoveImage", "ListImages") else RUNTIME
    )
    return method_path(service, name)


def rules(text: str, base: str = "") -> dump.Rules:
    return dump.Rules(parse_dump_rules(text, base=base))


def framed(*messages: Message) -> bytes:
    return b"".join(http2.grpc_frame(m.SerializeToString()) for m in messages)


def call(
    name: str,
    request: Optional[Message] = None,
    reply: Optional[Message] = None,
    *,
    code: int = 0,
    details: str = "",
    latency: float = 0.1013,
    wall: float = 1795851736.911,
    replies: Optional[List[Message]] = None,
) -> relay.CallRecord:
    """A finished call as the relay reports it (messages gRPC-framed)."""
    start = 1000.0
    if replies is not None:
        reply_bytes: Optional[bytes] = framed(*replies)
    else:
        reply_bytes = framed(reply) if reply is not None else (b"" if code else None)
    return relay.CallRecord(
        method=path_of(name),
        start=start,
        end=start + latency,
        wall=wall,
        code=code,
        details=details,
        request=framed(request) if request is not None else None,
        reply=reply_bytes,
    )


def sandbox_config(pod: str = "web", namespace: str = "default") -> api_pb2.PodSandboxConfig:
    return api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=pod, uid="uid-1", namespace=namespace),
        labels={"io.kubernetes.pod.name": pod, "io.kubernetes.pod.namespace": namespace},
    )


def create_request(container: str = "app", pod: str = "web") -> api_pb2.CreateContainerRequest:
    sandbox = sandbox_config(pod)
    return api_pb2.CreateContainerRequest(
        pod_sandbox_id=POD_ID,
        sandbox_config=sandbox,
        config=api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=container),
            image=api_pb2.ImageSpec(image="docker.io/library/busybox:1.36"),
            command=["sleep", "3600"],
            envs=[
                api_pb2.KeyValue(key="GREETING", value=b"hello world"),
                api_pb2.KeyValue(key="RAW", value=b"\xff\x00\x01"),
            ],
            labels={"io.kubernetes.container.name": container},
            linux=api_pb2.LinuxContainerConfig(
                resources=api_pb2.LinuxContainerResources(
                    cpu_shares=512, cpu_quota=50000, cpuset_cpus="0-3"
                )
            ),
        ),
    )


def create_call(container: str = "app", cid: str = CTR_ID, **kw: object) -> relay.CallRecord:
    return call(
        "CreateContainer",
        create_request(container),
        api_pb2.CreateContainerResponse(container_id=cid),
        **kw,  # type: ignore[arg-type]
    )


def body(text: str) -> object:
    """The YAML under a record's header line, parsed."""
    lines = text.splitlines()[1:]
    assert all(line.startswith("    ") for line in lines), text
    return yaml.safe_load("\n".join(line[4:] for line in lines))


def formatted(level: str, *records: relay.CallRecord) -> List[str]:
    """Request and reply records of `records` through one Formatter, at `level`."""
    d = dump.Dump(parse_dump_rules(f"reset,{level}:.*"))
    f = dump.Formatter()
    out: List[str] = []
    for r in records:
        out.extend(f.format(d._method(r.method), r))
    return out


@pytest.fixture
def dumps() -> Iterator[List[dump.Dump]]:
    """Dumps made in a test are stopped after it."""
    made: List[dump.Dump] = []
    yield made
    for d in made:
        d.stop()


def started(dumps: List[dump.Dump], text: str, path: Optional[Path], **kw: int) -> dump.Dump:
    d = dump.Dump(parse_dump_rules(text), str(path) if path else None, **kw)
    dumps.append(d)
    d.start()
    return d


# --- rules ---------------------------------------------------------------------------


def test_exact_name_beats_regexp_in_either_order() -> None:
    assert rules("full:CreateContainer,off:.*").level("CreateContainer") == "full"
    assert rules("off:.*Container,full:CreateContainer,off:Create.*").level("CreateContainer") == (
        "full"
    )
    assert rules("off:.*Container,full:CreateContainer,off:Create.*").level("CreateContainerX") == (
        "off"
    )


def test_last_matching_regexp_wins() -> None:
    r = rules("name:.*,full:Create.*")
    assert r.level("CreateContainer") == "full"
    assert r.level("StartContainer") == "name"
    r = rules("full:Create.*,name:.*")
    assert r.level("CreateContainer") == "name"


def test_regexp_matches_the_whole_name() -> None:
    r = rules("full:Container")  # exact name, not a substring
    assert r.level("CreateContainer") == "off"
    r = rules("full:Create")
    assert r.level("CreateContainer") == "off"
    r = rules("full:.*Status")
    assert r.level("ContainerStatus") == "full"
    assert r.level("ContainerStatusX") == "off"


def test_reset_drops_the_defaults_and_earlier_rules() -> None:
    r = dump.Rules(parse_dump_rules("full:Version,reset,count:Status"))
    assert r.level("CreateContainer") == "off"
    assert r.level("Version") == "off"
    assert r.level("Status") == "count"


def test_level_is_inherited_from_the_previous_spec() -> None:
    r = rules("count:Version,Status,.*Image.*,full:ListContainers,ExecSync")
    assert r.level("Status") == "count"
    assert r.level("PullImage") == "count"
    assert r.level("ExecSync") == "full"
    assert rules("Version").level("Version") == "full"  # first spec without level: full
    assert rules("short:Version").level("Version") == "name"  # alias


def test_defaults_dump_only_lifecycle_calls_at_name_level() -> None:
    r = dump.Rules(parse_dump_rules(""))
    lifecycle = re.compile("(Create|Start|Run|Update|Stop|Remove).*")
    for info in METHODS.values():
        expected = "name" if lifecycle.fullmatch(info.name) else "off"
        assert r.level(info.name) == expected, info.name
    for name in (
        "CreateContainer",
        "StartContainer",
        "RunPodSandbox",
        "StopPodSandbox",
        "RemoveContainer",
        "UpdateContainerResources",
        "RemoveImage",
    ):
        assert r.level(name) == "name"
    for name in ("Version", "ListContainers", "ContainerStatus", "PullImage", "Status"):
        assert r.level(name) == "off"


def test_wants_follow_the_level() -> None:
    d = dump.Dump(
        parse_dump_rules("reset,count:Version,name:StartContainer,ListContainers,full:Status")
    )
    assert d.wants(path_of("Version")) == relay.WANT_STATUS
    assert d.wants(path_of("StartContainer")) == relay.WANT_MESSAGES  # qualifier needs the id
    assert d.wants(path_of("ListContainers")) == relay.WANT_STATUS  # nothing to qualify
    assert d.wants(path_of("Status")) == relay.WANT_MESSAGES
    assert d.wants(path_of("CreateContainer")) == relay.WANT_NONE
    assert d.wants("/other.Service/Status") == relay.WANT_MESSAGES  # by short name
    assert d.level(path_of("Version")) == "count"
    assert d.level("Status") == "full"


def test_bad_rules_are_rejected() -> None:
    with pytest.raises(dump.DumpError, match="unknown level"):
        dump.Rules([dump.DumpRule("loud", ".*", False)])
    with pytest.raises(dump.DumpError, match="bad regular expression"):
        dump.Rules([dump.DumpRule("full", "(", False)])
    for pattern in ("a{99999999999}", "(" * 1000 + "a" + ")" * 1000):  # Overflow, Recursion
        with pytest.raises(dump.DumpError, match="bad regular expression"):
            dump.Rules([dump.DumpRule("full", pattern, False)])


# --- record format ---------------------------------------------------------------


def test_name_level_headers() -> None:
    request, reply = formatted("name", create_call())
    assert re.fullmatch(TS + "  => CreateContainer default/web:app", request)
    assert re.fullmatch(TS + r"  <= CreateContainer default/web:app \(101\.3ms\)", reply)
    assert request.startswith(dump.format_time(1795851736.911))
    assert reply.startswith(dump.format_time(1795851736.911 + 0.1013))


def test_timestamp_and_latency_formats() -> None:
    assert dump.format_time(0.0) == "1970-01-01T00:00:00.000Z"
    assert dump.format_time(1795851736.9119) == "2026-11-28T07:42:16.911Z"
    assert dump.format_latency(0.0004) == "0.4ms"
    assert dump.format_latency(0.1013) == "101.3ms"
    assert dump.format_latency(2.3151) == "2.315s"
    assert dump.code_name(5) == "NotFound"
    assert dump.code_name(99) == "Code99"


def test_failure_names_code_and_message() -> None:
    record = call(
        "StartContainer",
        api_pb2.StartContainerRequest(container_id="deadbeef" * 8),
        code=5,
        details='container "x" not found\nsecond line',
        latency=0.0032,
    )
    request, reply = formatted("full", record)
    assert request.splitlines()[0].endswith("=> StartContainer deadbeefdead")  # unknown id
    header = reply.splitlines()[0]
    assert header.endswith(
        '<= StartContainer deadbeefdead (3.2ms) ERROR NotFound: container "x" not found'
        "\\nsecond line"
    )
    assert len(reply.splitlines()) == 1  # no reply message on failure


def test_full_create_container_yaml() -> None:
    request, reply = formatted("full", create_call())
    assert request.splitlines()[0].endswith("=> CreateContainer default/web:app")
    data = body(request)
    assert isinstance(data, dict)
    assert data["pod_sandbox_id"] == POD_ID
    config = data["config"]
    assert config["metadata"] == {"name": "app"}
    assert config["image"] == {"image": "docker.io/library/busybox:1.36"}
    assert config["command"] == ["sleep", "3600"]
    assert config["envs"][0] == {"key": "GREETING", "value": "hello world"}  # bytes readable
    assert config["envs"][1] == {"key": "RAW", "value": b"\xff\x00\x01"}  # !!binary
    assert config["linux"]["resources"]["cpuset_cpus"] == "0-3"
    assert config["linux"]["resources"]["cpu_shares"] == 512
    assert data["sandbox_config"]["metadata"]["namespace"] == "default"
    assert "    config:\n      metadata:\n        name: app" in request
    assert body(reply) == {"container_id": CTR_ID}


def test_empty_message_and_enums() -> None:
    records = [
        call(
            "StartContainer",
            api_pb2.StartContainerRequest(container_id=CTR_ID),
            api_pb2.StartContainerResponse(),
        ),
        call(
            "ListContainers",
            api_pb2.ListContainersRequest(
                filter=api_pb2.ContainerFilter(state=api_pb2.ContainerStateValue(state=1))
            ),
            api_pb2.ListContainersResponse(),
        ),
    ]
    out = formatted("full", *records)
    assert body(out[1]) == {}
    assert body(out[2]) == {"filter": {"state": {"state": "CONTAINER_RUNNING"}}}


def test_registry_credentials_are_redacted() -> None:
    record = call(
        "PullImage",
        api_pb2.PullImageRequest(
            image=api_pb2.ImageSpec(image="registry.example/app:1"),
            auth=api_pb2.AuthConfig(username="bob", password="hunter2", auth="Ym9iOmh1bnRlcjI="),
        ),
        api_pb2.PullImageResponse(image_ref="sha256:" + "0" * 64),
    )
    request, _ = formatted("full", record)
    assert "hunter2" not in request and "Ym9i" not in request
    assert body(request)["auth"] == {
        "username": "bob",
        "password": "(redacted)",  # type: ignore[index]
        "auth": "(redacted)",
    }
    assert request.splitlines()[0].endswith("=> PullImage registry.example/app:1")


@pytest.mark.parametrize(
    "s",
    [
        "",
        " ",
        "plain",
        "yes",
        "No",
        "ON",
        "off",
        "y",
        "null",
        "Null",
        "~",
        "true",
        "123",
        "-1",
        "1.5",
        "0x1f",
        "0o17",
        "0b101",
        "1e5",
        "1E5",
        "12e34",
        "3f2a9c",
        "1_000",
        "12:30",
        "2026-11-28",
        "2026-11-28T07:42:16Z",
        ".inf",
        ".nan",
        "=",
        "<<",
        "a: b",
        "a:b",
        "key:",
        "#x",
        "a #b",
        "a#b",
        "-",
        "- x",
        "-x",
        "*a",
        "&a",
        "!t",
        "@x",
        "%x",
        "`x",
        "'q'",
        '"q"',
        "[a]",
        "{a}",
        "a,b",
        "a, b",
        "? x",
        "| x",
        "> x",
        " lead",
        "trail ",
        "a  b",
        "tab\tx",
        "new\nline",
        "ünï",
        "x\u2028y",
        "x\x85y",
        "\ufeffbom",
        "/var/log/pods/default_web_uid/app/0.log",
        "docker.io/lib/busybox:1.36",
        "sha256:0123abcd",
        "io.kubernetes.pod.name",
        "/kubepods/burstable/pod1",
        "0-3,8",
        "k=v",
        "(x)",
        "a/b:c@d",
        "C:\\path",
        "x: ",
        "\\",
        "0",
        "00",
        "08",
        "+1",
    ],
)
def test_yaml_strings_round_trip(s: str) -> None:
    text = dump.yaml_str(s)
    assert yaml.safe_load("v: " + text) == {"v": s}, text
    assert yaml.safe_load(text + ": 1") == {s: 1}, text


def test_yaml_plain_for_common_values() -> None:
    for s in ("busybox", "docker.io/lib/busybox:1.36", "/proc/kcore", CTR_ID, "3f2a9c1b"):
        assert dump.yaml_str(s) == s
    assert dump.yaml_str("0-3") == '"0-3"'


def test_streamed_reply_lists_every_message() -> None:
    replies = [
        api_pb2.StreamContainersResponse(containers=[api_pb2.Container(id="one")]),
        api_pb2.StreamContainersResponse(containers=[api_pb2.Container(id="two")]),
    ]
    record = call("StreamContainers", api_pb2.StreamContainersRequest(), replies=replies)
    _, reply = formatted("full", record)
    header = reply.splitlines()[0]
    assert header.endswith("(101.3ms) 2 messages")
    docs = list(yaml.safe_load_all("\n".join(line[4:] for line in reply.splitlines()[1:])))
    assert docs == [{"containers": [{"id": "one"}]}, {"containers": [{"id": "two"}]}]


def test_unknown_method_and_bad_bytes_are_noted() -> None:
    record = relay.CallRecord("/x.Y/Z", 1.0, 1.5, 1e9, 0, "", b"\0\0\0\0\2hi", b"")
    d = dump.Dump(parse_dump_rules("reset,full:.*"))
    request, reply = dump.Formatter().format(d._method(record.method), record)
    assert request.splitlines()[0].endswith("=> Z")
    assert "# (7 bytes of an unknown method, not decoded)" in request
    assert reply.splitlines()[0].endswith("<= Z (500.0ms)")
    bad = call("Version", api_pb2.VersionRequest())
    bad.request = b"\0\0\0\0\x09short"
    request, _ = formatted("full", bad)
    assert "# (undecodable:" in request


def test_qualifiers_are_learned_and_forgotten() -> None:
    records = [
        call(
            "RunPodSandbox",
            api_pb2.RunPodSandboxRequest(config=sandbox_config("web", "default")),
            api_pb2.RunPodSandboxResponse(pod_sandbox_id=POD_ID),
        ),
        create_call("app"),
        call(
            "StartContainer",
            api_pb2.StartContainerRequest(container_id=CTR_ID),
            api_pb2.StartContainerResponse(),
        ),
        call(
            "UpdateContainerResources",
            api_pb2.UpdateContainerResourcesRequest(container_id=CTR_ID),
            api_pb2.UpdateContainerResourcesResponse(),
        ),
        call(
            "StopPodSandbox",
            api_pb2.StopPodSandboxRequest(pod_sandbox_id=POD_ID),
            api_pb2.StopPodSandboxResponse(),
        ),
        call(
            "RemoveContainer",
            api_pb2.RemoveContainerRequest(container_id=CTR_ID),
            api_pb2.RemoveContainerResponse(),
        ),
        call(
            "StartContainer",
            api_pb2.StartContainerRequest(container_id=CTR_ID),
            api_pb2.StartContainerResponse(),
        ),
    ]
    heads = [text.splitlines()[0].split("  ", 1)[1] for text in formatted("name", *records)]
    assert heads[0] == "=> RunPodSandbox default/web"
    assert heads[2] == "=> CreateContainer default/web:app"
    assert heads[4] == "=> StartContainer default/web:app"
    assert heads[6] == "=> UpdateContainerResources default/web:app"
    assert heads[8] == "=> StopPodSandbox default/web"
    assert heads[10] == "=> RemoveContainer default/web:app"
    assert heads[12] == "=> StartContainer " + CTR_ID[:12]  # forgotten after removal


def test_list_replies_teach_names() -> None:
    listing = call(
        "ListContainers",
        api_pb2.ListContainersRequest(),
        api_pb2.ListContainersResponse(
            containers=[
                api_pb2.Container(
                    id="e5" * 32,
                    metadata=api_pb2.ContainerMetadata(name="sidecar"),
                    labels={
                        "io.kubernetes.pod.name": "api",
                        "io.kubernetes.pod.namespace": "shop",
                        "io.kubernetes.container.name": "sidecar",
                    },
                )
            ]
        ),
    )
    stop = call(
        "StopContainer",
        api_pb2.StopContainerRequest(container_id="e5" * 32),
        api_pb2.StopContainerResponse(),
    )
    out = formatted("full", listing, stop)
    assert out[2].splitlines()[0].endswith("=> StopContainer shop/api:sidecar")


def test_names_memory_is_bounded() -> None:
    names = dump.Names(size=3)
    for i in range(5):
        names.add_container(f"c{i}", f"ns/p:c{i}")
    assert names.container("c0") is None and names.container("c1") is None
    assert names.container("c4") == "ns/p:c4"


def test_hooked_calls_are_marked() -> None:
    record = create_call()
    record.hooked = True
    request, _ = formatted("name", record)
    assert request.endswith("=> CreateContainer default/web:app [hooked]")


# --- the file -------------------------------------------------------------------------


def test_file_is_created_0600_and_appended(tmp_path: Path, dumps: List[dump.Dump]) -> None:
    path = tmp_path / "dump.log"
    path.write_text("earlier line\n")
    path.chmod(0o600)
    d = started(dumps, "", path)
    d.observe(create_call())
    assert d.flush(10)
    text = path.read_text()
    assert text.startswith("earlier line\n")
    assert "=> CreateContainer default/web:app" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    d.stop()

    new = tmp_path / "new.log"
    old_umask = os.umask(0)
    try:
        d = started(dumps, "", new)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(new.stat().st_mode) == 0o600


def test_looser_existing_file_is_tightened(
    tmp_path: Path, dumps: List[dump.Dump], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "dump.log"
    path.write_text("")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="cri_resmgr.dump"):
        started(dumps, "", path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert any("0644" in r.getMessage() and "0600" in r.getMessage() for r in caplog.records)


def test_unusable_path_raises(tmp_path: Path) -> None:
    d = dump.Dump(parse_dump_rules(""), str(tmp_path / "missing" / "dump.log"))
    with pytest.raises(dump.DumpError, match="missing/dump.log"):
        d.start()


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_dump_file_that_is_not_a_file_is_refused_at_once(tmp_path: Path, kind: str) -> None:
    """Opening a FIFO for writing waits for a reader: the service hung at start."""
    path = tmp_path / "cri.dump"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    with pytest.raises(dump.DumpError, match=f"it is a {'FIFO' if kind == 'fifo' else kind}"):
        dump.open_dump_file(str(path))


def test_a_device_takes_the_dump() -> None:
    os.close(dump.open_dump_file("/dev/null"))


def test_reopen_after_logrotate_rename(tmp_path: Path, dumps: List[dump.Dump]) -> None:
    path = tmp_path / "dump.log"
    d = started(dumps, "", path)
    d.observe(create_call("first"))
    assert d.flush(10)
    path.rename(tmp_path / "dump.log.1")
    d.observe(create_call("second"))  # before reopen: still the renamed file
    d.reopen()
    d.observe(create_call("third"))
    assert d.flush(10)
    rotated = (tmp_path / "dump.log.1").read_text()
    current = path.read_text()
    assert "web:first" in rotated and "web:second" in rotated
    assert "web:third" in current and "web:first" not in current
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_set_path_switches_files_and_keeps_the_old_on_error(
    tmp_path: Path, dumps: List[dump.Dump], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    d = started(dumps, "", a)
    d.observe(create_call("one"))
    assert d.set_path(str(b))
    d.observe(create_call("two"))
    with caplog.at_level(logging.ERROR, logger="cri_resmgr.dump"):
        assert not d.set_path(str(tmp_path / "no" / "c.log"))
    assert any("no/c.log" in r.getMessage() for r in caplog.records)
    d.observe(create_call("three"))
    assert d.flush(10)
    assert "web:one" in a.read_text() and "web:two" not in a.read_text()
    assert "web:two" in b.read_text() and "web:three" in b.read_text()


def test_no_file_logs_one_record_each(
    dumps: List[dump.Dump], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="cri_resmgr.dump"):
        d = started(dumps, "reset,full:CreateContainer", None)
        d.observe(create_call())
        assert d.flush(10)
    texts = [r.getMessage() for r in caplog.records if r.name == "cri_resmgr.dump"]
    assert len(texts) == 2
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "cri_resmgr.dump")
    assert "=> CreateContainer default/web:app" in texts[0] and "busybox:1.36" in texts[0]
    assert "<= CreateContainer default/web:app (101.3ms)" in texts[1]
    assert d.stats()["written"] == 1


# --- the queue ------------------------------------------------------------------------


class _Gate:
    """Holds the writer inside its first write until opened."""

    def __init__(self, d: dump.Dump) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        original = d._emit

        def emit(texts: List[str], calls: int = 0) -> None:
            self.entered.set()
            assert self.release.wait(30)
            original(texts, calls)

        d._emit = emit  # type: ignore[method-assign]


def test_queue_overflow_is_counted_and_reported(tmp_path: Path, dumps: List[dump.Dump]) -> None:
    path = tmp_path / "dump.log"
    d = started(dumps, "", path, queue_size=5)
    gate = _Gate(d)
    d.observe(create_call("first"))
    assert gate.entered.wait(10)  # the writer holds "first" and waits

    def flood() -> None:
        for i in range(20):
            d.observe(create_call(f"c{i}"))

    flooder = threading.Thread(target=flood)
    flooder.start()
    flooder.join(10)
    assert not flooder.is_alive(), "observe() blocked on the writer"
    assert d.stats()["queued"] == 5
    assert d.stats()["dropped"] == 15
    gate.release.set()
    assert d.flush(10)
    text = path.read_text()
    assert re.search(TS + "  !! dropped 15 calls \\(queue full\\)", text)
    assert "web:c4" in text and "web:c5" not in text
    assert d.stats() == {"queued": 0, "written": 6, "dropped": 15, "failed": 0}


def test_queue_bytes_bound(dumps: List[dump.Dump]) -> None:
    d = dump.Dump(parse_dump_rules(""), None, queue_bytes=1)  # not started: nothing drains
    d.observe(create_call("a"))  # an empty queue takes one record of any size
    d.observe(create_call("b"))
    assert d.stats()["queued"] == 1 and d.stats()["dropped"] == 1


def test_off_methods_are_ignored(dumps: List[dump.Dump]) -> None:
    d = dump.Dump(parse_dump_rules(""), None)
    d.observe(call("Version", api_pb2.VersionRequest(), api_pb2.VersionResponse()))
    assert d.stats()["queued"] == 0


def test_count_summary(tmp_path: Path, dumps: List[dump.Dump]) -> None:
    path = tmp_path / "dump.log"
    d = started(dumps, "reset,count:Version,ImageFsInfo,name:StartContainer", path)
    for _ in range(3):
        d.observe(call("Version"))
    d.observe(call("Version", code=14, details="runtime down"))
    d.observe(call("ImageFsInfo"))
    assert d.counts() == {"Version": (4, 1), "ImageFsInfo": (1, 0)}
    d.write_summary()
    assert d.flush(10)
    text = path.read_text()
    assert re.search(TS + "  == counts since " + TS, text)
    assert (
        "    ImageFsInfo: 1 calls, 0 errors\n    Version: 4 calls, 1 errors (Unavailable 1)" in text
    )
    assert "    dump: 0 calls written, 0 dropped (queue full), 0 failed to write" in text
    assert "=> Version" not in text  # counted, not dumped
    d.observe(call("Version"))
    d.stop()
    last = path.read_text()[len(text) :]
    assert "Version: 5 calls, 1 errors" in last  # the summary at stop
    d.observe(call("Version"))  # after stop: ignored, no error
    assert d.counts()["Version"] == (5, 1)


def test_no_summary_at_stop_without_count_rules(tmp_path: Path, dumps: List[dump.Dump]) -> None:
    path = tmp_path / "dump.log"
    d = started(dumps, "", path)
    d.observe(create_call())
    d.stop()
    text = path.read_text()
    assert "=> CreateContainer" in text and "==" not in text


def test_set_rules_takes_effect_live(tmp_path: Path, dumps: List[dump.Dump]) -> None:
    path = tmp_path / "dump.log"
    d = started(dumps, "", path)
    create = path_of("CreateContainer")
    assert d.wants(create) == relay.WANT_MESSAGES
    d.set_rules(parse_dump_rules("off:CreateContainer,full:Version"))
    assert d.wants(create) == relay.WANT_NONE
    assert d.wants(path_of("Version")) == relay.WANT_MESSAGES
    assert d.rules[-1] == dump.DumpRule("full", "Version", True)
    d.observe(create_call("hidden"))
    d.observe(
        call(
            "Version",
            api_pb2.VersionRequest(version="0.1.0"),
            api_pb2.VersionResponse(runtime_name="containerd"),
        )
    )
    d.set_rules(parse_dump_rules("full:CreateContainer"))
    d.observe(create_call("shown"))
    assert d.flush(10)
    text = path.read_text()
    assert "web:hidden" not in text
    assert "    runtime_name: containerd" in text
    assert "=> CreateContainer default/web:shown\n    pod_sandbox_id:" in text


def test_records_keep_call_order_in_the_file(tmp_path: Path, dumps: List[dump.Dump]) -> None:
    path = tmp_path / "dump.log"
    d = started(dumps, "", path)
    for i in range(200):
        d.observe(create_call(f"c{i}"))
    d.stop()
    heads = [line for line in path.read_text().splitlines() if "=>" in line]
    assert [h.rsplit(":", 1)[1] for h in heads] == [f"c{i}" for i in range(200)]
    assert d.stats()["written"] == 200


def test_writer_pauses_only_while_calls_keep_arriving() -> None:
    busy = [True]
    pacer = dump._Pacer(lambda: busy[0])
    pacer.slice_end = 0.0  # slice used up
    pacer.tick()
    assert pacer.pauses == 1
    pacer.tick()  # a new slice has begun: no pause
    assert pacer.pauses == 1
    busy[0] = False
    pacer.slice_end = 0.0
    pacer.tick()
    assert pacer.pauses == 1


def test_set_path_to_the_log_and_back(
    tmp_path: Path, dumps: List[dump.Dump], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "dump.log"
    d = started(dumps, "", None)
    with caplog.at_level(logging.INFO, logger="cri_resmgr.dump"):
        d.observe(create_call("logged"))
        assert d.set_path(str(path))
        d.observe(create_call("filed"))
        assert d.flush(10)
    assert any("web:logged" in r.getMessage() for r in caplog.records)
    assert not any("web:filed" in r.getMessage() for r in caplog.records)
    assert "web:filed" in path.read_text() and "web:logged" not in path.read_text()
    assert d.set_path(str(path))  # the same path: reopened
    with caplog.at_level(logging.INFO, logger="cri_resmgr.dump"):
        assert d.set_path(None)
        d.observe(create_call("back"))
        assert d.flush(10)
    assert any("web:back" in r.getMessage() for r in caplog.records)
    assert d.stats()["failed"] == 0


def test_drops_from_elsewhere_are_written_but_not_counted(
    tmp_path: Path, dumps: List[dump.Dump]
) -> None:
    """The writer process is told the service's drops for its `!!` line; the service
    counts them (counting them here too would count them twice)."""
    path = tmp_path / "dump.log"
    d = started(dumps, "", path)
    d.add_dropped(7)
    d.observe(create_call("after"))
    assert d.flush(10)
    assert re.search(TS + "  !! dropped 7 calls \\(queue full\\)", path.read_text())
    assert d.stats() == {"queued": 0, "written": 1, "dropped": 0, "failed": 0}


def test_summary_of_counts_kept_elsewhere_adds_this_dumps_own(
    tmp_path: Path, dumps: List[dump.Dump]
) -> None:
    path = tmp_path / "dump.log"
    d = started(dumps, "", path)
    d.observe(create_call("a"))
    d.observe(create_call("b"))
    d.write_summary_of(
        [("Version", [3, 1, {5: 1}])], {"written": 10, "dropped": 4, "failed": 1}, 1795851736.0
    )
    assert d.flush(10)
    text = path.read_text()
    assert "    Version: 3 calls, 1 errors (NotFound 1)" in text
    # the two calls written here, after the ten written elsewhere
    assert "    dump: 12 calls written, 4 dropped (queue full), 1 failed to write" in text
