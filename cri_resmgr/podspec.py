"""What the policy knows about a pod or container, derived the way kubelet encodes it.

CRI carries no pod spec. Kubelet turns a container's requests and limits into a few
numbers of `LinuxContainerResources` and the pod's QoS class into the cgroup parent;
this module owns both directions of that encoding, in one place:

* **kubelet's direction** (requests/limits -> CRI fields), used by `simulate` and the
  tests to build requests exactly as kubelet would: `milli_cpu_to_shares`,
  `milli_cpu_to_quota`, `oom_score_adj`, `linux_resources` (kubelet's
  ``calculateLinuxResources``), `container_resources` (``generateLinuxContainerResources``),
  `sandbox_resources` / `overhead_resources` (the pod-level ``resources`` and
  ``overhead`` of the sandbox config), `pod_qos` (``GetPodQOS``) and `cgroup_parent`
  (cgroupfs ``/kubepods/burstable/pod<uid>`` and systemd
  ``/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice``).
* **the estimating direction** (CRI fields -> what the policy sees), used by `hooks`:
  `parse_cgroup_parent` (QoS class and pod uid), `shares_to_milli_cpu`,
  `quota_to_milli_cpu`, `estimate`, and the record builders `make_pod` and
  `make_container` that return `policy.base.Pod` / `Container`.

No protobuf here: plain ints and strings in (`LinuxResources` mirrors the CRI message's
CPU and memory fields), `policy.base` records out. `hooks.py` converts protobuf.

Units: CPU amounts are milli-CPUs (1000 = one CPU), memory is bytes, CFS period and
quota are microseconds, shares are the cgroup v1 ``cpu.shares`` weight kubelet writes
(the runtime converts it to ``cpu.weight`` on cgroup v2).

Rounding of the estimates (kubelet writes `floor(m * 1024 / 1000)` shares, clamped to
2..262144, and `max(1000, floor(m * period / 1000))` µs of quota):

* shares -> milli-CPUs is `ceil(shares * 1000 / 1024)`. Every milli-CPU amount kubelet
  maps to more than 2 shares comes back exactly (1000/1024 < 1, so each shares value
  has at most one preimage and the ceiling is it). Lossy at the ends: **2 shares read
  as 0** (kubelet writes 2 for no request and for requests of 1m and 2m, so a
  BestEffort container and a 2m request look the same), and 262144 shares (the kernel
  maximum) read as 256000 (requests above 256 CPUs are clamped by kubelet), except
  for Guaranteed containers with a CPU quota: their request equals the limit, which
  the quota gives exactly.
* quota/period -> milli-CPUs is `ceil(quota * 1000 / period)`: exact for every limit
  whose quota is above the 1000 µs minimum (with the default 100000 µs period: every
  limit of at least 10m; other periods of at least 1000 µs likewise); smaller limits
  are written as the minimum and read as 10m (default period).
  Quota 0 (no limit, or kubelet's ``--cpu-cfs-quota=false``) and -1 (the
  ``DisableCPUQuotaWithExclusiveCPUs`` gate) read as no limit, except for Guaranteed
  containers, whose limit equals their request by definition.
* memory limits are copied; the memory *request* is not in CRI (only folded into a
  Burstable container's ``oom_score_adj`` together with the node's memory size), so
  the records do not carry it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from fractions import Fraction
from typing import Any, Dict, Iterable, Mapping, NamedTuple, Optional, Sequence

from cri_resmgr.policy.base import BESTEFFORT, BURSTABLE, GUARANTEED, Container, Pod

__all__ = [
    "CGROUPFS",
    "CgroupParent",
    "Estimate",
    "LinuxResources",
    "MAX_SHARES",
    "MIN_QUOTA",
    "MIN_SHARES",
    "QOS_CLASSES",
    "QUOTA_PERIOD",
    "Requirements",
    "SYSTEMD",
    "cgroup_parent",
    "container_resources",
    "estimate",
    "linux_resources",
    "make_container",
    "make_pod",
    "milli_cpu_to_quota",
    "milli_cpu_to_shares",
    "oom_score_adj",
    "overhead_resources",
    "parse_cgroup_parent",
    "parse_cpu",
    "parse_memory",
    "parse_quantity",
    "pod_qos",
    "qos_from_resources",
    "quota_to_milli_cpu",
    "sandbox_resources",
    "shares_to_milli_cpu",
]

QOS_CLASSES = (GUARANTEED, BURSTABLE, BESTEFFORT)

# kubelet's constants (pkg/kubelet/cm/helpers_linux.go, pkg/kubelet/qos/policy.go)
MIN_SHARES = 2  # kernel minimum of cpu.shares; kubelet's value for "no request"
MAX_SHARES = 262144  # kernel maximum of cpu.shares
SHARES_PER_CPU = 1024
MILLI_PER_CPU = 1000
QUOTA_PERIOD = 100000  # µs, kubelet's default CFS period
MIN_QUOTA = 1000  # µs, the kernel's minimum quota
GUARANTEED_OOM_SCORE_ADJ = -997
BESTEFFORT_OOM_SCORE_ADJ = 1000

# cgroup drivers
CGROUPFS = "cgroupfs"
SYSTEMD = "systemd"

# kubelet's label keys on sandboxes and containers
LABEL_POD_NAME = "io.kubernetes.pod.name"
LABEL_POD_NAMESPACE = "io.kubernetes.pod.namespace"
LABEL_POD_UID = "io.kubernetes.pod.uid"
LABEL_CONTAINER_NAME = "io.kubernetes.container.name"


# --- plain mirrors of the CRI fields --------------------------------------------


@dataclass(frozen=True)
class LinuxResources:
    """The CPU and memory fields of CRI `LinuxContainerResources`, as plain values.

    0 (or "") means unset, as in the CRI message. `cpu_quota` -1 means unlimited.
    """

    cpu_period: int = 0  # µs
    cpu_quota: int = 0  # µs per period
    cpu_shares: int = 0  # cpu.shares weight
    memory_limit_in_bytes: int = 0  # bytes
    oom_score_adj: int = 0
    cpuset_cpus: str = ""  # kernel list syntax, "0-3,8"
    cpuset_mems: str = ""  # NUMA node ids, list syntax

    def to_json(self) -> Dict[str, Any]:
        """The set fields only (unset ones are left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LinuxResources:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def replace(self, **changes: Any) -> LinuxResources:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return LinuxResources(**values)


@dataclass(frozen=True)
class Requirements:
    """A container's (or a pod's) resources as written in the pod spec.

    Milli-CPUs and bytes; None = not specified (kubelet distinguishes a missing CPU
    request from a zero one).
    """

    cpu_request: Optional[int] = None
    cpu_limit: Optional[int] = None
    memory_request: Optional[int] = None
    memory_limit: Optional[int] = None

    def defaulted(self) -> Requirements:
        """With the API server's defaulting applied: a missing request is the limit."""
        return Requirements(
            cpu_request=self.cpu_request if self.cpu_request is not None else self.cpu_limit,
            cpu_limit=self.cpu_limit,
            memory_request=(
                self.memory_request if self.memory_request is not None else self.memory_limit
            ),
            memory_limit=self.memory_limit,
        )

    @property
    def empty(self) -> bool:
        """No CPU or memory request or limit at all (a BestEffort container)."""
        return not any((self.cpu_request, self.cpu_limit, self.memory_request, self.memory_limit))


# --- kubelet's direction ---------------------------------------------------------


def milli_cpu_to_shares(milli: int) -> int:
    """cpu.shares kubelet writes for a CPU request of `milli` milli-CPUs (MilliCPUToShares)."""
    if milli <= 0:
        return MIN_SHARES
    shares = milli * SHARES_PER_CPU // MILLI_PER_CPU
    return min(max(shares, MIN_SHARES), MAX_SHARES)


def milli_cpu_to_quota(milli: int, period: int = QUOTA_PERIOD) -> int:
    """CFS quota (µs per `period` µs) kubelet writes for a CPU limit; 0 = no limit."""
    if milli <= 0:
        return 0
    return max(milli * period // MILLI_PER_CPU, MIN_QUOTA)


def oom_score_adj(qos: str, memory_request: int, memory_capacity: int) -> int:
    """oom_score_adj kubelet gives a container (GetContainerOOMScoreAdjust).

    `memory_request` and `memory_capacity` (the node's memory) in bytes. Node-critical
    pods (which kubelet also gives -997) are not modelled.
    """
    if qos == GUARANTEED:
        return GUARANTEED_OOM_SCORE_ADJ
    if qos == BESTEFFORT:
        return BESTEFFORT_OOM_SCORE_ADJ
    if memory_capacity <= 0:
        raise ValueError(f"memory capacity must be positive, not {memory_capacity}")
    adj = 1000 - (1000 * memory_request) // memory_capacity
    if adj < 1000 + GUARANTEED_OOM_SCORE_ADJ:
        return 1000 + GUARANTEED_OOM_SCORE_ADJ
    if adj == BESTEFFORT_OOM_SCORE_ADJ:
        return adj - 1
    return adj


def linux_resources(
    cpu_request: Optional[int],
    cpu_limit: Optional[int],
    memory_limit: Optional[int],
    *,
    cfs_quota: bool = True,
    period: int = QUOTA_PERIOD,
    disable_cpu_quota: bool = False,
) -> LinuxResources:
    """kubelet's calculateLinuxResources: shares, quota, period and memory limit.

    A missing or zero CPU request takes the limit's shares. With `cfs_quota` (kubelet's
    ``--cpu-cfs-quota``, default on) the period is always set and the quota is 0
    without a limit; `disable_cpu_quota` writes quota -1 (exclusive CPUs under the
    DisableCPUQuotaWithExclusiveCPUs gate).
    """
    if not cpu_request and cpu_limit:  # kubelet: cpuRequest.IsZero() && !cpuLimit.IsZero()
        shares = milli_cpu_to_shares(cpu_limit)
    else:
        shares = milli_cpu_to_shares(cpu_request or 0)
    quota = 0
    cpu_period = 0
    if cfs_quota:
        cpu_period = period
        quota = -1 if disable_cpu_quota else milli_cpu_to_quota(cpu_limit or 0, period)
    return LinuxResources(
        cpu_period=cpu_period,
        cpu_quota=quota,
        cpu_shares=shares,
        memory_limit_in_bytes=memory_limit or 0,
    )


def pod_qos(containers: Iterable[Requirements]) -> str:
    """The QoS class of a pod whose containers (init containers too) ask for these (GetPodQOS)."""
    requests: Dict[str, int] = {}
    limits: Dict[str, int] = {}
    guaranteed = True
    for container in containers:
        spec = container.defaulted()
        for name, value in (("cpu", spec.cpu_request), ("memory", spec.memory_request)):
            if value:
                requests[name] = requests.get(name, 0) + value
        found = set()
        for name, value in (("cpu", spec.cpu_limit), ("memory", spec.memory_limit)):
            if value:
                limits[name] = limits.get(name, 0) + value
                found.add(name)
        if found != {"cpu", "memory"}:
            guaranteed = False
    if not requests and not limits:
        return BESTEFFORT
    if guaranteed and requests == limits:
        return GUARANTEED
    return BURSTABLE


def container_resources(
    spec: Requirements,
    qos: str,
    memory_capacity: int,
    *,
    cfs_quota: bool = True,
    period: int = QUOTA_PERIOD,
    disable_cpu_quota: bool = False,
) -> LinuxResources:
    """The LinuxContainerResources kubelet sends in CreateContainer for a container.

    `qos` is the pod's class (`pod_qos`), `memory_capacity` the node's memory in bytes
    (for a Burstable container's oom_score_adj). Hugepage limits, swap and the
    MemoryQoS unified settings are left out: policies do not read them.
    """
    res = linux_resources(
        spec.cpu_request,
        spec.cpu_limit,
        spec.memory_limit,
        cfs_quota=cfs_quota,
        period=period,
        disable_cpu_quota=disable_cpu_quota,
    )
    memory_request = spec.defaulted().memory_request or 0
    return res.replace(oom_score_adj=oom_score_adj(qos, memory_request, memory_capacity))


def sandbox_resources(
    containers: Sequence[Requirements], init_containers: Sequence[Requirements] = ()
) -> LinuxResources:
    """The pod-level ``resources`` kubelet puts into the sandbox config.

    kubelet's calculateSandboxResources: requests and limits summed over the containers
    (a container without a limit adds nothing), the largest init container's when that
    is more, overhead excluded; no oom_score_adj.
    """

    def total(attr: str, specs: Sequence[Requirements]) -> Optional[int]:
        values = [getattr(s.defaulted(), attr) for s in specs]
        present = [v for v in values if v is not None]
        return sum(present) if present else None

    def pod_value(attr: str) -> Optional[int]:
        regular = total(attr, containers)
        init = [getattr(s.defaulted(), attr) for s in init_containers]
        init_max = max((v for v in init if v is not None), default=None)
        if regular is None:
            return init_max
        if init_max is None:
            return regular
        return max(regular, init_max)

    return linux_resources(
        pod_value("cpu_request"), pod_value("cpu_limit") or 0, pod_value("memory_limit")
    )


def overhead_resources(cpu: int, memory: int) -> LinuxResources:
    """The ``overhead`` kubelet puts into the sandbox config for a RuntimeClass overhead.

    kubelet treats overhead as Guaranteed: request = limit = `cpu` milli-CPUs, memory
    limit `memory` bytes. No overhead: all fields 0.
    """
    if not cpu and not memory:
        return LinuxResources()
    return linux_resources(cpu, cpu, memory)


def cgroup_parent(uid: str, qos: str, driver: str = CGROUPFS, cgroup_root: str = "/") -> str:
    """The pod cgroup kubelet passes as the sandbox's ``cgroup_parent``.

    cgroupfs: ``/kubepods/burstable/pod<uid>``, ``/kubepods/besteffort/pod<uid>``,
    ``/kubepods/pod<uid>`` (Guaranteed). systemd: the same names joined with ``-``
    (``-`` inside a name escaped as ``_``) and expanded into slices,
    ``/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice``.
    `cgroup_root` is kubelet's ``--cgroup-root`` (default ``/``).
    """
    if qos not in QOS_CLASSES:
        raise ValueError(f"unknown QoS class {qos!r} (allowed: {', '.join(QOS_CLASSES)})")
    names = [n for n in cgroup_root.strip("/").split("/") if n]
    names.append("kubepods")
    if qos != GUARANTEED:
        names.append(qos)
    names.append("pod" + uid)
    if driver == CGROUPFS:
        return "/" + "/".join(names)
    if driver != SYSTEMD:
        raise ValueError(f"unknown cgroup driver {driver!r} (allowed: cgroupfs, systemd)")
    escaped = [n.replace("-", "_") for n in names]
    slices = ["-".join(escaped[: i + 1]) + ".slice" for i in range(len(escaped))]
    return "/" + "/".join(slices)


# --- the estimating direction ----------------------------------------------------


class CgroupParent(NamedTuple):
    """What a kubelet cgroup parent says: QoS class, pod uid and cgroup driver."""

    qos: str
    uid: str
    driver: str


def parse_cgroup_parent(parent: str) -> Optional[CgroupParent]:
    """Read the QoS class and pod uid from a kubelet pod cgroup; None if it is not one.

    Both drivers and any ``--cgroup-root`` are understood; only the last component
    and its parent decide (``.../kubepods/burstable/pod<uid>``,
    ``...kubepods-besteffort-pod<uid_>.slice``; directly under ``kubepods`` is
    Guaranteed). Also the bare slice name some tools pass.
    """
    base = parent.rstrip("/").rsplit("/", 1)[-1]
    if base.endswith(".slice"):
        parts = base[: -len(".slice")].split("-")
        if len(parts) < 2 or not parts[-1].startswith("pod") or len(parts[-1]) <= 3:
            return None
        uid = parts[-1][3:].replace("_", "-")
        above = parts[:-1]
        driver = SYSTEMD
    else:
        if not base.startswith("pod") or len(base) <= 3:
            return None
        uid = base[3:]
        above = [p for p in parent.rstrip("/").split("/")[:-1] if p]
        driver = CGROUPFS
    if len(above) >= 2 and above[-1] in (BURSTABLE, BESTEFFORT) and above[-2] == "kubepods":
        return CgroupParent(above[-1], uid, driver)
    if above and above[-1] == "kubepods":
        return CgroupParent(GUARANTEED, uid, driver)
    return None


def shares_to_milli_cpu(shares: int) -> int:
    """Estimated CPU request (milli-CPUs) from cpu.shares; 2 (kubelet's minimum) -> 0."""
    if shares <= MIN_SHARES:
        return 0
    return -(-shares * MILLI_PER_CPU // SHARES_PER_CPU)  # ceiling


def quota_to_milli_cpu(quota: int, period: int) -> int:
    """Estimated CPU limit (milli-CPUs) from CFS quota/period (µs); 0 = no limit."""
    if quota <= 0 or period <= 0:
        return 0
    return -(-quota * MILLI_PER_CPU // period)  # ceiling


class Estimate(NamedTuple):
    """A container's resources as estimated from CRI fields."""

    cpu_request: int  # milli-CPUs
    cpu_limit: int  # milli-CPUs, 0 = no limit
    memory_limit: int  # bytes, 0 = no limit


def estimate(resources: LinuxResources, qos: str) -> Estimate:
    """CPU request/limit and memory limit from the CRI fields (see the module docstring)."""
    request = shares_to_milli_cpu(resources.cpu_shares)
    limit = quota_to_milli_cpu(resources.cpu_quota, resources.cpu_period)
    if qos == GUARANTEED:
        if limit == 0:
            limit = request  # quota disabled (0 or -1): a Guaranteed limit equals its request
        elif resources.cpu_shares >= MAX_SHARES and limit > request:
            request = limit  # shares clamped at 256 CPUs; the quota is exact at any size
    return Estimate(request, limit, max(resources.memory_limit_in_bytes, 0))


def qos_from_resources(resources: LinuxResources) -> str:
    """A best guess of the QoS class when the cgroup parent does not say it.

    Guaranteed: a CPU limit equal to the request and a memory limit (the memory
    request is not in CRI, so it is assumed to equal the limit). BestEffort: no
    request and no limits. Burstable otherwise.
    """
    est = estimate(resources, BURSTABLE)
    if est.cpu_limit > 0 and est.cpu_limit == est.cpu_request and est.memory_limit > 0:
        return GUARANTEED
    if est.cpu_request == 0 and est.cpu_limit == 0 and est.memory_limit == 0:
        return BESTEFFORT
    return BURSTABLE


def make_pod(
    id: str,
    uid: str,
    name: str,
    namespace: str,
    cgroup_parent: str = "",
    *,
    annotations: Optional[Mapping[str, str]] = None,
    labels: Optional[Mapping[str, str]] = None,
    resources: Optional[LinuxResources] = None,
    overhead: Optional[LinuxResources] = None,
) -> Pod:
    """The policy's record of a pod from its sandbox config.

    QoS from the cgroup parent; without a kubelet-shaped one, from the pod-level
    `resources` (`qos_from_resources`), else BestEffort. Pod-level CPU request/limit
    and memory limit come from `resources` when kubelet sent them, the overhead from
    `overhead` (CPU from its shares, memory from its limit).
    """
    parsed = parse_cgroup_parent(cgroup_parent)
    if parsed is not None:
        qos = parsed.qos
    elif resources is not None and resources != LinuxResources():
        qos = qos_from_resources(resources)
    else:
        qos = BESTEFFORT
    cpu_request = cpu_limit = memory_limit = 0
    if resources is not None:
        cpu_request, cpu_limit, memory_limit = estimate(resources, qos)
    overhead_cpu = overhead_memory = 0
    if overhead is not None:
        overhead_cpu = shares_to_milli_cpu(overhead.cpu_shares) or quota_to_milli_cpu(
            overhead.cpu_quota, overhead.cpu_period
        )
        overhead_memory = max(overhead.memory_limit_in_bytes, 0)
    return Pod(
        id=id,
        uid=uid or (parsed.uid if parsed else ""),
        name=name,
        namespace=namespace,
        qos=qos,
        cgroup_parent=cgroup_parent,
        annotations=dict(annotations or {}),
        labels=dict(labels or {}),
        cpu_request=cpu_request,
        cpu_limit=cpu_limit,
        memory_limit=memory_limit,
        overhead_cpu=overhead_cpu,
        overhead_memory=overhead_memory,
    )


def make_container(
    id: str,
    name: str,
    pod: Pod,
    resources: LinuxResources,
    annotations: Optional[Mapping[str, str]] = None,
) -> Container:
    """The policy's record of a container from CreateContainer/UpdateContainerResources.

    Its QoS class is the pod's when the pod's cgroup parent says it (QoS is a pod
    property), else `qos_from_resources` of the container's own resources.
    """
    parsed = parse_cgroup_parent(pod.cgroup_parent)
    qos = parsed.qos if parsed is not None else qos_from_resources(resources)
    cpu_request, cpu_limit, memory_limit = estimate(resources, qos)
    return Container(
        id=id,
        pod_id=pod.id,
        name=name,
        pod_name=pod.name,
        namespace=pod.namespace,
        qos=qos,
        cpu_request=cpu_request,
        cpu_limit=cpu_limit,
        memory_limit=memory_limit,
        annotations=dict(annotations or {}),
        pod_annotations=dict(pod.annotations),
        cpuset_cpus=resources.cpuset_cpus,
        cpuset_mems=resources.cpuset_mems,
    )


# --- Kubernetes quantities ---------------------------------------------------------

_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))([a-zA-Z]*|[eE][+-]?[0-9]+)$")
_BINARY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60}
_DECIMAL = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}
_SUFFIXES = "n, u, m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei or an exponent such as e3"


#: Largest decimal exponent a quantity may have (far beyond any int64 value).
_MAX_EXPONENT = 400


def parse_quantity(text: Any) -> Fraction:
    """A Kubernetes quantity ("2", "500m", "1.5", "1Gi", "128974848", "129e6") exactly.

    Numbers (int/float, as YAML gives them) are accepted too. Raises ValueError that
    says what is allowed.
    """
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a quantity")
    if isinstance(text, int):
        value = Fraction(text)
    elif isinstance(text, float):
        if not math.isfinite(text):
            raise ValueError(f"{text!r} is not a quantity")
        value = Fraction(str(text))
    elif isinstance(text, str):
        match = _QUANTITY.match(text.strip())
        if not match:
            raise ValueError(
                f"{text!r} is not a quantity (a number with an optional suffix: {_SUFFIXES})"
            )
        number, suffix = match.groups()
        value = Fraction(number)
        if suffix in _BINARY:
            value *= _BINARY[suffix]
        elif suffix in _DECIMAL:
            value *= _DECIMAL[suffix]
        elif suffix[:1] in ("e", "E") and len(suffix) > 1:
            exponent = int(suffix[1:])
            if abs(exponent) > _MAX_EXPONENT:  # 10**1e7 takes seconds to compute exactly
                raise ValueError(
                    f"{text!r}: exponent {exponent} is out of range "
                    f"(-{_MAX_EXPONENT} to {_MAX_EXPONENT})"
                )
            value *= Fraction(10) ** exponent
        else:
            raise ValueError(f"{text!r}: unknown suffix {suffix!r} (allowed: {_SUFFIXES})")
    else:
        raise ValueError(f"{text!r} is not a quantity")
    if value < 0:
        raise ValueError(f"{text!r} is negative")
    return value


def parse_cpu(text: Any) -> int:
    """A CPU quantity in milli-CPUs, rounded up as Kubernetes' MilliValue does."""
    return math.ceil(parse_quantity(text) * MILLI_PER_CPU)


def parse_memory(text: Any) -> int:
    """A memory quantity in bytes, rounded up as Kubernetes' Value does."""
    return math.ceil(parse_quantity(text))
