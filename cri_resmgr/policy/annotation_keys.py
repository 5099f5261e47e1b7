"""Pod and container annotations that steer the policies (topology-aware, balloons).

This module owns the annotation keys, how a key is looked up for one container
(`lookup`, `lookup_item`), the typed parsers of their values (`parse_bool`,
`parse_memory_types`) and `Reader`, which reads several keys for one container and
collects the malformed ones so that a policy can report them in one log line.

Key format (as Intel's cri-resource-manager wrote them)::

    KEY.cri-resource-manager.intel.com/container.NAME   one container of the pod
    KEY.cri-resource-manager.intel.com/pod              every container of the pod

for example ``prefer-isolated-cpus.cri-resource-manager.intel.com/pod: "false"``.
Pod annotations are what a Kubernetes user writes (``metadata.annotations`` of the pod;
kubelet passes them in the sandbox config). A container's own CRI annotations are
searched too, after the pod's.

Lookup order, the first found wins (the most specific key):

1. ``KEY.DOMAIN/container.NAME`` in the pod's annotations, then in the container's;
2. ``KEY.DOMAIN/pod`` in the pod's annotations, then in the container's.

A value that does not parse is not skipped in favour of a less specific key: the
caller's default applies then, and the caller reports the key and the value
(`Reader.malformed`, `Reader.report`). Values are stripped of surrounding white space.

Units: none; values are strings. Nothing here raises except the parsers
(`AnnotationError`, a `ValueError`).

The module is not called ``annotations``: every module of the package (its
``__init__`` too) has ``from __future__ import annotations``, which binds that name,
so ``from cri_resmgr.policy import annotations`` would give the ``__future__``
feature instead of a module. ``from cri_resmgr.policy import annotation_keys`` is
safe.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, List, Mapping, Optional, Set, Tuple, TypeVar

from cri_resmgr.errors import clip
from cri_resmgr.resources.topology import DRAM, HBM, MEMORY_KINDS, PMEM

__all__ = [
    "CPU_PRESERVE",
    "DOMAIN",
    "MEMORY_PRESERVE",
    "MEMORY_TYPE",
    "PREFER_ISOLATED_CPUS",
    "PREFER_RESERVED_CPUS",
    "PREFER_SHARED_CPUS",
    "AnnotationError",
    "Malformed",
    "Reader",
    "container_key",
    "full_key",
    "lookup",
    "lookup_item",
    "parse_bool",
    "parse_memory_types",
    "pod_key",
]

log = logging.getLogger(__name__)

#: the suffix of every key: ``KEY.cri-resource-manager.intel.com``
DOMAIN = "cri-resource-manager.intel.com"

PREFER_ISOLATED_CPUS = "prefer-isolated-cpus"
PREFER_SHARED_CPUS = "prefer-shared-cpus"
PREFER_RESERVED_CPUS = "prefer-reserved-cpus"
MEMORY_TYPE = "memory-type"
CPU_PRESERVE = "cpu.preserve"
MEMORY_PRESERVE = "memory.preserve"

# strconv.ParseBool's spellings (Intel's policies parsed these values with it)
_TRUE = frozenset(("1", "t", "true"))
_FALSE = frozenset(("0", "f", "false"))
#: memory-type words; "mixed" (Intel's spelling) is every kind
_MEMORY_WORDS = {DRAM: (DRAM,), PMEM: (PMEM,), HBM: (HBM,), "mixed": MEMORY_KINDS}

T = TypeVar("T")


class AnnotationError(ValueError):
    """A value that does not parse; the message says what is allowed."""


def full_key(key: str) -> str:
    """``prefer-shared-cpus`` -> ``prefer-shared-cpus.cri-resource-manager.intel.com``
    (a key that already ends with the domain is returned as it is)."""
    if key.endswith("." + DOMAIN):
        return key
    return f"{key}.{DOMAIN}"


def container_key(key: str, container_name: str) -> str:
    """The per-container annotation: ``KEY.DOMAIN/container.NAME``."""
    return f"{full_key(key)}/container.{container_name}"


def pod_key(key: str) -> str:
    """The pod-wide annotation: ``KEY.DOMAIN/pod``."""
    return f"{full_key(key)}/pod"


def lookup_item(
    pod_annotations: Mapping[str, str],
    container_annotations: Mapping[str, str],
    container_name: str,
    key: str,
) -> Optional[Tuple[str, str]]:
    """``(annotation key, value)`` of the most specific annotation of ``key`` for the
    container (see the module docstring for the order), or None if there is none.

    ``key`` is the short key (``memory-type``) or the full one
    (``memory-type.cri-resource-manager.intel.com``).
    """
    for name in (container_key(key, container_name), pod_key(key)):
        for source in (pod_annotations, container_annotations):
            value = source.get(name)
            if value is not None:
                return name, str(value).strip()
    return None


def lookup(
    pod_annotations: Mapping[str, str],
    container_annotations: Mapping[str, str],
    container_name: str,
    key: str,
) -> Optional[str]:
    """The value of the most specific annotation of ``key`` for the container, or None."""
    found = lookup_item(pod_annotations, container_annotations, container_name, key)
    return None if found is None else found[1]


def parse_bool(value: str) -> bool:
    """``true``/``false`` (also ``1``/``0``, ``t``/``f``, any case); else AnnotationError."""
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise AnnotationError("expected true or false")


def parse_memory_types(value: str) -> Tuple[str, ...]:
    """Memory kinds of a ``memory-type`` value: ``dram``, ``pmem``, ``hbm``, combined
    with commas (``dram,pmem``; ``mixed`` is all three). Returns the kinds in the
    order of `topology.MEMORY_KINDS` (dram, pmem, hbm); an empty value gives ``()``
    (no preference). Unknown words raise AnnotationError."""
    kinds: Set[str] = set()
    for raw in value.split(","):
        word = raw.strip().lower()
        if not word:
            if value.strip():
                raise AnnotationError(
                    "an empty item; expected dram, pmem, hbm or mixed separated by commas"
                )
            continue
        if word not in _MEMORY_WORDS:
            raise AnnotationError(
                f"unknown memory type {raw.strip()!r}; expected dram, pmem, hbm or mixed, "
                "separated by commas"
            )
        kinds.update(_MEMORY_WORDS[word])
    return tuple(k for k in MEMORY_KINDS if k in kinds)


#: Characters of an annotation value shown in logs and errors (values can be huge).
SHOWN = 100


def shown(text: str, limit: int = SHOWN) -> str:
    """``repr(text)``, cut after `limit` characters with the full length said."""
    return repr(clip(text, limit))


@dataclass(frozen=True)
class Malformed:
    """An annotation whose value did not parse: which key, what value, why."""

    key: str  # the annotation key as found (with /pod or /container.NAME)
    value: str
    problem: str

    def __str__(self) -> str:
        problem = clip(self.problem, 2 * SHOWN)  # parse errors may quote the value
        return f"{self.key}={shown(self.value)} ({problem})"


class Reader:
    """Reads the annotations of one container; remembers the malformed ones.

    ``pod_annotations``/``container_annotations`` as in `lookup`. Each getter returns
    the parsed value of the most specific annotation, or ``default`` when there is
    none or it does not parse (then it is added to `malformed`).
    """

    def __init__(
        self,
        pod_annotations: Mapping[str, str],
        container_annotations: Mapping[str, str],
        container_name: str,
    ) -> None:
        self.pod_annotations = pod_annotations
        self.container_annotations = container_annotations
        self.container_name = container_name
        self.malformed: List[Malformed] = []

    @classmethod
    def for_container(cls, container: object) -> Reader:
        """A reader for a `policy.base.Container` (its ``pod_annotations``,
        ``annotations`` and ``name``)."""
        return cls(
            getattr(container, "pod_annotations", {}) or {},
            getattr(container, "annotations", {}) or {},
            str(getattr(container, "name", "")),
        )

    def raw(self, key: str) -> Optional[Tuple[str, str]]:
        """``(annotation key, value)`` or None, as `lookup_item`."""
        return lookup_item(
            self.pod_annotations, self.container_annotations, self.container_name, key
        )

    def get(self, key: str, parse: Callable[[str], T], default: T) -> Tuple[T, bool]:
        """``(value, explicit)``: the parsed value and True, or ``(default, False)``
        when the annotation is missing or malformed."""
        found = self.raw(key)
        if found is None:
            return default, False
        name, value = found
        try:
            return parse(value), True
        except AnnotationError as exc:
            self.malformed.append(Malformed(name, value, str(exc)))
            return default, False

    def boolean(self, key: str, default: bool) -> Tuple[bool, bool]:
        """``(value, explicit)`` of a true/false annotation."""
        return self.get(key, parse_bool, default)

    def memory_types(self, default: Tuple[str, ...] = ()) -> Tuple[Tuple[str, ...], bool]:
        """``(kinds, explicit)`` of ``memory-type``; an empty value counts as absent."""
        kinds, explicit = self.get(MEMORY_TYPE, parse_memory_types, default)
        if explicit and not kinds:
            return default, False
        return kinds, explicit

    def report(self, pod: str, container: str, logger: Optional[logging.Logger] = None) -> bool:
        """Log the malformed annotations (if any) in one WARNING line naming the pod
        (``namespace/name``), the container, each annotation key and value and that
        the defaults apply. Returns True if there was anything to report."""
        if not self.malformed:
            return False
        many = len(self.malformed) > 1
        (logger or log).warning(
            "pod %s container %s: malformed annotation%s %s; the default%s",
            pod,
            container,
            "s" if many else "",
            "; ".join(str(m) for m in self.malformed),
            "s apply" if many else " applies",
        )
        return True
