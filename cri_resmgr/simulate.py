"""``cri-resmgr simulate``: run the real policy and hooks on a scenario of pod events.

Ownership: the scenario format (YAML), turning its events into the CRI requests
kubelet would send, an in-memory runtime (`InMemoryRuntime`) that answers them and
takes the hooks' UpdateContainerResources pushes, and the output: JSON on stdout (the
final placement of every live container, as the runtime was told) or, with
``--table``, a per-NUMA-node table for people.

Nothing is faked between the scenario and the runtime: each event is encoded as CRI
request bytes and passed through the hook table of `hooks.Hooks` (which decodes it,
builds the records with `podspec`, asks the policy, rewrites the request, persists
the state in a temporary directory and pushes knock-on updates), with a forward
function that hands the bytes to `InMemoryRuntime`. Requests and limits are turned
into CRI fields exactly as kubelet does (`podspec.container_resources`, the pod's QoS
class from all its containers, the cgroup parent of that class), so the estimating
path the service uses on a real node is the one exercised here.

Scenario::

    node-memory: 64Gi            # optional; default: the topology's memory (oom_score_adj)
    cgroup-driver: cgroupfs      # optional; or systemd (the cgroup parent's shape)
    events:
      - run-pod: {name: web, namespace: default, annotations: {}, labels: {},
                  overhead: {cpu: 100m, memory: 64Mi}}
      - create-container: {pod: web, name: app, requests: {cpu: "2", memory: 1Gi},
                           limits: {cpu: "2", memory: 1Gi}, annotations: {}}
      - update-container: {pod: web, name: app, requests: {...}, limits: {...}}
      - remove-container: {pod: web, name: app}
      - remove-pod: {name: web}

``namespace`` defaults to ``default``; a container's ``pod`` names its pod (add
``namespace`` when two running pods share a name). A container without requests or
limits is BestEffort. Quantities are bounded by what kubelet can encode in CRI's
int64 fields (`MAX_MILLI_CPU`, `MAX_MEMORY`; the pod-level sums too).
create-container also starts the container, remove-container stops it first,
remove-pod stops the pod first (kubelet's order).

Output (JSON)::

    {"containers": [{"pod": "NAMESPACE/POD", "container": "NAME", "id": "...",
                     "cpuset_cpus": "...", "cpuset_mems": "...", "cpu_shares": N,
                     "qos": "...", "class": "...", "pool": "...", "exclusive": "..."}],
     "policy": "...", "reserved_cpus": "...", "pools": {...}}

Exit status: 0 done; 1 an event failed in the policy (``on-error = fail``, e.g. an
impossible placement: the JSON then also has ``"error"`` and stops at that event);
2 a bad scenario, configuration or topology (the message names the event index and
field, or the file and key; an unreadable scenario file, not UTF-8 or nested too
deeply for the YAML reader, is named with the reason).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, TextIO, Tuple

from cri_resmgr import config as cfg
from cri_resmgr import errors, podspec
from cri_resmgr.cri import api_pb2
from cri_resmgr.cri.methods import METHODS
from cri_resmgr.hooks import HookOptions, Hooks, resources_pb, runtime_error
from cri_resmgr.policy.base import BESTEFFORT
from cri_resmgr.relay import CallInfo
from cri_resmgr.resources.cpuset import CPUSet

__all__ = ["InMemoryRuntime", "Scenario", "ScenarioError", "Simulation", "load_scenario", "main"]

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "default"
DEFAULT_NODE_MEMORY = 16 << 30  # bytes, when the topology reports none
_RS = "/runtime.v1.RuntimeService/"


# --- the in-memory runtime ------------------------------------------------------------


@dataclass
class FakeSandbox:
    id: str
    config: api_pb2.PodSandboxConfig
    state: Any = api_pb2.SANDBOX_READY  # PodSandboxState
    created_at: int = 0


@dataclass
class FakeContainer:
    id: str
    pod_id: str
    config: api_pb2.ContainerConfig
    resources: api_pb2.LinuxContainerResources
    state: Any = api_pb2.CONTAINER_CREATED  # ContainerState
    created_at: int = 0
    updates: int = 0  # UpdateContainerResources calls it took


class InMemoryRuntime:
    """A CRI runtime in memory: enough of containerd's behaviour for the hooks.

    `forward(method)` gives the hooks' `Forward` for one call (request bytes in, reply
    bytes out, `relay.ForwardError` on failure); `.runtime` is the stub-like object
    the hooks push to and resync from (``UpdateContainerResources``,
    ``ListPodSandbox``, ``ListContainers``, ``ContainerStatus``, ``PodSandboxStatus``;
    protobuf in and out). UpdateContainerResources merges like containerd: zero
    fields leave the current value. `fail(method, code)` makes the next call(s) fail;
    `calls` records (method, container or sandbox id) of every call; `pushes` the
    container ids of UpdateContainerResources that came through `.runtime`.
    """

    def __init__(self) -> None:
        self.sandboxes: Dict[str, FakeSandbox] = {}
        self.containers: Dict[str, FakeContainer] = {}
        self.calls: List[Tuple[str, str]] = []
        self.pushes: List[str] = []
        self.delay: Dict[str, float] = {}  # method name -> seconds each call takes
        self._failures: Dict[str, List[Tuple[str, str]]] = {}
        self._lock = threading.RLock()
        self._next = 0
        self.runtime = _Stub(self)  # what the hooks push to and resync from

    # -- failure injection

    def fail(self, method: str, code: str = "UNKNOWN", details: str = "", times: int = 1) -> None:
        """Make the next `times` calls of `method` (short name) fail with `code`."""
        self._failures.setdefault(method, []).extend(
            [(code, details or f"injected {code}")] * times
        )

    def _check_fail(self, method: str) -> None:
        pending = self._failures.get(method)
        if pending:
            code, details = pending.pop(0)
            raise runtime_error(code, details)

    def _id(self, prefix: str) -> str:
        self._next += 1
        return f"{prefix}{self._next:04d}"

    # -- the forward of the hooks

    def forward(self, method: str) -> Callable[[bytes], bytes]:
        """The `relay.Forward` for a call of `method` (full path)."""
        info = METHODS[method]

        def call(request: bytes) -> bytes:
            delay = self.delay.get(info.name)
            if delay:
                time.sleep(delay)
            handler = getattr(self, info.name)
            reply = handler(info.request.FromString(request))
            return bytes(reply.SerializeToString())

        return call

    # -- RuntimeService methods (protobuf in, protobuf out)

    def RunPodSandbox(self, req: Any, timeout: Optional[float] = None) -> Any:  # noqa: N802
        with self._lock:
            self._check_fail("RunPodSandbox")
            sid = self._id("pod")
            self.sandboxes[sid] = FakeSandbox(sid, req.config, created_at=time.time_ns())
            self.calls.append(("RunPodSandbox", sid))
            return api_pb2.RunPodSandboxResponse(pod_sandbox_id=sid)

    def StopPodSandbox(self, req: Any, timeout: Optional[float] = None) -> Any:  # noqa: N802
        with self._lock:
            self._check_fail("StopPodSandbox")
            self.calls.append(("StopPodSandbox", req.pod_sandbox_id))
            sandbox = self.sandboxes.get(req.pod_sandbox_id)
            if sandbox is None:
                raise runtime_error("NOT_FOUND", f"sandbox {req.pod_sandbox_id} not found")
            sandbox.state = api_pb2.SANDBOX_NOTREADY
            for c in self.containers.values():
                if c.pod_id == sandbox.id:
                    c.state = api_pb2.CONTAINER_EXITED
            return api_pb2.StopPodSandboxResponse()

    def RemovePodSandbox(self, req: Any, timeout: Optional[float] = None) -> Any:  # noqa: N802
        with self._lock:
            self._check_fail("RemovePodSandbox")
            self.calls.append(("RemovePodSandbox", req.pod_sandbox_id))
            self.sandboxes.pop(req.pod_sandbox_id, None)
            for cid in [c for c, v in self.containers.items() if v.pod_id == req.pod_sandbox_id]:
                del self.containers[cid]
            return api_pb2.RemovePodSandboxResponse()

    def CreateContainer(self, req: Any, timeout: Optional[float] = None) -> Any:  # noqa: N802
        with self._lock:
            self._check_fail("CreateContainer")
            if req.pod_sandbox_id not in self.sandboxes:
                raise runtime_error("NOT_FOUND", f"sandbox {req.pod_sandbox_id} not found")
            cid = self._id("ctr")
            res = api_pb2.LinuxContainerResources()
            res.CopyFrom(req.config.linux.resources)
            self.containers[cid] = FakeContainer(
                cid, req.pod_sandbox_id, req.config, res, created_at=time.time_ns()
            )
            self.calls.append(("CreateContainer", cid))
            return api_pb2.CreateContainerResponse(container_id=cid)

    def _container(self, cid: str) -> FakeContainer:
        c = self.containers.get(cid)
        if c is None:
            raise runtime_error("NOT_FOUND", f"container {cid} not found")
        return c

    def StartContainer(self, req: Any, timeout: Optional[float] = None) -> Any:  # noqa: N802
        with self._lock:
            self._check_fail("StartContainer")
            self.calls.append(("StartContainer", req.container_id))
            self._container(req.container_id).state = api_pb2.CONTAINER_RUNNING
            return api_pb2.StartContainerResponse()

    def UpdateContainerResources(  # noqa: N802
        self, req: Any, timeout: Optional[float] = None
    ) -> Any:
        with self._lock:
            self.calls.append(("UpdateContainerResources", req.container_id))
            self._check_fail("UpdateContainerResources")
            c = self._container(req.container_id)
            for f, value in req.linux.ListFields():
                if f.name in ("hugepage_limits", "unified"):
                    continue
                setattr(c.resources, f.name, value)
            c.updates += 1
            return api_pb2.UpdateContainerResourcesResponse()

    def StopContainer(self, req: Any, timeout: Optional[float] = None) -> Any:  # noqa: N802
        with self._lock:
            self._check_fail("StopContainer")
            self.calls.append(("StopContainer", req.container_id))
            self._container(req.container_id).state = api_pb2.CONTAINER_EXITED
            return api_pb2.StopContainerResponse()

    def RemoveContainer(self, req: Any, timeout: Optional[float] = None) -> Any:  # noqa: N802
        with self._lock:
            self._check_fail("RemoveContainer")
            self.calls.append(("RemoveContainer", req.container_id))
            self.containers.pop(req.container_id, None)  # idempotent, as CRI asks
            return api_pb2.RemoveContainerResponse()

    def ListPodSandbox(self, req: Any, timeout: Optional[float] = None) -> Any:  # noqa: N802
        with self._lock:
            self._check_fail("ListPodSandbox")
            items = [
                api_pb2.PodSandbox(
                    id=s.id,
                    metadata=s.config.metadata,
                    state=s.state,
                    created_at=s.created_at,
                    labels=s.config.labels,
                    annotations=s.config.annotations,
                )
                for s in self.sandboxes.values()
                if not req.filter.id or s.id == req.filter.id
            ]
            return api_pb2.ListPodSandboxResponse(items=items)

    def ListContainers(self, req: Any, timeout: Optional[float] = None) -> Any:  # noqa: N802
        with self._lock:
            self._check_fail("ListContainers")
            f = req.filter
            items = [
                api_pb2.Container(
                    id=c.id,
                    pod_sandbox_id=c.pod_id,
                    metadata=c.config.metadata,
                    image=c.config.image,
                    state=c.state,
                    created_at=c.created_at,
                    labels=c.config.labels,
                    annotations=c.config.annotations,
                )
                for c in self.containers.values()
                if (not f.id or c.id == f.id)
                and (not f.pod_sandbox_id or c.pod_id == f.pod_sandbox_id)
            ]
            return api_pb2.ListContainersResponse(containers=items)

    def ContainerStatus(self, req: Any, timeout: Optional[float] = None) -> Any:  # noqa: N802
        with self._lock:
            self._check_fail("ContainerStatus")
            c = self._container(req.container_id)
            status = api_pb2.ContainerStatus(
                id=c.id,
                metadata=c.config.metadata,
                state=c.state,
                created_at=c.created_at,
                labels=c.config.labels,
                annotations=c.config.annotations,
                resources=api_pb2.ContainerResources(linux=c.resources),
            )
            return api_pb2.ContainerStatusResponse(status=status)

    def PodSandboxStatus(self, req: Any, timeout: Optional[float] = None) -> Any:  # noqa: N802
        with self._lock:
            self._check_fail("PodSandboxStatus")
            s = self.sandboxes.get(req.pod_sandbox_id)
            if s is None:
                raise runtime_error("NOT_FOUND", f"sandbox {req.pod_sandbox_id} not found")
            status = api_pb2.PodSandboxStatus(
                id=s.id,
                metadata=s.config.metadata,
                state=s.state,
                created_at=s.created_at,
                labels=s.config.labels,
                annotations=s.config.annotations,
            )
            info = {}
            if req.verbose:  # containerd's shape: {"info": JSON with "config"}
                linux: Dict[str, Any] = {"cgroup_parent": s.config.linux.cgroup_parent}
                for name in ("resources", "overhead"):
                    if s.config.linux.HasField(name):
                        res = getattr(s.config.linux, name)
                        linux[name] = {f.name: v for f, v in res.ListFields()}
                info["info"] = json.dumps({"config": {"linux": linux}})
            return api_pb2.PodSandboxStatusResponse(status=status, info=info)

    def live_containers(self) -> List[FakeContainer]:
        """Containers that exist (created, running or exited), in creation order."""
        with self._lock:
            return list(self.containers.values())


class _Stub:
    """`InMemoryRuntime` as the hooks' runtime client stub; records the pushes."""

    def __init__(self, runtime: InMemoryRuntime) -> None:
        self._runtime = runtime

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime, name)

    def UpdateContainerResources(  # noqa: N802
        self, req: Any, timeout: Optional[float] = None
    ) -> Any:
        self._runtime.pushes.append(req.container_id)
        return self._runtime.UpdateContainerResources(req, timeout)


# --- the scenario ---------------------------------------------------------------------


class ScenarioError(errors.Error):
    """A scenario that cannot be run; the message names the event and the field."""

    grpc_code = "INVALID_ARGUMENT"


EVENT_FIELDS: Mapping[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    # kind: (required fields, optional fields)
    "run-pod": (("name",), ("namespace", "uid", "annotations", "labels", "overhead")),
    "create-container": (("pod", "name"), ("namespace", "requests", "limits", "annotations")),
    "update-container": (("pod", "name"), ("namespace", "requests", "limits")),
    "remove-container": (("pod", "name"), ("namespace",)),
    "remove-pod": (("name",), ("namespace",)),
}
_TOP_FIELDS = ("events", "node-memory", "cgroup-driver")


@dataclass(frozen=True)
class Event:
    """One validated scenario event. `index` is its position in ``events`` (from 0)."""

    index: int
    kind: str
    namespace: str
    pod: str
    name: str = ""  # container name (container events)
    uid: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    spec: podspec.Requirements = podspec.Requirements()
    overhead_cpu: int = 0  # milli-CPUs
    overhead_memory: int = 0  # bytes
    explicit_namespace: bool = False

    @property
    def where(self) -> str:
        what = f"{self.namespace}/{self.pod}" + (f":{self.name}" if self.name else "")
        return f"events[{self.index}] ({self.kind} {what})"


@dataclass(frozen=True)
class Scenario:
    """A validated scenario: events in order, node memory (bytes) and cgroup driver."""

    path: str
    events: Tuple[Event, ...]
    node_memory: Optional[int] = None
    cgroup_driver: str = podspec.CGROUPFS


def _fail(path: str, where: str, message: str) -> ScenarioError:
    return ScenarioError(f"{path}: {where}: {message}")


def _string_map(path: str, where: str, name: str, value: Any) -> Dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, where, f"field {name}: a mapping of strings is required")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or isinstance(v, (dict, list)) or v is None:
            raise _fail(path, where, f"field {name}.{k}: a string value is required")
        out[k] = v if isinstance(v, str) else json.dumps(v)
    return out


#: Largest value of the int64 fields of CRI's LinuxContainerResources.
INT64_MAX = (1 << 63) - 1
#: Largest CPU quantity (milli-CPUs) kubelet can pass: its CFS quota, limit x period
#: (100000 µs) / 1000, is an int64 field. Requests are held to it too.
MAX_MILLI_CPU = INT64_MAX * podspec.MILLI_PER_CPU // podspec.QUOTA_PERIOD
#: Largest memory quantity (bytes): memory_limit_in_bytes is an int64 field.
MAX_MEMORY = INT64_MAX
_LIMIT_TEXT = {
    "cpu": f"at most {MAX_MILLI_CPU}m: the CFS quota kubelet writes is an int64 of µs",
    "memory": f"at most {MAX_MEMORY} bytes (8Ei - 1): the memory limit is an int64",
}
# LinuxResources fields that are a sum in the pod-level resources: (what, resource).
_SUMMED = {"cpu_quota": ("CPU limits", "cpu"), "memory_limit_in_bytes": ("memory limits", "memory")}
# A quantity with a decimal exponent (podspec's syntax): sign, mantissa, exponent.
_EXPONENT_RE = re.compile(r"\s*([+-]?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE]([+-]?[0-9]+)\s*\Z")
_MAX_EXPONENT = 400  # podspec computes 10**exponent exactly: keep it small


def quantity(resource: str, value: Any) -> int:
    """A ``cpu`` (milli-CPUs) or ``memory`` (bytes) quantity of a scenario, bounded by
    what kubelet can encode in CRI (`MAX_MILLI_CPU`, `MAX_MEMORY`). ValueError says
    what is wrong. An exponent beyond ±400 is decided here without computing the
    power: a non-zero value is then too large or, for a negative exponent, less than
    the unit, which rounds up to 1 as Kubernetes rounds (``1e-999`` CPUs is 1m).
    """
    too_large = f"{value!r} is more than kubelet can pass ({_LIMIT_TEXT[resource]})"
    m = _EXPONENT_RE.match(value) if isinstance(value, str) else None
    if m:
        digits = m.group(3).lstrip("+-").lstrip("0")
        if len(digits) > 3 or int(digits or "0") > _MAX_EXPONENT:
            if not m.group(2).replace(".", "").strip("0"):
                return 0
            if m.group(1) == "-":
                raise ValueError(f"{value!r} is negative")
            if m.group(3).startswith("-"):
                return 1
            raise ValueError(too_large)
    amount = podspec.parse_cpu(value) if resource == "cpu" else podspec.parse_memory(value)
    if amount > (MAX_MILLI_CPU if resource == "cpu" else MAX_MEMORY):
        raise ValueError(too_large)
    return amount


def _amounts(path: str, where: str, name: str, value: Any) -> Dict[str, int]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, where, f"field {name}: a mapping with cpu and/or memory is required")
    out = {}
    for key, amount in value.items():
        if key not in ("cpu", "memory"):
            raise _fail(path, where, f"field {name}.{key}: unknown resource (allowed: cpu, memory)")
        try:
            out[key] = quantity(key, amount)
        except ValueError as exc:
            raise _fail(path, where, f"field {name}.{key}: {exc}") from None
    return out


def _name(path: str, where: str, name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(path, where, f"field {name}: a non-empty string is required")
    return value


def parse_scenario(data: Any, path: str = "<scenario>") -> Scenario:
    """Validate a scenario document (as YAML loads it); `ScenarioError` names what is wrong."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a mapping with an events list is required")
    unknown = sorted(set(data) - set(_TOP_FIELDS))
    if unknown:
        raise ScenarioError(
            f"{path}: unknown field {', '.join(map(str, unknown))} "
            f"(allowed: {', '.join(_TOP_FIELDS)})"
        )
    events_data = data.get("events")
    if not isinstance(events_data, list):
        raise ScenarioError(f"{path}: field events: a list of events is required")
    node_memory = None
    if data.get("node-memory") is not None:
        try:
            node_memory = quantity("memory", data["node-memory"])
        except ValueError as exc:
            raise ScenarioError(f"{path}: field node-memory: {exc}") from None
        if node_memory <= 0:
            raise ScenarioError(f"{path}: field node-memory: must be more than 0")
    driver = data.get("cgroup-driver", podspec.CGROUPFS)
    if driver not in (podspec.CGROUPFS, podspec.SYSTEMD):
        raise ScenarioError(f"{path}: field cgroup-driver: {driver!r} (allowed: cgroupfs, systemd)")
    events = []
    for index, raw in enumerate(events_data):
        where = f"events[{index}]"
        if not isinstance(raw, dict) or len(raw) != 1:
            raise _fail(
                path, where, f"one of {', '.join(EVENT_FIELDS)} with its fields is required"
            )
        ((kind, body),) = raw.items()
        if kind not in EVENT_FIELDS:
            raise _fail(path, where, f"unknown event {kind!r} (allowed: {', '.join(EVENT_FIELDS)})")
        where = f"events[{index}] ({kind})"
        body = {} if body is None else body
        if not isinstance(body, dict):
            raise _fail(path, where, "its fields must be a mapping")
        required, optional = EVENT_FIELDS[kind]
        for name in required:
            if name not in body:
                raise _fail(path, where, f"field {name} is required")
        extra = sorted(set(body) - set(required) - set(optional))
        if extra:
            raise _fail(
                path,
                where,
                f"unknown field {', '.join(map(str, extra))} "
                f"(allowed: {', '.join(required + optional)})",
            )
        namespace = body.get("namespace", DEFAULT_NAMESPACE)
        namespace = _name(path, where, "namespace", namespace)
        pod = _name(
            path, where, "pod" if "pod" in required else "name", body.get("pod", body.get("name"))
        )
        name = _name(path, where, "name", body["name"]) if "pod" in required else ""
        requests = _amounts(path, where, "requests", body.get("requests"))
        limits = _amounts(path, where, "limits", body.get("limits"))
        for key in ("cpu", "memory"):
            if key in requests and key in limits and requests[key] > limits[key]:
                raise _fail(
                    path,
                    where,
                    f"field requests.{key}: more than limits.{key} (Kubernetes refuses it)",
                )
        overhead = _amounts(path, where, "overhead", body.get("overhead"))
        uid = body.get("uid", "")
        if not isinstance(uid, str):
            raise _fail(path, where, "field uid: a string is required")
        events.append(
            Event(
                index=index,
                kind=kind,
                namespace=namespace,
                pod=pod,
                name=name,
                uid=uid,
                annotations=_string_map(path, where, "annotations", body.get("annotations")),
                labels=_string_map(path, where, "labels", body.get("labels")),
                spec=podspec.Requirements(
                    cpu_request=requests.get("cpu"),
                    cpu_limit=limits.get("cpu"),
                    memory_request=requests.get("memory"),
                    memory_limit=limits.get("memory"),
                ),
                overhead_cpu=overhead.get("cpu", 0),
                overhead_memory=overhead.get("memory", 0),
                explicit_namespace="namespace" in body,
            )
        )
    return Scenario(path, tuple(events), node_memory, driver)


def load_scenario(path: str) -> Scenario:
    """Read and validate a scenario file (``-`` reads stdin)."""
    import yaml  # noqa: PLC0415 - only simulate reads YAML

    try:
        if path == "-":
            stream = getattr(sys.stdin, "buffer", None)
            data: Any = stream.read() if stream is not None else sys.stdin.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read the scenario: {exc.strerror}") from None
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise ScenarioError(
                f"{path}: line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at "
                f"offset {exc.start})"
            ) from None
    else:
        text = data
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ScenarioError(
            f"{path}: lists or mappings nested too deeply for the YAML reader"
        ) from None
    except ValueError as exc:  # an int of more digits than Python converts (4300)
        reason = str(exc).split("; use ")[0]  # not the advice to raise Python's limit
        raise ScenarioError(f"{path}: a value the YAML reader cannot take: {reason}") from None
    return parse_scenario(document, path)


# --- running it -------------------------------------------------------------------------


@dataclass
class _LivePod:
    key: str  # namespace/name
    id: str
    uid: str
    qos: str
    config: api_pb2.PodSandboxConfig
    containers: Dict[str, str] = field(default_factory=dict)  # name -> container id
    attempts: Dict[str, int] = field(default_factory=dict)  # name -> next attempt


class Simulation:
    """Scenario events through `Hooks` into an `InMemoryRuntime`.

    `run()` plays every event; `result()` is the output document. A policy error
    with on-error=fail stops the run: `error` says which event and why.
    """

    def __init__(
        self,
        hooks: Hooks,
        runtime: InMemoryRuntime,
        scenario: Scenario,
        node_memory: int = DEFAULT_NODE_MEMORY,
    ) -> None:
        self.hooks = hooks
        self.table = hooks.table()
        self.runtime = runtime
        self.scenario = scenario
        self.node_memory = scenario.node_memory or node_memory
        self.pods: Dict[str, _LivePod] = {}  # namespace/name -> live pod
        self.error: Optional[str] = None
        self._pod_qos = self._plan_qos()

    def _plan_qos(self) -> Dict[int, Tuple[str, List[podspec.Requirements]]]:
        """QoS and container specs of each run-pod event's pod (kubelet knows the spec)."""
        plans: Dict[int, Tuple[str, List[podspec.Requirements]]] = {}
        open_pods: Dict[Tuple[str, str], int] = {}
        specs: Dict[int, List[podspec.Requirements]] = {}
        for ev in self.scenario.events:
            if ev.kind == "run-pod":
                open_pods[(ev.namespace, ev.pod)] = ev.index
                specs[ev.index] = []
            elif ev.kind == "create-container":
                matches = [
                    i
                    for (ns, p), i in open_pods.items()
                    if p == ev.pod and (ns == ev.namespace or not ev.explicit_namespace)
                ]
                if len(matches) == 1:
                    specs[matches[0]].append(ev.spec)
            elif ev.kind == "remove-pod":
                open_pods.pop((ev.namespace, ev.pod), None)
        for index, containers in specs.items():
            plans[index] = (podspec.pod_qos(containers) if containers else BESTEFFORT, containers)
        return plans

    def _encode(self, ev: Event, resources: podspec.LinuxResources) -> Any:
        """The CRI message of `resources`; a ScenarioError when a value does not fit its
        int64 field (each quantity is bounded when parsed; the pod-level resources of a
        run-pod event add up the limits of all the pod's containers)."""
        for name, value in resources.to_json().items():
            if isinstance(value, int) and not -INT64_MAX - 1 <= value <= INT64_MAX:
                what, resource = _SUMMED.get(name, (name, ""))
                bound = f" ({_LIMIT_TEXT[resource]})" if resource else " (an int64 field)"
                raise _fail(
                    self.scenario.path,
                    ev.where,
                    f"the {what} of the pod's containers add up to more than kubelet can "
                    f"pass{bound}",
                )
        return resources_pb(resources)

    def _call(self, method: str, message: Any) -> bytes:
        path = _RS + method
        info = CallInfo(method=path, metadata=(), deadline=None)
        return self.table.get(path, lambda req, fwd, _i: fwd(req))(
            message.SerializeToString(), self.runtime.forward(path), info
        )

    def _pod(self, ev: Event) -> _LivePod:
        if ev.explicit_namespace:
            pod = self.pods.get(f"{ev.namespace}/{ev.pod}")
            if pod is None:
                raise _fail(
                    self.scenario.path,
                    ev.where,
                    f"field pod: no running pod {ev.namespace}/{ev.pod}",
                )
            return pod
        matches = [p for k, p in self.pods.items() if k.split("/", 1)[1] == ev.pod]
        if not matches:
            raise _fail(self.scenario.path, ev.where, f"field pod: no running pod named {ev.pod!r}")
        if len(matches) > 1:
            names = ", ".join(sorted(p.key for p in matches))
            raise _fail(
                self.scenario.path,
                ev.where,
                f"field pod: {ev.pod!r} is ambiguous ({names}); add namespace",
            )
        return matches[0]

    def run(self) -> bool:
        """Play the events; False when one failed in the policy (see `error`)."""
        for ev in self.scenario.events:
            try:
                getattr(self, "_" + ev.kind.replace("-", "_"))(ev)
            except ScenarioError:
                raise
            except errors.Error as exc:
                self.error = f"{ev.where}: {errors.grpc_status(exc)[1]}"
                return False
        return True

    def _run_pod(self, ev: Event) -> None:
        key = f"{ev.namespace}/{ev.pod}"
        if key in self.pods:
            raise _fail(self.scenario.path, ev.where, f"field name: pod {key} is already running")
        qos, specs = self._pod_qos[ev.index]
        uid = ev.uid or str(uuid.uuid5(uuid.NAMESPACE_URL, f"cri-resmgr-simulate/{key}/{ev.index}"))
        labels = {
            podspec.LABEL_POD_NAME: ev.pod,
            podspec.LABEL_POD_NAMESPACE: ev.namespace,
            podspec.LABEL_POD_UID: uid,
        }
        labels.update(ev.labels)
        linux = api_pb2.LinuxPodSandboxConfig(
            cgroup_parent=podspec.cgroup_parent(uid, qos, self.scenario.cgroup_driver),
            resources=self._encode(ev, podspec.sandbox_resources(specs)),
        )
        if ev.overhead_cpu or ev.overhead_memory:
            linux.overhead.CopyFrom(
                self._encode(ev, podspec.overhead_resources(ev.overhead_cpu, ev.overhead_memory))
            )
        config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name=ev.pod, uid=uid, namespace=ev.namespace),
            labels=labels,
            annotations=dict(ev.annotations),
            linux=linux,
        )
        reply = self._call("RunPodSandbox", api_pb2.RunPodSandboxRequest(config=config))
        pod_id = api_pb2.RunPodSandboxResponse.FromString(reply).pod_sandbox_id
        self.pods[key] = _LivePod(key, pod_id, uid, qos, config)

    def _create_container(self, ev: Event) -> None:
        pod = self._pod(ev)
        if ev.name in pod.containers:
            raise _fail(
                self.scenario.path,
                ev.where,
                f"field name: {pod.key} already has a container {ev.name!r}",
            )
        attempt = pod.attempts.get(ev.name, 0)
        labels = {
            podspec.LABEL_CONTAINER_NAME: ev.name,
            podspec.LABEL_POD_NAME: pod.config.metadata.name,
            podspec.LABEL_POD_NAMESPACE: pod.config.metadata.namespace,
            podspec.LABEL_POD_UID: pod.uid,
        }
        resources = podspec.container_resources(ev.spec, pod.qos, self.node_memory)
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name=ev.name, attempt=attempt),
            image=api_pb2.ImageSpec(image="registry.k8s.io/pause:3.9"),
            labels=labels,
            annotations=dict(ev.annotations),
            linux=api_pb2.LinuxContainerConfig(resources=self._encode(ev, resources)),
        )
        request = api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config
        )
        reply = self._call("CreateContainer", request)
        cid = api_pb2.CreateContainerResponse.FromString(reply).container_id
        pod.containers[ev.name] = cid
        pod.attempts[ev.name] = attempt + 1
        self._call("StartContainer", api_pb2.StartContainerRequest(container_id=cid))

    def _update_container(self, ev: Event) -> None:
        pod = self._pod(ev)
        cid = self._container_id(pod, ev)
        resources = podspec.container_resources(ev.spec, pod.qos, self.node_memory)
        request = api_pb2.UpdateContainerResourcesRequest(
            container_id=cid, linux=self._encode(ev, resources)
        )
        self._call("UpdateContainerResources", request)

    def _container_id(self, pod: _LivePod, ev: Event) -> str:
        cid = pod.containers.get(ev.name)
        if cid is None:
            raise _fail(
                self.scenario.path, ev.where, f"field name: {pod.key} has no container {ev.name!r}"
            )
        return cid

    def _remove_container(self, ev: Event) -> None:
        pod = self._pod(ev)
        cid = self._container_id(pod, ev)
        self._call("StopContainer", api_pb2.StopContainerRequest(container_id=cid))
        self._call("RemoveContainer", api_pb2.RemoveContainerRequest(container_id=cid))
        del pod.containers[ev.name]

    def _remove_pod(self, ev: Event) -> None:
        key = f"{ev.namespace}/{ev.pod}"
        pod = self.pods.get(key)
        if pod is None:
            raise _fail(self.scenario.path, ev.where, f"field name: no running pod {key}")
        self._call("StopPodSandbox", api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id))
        self._call("RemovePodSandbox", api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id))
        del self.pods[key]

    # -- output

    def result(self) -> Dict[str, Any]:
        """The output document: every live container as the runtime has it."""
        placements = self.hooks.policy.placements()
        names = {}
        for pod in self.pods.values():
            for name, cid in pod.containers.items():
                names[cid] = (pod.key, name)
        containers = []
        for c in self.runtime.live_containers():
            if c.id not in names:
                continue
            pod_key, name = names[c.id]
            entry = self.hooks.state.containers.get(c.id)
            placement = placements.get(c.id)
            item: Dict[str, Any] = {
                "pod": pod_key,
                "container": name,
                "id": c.id,
                "cpuset_cpus": c.resources.cpuset_cpus,
                "cpuset_mems": c.resources.cpuset_mems,
                "cpu_shares": c.resources.cpu_shares,
                "qos": entry.container.qos if entry else "",
                "class": placement.cpu_class if placement else None,
                "pool": placement.pool if placement else None,
                "exclusive": str(placement.exclusive) if placement else "",
            }
            containers.append(item)
        policy = self.hooks.policy
        doc: Dict[str, Any] = {
            "containers": containers,
            "policy": self.hooks.name,
            # the none policy reserves nothing, whatever [policy] reserved-cpus says
            "reserved_cpus": str(policy.reserved) if self.hooks.name != "none" else "",
            "pools": {k: str(v) for k, v in policy.pools().items()},
        }
        if self.error:
            doc["error"] = self.error
        return doc


def render_table(doc: Mapping[str, Any], topology: Any) -> str:
    """Per NUMA node: which containers run on which of its CPUs, for people."""
    lines: List[str] = []
    reserved = CPUSet.parse(doc.get("reserved_cpus", ""))
    all_cpus = topology.online
    for node_id in sorted(topology.nodes):
        node = topology.nodes[node_id]
        memory = f"{node.memory / (1 << 30):.1f} GiB {node.kind}" if node.memory else node.kind
        cpus = node.cpus
        lines.append(f"node {node_id}: CPUs {cpus or '-'} ({memory})")
        if not cpus:
            continue
        groups: Dict[Tuple[str, str], List[str]] = {}
        used = CPUSet()
        for c in doc["containers"]:
            allowed = CPUSet.parse(c["cpuset_cpus"]) if c["cpuset_cpus"] else all_cpus
            here = allowed & cpus
            if not here:
                continue
            used = used | here
            cls = c.get("class") or "unplaced"
            groups.setdefault((cls, str(here)), []).append(f"{c['pod']}:{c['container']}")
        order = {"exclusive": 0, "isolated": 1, "reserved": 2, "shared": 3}
        for (cls, here), names in sorted(
            groups.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])
        ):
            lines.append(f"  {cls:<10} {here:<16} {', '.join(names)}")
        if reserved & cpus:
            lines.append(f"  {'reserved':<10} {str(reserved & cpus):<16} (system and kube tasks)")
        idle = cpus - used - reserved
        if doc.get("policy") == "balloons":  # a balloon's CPUs are its own, even when empty
            for name, text in sorted(doc.get("pools", {}).items()):
                empty = CPUSet.parse(text) & idle
                if empty and name != "reserved":
                    lines.append(f"  {'balloon':<10} {str(empty):<16} {name} (no container)")
                    idle = idle - empty
        isolated = idle & topology.isolated
        if isolated:
            lines.append(f"  {'isolated':<10} {str(isolated):<16} (isolcpus, no container)")
        if idle - isolated:
            lines.append(f"  {'idle':<10} {str(idle - isolated):<16} (no container)")
    if doc.get("error"):
        lines.append(f"error: {doc['error']}")
    return "\n".join(lines) + "\n"


# --- the command --------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cri-resmgr simulate",
        description=(
            "Run the real policy code on the CRI messages of a scenario (YAML) and print "
            "the final placement as JSON (or, with --table, per NUMA node)."
        ),
        allow_abbrev=False,
    )
    parser.add_argument("scenario", help="scenario file (YAML; - reads stdin)")
    parser.add_argument("--sysfs-root", help="directory containing the sys/ tree to read")
    parser.add_argument("--policy", help="policy name (default: from the configuration)")
    parser.add_argument("--reserved-cpus", help="CPUs or amount reserved (e.g. 0,1 or 2)")
    parser.add_argument(
        "--config-dir", default="", help="read *.conf from here (default: no files, defaults only)"
    )
    parser.add_argument("--table", action="store_true", help="print a table for people")
    parser.add_argument(
        "--svg", metavar="FILE", help="also draw the placement as an SVG picture into FILE"
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=("debug", "info", "warning", "error"),
        help="log level on stderr (default warning)",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None, stdout: Optional[TextIO] = None) -> int:
    """The ``simulate`` sub-command; returns the exit status (see the module docstring)."""
    out = stdout or sys.stdout
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("cri_resmgr").setLevel(args.log_level.upper())
    try:
        setup = _setup(args)
    except (errors.Error, ValueError) as exc:
        print(f"cri-resmgr simulate: {exc}", file=sys.stderr)
        return 2
    config, topology, hooks, runtime, scenario, tmp = setup
    try:
        sim = Simulation(
            hooks, runtime, scenario, node_memory=topology.memory or DEFAULT_NODE_MEMORY
        )
        try:
            ok = sim.run()
        except ScenarioError as exc:
            print(f"cri-resmgr simulate: {exc}", file=sys.stderr)
            return 2
        doc = sim.result()
        if args.svg:
            from cri_resmgr import cpumap  # noqa: PLC0415 - only when asked

            with open(args.svg, "w", encoding="utf-8") as f:
                f.write(cpumap.svg_for_simulation(topology, doc))
        if args.table:
            out.write(render_table(doc, topology))
        else:
            out.write(json.dumps(doc, indent=2) + "\n")
        if not ok:
            print(f"cri-resmgr simulate: {sim.error}", file=sys.stderr)
            return 1
        return 0
    finally:
        hooks.close()
        hooks.state.close()
        tmp.cleanup()


def _setup(args: argparse.Namespace) -> Tuple[Any, Any, Hooks, InMemoryRuntime, Scenario, Any]:
    from cri_resmgr import policy as policies  # noqa: PLC0415
    from cri_resmgr.resources import topology as topo  # noqa: PLC0415
    from cri_resmgr.state import State  # noqa: PLC0415

    overrides: Dict[Tuple[str, str], str] = {}
    if args.sysfs_root is not None:
        overrides[("host", "sysfs-root")] = args.sysfs_root
    if args.policy is not None:
        overrides[("policy", "name")] = args.policy
    if args.reserved_cpus is not None:
        overrides[("policy", "reserved-cpus")] = args.reserved_cpus
    config = cfg.load(args.config_dir, overrides)
    scenario = load_scenario(args.scenario)
    topology = topo.load(config.get("host", "sysfs-root"))
    cls, reserved = policies.checked(topology, config)  # as the service checks it
    name = config.policy_name
    policy = cls(topology, reserved, config.policy_options(name))
    tmp = tempfile.TemporaryDirectory(prefix="cri-resmgr-simulate-")
    state = State.load(tmp.name, name)
    runtime = InMemoryRuntime()
    hooks = Hooks(policy, state, runtime, HookOptions.from_options(config.policy_options(name)))
    hooks.resync()
    return config, topology, hooks, runtime, scenario, tmp
