"""simulate: scenarios through the real hooks, podspec and policies on real topologies."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest

from cri_resmgr import cli, simulate
from cri_resmgr.cri import api_pb2
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.topology import load

SCENARIOS = Path(__file__).resolve().parents[1] / "data" / "scenarios"
REAL = ("desktop", "server", "2-socket-4-node-40-core")


def run(root: Path, scenario: Any, *flags: str, tmp_path: Path = Path()) -> Tuple[int, str]:
    if not isinstance(scenario, Path):  # the scenario itself: YAML text or a document
        path = tmp_path / "scenario.yaml"
        path.write_text(scenario if isinstance(scenario, str) else json.dumps(scenario))
        scenario = path
    out = io.StringIO()
    rc = simulate.main(["--sysfs-root", str(root), *flags, str(scenario)], stdout=out)
    return rc, out.getvalue()


def static(root: Path, scenario: Any, *flags: str, tmp_path: Path = Path()) -> Dict[str, Any]:
    rc, out = run(
        root, scenario, "--policy", "static", "--reserved-cpus", "2", *flags, tmp_path=tmp_path
    )
    assert rc == 0, out
    return json.loads(out)  # type: ignore[no-any-return]


def by_name(doc: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {f"{c['pod']}:{c['container']}": c for c in doc["containers"]}


def check_invariants(doc: Dict[str, Any], online: CPUSet) -> None:
    """No CPU is exclusive twice; shared containers run on the shared pool, which
    holds no exclusive CPU; everything is online."""
    owned: List[int] = []
    shared_pool = CPUSet.parse(doc["pools"]["shared"])
    for c in doc["containers"]:
        cpus = CPUSet.parse(c["cpuset_cpus"])
        assert cpus <= online, c
        assert c["cpuset_mems"], c
        if c["class"] == "exclusive":
            assert cpus == CPUSet.parse(c["exclusive"])
            owned += list(cpus)
        else:
            assert c["class"] == "shared", c
            assert cpus == shared_pool, c
    assert len(owned) == len(set(owned))
    assert not (CPUSet(owned) & shared_pool)
    assert not (CPUSet(owned) & CPUSet.parse(doc["reserved_cpus"]))


@pytest.mark.parametrize("machine", REAL)
@pytest.mark.parametrize("scenario", ["mixed-qos", "exclusive-churn", "same-pod-names"])
def test_scenarios_on_real_machines(
    topology_root: Callable[[str], Path], machine: str, scenario: str
) -> None:
    root = topology_root(machine)
    doc = static(root, SCENARIOS / f"{scenario}.yaml")
    check_invariants(doc, load(root).online)
    assert doc["policy"] == "static"


@pytest.mark.parametrize("machine", REAL)
def test_mixed_qos(topology_root: Callable[[str], Path], machine: str) -> None:
    root = topology_root(machine)
    doc = static(root, SCENARIOS / "mixed-qos.yaml")
    c = by_name(doc)
    assert set(c) == {
        "jobs/batch:worker",
        "default/idle:sleeper",
        "default/db:main",
        "default/db:sidecar",
    }  # web was removed
    assert c["default/db:main"]["class"] == "exclusive"
    assert len(CPUSet.parse(c["default/db:main"]["cpuset_cpus"])) == 1
    assert c["default/db:main"]["qos"] == "guaranteed"
    assert c["default/db:sidecar"]["class"] == "shared"  # 500m: not a whole CPU
    assert c["jobs/batch:worker"]["qos"] == "burstable"
    assert c["jobs/batch:worker"]["cpu_shares"] == 512  # kubelet's shares reached the runtime
    assert c["default/idle:sleeper"]["qos"] == "besteffort"
    assert c["default/idle:sleeper"]["cpu_shares"] == 2
    # web's 2 CPUs went back to the shared pool: only db's CPU is missing from it
    online = load(root).online
    assert CPUSet.parse(doc["pools"]["shared"]) == online - load(root).isolated - CPUSet.parse(
        c["default/db:main"]["cpuset_cpus"]
    )


def test_desktop_placements_exactly(topology_root: Callable[[str], Path]) -> None:
    """The desktop (20 CPUs, SMT siblings n and n+10): whole cores first."""
    doc = static(topology_root("desktop"), SCENARIOS / "exclusive-churn.yaml")
    c = by_name(doc)
    assert doc["reserved_cpus"] == "0,10"  # 2 CPUs = the first core
    assert c["default/g1:c"]["cpuset_cpus"] == "1-2,11-12"
    assert c["default/g3:c"]["cpuset_cpus"] == "4"
    assert c["default/g4:c"]["cpuset_cpus"] == "3,13-14"
    assert c["default/shared:a"]["cpuset_cpus"] == "0,5-10,15-19"
    assert c["default/g1:c"]["id"] != "" and c["default/g1:c"]["cpuset_mems"] == "0"


def test_same_pod_names_and_resize(topology_root: Callable[[str], Path]) -> None:
    doc = static(topology_root("2-socket-4-node-40-core"), SCENARIOS / "same-pod-names.yaml")
    c = by_name(doc)
    a, b = c["team-a/api:server"], c["team-b/api:server"]
    assert a["class"] == "exclusive" and len(CPUSet.parse(a["cpuset_cpus"])) == 2  # resized
    assert b["class"] == "shared" and b["qos"] == "burstable"


@pytest.mark.parametrize("machine", REAL)
def test_impossible_placement_exits_1(
    topology_root: Callable[[str], Path], machine: str, capsys: Any
) -> None:
    rc, out = run(topology_root(machine), SCENARIOS / "impossible.yaml", "--policy", "static")
    assert rc == 1
    doc = json.loads(out)
    assert doc["error"].startswith("events[3] (create-container default/huge:c): cri-resmgr: ")
    assert "1000 exclusive CPUs" in doc["error"]
    assert [x["container"] for x in doc["containers"]] == ["c"]  # stopped at event 3
    assert "events[3]" in capsys.readouterr().err


def test_impossible_placement_with_on_error_pass(
    topology_root: Callable[[str], Path], tmp_path: Path
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "10-pass.conf").write_text("[policy.static]\non-error = pass\n")
    rc, out = run(
        topology_root("desktop"),
        SCENARIOS / "impossible.yaml",
        "--policy",
        "static",
        "--config-dir",
        str(conf),
    )
    assert rc == 0
    c = by_name(json.loads(out))
    assert c["default/huge:c"]["cpuset_cpus"] == "" and c["default/huge:c"]["class"] is None
    assert c["default/small:never"]["class"] == "exclusive"


def test_none_policy_changes_nothing(topology_root: Callable[[str], Path]) -> None:
    rc, out = run(topology_root("desktop"), SCENARIOS / "mixed-qos.yaml", "--policy", "none")
    assert rc == 0
    for c in json.loads(out)["containers"]:
        assert c["cpuset_cpus"] == "" and c["class"] is None


def test_table(topology_root: Callable[[str], Path]) -> None:
    rc, out = run(
        topology_root("server"),
        SCENARIOS / "mixed-qos.yaml",
        "--policy",
        "static",
        "--reserved-cpus",
        "2",
        "--table",
    )
    assert rc == 0
    assert out.startswith("node 0: CPUs ")
    assert "exclusive" in out and "default/db:main" in out and "jobs/batch:worker" in out
    assert "node 4: CPUs - (" in out and "pmem" in out  # memory-only nodes are listed
    assert "reserved" in out


def _table_rows(out: str) -> Dict[str, str]:
    """Label -> CPUs of the desktop's one node in a --table output."""
    rows = [line.split() for line in out.splitlines()[1:]]
    return {r[0] if r[0] != "balloon" else r[2]: r[1] for r in rows}


def test_table_rows_do_not_overlap(topology_root: Callable[[str], Path], tmp_path: Path) -> None:
    """Reserved CPUs are not also idle; an empty balloon's CPUs are its own, not idle;
    the none policy reserves nothing."""
    root = topology_root("desktop")
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "10.conf").write_text(
        "[policy.static]\nstrict-reservation = true\n"
        "[policy.balloons.type.db]\nnamespaces = db\nmin-balloons = 2\nmin-cpus = 2\n"
    )
    empty = tmp_path / "empty.yaml"
    empty.write_text("events:\n  - run-pod: {name: web}\n")
    common = ("--reserved-cpus", "2", "--config-dir", str(conf), "--table")
    rc, out = run(root, empty, "--policy", "static", *common)
    assert rc == 0 and _table_rows(out) == {"reserved": "0,10", "idle": "1-9,11-19"}, out
    rc, out = run(root, empty, "--policy", "balloons", *common)
    assert rc == 0, out
    assert _table_rows(out) == {
        "reserved": "0,10",
        "db[0]": "1,11",
        "db[1]": "2,12",
        "idle": "3-9,13-19",
    }, out
    rc, out = run(root, SCENARIOS / "mixed-qos.yaml", "--policy", "none", *common)
    assert rc == 0 and _table_rows(out) == {"unplaced": "0-19"}, out


def test_cli_sub_command_go_style_flags(topology_root: Callable[[str], Path], capsys: Any) -> None:
    root = topology_root("desktop")
    rc = cli.main(
        [
            "simulate",
            f"-sysfs-root={root}",
            "-policy",
            "static",
            "-reserved-cpus=cpuset:0",
            str(SCENARIOS / "exclusive-churn.yaml"),
        ]
    )
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["reserved_cpus"] == "0"


def test_cgroup_drivers_place_alike(topology_root: Callable[[str], Path], tmp_path: Path) -> None:
    root = topology_root("desktop")
    text = (SCENARIOS / "mixed-qos.yaml").read_text()
    docs = []
    for driver in ("cgroupfs", "systemd"):
        docs.append(static(root, f"cgroup-driver: {driver}\n" + text, tmp_path=tmp_path))
    strip = [[{k: v for k, v in c.items() if k != "id"} for c in d["containers"]] for d in docs]
    assert strip[0] == strip[1]


def test_overhead_and_labels_are_accepted(
    topology_root: Callable[[str], Path], tmp_path: Path
) -> None:
    scenario = {
        "node-memory": "64Gi",
        "events": [
            {
                "run-pod": {
                    "name": "p",
                    "overhead": {"cpu": "100m", "memory": "64Mi"},
                    "labels": {"app": "x"},
                    "uid": "1234",
                }
            },
            {"create-container": {"pod": "p", "name": "c", "limits": {"cpu": 1, "memory": "1G"}}},
        ],
    }
    doc = static(topology_root("desktop"), scenario, tmp_path=tmp_path)
    assert by_name(doc)["default/p:c"]["class"] == "exclusive"


# --- scenario errors ---------------------------------------------------------------------

BAD: List[Tuple[Any, str]] = [
    ([], "a mapping with an events list"),
    ({"events": {}}, "field events: a list"),
    ({"events": [], "extra": 1}, "unknown field extra"),
    ({"events": [{"run-pod": {"name": "a"}, "x": {}}]}, "events[0]: one of run-pod"),
    ({"events": [{"start-pod": {"name": "a"}}]}, "events[0]: unknown event 'start-pod'"),
    ({"events": [{"run-pod": {}}]}, "events[0] (run-pod): field name is required"),
    ({"events": [{"run-pod": {"name": "a", "qos": "g"}}]}, "unknown field qos (allowed: name"),
    ({"events": [{"run-pod": {"name": ""}}]}, "field name: a non-empty string"),
    (
        {
            "events": [
                {"run-pod": {"name": "a"}},
                {"create-container": {"pod": "a", "name": "c", "requests": {"cpu": "lots"}}},
            ]
        },
        "events[1] (create-container): field requests.cpu: 'lots' is not a quantity",
    ),
    (
        {
            "events": [
                {"run-pod": {"name": "a"}},
                {"create-container": {"pod": "a", "name": "c", "limits": {"gpu": 1}}},
            ]
        },
        "field limits.gpu: unknown resource (allowed: cpu, memory)",
    ),
    (
        {
            "events": [
                {"run-pod": {"name": "a"}},
                {
                    "create-container": {
                        "pod": "a",
                        "name": "c",
                        "requests": {"cpu": 2},
                        "limits": {"cpu": 1},
                    }
                },
            ]
        },
        "field requests.cpu: more than limits.cpu",
    ),
    (
        {"events": [{"run-pod": {"name": "a", "annotations": {"k": {"x": 1}}}}]},
        "field annotations.k: a string value",
    ),
    ({"node-memory": "0", "events": []}, "field node-memory: must be more than 0"),
    # quantities beyond what kubelet can encode in CRI's int64 fields (were a traceback:
    # "ValueError: Value out of range" from the protobuf message, and exit 1)
    (
        {
            "events": [
                {"run-pod": {"name": "a"}},
                {"create-container": {"pod": "a", "name": "c", "requests": {"cpu": "1e308"}}},
            ]
        },
        "events[1] (create-container): field requests.cpu: '1e308' is more than kubelet can "
        "pass (at most 92233720368547758m: the CFS quota kubelet writes is an int64 of µs)",
    ),
    (
        {
            "events": [
                {"run-pod": {"name": "a"}},
                {"create-container": {"pod": "a", "name": "c", "limits": {"cpu": "1e308"}}},
            ]
        },
        "field limits.cpu: '1e308' is more than kubelet can pass (at most 92233720368547758m",
    ),
    (
        {
            "events": [
                {"run-pod": {"name": "a"}},
                {
                    "create-container": {
                        "pod": "a",
                        "name": "c",
                        "limits": {"memory": 99999999999999999999999},
                    }
                },
            ]
        },
        "field limits.memory: 99999999999999999999999 is more than kubelet can pass (at most "
        "9223372036854775807 bytes (8Ei - 1): the memory limit is an int64)",
    ),
    (
        {"events": [{"run-pod": {"name": "a", "overhead": {"cpu": 1e300}}}]},
        "events[0] (run-pod): field overhead.cpu: '1e+300' is more than kubelet can pass",
    ),
    ({"node-memory": "8Ei", "events": []}, "field node-memory: '8Ei' is more than kubelet"),
    # an exponent too large to compute 10**e for (it took minutes)
    (
        {
            "events": [
                {"run-pod": {"name": "a"}},
                {"create-container": {"pod": "a", "name": "c", "limits": {"cpu": "1e9999999999"}}},
            ]
        },
        "field limits.cpu: '1e9999999999' is more than kubelet can pass",
    ),
    ({"cgroup-driver": "runit", "events": []}, "field cgroup-driver: 'runit'"),
]


@pytest.mark.parametrize(("scenario", "message"), BAD)
def test_scenario_errors_name_event_and_field(
    topology_root: Callable[[str], Path], tmp_path: Path, capsys: Any, scenario: Any, message: str
) -> None:
    rc, out = run(topology_root("desktop"), scenario, "--policy", "static", tmp_path=tmp_path)
    assert rc == 2 and out == ""
    assert message in capsys.readouterr().err


RUNTIME_BAD: List[Tuple[List[Dict[str, Any]], str]] = [
    (
        [{"create-container": {"pod": "a", "name": "c"}}],
        "events[0] (create-container default/a:c): field pod: no running pod named 'a'",
    ),
    (
        [
            {"run-pod": {"name": "a", "namespace": "x"}},
            {"run-pod": {"name": "a", "namespace": "y"}},
            {"create-container": {"pod": "a", "name": "c"}},
        ],
        "field pod: 'a' is ambiguous (x/a, y/a); add namespace",
    ),
    (
        [{"run-pod": {"name": "a"}}, {"run-pod": {"name": "a"}}],
        "events[1] (run-pod default/a): field name: pod default/a is already running",
    ),
    (
        [
            {"run-pod": {"name": "a"}},
            {"create-container": {"pod": "a", "name": "c"}},
            {"create-container": {"pod": "a", "name": "c"}},
        ],
        "events[2] (create-container default/a:c): "
        "field name: default/a already has a container 'c'",
    ),
    (
        [{"run-pod": {"name": "a"}}, {"remove-container": {"pod": "a", "name": "c"}}],
        "field name: default/a has no container 'c'",
    ),
    (
        [{"remove-pod": {"name": "a"}}],
        "events[0] (remove-pod default/a): field name: no running pod",
    ),
    (
        [
            {"run-pod": {"name": "a"}},
            {"remove-pod": {"name": "a"}},
            {"create-container": {"pod": "a", "namespace": "default", "name": "c"}},
        ],
        "events[2] (create-container default/a:c): field pod: no running pod default/a",
    ),
]


@pytest.mark.parametrize(("events", "message"), RUNTIME_BAD)
def test_scenario_errors_found_while_running(
    topology_root: Callable[[str], Path],
    tmp_path: Path,
    capsys: Any,
    events: List[Dict[str, Any]],
    message: str,
) -> None:
    rc, _ = run(
        topology_root("desktop"), {"events": events}, "--policy", "static", tmp_path=tmp_path
    )
    assert rc == 2
    assert message in capsys.readouterr().err


def test_quantities_at_the_bounds() -> None:
    assert simulate.quantity("cpu", "92233720368547758m") == simulate.MAX_MILLI_CPU
    # its CFS quota (x 100000 µs / 1000) fits an int64; one milli-CPU more would not
    assert simulate.MAX_MILLI_CPU * 100 <= (1 << 63) - 1 < (simulate.MAX_MILLI_CPU + 1) * 100
    assert simulate.quantity("memory", str((1 << 63) - 1)) == simulate.MAX_MEMORY
    assert simulate.quantity("memory", "7Ei") == 7 << 60
    # huge exponents are decided without computing the power
    assert simulate.quantity("cpu", "1e-9999999999") == 1  # rounded up to 1m
    assert simulate.quantity("memory", "0.0e9999999999") == 0
    with pytest.raises(ValueError, match="is negative"):
        simulate.quantity("cpu", "-2e9999999999")
    with pytest.raises(ValueError, match="not a quantity"):
        simulate.quantity("cpu", "e9999999999")


def test_pod_level_sums_beyond_int64(
    topology_root: Callable[[str], Path], tmp_path: Path, capsys: Any
) -> None:
    # each limit fits, their sum in the pod-level resources of run-pod does not
    big = {"cpu": "92233720368547758m", "memory": "1Gi"}
    events = [
        {"run-pod": {"name": "a"}},
        {"create-container": {"pod": "a", "name": "c1", "limits": big}},
        {"create-container": {"pod": "a", "name": "c2", "limits": big}},
    ]
    rc, _ = run(
        topology_root("desktop"), {"events": events}, "--policy", "static", tmp_path=tmp_path
    )
    assert rc == 2
    assert (
        "events[0] (run-pod default/a): the CPU limits of the pod's containers add up to "
        "more than kubelet can pass (at most 92233720368547758m"
    ) in capsys.readouterr().err


def test_deeply_nested_yaml(
    topology_root: Callable[[str], Path], tmp_path: Path, capsys: Any
) -> None:
    deep = "events: " + "[" * 5000 + "]" * 5000 + "\n"
    rc, out = run(topology_root("desktop"), deep, "--policy", "static", tmp_path=tmp_path)
    assert (rc, out) == (2, "")
    assert capsys.readouterr().err == (
        f"cri-resmgr simulate: {tmp_path}/scenario.yaml: lists or mappings nested too deeply "
        "for the YAML reader\n"
    )


def test_scenario_not_utf8_names_the_file(
    topology_root: Callable[[str], Path], tmp_path: Path, capsys: Any
) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"events:\n  - run-pod: {name: caf\xe9}\n")
    rc, out = run(topology_root("desktop"), path, "--policy", "static")
    assert (rc, out) == (2, "")
    assert capsys.readouterr().err == (
        f"cri-resmgr simulate: {path}: line 2: not valid UTF-8 (byte 0xe9 at offset 31)\n"
    )
    # a number of more digits than Python converts: named too, without its advice
    rc, _ = run(
        topology_root("desktop"), "x: " + "1" * 5000, "--policy", "static", tmp_path=tmp_path
    )
    err = capsys.readouterr().err
    assert rc == 2 and f"{tmp_path}/scenario.yaml: a value the YAML reader cannot take: " in err
    assert "set_int_max_str_digits" not in err


def test_scenario_from_stdin_bytes(
    topology_root: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    class Stdin:
        buffer = io.BytesIO(b"events: []\n\xff\n")

    monkeypatch.setattr("sys.stdin", Stdin())
    out = io.StringIO()
    rc = simulate.main(
        ["--sysfs-root", str(topology_root("desktop")), "--policy", "static", "-"], stdout=out
    )
    assert rc == 2
    assert capsys.readouterr().err == (
        "cri-resmgr simulate: -: line 2: not valid UTF-8 (byte 0xff at offset 11)\n"
    )


def test_bad_yaml_and_missing_file(
    topology_root: Callable[[str], Path], tmp_path: Path, capsys: Any
) -> None:
    rc, _ = run(topology_root("desktop"), "events: [", "--policy", "static", tmp_path=tmp_path)
    assert rc == 2 and "not valid YAML" in capsys.readouterr().err
    rc, _ = run(topology_root("desktop"), tmp_path / "nope.yaml", "--policy", "static")
    assert rc == 2 and "cannot read the scenario" in capsys.readouterr().err


def test_bad_configuration_and_topology(tmp_path: Path, capsys: Any) -> None:
    rc, _ = run(tmp_path, SCENARIOS / "mixed-qos.yaml", "--policy", "static")
    assert rc == 2 and "sysfs" in capsys.readouterr().err
    rc, _ = run(tmp_path, SCENARIOS / "mixed-qos.yaml", "--policy", "gold")
    assert rc == 2 and "[policy] name" in capsys.readouterr().err


# --- the in-memory runtime -----------------------------------------------------------------


def test_in_memory_runtime_merges_updates_like_containerd() -> None:
    rt = simulate.InMemoryRuntime()
    pod = rt.RunPodSandbox(api_pb2.RunPodSandboxRequest()).pod_sandbox_id
    req = api_pb2.CreateContainerRequest(pod_sandbox_id=pod)
    req.config.linux.resources.cpu_shares = 512
    req.config.linux.resources.cpuset_cpus = "0-3"
    cid = rt.CreateContainer(req).container_id
    rt.runtime.UpdateContainerResources(
        api_pb2.UpdateContainerResourcesRequest(
            container_id=cid, linux=api_pb2.LinuxContainerResources(cpuset_cpus="1")
        )
    )
    res = rt.containers[cid].resources
    assert (res.cpu_shares, res.cpuset_cpus) == (512, "1")  # zero fields keep the value
    assert rt.pushes == [cid]
    status = rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid))
    assert status.status.resources.linux.cpuset_cpus == "1"
    info = rt.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod, verbose=True))
    assert "cgroup_parent" in json.loads(info.info["info"])["config"]["linux"]
    listed = rt.ListContainers(
        api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(pod_sandbox_id=pod))
    )
    assert [c.id for c in listed.containers] == [cid]


def test_a_configuration_the_machine_cannot_hold_is_refused_as_the_service_would(
    topology_root: Callable[[str], Path], tmp_path: Path, capsys: Any
) -> None:
    """simulate checks the configuration against the topology like the service
    (`policy.checked`): a balloon type larger than the desktop is an error naming the
    file, line and key, not a scenario run."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "10-big.conf").write_text("[policy.balloons.type.big]\nmin-cpus = 999\n")
    rc, out = run(
        topology_root("desktop"),
        SCENARIOS / "mixed-qos.yaml",
        "--policy",
        "balloons",
        "--config-dir",
        str(conf),
    )
    err = capsys.readouterr().err
    assert rc != 0 and out == ""
    assert f"{conf / '10-big.conf'}:2" in err
    assert '[policy.balloons.type.big] min-cpus = "999"' in err
