"""The CRI-aware part of the relay: decode the hooked calls, ask the policy, rewrite, undo.

Ownership: the hook table the relay runs (`Hooks.table()`: full method path -> `Hook`
for RunPodSandbox, CreateContainer, StartContainer, UpdateContainerResources,
StopContainer, RemoveContainer, StopPodSandbox and RemovePodSandbox), the one lock
that serializes policy calls, the bookkeeping of containers whose CreateContainer is
in flight, pushing knock-on placement changes to the runtime, persisting the state
before kubelet gets a reply, and the start-up resync with the runtime (`resync()`).
Protobuf is decoded and encoded here only; `podspec` turns plain values into the
policy's records.

Per call (the relay runs hooks in a pool of worker threads, concurrently):

* CreateContainer: build the pod (from the state, or from the request's
  ``sandbox_config`` for pods that predate the relay) and container records, then,
  under the lock, `Policy.allocate` under a provisional key. Outside the lock: push the
  knock-on updates, rewrite ``config.linux.resources`` (cpuset_cpus, cpuset_mems and
  cpu_shares when the placement sets them), forward. On success the provisional key
  is renamed to the container id (`Policy.rename`) under the lock, the state is saved
  and the reply returned; a placement that changed while the call was in flight is
  pushed first. When the runtime rejects the call the allocation is released (undo)
  and the runtime's error goes to kubelet; on DEADLINE_EXCEEDED/CANCELLED the hooks
  first look (ListContainers) whether the runtime created it anyway and keep it then.
  Creation takes 100+ ms, so the lock is not held across it.
* UpdateContainerResources from kubelet: `Policy.update` with the new resources, and
  the call is forwarded with our cpusets filled in (never swallowed); on a runtime
  error the old size is put back. Unchanged resources (kubelet's periodic reconcile)
  are forwarded with our cpusets, without a policy call or a state write.
* Stop/Remove of containers and sandboxes: forwarded first, then released (a runtime
  failure keeps the allocation: the container may still run; NOT_FOUND releases).
* Knock-on updates (`Decision.updates`, e.g. the shared pool shrank) are pushed with
  UpdateContainerResources through the runtime client (straight to the runtime, not
  through the relay) before kubelet gets its reply. Pushes are serialized and always
  send a container's latest placement; a call whose updates another call's push is
  sending waits for that push. A failed push is logged with the container's key and
  retried at the next change.
* ``on-error``: ``fail`` sends the policy's error to kubelet (the relay maps
  `errors.Error` subclasses to gRPC codes); ``pass`` logs it and forwards the request
  unmodified.
* The state is saved after every change, before the reply; a call that changes
  nothing (a stop of an unknown or stopped container) writes nothing. A failed save
  is logged and does not fail the call (the runtime already acted; a restart rebuilds
  the state from the runtime, placing unknown containers through the policy again).

One INFO line per placement names ``namespace/pod:container`` and the CPUs and memory
nodes chosen. Times are seconds.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    Deque,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Set,
    Tuple,
    Type,
    TypeVar,
)

import grpc
from google.protobuf.message import DecodeError, Message

from cri_resmgr import errors, podspec
from cri_resmgr.cri import api_pb2
from cri_resmgr.cri.methods import method_path
from cri_resmgr.podspec import LinuxResources
from cri_resmgr.policy.base import Container, Decision, Placement, Pod, Policy
from cri_resmgr.relay import CallInfo, Forward, ForwardError, Hook
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.state import ContainerEntry, State

__all__ = [
    "CREATE_CONTAINER",
    "HOOKED_METHODS",
    "HookOptions",
    "Hooks",
    "ON_ERROR_FAIL",
    "ON_ERROR_PASS",
    "PROVISIONAL_PREFIX",
    "REMOVE_CONTAINER",
    "REMOVE_POD_SANDBOX",
    "RUN_POD_SANDBOX",
    "ResyncReport",
    "START_CONTAINER",
    "STOP_CONTAINER",
    "STOP_POD_SANDBOX",
    "UPDATE_CONTAINER_RESOURCES",
    "resources_pb",
    "runtime_error",
]

log = logging.getLogger(__name__)

RUN_POD_SANDBOX = method_path("RuntimeService", "RunPodSandbox")
STOP_POD_SANDBOX = method_path("RuntimeService", "StopPodSandbox")
REMOVE_POD_SANDBOX = method_path("RuntimeService", "RemovePodSandbox")
CREATE_CONTAINER = method_path("RuntimeService", "CreateContainer")
START_CONTAINER = method_path("RuntimeService", "StartContainer")
UPDATE_CONTAINER_RESOURCES = method_path("RuntimeService", "UpdateContainerResources")
STOP_CONTAINER = method_path("RuntimeService", "StopContainer")
REMOVE_CONTAINER = method_path("RuntimeService", "RemoveContainer")
HOOKED_METHODS = (
    RUN_POD_SANDBOX,
    CREATE_CONTAINER,
    START_CONTAINER,
    UPDATE_CONTAINER_RESOURCES,
    STOP_CONTAINER,
    REMOVE_CONTAINER,
    STOP_POD_SANDBOX,
    REMOVE_POD_SANDBOX,
)

ON_ERROR_FAIL = "fail"
ON_ERROR_PASS = "pass"
#: prefix of the key a container has while its CreateContainer is in flight
PROVISIONAL_PREFIX = "creating:"
#: UpdateContainerResources calls sent to the runtime at once when a pool changes
PUSH_WORKERS = 8
# codes after which the runtime may have created the container nevertheless
_AMBIGUOUS = frozenset({"DEADLINE_EXCEEDED", "CANCELLED"})
_LIVE_STATES = (api_pb2.CONTAINER_CREATED, api_pb2.CONTAINER_RUNNING)


def runtime_error(code: str, details: str) -> ForwardError:
    """A `relay.ForwardError` with status `code` (a grpc.StatusCode name), as the
    relay's forward raises it; for fake runtimes (simulate, tests)."""
    return ForwardError(grpc.StatusCode[code], details)


def _code(exc: BaseException) -> str:
    """The gRPC status code name of a runtime failure ("" when there is none)."""
    if isinstance(exc, ForwardError):
        return str(exc.code.name)
    code = getattr(exc, "code", None)
    if callable(code):
        try:
            return str(code().name)
        except Exception:  # noqa: BLE001 - not a gRPC error after all
            return ""
    return ""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ForwardError):
        return f"{exc.code.name}: {exc.details}"
    details = getattr(exc, "details", None)
    if callable(details) and _code(exc):
        return f"{_code(exc)}: {details()}"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class HookOptions:
    """How the hooks behave. Times in seconds."""

    on_error: str = ON_ERROR_FAIL  # the policy's [policy.NAME] on-error: fail | pass
    update_timeout: float = 5.0  # each UpdateContainerResources pushed to the runtime
    runtime_timeout: float = 10.0  # each List*/Status call of the resync

    def __post_init__(self) -> None:
        if self.on_error not in (ON_ERROR_FAIL, ON_ERROR_PASS):
            raise ValueError(f"on-error {self.on_error!r}: allowed fail, pass")

    @classmethod
    def from_options(cls, policy_options: Mapping[str, Any], **kw: Any) -> HookOptions:
        """From `Config.policy_options(name)` (uses its ``on-error``, default fail)."""
        return cls(on_error=str(policy_options.get("on-error", ON_ERROR_FAIL)), **kw)


@dataclass
class ResyncReport:
    """What `Hooks.resync` did, by container key (``namespace/pod:container (id)``)."""

    restored: List[str] = field(default_factory=list)  # placements kept from the state
    dropped: List[str] = field(default_factory=list)  # in the state, gone from the runtime
    adopted: List[str] = field(default_factory=list)  # running, unknown to the state
    replaced: List[str] = field(default_factory=list)  # placed again (topology, switch)
    unplaced: List[str] = field(default_factory=list)  # the policy could not place them
    pushed: List[str] = field(default_factory=list)  # cpusets sent to the runtime
    failed_pushes: List[str] = field(default_factory=list)


#: a push: container id, key (for logs), kubelet's resources, the placement to send
_PushJob = Tuple[str, str, LinuxResources, Placement]


@dataclass
class _Inflight:
    """A container whose CreateContainer is in flight, under a provisional key."""

    pod: Pod
    container: Container
    resources: LinuxResources
    placed: bool  # the policy knows the key (allocate succeeded)
    sent: Optional[Placement]  # the placement written into the forwarded request
    latest: Optional[Placement]  # knock-on updates while in flight land here


def _plain(res: api_pb2.LinuxContainerResources) -> LinuxResources:
    return LinuxResources(
        cpu_period=res.cpu_period,
        cpu_quota=res.cpu_quota,
        cpu_shares=res.cpu_shares,
        memory_limit_in_bytes=res.memory_limit_in_bytes,
        oom_score_adj=res.oom_score_adj,
        cpuset_cpus=res.cpuset_cpus,
        cpuset_mems=res.cpuset_mems,
    )


def resources_pb(res: LinuxResources) -> api_pb2.LinuxContainerResources:
    """The CRI message of plain resources (unset fields stay unset); `_plain` backwards."""
    return api_pb2.LinuxContainerResources(**res.to_json())


def _placement_fields(placement: Optional[Placement]) -> Dict[str, Any]:
    """The `LinuxContainerResources` fields a placement sets: ``cpuset_cpus`` (unless its
    CPU set is empty), ``cpuset_mems`` and ``cpu_shares`` (unless None)."""
    if placement is None:
        return {}
    changes: Dict[str, Any] = {}
    if placement.cpus:
        changes["cpuset_cpus"] = str(placement.cpus)
    if placement.mems is not None:
        changes["cpuset_mems"] = str(placement.mems)
    if placement.cpu_shares is not None:
        changes["cpu_shares"] = placement.cpu_shares
    return changes


def _with_placement(res: LinuxResources, placement: Optional[Placement]) -> LinuxResources:
    """`res` with the fields a placement sets."""
    changes = _placement_fields(placement)
    return res.replace(**changes) if changes else res


def _write_placement(msg: api_pb2.LinuxContainerResources, placement: Placement) -> None:
    """Set the fields a placement sets in a message about to be forwarded."""
    for name, value in _placement_fields(placement).items():
        setattr(msg, name, value)


_M = TypeVar("_M", bound=Message)


def _parse(cls: Type[_M], request: bytes, what: str) -> Optional[_M]:
    """`request` decoded as `cls`; None (logged) when it does not decode, and the hook
    then forwards it as is."""
    try:
        return cls.FromString(request)
    except DecodeError as exc:
        log.warning("%s request does not decode (%s); forwarded as is", what, exc)
        return None


def _placement_text(placement: Optional[Placement]) -> str:
    """``cpus 2-3, mems 0 (exclusive)``: what a log line says about a placement."""
    if placement is None:
        return "not placed (left as requested)"
    text = f"cpus {placement.cpus or '(unchanged)'}"
    text += f", mems {placement.mems}" if placement.mems is not None else ", mems (unchanged)"
    notes = [placement.cpu_class]
    if placement.pool and placement.pool != placement.cpu_class:
        notes.append(f"pool {placement.pool}")
    if placement.exclusive and placement.exclusive != placement.cpus:
        notes.append(f"exclusive {placement.exclusive}")
    if placement.cpu_shares is not None:
        notes.append(f"shares {placement.cpu_shares}")
    return f"{text} ({', '.join(notes)})"


def _short(cid: str) -> str:
    """A container id for log lines: 12 characters, as crictl shows them."""
    return cid[:12]


def _pod_from_config(pod_id: str, config: api_pb2.PodSandboxConfig) -> Pod:
    linux = config.linux
    return podspec.make_pod(
        pod_id,
        config.metadata.uid,
        config.metadata.name,
        config.metadata.namespace,
        linux.cgroup_parent,
        annotations=dict(config.annotations),
        labels=dict(config.labels),
        resources=_plain(linux.resources) if linux.HasField("resources") else None,
        overhead=_plain(linux.overhead) if linux.HasField("overhead") else None,
    )


class Hooks:
    """The hooks of one policy. See the module docstring for what each call does.

    `runtime` is a client of the runtime's own socket with the generated stub as
    ``.runtime`` (a `cri.client.CriClient`, or a fake with the same methods); None
    disables pushes and the runtime part of `resync`. `state` is saved before every
    reply; an unopened one (`State(directory)`) is opened here for the policy.
    `options` is a `HookOptions`, or the `config.Config`, from which ``on-error`` of
    ``[policy.NAME]`` and ``[policy] disable-policy-switch`` are taken.

    Call `resync()` once, before the relay serves, then give `table()` to the relay;
    `close()` at shutdown.
    """

    def __init__(
        self,
        policy: Policy,
        state: State,
        runtime: Optional[Any] = None,
        options: Optional[Any] = None,
        metrics: Optional[Any] = None,
    ) -> None:
        self.metrics = metrics  # metrics.Metrics (decision/state_write feeds) or None
        self.policy: Policy = _Counted(policy, metrics) if metrics is not None else policy
        self.state = state
        self.runtime = runtime
        self.name = policy.NAME or type(policy).__name__
        disable_switch = False
        if options is None:
            options = HookOptions()
        elif not isinstance(options, HookOptions):  # a config.Config
            disable_switch = bool(options.get("policy", "disable-policy-switch"))
            options = HookOptions.from_options(options.policy_options(policy.NAME))
        self.options: HookOptions = options
        if not state.opened:
            state.open(self.name, disable_policy_switch=disable_switch)
        self._lock = threading.RLock()  # policy calls, state changes, in-flight table
        self._push_lock = threading.Lock()  # one push sequence at a time, latest wins
        self._pushers = concurrent.futures.ThreadPoolExecutor(
            max_workers=PUSH_WORKERS, thread_name_prefix="cri-push"
        )
        self._inflight: Dict[str, _Inflight] = {}
        self._dirty: Set[str] = set()  # container ids whose placement the runtime lacks
        self._resynced: Optional[ResyncReport] = None  # what the start-up resync did
        # sandboxes removed lately, for creates that were in flight meanwhile
        self._gone_pods: Deque[str] = collections.deque(maxlen=1024)
        self._closed = False

    # -- configuration

    def table(self) -> Dict[str, Hook]:
        """Full method path -> hook, for `relay.Relay(hooks=...)`."""
        return {
            RUN_POD_SANDBOX: self.run_pod_sandbox,
            CREATE_CONTAINER: self.create_container,
            START_CONTAINER: self.start_container,
            UPDATE_CONTAINER_RESOURCES: self.update_container_resources,
            STOP_CONTAINER: self.stop_container,
            REMOVE_CONTAINER: self.remove_container,
            STOP_POD_SANDBOX: self.stop_pod_sandbox,
            REMOVE_POD_SANDBOX: self.remove_pod_sandbox,
        }

    def set_options(self, options: HookOptions) -> None:
        """Apply new options (a reload changed ``on-error``); calls in flight finish with
        the old ones."""
        self.options = options

    def reconfigure(self, policy_options: Mapping[str, Any]) -> None:
        """New ``[policy.NAME]`` options (a reload): ``on-error`` applies to the next
        calls; the policy gets the rest; its consequences are pushed and persisted."""
        on_error = policy_options.get("on-error")
        if on_error is not None and on_error != self.options.on_error:
            self.set_options(dataclasses.replace(self.options, on_error=str(on_error)))
            log.info("on-error is %s now", on_error)
        with self._lock:
            decision = self.policy.reconfigure(policy_options)
            self._apply_updates(decision.updates)
        self._commit()

    # -- helpers

    def _commit(self, info: Optional[CallInfo] = None) -> None:
        """Push what is dirty, then save: what every change does before its reply. The
        save happens also when the push fails (a decision is on disk before the reply)."""
        try:
            self._push(info)
        finally:
            self._save()

    def _save(self) -> None:
        try:
            self.state.save()
        except errors.StateError as exc:
            log.error("%s; the placement holds in memory, the next change saves again", exc)
            return
        if self.metrics is not None and self.state.last_save_seconds is not None:
            self.metrics.state_write(self.state.last_save_seconds)

    def _policy_failed(self, what: str, exc: BaseException) -> None:
        """Handle a policy exception by on-error: raise (fail) or log (pass)."""
        if self.options.on_error == ON_ERROR_FAIL:
            if isinstance(exc, errors.Error):
                raise exc
            log.error("policy %s failed on %s", self.name, what, exc_info=exc)
            raise errors.PolicyError(
                f"policy {self.name} failed on {what}: {type(exc).__name__}: {exc}"
            ) from exc
        if self.metrics is not None:
            operation = "update" if what.startswith("resizing ") else "allocate"
            self.metrics.decision(self.name, operation, "passed")
        if isinstance(exc, errors.Error):
            log.warning(
                "policy %s cannot place %s: %s; on-error=pass: forwarding it unmodified",
                self.name,
                what,
                exc,
            )
        else:
            log.error(
                "policy %s failed on %s; on-error=pass: forwarding it unmodified",
                self.name,
                what,
                exc_info=exc,
            )

    def _apply_updates(self, updates: Mapping[str, Placement], skip: str = "") -> None:
        """Record knock-on placement changes (caller holds the lock)."""
        for key, placement in updates.items():
            if key == skip:
                continue
            inflight = self._inflight.get(key)
            if inflight is not None:
                inflight.latest = placement
                continue
            if self.state.set_placement(key, placement):
                self._dirty.add(key)
                entry = self.state.containers[key]
                log.debug("moved %s to %s", entry.container.key, _placement_text(placement))
            else:
                log.debug("policy %s updated unknown container %s; ignored", self.name, key)

    def _push(self, info: Optional[CallInfo]) -> Tuple[List[str], List[str]]:
        """Send the latest placement of every dirty container to the runtime.

        Returns (pushed, failed) container keys. Failures stay dirty (retried at the
        next change), except containers the runtime no longer has.

        Decided under `_push_lock` even when nothing is dirty: a push in progress may be
        sending this caller's updates (it took them out of the dirty set), and the
        caller's reply must wait for it (e.g. a CreateContainer must not forward onto
        CPUs shared containers are still being moved off).
        """
        pushed: List[str] = []
        failed: List[str] = []
        with self._push_lock:
            with self._lock:
                jobs = []
                for cid in sorted(self._dirty):
                    entry = self.state.containers.get(cid)
                    if entry is not None and entry.placement is not None and not entry.stopped:
                        jobs.append((cid, entry.container.key, entry.resources, entry.placement))
                self._dirty.clear()
            if not jobs or self.runtime is None:
                return [], []
            timeout = self.options.update_timeout
            remaining = info.remaining() if info is not None else None
            if remaining is not None:
                timeout = max(0.5, min(timeout, remaining))
            runtime = self.runtime.runtime

            def send(job: _PushJob) -> Optional[BaseException]:
                cid, _, resources, placement = job
                request = api_pb2.UpdateContainerResourcesRequest(
                    container_id=cid, linux=resources_pb(_with_placement(resources, placement))
                )
                try:
                    runtime.UpdateContainerResources(request, timeout=timeout)
                except Exception as exc:  # noqa: BLE001 - a failed push never fails the call
                    return exc
                return None

            outcomes = self._send_all(send, jobs)
            for (cid, key, _, placement), exc in zip(jobs, outcomes):
                if exc is not None:
                    if _code(exc) == "NOT_FOUND":
                        log.info(
                            "cannot move %s (%s): the runtime no longer has it", key, _short(cid)
                        )
                        continue
                    log.warning(
                        "cannot move %s (%s) to %s: %s; retried at the next change",
                        key,
                        _short(cid),
                        _placement_text(placement),
                        _describe(exc),
                    )
                    failed.append(f"{key} ({cid})")
                    with self._lock:
                        self._dirty.add(cid)
                    continue
                pushed.append(f"{key} ({cid})")
                log.debug("pushed %s (%s): %s", key, _short(cid), _placement_text(placement))
        return pushed, failed

    def _send_all(
        self, send: Callable[[_PushJob], Optional[BaseException]], jobs: List[_PushJob]
    ) -> List[Optional[BaseException]]:
        """`send` each job; the outcomes in order.

        In parallel: a shrinking shared pool moves every shared container, and kubelet
        waits for all of them (one at a time, 100 of them took 2 s). Once `close()` has
        shut the pool down (a call finishing during shutdown), what the pool no longer
        takes is sent here, one by one.
        """
        futures: List[concurrent.futures.Future[Optional[BaseException]]] = []
        if len(jobs) > 1:
            for job in jobs:
                try:
                    futures.append(self._pushers.submit(send, job))
                except RuntimeError:  # shut down; what it took already still runs
                    break
        return [f.result() for f in futures] + [send(job) for job in jobs[len(futures) :]]

    def _pod_for(
        self, pod_id: str, config: Optional[api_pb2.PodSandboxConfig], labels: Mapping[str, str]
    ) -> Pod:
        """The pod of a container: from the state, else from the request (and remembered)."""
        with self._lock:
            pod = self.state.pods.get(pod_id)
            if pod is not None:
                return pod
            if config is not None and config.HasField("metadata"):
                pod = _pod_from_config(pod_id, config)
                log.info("pod %s (%s) was created before cri-resmgr; adopted", pod.key, pod_id)
            else:
                pod = podspec.make_pod(
                    pod_id,
                    labels.get(podspec.LABEL_POD_UID, ""),
                    labels.get(podspec.LABEL_POD_NAME, ""),
                    labels.get(podspec.LABEL_POD_NAMESPACE, ""),
                )
            if pod_id and pod_id not in self._gone_pods:  # not a pod removed meanwhile
                self.state.put_pod(pod)
            return pod

    def _pod_of(self, entry: ContainerEntry) -> Pod:
        """The pod of a container entry: from the state, else a record made of what the
        container knows of it (caller holds the lock)."""
        c = entry.container
        pod = self.state.pods.get(c.pod_id)
        return pod if pod is not None else podspec.make_pod(c.pod_id, "", c.pod_name, c.namespace)

    # -- RunPodSandbox

    def run_pod_sandbox(self, request: bytes, forward: Forward, info: CallInfo) -> bytes:
        req = _parse(api_pb2.RunPodSandboxRequest, request, "RunPodSandbox")
        if req is None:
            return forward(request)
        reply = forward(request)
        try:
            pod_id = api_pb2.RunPodSandboxResponse.FromString(reply).pod_sandbox_id
        except DecodeError:
            log.warning("RunPodSandbox reply does not decode; pod not recorded")
            return reply
        pod = _pod_from_config(pod_id, req.config)
        with self._lock:
            self.state.put_pod(pod)
        self._save()
        log.debug("pod %s (%s) started, QoS %s", pod.key, pod_id, pod.qos)
        return reply

    # -- CreateContainer

    def create_container(self, request: bytes, forward: Forward, info: CallInfo) -> bytes:
        req = _parse(api_pb2.CreateContainerRequest, request, "CreateContainer")
        if req is None:
            return forward(request)
        config = req.config
        pod = self._pod_for(
            req.pod_sandbox_id,
            req.sandbox_config if req.HasField("sandbox_config") else None,
            config.labels,
        )
        resources = _plain(config.linux.resources)
        container = podspec.make_container(
            "", config.metadata.name, pod, resources, dict(config.annotations)
        )
        key = PROVISIONAL_PREFIX + uuid.uuid4().hex
        placement: Optional[Placement] = None
        with self._lock:
            placed = False
            try:
                decision = self.policy.allocate(key, pod, container)
                placed = True
            except Exception as exc:  # noqa: BLE001 - on-error decides
                self._policy_failed(container.key, exc)
                decision = Decision()
            placement = decision.placement
            self._inflight[key] = _Inflight(pod, container, resources, placed, placement, placement)
            self._apply_updates(decision.updates, skip=key)
        try:
            self._push(info)
            if placement is not None:
                _write_placement(req.config.linux.resources, placement)
                request = req.SerializeToString()
            reply = forward(request)
        except ForwardError as exc:
            cid = self._find_created(req) if exc.code.name in _AMBIGUOUS else ""
            if cid:
                log.warning(
                    "CreateContainer of %s failed (%s) but the runtime created %s; keeping "
                    "its placement until it is removed",
                    container.key,
                    _describe(exc),
                    _short(cid),
                )
                self._bind(key, cid)
            else:
                self._undo_create(key, exc)
            raise
        except BaseException as exc:
            self._undo_create(key, exc)
            raise
        try:
            cid = api_pb2.CreateContainerResponse.FromString(reply).container_id
        except DecodeError:
            cid = ""
        if not cid:
            log.error("CreateContainer of %s: reply carries no container id", container.key)
            self._undo_create(key, None)
            return reply
        self._bind(key, cid)
        return reply

    def _find_created(self, req: api_pb2.CreateContainerRequest) -> str:
        """After an ambiguous failure: the id of the container if the runtime made it."""
        if self.runtime is None:
            return ""
        meta = req.config.metadata
        try:
            listed = self.runtime.runtime.ListContainers(
                api_pb2.ListContainersRequest(
                    filter=api_pb2.ContainerFilter(pod_sandbox_id=req.pod_sandbox_id)
                ),
                timeout=self.options.update_timeout,
            ).containers
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot check whether the runtime created the container: %s", exc)
            return ""
        with self._lock:
            for c in listed:
                if (
                    c.metadata.name == meta.name
                    and c.metadata.attempt == meta.attempt
                    and c.state in _LIVE_STATES
                    and c.id not in self.state.containers
                ):
                    return str(c.id)
        return ""

    def _bind(self, key: str, cid: str) -> None:
        """The runtime created the container: its provisional key becomes its id.

        One lock section from leaving the in-flight table to entering the state, so a
        RemovePodSandbox (`_drop_pod`) sees the container on one side or the other."""
        with self._lock:
            inflight = self._inflight.pop(key)
            container = dataclasses.replace(inflight.container, id=cid)
            gone = inflight.pod.id in self._gone_pods
            if gone:
                # RemovePodSandbox won the race: the runtime removed this container too
                if inflight.placed:
                    try:
                        self._apply_updates(self.policy.release(key).updates, skip=key)
                    except Exception:  # noqa: BLE001 - it is gone either way
                        log.exception("policy %s failed to release %s", self.name, key)
            else:
                if inflight.placed:
                    self._rename(key, cid, inflight)
                self.state.put_container(
                    ContainerEntry(
                        container, inflight.resources, inflight.latest if inflight.placed else None
                    )
                )
                if inflight.placed and inflight.latest != inflight.sent:
                    self._dirty.add(cid)  # moved while the create was in flight
        self._commit()
        if gone:
            log.info("%s (%s): its pod was removed meanwhile", container.key, _short(cid))
        elif inflight.placed and inflight.latest is not None:
            log.info(
                "placed %s (%s): %s", container.key, _short(cid), _placement_text(inflight.latest)
            )
        else:
            log.debug("created %s (%s), not placed", container.key, _short(cid))

    def _rename(self, key: str, cid: str, inflight: _Inflight) -> None:
        """Policy.rename; for a policy without it (or failing), place again under the id."""
        try:
            self.policy.rename(key, cid)
            return
        except NotImplementedError:
            pass
        except Exception:  # noqa: BLE001 - the container exists: keep going
            log.exception("policy %s failed to rename %s to %s", self.name, key, _short(cid))
        try:
            decision = self.policy.release(key)
            self._apply_updates(decision.updates)
            decision = self.policy.allocate(cid, inflight.pod, inflight.container)
            self._apply_updates(decision.updates, skip=cid)
            inflight.latest = decision.placement
        except Exception as exc:  # noqa: BLE001 - it runs where the request said
            log.error(
                "policy %s cannot place %s (%s) under its id: %s; it runs unplaced",
                self.name,
                inflight.container.key,
                _short(cid),
                exc if isinstance(exc, errors.Error) else _describe(exc),
            )
            inflight.placed = False

    def _undo_create(self, key: str, exc: Optional[BaseException]) -> None:
        with self._lock:
            inflight = self._inflight.pop(key, None)
            if inflight is None or not inflight.placed:
                return
            try:
                decision = self.policy.release(key)
                self._apply_updates(decision.updates)
            except Exception:  # noqa: BLE001 - keep the runtime's error for kubelet
                log.exception("policy %s failed to release %s", self.name, key)
        self._commit()
        log.info(
            "runtime did not create %s (%s); released %s",
            inflight.container.key,
            _describe(exc) if exc is not None else "no container id",
            _placement_text(inflight.sent),
        )

    # -- StartContainer

    def start_container(self, request: bytes, forward: Forward, info: CallInfo) -> bytes:
        reply = forward(request)
        if self._dirty:
            self._push(info)  # retry failed pushes: the runtime may take them now
        return reply

    # -- UpdateContainerResources

    def update_container_resources(self, request: bytes, forward: Forward, info: CallInfo) -> bytes:
        req = _parse(api_pb2.UpdateContainerResourcesRequest, request, "UpdateContainerResources")
        if req is None:
            return forward(request)
        cid = req.container_id
        resources = _plain(req.linux)
        current: Optional[Placement] = None
        with self._lock:
            entry = self.state.containers.get(cid)
            if entry is None or entry.stopped:
                prepared = None  # not ours (see resync), or no longer placed
            elif entry.resources == resources:
                # kubelet's periodic reconcile: nothing to decide or to write
                prepared, current = None, entry.placement
            else:
                prepared = self._prepare_update(cid, resources)
        if prepared is None:
            if current is not None:  # the runtime still gets our cpusets
                _write_placement(req.linux, current)
                request = req.SerializeToString()
            return forward(request)
        old, pod, container, placement = prepared
        self._push(info)
        if placement is not None:
            _write_placement(req.linux, placement)
            request = req.SerializeToString()
        try:
            reply = forward(request)
        except BaseException as exc:
            self._undo_update(old, pod, exc)
            raise
        self._save()
        if placement != old.placement:
            log.info("resized %s (%s): %s", container.key, _short(cid), _placement_text(placement))
        return reply

    def _prepare_update(
        self, cid: str, resources: LinuxResources
    ) -> Tuple[ContainerEntry, Pod, Container, Optional[Placement]]:
        """Re-place a tracked, running container for new resources (caller holds the lock).

        Returns (old entry, pod, new container record, placement to write). Raises the
        policy's error with on-error=fail.
        """
        entry = self.state.containers[cid]
        old = dataclasses.replace(entry)
        pod = self._pod_of(entry)
        container = podspec.make_container(
            cid, entry.container.name, pod, resources, dict(entry.container.annotations)
        )
        placement = entry.placement
        if entry.placement is not None:
            try:
                decision = self.policy.update(cid, pod, container)
                placement = decision.placement or entry.placement
                self._apply_updates(decision.updates, skip=cid)
            except Exception as exc:  # noqa: BLE001 - on-error decides
                self._policy_failed(f"resizing {container.key}", exc)
        self.state.update(cid, container=container, resources=resources, placement=placement)
        self._dirty.discard(cid)  # the forwarded request carries it
        return old, pod, container, placement

    def _undo_update(self, old: ContainerEntry, pod: Pod, exc: BaseException) -> None:
        cid = old.container.id
        with self._lock:
            placement = old.placement
            if old.placement is not None:
                try:
                    decision = self.policy.update(cid, pod, old.container)
                    placement = decision.placement or old.placement
                    self._apply_updates(decision.updates, skip=cid)
                except Exception:  # noqa: BLE001 - keep the runtime's error for kubelet
                    log.exception("policy %s failed to restore %s", self.name, old.container.key)
            self.state.update(
                cid, container=old.container, resources=old.resources, placement=placement
            )
            if placement != old.placement:
                self._dirty.add(cid)
        self._commit()
        log.info(
            "runtime refused to resize %s (%s): %s; kept %s",
            old.container.key,
            _short(cid),
            _describe(exc),
            _placement_text(placement),
        )

    # -- Stop/Remove

    def _let_go(
        self, cid: str, entry: ContainerEntry, released: List[Tuple[str, str, Placement]]
    ) -> None:
        """Release a container in the policy unless it is released already (stopped);
        what it had goes to `released` for the log (caller holds the lock)."""
        if entry.placement is not None or not entry.stopped:
            try:
                self._apply_updates(self.policy.release(cid).updates, skip=cid)
            except Exception:  # noqa: BLE001 - the runtime already acted
                log.exception("policy %s failed to release %s", self.name, _short(cid))
            if entry.placement is not None:
                released.append((entry.container.key, cid, entry.placement))
        self._dirty.discard(cid)

    @staticmethod
    def _log_released(released: Iterable[Tuple[str, str, Placement]]) -> None:
        for key, cid, placement in released:
            log.info("released %s (%s): %s", key, _short(cid), _placement_text(placement))

    def _release(self, select: Callable[[], Iterable[str]], drop: bool) -> None:
        """Release the containers `select()` names (called under the lock, after the
        runtime acted) from the policy; drop their entries or mark them stopped."""
        released: List[Tuple[str, str, Placement]] = []
        changed = False
        with self._lock:
            for cid in select():
                entry = self.state.containers.get(cid)
                if entry is None or (not drop and entry.stopped and entry.placement is None):
                    continue  # unknown, or stopped already: nothing changes
                self._let_go(cid, entry, released)
                if drop:
                    self.state.drop_container(cid)
                else:
                    self.state.update(cid, placement=None, stopped=True)
                changed = True
        if changed:  # else no push, no write (two fsyncs)
            self._commit()
        self._log_released(released)

    def _drop_pod(self, pod_id: str) -> None:
        """Forget a removed pod and release every container the state has of it, all in
        one lock section: a CreateContainer of the pod bound before it is released here,
        one bound after it finds the pod in `_gone_pods` (`_bind`)."""
        released: List[Tuple[str, str, Placement]] = []
        with self._lock:
            self._gone_pods.append(pod_id)
            known = pod_id in self.state.pods
            dropped = self.state.drop_pod(pod_id)
            for cid, entry in dropped.items():
                self._let_go(cid, entry, released)
        if known or dropped:
            self._commit()
        self._log_released(released)

    @staticmethod
    def _forward_then(request: bytes, forward: Forward, then: Callable[[], None]) -> bytes:
        """Forward, then `then()` once the runtime acted, or says it has no such object
        (NOT_FOUND); another failure keeps everything: the container may still run."""
        try:
            reply = forward(request)
        except ForwardError as exc:
            if exc.code.name == "NOT_FOUND":
                then()
            raise
        then()
        return reply

    def stop_container(self, request: bytes, forward: Forward, info: CallInfo) -> bytes:
        req = _parse(api_pb2.StopContainerRequest, request, "StopContainer")
        if req is None:
            return forward(request)
        cid = req.container_id
        return self._forward_then(request, forward, lambda: self._release(lambda: [cid], False))

    def remove_container(self, request: bytes, forward: Forward, info: CallInfo) -> bytes:
        req = _parse(api_pb2.RemoveContainerRequest, request, "RemoveContainer")
        if req is None:
            return forward(request)
        cid = req.container_id
        return self._forward_then(request, forward, lambda: self._release(lambda: [cid], True))

    def _pod_containers(self, pod_id: str) -> List[str]:
        """The ids of the state's containers of a pod (caller holds the lock)."""
        return [c for c, e in self.state.containers.items() if e.container.pod_id == pod_id]

    def stop_pod_sandbox(self, request: bytes, forward: Forward, info: CallInfo) -> bytes:
        req = _parse(api_pb2.StopPodSandboxRequest, request, "StopPodSandbox")
        if req is None:
            return forward(request)
        pod_id = req.pod_sandbox_id
        # the pod's containers as they are once the runtime stopped them, not before
        return self._forward_then(
            request, forward, lambda: self._release(lambda: self._pod_containers(pod_id), False)
        )

    def remove_pod_sandbox(self, request: bytes, forward: Forward, info: CallInfo) -> bytes:
        req = _parse(api_pb2.RemovePodSandboxRequest, request, "RemovePodSandbox")
        if req is None:
            return forward(request)
        pod_id = req.pod_sandbox_id
        return self._forward_then(request, forward, lambda: self._drop_pod(pod_id))

    # -- start-up resync

    def resync(self) -> ResyncReport:
        """Bring the state, the policy and the runtime in line; call before serving.

        1. Containers and pods of the state the runtime no longer has are dropped
           (exited ones are kept as stopped, without a placement).
        2. Placements on CPUs that are offline now, or exclusive CPUs that are reserved
           now, are dropped (logged); those containers are placed again below.
        3. The remaining placements go to `Policy.restore`.
        4. Running containers the state does not know (created before cri-resmgr, or
           while it was down) are adopted, and together with those of step 2 and those
           without a placement (policy switch) placed with `Policy.allocate`.
        5. Every resulting cpuset change is pushed to the runtime (also placements the
           runtime does not show), and the state is saved.

        Without a runtime client only steps 2, 3, 4 (for the state's containers) and
        the save happen. Raises `errors.RuntimeUnavailable` if the runtime cannot list
        its pods and containers (nothing changed then; it may be called again).

        It runs once, at start-up: while the relay serves, the runtime's view (taken
        outside the lock) would be stale against calls in flight, dropping containers
        created after the listing and adopting ones whose create is about to bind. A
        later call changes nothing, logs a warning and returns the start-up report.
        """
        if self._resynced is not None:
            log.warning("resync runs once, at start-up; this call changes nothing")
            return self._resynced
        report = ResyncReport()
        view = self._runtime_view() if self.runtime is not None else None
        topology, reserved = self.policy.topology, self.policy.reserved
        with self._lock:
            if self._resynced is not None:  # another thread's got there first
                return self._resynced
            self._resynced = report
            to_place: List[str] = []
            if view is not None:
                self._drop_vanished(view, report)
            for cid, entry in list(self.state.containers.items()):
                p = entry.placement
                if p is None:
                    if not entry.stopped:
                        to_place.append(cid)
                    continue
                offline = p.cpus - topology.online
                now_reserved = p.exclusive & reserved
                if offline or now_reserved:
                    why = f"CPUs {offline} are offline" if offline else ""
                    if now_reserved:
                        why += (" and " if why else "") + f"CPUs {now_reserved} are reserved"
                    log.warning(
                        "%s (%s) had %s but %s now; placing it again",
                        entry.container.key,
                        _short(cid),
                        _placement_text(p),
                        why,
                    )
                    self.state.set_placement(cid, None)
                    to_place.append(cid)
                    report.replaced.append(f"{entry.container.key} ({cid})")
            self._restore(report, to_place)
            if view is not None:
                self._adopt(view, report, to_place)
            self._place(to_place, report)
            if view is not None:
                # placements the runtime does not show yet (e.g. killed before a push)
                for cid, entry in self.state.containers.items():
                    if entry.placement is not None and entry.placement.cpus:
                        if _cpuset(view.cpus.get(cid)) != entry.placement.cpus:
                            self._dirty.add(cid)
        report.pushed, report.failed_pushes = self._push(None)
        self._save()
        log.info(
            "resync: %d placements restored, %d containers dropped, %d adopted, %d placed "
            "again, %d not placed, %d cpusets pushed (%d failed)",
            len(report.restored),
            len(report.dropped),
            len(report.adopted),
            len(report.replaced),
            len(report.unplaced),
            len(report.pushed),
            len(report.failed_pushes),
        )
        return report

    def _restore(self, report: ResyncReport, to_place: List[str]) -> None:
        entries = []
        for cid, entry in self.state.containers.items():
            if entry.placement is None:
                continue
            pod = self._pod_of(entry)
            entries.append((cid, pod, entry.container, entry.placement))
        if not entries:
            return
        try:
            decision = self.policy.restore(entries)
        except Exception:  # noqa: BLE001 - never crash-loop on the state
            log.exception(
                "policy %s cannot restore the saved placements; placing all %d containers again",
                self.name,
                len(entries),
            )
            # The policy may be half-restored: start from a fresh one of the same kind.
            self.policy = self._fresh_policy()
            for cid, _, container, _ in entries:
                self.state.set_placement(cid, None)
                to_place.append(cid)
                report.replaced.append(f"{container.key} ({cid})")
            return
        report.restored.extend(f"{c.key} ({cid})" for cid, _, c, _ in entries)
        self._apply_updates(decision.updates)

    def _fresh_policy(self) -> Policy:
        """A new instance of the running policy (same machine, reserved CPUs, options)."""
        inner = self.policy._policy if isinstance(self.policy, _Counted) else self.policy
        fresh = type(inner)(inner.topology, inner.reserved, inner.options)
        return _Counted(fresh, self.metrics) if self.metrics is not None else fresh

    def _place(self, cids: List[str], report: ResyncReport) -> None:
        for cid in cids:
            entry = self.state.containers.get(cid)
            if entry is None:
                continue
            pod = self._pod_of(entry)
            try:
                decision = self.policy.allocate(cid, pod, entry.container)
            except Exception as exc:  # noqa: BLE001 - it keeps running where it is
                log.error(
                    "policy %s cannot place %s (%s): %s; it runs unplaced",
                    self.name,
                    entry.container.key,
                    _short(cid),
                    exc if isinstance(exc, errors.Error) else _describe(exc),
                )
                report.unplaced.append(f"{entry.container.key} ({cid})")
                continue
            self._apply_updates(decision.updates, skip=cid)
            if decision.placement is not None:
                self.state.set_placement(cid, decision.placement)
                self._dirty.add(cid)
                log.info(
                    "placed %s (%s): %s",
                    entry.container.key,
                    _short(cid),
                    _placement_text(decision.placement),
                )

    def _drop_vanished(self, view: _RuntimeView, report: ResyncReport) -> None:
        """Forget what the runtime no longer has (before `_restore`: the policy does not
        know these containers yet, nothing to release)."""
        for pod_id in [p for p in self.state.pods if p not in view.sandboxes]:
            for cid, entry in self.state.drop_pod(pod_id).items():
                report.dropped.append(f"{entry.container.key} ({cid})")
            log.info("pod %s is gone from the runtime; forgotten", pod_id)
        for cid, entry in list(self.state.containers.items()):
            listed = view.containers.get(cid)
            if listed is None:
                self.state.drop_container(cid)
                report.dropped.append(f"{entry.container.key} ({cid})")
                log.info(
                    "%s (%s) is gone from the runtime; forgotten", entry.container.key, _short(cid)
                )
            elif listed.state not in _LIVE_STATES and not entry.stopped:
                self.state.update(cid, placement=None, stopped=True)
                log.info("%s (%s) has exited; its CPUs are free", entry.container.key, _short(cid))

    def _adopt(self, view: _RuntimeView, report: ResyncReport, to_place: List[str]) -> None:
        for cid, listed in view.containers.items():
            if cid in self.state.containers or listed.state not in _LIVE_STATES:
                continue
            described = view.described.get(cid)
            if described is None:
                continue
            pod, name, resources, annotations = described
            if pod.id not in self.state.pods:
                self.state.put_pod(pod)
            pod = self.state.pods[pod.id]
            container = podspec.make_container(cid, name, pod, resources, annotations)
            self.state.put_container(ContainerEntry(container, resources))
            to_place.append(cid)
            report.adopted.append(f"{container.key} ({cid})")
            log.info(
                "adopting %s (%s), running before cri-resmgr knew it", container.key, _short(cid)
            )

    def _runtime_view(self) -> _RuntimeView:
        """What the runtime has: sandboxes, containers, and details of live containers."""
        assert self.runtime is not None
        stub = self.runtime.runtime
        timeout = self.options.runtime_timeout
        try:
            sandboxes = stub.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=timeout).items
            containers = stub.ListContainers(
                api_pb2.ListContainersRequest(), timeout=timeout
            ).containers
        except Exception as exc:  # noqa: BLE001
            raise errors.RuntimeUnavailable(
                f"cannot list the runtime's pods and containers for the resync: {_describe(exc)}"
            ) from exc
        view = _RuntimeView(
            sandboxes={s.id: s for s in sandboxes}, containers={c.id: c for c in containers}
        )
        pods: Dict[str, Optional[Pod]] = {}
        for cid, listed in view.containers.items():
            if listed.state not in _LIVE_STATES:
                continue
            try:
                status = stub.ContainerStatus(
                    api_pb2.ContainerStatusRequest(container_id=cid, verbose=True), timeout=timeout
                )
            except Exception as exc:  # noqa: BLE001 - it may be gone by now
                log.warning("resync: no status of container %s: %s", _short(cid), _describe(exc))
                continue
            resources, cpus = _status_resources(status)
            if cpus is not None:
                view.cpus[cid] = cpus
            pod_id = listed.pod_sandbox_id
            if pod_id not in pods:
                with self._lock:
                    known = self.state.pods.get(pod_id)
                pods[pod_id] = known or self._describe_sandbox(pod_id, view)
            pod = pods[pod_id]
            if pod is not None:
                name = status.status.metadata.name or listed.metadata.name
                view.described[cid] = (pod, name, resources, dict(status.status.annotations))
        return view

    def _describe_sandbox(self, pod_id: str, view: _RuntimeView) -> Optional[Pod]:
        assert self.runtime is not None
        listed = view.sandboxes.get(pod_id)
        if listed is None:
            return None
        cgroup_parent = ""
        resources = overhead = None
        try:
            status = self.runtime.runtime.PodSandboxStatus(
                api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True),
                timeout=self.options.runtime_timeout,
            )
            linux = _info_json(status.info).get("config", {}).get("linux", {})
            cgroup_parent = str(linux.get("cgroup_parent", ""))
            if isinstance(linux.get("resources"), dict):
                resources = LinuxResources.from_json(linux["resources"])
            if isinstance(linux.get("overhead"), dict):
                overhead = LinuxResources.from_json(linux["overhead"])
        except Exception as exc:  # noqa: BLE001 - the listing is enough to go on
            log.debug("resync: no verbose status of sandbox %s: %s", pod_id, _describe(exc))
        meta = listed.metadata
        return podspec.make_pod(
            pod_id,
            meta.uid,
            meta.name,
            meta.namespace,
            cgroup_parent,
            annotations=dict(listed.annotations),
            labels=dict(listed.labels),
            resources=resources,
            overhead=overhead,
        )

    # -- status and shutdown

    def status(self) -> Dict[str, Any]:
        """A snapshot for ``cri-resmgr status``: pods, containers, placements, pools."""
        with self._lock:
            containers = []
            for cid, e in sorted(self.state.containers.items(), key=lambda kv: kv[1].container.key):
                c = e.container
                containers.append(
                    {
                        "id": cid,
                        "container": c.key,
                        "pod_id": c.pod_id,
                        "qos": c.qos,
                        "cpu_request": c.cpu_request,
                        "cpu_limit": c.cpu_limit,
                        "memory_limit": c.memory_limit,
                        "stopped": e.stopped,
                        "placement": None if e.placement is None else e.placement.to_json(),
                        "update_pending": cid in self._dirty,
                    }
                )
            try:
                pools = {name: str(cpus) for name, cpus in self.policy.pools().items()}
            except Exception:  # noqa: BLE001 - status must always answer
                log.exception("policy %s failed to list its pools", self.name)
                pools = {}
            return {
                "policy": self.name,
                "on_error": self.options.on_error,
                "reserved": str(self.policy.reserved),
                "pods": [
                    {
                        "id": pid,
                        "pod": p.key,
                        "uid": p.uid,
                        "qos": p.qos,
                        "cgroup_parent": p.cgroup_parent,
                    }
                    for pid, p in sorted(self.state.pods.items(), key=lambda kv: kv[1].key)
                ],
                "containers": containers,
                "creating": len(self._inflight),
                "pools": pools,
                "state": {
                    "path": self.state.path,
                    "origin": self.state.origin,
                    "last_save": self.state.last_save,
                    "last_save_seconds": self.state.last_save_seconds,
                },
            }

    def close(self) -> None:
        """Final save (the runtime client and the state belong to the caller)."""
        if not self._closed:
            self._closed = True
            self._save()
            self._pushers.shutdown(wait=False)


class _Counted:
    """A policy whose decisions are counted in the metrics (ok / failed per operation)."""

    _COUNTED = ("allocate", "release", "update", "restore", "reconfigure")

    def __init__(self, policy: Policy, metrics: Any) -> None:
        self._policy = policy
        self._metrics = metrics
        self._name = policy.NAME or type(policy).__name__

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._policy, name)
        if name not in self._COUNTED:
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            try:
                result = attr(*args, **kwargs)
            except Exception:
                self._metrics.decision(self._name, name, "failed")
                raise
            self._metrics.decision(self._name, name, "ok")
            return result

        return counted


@dataclass
class _RuntimeView:
    sandboxes: Dict[str, Any]
    containers: Dict[str, Any]
    cpus: Dict[str, str] = field(default_factory=dict)  # container id -> cpuset the runtime has
    # container id -> (pod, name, resources, annotations) of live containers
    described: Dict[str, Tuple[Pod, str, LinuxResources, Dict[str, str]]] = field(
        default_factory=dict
    )


def _cpuset(text: Optional[str]) -> Optional[CPUSet]:
    if text is None:
        return None
    try:
        return CPUSet.parse(text)
    except ValueError:
        return None


def _info_json(info: Mapping[str, str]) -> Dict[str, Any]:
    try:
        data = json.loads(info.get("info", "{}"))
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _status_resources(
    status: api_pb2.ContainerStatusResponse,
) -> Tuple[LinuxResources, Optional[str]]:
    """A live container's resources and the cpuset the runtime applies (None: unknown).

    CRI's ContainerStatus.resources first; else containerd's verbose info (the create
    config, then the OCI spec).
    """
    st = status.status
    if st.HasField("resources") and st.resources.HasField("linux"):
        res = _plain(st.resources.linux)
        return res, res.cpuset_cpus or None
    info = _info_json(status.info)
    spec_cpu = info.get("runtimeSpec", {}).get("linux", {}).get("resources", {}).get("cpu", {})
    cpus = spec_cpu.get("cpus") if isinstance(spec_cpu, dict) else None
    config_res = info.get("config", {}).get("linux", {}).get("resources")
    if isinstance(config_res, dict):
        return LinuxResources.from_json(config_res), cpus
    if isinstance(spec_cpu, dict) and spec_cpu:
        memory = info.get("runtimeSpec", {}).get("linux", {}).get("resources", {}).get("memory", {})
        return (
            LinuxResources(
                cpu_period=int(spec_cpu.get("period") or 0),
                cpu_quota=int(spec_cpu.get("quota") or 0),
                cpu_shares=int(spec_cpu.get("shares") or 0),
                memory_limit_in_bytes=int((memory or {}).get("limit") or 0),
                cpuset_cpus=str(spec_cpu.get("cpus") or ""),
                cpuset_mems=str(spec_cpu.get("mems") or ""),
            ),
            cpus,
        )
    return LinuxResources(), cpus
