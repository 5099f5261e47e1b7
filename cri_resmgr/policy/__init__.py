"""The policy registry: policy names and aliases -> `Policy` classes.

This package owns the resource policies; this module owns the one table of them,
`POLICIES` (canonical name -> ``"module:Class"``), and the look-ups built on it:
`get`, `canonical`, `names`, `aliases`, `create` and `describe_all` (the text of
``cri-resmgr -list-policies``). A policy's aliases live on its class (`Policy.ALIASES`,
e.g. ``none``/``null``); adding a policy is one line in `POLICIES`.

Modules are imported when a policy is first looked up (``importlib`` caches them), so
a broken policy module only breaks that policy, and ``-list-policies`` imports all.
"""

from __future__ import annotations

import importlib
import textwrap
from types import MappingProxyType
from typing import Any, Dict, Mapping, Tuple, Type

from cri_resmgr.errors import PolicyError
from cri_resmgr.policy.base import Policy
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.topology import Topology

__all__ = [
    "POLICIES",
    "Policy",
    "aliases",
    "canonical",
    "checked",
    "create",
    "describe_all",
    "get",
    "names",
]

#: canonical policy name -> "module:Class", in the order -list-policies shows them
POLICIES: Mapping[str, str] = MappingProxyType(
    {
        "none": "cri_resmgr.policy.none:NonePolicy",
        "static": "cri_resmgr.policy.static:StaticPolicy",
        "topology-aware": "cri_resmgr.policy.topology_aware:TopologyAwarePolicy",
        "balloons": "cri_resmgr.policy.balloons:BalloonsPolicy",
    }
)


def _load(name: str) -> Type[Policy]:
    module_name, _, class_name = POLICIES[name].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Policy)) or cls.NAME != name:
        raise TypeError(f"{POLICIES[name]} is not the Policy subclass with NAME {name!r}")
    return cls


def names() -> Tuple[str, ...]:
    """Canonical names of the registered policies, in table order."""
    return tuple(POLICIES)


def aliases() -> Mapping[str, str]:
    """Alias -> canonical name for every registered policy (imports them all)."""
    table: Dict[str, str] = {}
    for name in POLICIES:
        for alias in _load(name).ALIASES:
            table[alias] = name
    return table


def canonical(name: str) -> str:
    """The canonical name of a policy name or alias; `PolicyError` if unknown."""
    if name in POLICIES:
        return name
    table = aliases()
    if name in table:
        return table[name]
    known = ", ".join(
        n + "".join(f" (alias {a})" for a, c in table.items() if c == n) for n in POLICIES
    )
    raise PolicyError(f"unknown policy {name!r}; available: {known}")


def get(name: str) -> Type[Policy]:
    """The class of policy ``name`` (canonical name or alias); `PolicyError` if unknown."""
    return _load(canonical(name))


def create(name: str, topology: Topology, reserved: CPUSet, options: Mapping[str, Any]) -> Policy:
    """Instantiate policy ``name`` (options: the ``[policy.NAME]`` values)."""
    return get(name)(topology, reserved, options)


def checked(topology: Topology, config: Any) -> Tuple[Type[Policy], CPUSet]:
    """The class and reserved CPUs of the policy ``config`` (a `config.Config`) names,
    checked against ``topology`` (`Policy.validate`): what the service does at start and
    on reload, and ``simulate`` before a scenario. Raises ConfigError naming the file,
    line and key of what does not fit."""
    from cri_resmgr.policy.reserve import resolve_reserved  # noqa: PLC0415

    name = config.policy_name
    setting = config.setting("policy", "reserved-cpus")
    reserved = resolve_reserved(
        topology, setting.value, file=setting.file or setting.source, line=setting.line
    )
    cls = get(name)
    cls.validate(topology, reserved, config.policy_options(name), config=config)
    return cls, reserved


def describe_all() -> str:
    """The ``-list-policies`` text: per policy its name, aliases, one-line summary and
    manual (the class docstring), separated by blank lines."""
    blocks = []
    for name in POLICIES:
        cls = _load(name)
        manual = cls.description()
        summary, _, rest = manual.partition("\n")
        head = name
        if cls.ALIASES:
            head += f" (alias{'es' if len(cls.ALIASES) > 1 else ''} {', '.join(cls.ALIASES)})"
        block = f"{head}: {summary.strip()}"
        rest = rest.strip("\n")
        if rest:
            block += "\n" + textwrap.indent(rest, "    ")
        blocks.append(block)
    return "\n\n".join(blocks) + "\n"
