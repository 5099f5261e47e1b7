"""The harness itself: a private containerd answers CRI, has the local images, runs pods
and containers in real cgroups, survives a restart, and leaves nothing behind."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import grpc
import pytest

from cri_resmgr.cri import api_pb2
from harness import containerd as hc
from harness import cri_objects as co
from harness import images

pytestmark = pytest.mark.e2e

CPUSET_MOUNT = Path("/sys/fs/cgroup/cpuset")


def _cpuset_dir(pid: int) -> Path:
    """The cpuset cgroup directory of a process (cgroup v1), from /proc/PID/cgroup."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpuset" in controllers.split(","):
            return CPUSET_MOUNT / path.lstrip("/")
    raise AssertionError(f"no cpuset controller in /proc/{pid}/cgroup")


def _cpus_allowed(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no Cpus_allowed_list in /proc/{pid}/status")


def _sleeper(ctrd: hc.Containerd, name: str, host_network: bool = True, **kwargs):
    """Run a pod with one busybox container running `sleep`; (pod config, pod id, cid)."""
    ch = ctrd.channel()
    pod = co.pod_sandbox_config(name, host_network=host_network, log_root=str(ctrd.pod_log_root))
    pod_id = co.run_pod(ch, pod)
    config = co.container_config("sleeper", pod, command=["sleep", "3600"], **kwargs)
    cid = co.create_and_start(ch, pod_id, pod, config)
    return pod, pod_id, cid


def _leftovers(ctrd: hc.Containerd, pids: list[int]) -> list[str]:
    """Everything of a stopped instance that is still on the host."""
    out = []
    config = str(ctrd.config_path)
    for pid in hc._pids(lambda argv: config in argv or ctrd.socket in argv):
        out.append(f"process {pid}: {' '.join(hc._cmdline(pid))}")
    out += [f"process {p} still alive" for p in pids if hc._alive(p)]
    out += [f"mount {m}" for m in hc.mounts_under(ctrd.dir)]
    if ctrd.dir.exists():
        out.append(f"directory {ctrd.dir}")
    return out


def _forward_rules() -> str:
    return subprocess.run(
        ["iptables", "-S", "FORWARD"], check=True, capture_output=True, text=True
    ).stdout


def test_version_answers(containerd: hc.Containerd) -> None:
    v = containerd.version()
    assert v["runtime_name"] == "containerd"
    assert v["runtime_api_version"] == "v1"
    assert containerd.pid and hc._alive(containerd.pid)
    assert containerd.address == "unix://" + containerd.socket
    # The same answer through the generated modules.
    reply = co.call(containerd.channel(), "Version", api_pb2.VersionRequest(version="v1"))
    assert reply.runtime_name == "containerd"
    with containerd.cri_client() as client:
        assert client.version(timeout=5).runtime_api_version == "v1"


def test_images_listed(runtime: hc.Containerd) -> None:
    listed = co.call(runtime.channel(), "ListImages").images
    by_tag = {tag: img for img in listed for tag in img.repo_tags}
    assert images.PAUSE_REF in by_tag
    assert images.BUSYBOX_REF in by_tag
    for image in runtime.images:
        assert by_tag[image.ref].id == image.image_id
    status = co.call(
        runtime.channel(),
        "ImageStatus",
        api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=images.PAUSE_REF)),
    )
    assert status.image.id == runtime.images[0].image_id


def test_config_is_private_and_restricts_oom_score_adj(containerd: hc.Containerd) -> None:
    text = containerd.config_path.read_text()
    assert "restrict_oom_score_adj = true" in text
    assert f'sandbox_image = "{images.PAUSE_REF}"' in text
    assert "SystemdCgroup = false" in text
    for path in (containerd.root, containerd.state, containerd.runc_root):
        assert str(path) in text
        assert containerd.dir in path.parents


def test_pod_container_exec_and_cgroup(runtime: hc.Containerd) -> None:
    ch = runtime.channel()
    t0 = time.monotonic()
    pod, pod_id, cid = _sleeper(runtime, "harness-pod")
    elapsed = time.monotonic() - t0
    print(f"pod + container running in {elapsed:.2f}s")

    reply = co.exec_sync(ch, cid, ["echo", "hi"])
    assert reply.exit_code == 0
    assert reply.stdout == b"hi\n"

    pid = co.container_pid(ch, cid)
    assert pid > 0 and hc._alive(pid)
    cg = _cpuset_dir(pid)
    # Under the cgroup parent kubelet would pass, in the container's own directory.
    assert str(cg).startswith(str(CPUSET_MOUNT) + pod.linux.cgroup_parent + "/")
    assert cg.name == cid
    cpus = (cg / "cpuset.cpus").read_text().strip()
    assert cpus
    assert cpus == _cpus_allowed(pid)

    # Requested resources land in the real cgroup.
    config = co.container_config(
        "pinned", pod, command=["sleep", "3600"], cpuset_cpus="0", requests={"cpu": 250}
    )
    pinned = co.create_and_start(ch, pod_id, pod, config)
    ppid = co.container_pid(ch, pinned)
    assert (_cpuset_dir(ppid) / "cpuset.cpus").read_text().strip() == "0"
    assert _cpus_allowed(ppid) == "0"
    cpu_dir = Path("/sys/fs/cgroup/cpu") / str(_cpuset_dir(ppid).relative_to(CPUSET_MOUNT))
    assert (cpu_dir / "cpu.shares").read_text().strip() == "256"

    for c in (cid, pinned):
        co.call(ch, "StopContainer", api_pb2.StopContainerRequest(container_id=c, timeout=0))
        co.call(ch, "RemoveContainer", api_pb2.RemoveContainerRequest(container_id=c))
    assert not hc._alive(pid)
    assert not cg.exists()
    listed = co.call(ch, "ListContainers").containers
    assert cid not in {c.id for c in listed}
    co.remove_pod(ch, pod_id)
    assert pod_id not in {p.id for p in co.call(ch, "ListPodSandbox").items}


def test_restart_keeps_containers(runtime: hc.Containerd) -> None:
    _pod, pod_id, cid = _sleeper(runtime, "harness-restart")
    pid = co.container_pid(runtime.channel(), cid)
    old_daemon = runtime.pid
    shims = runtime.shim_pids()
    assert shims

    t0 = time.monotonic()
    runtime.restart()
    print(f"restart in {time.monotonic() - t0:.2f}s")

    assert runtime.pid != old_daemon and not hc._alive(old_daemon)
    assert sorted(runtime.shim_pids()) == sorted(shims)
    ch = runtime.channel()
    containers = {c.id: c for c in co.call(ch, "ListContainers").containers}
    assert containers[cid].state == api_pb2.CONTAINER_RUNNING
    assert co.container_pid(ch, cid) == pid and hc._alive(pid)
    assert co.exec_sync(ch, cid, ["cat", "/proc/1/comm"]).stdout == b"sleep\n"
    pods = {p.id: p for p in co.call(ch, "ListPodSandbox").items}
    assert pods[pod_id].state == api_pb2.SANDBOX_READY

    # Away for a while, then back: state is still there.
    runtime.stop_daemon()
    assert not runtime.running and hc._alive(pid)
    runtime.start_daemon()
    assert cid in {c.id for c in co.call(runtime.channel(), "ListContainers").containers}


def test_teardown_leaves_nothing(containerd_factory) -> None:
    ctrd = containerd_factory(network=True)
    assert ctrd.subnet and ctrd.bridge
    ch = ctrd.channel()
    _pod, net_pod_id, net_cid = _sleeper(ctrd, "harness-net", host_network=False)
    status = co.call(
        ch, "PodSandboxStatus", api_pb2.PodSandboxStatusRequest(pod_sandbox_id=net_pod_id)
    )
    prefix = ctrd.subnet.rsplit(".", 1)[0] + "."
    assert status.status.network.ip.startswith(prefix)
    _pod, _host_pod_id, host_cid = _sleeper(ctrd, "harness-host")
    pids = [co.container_pid(ch, c) for c in (net_cid, host_cid)]
    pids += ctrd.shim_pids() + [ctrd.pid]
    assert ctrd.mounts()
    rules = _forward_rules()
    assert ctrd.dir.name in rules

    ctrd.stop()

    assert _leftovers(ctrd, pids) == []
    rules = _forward_rules()
    assert ctrd.dir.name not in rules
    assert not Path(f"/sys/class/net/{ctrd.bridge}").exists()
    ctrd.stop()  # idempotent


STALE_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    from harness.containerd import Containerd
    from harness import cri_objects as co
    c = Containerd(base={base!r}).start()
    ch = c.channel()
    pod = co.pod_sandbox_config("stale", log_root=str(c.pod_log_root))
    pod_id = co.run_pod(ch, pod)
    cid = co.create_and_start(
        ch, pod_id, pod, co.container_config("s", pod, command=["sleep", "3600"])
    )
    print(c.dir, c.pid, co.container_pid(ch, cid), *c.shim_pids(), flush=True)
    time.sleep(600)
    """
)


def test_stale_leftovers_of_killed_run_are_cleaned(containerd_factory) -> None:
    # containerd_factory checks root and dependencies; a short private base directory
    # keeps the socket paths within containerd's limit.
    base = Path(tempfile.mkdtemp(prefix="crh-stale-"))
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen(
        [sys.executable, "-c", STALE_SCRIPT.format(root=root, base=str(base))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().split()
        assert line, "the child did not start its containerd"
        directory, pids = Path(line[0]), [int(p) for p in line[1:]]
        assert all(hc._alive(p) for p in pids)
    finally:
        proc.send_signal(signal.SIGKILL)  # no teardown at all
        proc.wait()
    assert all(hc._alive(p) for p in pids)
    assert hc.mounts_under(directory)
    owner = json.loads((directory / "owner.json").read_text())
    assert owner["pid"] == proc.pid

    assert hc.cleanup_stale(base) == [directory]

    assert [p for p in pids if hc._alive(p)] == []
    assert hc.mounts_under(directory) == []
    assert not directory.exists()
    shutil.rmtree(base)


def test_pull_works_offline_for_harness_images_only(containerd_factory) -> None:
    ctrd = containerd_factory()
    ch = ctrd.channel()
    busybox = api_pb2.ImageSpec(image=images.BUSYBOX_REF)
    co.call(ch, "RemoveImage", api_pb2.RemoveImageRequest(image=busybox))
    assert not co.call(ch, "ImageStatus", api_pb2.ImageStatusRequest(image=busybox)).image.id

    reply = co.call(ch, "PullImage", api_pb2.PullImageRequest(image=busybox))
    assert reply.image_ref == ctrd.images[1].image_id
    status = co.call(ch, "ImageStatus", api_pb2.ImageStatusRequest(image=busybox)).image
    assert status.repo_digests == ["docker.io/library/busybox@" + ctrd.images[1].manifest_digest]

    unknown = api_pb2.ImageSpec(image="docker.io/library/alpine:3.19")
    with pytest.raises(grpc.RpcError) as err:
        co.call(ch, "PullImage", api_pb2.PullImageRequest(image=unknown), timeout=20)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_image_tarballs_are_reproducible(tmp_path: Path) -> None:
    a = images.default_images(cache=tmp_path / "a")
    b = images.default_images(cache=tmp_path / "b")
    assert [(i.ref, i.manifest_digest, i.image_id) for i in a] == [
        (i.ref, i.manifest_digest, i.image_id) for i in b
    ]
    # Cached: the second lookup does not rebuild (same file, same mtime).
    before = [i.tarball.stat().st_mtime_ns for i in a]
    again = images.default_images(cache=tmp_path / "a")
    assert [i.tarball.stat().st_mtime_ns for i in again] == before
    assert images.oci_platform("x86_64") == {"architecture": "amd64", "os": "linux"}
    assert images.oci_platform("aarch64") == {"architecture": "arm64", "os": "linux"}
