"""End-to-end: `cri-resmgr status` and the metrics endpoint of a relay with the static policy.

A real containerd, the real service process (static policy, one CPU reserved, metrics
on a unix socket), a Guaranteed pod with an exclusive container and a BestEffort pod
with a shared one, created through the relay. Then `cri-resmgr status --json` (a
separate process, found through the same flags as the service) must list both with the
CPUs and memory nodes their cgroups really have, the text output must show them in the
CPU map, the metrics endpoint must count the CreateContainer calls made, and once the
service is gone the command must say so in one line and exit 1.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import grpc
from prometheus_client.parser import text_string_to_metric_families

from cri_resmgr.resources.cpuset import CPUSet
from harness import cri_objects as co
from harness.cgroups import cpuset_of

MiB = 1 << 20


def status_cmd(proc: Any, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cri_resmgr.cli",
            "status",
            f"-relay-socket={proc.socket}",
            f"-config-dir={proc.config_dir}",
            *args,
        ],
        capture_output=True,
        text=True,
        env=proc.env,
        timeout=60,
        check=False,
    )


def scrape(path: str) -> Dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), head
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def sample(families: Dict[str, Any], name: str, suffix: str = "", **labels: str) -> float:
    family = families[name]
    values: List[float] = [
        s.value
        for s in family.samples
        if s.name == name + suffix and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(values) == 1, (name, labels, family.samples)
    return values[0]


def create_pods(proc: Any) -> Dict[str, int]:
    """Through the relay: an exclusive and a shared container; container id -> host pid."""
    with grpc.insecure_channel("unix:" + proc.socket) as ch:
        pinned_pod = co.pod_sandbox_config("e2e-pinned", namespace="e2e", qos="guaranteed")
        pinned_pod_id = co.run_pod(ch, pinned_pod)
        one_cpu = {"cpu": 1000, "memory": 64 * MiB}
        pinned = co.container_config(
            "pinned", pinned_pod, command=["sleep", "3600"], requests=one_cpu, limits=one_cpu
        )
        pinned_id = co.create_and_start(ch, pinned_pod_id, pinned_pod, pinned)
        shared_pod = co.pod_sandbox_config("e2e-shared", namespace="e2e")
        shared_pod_id = co.run_pod(ch, shared_pod)
        shared = co.container_config("shared", shared_pod, command=["sleep", "3600"])
        shared_id = co.create_and_start(ch, shared_pod_id, shared_pod, shared)
        return {cid: co.container_pid(ch, cid) for cid in (pinned_id, shared_id)}


def check_document(doc: Dict[str, Any], pids: Dict[str, int]) -> None:
    pinned_id, shared_id = pids
    assert doc["state"] == "running" and doc["policy"]["name"] == "static"
    assert doc["runtime"]["reachable"] is True
    containers = {c["id"]: c for c in doc["containers"]}
    assert containers[pinned_id]["name"] == "e2e/e2e-pinned:pinned"
    assert containers[pinned_id]["class"] == "exclusive"
    assert len(CPUSet.parse(containers[pinned_id]["exclusive"])) == 1
    assert containers[shared_id]["name"] == "e2e/e2e-shared:shared"
    assert containers[shared_id]["class"] == "shared"
    for cid, pid in pids.items():
        cgroup = cpuset_of(pid)  # what the kernel applied
        assert CPUSet.parse(cgroup.cpus) == CPUSet.parse(containers[cid]["cpus"]), cid
        assert CPUSet.parse(cgroup.allowed) == CPUSet.parse(containers[cid]["cpus"]), cid
        assert CPUSet.parse(cgroup.mems) == CPUSet.parse(containers[cid]["mems"]), cid
    pinned_cpus = CPUSet.parse(containers[pinned_id]["cpus"])
    assert not pinned_cpus & CPUSet.parse(containers[shared_id]["cpus"])
    assert {p["name"] for p in doc["pods"]} >= {"e2e-pinned", "e2e-shared"}
    assert doc["pools"]["exclusive"]["cpus"] == str(pinned_cpus)
    create = next(m for m in doc["calls"]["methods"] if m["method"] == "CreateContainer")
    assert create["calls"] == 2 and create["errors"] == 0


def check_metrics(metrics_socket: str) -> None:
    families = scrape(metrics_socket)
    calls = "cri_resmgr_calls"
    assert sample(families, calls, "_total", method="CreateContainer", code="OK") == 2
    assert sample(families, calls, "_total", method="RunPodSandbox", code="OK") == 2
    hist = "cri_resmgr_call_duration_seconds"
    assert sample(families, hist, "_count", method="CreateContainer") == 2
    exclusive = "cri_resmgr_container_exclusive_cpus"
    assert sample(families, exclusive, namespace="e2e", pod="e2e-pinned", container="pinned") == 1
    assert sample(families, "cri_resmgr_pool_cpus", pool="exclusive") == 1
    assert sample(families, "cri_resmgr_runtime_reachable") == 1


def test_status_and_metrics_with_the_static_policy(relay_factory: Any) -> None:
    proc = relay_factory("-policy=static", "-reserved-cpus=1", start=False)
    metrics_socket = str(proc.workdir / "metrics.sock")
    (proc.config_dir / "50-metrics.conf").write_text(f"[metrics]\nlisten = unix:{metrics_socket}\n")
    proc.start()
    control_socket = Path(proc.socket).parent / "cri-resmgr-control.sock"
    assert stat.S_IMODE(os.stat(control_socket).st_mode) == 0o600
    pids = create_pods(proc)

    result = status_cmd(proc, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    check_document(doc, pids)
    assert doc["metrics"] == {"listen": "unix:" + metrics_socket}
    text = status_cmd(proc)
    assert text.returncode == 0, text.stderr
    assert "e2e/e2e-pinned:pinned  exclusive" in text.stdout
    assert "socket 0" in text.stdout and "busiest methods" in text.stdout
    svg = proc.workdir / "map.svg"
    assert status_cmd(proc, "--svg", str(svg)).returncode == 0
    assert "e2e/e2e-pinned:pinned" in svg.read_text()
    check_metrics(metrics_socket)

    proc.stop()
    gone = status_cmd(proc)
    assert gone.returncode == 1 and gone.stdout == ""
    assert gone.stderr.startswith("cri-resmgr is not running") and gone.stderr.count("\n") == 1
    assert not control_socket.exists() and not Path(metrics_socket).exists()
