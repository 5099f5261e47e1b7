"""The balloons policy: disjoint CPU pools that inflate and deflate with their containers.

This module owns `BalloonsPolicy`, the balloon types it is configured with
(`BalloonType`, parsed from ``[policy.balloons]`` and the ``[policy.balloons.type.NAME]``
sections) and the check of a configuration against a machine (`BalloonsPolicy.validate`,
which the constructor runs too). The operator's manual is the class docstring
(``cri-resmgr -list-policies``, docs/policies.md); the design decisions worth knowing
when changing the code:

* **Options.** ``options`` is ``Config.policy_options("balloons")``: the keys of
  ``[policy.balloons]`` plus ``"types"``, the ``(name, values)`` pairs of
  ``Config.balloon_types()`` in file order (which is the matching order). A mapping
  ``name -> values`` is accepted too (tests). Missing keys take the defaults of
  `config.KEYS` (`base.with_defaults`); `config` checks the values themselves.
* **Balloons.** ``self.balloons`` lists every balloon: the built-in ``reserved``
  balloon first (always the reserved CPUs, never resized), then ``default``, then the
  balloons of the configured types in creation order. ``default`` runs on the reserved
  CPUs too unless ``[policy.balloons.type.default]`` sets ``min-cpus`` or ``max-cpus``;
  then it has CPUs of its own and is sized like any other balloon (Intel's
  cri-resource-manager does the same). A balloon's own CPUs (``_Balloon.cpus``) are
  disjoint from every other balloon's and never include reserved or kernel-isolated
  CPUs (the kernel does not balance tasks across isolated CPUs, and a balloon is a
  shared pool). ``_free`` = usable CPUs (online - reserved - isolated) that no balloon
  owns.
* **Sizing.** A balloon needs ``ceil(sum of its containers' CPU requests)`` CPUs, at
  least 1 while it holds a container and at least ``min-cpus``; it is sized to that
  rounded up to whole cores (so that two balloons rarely share a physical core),
  capped by ``max-cpus`` and by what is free. It grows when it must (adding CPUs next
  to its own: `CPUAllocator.take` with ``near``) and shrinks when it is larger than the
  rounded size (`CPUAllocator.keep`: whole groups and cores stay). A balloon between
  the two keeps its CPUs (no churn). Resizing back to the previous size returns to the
  previous CPUs when they are still free (exact undo of a refused resize).
* **Choosing a balloon** of the container's type: a balloon that already holds a
  container of the same pod (unless ``prefer-spreading-pods``), then the one with the
  most room without growing, then the one with the most room after growing, then an
  empty or a new balloon (first instead with ``prefer-new-balloons``). With
  ``prefer-spreading-pods`` balloons without a container of the pod come first; the
  others only when nothing else fits. The idea is Intel's fill chain.
* **Idle CPUs.** A type with ``share-idle-cpus-in-same = LEVEL`` lets its containers
  also run on the free CPUs (in no balloon) of every LEVEL group (system, package,
  die, NUMA node, core) that holds one of the balloon's own CPUs. The placement's
  ``cpus`` are own | shared idle; ``mems`` the NUMA nodes of those CPUs (nodes without
  memory replaced by their nearest ones; memory-only nodes are not used).
* **Updates.** Every balloon has one `Placement` object that all its containers share;
  after each change ``_refresh`` recomputes every balloon's CPUs (own | free ones in
  its reach, the reach cached per own CPUs from a CPU -> group table per level) and
  builds a new placement for those whose CPUs changed; their containers go into
  ``Decision.updates``.
* **Errors** leave the state as it was: the balloon and its new CPUs are picked
  first, committed after. `errors.AllocationError` names the container, the type and
  the limit that stopped it (max-cpus, max-balloons, free CPUs); a balloon annotation
  that names no type is `errors.InvalidRequest`. A configuration that cannot be
  satisfied on the machine is `errors.ConfigError` from `validate` (and so from the
  constructor): never a crash (Intel's policy panicked, its issue 807).
* **Restore** rebuilds the balloons from the persisted placements (``pool`` names the
  balloon, ``TYPE[N]``); see `BalloonsPolicy.restore`.
* **Logging**: decisions at DEBUG; `restore` logs one INFO line per container it
  re-places and a WARNING per container it cannot place properly.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from cri_resmgr.errors import (
    AllocationError,
    InvalidRequest,
    PolicyError,
)
from cri_resmgr.policy import annotation_keys as ann
from cri_resmgr.policy.allocator import CPUAllocator
from cri_resmgr.policy.base import (
    PRESERVED,
    RESERVED,
    SHARED,
    Container,
    Decision,
    Entry,
    Placement,
    Pod,
    Policy,
    Problems,
    with_defaults,
)
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.topology import Topology

__all__ = [
    "ANNOTATION",
    "DEFAULT_TYPE",
    "RESERVED_TYPE",
    "SHARE_LEVELS",
    "BalloonType",
    "BalloonsPolicy",
]

log = logging.getLogger(__name__)

#: annotation naming a container's balloon type: ``ANNOTATION/container.NAME`` (one
#: container), ``ANNOTATION/pod`` (the pod) or ``ANNOTATION`` itself, most specific first
ANNOTATION = ann.full_key("balloon.balloons")
RESERVED_TYPE = "reserved"
DEFAULT_TYPE = "default"
BUILTIN_TYPES = (RESERVED_TYPE, DEFAULT_TYPE)
#: the namespace whose pods always go to the reserved balloon (unless annotated)
KUBE_SYSTEM = "kube-system"
#: values of share-idle-cpus-in-same ("" = no sharing)
SHARE_LEVELS = ("system", "package", "die", "numa", "core")

SECTION = "policy.balloons"
TYPE_SECTION = "policy.balloons.type."
_POOL_RE = re.compile(r"([a-z0-9-]+)\[([0-9]+)\]\Z")
_NO_CPUS = CPUSet()


@dataclass(frozen=True)
class BalloonType:
    """One balloon type: a ``[policy.balloons.type.NAME]`` section (or a built-in).

    CPU counts are whole CPUs; 0 for ``max-cpus``/``max-balloons`` means no limit.
    ``configured``: it has a section, so it takes part in namespace matching (in the
    order of the sections).
    """

    name: str
    namespaces: Tuple[str, ...] = ()
    min_cpus: int = 0
    max_cpus: int = 0
    min_balloons: int = 0
    max_balloons: int = 0
    prefer_new_balloons: bool = False
    prefer_spreading_pods: bool = False
    share_idle_cpus_in_same: str = ""
    configured: bool = False

    @property
    def builtin(self) -> bool:
        return self.name in BUILTIN_TYPES

    @property
    def section(self) -> str:
        return TYPE_SECTION + self.name

    @property
    def on_reserved(self) -> bool:
        """Its one balloon is the reserved CPUs: ``reserved``, and ``default`` unless
        its min-cpus or max-cpus is set."""
        if self.name == RESERVED_TYPE:
            return True
        return self.name == DEFAULT_TYPE and not self.min_cpus and not self.max_cpus

    def matches(self, namespace: str) -> bool:
        """True if ``namespace`` matches one of the type's globs."""
        return any(fnmatch.fnmatchcase(namespace, glob) for glob in self.namespaces)


class _Balloon:
    """One balloon: its type, instance number, own CPUs and containers."""

    __slots__ = (
        "btype",
        "containers",
        "cpus",
        "instance",
        "placement",
        "pods",
        "previous",
        "reach",
        "reach_of",
        "requested",
    )

    def __init__(self, btype: BalloonType, instance: int, cpus: CPUSet) -> None:
        self.btype = btype
        self.instance = instance
        self.cpus = cpus  # own CPUs
        self.containers: Dict[str, Tuple[str, int]] = {}  # key -> (pod id, milli-CPUs)
        self.pods: Dict[str, int] = {}  # pod id -> how many of its containers are here
        self.requested = 0  # milli-CPUs, sum over containers
        self.placement: Optional[Placement] = None  # what its containers get
        self.previous: Optional[CPUSet] = None  # own CPUs before the last resize
        # bitmask of the CPUs whose idle ones it shares, for own CPUs ``reach_of``
        self.reach = 0
        self.reach_of = -1

    @property
    def name(self) -> str:
        """``reserved``, ``default`` or ``TYPE[N]``: the placement's pool."""
        if self.btype.builtin:
            return self.btype.name
        return f"{self.btype.name}[{self.instance}]"

    def add(self, key: str, pod_id: str, milli: int) -> None:
        self.containers[key] = (pod_id, milli)
        self.pods[pod_id] = self.pods.get(pod_id, 0) + 1
        self.requested += milli

    def remove(self, key: str) -> None:
        pod_id, milli = self.containers.pop(key)
        left = self.pods[pod_id] - 1
        if left:
            self.pods[pod_id] = left
        else:
            del self.pods[pod_id]
        self.requested -= milli

    def describe(self) -> str:
        limit = f"/{self.btype.max_cpus}" if self.btype.max_cpus else ""
        return f"{self.name}: {len(self.cpus)}{limit} CPUs, {self.requested}m requested"


# --- options and validation ------------------------------------------------------------


def _type_pairs(types: Any) -> List[Tuple[str, Mapping[str, Any]]]:
    """``types`` (``Config.policy_options("balloons")["types"]``: (name, values) pairs
    in matching order, or a mapping) as a list of pairs."""
    if types is None:
        return []
    if isinstance(types, Mapping):
        return list(types.items())
    return list(types)


def _parse_type(name: str, values: Mapping[str, Any], problems: Problems) -> BalloonType:
    """One type from its section's values (`config` checked them; defaults from its key
    table). The reserved type takes no size: that is ``[policy] reserved-cpus``."""
    section = TYPE_SECTION + name
    v = with_defaults(section, values)
    if name == RESERVED_TYPE:
        for key in ("min-cpus", "max-cpus"):
            if v[key]:
                problems.add(
                    section,
                    key,
                    v[key],
                    "the reserved balloon is the reserved CPUs; set its size with "
                    "[policy] reserved-cpus",
                )
    return BalloonType(
        name=name,
        namespaces=tuple(v["namespaces"]),
        min_cpus=v["min-cpus"],
        max_cpus=v["max-cpus"],
        min_balloons=v["min-balloons"],
        max_balloons=v["max-balloons"],
        prefer_new_balloons=v["prefer-new-balloons"],
        prefer_spreading_pods=v["prefer-spreading-pods"],
        share_idle_cpus_in_same=v["share-idle-cpus-in-same"],
        configured=True,
    )


class _Setup:
    """What the options and the machine give: the types and the balloons at start."""

    def __init__(
        self,
        topology: Topology,
        reserved: CPUSet,
        options: Mapping[str, Any],
        config: Any,
    ) -> None:
        problems = Problems(config)
        with_defaults(SECTION, options, extra=("types",))
        configured = [
            _parse_type(name, values, problems)
            for name, values in _type_pairs(options.get("types"))
        ]
        by_name = {bt.name: bt for bt in configured}
        reserved_type = by_name.setdefault(RESERVED_TYPE, BalloonType(RESERVED_TYPE))
        default_type = by_name.setdefault(DEFAULT_TYPE, BalloonType(DEFAULT_TYPE))
        #: types with a section, in matching order
        self.order: Tuple[BalloonType, ...] = tuple(configured)
        self.types: Dict[str, BalloonType] = {
            RESERVED_TYPE: reserved_type,
            DEFAULT_TYPE: default_type,
            **{bt.name: bt for bt in configured if not bt.builtin},
        }
        self.usable = topology.online - reserved - topology.isolated

        if not reserved:
            problems.add(
                "policy",
                "reserved-cpus",
                "",
                "the balloons policy needs reserved CPUs (the reserved balloon runs there)",
            )
        self._check_capacity(topology, reserved, problems)
        problems.check()

    def own_types(self) -> List[BalloonType]:
        """Types whose balloons have CPUs of their own, in creation order."""
        return [bt for bt in self.types.values() if not bt.on_reserved]

    def _check_capacity(self, topology: Topology, reserved: CPUSet, problems: Problems) -> None:
        usable = len(self.usable)
        machine = (
            f"{len(topology.online)} online, {len(reserved & topology.online)} reserved, "
            f"{len(topology.isolated - reserved)} isolated"
        )
        own = self.own_types()
        if own and not usable:
            bt = own[0]
            problems.add(
                bt.section,
                None,
                None,
                f"no CPU is left for balloons of this type: every online CPU is reserved or "
                f"isolated ({machine})",
            )
            return
        total = 0
        parts: List[str] = []
        for bt in own:
            if bt.min_cpus > usable:
                problems.add(
                    bt.section,
                    "min-cpus",
                    bt.min_cpus,
                    f"a balloon of this type needs {bt.min_cpus} CPUs but balloons can use "
                    f"only {usable} ({machine})",
                    f"up to {usable}",
                )
                return
            count = 1 if bt.builtin else bt.min_balloons
            need = count * bt.min_cpus
            if not need:
                continue
            total += need
            parts.append(f"{bt.name} {count} x {bt.min_cpus}" if count > 1 else f"{bt.name} {need}")
            if total > usable:
                key = "min-cpus" if bt.builtin else "min-balloons"
                problems.add(
                    bt.section,
                    key,
                    bt.min_cpus if bt.builtin else bt.min_balloons,
                    f"the balloons created at start need {total} CPUs ({', '.join(parts)}) "
                    f"but balloons can use only {usable} ({machine})",
                )
                return

    def initial_balloons(
        self, allocator: CPUAllocator, reserved: CPUSet, tpc: int
    ) -> Tuple[List[_Balloon], CPUSet]:
        """The reserved and default balloons and ``min-balloons`` of each type, with
        ``min-cpus`` CPUs each (more, up to whole cores, where CPUs are to spare);
        returns (balloons, free CPUs)."""
        balloons = [_Balloon(self.types[RESERVED_TYPE], 0, reserved)]
        default = self.types[DEFAULT_TYPE]
        plan: List[BalloonType] = []
        if not default.on_reserved:
            plan.append(default)
        else:
            balloons.append(_Balloon(default, 0, reserved))
        for bt in self.types.values():
            if not bt.builtin:
                plan.extend([bt] * bt.min_balloons)
        free = self.usable
        left = sum(bt.min_cpus for bt in plan)
        counters: Dict[str, int] = {}
        for bt in plan:
            left -= bt.min_cpus
            wanted = _round_up(bt.min_cpus, tpc)
            if bt.max_cpus:
                wanted = min(wanted, bt.max_cpus)
            count = max(bt.min_cpus, min(wanted, len(free) - left))
            cpus = allocator.take(free, count) if count else _NO_CPUS
            free = free - cpus
            instance = counters.get(bt.name, 0)
            counters[bt.name] = instance + 1
            balloon = _Balloon(bt, instance, cpus)
            if bt.builtin:
                balloons.insert(1, balloon)
            else:
                balloons.append(balloon)
        return balloons, free


def _round_up(count: int, unit: int) -> int:
    return -(-count // unit) * unit


# --- the policy ------------------------------------------------------------------------


class BalloonsPolicy(Policy):
    """Disjoint CPU pools ("balloons") that grow and shrink with their containers.

    What it does. Every container runs in exactly one balloon: a set of CPUs that no
    other balloon has. All containers of a balloon share its CPUs. A balloon grows
    (by whole cores, next to the CPUs it has) when the CPU requests of its containers
    add up to more than it has, and shrinks when they go away; a balloon that holds
    no container any more is deleted (down to min-balloons of its type).
    cpuset.mems follows the CPUs: the NUMA nodes of the balloon's CPUs.

    Balloon types are declared in the configuration, one [policy.balloons.type.NAME]
    section each. Two types are built in: reserved (one balloon: the reserved CPUs,
    [policy] reserved-cpus; pods in kube-system and in the namespaces of
    [policy.balloons.type.reserved] go there) and default (one balloon, for every
    pod no type claims; it runs on the reserved CPUs too unless
    [policy.balloons.type.default] sets min-cpus or max-cpus, then it has CPUs of its
    own). Kernel-isolated CPUs (isolcpus) are never put in a balloon, and no balloon
    but reserved (and default on the reserved CPUs) ever gets reserved CPUs.

    Which type. The pod annotation balloon.balloons.cri-resource-manager.intel.com/pod
    (or .../container.NAME for one container) names the type; an annotation that
    names no type fails the container. Otherwise pods in kube-system go to reserved;
    otherwise the first type (in the order of the sections) whose namespaces match
    the pod's namespace (globs: *, ?, [...]); otherwise default.

    Which balloon of the type. One that already holds a container of the same pod,
    then the one with the most room without growing, then the one with the most room
    after growing, then an empty or a new balloon. prefer-new-balloons puts the new
    balloon first; prefer-spreading-pods keeps the containers of a pod in different
    balloons when possible. When nothing fits (max-cpus, max-balloons, no free CPUs)
    the container fails with an error that names the limit.

    Options ([policy.balloons]):
      on-error = fail             fail: the CRI call fails and kubelet retries;
                                  pass: log and run the container unpinned.
    Per type ([policy.balloons.type.NAME]):
      namespaces = ...            pods in these namespaces (globs) get this type.
      min-cpus = 0                CPUs a balloon has at least.
      max-cpus = 0                CPUs a balloon grows to at most (0: no limit).
      min-balloons = 0            balloons created at start and kept when empty.
      max-balloons = 0            most balloons of the type at a time (0: no limit).
      prefer-new-balloons = false a new pod gets a new balloon rather than a shared one.
      prefer-spreading-pods = false  the containers of a pod go to different balloons.
      share-idle-cpus-in-same =   system, package, die, numa or core: the containers
                                  also run on the CPUs that are in no balloon in the
                                  same topology unit as the balloon's CPUs.

    A configuration the machine cannot satisfy (min-cpus of a balloon, or all the
    balloons created at start, more than the CPUs that are not reserved or isolated)
    is refused at start and on reload with an error naming the section and key.
    Changes of the balloon types take a restart.
    """

    NAME = "balloons"
    ALIASES = ()
    LIVE_OPTIONS = frozenset()

    def __init__(self, topology: Topology, reserved: CPUSet, options: Mapping[str, Any]) -> None:
        super().__init__(topology, reserved, options)
        setup = _Setup(topology, reserved, self.options, None)
        self.types: Mapping[str, BalloonType] = setup.types
        self.match_order = setup.order
        self.usable = setup.usable
        self.allocator = CPUAllocator(topology)
        self.threads_per_core = self.allocator.threads_per_core
        self.balloons, self._free = setup.initial_balloons(
            self.allocator, reserved, self.threads_per_core
        )
        self._of: Dict[str, _Balloon] = {}  # key -> its balloon
        self._groups = self._level_groups(topology)
        #: share-idle-cpus-in-same level -> CPU -> the bitmask of its group at that level
        self._group_of: Dict[str, Dict[int, int]] = {
            level: {cpu: bits for bits in groups for cpu in CPUSet.from_bits(bits)}
            for level, groups in self._groups.items()
        }
        self._refresh()
        log.debug(
            "balloons policy: reserved %s, isolated %s, free %s; balloons %s",
            reserved,
            topology.isolated,
            self._free,
            "; ".join(f"{b.name} {b.cpus}" for b in self.balloons),
        )

    @classmethod
    def validate(
        cls,
        topology: Topology,
        reserved: CPUSet,
        options: Mapping[str, Any],
        config: Any = None,
    ) -> None:
        """Check ``options`` (``Config.policy_options("balloons")``) against a machine.

        Raises `errors.ConfigError` listing every problem: no reserved CPUs, the
        reserved type given a size, a balloon's min-cpus or the balloons created at
        start needing more CPUs than are neither reserved nor isolated. Values, min
        above max and the built-in types' limits are `config`'s to check. With
        ``config`` (the `config.Config` the options came from) problems carry its
        file and line. Builds nothing: cheap enough for every reload.
        """
        _Setup(topology, reserved, options, config)

    # -- helpers -------------------------------------------------------------------------

    @staticmethod
    def _level_groups(topology: Topology) -> Dict[str, Tuple[int, ...]]:
        """share-idle-cpus-in-same level -> its groups' CPU bitmasks."""
        return {
            "package": tuple(c.bits for c in topology.packages.values()),
            "die": tuple(c.bits for c in topology.dies.values()),
            "numa": tuple(topology.nodes[n].cpus.bits for n in topology.cpu_nodes),
            "core": tuple(c.bits for c in topology.cores.values()),
        }

    def _reach_of(self, balloon: _Balloon) -> int:
        """Bitmask of the CPUs whose idle ones a balloon's containers may use (see
        `_reach`; none without own CPUs), recomputed only when its own CPUs change."""
        own = balloon.cpus.bits
        if balloon.reach_of != own:
            balloon.reach_of = own
            balloon.reach = self._reach(balloon.btype, balloon.cpus) if own else 0
        return balloon.reach

    def _refresh(self, exclude: str = "") -> Dict[str, Placement]:
        """Recompute every balloon's placement; the containers whose placement changed
        (``exclude``: the key the decision is about).

        A balloon's CPUs are its own plus the free CPUs within its reach (cached per
        own CPUs): a few integer operations per balloon; a `Placement` is built only
        for the balloons whose CPUs changed."""
        updates: Dict[str, Placement] = {}
        free = self._free.bits
        for balloon in self.balloons:
            bits = balloon.cpus.bits | (self._reach_of(balloon) & free)
            old = balloon.placement
            if old is not None and old.cpus.bits == bits:
                continue
            cpus = CPUSet.from_bits(bits)
            placement = balloon.placement = Placement(
                cpus=cpus,
                mems=self.allocator.mems_of(cpus),
                cpu_class=RESERVED if balloon.btype.on_reserved else SHARED,
                pool=balloon.name,
            )
            for key in balloon.containers:
                self._placements[key] = placement
                if key != exclude:
                    updates[key] = placement
        return updates

    def _size(self, bt: BalloonType, requested: int, occupied: bool) -> Tuple[int, int]:
        """(least, wanted) CPUs of a balloon of ``bt`` whose containers request
        ``requested`` milli-CPUs (``occupied``: it holds a container)."""
        need = max(-(-requested // 1000), 1 if occupied else 0, bt.min_cpus)
        wanted = _round_up(need, self.threads_per_core)
        if bt.max_cpus:
            wanted = min(wanted, bt.max_cpus)
        return need, wanted

    def _room(self, balloon: _Balloon, milli: int) -> Optional[int]:
        """CPUs ``balloon`` must add to take ``milli`` more milli-CPUs; None if it cannot."""
        bt = balloon.btype
        if bt.on_reserved:
            return 0
        need, _ = self._size(bt, balloon.requested + milli, True)
        have = len(balloon.cpus)
        if need <= have:
            return 0
        if bt.max_cpus and need > bt.max_cpus:
            return None
        if need - have > len(self._free):
            return None
        return need - have

    def _max_room(self, balloon: _Balloon) -> int:
        """Milli-CPUs a balloon could still take after growing as far as it may."""
        if balloon.btype.on_reserved:
            return len(balloon.cpus) * 1000 - balloon.requested
        most = len(balloon.cpus) + len(self._free)
        if balloon.btype.max_cpus:
            most = min(most, balloon.btype.max_cpus)
        return most * 1000 - balloon.requested

    def _resized(self, balloon: _Balloon, requested: int, occupied: bool, who: str) -> CPUSet:
        """The own CPUs of ``balloon`` for ``requested`` milli-CPUs (not committed).

        ``occupied``: it holds a container then. Grows next to its CPUs, or shrinks
        keeping whole groups and cores; returns to its previous CPUs when they have a
        fitting size and are free. Raises `AllocationError` naming ``who`` when it
        cannot grow enough.
        """
        bt = balloon.btype
        if bt.on_reserved:
            return balloon.cpus
        need, wanted = self._size(bt, requested, occupied)
        have = len(balloon.cpus)
        if need <= have <= wanted:
            return balloon.cpus
        previous = balloon.previous
        if (
            previous is not None
            and need <= len(previous) <= wanted
            and previous - balloon.cpus <= self._free
        ):
            return previous
        if have > wanted:
            return self.allocator.keep(balloon.cpus, wanted)
        if bt.max_cpus and need > bt.max_cpus:
            raise AllocationError(
                f"cannot grow balloon {balloon.name} for {who} to {need} CPUs "
                f"({requested}m requested): max-cpus of type {bt.name} is {bt.max_cpus}"
            )
        free = len(self._free)
        if need - have > free:
            raise AllocationError(
                f"cannot grow balloon {balloon.name} for {who} from {have} to {need} CPUs "
                f"({requested}m requested): {free} CPUs are free ({self._summary()})"
            )
        grow = min(wanted, have + free) - have
        return balloon.cpus | self.allocator.take(self._free, grow, near=balloon.cpus)

    def _set_cpus(self, balloon: _Balloon, cpus: CPUSet) -> None:
        if cpus == balloon.cpus:
            return
        log.debug("balloon %s: CPUs %s -> %s", balloon.name, balloon.cpus, cpus)
        self._free = (self._free | balloon.cpus) - cpus
        balloon.previous = balloon.cpus
        balloon.cpus = cpus

    def _summary(self) -> str:
        return (
            f"{len(self.topology.online)} online, {len(self.reserved)} reserved, "
            f"{len(self.topology.isolated - self.reserved)} isolated, "
            f"{len(self.balloons)} balloons"
        )

    def _of_type(self, bt: BalloonType) -> List[_Balloon]:
        return [b for b in self.balloons if b.btype is bt]

    def _builtin(self, name: str) -> _Balloon:
        return next(b for b in self.balloons if b.btype.name == name)

    # -- choosing --------------------------------------------------------------------------

    def choose_type(self, pod: Pod, container: Container) -> BalloonType:
        """The balloon type of a container: annotation, kube-system, namespaces, default.

        Raises `errors.InvalidRequest` when the annotation names no type.
        """
        found = ann.lookup_item(
            container.pod_annotations or pod.annotations,
            container.annotations,
            container.name,
            ANNOTATION,
        )
        if found is None:  # the bare key, as Intel's policy accepted it too
            for source in (container.pod_annotations or pod.annotations, container.annotations):
                if ANNOTATION in source:
                    found = ANNOTATION, str(source[ANNOTATION]).strip()
                    break
        if found is not None:
            where, value = found
            bt = self.types.get(value.strip())
            if bt is None:
                raise InvalidRequest(
                    f"{container.key}: annotation {where} = {ann.shown(value)} names no "
                    f"balloon type (known: {', '.join(self.types)})"
                )
            return bt
        namespace = container.namespace or pod.namespace
        if namespace == KUBE_SYSTEM:
            return self.types[RESERVED_TYPE]
        for bt in self.match_order:
            if bt.matches(namespace):
                return self.types[bt.name]
        return self.types[DEFAULT_TYPE]

    def _new_instance(self, bt: BalloonType) -> int:
        used = {b.instance for b in self.balloons if b.btype is bt}
        n = 0
        while n in used:
            n += 1
        return n

    def _choose(
        self, bt: BalloonType, pod_id: str, milli: int, name: str
    ) -> Tuple[_Balloon, CPUSet, bool]:
        """(balloon, its own CPUs after taking the container, whether it is new).

        Nothing changes; raises `AllocationError` when no balloon of ``bt`` fits.
        """
        if bt.builtin:
            balloon = self._builtin(bt.name)
            return balloon, self._resized(balloon, balloon.requested + milli, True, name), False
        mine = self._of_type(bt)

        def best(candidates: Iterable[_Balloon], grow: bool) -> Optional[_Balloon]:
            chosen: Optional[_Balloon] = None
            chosen_key: Tuple[int, ...] = ()
            for b in candidates:
                add = self._room(b, milli)
                if add is None or (add and not grow):
                    continue
                room = self._max_room(b) if grow else len(b.cpus) * 1000 - b.requested
                key = (-room, b.instance)
                if chosen is None or key < chosen_key:
                    chosen, chosen_key = b, key
            return chosen

        def fresh() -> Optional[_Balloon]:
            for b in mine:  # an empty balloon (min-balloons) before a new one
                if not b.containers and self._room(b, milli) is not None:
                    return b
            if bt.max_balloons and len(mine) >= bt.max_balloons:
                return None
            need, _ = self._size(bt, milli, True)
            if need > len(self._free) or (bt.max_cpus and need > bt.max_cpus):
                return None
            return _Balloon(bt, self._new_instance(bt), _NO_CPUS)

        with_pod = [b for b in mine if pod_id in b.pods]
        without_pod = [b for b in mine if pod_id not in b.pods]
        steps: List[Callable[[], Optional[_Balloon]]] = []
        if bt.prefer_spreading_pods:
            if bt.prefer_new_balloons:
                steps.append(fresh)
            steps += [lambda: best(without_pod, False), lambda: best(without_pod, True)]
            if not bt.prefer_new_balloons:
                steps.append(fresh)
            steps += [lambda: best(with_pod, False), lambda: best(with_pod, True)]
        else:
            steps.append(lambda: best(with_pod, True))
            if bt.prefer_new_balloons:
                steps.append(fresh)
            steps += [lambda: best(mine, False), lambda: best(mine, True)]
            if not bt.prefer_new_balloons:
                steps.append(fresh)
        for step in steps:
            found = step()
            if found is not None:
                new = found not in mine
                return found, self._resized(found, found.requested + milli, True, name), new
        raise AllocationError(self._no_fit(bt, milli, name, mine))

    def _no_fit(self, bt: BalloonType, milli: int, name: str, mine: List[_Balloon]) -> str:
        head = f"cannot place {name} ({milli}m CPU) in a balloon of type {bt.name}"
        need, _ = self._size(bt, milli, True)
        if bt.max_cpus and need > bt.max_cpus:
            return f"{head}: it needs {need} CPUs, max-cpus of the type is {bt.max_cpus}"
        why = []
        if mine:
            why.append("no balloon can grow enough (" + "; ".join(b.describe() for b in mine) + ")")
        if bt.max_balloons and len(mine) >= bt.max_balloons:
            why.append(f"max-balloons {bt.max_balloons} reached")
        else:
            why.append(f"a new balloon needs {need} CPUs")
        return f"{head}: {', '.join(why)}; {len(self._free)} CPUs are free ({self._summary()})"

    # -- the Policy interface -----------------------------------------------------------------

    def allocate(self, key: str, pod: Pod, container: Container) -> Decision:
        """Put a new container into a balloon of its type (growing or creating one).

        A key that is already placed is treated as a resize (`update`).
        """
        if key in self._placements:
            return self.update(key, pod, container)
        name = container.key
        bt = self.choose_type(pod, container)
        milli = max(0, container.cpu_request)
        balloon, cpus, new = self._choose(bt, container.pod_id, milli, name)
        if new:
            self.balloons.append(balloon)
            log.debug("new balloon %s for %s", balloon.name, name)
        self._set_cpus(balloon, cpus)
        balloon.add(key, container.pod_id, milli)
        self._of[key] = balloon
        self._names[key] = name
        updates = self._refresh(exclude=key)
        placement = balloon.placement
        assert placement is not None
        self._placements[key] = placement
        log.debug(
            "%s (%dm CPU): balloon %s, CPUs %s, mems %s; %d other container(s) moved",
            name,
            milli,
            balloon.name,
            placement.cpus,
            placement.mems,
            len(updates),
        )
        return Decision(placement=placement, updates=updates)

    def release(self, key: str) -> Decision:
        """Take a container out of its balloon; the balloon shrinks or goes away."""
        if key not in self._placements:
            return Decision()
        name = self._names.pop(key, key)
        del self._placements[key]
        if self._preserved.pop(key, None) is not None:
            return Decision()
        balloon = self._of.pop(key)
        balloon.remove(key)
        bt = balloon.btype
        if not balloon.containers and not bt.builtin and len(self._of_type(bt)) > bt.min_balloons:
            self.balloons.remove(balloon)
            self._free = self._free | balloon.cpus
            log.debug("%s released; balloon %s deleted", name, balloon.name)
        else:
            try:
                cpus = self._resized(balloon, balloon.requested, bool(balloon.containers), name)
                self._set_cpus(balloon, cpus)
            except AllocationError:  # pragma: no cover - shrinking never needs CPUs
                pass
            log.debug("%s released; balloon %s has CPUs %s", name, balloon.name, balloon.cpus)
        return Decision(updates=self._refresh())

    def update(self, key: str, pod: Pod, container: Container) -> Decision:
        """Resize: the container's balloon grows or shrinks to its containers' requests.

        Raises `AllocationError` when the balloon cannot grow that far (max-cpus, no
        free CPUs); the old placement stays then.
        """
        if key not in self._placements:
            return self.allocate(key, pod, container)
        if key in self._preserved:
            return self._place_preserved(key, pod, container)
        balloon = self._of[key]
        pod_id, old = balloon.containers[key]
        new = max(0, container.cpu_request)
        if new == old:
            return Decision(placement=balloon.placement)
        name = container.key
        cpus = self._resized(balloon, balloon.requested - old + new, True, name)
        balloon.remove(key)
        balloon.add(key, pod_id, new)
        self._set_cpus(balloon, cpus)
        updates = self._refresh(exclude=key)
        log.debug("%s: %dm -> %dm CPU; balloon %s CPUs %s", name, old, new, balloon.name, cpus)
        return Decision(placement=balloon.placement, updates=updates)

    def _restore(self, entries: List[Entry], persisted: Mapping[str, Placement]) -> None:
        """Rebuild the balloons from persisted placements; re-place what no longer fits.

        Containers are grouped by the balloon their placement names (``pool``). A
        group is adopted as that balloon when the type still exists and is still the
        container's type; its own CPUs are the persisted CPUs that no other balloon's
        containers could use (idle CPUs shared with other balloons drop out), without
        reserved, isolated or offline CPUs, sized to the current requests (shrunk,
        or grown next to them). Balloons beyond max-balloons and containers whose type
        changed or whose balloon cannot be rebuilt are placed again (one INFO line
        each); one that cannot be placed at all goes to the default balloon (WARNING).
        The balloons created at start are replaced by the adopted ones, then
        min-balloons are made up again. PRESERVED placements are adopted untouched.
        """
        groups: Dict[str, List[Tuple[str, Pod, Container, BalloonType]]] = {}
        redo: List[Tuple[str, Pod, Container, str]] = []
        self._group_persisted(entries, groups, redo)

        # start again from the built-in balloons; the adopted ones replace the others
        reserved_balloon = self._builtin(RESERVED_TYPE)
        default_balloon = self._builtin(DEFAULT_TYPE)
        self.balloons = [reserved_balloon]
        reserved_balloon.placement = None  # _refresh gives the adopted containers theirs
        self._free = self.usable
        if default_balloon.btype.on_reserved:
            self.balloons.append(default_balloon)
            default_balloon.placement = None

        def cpus_of(pool: str) -> CPUSet:
            sets = [persisted[k].cpus for k, *_ in groups[pool]]
            out = sets[0]
            for s in sets[1:]:
                out = out & s
            return out

        persisted_cpus = {pool: cpus_of(pool) for pool in groups}
        reach = {
            pool: self._reach(members[0][3], persisted_cpus[pool])
            for pool, members in groups.items()
        }
        # built-in balloons first, then those with CPUs of their own only, then those
        # that shared idle CPUs (whose persisted CPUs are ambiguous)
        order = sorted(
            groups,
            key=lambda pool: (
                not groups[pool][0][3].builtin,
                bool(groups[pool][0][3].share_idle_cpus_in_same),
                pool,
            ),
        )
        for pool in order:
            members = groups[pool]
            bt = members[0][3]
            if not bt.builtin and not any(b.btype.name == DEFAULT_TYPE for b in self.balloons):
                self._new_default(default_balloon.btype)
            problem = self._adopt(pool, bt, members, persisted_cpus, reach)
            if problem:
                redo.extend((key, pod, container, problem) for key, pod, container, _ in members)
        if not any(b.btype.name == DEFAULT_TYPE for b in self.balloons):
            self._new_default(default_balloon.btype)
        self._make_up_min_balloons()
        self._refresh()

        for key, pod, container, problem in redo:
            old = persisted[key]
            try:
                self.allocate(key, pod, container)
            except (PolicyError, InvalidRequest) as exc:
                where = self._fallback(key, container)
                log.warning(
                    "restore: %s: %s; cannot place it again (%s), it runs in balloon %s",
                    container.key,
                    problem,
                    exc,
                    where,
                )
                continue
            log.info(
                "restore: re-placed %s: %s; was %s CPUs %s, now balloon %s CPUs %s",
                container.key,
                problem,
                old.pool or old.cpu_class,
                old.cpus,
                self._placements[key].pool,
                self._placements[key].cpus,
            )
        log.debug("restore: %d balloon(s); free %s", len(self.balloons), self._free)

    def _group_persisted(
        self,
        entries: List[Entry],
        groups: Dict[str, List[Tuple[str, Pod, Container, BalloonType]]],
        redo: List[Tuple[str, Pod, Container, str]],
    ) -> None:
        """Sort persisted entries: PRESERVED adopted, by balloon name into ``groups``
        when still of that balloon's type, else into ``redo`` with the reason."""
        for key, pod, container, placement in entries:
            if placement.cpu_class == PRESERVED:
                self._adopt_preserved(key, container.key, placement)
                continue
            try:
                bt = self.choose_type(pod, container)
            except InvalidRequest as exc:
                redo.append((key, pod, container, str(exc)))
                continue
            if _balloon_type_of(placement.pool) != bt.name:
                why = f"it was in balloon {placement.pool or '-'}, its type is {bt.name} now"
                redo.append((key, pod, container, why))
                continue
            groups.setdefault(placement.pool, []).append((key, pod, container, bt))

    def _adopt(
        self,
        pool: str,
        bt: BalloonType,
        members: Sequence[Tuple[str, Pod, Container, BalloonType]],
        persisted_cpus: Mapping[str, CPUSet],
        reach: Mapping[str, int],
    ) -> str:
        """Rebuild balloon ``pool`` with its containers; why not ("" when done)."""
        requested = sum(max(0, c.cpu_request) for _, _, c, _ in members)
        if bt.on_reserved:
            balloon = self._builtin(bt.name)
        else:
            if bt.builtin:
                instance = 0
            else:
                match = _POOL_RE.match(pool)
                assert match is not None  # _balloon_type_of accepted it
                instance = int(match.group(2))
                if bt.max_balloons and len(self._of_type(bt)) >= bt.max_balloons:
                    return f"type {bt.name} has max-balloons {bt.max_balloons} already"
            # own CPUs are in no other balloon's placement (idle ones may be); a CPU that
            # another sharing balloon would have been given if it were idle is own
            others = CPUSet()
            seen = 0
            for other, cpus in persisted_cpus.items():
                if other != pool:
                    others = others | cpus
                    seen |= reach[other]
            candidate = (persisted_cpus[pool] - others) & self._free
            own = CPUSet.from_bits(candidate.bits & seen)
            balloon = _Balloon(bt, instance, _NO_CPUS)
            try:
                self._adopt_cpus(
                    balloon, candidate, requested, True, persisted=persisted_cpus[pool], own=own
                )
            except AllocationError as exc:
                return f"its balloon {pool} cannot be rebuilt ({exc})"
            if bt.builtin:
                self.balloons.insert(1, balloon)
            else:
                self.balloons.append(balloon)
        for key, _pod, container, _ in members:
            balloon.add(key, container.pod_id, max(0, container.cpu_request))
            self._of[key] = balloon
            self._names[key] = container.key
        return ""

    def _new_default(self, btype: BalloonType) -> None:
        """The default balloon with CPUs of its own, as at start (restore)."""
        balloon = _Balloon(btype, 0, _NO_CPUS)
        try:
            self._adopt_cpus(balloon, _NO_CPUS, 0, False)
        except AllocationError as exc:  # validation made sure min-cpus fit an empty machine
            log.warning("restore: the default balloon gets no CPUs: %s", exc)
        self.balloons.insert(1, balloon)

    def _fallback(self, key: str, container: Container) -> str:
        """Put a container that cannot be placed into the default balloon, grown if it
        can be, else as it is (on the reserved CPUs if it has none); the balloon name."""
        balloon = self._builtin(DEFAULT_TYPE)
        milli = max(0, container.cpu_request)
        try:
            self._set_cpus(
                balloon, self._resized(balloon, balloon.requested + milli, True, container.key)
            )
        except AllocationError:
            if not balloon.cpus:
                balloon = self._builtin(RESERVED_TYPE)
        balloon.add(key, container.pod_id, milli)
        self._of[key] = balloon
        self._names[key] = container.key
        self._refresh(exclude=key)
        assert balloon.placement is not None
        self._placements[key] = balloon.placement
        return balloon.name

    def _adopt_cpus(
        self,
        balloon: _Balloon,
        candidate: CPUSet,
        requested: int,
        occupied: bool,
        *,
        persisted: CPUSet = _NO_CPUS,
        own: CPUSet = _NO_CPUS,
    ) -> None:
        """Give a rebuilt balloon CPUs of ``candidate`` (free ones), sized to ``requested``
        (``occupied``: it holds containers), growing it from the free CPUs if need be.

        When ``candidate`` is larger: first the CPUs known to be its own (``own``),
        then, for a balloon that shares idle CPUs, one CPU in every group (at its
        level) that its ``persisted`` placement spans, so that it shares the same idle
        CPUs as before; the rest is packed (`CPUAllocator.take` near those).
        """
        need, wanted = self._size(balloon.btype, requested, occupied)
        if len(candidate) > wanted:
            candidate = self._pick_own(balloon.btype, candidate, persisted, own, wanted)
        self._free = self._free - candidate
        balloon.cpus = candidate
        if len(candidate) < need:
            grow = min(wanted, len(candidate) + len(self._free)) - len(candidate)
            if len(candidate) + len(self._free) < need:
                self._free = self._free | candidate
                raise AllocationError(
                    f"it needs {need} CPUs, {len(candidate)} of its own are left and "
                    f"{len(self._free) - len(candidate)} are free"
                )
            more = self.allocator.take(self._free, grow, near=candidate)
            self._free = self._free - more
            balloon.cpus = candidate | more

    def _pick_own(
        self, bt: BalloonType, candidate: CPUSet, persisted: CPUSet, own: CPUSet, count: int
    ) -> CPUSet:
        """``count`` CPUs of ``candidate`` as a restored balloon's own; see `_adopt_cpus`."""
        if len(own) >= count:
            return self.allocator.keep(own, count)
        chosen = own
        level = bt.share_idle_cpus_in_same
        if level and level != "system":
            for group in self._groups[level]:
                if group & persisted.bits and not group & chosen.bits:
                    seed = candidate.bits & group
                    if seed and len(chosen) < count:
                        chosen = chosen | self.allocator.take(
                            CPUSet.from_bits(seed), 1, near=chosen
                        )
        rest = count - len(chosen)
        if rest:
            chosen = chosen | self.allocator.take(candidate - chosen, rest, near=chosen)
        return chosen

    def _reach(self, bt: BalloonType, cpus: CPUSet) -> int:
        """The CPUs (bitmask) a balloon of ``bt`` with ``cpus`` shares when they are
        idle: its level's groups that ``cpus`` touches (every usable CPU for
        ``system``, none without share-idle-cpus-in-same)."""
        level = bt.share_idle_cpus_in_same
        if not level:
            return 0
        if level == "system":
            return self.usable.bits
        group_of = self._group_of[level]
        mask = 0
        for cpu in cpus:
            mask |= group_of.get(cpu, 0)
        return mask

    def _make_up_min_balloons(self) -> None:
        for bt in self.types.values():
            if bt.builtin:
                continue
            while len(self._of_type(bt)) < bt.min_balloons:
                need, wanted = self._size(bt, 0, False)
                if need > len(self._free):
                    log.warning(
                        "balloon type %s: only %d of min-balloons %d exist; %d free CPUs "
                        "cannot make another of %d CPUs",
                        bt.name,
                        len(self._of_type(bt)),
                        bt.min_balloons,
                        len(self._free),
                        need,
                    )
                    break
                count = min(wanted, len(self._free))
                balloon = _Balloon(bt, self._new_instance(bt), _NO_CPUS)
                cpus = self.allocator.take(self._free, count) if count else _NO_CPUS
                self._free = self._free - cpus
                balloon.cpus = cpus
                self.balloons.append(balloon)

    def rename(self, old: str, new: str) -> None:
        """Move a container's records from a provisional key to its container id."""
        if not self._rename_records(old, new) or new in self._preserved:
            return
        balloon = self._of.pop(old)
        pod_id, milli = balloon.containers[old]
        balloon.remove(old)
        balloon.add(new, pod_id, milli)
        self._of[new] = balloon

    def reconfigure(self, options: Mapping[str, Any]) -> Decision:
        """A reload: nothing of [policy.balloons] is the policy's to apply live.

        ``on-error`` belongs to the hooks. Balloon type changes take a restart (the
        service reports them); the running types stay until then.
        """
        merged = dict(self.options)
        merged.update(options)
        if "types" in self.options or "types" in merged:
            if _canonical_types(merged.get("types")) != _canonical_types(self.options.get("types")):
                log.info("balloon types changed: they take effect at the next restart")
            merged["types"] = self.options.get("types")
        self.options = merged
        return Decision()

    def pools(self) -> Mapping[str, CPUSet]:
        """Balloon name -> its own CPUs (``reserved`` is the reserved CPUs)."""
        return {b.name: b.cpus for b in self.balloons}

    # -- introspection for status and tests ----------------------------------------------------

    @property
    def free_cpus(self) -> CPUSet:
        """Usable CPUs that are in no balloon."""
        return self._free

    def balloon_of(self, key: str) -> str:
        """The name of the balloon a container is in ("" if none)."""
        balloon = self._of.get(key)
        return balloon.name if balloon is not None else ""

    def describe(self) -> List[Dict[str, Any]]:
        """Every balloon: name, type, own CPUs, shared idle CPUs, requested milli-CPUs,
        container keys."""
        out = []
        for b in self.balloons:
            cpus = b.placement.cpus if b.placement is not None else b.cpus
            out.append(
                {
                    "name": b.name,
                    "type": b.btype.name,
                    "cpus": b.cpus,
                    "idle": cpus - b.cpus,
                    "requested": b.requested,
                    "containers": list(b.containers),
                }
            )
        return out


def _balloon_type_of(pool: str) -> str:
    """The type a persisted pool name belongs to ("" if it names no balloon)."""
    if pool in BUILTIN_TYPES:
        return pool
    match = _POOL_RE.match(pool or "")
    return match.group(1) if match else ""


def _canonical_types(types: Any) -> Any:
    if types is None:
        return ()
    pairs = types.items() if isinstance(types, Mapping) else types
    try:
        return tuple((name, tuple(sorted(dict(values).items()))) for name, values in pairs)
    except (TypeError, ValueError):
        return repr(types)
