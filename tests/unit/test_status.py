"""status: the status document gathered inside the service, its rendering, the command.

The policy side is real: the static policy and the hooks, driven by a `simulate`
scenario into an in-memory runtime, so the document is checked against what the
runtime was told (the unit-level twin of tests/e2e/test_status.py).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import pytest
import yaml
from loop_thread import LoopThread

from cri_resmgr import cli, control, status
from cri_resmgr import config as cfg
from cri_resmgr.metrics import CallStats
from cri_resmgr.relay import CallRecord
from cri_resmgr.resources import topology as topo
from cri_resmgr.resources.cpuset import CPUSet

RS = "/runtime.v1.RuntimeService/"

SCENARIO = """
events:
  - run-pod: {name: web}
  - create-container: {pod: web, name: app, requests: {cpu: '2', memory: 1Gi},
                       limits: {cpu: '2', memory: 1Gi}}
  - create-container: {pod: web, name: side, requests: {cpu: '2', memory: 1Gi},
                       limits: {cpu: '2', memory: 1Gi}}
  - run-pod: {name: batch, namespace: jobs}
  - create-container: {pod: batch, name: job, requests: {cpu: 500m}}
"""


class FakeRelay:
    def __init__(self, reachable: bool = True) -> None:
        self.reachable = reachable

    def runtime_reachable(self) -> bool:
        return self.reachable

    def connections(self) -> int:
        return 2


class Flag:
    def __init__(self, value: bool = False) -> None:
        self.value = value

    def is_set(self) -> bool:
        return self.value


def load_config(tmp_path: Path, sysfs_root: Path, policy: str = "static") -> cfg.Config:
    return cfg.load(
        "",
        {
            ("relay", "socket"): str(tmp_path / "cri-resmgr.sock"),
            ("relay", "state-dir"): str(tmp_path / "state"),
            ("host", "sysfs-root"): str(sysfs_root),
            ("policy", "name"): policy,
            ("policy", "reserved-cpus"): "1",  # one CPU: 0
        },
    )


def real_hooks(config: cfg.Config, topology: topo.Topology, tmp_path: Path) -> Tuple[Any, Any]:
    """Hooks of the static policy after SCENARIO ran; and the in-memory runtime."""
    simulate = pytest.importorskip("cri_resmgr.simulate")
    from cri_resmgr import hooks as hooks_mod  # noqa: PLC0415
    from cri_resmgr import policy, state  # noqa: PLC0415
    from cri_resmgr.policy.reserve import resolve_reserved  # noqa: PLC0415

    reserved = resolve_reserved(topology, config.get("policy", "reserved-cpus"))
    pol = policy.create("static", topology, reserved, config.policy_options("static"))
    st = state.State.load(str(tmp_path / "state"), "static")
    runtime = simulate.InMemoryRuntime()
    hooks = hooks_mod.Hooks(pol, st, runtime, hooks_mod.HookOptions())
    hooks.resync()
    sim = simulate.Simulation(hooks, runtime, simulate.parse_scenario(yaml.safe_load(SCENARIO)))
    assert sim.run(), sim.error
    return hooks, runtime


def call_stats() -> CallStats:
    stats = CallStats()
    now = time.monotonic()
    for i in range(20):
        stats.observe(
            CallRecord(RS + "ListContainers", now - 1, now - 1 + 0.0004 * (i + 1), 0, 0, "")
        )
    for code in (0, 0, 6):
        stats.observe(CallRecord(RS + "CreateContainer", now - 1, now - 0.9, 0, code, ""))
    return stats


@pytest.fixture
def desktop(topology_root: Callable[[str], Path]) -> Tuple[Path, topo.Topology]:
    root = topology_root("desktop")
    return root, topo.load(root)


@pytest.fixture
def service(desktop: Tuple[Path, topo.Topology], tmp_path: Path) -> SimpleNamespace:
    root, topology = desktop
    config = load_config(tmp_path, root)
    hooks, runtime = real_hooks(config, topology, tmp_path)
    return SimpleNamespace(
        config=config,
        started=time.time() - 3725,
        relay=FakeRelay(),
        hooks=hooks,
        policy=hooks.policy,
        topology=topology,
        dump=None,
        call_stats=call_stats(),
        metrics_server=SimpleNamespace(address=lambda: "127.0.0.1:8891"),
        pending_restart=[cfg.Change("policy", "name", "static", "none")],
        stopping=Flag(),
        runtime_version="containerd 1.6.20",
        runtime=runtime,
    )


def gather(svc: Any, source: Optional[status.Source] = None) -> Dict[str, Any]:
    source = source or status.Source(svc)
    doc = asyncio.run(source.status({"op": "status"}))
    return json.loads(json.dumps(doc))  # what the client gets


# --- the document -----------------------------------------------------------------------


def test_document(service: SimpleNamespace, tmp_path: Path) -> None:
    doc = gather(service)
    assert doc["format"] == status.FORMAT
    assert doc["pid"] == os.getpid()
    assert doc["state"] == "running"
    assert 3700 < doc["uptime"] < 3800
    assert doc["relay"] == {
        "socket": str(tmp_path / "cri-resmgr.sock"),
        "control_socket": str(tmp_path / cfg.CONTROL_SOCKET_NAME),
        "connections": 2,
    }
    assert doc["runtime"]["reachable"] is True
    assert doc["runtime"]["version"] == "containerd 1.6.20"
    assert doc["runtime"]["socket"] == "/run/containerd/containerd.sock"
    settings = doc["config"]["settings"]
    assert settings["policy"]["name"] == {"value": "static", "source": "flag -policy"}
    assert settings["metrics"]["listen"] == {"value": "", "source": "default"}
    assert doc["config"]["pending_restart"] == [
        {"section": "policy", "key": "name", "old": "static", "new": "none"}
    ]
    assert doc["policy"]["name"] == "static" and doc["policy"]["reserved"] == "0"
    assert doc["policy"]["on_error"] == "fail"
    assert doc["metrics"] == {"listen": "127.0.0.1:8891"}
    assert doc["dump"] is None
    assert {p["name"] for p in doc["pods"]} == {"web", "batch"}
    assert {c["name"] for c in doc["containers"]} == {
        "default/web:app",
        "default/web:side",
        "jobs/batch:job",
    }
    assert doc["calls"]["methods"][0]["method"] == "ListContainers"
    assert doc["topology"]["packages"][0]["dies"][0]["nodes"][0]["id"] == 0


def test_containers_have_what_the_runtime_was_told(service: SimpleNamespace) -> None:
    doc = gather(service)
    told = {c.id: c.resources for c in service.runtime.live_containers()}
    assert len(doc["containers"]) == len(told) == 3
    owned = CPUSet()
    for c in doc["containers"]:
        assert c["cpus"] == told[c["id"]].cpuset_cpus
        assert c["mems"] == told[c["id"]].cpuset_mems
        assert c["namespace"] + "/" + c["pod"] + ":" + c["container"] == c["name"]
        if c["container"] in ("app", "side"):
            assert c["class"] == "exclusive" and c["qos"] == "guaranteed"
            assert len(CPUSet.parse(c["exclusive"])) == 2
            assert not (CPUSet.parse(c["exclusive"]) & owned)
            owned |= CPUSet.parse(c["exclusive"])
        else:
            assert c["class"] == "shared" and c["pool"] == "shared"
            assert not (CPUSet.parse(c["cpus"]) & owned)
    pools = doc["pools"]
    assert pools["exclusive"] == {"cpus": str(owned), "size": 4}
    assert pools["shared"]["size"] == len(service.topology.online) - 4


def test_states_and_missing_parts(service: SimpleNamespace) -> None:
    service.relay = None
    doc = gather(service)
    assert doc["state"] == "starting"
    assert doc["runtime"]["reachable"] is None and doc["relay"]["connections"] == 0
    service.relay = FakeRelay(reachable=False)
    service.stopping = Flag(True)
    doc = gather(service)
    assert doc["state"] == "stopping" and doc["runtime"]["reachable"] is False
    for name in ("call_stats", "metrics_server", "pending_restart", "runtime_version"):
        delattr(service, name)
    doc = gather(service)
    assert doc["calls"] is None and doc["metrics"] is None
    assert doc["config"]["pending_restart"] == [] and doc["runtime"]["version"] is None


def test_busy_policy_does_not_block_the_answer(
    service: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    class Stuck:
        def status(self) -> Dict[str, Any]:
            release.wait(10)
            return {}

    monkeypatch.setattr(status, "POLICY_TIMEOUT", 0.1)
    service.hooks = Stuck()
    try:
        doc = gather(service)
    finally:
        release.set()
    assert "did not answer within 0.1s" in doc["policy"]["error"]
    assert doc["containers"] == [] and doc["topology"] is not None


def test_policy_none_loads_the_topology_itself(
    desktop: Tuple[Path, topo.Topology], tmp_path: Path
) -> None:
    root, topology = desktop
    svc = SimpleNamespace(config=load_config(tmp_path, root, "none"), started=time.time())
    source = status.Source(svc)
    doc = gather(svc, source)
    assert doc["policy"] == {"name": "none", "options": {}}
    assert doc["containers"] == [] and doc["pools"] == {}
    cpus = [
        c
        for p in doc["topology"]["packages"]
        for d in p["dies"]
        for n in d["nodes"]
        for core in n["cores"]
        for c in core
    ]
    assert sorted(cpus) == list(topology.online)
    assert source._layout is not None  # loaded once, kept
    broken = SimpleNamespace(config=load_config(tmp_path, tmp_path / "nothing", "none"))
    doc = gather(broken)
    assert doc["topology"] is None and "topology_error" in doc
    assert "no CPU map" in status.render(doc)


def test_config_json_formats_every_key(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "10-a.conf").write_text("[dump]\nrules = full:.*\n[metrics]\nlisten = :9\n")
    config = cfg.load(str(conf), {})
    data = config_data = status.config_json(config)
    json.dumps(config_data)
    assert data["files"] == [str(conf / "10-a.conf")]
    assert data["settings"]["metrics"]["listen"] == {
        "value": ":9",
        "source": f"{conf / '10-a.conf'}:4",
    }
    assert data["settings"]["dump"]["rules"]["source"].endswith("10-a.conf:2")
    for section in data["settings"].values():
        for entry in section.values():
            assert isinstance(entry["value"], str) and isinstance(entry["source"], str)


# --- rendering --------------------------------------------------------------------------


def test_render(service: SimpleNamespace) -> None:
    doc = gather(service)
    text = status.render(doc, width=100)
    lines = text.splitlines()
    assert lines[0].startswith(
        f"cri-resmgr {doc['version']} (pid {os.getpid()}): running, up 1h02m"
    )
    assert "runtime   /run/containerd/containerd.sock: reachable (containerd 1.6.20)" in text
    assert "policy    static; reserved CPUs 0; on-error fail; 2 pods, 3 containers" in text
    assert "(2 exclusive, 1 shared)" in text
    assert "restart needed for [policy] name" in text
    assert "metrics   127.0.0.1:8891" in text
    assert "socket 0" in text and "  node 0: " in text
    assert "default/web:app  exclusive" in text
    assert "busiest methods (last 5 min)" in text
    table = text[text.index("busiest methods") :].splitlines()
    assert table[2].split()[:3] == ["ListContainers", "20", "0"]
    assert table[3].split()[:3] == ["CreateContainer", "3", "1"]
    assert "no calls yet" in status.render({**doc, "calls": None})
    assert max(len(line) for line in lines) <= 100


def test_svg_of_the_document(service: SimpleNamespace) -> None:
    svg = status.svg(gather(service))
    root = ET.fromstring(svg)
    cells = [
        g for g in root.iter("{http://www.w3.org/2000/svg}g") if "cpu" in g.get("class").split()
    ]
    assert len(cells) == len(service.topology.online)
    assert {"default/web:app", "default/web:side", "reserved"} <= {
        g.get("data-owner") for g in cells
    }


# --- the command ------------------------------------------------------------------------


@pytest.fixture
def serving(service: SimpleNamespace) -> Iterator[SimpleNamespace]:
    loop = LoopThread(timeout=30.0)
    server = control.ControlServer(
        service.config.get("relay", "control-socket"), status.Source(service).handlers()
    )
    loop.run(server.start())
    yield service
    loop.run(server.stop())
    loop.close()


def run_main(*argv: str) -> Tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = status.main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_command_json_text_and_svg(serving: SimpleNamespace, tmp_path: Path) -> None:
    relay_socket = serving.config.get("relay", "socket")
    code, out, err = run_main(f"--relay-socket={relay_socket}", "--config-dir=", "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["state"] == "running" and len(doc["containers"]) == 3
    code, out, err = run_main("--relay-socket", relay_socket, "--config-dir", "", "--width", "90")
    assert code == 0 and "busiest methods" in out and "default/web:app" in out
    picture = tmp_path / "map.svg"
    code, out, _ = run_main(f"--relay-socket={relay_socket}", "--svg", str(picture))
    assert code == 0 and out == f"wrote {picture}\n"
    ET.parse(picture)
    # found through the configuration directory, as the service would be
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "10-relay.conf").write_text(f"[relay]\nsocket = {relay_socket}\n")
    code, out, _ = run_main(f"--config-dir={conf}", "--json", "--policy=balloons")
    assert code == 0 and json.loads(out)["policy"]["name"] == "static"
    # cli dispatch, Go-style flags
    assert cli.main(["status", f"-relay-socket={relay_socket}", "-config-dir=", "--top=1"]) == 0


def test_command_against_a_service_that_is_not_running(tmp_path: Path) -> None:
    sock = tmp_path / "run" / "cri-resmgr.sock"
    code, out, err = run_main(f"--relay-socket={sock}", "--config-dir=")
    control_socket = tmp_path / "run" / cfg.CONTROL_SOCKET_NAME
    assert (code, out) == (1, "")
    assert err == f"cri-resmgr is not running: no control socket {control_socket}\n"
    code, _, err = run_main(f"--control-socket={tmp_path / 'x.sock'}")
    assert code == 1 and err.count("\n") == 1


def test_command_with_a_broken_configuration(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "10-bad.conf").write_text("[relay]\nsocket = relative/path\n[nope]\nx = 1\n")
    code, _, err = run_main(f"--config-dir={conf}")
    assert code == 1
    first, second = err.splitlines()
    assert "configuration has 2 problem(s)" in first
    assert "/var/run/cri-resmgr/cri-resmgr-control.sock" in first
    assert second.startswith("cri-resmgr is not running")


def test_command_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main("--no-such-flag")[0] == 2
    assert run_main("--help")[0] == 0
    assert "--relay-socket" in capsys.readouterr().out
