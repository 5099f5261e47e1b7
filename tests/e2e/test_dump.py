"""End-to-end: the CRI dump of a relay in front of a real containerd, and its reloads."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import grpc
import yaml

from harness import cri_objects as co


def _wait_for(predicate, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _records(text: str) -> list:
    """Split a dump into (header, yaml body) records."""
    out = []
    for block in re.split(r"\n(?=\S)", text.strip()):
        header, _, body = block.partition("\n")
        out.append((header, body))
    return out


def test_full_dump_of_a_pod_start(relay_factory, tmp_path: Path) -> None:
    dump_file = tmp_path / "cri.dump"
    # The seed's option string, with the quotes systemd would leave in place.
    relay = relay_factory("-dump='reset,full:.*'", f"-dump-file={dump_file}")
    with grpc.insecure_channel("unix:" + relay.socket) as ch:
        pod = co.pod_sandbox_config("dumped", namespace="e2e")
        pod_id = co.run_pod(ch, pod)
        ctr = co.container_config("app", pod, command=["sleep", "3600"])
        cid = co.create_and_start(ch, pod_id, pod, ctr)
        _wait_for(lambda: dump_file.exists() and cid in dump_file.read_text(), what="dump")
        co.remove_pod(ch, pod_id)
    assert os.stat(dump_file).st_mode & 0o777 == 0o600
    records = _records(dump_file.read_text())
    requests = [r for r in records if " => CreateContainer " in r[0]]
    replies = [r for r in records if " <= CreateContainer " in r[0]]
    assert requests and replies
    header, body = requests[0]
    assert "e2e/dumped:app" in header
    request = yaml.safe_load(_dedent(body))
    assert request["config"]["metadata"]["name"] == "app"
    assert request["config"]["image"]["image"] == co.BUSYBOX_REF
    header, body = replies[0]
    assert re.search(r"\(\d+(\.\d+)?(ms|s|us)\)", header), header  # latency
    assert yaml.safe_load(_dedent(body))["container_id"] == cid


def _dedent(body: str) -> str:
    return "\n".join(line[4:] for line in body.splitlines())


def test_sighup_changes_rules_and_keeps_them_on_a_broken_file(relay_factory, tmp_path) -> None:
    dump_file = tmp_path / "cri.dump"
    relay = relay_factory(f"-dump-file={dump_file}", start=False)
    conf = relay.config_dir / "50-dump.conf"
    conf.write_text("[dump]\nrules = reset,full:Version\n")
    relay.start()
    with grpc.insecure_channel("unix:" + relay.socket) as ch:
        co.call(ch, "Version")
        _wait_for(lambda: dump_file.exists() and "<= Version" in dump_file.read_text())

        conf.write_text("[dump]\nrules = reset,off:.*\n")
        relay.signal(signal.SIGHUP)
        _wait_for(lambda: "reload:" in relay.log_text(), what="reload")
        size = dump_file.stat().st_size
        for _ in range(5):
            co.call(ch, "Version")
        time.sleep(1.0)
        assert dump_file.stat().st_size == size, "dumping went on after rules = off:.*"

        conf.write_text("[dump]\nrules = reset,full:Version\n[dump\nbroken\n")
        relay.signal(signal.SIGHUP)
        _wait_for(lambda: "configuration rejected" in relay.log_text(), what="rejection")
        assert "50-dump.conf" in relay.log_text()
        co.call(ch, "Version")
        time.sleep(1.0)
        assert dump_file.stat().st_size == size, "a rejected config must not change the rules"
    assert relay.running


def test_a_dump_file_that_cannot_be_opened_does_not_stop_the_relay(
    relay_factory, tmp_path: Path
) -> None:
    """At start the relay serves and the dump goes to the log (an ERROR says why);
    once the directory exists, a SIGHUP moves the dump to the file."""
    dump_file = tmp_path / "later" / "cri.dump"
    relay = relay_factory("-dump=reset,full:Version", f"-dump-file={dump_file}")
    assert f"dump file {dump_file}: cannot open for appending" in relay.log_text()
    with grpc.insecure_channel("unix:" + relay.socket) as ch:
        co.call(ch, "Version")
        _wait_for(lambda: "<= Version" in relay.log_text(), what="the dump in the log")
        dump_file.parent.mkdir()
        relay.signal(signal.SIGHUP)
        _wait_for(dump_file.exists, what="the dump file after SIGHUP")
        co.call(ch, "Version")
        _wait_for(lambda: "<= Version" in dump_file.read_text(), what="records in the file")
    assert relay.running


def test_dump_file_is_reopened_after_logrotate(relay_factory, tmp_path: Path) -> None:
    dump_file = tmp_path / "cri.dump"
    relay = relay_factory("-dump=reset,full:Version", f"-dump-file={dump_file}")
    with grpc.insecure_channel("unix:" + relay.socket) as ch:
        co.call(ch, "Version")
        _wait_for(lambda: dump_file.exists() and "<= Version" in dump_file.read_text())
        rotated = tmp_path / "cri.dump.1"
        dump_file.rename(rotated)
        relay.signal(signal.SIGHUP)
        _wait_for(dump_file.exists, what="a new dump file")
        co.call(ch, "Version")
        _wait_for(lambda: "<= Version" in dump_file.read_text(), what="records in the new file")
    assert os.stat(dump_file).st_mode & 0o777 == 0o600
