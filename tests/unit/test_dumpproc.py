"""The dump written by a child process: same records, never blocking, survives the child."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest

from cri_resmgr import dumpproc, http2, relay
from cri_resmgr.config import parse_dump_rules
from cri_resmgr.cri import api_pb2

CREATE = "/runtime.v1.RuntimeService/CreateContainer"
VERSION = "/runtime.v1.RuntimeService/Version"


def _create(
    name: str = "app", cid: str = "c" * 64, wall: Optional[float] = None
) -> relay.CallRecord:
    req = api_pb2.CreateContainerRequest(
        pod_sandbox_id="p" * 64,
        config=api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=name),
            image=api_pb2.ImageSpec(image="busybox:latest"),
        ),
        sandbox_config=api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name="web", namespace="default")
        ),
    )
    rep = api_pb2.CreateContainerResponse(container_id=cid)
    start = time.monotonic()
    return relay.CallRecord(
        CREATE,
        start,
        start + 0.0123,
        wall or time.time(),
        0,
        "",
        http2.grpc_frame(req.SerializeToString()),
        http2.grpc_frame(rep.SerializeToString()),
    )


def _version(code: int = 0) -> relay.CallRecord:
    start = time.monotonic()
    return relay.CallRecord(VERSION, start, start + 0.001, time.time(), code, "")


@pytest.fixture
def dump_file(tmp_path: Path) -> Path:
    return tmp_path / "cri.dump"


@pytest.fixture
def started(dump_file: Path) -> Iterator[dumpproc.ProcessDump]:
    d = dumpproc.ProcessDump(parse_dump_rules("reset,full:.*,count:Version"), str(dump_file))
    d.start()
    yield d
    d.stop()


def test_records_are_formatted_and_written_by_the_child(started, dump_file: Path) -> None:
    for i in range(3):
        started.observe(_create(f"app{i}"))
    assert started.flush(10)
    text = dump_file.read_text()
    heads = [line for line in text.splitlines() if line and not line[0].isspace()]
    assert [h.split("  ", 1)[1] for h in heads] == [
        f"{arrow} CreateContainer default/web:app{i}{tail}"
        for i in range(3)
        for arrow, tail in (("=>", ""), ("<=", " (12.3ms)"))
    ]
    assert "image: busybox:latest" in text
    assert started.stats()["written"] == 3
    assert os.stat(dump_file).st_mode & 0o777 == 0o600
    assert started._child is not None and started._child.pid != os.getpid()


def test_counts_stay_in_the_service_and_reach_the_summary(started, dump_file: Path) -> None:
    for code in (0, 0, 5):
        started.observe(_version(code))
    assert started.counts() == {"Version": (3, 1)}
    started.write_summary()
    assert started.flush(10)
    text = dump_file.read_text()
    assert "Version: 3 calls, 1 errors (NotFound 1)" in text


def test_rules_change_live(started, dump_file: Path) -> None:
    started.observe(_create("before"))
    started.set_rules(parse_dump_rules("reset,off:.*"))
    started.observe(_create("after"))
    assert started.flush(10)
    text = dump_file.read_text()
    assert "default/web:before" in text and "default/web:after" not in text


def test_reopen_after_logrotate(started, dump_file: Path) -> None:
    started.observe(_create("one"))
    assert started.flush(10)
    dump_file.rename(dump_file.with_suffix(".1"))
    started.reopen()
    started.observe(_create("two"))
    assert started.flush(10)
    assert "default/web:two" in dump_file.read_text()
    assert "default/web:two" not in dump_file.with_suffix(".1").read_text()


def test_a_bad_new_path_keeps_the_old_one(started, tmp_path: Path, dump_file: Path) -> None:
    assert not started.set_path(str(tmp_path / "missing-dir" / "x.dump"))
    started.observe(_create("still"))
    assert started.flush(10)
    assert "default/web:still" in dump_file.read_text()


def test_a_dead_child_is_replaced(started, dump_file: Path, caplog) -> None:
    started.observe(_create("first"))
    assert started.flush(10)
    assert started._child is not None
    os.kill(started._child.pid, signal.SIGKILL)
    started._child.wait()
    started.observe(_create("second"))
    assert started.flush(10)
    assert "default/web:second" in dump_file.read_text()
    assert started.stats()["written"] == 2
    assert "dump writer process exited" in caplog.text


def test_observe_never_waits_for_a_stuck_child(dump_file: Path) -> None:
    d = dumpproc.ProcessDump(parse_dump_rules("reset,full:.*"), str(dump_file), queue_size=50)
    d.start()
    try:
        assert d._child is not None
        os.kill(d._child.pid, signal.SIGSTOP)  # the pipe fills, the sender blocks
        for i in range(2000):  # would hang here if observe() waited for the child
            d.observe(_create(f"c{i}"))
        assert d.stats()["dropped"] > 0
        os.kill(d._child.pid, signal.SIGCONT)
        assert d.flush(20)
        assert "!! dropped" in dump_file.read_text()
    finally:
        if d._child is not None:
            os.kill(d._child.pid, signal.SIGCONT)
        d.stop()
