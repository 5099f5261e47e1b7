"""The interface between the CRI hooks and resource policies, and the records they share.

Ownership: the plain records a policy sees (`Pod`, `Container`), what it answers
(`Placement`, `Decision`) and the `Policy` base class. Nothing here knows protobuf or
gRPC: `hooks.py` turns CRI messages into these records (with `podspec.py`), calls the
policy under one lock, and turns the answer back into CRI fields.

Units: CPU amounts are milli-CPUs (1000 = one CPU), memory is bytes, CPU sets are
`CPUSet`s (kernel list syntax when printed), memory nodes are `CPUSet`s of NUMA node ids.

Keys. A container is known to the policy by a string key chosen by the caller: the
runtime's container id once it exists, a provisional key while CreateContainer is in
flight (`Policy.rename` moves it). A policy never invents keys.

Options. A policy gets ``Config.policy_options(NAME)``: values `config` has parsed
and checked already. `with_defaults` fills in what a caller left out (tests, tools)
from the same key table, so a policy checks only what depends on the machine, in
`Policy.validate`, and reports it with `Problems` (located by the `config.Config`).
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    ClassVar,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Mapping,
    Optional,
    Tuple,
)

from cri_resmgr import config as cfg
from cri_resmgr.errors import ConfigError, PolicyError, Problem
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.topology import Topology

#: what `Policy.restore` gets: (key, pod, container, persisted placement)
Entry = Tuple[str, "Pod", "Container", "Placement"]

# QoS classes, as kubelet names them (lower case).
GUARANTEED = "guaranteed"
BURSTABLE = "burstable"
BESTEFFORT = "besteffort"

# CPU classes of a placement.
EXCLUSIVE = "exclusive"  # CPUs no other container uses
SHARED = "shared"  # the shared pool (or a pool's shared part)
RESERVED = "reserved"  # the reserved CPUs (kube-system, reserved namespaces)
ISOLATED = "isolated"  # kernel-isolated CPUs (isolcpus)
PRESERVED = "preserved"  # left as the container asked (cpu.preserve, on-error=pass, ...)
CPU_CLASSES = (EXCLUSIVE, SHARED, RESERVED, ISOLATED, PRESERVED)


def with_defaults(
    section: str, options: Mapping[str, Any], extra: Iterable[str] = ()
) -> Dict[str, Any]:
    """The options of ``[section]`` with every key of the section that ``options``
    lacks at its default, both from `config.KEYS` (``extra``: keys that are no
    configuration keys, such as balloons' ``types``).

    Values are `config`'s already; one given as text (as a test may) is parsed by
    the key's type, as in a file. A key the section does not have, or text that does
    not parse, is a `PolicyError`: a `config.Config` never gives either.
    """
    keys = {k.name: k for k in cfg.keys_of(section)}
    unknown = sorted(set(options) - set(keys) - set(extra))
    if unknown:
        raise PolicyError(
            f"[{section}] has no option {', '.join(unknown)} (known: {', '.join([*keys, *extra])})"
        )
    values: Dict[str, Any] = {name: key.type.parse(key.default) for name, key in keys.items()}
    for name, value in options.items():
        key = keys.get(name)
        if key is None or not isinstance(value, str):
            values[name] = value
            continue
        try:
            values[name] = key.type.parse(value)
        except ValueError as exc:
            raise PolicyError(
                f"[{section}] {name} = {value!r}: {exc} (allowed: {key.type.describe_allowed()})"
            ) from None
    return values


#: (section, key) -> (file, line) of a setting, for problems
Locate = Callable[[str, str], Tuple[str, Optional[int]]]


def locator(config: Any) -> Optional[Locate]:
    """`Locate` from a `config.Config` (where its settings came from: ``FILE``, ``flag
    -NAME`` or ``default``); None without one."""
    if config is None:
        return None

    def locate(section: str, key: str) -> Tuple[str, Optional[int]]:
        try:
            setting = config.setting(section, key)
        except KeyError:
            return "", None
        return setting.file or setting.source, setting.line

    return locate


def _raw(value: Any) -> str:
    """A value as configuration text, for problems."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ", ".join(str(v) for v in value)
    return str(value)


class Problems:
    """Collects the `errors.Problem`s of a `Policy.validate`, located by the
    `config.Config` when there is one; `check` raises them as one `ConfigError`."""

    def __init__(self, config: Any = None, locate: Optional[Locate] = None) -> None:
        self.locate = locate if locate is not None else locator(config)
        self.items: List[Problem] = []

    def add(
        self,
        section: str,
        key: Optional[str],
        value: Any,
        message: str,
        allowed: str = "",
    ) -> None:
        file, line = "", None
        if self.locate is not None and key is not None:
            file, line = self.locate(section, key)
        self.items.append(
            Problem(
                file, line, section, key, None if value is None else _raw(value), message, allowed
            )
        )

    def check(self) -> None:
        """Raise `ConfigError` with every problem added, if any."""
        if self.items:
            raise ConfigError(self.items)


@dataclass(frozen=True)
class Pod:
    """A pod sandbox as the policy sees it (from RunPodSandbox's config)."""

    id: str  # sandbox id, "" until the runtime assigned one
    uid: str
    name: str
    namespace: str
    qos: str = BESTEFFORT  # from the cgroup parent kubelet chose
    cgroup_parent: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    cpu_request: int = 0  # milli-CPUs; pod-level resources when kubelet sends them, else 0
    cpu_limit: int = 0  # milli-CPUs, 0 = no limit
    memory_limit: int = 0  # bytes, 0 = no limit
    overhead_cpu: int = 0  # milli-CPUs (RuntimeClass overhead)
    overhead_memory: int = 0  # bytes

    @property
    def key(self) -> str:
        """`namespace/name`, as operators name pods."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Container:
    """A container as the policy sees it (from CreateContainer / UpdateContainerResources)."""

    id: str  # runtime container id, "" while being created
    pod_id: str
    name: str
    pod_name: str
    namespace: str
    qos: str = BESTEFFORT
    cpu_request: int = 0  # milli-CPUs, estimated from cpu_shares as kubelet writes them
    cpu_limit: int = 0  # milli-CPUs from cpu_quota/cpu_period, 0 = no limit
    memory_limit: int = 0  # bytes from memory_limit_in_bytes, 0 = no limit
    annotations: Mapping[str, str] = field(default_factory=dict)  # container annotations
    pod_annotations: Mapping[str, str] = field(default_factory=dict)
    cpuset_cpus: str = ""  # what the request asked for ("" = nothing)
    cpuset_mems: str = ""

    @property
    def key(self) -> str:
        """`namespace/pod:container`, as the logs and the dump name it."""
        return f"{self.namespace}/{self.pod_name}:{self.name}"

    @property
    def exclusive_cpus(self) -> int:
        """Whole CPUs a Guaranteed container with an integer request may own (else 0)."""
        if self.qos == GUARANTEED and self.cpu_request > 0 and self.cpu_request % 1000 == 0:
            return self.cpu_request // 1000
        return 0


@dataclass(frozen=True)
class Placement:
    """Where a container runs. `None` fields leave the request's value untouched."""

    cpus: CPUSet
    mems: Optional[CPUSet] = None  # NUMA node ids for cpuset.mems
    cpu_class: str = SHARED
    pool: str = ""  # policy-specific pool name, shown by `cri-resmgr status`
    cpu_shares: Optional[int] = None
    exclusive: CPUSet = field(default_factory=CPUSet)  # part of `cpus` the container owns

    def to_json(self) -> Dict[str, Any]:
        """The JSON form the state file keeps (read back by `state_format.decode`)."""
        return {
            "cpus": str(self.cpus),
            "mems": None if self.mems is None else str(self.mems),
            "class": self.cpu_class,
            "pool": self.pool,
            "cpu_shares": self.cpu_shares,
            "exclusive": str(self.exclusive),
        }


@dataclass(frozen=True)
class Decision:
    """A policy's answer: the asked container's placement plus knock-on changes.

    `updates` are other containers (by key) whose placement changed as a consequence
    (the shared pool shrank or grew); the hooks push them to the runtime with
    UpdateContainerResources before answering kubelet.
    """

    placement: Optional[Placement] = None
    updates: Mapping[str, Placement] = field(default_factory=dict)


class Policy(abc.ABC):
    """Base class of resource policies. The class docstring is the operator's manual
    shown by `cri-resmgr -list-policies` (first line: one-line summary).

    Calls come from one thread at a time (hooks hold a lock). A policy keeps its own
    accounting in memory; what must survive a restart is the placements, which the
    hooks persist and give back through `restore`.

    Records every policy keeps (by key): ``_placements`` (the answer of `placements`,
    kept in step by the policy), ``_names`` (``namespace/pod:container``, for
    messages; a policy may answer `_name_of` from its own records instead) and
    ``_preserved`` (placements adopted as they were, PRESERVED). `rename` moves the
    three (`_rename_records`); `restore` is a template around `_restore`.
    """

    NAME: ClassVar[str] = ""
    ALIASES: ClassVar[Tuple[str, ...]] = ()
    #: option keys of [policy.NAME] that `reconfigure` can apply to running containers
    LIVE_OPTIONS: ClassVar[FrozenSet[str]] = frozenset()

    def __init__(self, topology: Topology, reserved: CPUSet, options: Mapping[str, Any]) -> None:
        """`reserved` is the resolved reserved CPU set (never empty for policies that
        need one: the service resolves an amount to CPUs from the lowest cores), all
        online (`reserve.resolve_reserved` refuses others)."""
        assert reserved <= topology.online, f"reserved CPUs {reserved - topology.online} offline"
        self.topology = topology
        self.reserved = reserved
        self.options = dict(options)
        self._placements: Dict[str, Placement] = {}
        self._names: Dict[str, str] = {}
        self._preserved: Dict[str, Placement] = {}

    @classmethod
    def validate(
        cls, topology: Topology, reserved: CPUSet, options: Mapping[str, Any], config: Any = None
    ) -> None:
        """Check options against this machine without building the policy; raises
        `errors.ConfigError` (with file/line from ``config``, a `config.Config`, when
        given). The service calls it at start and before a reload is accepted, so a
        configuration that cannot be satisfied is refused, never half-applied. The
        default accepts everything: a policy with nothing to check need not override."""
        return

    @abc.abstractmethod
    def allocate(self, key: str, pod: Pod, container: Container) -> Decision:
        """Place a new container. Raises `errors.AllocationError` (or another
        `errors.PolicyError`) when it cannot; nothing changes then."""

    @abc.abstractmethod
    def release(self, key: str) -> Decision:
        """Forget a container (stopped or removed); unknown keys are ignored."""

    @abc.abstractmethod
    def update(self, key: str, pod: Pod, container: Container) -> Decision:
        """Kubelet changed a container's resources (in-place resize): re-place it.
        Raises `errors.PolicyError` when the new size cannot be satisfied; the old
        placement stays then."""

    def restore(self, entries: Iterable[Entry]) -> Decision:
        """Adopt placements from the state file at start-up (before any other call).
        Placements that no longer fit (CPUs offline or reserved now) are re-done;
        those changes come back in `updates`.

        The template: refuse when anything is placed already, drop a key listed
        twice (the first entry counts, a WARNING says so), let `_restore` adopt the
        rest, and answer every placement that differs from the persisted one."""
        if self._placements:
            raise PolicyError(f"restore must come before any other call of the {self.NAME} policy")
        logger = logging.getLogger(type(self).__module__)
        persisted: Dict[str, Placement] = {}
        unique: List[Entry] = []
        for entry in entries:
            key = entry[0]
            if key in persisted:
                logger.warning("restore: %s listed twice; using the first entry", key)
                continue
            persisted[key] = entry[3]
            unique.append(entry)
        self._restore(unique, persisted)
        updates = {k: p for k, p in self._placements.items() if persisted.get(k) != p}
        logger.debug("restore: %d container(s), %d changed", len(self._placements), len(updates))
        return Decision(updates=updates)

    def _restore(self, entries: List[Entry], persisted: Mapping[str, Placement]) -> None:
        """`restore`'s policy part: adopt ``entries`` (one per key; ``persisted``: key
        -> its persisted placement), filling ``_placements``. A policy implements
        this or overrides `restore` as a whole."""
        raise NotImplementedError(f"the {self.NAME} policy implements neither restore nor _restore")

    def placements(self) -> Mapping[str, Placement]:
        """Current placement of every container, by key (a copy)."""
        return dict(self._placements)

    def rename(self, old: str, new: str) -> None:
        """A provisional key became the runtime's container id.

        Every policy here overrides it (with `_rename_records`). It is not abstract:
        the hooks treat NotImplementedError as "release the provisional key and place
        the container again under its id", which policies written for tests rely on.
        """
        raise NotImplementedError

    def reconfigure(self, options: Mapping[str, Any]) -> Decision:
        """Apply changed live options (keys in `LIVE_OPTIONS`) to running containers."""
        self.options.update(options)
        return Decision()

    def pools(self) -> Mapping[str, CPUSet]:
        """Pool name -> CPUs, for status output."""
        return {}

    # -- helpers for the policies ---------------------------------------------------------

    def _name_of(self, key: str) -> str:
        """``namespace/pod:container`` of a placed key, for messages (the key if unknown)."""
        return self._names.get(key, key)

    def _rename_records(self, old: str, new: str) -> bool:
        """The part of `rename` every policy shares: move ``_placements``, ``_names``
        and ``_preserved`` from ``old`` to ``new``. False when there is nothing to
        move (the same key, or ``old`` is not placed); `PolicyError` when ``new`` is
        placed already (nothing changes then)."""
        if old == new or old not in self._placements:
            return False
        if new in self._placements:
            raise PolicyError(
                f"cannot rename {old!r} to {new!r}: {new!r} is already placed "
                f"({self._name_of(new)})"
            )
        self._placements[new] = self._placements.pop(old)
        if old in self._names:
            self._names[new] = self._names.pop(old)
        if old in self._preserved:
            self._preserved[new] = self._preserved.pop(old)
        return True

    def _adopt_preserved(self, key: str, name: str, placement: Placement) -> None:
        """Take a PRESERVED placement as it is (restore)."""
        self._preserved[key] = placement
        self._placements[key] = placement
        self._names[key] = name

    def _place_preserved(self, key: str, pod: Pod, container: Container) -> Decision:
        """Resize of a container adopted as it was (PRESERVED, e.g. on-error=pass):
        place it properly now with `allocate`; if that fails it stays preserved."""
        preserved = self._preserved.pop(key)
        del self._placements[key]
        try:
            return self.allocate(key, pod, container)
        except Exception:
            self._preserved[key] = preserved
            self._placements[key] = preserved
            raise

    def _exclusive_problem(
        self,
        placement: Placement,
        count: int,
        owned: CPUSet,
        owners: Callable[[CPUSet], Iterable[str]],
        classes: Tuple[str, ...] = (EXCLUSIVE,),
    ) -> str:
        """Why a persisted placement cannot be kept as ``count`` exclusive CPUs ("" if
        it can): not of one of ``classes``, another count, CPUs offline or reserved
        now, or some in ``owned`` already (``owners(cpus)``: who has them)."""
        cpus = placement.exclusive
        if placement.cpu_class not in classes or not cpus:
            return f"it was {placement.cpu_class}, not exclusive"
        if len(cpus) != count:
            return f"it held {len(cpus)} exclusive CPUs but asks for {count}"
        gone = cpus - self.topology.online
        if gone:
            return f"CPUs {gone} are not online"
        reserved = cpus & self.reserved
        if reserved:
            return f"CPUs {reserved} are reserved now"
        double = cpus & owned
        if double:
            return f"CPUs {double} are already exclusive to {', '.join(sorted(owners(double)))}"
        return ""

    @classmethod
    def description(cls) -> str:
        """The operator's manual: the class docstring, dedented."""
        import inspect  # noqa: PLC0415 - only for -list-policies

        return inspect.cleandoc(cls.__doc__ or "")
