"""The dump written by a child process: same records, never blocking, survives the child."""

from __future__ import annotations

import io
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any, Iterator, List, Optional, Tuple, cast

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


def child(d: dumpproc.ProcessDump) -> subprocess.Popen:
    """The dump's current writer process."""
    assert d._writer is not None
    return d._writer.proc


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
    assert child(started).pid != os.getpid()


def test_written_counts_arrive_without_a_flush_or_more_calls(started, dump_file: Path) -> None:
    """`cri-resmgr status` and the metrics read `stats()`: what the child has written
    reaches them although no later message carries the report."""
    for i in range(4):
        started.observe(_create(f"app{i}"))
    deadline = time.monotonic() + 20
    while started.stats()["written"] < 4:
        assert time.monotonic() < deadline, started.stats()
        time.sleep(0.05)
    heads = [line for line in dump_file.read_text().splitlines() if line[:1].isdigit()]
    assert len(heads) == 8 and started.stats() == {
        "queued": 0,
        "written": 4,
        "dropped": 0,
        "failed": 0,
    }


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
    proc = child(started)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    started.observe(_create("second"))
    assert started.flush(10)
    assert "default/web:second" in dump_file.read_text()
    assert started.stats()["written"] == 2
    assert "dump writer process exited" in caplog.text


def test_observe_never_waits_for_a_stuck_child(dump_file: Path) -> None:
    d = dumpproc.ProcessDump(parse_dump_rules("reset,full:.*"), str(dump_file), queue_size=50)
    d.start()
    try:
        pid = child(d).pid
        os.kill(pid, signal.SIGSTOP)  # the pipe fills, the sender blocks
        for i in range(2000):  # would hang here if observe() waited for the child
            d.observe(_create(f"c{i}"))
        assert d.stats()["dropped"] > 0
        os.kill(pid, signal.SIGCONT)
        assert d.flush(20)
        assert "!! dropped" in dump_file.read_text()
    finally:
        os.kill(pid, signal.SIGCONT)
        d.stop()


# --- counting -----------------------------------------------------------------------


def test_every_call_is_counted_once(dump_file: Path) -> None:
    """The service's drops reach the child's `!!` lines but are counted once: in
    stats() and in the summary at stop, written + dropped is what was observed."""
    d = dumpproc.ProcessDump(
        parse_dump_rules("reset,full:.*,count:Version"), str(dump_file), queue_size=50
    )
    d.start()
    pid = child(d).pid
    try:
        os.kill(pid, signal.SIGSTOP)  # the pipe fills, the service's queue too
        for i in range(2000):
            d.observe(_create(f"c{i}"))
        d.observe(_version())
    finally:
        os.kill(pid, signal.SIGCONT)
    assert d.flush(20)
    stats = d.stats()
    assert stats["dropped"] > 0
    assert stats["written"] + stats["dropped"] == 2000
    assert stats["queued"] == 0 and stats["failed"] == 0
    d.stop()
    assert d.stats() == stats
    text = dump_file.read_text()
    assert sum(int(n) for n in re.findall(r"!! dropped (\d+) calls", text)) == stats["dropped"]
    assert (
        f"    dump: {stats['written']} calls written, {stats['dropped']} dropped (queue full), "
        "0 failed to write"
    ) in text
    assert "    Version: 1 calls, 0 errors" in text


# --- the child's end ----------------------------------------------------------------


def _run_child(dump_file: Path) -> subprocess.Popen:
    """`python -m cri_resmgr.dumpproc` started as the service starts it, initialized."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cri_resmgr.dumpproc"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    rules = tuple(parse_dump_rules("reset,full:.*"))
    dumpproc._send(proc.stdin, ("init", rules, str(dump_file), logging.INFO))
    return proc


def _records(*names: str) -> Tuple[str, List[Any]]:
    return ("records", [("full", dumpproc._record_tuple(_create(name))) for name in names])


def _ended_quietly(proc: subprocess.Popen) -> str:
    """Wait for the child; it must exit 0 with at most one line and no traceback."""
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    assert proc.wait(20) == 0, err
    assert "Traceback" not in err and len(err.splitlines()) <= 1, err
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None and not pipe.closed:
            try:
                pipe.close()
            except BrokenPipeError:
                pass
    return err


def test_child_ends_quietly_when_the_service_is_gone_mid_message(dump_file: Path) -> None:
    proc = _run_child(dump_file)
    assert proc.stdin is not None
    dumpproc._send(proc.stdin, _records("before"))
    proc.stdin.write(b"\0\0\1\0\0\0\0\0" + b"half a message")  # the service was killed
    proc.stdin.close()
    err = _ended_quietly(proc)
    assert "the service went away" in err
    assert "default/web:before" in dump_file.read_text()  # what it got is written


def test_child_ends_quietly_when_its_reports_cannot_be_sent(dump_file: Path) -> None:
    proc = _run_child(dump_file)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdout.close()  # nobody reads its reports: the next one breaks the pipe
    dumpproc._send(proc.stdin, _records("one"))
    dumpproc._send(proc.stdin, ("flush", 1))
    _ended_quietly(proc)
    assert "default/web:one" in dump_file.read_text()


def test_child_ignores_the_signals_meant_for_the_service(dump_file: Path) -> None:
    proc = _run_child(dump_file)
    assert proc.stdin is not None and proc.stdout is not None
    dumpproc._send(proc.stdin, ("flush", 1))
    while dumpproc._recv(proc.stdout)[0] != "ack":  # running: its handlers are set
        pass
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        proc.send_signal(signum)
    dumpproc._send(proc.stdin, _records("still"))
    dumpproc._send(proc.stdin, ("flush", 2))
    while dumpproc._recv(proc.stdout)[0] != "ack":
        pass
    dumpproc._send(proc.stdin, ("stop", None))
    proc.stdin.close()
    assert _ended_quietly(proc) == ""
    assert "default/web:still" in dump_file.read_text()


def test_the_child_runs_in_a_session_of_its_own(started) -> None:
    """A terminal's Ctrl-C goes to the service's process group, not to the child."""
    assert os.getsid(child(started).pid) != os.getsid(0)


# --- children that fail ---------------------------------------------------------------


class _Spawns:
    """Replaces subprocess.Popen: counts starts; the first `dying` children exit at once
    (a broken installation), or each start fails with `error`."""

    def __init__(self, dying: int = 0, error: Optional[OSError] = None) -> None:
        self.real = subprocess.Popen
        self.dying = dying
        self.error = error
        self.count = 0

    def __call__(self, args: List[str], **kwargs: Any) -> subprocess.Popen:
        self.count += 1
        if self.error is not None:
            raise self.error
        if self.count <= self.dying:
            args = [sys.executable, "-c", "pass"]
        return self.real(args, **kwargs)


def test_children_dying_at_start_are_restarted_with_back_off(
    dump_file: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(dumpproc, "_BACKOFF_MIN", 3600.0)  # no third start in this test
    spawns = _Spawns(dying=1000)
    monkeypatch.setattr(subprocess, "Popen", spawns)
    d = dumpproc.ProcessDump(parse_dump_rules("reset,full:.*"), str(dump_file))
    d.start()
    try:
        for i in range(10):
            d.observe(_create(f"c{i}"))
            d.flush(10)
        # the first start and one more at once; then the back-off
        assert spawns.count <= 2
        assert d.stats() == {"queued": 0, "written": 0, "dropped": 10, "failed": 0}
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "dump writer process exited" in errors[0].getMessage()
    finally:
        d.stop()


def test_a_child_is_started_again_after_the_back_off(
    dump_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dumpproc, "_BACKOFF_MIN", 0.0)
    spawns = _Spawns(dying=3)
    monkeypatch.setattr(subprocess, "Popen", spawns)
    d = dumpproc.ProcessDump(parse_dump_rules("reset,full:.*"), str(dump_file))
    d.start()
    try:
        for i in range(100):
            d.observe(_create(f"c{i}"))
            d.flush(10)
            if d.stats()["written"]:
                break
        stats = d.stats()
        assert spawns.count == 4 and stats["written"] == 1
        assert stats["written"] + stats["dropped"] == i + 1
        assert f"default/web:c{i}\n" in dump_file.read_text()
    finally:
        d.stop()


def test_a_child_that_cannot_be_started_costs_calls_not_the_dump(
    started, dump_file: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    started.observe(_create("first"))
    assert started.flush(10)
    monkeypatch.setattr(subprocess, "Popen", _Spawns(error=OSError(24, "Too many open files")))
    proc = child(started)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for name in ("a", "b", "c"):
        started.observe(_create(name))
    assert started.flush(10)
    assert started.stats() == {"queued": 0, "written": 1, "dropped": 3, "failed": 0}
    assert "dump writer failed" not in caplog.text  # nothing escaped the sender
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1


# --- log level ------------------------------------------------------------------------


def test_log_level_changes_reach_the_child(
    dump_file: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    d = dumpproc.ProcessDump(parse_dump_rules("reset,full:.*"), str(dump_file))
    d.start()  # the child's stderr is captured from here on
    try:
        d.set_log_level(logging.DEBUG)  # SIGUSR1: debug on
        assert d.flush(10)
        d.set_log_level(logging.INFO)  # and off again
        assert d.flush(10)
    finally:
        d.stop()
    err = capfd.readouterr().err
    assert "dump writer process: log level DEBUG" in err
    # the service's format: a timestamp first, as stderr is no journal here
    assert re.search(r"^\d{4}-\d\d-\d\d \S+ DEBUG cri_resmgr\.dumpproc: dump writer", err, re.M)
    assert "log level INFO" not in err  # a debug line: not written at info


# --- the pipe -------------------------------------------------------------------------


class _Stream:
    """Records writes, as the pipe to the child would get them."""

    def __init__(self) -> None:
        self.writes: List[Any] = []

    def write(self, data: Any) -> int:
        self.writes.append(data)
        return len(data)

    def flush(self) -> None:
        pass


def test_large_messages_are_written_from_the_record_not_copied() -> None:
    record = _create()
    big = b"\0\0\0\0\0" + b"x" * (dumpproc._OUT_OF_BAND * 4)
    record.reply = big
    stream = _Stream()
    dumpproc._send(cast(IO[bytes], stream), ("records", [("full", dumpproc._record_tuple(record))]))
    views = [w for w in stream.writes if isinstance(w, memoryview) and w.obj is big]
    assert len(views) == 1  # the reply's own bytes, in a write of their own
    assert all(len(w) < len(big) for w in stream.writes if w is not views[0])
    # header and pickle in writes of their own, not joined into a copy
    assert len(stream.writes) == 3
    kind, batch = dumpproc._recv(io.BytesIO(b"".join(bytes(w) for w in stream.writes)))
    assert kind == "records" and batch[0][1][7] == big and batch[0][1][6] == record.request


BIG = b"\0" * (300 * 1024)


def _size(payload: Any) -> int:
    return 0 if payload is None else memoryview(payload).nbytes


def test_batches_are_capped_by_bytes(dump_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: List[List[int]] = []
    send = dumpproc._send

    def spy(stream: Any, message: Any) -> None:
        if message[0] == "records":
            sizes.append([_size(fields[6]) + _size(fields[7]) for _, fields in message[1]])
        send(stream, message)

    monkeypatch.setattr(dumpproc, "_send", spy)
    d = dumpproc.ProcessDump(parse_dump_rules("reset,full:.*"), str(dump_file))
    for _ in range(8):  # queued before the start: one drain takes them all
        start = time.monotonic()  # a method the dump does not decode: cheap to format
        d.observe(relay.CallRecord("/x.Y/Big", start, start, time.time(), 0, "", b"", BIG))
    d.start()
    try:
        assert d.flush(20)
        assert d.stats()["written"] == 8
    finally:
        d.stop()
    assert len(sizes) > 1 and sum(len(batch) for batch in sizes) == 8
    for batch in sizes:  # a batch stops growing at the cap
        assert sum(batch[:-1]) < dumpproc._BATCH_BYTES
