"""CRI requests shaped the way kubelet (cgroupfs driver) sends them, and a raw caller.

Owns nothing but builders: `pod_sandbox_config()` and `container_config()` return
`runtime.v1` messages from `cri_resmgr.cri.api_pb2` with the metadata, labels,
annotations, log paths, cgroup parent (`/kubepods[/burstable|/besteffort]/pod<uid>`),
namespace options and Linux resources kubelet derives from a pod spec; `call()` sends one
message to a runtime (or the relay) on a channel with the generated (de)serializers.
CPU amounts are milli-CPUs, memory amounts bytes.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any, Dict, Mapping, Optional, Sequence

import grpc

from cri_resmgr.cri import api_pb2
from harness.images import BUSYBOX_REF

KUBELET_LOG_ROOT = "/var/log/pods"
CPU_PERIOD = 100000  # microseconds, kubelet's CFS period
MIN_SHARES = 2
MIN_QUOTA = 1000  # microseconds
GUARANTEED_OOM_SCORE_ADJ = -997
BESTEFFORT_OOM_SCORE_ADJ = 1000

IMAGE_METHODS = frozenset({"ListImages", "ImageStatus", "PullImage", "RemoveImage", "ImageFsInfo"})

LABEL_POD_NAME = "io.kubernetes.pod.name"
LABEL_POD_NAMESPACE = "io.kubernetes.pod.namespace"
LABEL_POD_UID = "io.kubernetes.pod.uid"
LABEL_CONTAINER_NAME = "io.kubernetes.container.name"


def method_path(method: str) -> str:
    """`/runtime.v1.<Service>/<method>` for a bare CRI method name."""
    service = "ImageService" if method in IMAGE_METHODS else "RuntimeService"
    return f"/runtime.v1.{service}/{method}"


def call(
    channel: grpc.Channel,
    method: str,
    request: Any = None,
    timeout: Optional[float] = 30.0,
    metadata: Optional[Sequence[tuple[str, str]]] = None,
) -> Any:
    """Send `request` (default: an empty `<method>Request`) and return the parsed reply.

    `method` is a bare name ("RunPodSandbox"); the reply class is `<method>Response`
    (`ListPodSandbox` -> `ListPodSandboxResponse`). Raises `grpc.RpcError`.
    """
    if request is None:
        request = getattr(api_pb2, method + "Request")()
    response_cls = getattr(api_pb2, method + "Response")
    stub = channel.unary_unary(
        method_path(method),
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=response_cls.FromString,
    )
    return stub(request, timeout=timeout, metadata=metadata)


def qos_class(requests: Mapping[str, int], limits: Mapping[str, int]) -> str:
    """Kubernetes QoS class of one-container pod resources: guaranteed/burstable/besteffort.

    Keys: "cpu" (milli-CPUs), "memory" (bytes).
    """
    if not requests and not limits:
        return "besteffort"
    if (
        limits.get("cpu")
        and limits.get("memory")
        and requests.get("cpu", limits["cpu"]) == limits["cpu"]
        and requests.get("memory", limits["memory"]) == limits["memory"]
    ):
        return "guaranteed"
    return "burstable"


def cgroup_parent(uid: str, qos: str) -> str:
    """The pod cgroup kubelet (cgroupfs driver) passes as `cgroup_parent`."""
    if qos == "guaranteed":
        return f"/kubepods/pod{uid}"
    if qos not in ("burstable", "besteffort"):
        raise ValueError(f"unknown QoS class {qos!r} (guaranteed, burstable, besteffort)")
    return f"/kubepods/{qos}/pod{uid}"


def pod_sandbox_config(
    name: str,
    *,
    namespace: str = "default",
    uid: Optional[str] = None,
    attempt: int = 0,
    qos: str = "besteffort",
    host_network: bool = True,
    log_root: str = KUBELET_LOG_ROOT,
    labels: Optional[Mapping[str, str]] = None,
    annotations: Optional[Mapping[str, str]] = None,
    cgroup: Optional[str] = None,
) -> api_pb2.PodSandboxConfig:
    """A PodSandboxConfig as kubelet builds it for pod `namespace/name`.

    `cgroup` overrides the derived cgroup parent (`/kubepods/<qos>/pod<uid>`); pass ""
    for none (then containerd puts containers under `k8s.io/<id>`).
    """
    uid = uid or str(uuid.uuid4())
    all_labels: Dict[str, str] = {
        LABEL_POD_NAME: name,
        LABEL_POD_NAMESPACE: namespace,
        LABEL_POD_UID: uid,
    }
    all_labels.update(labels or {})
    all_annotations = {
        "kubernetes.io/config.seen": time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime()),
        "kubernetes.io/config.source": "api",
    }
    all_annotations.update(annotations or {})
    mode = api_pb2.NODE if host_network else api_pb2.POD
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(
            name=name, uid=uid, namespace=namespace, attempt=attempt
        ),
        hostname="" if host_network else name,
        log_directory=f"{log_root.rstrip('/')}/{namespace}_{name}_{uid}",
        labels=all_labels,
        annotations=all_annotations,
        linux=api_pb2.LinuxPodSandboxConfig(
            cgroup_parent=cgroup_parent(uid, qos) if cgroup is None else cgroup,
            security_context=api_pb2.LinuxSandboxSecurityContext(
                namespace_options=api_pb2.NamespaceOption(
                    network=mode, pid=api_pb2.CONTAINER, ipc=api_pb2.POD
                ),
                seccomp=api_pb2.SecurityProfile(
                    profile_type=api_pb2.SecurityProfile.RuntimeDefault
                ),
            ),
        ),
    )
    return config


def linux_resources(
    requests: Optional[Mapping[str, int]] = None,
    limits: Optional[Mapping[str, int]] = None,
    node_memory: int = 16 << 30,
    cpuset_cpus: str = "",
    cpuset_mems: str = "",
) -> api_pb2.LinuxContainerResources:
    """LinuxContainerResources kubelet computes from requests/limits.

    cpu in milli-CPUs, memory in bytes; `node_memory` (bytes) feeds the burstable
    oom_score_adj formula.
    """
    requests = dict(requests or {})
    limits = dict(limits or {})
    for key, value in limits.items():
        requests.setdefault(key, value)  # a limit without a request implies the request
    qos = qos_class(requests, limits)
    cpu_req = requests.get("cpu", 0)
    shares = max(MIN_SHARES, cpu_req * 1024 // 1000) if cpu_req else MIN_SHARES
    quota = 0
    if limits.get("cpu"):
        quota = max(MIN_QUOTA, limits["cpu"] * CPU_PERIOD // 1000)
    if qos == "guaranteed":
        oom = GUARANTEED_OOM_SCORE_ADJ
    elif qos == "besteffort":
        oom = BESTEFFORT_OOM_SCORE_ADJ
    else:
        oom = 1000 - (1000 * requests.get("memory", 0)) // node_memory
        oom = min(max(oom, 2), 999)
    return api_pb2.LinuxContainerResources(
        cpu_period=CPU_PERIOD,
        cpu_quota=quota,
        cpu_shares=shares,
        memory_limit_in_bytes=limits.get("memory", 0),
        oom_score_adj=oom,
        cpuset_cpus=cpuset_cpus,
        cpuset_mems=cpuset_mems,
    )


def container_config(
    name: str,
    pod: api_pb2.PodSandboxConfig,
    *,
    image: str = BUSYBOX_REF,
    command: Sequence[str] = (),
    args: Sequence[str] = (),
    attempt: int = 0,
    requests: Optional[Mapping[str, int]] = None,
    limits: Optional[Mapping[str, int]] = None,
    envs: Optional[Mapping[str, str]] = None,
    labels: Optional[Mapping[str, str]] = None,
    annotations: Optional[Mapping[str, str]] = None,
    cpuset_cpus: str = "",
    cpuset_mems: str = "",
) -> api_pb2.ContainerConfig:
    """A ContainerConfig as kubelet builds it for container `name` of `pod`."""
    meta = pod.metadata
    all_labels = {
        LABEL_CONTAINER_NAME: name,
        LABEL_POD_NAME: meta.name,
        LABEL_POD_NAMESPACE: meta.namespace,
        LABEL_POD_UID: meta.uid,
    }
    all_labels.update(labels or {})
    all_annotations = {
        "io.kubernetes.container.hash": hashlib.sha256(f"{name}\0{image}".encode()).hexdigest()[:8],
        "io.kubernetes.container.restartCount": str(attempt),
        "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
        "io.kubernetes.container.terminationMessagePolicy": "File",
        "io.kubernetes.pod.terminationGracePeriod": "30",
    }
    all_annotations.update(annotations or {})
    host_network = pod.linux.security_context.namespace_options.network == api_pb2.NODE
    return api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name, attempt=attempt),
        image=api_pb2.ImageSpec(image=image, user_specified_image=image),
        command=list(command),
        args=list(args),
        envs=[api_pb2.KeyValue(key=k, value=v) for k, v in (envs or {}).items()],
        labels=all_labels,
        annotations=all_annotations,
        log_path=f"{name}/{attempt}.log",
        linux=api_pb2.LinuxContainerConfig(
            resources=linux_resources(
                requests, limits, cpuset_cpus=cpuset_cpus, cpuset_mems=cpuset_mems
            ),
            security_context=api_pb2.LinuxContainerSecurityContext(
                namespace_options=api_pb2.NamespaceOption(
                    network=api_pb2.NODE if host_network else api_pb2.POD,
                    pid=api_pb2.CONTAINER,
                    ipc=api_pb2.POD,
                ),
                seccomp=api_pb2.SecurityProfile(
                    profile_type=api_pb2.SecurityProfile.RuntimeDefault
                ),
                masked_paths=[
                    "/proc/asound",
                    "/proc/acpi",
                    "/proc/kcore",
                    "/proc/keys",
                    "/proc/latency_stats",
                    "/proc/timer_list",
                    "/proc/timer_stats",
                    "/proc/sched_debug",
                    "/proc/scsi",
                    "/sys/firmware",
                ],
                readonly_paths=[
                    "/proc/bus",
                    "/proc/fs",
                    "/proc/irq",
                    "/proc/sys",
                    "/proc/sysrq-trigger",
                ],
            ),
        ),
    )


def run_pod(channel: grpc.Channel, config: api_pb2.PodSandboxConfig, timeout: float = 60.0) -> str:
    """RunPodSandbox; the sandbox id."""
    req = api_pb2.RunPodSandboxRequest(config=config)
    return str(call(channel, "RunPodSandbox", req, timeout).pod_sandbox_id)


def create_and_start(
    channel: grpc.Channel,
    pod_id: str,
    pod: api_pb2.PodSandboxConfig,
    config: api_pb2.ContainerConfig,
    timeout: float = 60.0,
) -> str:
    """CreateContainer + StartContainer; the container id."""
    req = api_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod)
    cid = str(call(channel, "CreateContainer", req, timeout).container_id)
    call(channel, "StartContainer", api_pb2.StartContainerRequest(container_id=cid), timeout)
    return cid


def container_pid(channel: grpc.Channel, container_id: str) -> int:
    """Host pid of a running container's init process (from verbose ContainerStatus)."""
    reply = call(
        channel,
        "ContainerStatus",
        api_pb2.ContainerStatusRequest(container_id=container_id, verbose=True),
    )
    info = json.loads(reply.info.get("info", "{}"))
    return int(info.get("pid", 0))


def exec_sync(
    channel: grpc.Channel, container_id: str, cmd: Sequence[str], timeout: int = 10
) -> api_pb2.ExecSyncResponse:
    """ExecSync `cmd` in the container (`timeout` seconds, also the call deadline + 10 s)."""
    req = api_pb2.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=timeout)
    return call(channel, "ExecSync", req, timeout=timeout + 10)


def remove_pod(channel: grpc.Channel, pod_id: str, timeout: float = 60.0) -> None:
    """StopPodSandbox + RemovePodSandbox (kubelet order)."""
    call(channel, "StopPodSandbox", api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout)
    call(
        channel,
        "RemovePodSandbox",
        api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id),
        timeout,
    )
