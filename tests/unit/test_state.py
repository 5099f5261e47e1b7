"""state: round trip, atomic writes, corrupt/foreign files moved aside, policy switch."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from cri_resmgr import podspec
from cri_resmgr.errors import StateError
from cri_resmgr.policy.base import EXCLUSIVE, GUARANTEED, Placement, Pod
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.state import STATE_FILE, VERSION, ContainerEntry, State

WALL = 1714564800.0  # 2024-05-01T12:00:00Z


def clock() -> float:
    return WALL


def _pod(pid: str = "sb1") -> Pod:
    return podspec.make_pod(
        pid,
        "uid-1",
        "web",
        "default",
        podspec.cgroup_parent("uid-1", GUARANTEED),
        annotations={"a": "b"},
        labels={"l": "v"},
    )


def _entry(cid: str, pod: Pod, cpus: str = "1") -> ContainerEntry:
    res = podspec.linux_resources(1000, 1000, 1 << 30)
    c = podspec.make_container(cid, "app", pod, res, annotations={"x": "y"})
    placement = Placement(
        cpus=CPUSet.parse(cpus),
        mems=CPUSet.of(0),
        cpu_class=EXCLUSIVE,
        exclusive=CPUSet.parse(cpus),
    )
    return ContainerEntry(container=c, resources=res, placement=placement)


def _filled(tmp_path: Path, policy: str = "static") -> State:
    st = State.load(str(tmp_path), policy, clock=clock)
    pod = _pod()
    st.put_pod(pod)
    st.put_container(_entry("c1", pod, "1"))
    st.put_container(_entry("c2", pod, "2-3"))
    st.save()
    return st


def test_round_trip(tmp_path: Path) -> None:
    st = _filled(tmp_path)
    again = State.load(str(tmp_path), "static", clock=clock)
    assert again.origin == "loaded"
    assert again.pods == st.pods
    assert again.containers == st.containers
    assert again.placements() == {
        "c1": st.containers["c1"].placement,
        "c2": st.containers["c2"].placement,
    }
    data = json.loads((tmp_path / STATE_FILE).read_text())
    assert data["version"] == VERSION and data["policy"] == "static"
    assert data["saved"] == "2024-05-01T12:00:00Z"
    assert data["containers"]["c1"]["placement"]["cpus"] == "1"
    assert data["containers"]["c1"]["resources"]["cpu_shares"] == 1024


def test_modes_and_no_temp_files_left(tmp_path: Path) -> None:
    d = tmp_path / "state"
    st = State.load(str(d), "static")
    st.save()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((d / STATE_FILE).stat().st_mode) == 0o600
    assert sorted(os.listdir(d)) == [STATE_FILE]
    # a too open existing directory is tightened
    os.chmod(d, 0o755)
    State.load(str(d), "static").close()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


def test_missing_file_is_a_fresh_state(tmp_path: Path) -> None:
    st = State.load(str(tmp_path), "static")
    assert st.origin == "missing" and not st.pods and not st.containers
    assert not (tmp_path / STATE_FILE).exists()  # nothing written until save()


def test_atomic_replace_keeps_old_file_on_write_failure(tmp_path: Path, monkeypatch) -> None:
    st = _filled(tmp_path)
    before = (tmp_path / STATE_FILE).read_bytes()
    st.drop_container("c1")

    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StateError, match="cannot write state file"):
        st.save()
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert (tmp_path / STATE_FILE).read_bytes() == before  # the old file, whole
    assert sorted(os.listdir(tmp_path)) == [STATE_FILE]  # temp file removed
    st.save()  # the next save writes the change
    assert "c1" not in State.load(str(tmp_path), "static").containers


def test_rename_is_the_commit_point(tmp_path: Path, monkeypatch) -> None:
    """The new contents appear only through rename, after the temp file is fsynced."""
    st = _filled(tmp_path)
    events = []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        os,
        "rename",
        lambda a, b: (events.append(("rename", os.path.basename(b))), real_rename(a, b))[1],
    )
    st.drop_container("c2")
    st.save()
    assert events == ["fsync", ("rename", STATE_FILE), "fsync"]  # file, rename, directory


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"   \n",
        b'{"version": 1, "policy": "static", "pods": {}, "contai',  # truncated
        b"\xff\xfe garbage",
        b"[1, 2, 3]",
        b'{"policy": "static"}',
        b'{"version": "one", "policy": "static", "pods": {}, "containers": {}}',
        b'{"version": 1, "policy": "static", "pods": {"p": {"id": "p"}}, "containers": {}}',
        b'{"version": 1, "policy": "static", "pods": {}, "containers": {"c": {"container": 5}}}',
        b'{"version": 1, "pods": {}, "containers": {}}',
    ],
)
def test_corrupt_file_is_moved_aside(tmp_path: Path, content: bytes) -> None:
    (tmp_path / STATE_FILE).write_bytes(content)
    st = State.load(str(tmp_path), "static", clock=clock)
    assert st.origin == "moved-aside"
    assert not st.pods and not st.containers
    aside = tmp_path / f"{STATE_FILE}.corrupt-20240501T120000Z"
    assert st.moved_to == str(aside)
    assert aside.read_bytes() == content
    assert not (tmp_path / STATE_FILE).exists()
    st.save()  # and the service goes on with a good file
    assert State.load(str(tmp_path), "static").origin == "loaded"


def test_moved_aside_names_do_not_collide(tmp_path: Path) -> None:
    for _ in range(3):
        (tmp_path / STATE_FILE).write_bytes(b"{")
        State.load(str(tmp_path), "static", clock=clock)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        f"{STATE_FILE}.corrupt-20240501T120000Z",
        f"{STATE_FILE}.corrupt-20240501T120000Z.2",
        f"{STATE_FILE}.corrupt-20240501T120000Z.3",
    ]


def test_state_file_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).mkdir()
    st = State.load(str(tmp_path), "static", clock=clock)
    assert st.origin == "moved-aside"


def test_other_version_is_moved_aside(tmp_path: Path) -> None:
    _filled(tmp_path)
    data = json.loads((tmp_path / STATE_FILE).read_text())
    data["version"] = VERSION + 1
    (tmp_path / STATE_FILE).write_text(json.dumps(data))
    st = State.load(str(tmp_path), "static", clock=clock)
    assert st.origin == "moved-aside" and not st.containers
    assert st.moved_to == str(tmp_path / f"{STATE_FILE}.v{VERSION + 1}-20240501T120000Z")


def test_policy_switch_drops_placements(tmp_path: Path, caplog) -> None:
    _filled(tmp_path, policy="topology-aware")
    st = State.load(str(tmp_path), "static")
    assert st.origin == "switched" and st.switched_from == "topology-aware"
    assert set(st.containers) == {"c1", "c2"}  # the containers stay ...
    assert st.placements() == {}  # ... to be placed again
    assert "policy switch" in caplog.text
    st.save()
    assert json.loads((tmp_path / STATE_FILE).read_text())["policy"] == "static"


def test_disable_policy_switch_refuses(tmp_path: Path) -> None:
    _filled(tmp_path, policy="topology-aware")
    with pytest.raises(StateError, match="disable-policy-switch") as info:
        State.load(str(tmp_path), "static", disable_policy_switch=True)
    assert "'topology-aware'" in str(info.value) and "'static'" in str(info.value)
    # the file is untouched
    assert json.loads((tmp_path / STATE_FILE).read_text())["policy"] == "topology-aware"
    # the same policy loads fine with the switch disabled
    assert (
        State.load(str(tmp_path), "topology-aware", disable_policy_switch=True).origin == "loaded"
    )


def test_unusable_directory_is_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match="state-dir"):
        State.load(str(blocker / "sub"), "static")


def test_changes(tmp_path: Path) -> None:
    st = State.load(str(tmp_path), "static")
    pod = _pod()
    st.put_pod(pod)
    st.put_container(_entry("c1", pod))
    st.put_container(_entry("c2", pod))
    assert st.set_placement("c1", None) and not st.set_placement("nope", None)
    assert st.update("c2", stopped=True) and st.containers["c2"].stopped
    assert not st.update("nope", stopped=True)
    assert set(st.placements()) == {"c2"}
    assert sorted(st.drop_pod("sb1")) == ["c1", "c2"]
    assert not st.pods and not st.containers
    assert st.drop_container("c1") is None


def test_in_memory_state_is_never_written(tmp_path: Path) -> None:
    st = State(None, "static")
    st.put_pod(_pod())
    st.save()
    assert st.to_json()["pods"]["sb1"]["name"] == "web"


def test_concurrent_saves_group_commit(tmp_path: Path) -> None:
    st = State.load(str(tmp_path), "static")
    pod = _pod()
    st.put_pod(pod)
    errors = []

    def worker(n: int) -> None:
        try:
            for i in range(20):
                st.put_container(_entry(f"c{n}-{i}", pod, str(i % 4)))
                st.save()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    again = State.load(str(tmp_path), "static")
    assert len(again.containers) == 160  # every change is in the final file


def test_write_time_is_reported(tmp_path: Path) -> None:
    """Not a benchmark (bench/ has those): a state of 200 containers, timed for the log."""
    st = State.load(str(tmp_path), "static")
    pod = _pod()
    st.put_pod(pod)
    for i in range(200):
        st.put_container(_entry(f"c{i}", pod, str(i % 8)))
    start = time.monotonic()
    for _ in range(20):
        st.save()
    per_write = (time.monotonic() - start) / 20
    size = (tmp_path / STATE_FILE).stat().st_size
    print(f"state write: {per_write * 1000:.2f} ms for {size} bytes (200 containers)")
    assert st.last_save_seconds is not None and st.last_save == pytest.approx(time.time(), abs=60)


def test_two_phase_open(tmp_path: Path) -> None:
    """`State(dir)` is an unopened state (what `hooks.Hooks` opens); open() reads it."""
    _filled(tmp_path)
    st = State(str(tmp_path))
    assert not st.opened and not st.containers
    with pytest.raises(StateError, match="before open"):
        st.save()  # would overwrite the file with an empty state
    with pytest.raises(ValueError, match="policy"):
        st.open()
    assert st.open("static") is st
    assert st.opened and st.origin == "loaded" and set(st.containers) == {"c1", "c2"}
    assert State(None, "static").opened  # nothing to read without a directory
