"""state: round trip, atomic writes, corrupt/foreign files moved aside, policy switch."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
import time
from dataclasses import fields
from pathlib import Path

import pytest

from cri_resmgr import hooks, podspec, state, state_format
from cri_resmgr.errors import StateError
from cri_resmgr.policy.base import EXCLUSIVE, GUARANTEED, Container, Placement, Pod
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


# -- what a start-up refuses to read, and what it checks in what it reads


def _moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture, *fragments: str) -> State:
    """Load `tmp_path`; the file must have been moved aside as corrupt with one warning
    naming the file and every fragment, and the state must be empty and writable."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cri_resmgr.state"):
        st = State.load(str(tmp_path), "static", clock=clock)
    assert st.origin == "moved-aside", caplog.text
    assert st.moved_to == str(tmp_path / f"{STATE_FILE}.corrupt-20240501T120000Z")
    assert not st.pods and not st.containers
    assert not os.path.lexists(tmp_path / STATE_FILE)
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"state file {tmp_path / STATE_FILE} is unusable: " in warning
    for fragment in fragments:
        assert fragment in warning, warning
    st.save()  # the service goes on with a good file
    assert State.load(str(tmp_path), "static").origin == "loaded"
    return st


def test_deeply_nested_json_is_corrupt(tmp_path: Path, caplog) -> None:
    """json.loads raises RecursionError (not ValueError) on deep nesting."""
    for name, text in (
        ("arrays", "[" * 100000 + "]" * 100000),
        ("objects", '{"a":' * 100000 + "1" + "}" * 100000),
    ):
        d = tmp_path / name
        d.mkdir()
        (d / STATE_FILE).write_text(text)
        _moved_aside(d, caplog, "nest too deeply for the JSON parser")


@pytest.mark.parametrize(
    ("version", "shown"),
    [
        (True, "version is true (a boolean); expected the integer 1"),
        (1.0, "version is 1.0 (a number with a fraction or an exponent); expected the integer 1"),
        ("1", 'version is "1" (a string); expected the integer 1'),
        (None, "version is null; expected the integer 1"),
        # a 300-digit version cannot name the moved-aside copy (ENAMETOOLONG)
        (10**300, "version is 1000000000000"),
        (-1, "version is -1 (an integer); expected the integer 1"),
    ],
)
def test_version_must_be_the_integer_1(tmp_path: Path, caplog, version, shown: str) -> None:
    _filled(tmp_path)
    data = json.loads((tmp_path / STATE_FILE).read_text())
    data["version"] = version
    (tmp_path / STATE_FILE).write_text(json.dumps(data))
    _moved_aside(tmp_path, caplog, shown)


INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)
INT64 = f"expected an integer in {INT64_MIN}..{INT64_MAX} (int64"
C1 = 'containers["c1"]'
P1 = 'pods["sb1"]'


def _set(*path: str, value: object = None, drop: bool = False):
    """A change of the JSON of `_filled`: set (or drop) the field at `path`."""

    def change(data: dict) -> None:
        target = data
        for name in path[:-1]:
            target = target[name]
        if drop:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    return change


# (change, fragments of the warning: the record key and field, the value, what fits)
BAD_RECORDS = {
    "shares as a string": (
        _set("containers", "c1", "resources", "cpu_shares", value="1024"),
        f'{C1}.resources.cpu_shares is "1024" (a string); {INT64}, as '
        "LinuxContainerResources.cpu_shares)",
    ),
    "shares as a float": (
        _set("containers", "c1", "resources", "cpu_shares", value=1e30),
        f"{C1}.resources.cpu_shares is 1e+30 (a number with a fraction or an exponent); {INT64}",
    ),
    "shares over int64": (
        _set("containers", "c1", "resources", "cpu_shares", value=INT64_MAX + 1),
        f"{C1}.resources.cpu_shares is {INT64_MAX + 1} (an integer); {INT64}",
    ),
    "quota under int64": (
        _set("containers", "c1", "resources", "cpu_quota", value=INT64_MIN - 1),
        f"{C1}.resources.cpu_quota is {INT64_MIN - 1} (an integer); {INT64}",
    ),
    "memory limit as a bool": (
        _set("containers", "c1", "resources", "memory_limit_in_bytes", value=True),
        f"{C1}.resources.memory_limit_in_bytes is true (a boolean); {INT64}",
    ),
    "oom_score_adj as 1.0": (
        _set("containers", "c1", "resources", "oom_score_adj", value=1.0),
        f"{C1}.resources.oom_score_adj is 1.0 (a number",
    ),
    "resources cpuset as a number": (
        _set("containers", "c1", "resources", "cpuset_cpus", value=3),
        f"{C1}.resources.cpuset_cpus is 3 (an integer); expected a string",
    ),
    "resources null": (
        _set("containers", "c1", "resources", value=None),
        f"{C1}.resources is null; expected an object",
    ),
    "resources a list": (
        _set("containers", "c1", "resources", value=[1]),
        f"{C1}.resources is [1] (a list of 1 item); expected an object",
    ),
    "annotations a list": (
        _set("containers", "c1", "container", "annotations", value=["x"]),
        f'{C1}.container.annotations is ["x"] (a list of 1 item); expected an object of strings',
    ),
    "annotation value a number": (
        _set("containers", "c1", "container", "annotations", value={"x": 5}),
        f'{C1}.container.annotations["x"] is 5 (an integer); expected a string',
    ),
    "pod annotations null": (
        _set("containers", "c1", "container", "pod_annotations", value=None),
        f"{C1}.container.pod_annotations is null; expected an object of strings",
    ),
    "pod labels nested": (
        _set("pods", "sb1", "labels", value={"l": {"v": 1}}),
        f'{P1}.labels["l"] is {{"v": 1}} (an object of 1 field); expected a string',
    ),
    "stopped as a string": (
        _set("containers", "c1", "stopped", value="false"),
        f'{C1}.stopped is "false" (a string); expected true or false',
    ),
    "stopped as 0": (
        _set("containers", "c1", "stopped", value=0),
        f"{C1}.stopped is 0 (an integer); expected true or false",
    ),
    "container qos unknown": (
        _set("containers", "c1", "container", "qos", value="gold"),
        f'{C1}.container.qos is "gold" (a string); expected one of "guaranteed", '
        '"burstable", "besteffort"',
    ),
    "pod qos upper case": (
        _set("pods", "sb1", "qos", value="Guaranteed"),
        f'{P1}.qos is "Guaranteed" (a string); expected one of "guaranteed"',
    ),
    "placement class unknown": (
        _set("containers", "c1", "placement", "class", value="gold"),
        f'{C1}.placement.class is "gold" (a string); expected one of "exclusive", "shared", '
        '"reserved", "isolated", "preserved"',
    ),
    "placement shares as a string": (
        _set("containers", "c1", "placement", "cpu_shares", value="2"),
        f'{C1}.placement.cpu_shares is "2" (a string); expected null or an integer in',
    ),
    "placement shares over int64": (
        _set("containers", "c1", "placement", "cpu_shares", value=1 << 63),
        f"{C1}.placement.cpu_shares is {1 << 63} (an integer); expected null or an integer",
    ),
    "placement pool a number": (
        _set("containers", "c1", "placement", "pool", value=5),
        f"{C1}.placement.pool is 5 (an integer); expected a string",
    ),
    "placement mems a number": (
        _set("containers", "c1", "placement", "mems", value=0),
        f"{C1}.placement.mems is 0 (an integer); expected null or a CPU list",
    ),
    "placement exclusive out of range": (
        _set("containers", "c1", "placement", "exclusive", value="0-70000"),
        f'{C1}.placement.exclusive is "0-70000" (a string); expected a CPU list in the '
        "kernel's syntax",
    ),
    "placement without cpus": (
        _set("containers", "c1", "placement", "cpus", drop=True),
        f"{C1}.placement has no 'cpus'; expected a CPU list",
    ),
    "negative cpu request": (
        _set("containers", "c1", "container", "cpu_request", value=-1),
        f"{C1}.container.cpu_request is -1 (an integer); expected an integer in "
        f"0..{INT64_MAX * 1000} (milli-CPUs)",
    ),
    "cpu limit as a bool": (
        _set("containers", "c1", "container", "cpu_limit", value=False),
        f"{C1}.container.cpu_limit is false (a boolean); expected an integer in 0..",
    ),
    "memory limit over int64": (
        _set("containers", "c1", "container", "memory_limit", value=1 << 63),
        f"{C1}.container.memory_limit is {1 << 63} (an integer); expected an integer in "
        f"0..{INT64_MAX} (bytes)",
    ),
    "pod overhead as a float": (
        _set("pods", "sb1", "overhead_cpu", value=0.5),
        f"{P1}.overhead_cpu is 0.5 (a number with a fraction or an exponent); expected an "
        "integer in 0..",
    ),
    "container name missing": (
        _set("containers", "c1", "container", "name", drop=True),
        f"{C1}.container has no 'name'; expected a string",
    ),
    "container id not its key": (
        _set("containers", "c1", "container", "id", value="c9"),
        f'{C1}.container.id is "c9" (a string); expected "c1", the key it is filed under',
    ),
    "pod id not its key": (
        _set("pods", "sb1", "id", value="sb9"),
        f'{P1}.id is "sb9" (a string); expected "sb1", the key it is filed under',
    ),
    "unpaired surrogate": (
        _set("pods", "sb1", "name", value="\ud800"),
        f'{P1}.name is "\\ud800" (a string); expected text without unpaired',
    ),
    "unpaired surrogate in an annotation": (
        _set("containers", "c1", "container", "annotations", value={"x": "a\udc00"}),
        f'{C1}.container.annotations["x"] is "a\\udc00" (a string); expected text without',
    ),
    "entry a string": (
        _set("containers", "c1", value="c1"),
        f'{C1} is "c1" (a string); expected an object',
    ),
    "containers as pairs": (
        lambda data: data.update(containers=list(data["containers"].items())),
        "(a list of 2 items); expected an object of records",
    ),
    "pods missing": (
        _set("pods", drop=True),
        "it has no 'pods'; expected an object of records",
    ),
    "saved a number": (
        _set("saved", value=5),
        "saved is 5 (an integer); expected a string",
    ),
    "policy a list": (
        _set("policy", value=["static"]),
        'policy is ["static"] (a list of 1 item); expected a string',
    ),
}


def test_the_schema_covers_every_field() -> None:
    """Each field the records write is checked (a new field needs its check, or it
    would be written and lost at the next start)."""
    assert set(state_format._POD) == {f.name for f in fields(Pod)}
    assert set(state_format._CONTAINER) == {f.name for f in fields(Container)}
    assert set(state_format._RESOURCES) == {f.name for f in fields(podspec.LinuxResources)}
    placement = Placement(CPUSet.of(1), CPUSet.of(0), cpu_shares=2, exclusive=CPUSet.of(1))
    assert set(state_format._PLACEMENT) == set(placement.to_json())
    assert set(state_format._ENTRY) == set(_entry("c1", _pod()).to_json())


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"[]", "it is [] (a list of 0 items); expected an object of version, policy"),
        (b'{"policy": "static"}', "it has no 'version'; expected the integer 1"),
        (b'{"version": 1, "pods": {}, "containers": {}}', "it has no 'policy'; expected a string"),
    ],
)
def test_top_level_reasons(tmp_path: Path, caplog, content: bytes, reason: str) -> None:
    (tmp_path / STATE_FILE).write_bytes(content)
    _moved_aside(tmp_path, caplog, reason)


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_every_field_is_checked(tmp_path: Path, caplog, case: str) -> None:
    """A value that does not fit its field makes the file corrupt: moved aside with a
    warning that names the record key and field, the value and what was expected (it
    would crash later: resources_pb, dict() of annotations, bool("false"), ...)."""
    change, fragment = BAD_RECORDS[case]
    _filled(tmp_path)
    data = json.loads((tmp_path / STATE_FILE).read_text())
    change(data)
    (tmp_path / STATE_FILE).write_text(json.dumps(data))
    _moved_aside(tmp_path, caplog, fragment)


def test_long_values_are_shortened_in_the_warning(tmp_path: Path, caplog) -> None:
    _filled(tmp_path)
    data = json.loads((tmp_path / STATE_FILE).read_text())
    data["containers"]["c1"]["resources"]["cpu_shares"] = "9" * 100000
    (tmp_path / STATE_FILE).write_text(json.dumps(data))
    _moved_aside(tmp_path, caplog, f'{C1}.resources.cpu_shares is "999')
    assert len(caplog.records[-1].getMessage()) < 1000


def test_what_loads_can_be_sent(tmp_path: Path) -> None:
    """The extremes the schema accepts load, and the resources and placements that
    loaded become CRI messages (what the start-up push and StopContainer build)."""
    _filled(tmp_path)
    data = json.loads((tmp_path / STATE_FILE).read_text())
    for value in (INT64_MIN, INT64_MAX):
        entry = data["containers"]["c1"]
        entry["resources"] = {
            "cpu_period": value,
            "cpu_quota": value,
            "cpu_shares": value,
            "memory_limit_in_bytes": value,
            "oom_score_adj": value,
            "cpuset_cpus": "0-3",
            "cpuset_mems": "0",
        }
        entry["placement"]["cpu_shares"] = value
        entry["container"]["cpu_request"] = INT64_MAX * 1000
        entry["container"]["memory_limit"] = INT64_MAX
        entry["container"]["annotations"] = {"ünïcode": "\u2603 \U0001f600"}
        (tmp_path / STATE_FILE).write_text(json.dumps(data))
        st = State.load(str(tmp_path), "static")
        assert st.origin == "loaded"
        loaded = st.containers["c1"]
        assert loaded.resources.cpu_shares == value
        msg = hooks.resources_pb(loaded.resources)
        assert msg.cpu_shares == value and msg.cpuset_cpus == "0-3"
        hooks.resources_pb(hooks._with_placement(loaded.resources, loaded.placement))
        assert loaded.placement is not None and loaded.placement.cpu_shares == value


def test_what_cri_resmgr_writes_loads(tmp_path: Path) -> None:
    """The largest estimates podspec gives (int64 quota over a 1 µs period) and every
    optional field unset or null: the service never refuses its own file."""
    st = State.load(str(tmp_path), "static")
    pod = podspec.make_pod(
        "sb1",
        "",
        "web",
        "default",
        resources=podspec.LinuxResources(cpu_quota=INT64_MAX, cpu_period=1),
        overhead=podspec.LinuxResources(cpu_quota=INT64_MAX, cpu_period=1),
    )
    st.put_pod(pod)
    res = podspec.LinuxResources(
        cpu_quota=INT64_MAX, cpu_period=1, cpu_shares=INT64_MAX, memory_limit_in_bytes=-1
    )
    c = podspec.make_container("c1", "app", pod, res, annotations={})
    assert c.cpu_limit == INT64_MAX * 1000
    st.put_container(ContainerEntry(c, res))
    unplaced = podspec.make_container("c2", "b", pod, podspec.LinuxResources())
    st.put_container(ContainerEntry(unplaced, placement=Placement(cpus=CPUSet()), stopped=True))
    st.save()
    again = State.load(str(tmp_path), "static")
    assert again.origin == "loaded"
    assert again.pods == st.pods and again.containers == st.containers


def test_missing_optional_fields_take_their_defaults(tmp_path: Path) -> None:
    """Fields with a default may be left out; fields the schema lacks are ignored."""
    (tmp_path / STATE_FILE).write_text(
        json.dumps(
            {
                "version": 1,
                "policy": "static",
                "future": {"any": ["thing"]},
                "pods": {"p": {"id": "p", "uid": "u", "name": "n", "namespace": "ns", "x": 1}},
                "containers": {
                    "c": {
                        "container": {
                            "id": "c",
                            "pod_id": "p",
                            "name": "a",
                            "pod_name": "n",
                            "namespace": "ns",
                        },
                        "placement": {"cpus": "1-2"},
                    }
                },
            }
        )
    )
    st = State.load(str(tmp_path), "static")
    assert st.origin == "loaded"
    entry = st.containers["c"]
    assert entry.resources == podspec.LinuxResources() and not entry.stopped
    assert entry.placement == Placement(cpus=CPUSet.parse("1-2"))
    assert st.pods["p"].annotations == {} and st.pods["p"].qos == "besteffort"
    assert st.pods["p"].annotations is not entry.container.annotations  # no shared default


def _load_in_thread(tmp_path: Path, fifo: Path) -> State:
    """State.load in a thread: if it blocks on the FIFO, a writer frees it and the test
    fails instead of hanging."""
    result: list = []
    t = threading.Thread(
        target=lambda: result.append(State.load(str(tmp_path), "static", clock=clock))
    )
    t.daemon = True
    t.start()
    t.join(5)
    if t.is_alive():
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        t.join(5)
        pytest.fail("State.load blocked on a FIFO")
    return result[0]


def test_fifo_is_moved_aside_without_blocking(tmp_path: Path, caplog) -> None:
    fifo = tmp_path / STATE_FILE
    os.mkfifo(fifo)
    with caplog.at_level(logging.WARNING, logger="cri_resmgr.state"):
        st = _load_in_thread(tmp_path, fifo)
    assert st.origin == "moved-aside" and not st.containers
    assert stat.S_ISFIFO(os.lstat(st.moved_to).st_mode)  # the FIFO itself, renamed
    assert f"{fifo} is unusable: it is a FIFO (named pipe), not a regular file" in caplog.text


def test_symlink_to_dev_zero_is_not_read(tmp_path: Path, caplog, monkeypatch) -> None:
    monkeypatch.setattr(state, "MAX_FILE_SIZE", 1 << 20)  # a bound even if it were read
    os.symlink("/dev/zero", tmp_path / STATE_FILE)
    _moved_aside(
        tmp_path,
        caplog,
        "it is a character device (a symbolic link to '/dev/zero'), not a regular file",
    )
    assert os.readlink(tmp_path / f"{STATE_FILE}.corrupt-20240501T120000Z") == "/dev/zero"


def test_socket_and_symlink_loop_are_moved_aside(tmp_path: Path, caplog) -> None:
    """open() of a socket fails (ENXIO) and stat() of a loop does (ELOOP): both used
    to stop the service with 'cannot read state file' at every start."""
    sock = socket.socket(socket.AF_UNIX)
    (tmp_path / "socket").mkdir()
    try:
        sock.bind(str(tmp_path / "socket" / STATE_FILE))
        _moved_aside(tmp_path / "socket", caplog, "it is a socket, not a regular file")
    finally:
        sock.close()
    (tmp_path / "loop").mkdir()
    os.symlink(STATE_FILE, tmp_path / "loop" / STATE_FILE)
    _moved_aside(
        tmp_path / "loop",
        caplog,
        "it is a symbolic link (to 'state.json') that cannot be followed: Too many levels of "
        "symbolic links; expected a regular file",
    )


def test_symlinks_are_followed_to_regular_files(tmp_path: Path) -> None:
    """A link to a good file loads (the first save replaces the link); a dangling one is
    no file."""
    _filled(tmp_path / "elsewhere")
    link = tmp_path / "dir"
    link.mkdir()
    os.symlink(tmp_path / "elsewhere" / STATE_FILE, link / STATE_FILE)
    st = State.load(str(link), "static")
    assert st.origin == "loaded" and set(st.containers) == {"c1", "c2"}
    os.unlink(link / STATE_FILE)
    os.symlink(tmp_path / "nowhere", link / STATE_FILE)
    st = State.load(str(link), "static")
    assert st.origin == "missing"
    st.save()
    assert not (link / STATE_FILE).is_symlink()


def test_file_over_the_size_limit_is_moved_aside(tmp_path: Path, caplog, monkeypatch) -> None:
    st = _filled(tmp_path)
    size = (tmp_path / STATE_FILE).stat().st_size
    monkeypatch.setattr(state, "MAX_FILE_SIZE", size)
    assert State.load(str(tmp_path), "static").origin == "loaded"  # the limit itself fits
    monkeypatch.setattr(state, "MAX_FILE_SIZE", size - 1)
    with caplog.at_level(logging.ERROR, logger="cri_resmgr.state"):
        st.save()  # the writer says the next start will not read it
    assert f"state file {tmp_path / STATE_FILE} is {size} bytes, more than the {size - 1}" in (
        caplog.text
    )
    _moved_aside(tmp_path, caplog, f"it is {size} bytes, larger than {size - 1} bytes")


def test_read_is_bounded_when_the_size_is_not_known(tmp_path: Path, caplog, monkeypatch) -> None:
    """/proc files are regular with st_size 0: the read itself stops at the limit."""
    target = Path("/proc/self/mountinfo")
    assert target.stat().st_size == 0 and len(target.read_bytes()) > 200
    monkeypatch.setattr(state, "MAX_FILE_SIZE", 100)
    os.symlink(target, tmp_path / STATE_FILE)
    _moved_aside(tmp_path, caplog, "it is larger than 100 bytes, the most a start-up reads")


def test_the_size_limit_holds_10000_containers(tmp_path: Path) -> None:
    """docs/state.md: 10,000 containers in 1,000 pods, with kubelet's annotations and a
    kubectl last-applied-configuration, take about 15 MiB: a few times under the limit."""
    st = State.load(str(tmp_path), "static")
    uid = "0b3e5b8e-1111-2222-3333-444455556666"
    pod = podspec.make_pod(
        "f" * 64,
        uid,
        "web-7d4b9c8f6d-x2k9p",
        "default",
        podspec.cgroup_parent(uid, GUARANTEED),
        annotations={
            "kubernetes.io/config.seen": "2024-05-01T12:00:00.123456789Z",
            "kubernetes.io/config.source": "api",
            "kubectl.kubernetes.io/last-applied-configuration": "x" * 400,
        },
        labels={"app": "web", "pod-template-hash": "7d4b9c8f6d", "io.kubernetes.pod.uid": uid},
    )
    st.put_pod(pod)
    annotations = {
        "io.kubernetes.container.hash": "a1b2c3d4",
        "io.kubernetes.container.restartCount": "0",
        "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
        "io.kubernetes.container.terminationMessagePolicy": "File",
        "io.kubernetes.pod.terminationGracePeriod": "30",
    }
    res = podspec.linux_resources(2000, 2000, 1 << 30)
    for i in range(10):
        c = podspec.make_container(f"{i:064x}", f"app{i}", pod, res, annotations)
        placement = Placement(CPUSet.parse("2-3"), CPUSet.of(0), EXCLUSIVE, "exclusive")
        st.put_container(ContainerEntry(c, res, placement))
    st.save()
    ten = (tmp_path / STATE_FILE).stat().st_size  # one pod of 10 containers
    assert ten * 1000 < 16 << 20
    assert ten * 1000 * 8 < state.MAX_FILE_SIZE
