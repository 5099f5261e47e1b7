"""The state file's format, version 1: its records and the checks a file must pass.

Ownership: what ``state.json`` holds (`ContainerEntry`; `Pod` and `Container` come
from ``policy.base``, `LinuxResources` from ``podspec``), their JSON form
(`record_json`, `ContainerEntry.to_json`), and `decode`: bytes -> checked records, or
`Corrupt` naming the record, the field, its value and what was expected. Reading the
file, moving a bad one aside and writing are ``state.py``'s.

Every field of every record is checked (schemas `_POD`, `_CONTAINER`, `_RESOURCES`,
`_PLACEMENT`, `_ENTRY`): the type (a bool is true or false, an integer is no bool and
no 1.0), the range of the protobuf field a value is sent in (int64), the enumerations
(QoS class, CPU class), text that protobuf can encode, labels and annotations as maps
of str -> str, placement CPU sets that `CPUSet.parse` reads, and that a record's id is
the key it is filed under. Everything that decodes can be sent back to the runtime.
A missing optional field takes its default; unknown fields are ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Tuple

from cri_resmgr.errors import shorten
from cri_resmgr.podspec import QOS_CLASSES, LinuxResources
from cri_resmgr.policy.base import BESTEFFORT, CPU_CLASSES, SHARED, Container, Placement, Pod
from cri_resmgr.resources.cpuset import CPUSet

__all__ = ["VERSION", "ContainerEntry", "Corrupt", "Document", "decode", "record_json"]

VERSION = 1


@dataclass
class ContainerEntry:
    """One container as the state keeps it.

    `resources` are the CPU/memory fields kubelet last asked for (CreateContainer or
    UpdateContainerResources), re-sent with our cpusets when a placement changes.
    `placement` is None for containers the policy did not place (policy none,
    ``on-error = pass``) and after StopContainer released it (`stopped`).
    """

    container: Container
    resources: LinuxResources = LinuxResources()
    placement: Optional[Placement] = None
    stopped: bool = False

    def to_json(self) -> Dict[str, Any]:
        return {
            "container": record_json(self.container),
            "resources": self.resources.to_json(),
            "placement": None if self.placement is None else self.placement.to_json(),
            "stopped": self.stopped,
        }


def record_json(record: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for f in fields(record):
        value = getattr(record, f.name)
        out[f.name] = dict(value) if isinstance(value, Mapping) else value
    return out


# --- what a version 1 file may hold: every field of every record is checked on load

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
#: the largest milli-CPU amount `podspec.estimate` gives for int64 CFS fields (quota
#: 2^63-1 µs over a period of 1 µs): the pod and container records' CPU estimates
#: are 0..this, so every file cri-resmgr writes passes the check
MAX_MILLI_CPU = _INT64_MAX * 1000
#: versions that name a moved-aside copy (``state.json.v<N>-...``); any other value
#: of ``version`` makes the file corrupt (a 300-digit name cannot be created)
MAX_NAMED_VERSION = 10**9 - 1

_REQUIRED = object()  # default of a field that must be there


class Corrupt(ValueError):
    """The state file cannot be used; `suffix` names the moved-aside copy."""

    def __init__(self, reason: str, suffix: str = "corrupt") -> None:
        super().__init__(reason)
        self.suffix = suffix


class _Bad(Exception):
    """A JSON value that does not fit its field. `at` is the path below the field
    (``["key"]`` of a map) where `value` was found; empty: the field's value."""

    def __init__(self, expected: str, at: str = "", value: Any = None) -> None:
        super().__init__(expected)
        self.expected = expected
        self.at = at
        self.value = value


def _show(value: Any) -> str:
    """A JSON value as a message shows it: its JSON text (shortened) and its kind."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        kind = "a boolean"
    elif isinstance(value, int):
        kind = "an integer"
    elif isinstance(value, float):
        kind = "a number with a fraction or an exponent"
    elif isinstance(value, str):
        kind = "a string"
    elif isinstance(value, list):
        kind = f"a list of {len(value)} item{'' if len(value) == 1 else 's'}"
    elif isinstance(value, dict):
        kind = f"an object of {len(value)} field{'' if len(value) == 1 else 's'}"
    else:  # pragma: no cover - json.loads gives nothing else
        kind = type(value).__name__
    if isinstance(value, (list, dict)) and len(value) > 8:
        text = "[...]" if isinstance(value, list) else "{...}"
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**40:
        text = shorten(str(value), 30)  # no 4000-digit numbers in the log
    else:
        try:
            text = json.dumps(value)  # ASCII: lone surrogates are shown escaped
        except (RecursionError, ValueError):
            text = "[...]" if isinstance(value, list) else "{...}"
    return f"{shorten(text, 60)} ({kind})"


def _key(key: str) -> str:
    """A record key as a message names it: JSON-quoted, long ones shortened."""
    return shorten(json.dumps(key), 90)


class _Check:
    """A field's check: `convert` takes the JSON value and gives the record's, or
    raises `_Bad`; `expected` says what fits, for the message."""

    def __init__(self, expected: str, convert: Callable[[Any], Any]) -> None:
        self.expected = expected
        self.convert = convert

    def __call__(self, value: Any) -> Any:
        return self.convert(value)


def _is_text(value: Any) -> bool:
    """A str that is valid Unicode: protobuf and the log must be able to encode it
    (JSON's ``\\ud800`` escapes decode to unpaired surrogates, which they cannot)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_TEXT_EXPECTED = "a string"
_SURROGATES = "text without unpaired \\ud800-\\udfff escapes (protobuf cannot send them)"


def _text_value(value: Any) -> str:
    if not _is_text(value):
        raise _Bad(_SURROGATES if isinstance(value, str) else _TEXT_EXPECTED)
    return value  # type: ignore[no-any-return]


_TEXT = _Check(_TEXT_EXPECTED, _text_value)


def _integer(low: int, high: int, what: str) -> _Check:
    expected = f"an integer in {low}..{high} ({what})"

    def convert(value: Any) -> int:
        # type() rather than isinstance(): true and false are no integers here
        if type(value) is not int or not low <= value <= high:
            raise _Bad(expected)
        return value

    return _Check(expected, convert)


def _int64(proto_field: str) -> _Check:
    return _integer(_INT64_MIN, _INT64_MAX, f"int64, as {proto_field}")


_MILLI = _integer(0, MAX_MILLI_CPU, "milli-CPUs")
_BYTES = _integer(0, _INT64_MAX, "bytes")


def _one_of(*allowed: str) -> _Check:
    expected = "one of " + ", ".join(json.dumps(a) for a in allowed)

    def convert(value: Any) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise _Bad(expected)
        return value

    return _Check(expected, convert)


def _boolean_value(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad("true or false")
    return value


_BOOLEAN = _Check("true or false", _boolean_value)

_CPUSET_EXPECTED = (
    'a CPU list in the kernel\'s syntax, e.g. "0-3,8" (ids 0..65535, ranges low-high, '
    'no spaces; "" is the empty set)'
)


def _cpuset_value(value: Any) -> CPUSet:
    if not isinstance(value, str):
        raise _Bad(_CPUSET_EXPECTED)
    try:
        return CPUSet.parse(value)
    except ValueError as exc:
        # CPUSet's message says what is wrong and what the syntax is
        raise _Bad(f"{_CPUSET_EXPECTED}; {str(exc).split('; expected ', 1)[0]}") from None


_CPUSET = _Check(_CPUSET_EXPECTED, _cpuset_value)


def _nullable(check: _Check) -> _Check:
    expected = f"null or {check.expected}"

    def convert(value: Any) -> Any:
        if value is None:
            return None
        try:
            return check(value)
        except _Bad as bad:
            raise _Bad(f"null or {bad.expected}") from None

    return _Check(expected, convert)


def _labels_value(value: Any) -> Dict[str, str]:
    if not isinstance(value, dict):
        raise _Bad(_LABELS.expected)
    for name, text in value.items():
        if not _is_text(name):  # JSON keys are strings: only surrogates are wrong
            raise _Bad(f"a name that is {_SURROGATES}", at=f"[{_key(name)}]", value=text)
        if not _is_text(text):
            expected = _SURROGATES if isinstance(text, str) else _TEXT_EXPECTED
            raise _Bad(expected, at=f"[{_key(name)}]", value=text)
    return dict(value)


#: labels and annotations: str -> str (kubelet's maps)
_LABELS = _Check("an object of strings (name -> text)", _labels_value)


def _object_value(value: Any) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad("an object")
    return value


_OBJECT = _Check("an object", _object_value)


#: field -> (check, default); a missing field takes its default (_REQUIRED: an error)
_Schema = Mapping[str, Tuple[_Check, Any]]

_POD: _Schema = {
    "id": (_TEXT, _REQUIRED),
    "uid": (_TEXT, _REQUIRED),
    "name": (_TEXT, _REQUIRED),
    "namespace": (_TEXT, _REQUIRED),
    "qos": (_one_of(*QOS_CLASSES), BESTEFFORT),
    "cgroup_parent": (_TEXT, ""),
    "annotations": (_LABELS, {}),
    "labels": (_LABELS, {}),
    "cpu_request": (_MILLI, 0),
    "cpu_limit": (_MILLI, 0),
    "memory_limit": (_BYTES, 0),
    "overhead_cpu": (_MILLI, 0),
    "overhead_memory": (_BYTES, 0),
}
_CONTAINER: _Schema = {
    "id": (_TEXT, _REQUIRED),
    "pod_id": (_TEXT, _REQUIRED),
    "name": (_TEXT, _REQUIRED),
    "pod_name": (_TEXT, _REQUIRED),
    "namespace": (_TEXT, _REQUIRED),
    "qos": (_one_of(*QOS_CLASSES), BESTEFFORT),
    "cpu_request": (_MILLI, 0),
    "cpu_limit": (_MILLI, 0),
    "memory_limit": (_BYTES, 0),
    "annotations": (_LABELS, {}),
    "pod_annotations": (_LABELS, {}),
    # what the request asked for: kubelet's text, kept verbatim (not parsed)
    "cpuset_cpus": (_TEXT, ""),
    "cpuset_mems": (_TEXT, ""),
}
_RESOURCES: _Schema = {
    **{
        name: (_int64(f"LinuxContainerResources.{name}"), 0)
        for name in (
            "cpu_period",
            "cpu_quota",
            "cpu_shares",
            "memory_limit_in_bytes",
            "oom_score_adj",
        )
    },
    # kubelet's text, sent back verbatim to the runtime (not parsed)
    "cpuset_cpus": (_TEXT, ""),
    "cpuset_mems": (_TEXT, ""),
}
_PLACEMENT: _Schema = {
    "cpus": (_CPUSET, _REQUIRED),
    "mems": (_nullable(_CPUSET), None),
    "class": (_one_of(*CPU_CLASSES), SHARED),
    "pool": (_TEXT, ""),
    "cpu_shares": (_nullable(_int64("LinuxContainerResources.cpu_shares")), None),
    "exclusive": (_CPUSET, CPUSet()),
}
_ENTRY: _Schema = {
    "container": (_OBJECT, _REQUIRED),
    "resources": (_OBJECT, {}),
    "placement": (_nullable(_OBJECT), None),
    "stopped": (_BOOLEAN, False),
}


def _fields(where: str, data: Any, schema: _Schema) -> Dict[str, Any]:
    """The fields of `schema` read from the JSON object `data`, found at `where` in
    the file, each checked. A missing field takes its default; fields the schema does
    not have are ignored. `Corrupt` names the field, its value and what fits."""
    if not isinstance(data, dict):
        raise Corrupt(f"{where} is {_show(data)}; expected an object")
    out: Dict[str, Any] = {}
    for name, (check, default) in schema.items():
        if name not in data:
            if default is _REQUIRED:
                raise Corrupt(f"{where} has no {name!r}; expected {check.expected}")
            out[name] = dict(default) if isinstance(default, dict) else default
            continue
        value = data[name]
        try:
            out[name] = check(value)
        except _Bad as bad:
            shown = bad.value if bad.at else value
            raise Corrupt(
                f"{where}.{name}{bad.at} is {_show(shown)}; expected {bad.expected}"
            ) from None
    return out


def _filed_under(where: str, key: str, record_id: str) -> None:
    """A record's id is the key it is filed under (`State.put_pod`, `put_container`)."""
    if record_id != key:
        raise Corrupt(
            f"{where}.id is {_show(record_id)}; expected {_key(key)}, the key it is filed under"
        )


def _pod(key: str, data: Any) -> Pod:
    where = f"pods[{_key(key)}]"
    values = _fields(where, data, _POD)
    _filed_under(where, key, values["id"])
    return Pod(**values)


def _container_entry(key: str, data: Any) -> ContainerEntry:
    where = f"containers[{_key(key)}]"
    entry = _fields(where, data, _ENTRY)
    container = _fields(f"{where}.container", entry["container"], _CONTAINER)
    _filed_under(f"{where}.container", key, container["id"])
    resources = _fields(f"{where}.resources", entry["resources"], _RESOURCES)
    placement = None
    if entry["placement"] is not None:
        p = _fields(f"{where}.placement", entry["placement"], _PLACEMENT)
        placement = Placement(
            cpus=p["cpus"],
            mems=p["mems"],
            cpu_class=p["class"],
            pool=p["pool"],
            cpu_shares=p["cpu_shares"],
            exclusive=p["exclusive"],
        )
    return ContainerEntry(
        container=Container(**container),
        resources=LinuxResources(**resources),
        placement=placement,
        stopped=entry["stopped"],
    )


def _records(name: str, data: Dict[str, Any]) -> Dict[str, Any]:
    """The top-level object `name` (``pods`` or ``containers``) of the file."""
    if name not in data:
        raise Corrupt(f"it has no {name!r}; expected an object of records")
    records = data[name]
    if not isinstance(records, dict):
        raise Corrupt(f"{name} is {_show(records)}; expected an object of records")
    return records


class Document(NamedTuple):
    """A decoded state file: the JSON object, its policy, pods and containers."""

    data: Dict[str, Any]
    policy: str
    pods: Dict[str, Pod]
    containers: Dict[str, ContainerEntry]


def decode(raw: bytes) -> Document:
    """The checked contents of a state file's bytes; `Corrupt` says what does not fit
    (and, for a file of another version, names the moved-aside copy)."""
    if not raw.strip():
        raise Corrupt("it is empty")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Corrupt(f"it is not JSON ({exc})") from None
    except RecursionError:
        raise Corrupt(
            "its arrays or objects nest too deeply for the JSON parser (a version 1 "
            "file nests objects 5 deep)"
        ) from None
    if not isinstance(data, dict):
        raise Corrupt(
            f"it is {_show(data)}; expected an object of version, policy, pods and containers"
        )
    if "version" not in data:
        raise Corrupt(f"it has no 'version'; expected the integer {VERSION}")
    version = data["version"]
    if type(version) is not int:  # not true, not 1.0
        raise Corrupt(f"version is {_show(version)}; expected the integer {VERSION}")
    if version != VERSION:
        if not 0 <= version <= MAX_NAMED_VERSION:
            raise Corrupt(
                f"version is {_show(version)}; expected the integer {VERSION} "
                f"(a version of another cri-resmgr is 0..{MAX_NAMED_VERSION})"
            )
        newer = " (written by a newer cri-resmgr)" if version > VERSION else ""
        raise Corrupt(
            f"it is version {version}{newer}; this cri-resmgr reads version {VERSION}",
            suffix=f"v{version}",
        )
    if "policy" not in data:
        raise Corrupt(f"it has no 'policy'; expected {_TEXT_EXPECTED}")
    for name, check in (("policy", _TEXT), ("saved", _TEXT)):
        if name in data:
            try:
                check(data[name])
            except _Bad as bad:
                raise Corrupt(f"{name} is {_show(data[name])}; expected {bad.expected}") from None
    pods = {key: _pod(key, v) for key, v in _records("pods", data).items()}
    containers = {key: _container_entry(key, v) for key, v in _records("containers", data).items()}
    return Document(data, data["policy"], pods, containers)
