"""Pointing kubelet at the cri-resmgr relay and back (`cri-resmgr kubelet ...`).

This module owns three things:

* finding every place on a host (or in a directory tree given as ``root``) where kubelet
  gets its CRI runtime endpoint: the ``--container-runtime-endpoint`` flag in the
  variables the kubelet systemd unit expands (kubeadm's
  ``/var/lib/kubelet/kubeadm-flags.env``, ``KUBELET_EXTRA_ARGS`` in
  ``/etc/default/kubelet`` or ``/etc/sysconfig/kubelet``, ``Environment=`` and
  ``ExecStart=`` lines of the unit and its drop-ins), ``containerRuntimeEndpoint`` in the
  KubeletConfiguration file named by ``--config`` and in the ``*.conf`` drop-ins of
  ``--config-dir``;
* rewriting those settings to the relay socket with targeted text edits that keep every
  other byte of the files, after saving the original bytes and a manifest under the
  backup directory (default ``/var/lib/cri-resmgr/kubelet-backup``);
* restoring the saved bytes exactly (``disable``), without clobbering edits made to a
  file after ``enable``.

Precedence, as kubelet applies it (lowest first): the ``--config`` file, the
``--config-dir`` drop-ins in file-name order, command-line flags (the last occurrence of a
flag on the command line wins).  ``enable`` points *every* place kubelet reads that names
an endpoint at the relay, so the result does not depend on which one wins today nor on
one of them being removed later.  See ``docs/kubelet.md`` for the decisions and how to
undo by hand.

All host paths are absolute paths as kubelet sees them; they are joined onto ``root``
only when files are read or written.  Nothing here touches the host at import time.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import errno
import hashlib
import json
import logging
import os
import posixpath
import re
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import yaml

from cri_resmgr.errors import Error

log = logging.getLogger(__name__)

RELAY_ENDPOINT = "unix:///var/run/cri-resmgr/cri-resmgr.sock"
"""The CRI endpoint of the relay: what ``enable`` points kubelet at."""

DEFAULT_BACKUP_DIR = "/var/lib/cri-resmgr/kubelet-backup"
"""Where ``enable`` saves original bytes and the manifest (joined onto the root)."""

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1

ENDPOINT_FLAG = "--container-runtime-endpoint"
ENDPOINT_KEY = "containerRuntimeEndpoint"
EXTRA_ARGS_VAR = "KUBELET_EXTRA_ARGS"

KUBEADM_FLAGS_ENV = "/var/lib/kubelet/kubeadm-flags.env"
DEFAULT_CONFIG_FILE = "/var/lib/kubelet/config.yaml"
USER_ENV_FILES = ("/etc/default/kubelet", "/etc/sysconfig/kubelet")
DEFAULT_ENV_FILES = (KUBEADM_FLAGS_ENV, *USER_ENV_FILES)

UNIT_NAME = "kubelet.service"
# systemd's system unit search path, highest priority first.
UNIT_DIRS = (
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
)

DROPIN_NAME = "99-cri-resmgr.conf"
"""The ``--config-dir`` drop-in ``enable`` creates when no place sets the endpoint."""

KUBELET_CONFIG_HEADER = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"

FORMAT_FLAGS = "flags"  # env files and systemd units: flags inside shell-like words
FORMAT_YAML = "yaml"  # KubeletConfiguration files (YAML or JSON)

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_LINE_RE = re.compile(r"[ \t]*(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_]*)[ \t]*=[ \t]*")
_VARREF_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_ENDPOINT_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'#\\,{}\[\]]+")


class KubeletConfigError(Error):
    """Kubelet's configuration cannot be read or changed as asked; the message names the
    file (and line) at fault and what to do."""


class KubeletUsageError(KubeletConfigError):
    """An option of ``cri-resmgr kubelet`` has a value it cannot take (exit status 2)."""


def _os_error(exc: OSError, verb: str, shown: str) -> KubeletConfigError:
    """A KubeletConfigError for a failed file operation: which path, the OS error, and
    what to do about it."""
    if exc.errno == errno.ENOENT:
        hint = (
            "it changed while the command ran (kubeadm, or another `cri-resmgr kubelet`?); "
            "run the command again"
        )
    elif exc.errno == errno.ENOTDIR:
        hint = "a file stands where a directory belongs on that path; move it away"
    else:
        hint = "run as root, or use --root for a directory tree"
    return KubeletConfigError(f"cannot {verb} {shown}: {exc.strerror or exc}; {hint}")


def _file_mode(host: str, shown: str) -> int:
    """The permission bits of a file (symlinks followed)."""
    try:
        return os.stat(host).st_mode & 0o7777
    except OSError as exc:
        raise _os_error(exc, "read the mode of", shown) from exc


def _remove(host: str, shown: str) -> None:
    """Remove a file; one that is gone already is fine."""
    try:
        os.unlink(host)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _os_error(exc, "remove", shown) from exc


# --- small text helpers ----------------------------------------------------------------


def _line_of(text: str, offset: int) -> int:
    """1-based line number of a character offset."""
    return text.count("\n", 0, offset) + 1


def _newline(text: str) -> str:
    """The newline convention of a text ("\\r\\n" if it uses one, else "\\n")."""
    return "\r\n" if "\r\n" in text else "\n"


def _logical_lines(text: str) -> Iterator[Tuple[int, int]]:
    """Spans (start, end) of logical lines: a backslash at the end joins the next line.

    The end excludes the newline (and a carriage return before it)."""
    i, n = 0, len(text)
    while i < n:
        j = i
        while True:
            k = text.find("\n", j)
            if k == -1:
                k = n
            e = k - 1 if k > j and text[k - 1] == "\r" else k
            if k < n and e > j and text[e - 1] == "\\":
                j = k + 1
                continue
            break
        yield i, e
        i = k + 1


def _split_words(text: str, start: int, end: int) -> List[Tuple[str, int, int]]:
    """Split text[start:end] into shell-like words: (unquoted word, raw start, raw end).

    Single and double quotes group words; a backslash escapes the next character (and
    a backslash-newline joins lines), like systemd does for unit settings."""
    words: List[Tuple[str, int, int]] = []
    i = start
    while i < end:
        if text[i].isspace():
            i += 1
            continue
        if text[i] == "\\" and i + 1 < end and text[i + 1] in "\r\n":
            i += 2
            continue
        wstart, buf = i, []
        while i < end and not text[i].isspace():
            c = text[i]
            if c in "\"'":
                i += 1
                while i < end and text[i] != c:
                    if c == '"' and text[i] == "\\" and i + 1 < end:
                        i += 1
                    buf.append(text[i])
                    i += 1
                i += 1
            elif c == "\\" and i + 1 < end:
                if text[i + 1] not in "\r\n":
                    buf.append(text[i + 1])
                i += 2
            else:
                buf.append(c)
                i += 1
        words.append(("".join(buf), wstart, min(i, end)))
    return words


def _flag_re(name: str) -> re.Pattern[str]:
    """A regex finding ``name=VALUE`` or ``name VALUE`` with VALUE as group 1.

    VALUE is a quoted string or a run of characters without blanks, quotes or
    backslashes, so that the quotes around a whole variable value are not part of it."""
    return re.compile(
        r"(?<![^\s\"'=])" + re.escape(name) + r"(?:=|[ \t]+)(\"[^\"\n]*\"|'[^'\n]*'|[^\s\"'\\]*)"
    )


def _find_flag(text: str, start: int, end: int, name: str) -> List[Tuple[str, int, int]]:
    """Occurrences of a flag in text[start:end]: (unquoted value, value start, value end).

    The value span excludes quotes around the value, so replacing it keeps them."""
    found = []
    for m in _flag_re(name).finditer(text, start, end):
        vs, ve = m.span(1)
        raw = m.group(1)
        if len(raw) >= 2 and raw[0] in "\"'" and raw[-1] == raw[0]:
            vs, ve = vs + 1, ve - 1
        found.append((text[vs:ve], vs, ve))
    return found


def _normalize_endpoint(endpoint: str) -> str:
    """A comparable form of an endpoint: bare paths get ``unix://``; /var/run is /run."""
    ep = endpoint.strip()
    if ep.startswith("/"):
        ep = "unix://" + ep
    if ep.startswith("unix://"):
        path = posixpath.normpath(ep[len("unix://") :] or "/")
        if path.startswith("/var/run/"):
            path = "/run/" + path[len("/var/run/") :]
        ep = "unix://" + path
    return ep


def same_endpoint(a: str, b: str) -> bool:
    """Whether two CRI endpoints name the same socket (``/var/run`` is ``/run``)."""
    return bool(a.strip()) and _normalize_endpoint(a) == _normalize_endpoint(b)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def host_path(root: str, path: str) -> str:
    """The file that ``path`` names when ``root`` is ``/``, symlinks resolved inside root.

    An absolute symlink target (``/lib -> /usr/lib``) is taken relative to ``root``, so a
    directory tree never leads to the files of the machine running the command."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: List[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = os.path.join(root, *done, part)
        if os.path.islink(candidate):
            links += 1
            if links > 40:
                raise KubeletConfigError(f"{path}: too many levels of symbolic links under {root}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        done.append(part)
    return os.path.join(root, *done)


# --- YAML (read only: edits are done on the text, at the spans PyYAML reports) --------


def _yaml_mapping(text: str, path: str) -> Optional[yaml.MappingNode]:
    """The top-level mapping node of a KubeletConfiguration file (None if empty)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = getattr(exc, "problem", None) or str(exc)
        raise KubeletConfigError(
            f"{where}: not valid YAML/JSON ({problem}); kubelet cannot read it either: "
            "fix the file and run the command again"
        ) from exc
    if node is None:
        return None
    if not isinstance(node, yaml.MappingNode):
        raise KubeletConfigError(
            f"{path}:{node.start_mark.line + 1}: expected a KubeletConfiguration mapping "
            f"(apiVersion, kind, ...) at the top level, found a {node.id}"
        )
    return node


def _yaml_key_values(
    node: Optional[yaml.MappingNode], key: str, path: str
) -> List[Tuple[str, int, int, int]]:
    """Occurrences of a top-level scalar key: (value, start, end, line).

    The span covers the value without its quotes; an empty value (``key:``) has an empty
    span right after the colon."""
    found: List[Tuple[str, int, int, int]] = []
    if node is None:
        return found
    for knode, vnode in node.value:
        if not (isinstance(knode, yaml.ScalarNode) and knode.value == key):
            continue
        if not isinstance(vnode, yaml.ScalarNode) or vnode.style in ("|", ">"):
            raise KubeletConfigError(
                f"{path}:{vnode.start_mark.line + 1}: {key} must be a plain or quoted "
                "string; edit it by hand"
            )
        start, end = vnode.start_mark.index, vnode.end_mark.index
        if vnode.style in ('"', "'"):
            start, end = start + 1, end - 1
        value = "" if vnode.tag == "tag:yaml.org,2002:null" else vnode.value
        found.append((value, start, end, vnode.start_mark.line + 1))
    return found


# --- public result types ---------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One place that sets a kubelet option.

    ``layer`` is ``flag`` (command line), ``drop-in`` (a ``--config-dir`` file) or
    ``config`` (the ``--config`` file); ``source`` names the variable or unit line
    (``KUBELET_KUBEADM_ARGS``, ``ExecStart``) or the YAML key.  ``read`` is False for
    places kubelet does not read (a variable its unit does not expand, or one that a
    later assignment overrides); ``effective`` marks the one whose value kubelet uses."""

    path: str
    line: int
    layer: str
    source: str
    name: str
    value: str
    read: bool = True
    effective: bool = False
    start: int = field(default=0, repr=False, compare=False)
    end: int = field(default=0, repr=False, compare=False)
    rank: Tuple[int, int, int] = field(default=(0, 0, 0), repr=False, compare=False)

    def describe(self, state: bool = True) -> str:
        """One line: where, what, and (``state``) whether it is in effect."""
        if self.layer == "flag":
            what = f"{self.name} in {self.source}"
        elif self.layer == "drop-in":
            what = f"{self.name} (--config-dir drop-in)"
        else:
            what = f"{self.name} (--config file)"
        line = f"{self.path}:{self.line}: {what} = {self.value or '(empty)'}"
        if not state:
            return line
        if self.effective:
            return line + " [in effect]"
        return line + (" [overridden]" if self.read else " [not read by kubelet]")


@dataclass
class Report:
    """What ``enable``, ``disable`` or ``status`` found, did (or would do) and warns about.

    Paths are host paths (as kubelet sees them, without the root).  ``problems`` are
    things that were asked for but not done; ``main`` exits 1 when there are any."""

    action: str
    root: str
    endpoint: str
    dry_run: bool = False
    points_at_relay: bool = False
    effective: Optional[Setting] = None
    found: List[Setting] = field(default_factory=list)
    changed: List[str] = field(default_factory=list)
    created: List[str] = field(default_factory=list)
    removed: List[str] = field(default_factory=list)
    saved: List[str] = field(default_factory=list)
    previous_endpoints: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    diff: str = ""

    @property
    def ok(self) -> bool:
        """True when everything asked for was done."""
        return not self.problems

    def _headline(self) -> str:
        eff = self.effective
        if self.points_at_relay:
            now = f"kubelet points at the relay ({self.endpoint})"
        elif eff is not None:
            now = f"kubelet does not point at the relay ({self.endpoint}); it uses {eff.value}"
        else:
            now = (
                f"kubelet does not point at the relay ({self.endpoint}); its runtime endpoint "
                "is set nowhere (kubelet's built-in default applies)"
            )
        if self.action == "status":
            return now
        touched = self.changed or self.created or self.removed
        if self.dry_run:
            return f"{self.action} (dry run, nothing written): " + (
                "the changes are below" if touched else "nothing to change"
            )
        return f"{self.action}: {'done' if touched else 'nothing changed'}; {now}"

    def __str__(self) -> str:
        lines = [self._headline()]
        if self.effective is not None:
            lines.append(f"  in effect: {self.effective.describe(state=False)}")
        others = [s for s in self.found if not s.effective]
        if others:
            lines.append("  also set:")
            lines.extend(f"    {s.describe()}" for s in others)
        for verb, paths in (
            ("change", self.changed),
            ("create", self.created),
            ("remove", self.removed),
        ):
            label = f"would {verb}" if self.dry_run else f"{verb}d"
            lines.extend(f"  {label}: {p}" for p in paths)
        if self.saved:
            lines.append("  saved by enable (disable restores them): " + ", ".join(self.saved))
        if self.previous_endpoints:
            lines.append("  runtime endpoint before enable: " + ", ".join(self.previous_endpoints))
        lines.extend(f"warning: {w}" for w in self.warnings)
        lines.extend(f"error: {p}" for p in self.problems)
        lines.extend(f"note: {n}" for n in self.notes)
        if self.diff:
            lines.append(self.diff.rstrip("\n"))
        return "\n".join(lines)


# --- reading the layout ----------------------------------------------------------------


@dataclass
class _Assign:
    """A variable assignment: NAME=VALUE, VALUE at text[start:end] of path."""

    var: str
    path: str
    start: int
    end: int


@dataclass
class _Source:
    """A span of text whose words kubelet gets as command-line arguments."""

    path: str
    start: int
    end: int
    label: str
    read: bool
    order: int


class _Scan:
    """A snapshot of where this kubelet's arguments and configuration come from."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.notes: List[str] = []
        self._texts: Dict[str, Optional[str]] = {}
        self._yaml: Dict[str, Optional[yaml.MappingNode]] = {}
        self.unit_files: List[str] = []
        self.env_files: List[str] = []  # EnvironmentFile= paths in order (may not exist)
        self.exec_vars: Optional[List[str]] = None  # None: no ExecStart found
        self.sources: List[_Source] = []
        self.assigns: List[_Assign] = []
        self.config_file: Optional[str] = None
        self.config_dir: Optional[str] = None
        self.dropins: List[str] = []
        self._discover()

    # file access

    def host(self, path: str) -> str:
        return host_path(self.root, path)

    def exists(self, path: str) -> bool:
        return os.path.isfile(self.host(path))

    def text(self, path: str) -> Optional[str]:
        """The file's text (None if it does not exist), cached for this scan."""
        if path not in self._texts:
            self._texts[path] = _read_text(self.host(path), path)
        return self._texts[path]

    def mapping(self, path: str) -> Optional[yaml.MappingNode]:
        if path not in self._yaml:
            text = self.text(path)
            self._yaml[path] = _yaml_mapping(text, path) if text is not None else None
        return self._yaml[path]

    # discovery

    def _unit_paths(self) -> List[str]:
        main: Optional[str] = None
        dropins: Dict[str, str] = {}
        seen: List[str] = []
        for d in UNIT_DIRS:
            real = self.host(d)
            if real in seen:
                continue  # /lib -> usr/lib
            seen.append(real)
            unit = posixpath.join(d, UNIT_NAME)
            if main is None and self.exists(unit):
                main = unit
            ddir = posixpath.join(d, UNIT_NAME + ".d")
            try:
                names = sorted(os.listdir(self.host(ddir)))
            except OSError:
                continue
            for name in names:
                if (
                    name.endswith(".conf")
                    and name not in dropins
                    and self.exists(posixpath.join(ddir, name))
                ):
                    dropins[name] = posixpath.join(ddir, name)
        paths = [main] if main else []
        return paths + [dropins[n] for n in sorted(dropins)]

    def _unit_settings(self, path: str) -> Iterator[Tuple[str, int, int]]:
        """(key, value start, value end) of the [Service] settings of a unit file."""
        text = self.text(path) or ""
        section = ""
        for s, e in _logical_lines(text):
            stripped = text[s:e].strip()
            if not stripped or stripped[0] in "#;":
                continue
            if stripped.startswith("[") and stripped.endswith("]"):
                section = stripped[1:-1].strip()
                continue
            key, sep, _ = text[s:e].partition("=")
            if not sep or section != "Service":
                continue
            vs = s + len(key) + 1
            while vs < e and text[vs] in " \t":
                vs += 1
            ve = e
            while ve > vs and text[ve - 1].isspace():
                ve -= 1
            yield key.strip(), vs, ve

    def _parse_units(self) -> Tuple[List[_Assign], Optional[Tuple[str, int, int]]]:
        unit_assigns: List[_Assign] = []
        exec_start: Optional[Tuple[str, int, int]] = None
        for path in self.unit_files:
            text = self.text(path) or ""
            for key, vs, ve in self._unit_settings(path):
                if key == "Environment":
                    if vs == ve:
                        unit_assigns = []
                    for word, ws, we in _split_words(text, vs, ve):
                        name, sep, _ = word.partition("=")
                        if sep and _NAME_RE.fullmatch(name):
                            unit_assigns.append(
                                _Assign(name, path, text.index("=", ws, we) + 1, we)
                            )
                elif key == "EnvironmentFile":
                    if vs == ve:
                        self.env_files = []
                    for word, _, _ in _split_words(text, vs, ve):
                        p = word[1:] if word.startswith("-") else word
                        if p.startswith("/") and "%" not in p:
                            self.env_files.append(p)
                elif key == "ExecStart":
                    exec_start = (path, vs, ve) if vs < ve else None
        return unit_assigns, exec_start

    def _parse_env_file(self, path: str) -> List[_Assign]:
        text = self.text(path)
        out: List[_Assign] = []
        if text is None:
            return out
        for s, e in _logical_lines(text):
            m = _ENV_LINE_RE.match(text, s, e)
            if not m:
                continue
            ve = e
            while ve > m.end() and text[ve - 1].isspace():
                ve -= 1
            out.append(_Assign(m.group(1), path, m.end(), ve))
        return out

    def _discover(self) -> None:
        self.unit_files = self._unit_paths()
        unit_assigns, exec_start = self._parse_units()
        if exec_start is None:
            what = "has no ExecStart=" if self.unit_files else "was not found"
            self.notes.append(
                f"{UNIT_NAME} {what} under {self.root}: took every variable in "
                f"{', '.join(self.env_files or DEFAULT_ENV_FILES)} as kubelet arguments"
            )
            if not self.env_files:
                self.env_files = [p for p in DEFAULT_ENV_FILES if self.exists(p)]
        file_assigns: List[_Assign] = []
        for p in self.env_files:
            file_assigns.extend(self._parse_env_file(p))
        self.assigns = unit_assigns + file_assigns
        if exec_start is None:
            self.sources = [
                _Source(a.path, a.start, a.end, a.var, True, i) for i, a in enumerate(self.assigns)
            ]
        else:
            self._sources_from_exec(exec_start, self.assigns)
        self._find_config()

    def _sources_from_exec(self, exec_start: Tuple[str, int, int], assigns: List[_Assign]) -> None:
        # systemd: EnvironmentFile= overrides Environment=, later assignments override
        # earlier ones; `assigns` is in that order already.
        final: Dict[str, _Assign] = {}
        for a in assigns:
            final[a.var] = a
        path, vs, ve = exec_start
        text = self.text(path) or ""
        self.exec_vars = []
        read_ids = set()
        order, pos = 0, vs
        for m in _VARREF_RE.finditer(text, vs, ve):
            self.sources.append(_Source(path, pos, m.start(), "ExecStart", True, order))
            # `order + 1`: the variable's words come after the literal text before it.
            var = m.group(1) or m.group(2)
            self.exec_vars.append(var)
            a = final.get(var)
            if a is not None:
                self.sources.append(_Source(a.path, a.start, a.end, var, True, order + 1))
                read_ids.add(id(a))
            order, pos = order + 2, m.end()
        self.sources.append(_Source(path, pos, ve, "ExecStart", True, order))
        for a in assigns:
            if id(a) not in read_ids:
                self.sources.append(_Source(a.path, a.start, a.end, a.var, False, -1))

    def _find_config(self) -> None:
        cfg = self._effective_flag("--config")
        if cfg is not None:
            self.config_file = posixpath.join("/", cfg)
        elif self.exec_vars is None and self.exists(DEFAULT_CONFIG_FILE):
            self.config_file = DEFAULT_CONFIG_FILE
        cdir = self._effective_flag("--config-dir")
        if cdir:
            self.config_dir = posixpath.join("/", cdir)
            try:
                names = sorted(os.listdir(self.host(self.config_dir)))
            except OSError:
                names = []
            self.dropins = [
                posixpath.join(self.config_dir, n)
                for n in names
                if n.endswith(".conf") and self.exists(posixpath.join(self.config_dir, n))
            ]

    def _effective_flag(self, name: str) -> Optional[str]:
        eff = _pick_effective(self.settings(name, None))
        return eff.value if eff is not None else None

    # settings

    def settings(self, flag: Optional[str], key: Optional[str]) -> List[Setting]:
        """Every place that sets ``flag`` / ``key``, with the effective one marked."""
        found: Dict[Tuple[str, int], Setting] = {}
        if flag:
            for src in self.sources:
                text = self.text(src.path) or ""
                for value, vs, ve in _find_flag(text, src.start, src.end, flag):
                    s = Setting(
                        src.path,
                        _line_of(text, vs),
                        "flag",
                        src.label,
                        flag,
                        value,
                        read=src.read,
                        start=vs,
                        end=ve,
                        rank=(2, src.order, vs) if src.read else (-1, 0, 0),
                    )
                    old = found.get((src.path, vs))
                    if old is None or s.rank > old.rank:
                        found[(src.path, vs)] = s
        if key:
            layers: List[Tuple[str, str, int]] = []
            if self.config_file and self.exists(self.config_file):
                layers.append((self.config_file, "config", 0))
            layers.extend((p, "drop-in", 1) for p in self.dropins)
            for i, (path, layer, level) in enumerate(layers):
                for value, vs, ve, line in _yaml_key_values(self.mapping(path), key, path):
                    found[(path, vs)] = Setting(
                        path, line, layer, key, key, value, start=vs, end=ve, rank=(level, i, vs)
                    )
        out = list(found.values())
        eff = _pick_effective(out)
        return [dataclasses.replace(s, effective=True) if s is eff else s for s in out]


def _pick_effective(settings: List[Setting]) -> Optional[Setting]:
    read = [s for s in settings if s.read]
    return max(read, key=lambda s: s.rank) if read else None


def _read_text(host_path: str, path: str) -> Optional[str]:
    try:
        with open(host_path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KubeletConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KubeletConfigError(
            f"{path}: not UTF-8 text ({exc}); cri-resmgr edits only UTF-8 files: edit it by hand"
        ) from exc


def _endpoint_occurrences(text: str, fmt: str, path: str) -> List[Tuple[str, int, int, int]]:
    """Every runtime endpoint setting in a whole file: (value, start, end, line)."""
    if fmt == FORMAT_YAML:
        return _yaml_key_values(_yaml_mapping(text, path), ENDPOINT_KEY, path)
    out = []
    for s, e in _logical_lines(text):
        stripped = text[s:e].lstrip()
        if stripped[:1] in ("#", ";"):
            continue
        for value, vs, ve in _find_flag(text, s, e, ENDPOINT_FLAG):
            out.append((value, vs, ve, _line_of(text, vs)))
    return out


# --- planning and applying changes -----------------------------------------------------


@dataclass
class _Edit:
    path: str
    fmt: str
    start: int
    end: int
    text: str
    old_raw: Optional[str] = None  # the replaced text; None for an insertion
    record: Optional[str] = None  # what `disable` takes out if the file changed (default: text)


@dataclass
class _FileChange:
    path: str
    fmt: str
    old: Optional[str]  # None: the file does not exist
    new: Optional[str]  # None: remove the file
    previous_values: List[str] = field(default_factory=list)
    inserted: List[str] = field(default_factory=list)


def _apply_edits(text: str, edits: List[_Edit]) -> str:
    for e in sorted(edits, key=lambda e: e.start, reverse=True):
        text = text[: e.start] + e.text + text[e.end :]
    return text


def _diff(changes: List[_FileChange]) -> str:
    out: List[str] = []
    for ch in changes:
        old = (ch.old or "").splitlines(keepends=True)
        new = (ch.new or "").splitlines(keepends=True)
        out.extend(
            difflib.unified_diff(
                old,
                new,
                fromfile=ch.path if ch.old is not None else "/dev/null",
                tofile=ch.path if ch.new is not None else "/dev/null",
            )
        )
    return "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in out
    )


def _undo_text(text: str, rec: Dict[str, Any], endpoints: List[str]) -> Tuple[str, List[str]]:
    """Take out of a file that changed after ``enable`` only what ``enable`` put in.

    Removes the text it inserted and sets values that still name the relay back to the
    value they replaced.  Returns the new text and the reasons it could not (if any)."""
    path, fmt = rec["path"], rec["format"]
    problems: List[str] = []
    new = text
    for ins in rec.get("inserted", []):
        count = new.count(ins)
        if count == 1:
            new = new.replace(ins, "", 1)
        elif count > 1:
            problems.append(
                f"{path}: the text enable added ({ins.strip()!r}) now appears {count} times"
            )
    try:
        occ = [
            o
            for o in _endpoint_occurrences(new, fmt, path)
            if any(same_endpoint(o[0], e) for e in endpoints)
        ]
    except KubeletConfigError as exc:
        return text, [str(exc)]
    prev = sorted(set(rec.get("previous_values", [])))
    if occ and len(prev) != 1:
        what = "unknown" if not prev else "ambiguous (" + ", ".join(prev) + ")"
        problems.append(
            f"{path}:{occ[0][3]}: still names the relay, and the value it replaced is {what}"
        )
    elif occ:
        for _, vs, ve, _ in sorted(occ, key=lambda o: o[1], reverse=True):
            new = new[:vs] + prev[0] + new[ve:]
    return (text if problems else new), problems


class KubeletWiring:
    """Points the kubelet of a host (or of a directory tree) at the relay and back.

    ``root`` is where the host's ``/`` is (``/`` on the host itself, an image or test
    directory otherwise); ``endpoint`` is what ``enable`` points kubelet at;
    ``backup_dir`` is where the original bytes and the manifest are kept (a host path,
    joined onto ``root``)."""

    def __init__(
        self,
        root: str = "/",
        endpoint: str = RELAY_ENDPOINT,
        backup_dir: str = DEFAULT_BACKUP_DIR,
    ) -> None:
        if not os.path.isdir(root):
            raise KubeletUsageError(
                f"--root {root!r}: not a directory; give the directory that is / for kubelet"
            )
        if not _ENDPOINT_RE.fullmatch(endpoint):
            raise KubeletUsageError(
                f"--endpoint {endpoint!r}: expected a CRI endpoint such as {RELAY_ENDPOINT} "
                "(scheme://address, without blanks, quotes, '#', ',' or brackets)"
            )
        if not backup_dir.startswith("/"):
            raise KubeletUsageError(
                f"--backup-dir {backup_dir!r}: must be an absolute path (it is joined onto --root)"
            )
        self.root = root
        self.endpoint = endpoint
        self.backup_dir = backup_dir

    # paths

    def _host(self, path: str) -> str:
        return host_path(self.root, path)

    def _backup_host(self, *parts: str) -> str:
        return self._host(posixpath.join(self.backup_dir, *[p.lstrip("/") for p in parts]))

    # manifest

    def _load_manifest(self) -> Optional[Dict[str, Any]]:
        path = self._backup_host(MANIFEST_NAME)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except OSError as exc:  # not the manifest's fault: permissions, a file for a dir
            raise _os_error(exc, "read", posixpath.join(self.backup_dir, MANIFEST_NAME)) from exc
        except ValueError as exc:
            raise KubeletConfigError(
                f"{posixpath.join(self.backup_dir, MANIFEST_NAME)}: unreadable ({exc}); "
                "restore the files listed in docs/kubelet.md by hand"
            ) from exc
        if (
            not isinstance(data, dict)
            or data.get("version") != MANIFEST_VERSION
            or not isinstance(data.get("files"), list)
        ):
            raise KubeletConfigError(
                f"{posixpath.join(self.backup_dir, MANIFEST_NAME)}: not a version "
                f"{MANIFEST_VERSION} manifest written by this cri-resmgr; restore the saved "
                f"files under {posixpath.join(self.backup_dir, 'files')} by hand"
            )
        return data

    def _save_manifest(self, manifest: Dict[str, Any]) -> None:
        path = self._backup_host(MANIFEST_NAME)
        if not manifest["files"]:
            _remove(path, posixpath.join(self.backup_dir, MANIFEST_NAME))
            self._prune_backup_dirs()
            return
        data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")
        _write_atomic(path, data, 0o600, posixpath.join(self.backup_dir, MANIFEST_NAME))

    def _prune_backup_dirs(self) -> None:
        top = self._host(self.backup_dir)
        for dirpath, _, _ in sorted(os.walk(top), key=lambda t: len(t[0]), reverse=True):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass

    # shared reporting

    def _report(self, action: str, scan: _Scan, dry_run: bool = False) -> Report:
        rep = Report(action, self.root, self.endpoint, dry_run=dry_run)
        rep.notes.extend(scan.notes)
        return rep

    def _fill_state(self, rep: Report, scan: _Scan) -> None:
        rep.found = scan.settings(ENDPOINT_FLAG, ENDPOINT_KEY)
        rep.effective = next((s for s in rep.found if s.effective), None)
        rep.points_at_relay = rep.effective is not None and same_endpoint(
            rep.effective.value, self.endpoint
        )

    def _warn(self, rep: Report, scan: _Scan) -> None:
        cpu = _pick_effective(scan.settings("--cpu-manager-policy", "cpuManagerPolicy"))
        if cpu is not None and cpu.value.strip().lower() == "static":
            rep.warnings.append(
                f"kubelet's CPU manager policy is static ({cpu.path}:{cpu.line}): kubelet and "
                "the cri-resmgr policy would both set container cpusets and undo each other; "
                "set cpuManagerPolicy to none (and remove /var/lib/kubelet/cpu_manager_state) "
                "before restarting kubelet"
            )
        for s in scan.settings("--container-runtime", None):
            if not s.read:
                continue
            where = f"{s.path}:{s.line}: --container-runtime={s.value} in {s.source}"
            if s.value == "remote":
                rep.warnings.append(
                    f"{where} is kept (kubelet < 1.24 needs it to use any CRI endpoint), but "
                    "kubelet 1.27 removed the flag and refuses to start with it: delete it "
                    "from that line before upgrading kubelet"
                )
            else:
                rep.warnings.append(
                    f"{where}: kubelet ignores the runtime endpoint unless this is 'remote', so "
                    "calls do not go through the relay; change it to remote (kubelet < 1.27) or "
                    "remove it (kubelet >= 1.24)"
                )
        img = _pick_effective(scan.settings("--image-service-endpoint", "imageServiceEndpoint"))
        if img is not None and img.value and not same_endpoint(img.value, self.endpoint):
            rep.notes.append(
                f"image service calls go straight to {img.value} ({img.path}:{img.line}), not "
                "through the relay; left as is (the policies do not need them)"
            )

    def _saved_state(self, rep: Report) -> Optional[Dict[str, Any]]:
        manifest = self._load_manifest()
        if manifest is not None:
            rep.saved = [r["path"] for r in manifest["files"]]
            rep.previous_endpoints = list(manifest.get("previous_endpoints", []))
        return manifest

    # status

    def status(self) -> Report:
        """Whether kubelet points at the relay, where that is set, and what is saved."""
        scan = _Scan(self.root)
        rep = self._report("status", scan)
        self._fill_state(rep, scan)
        try:
            self._saved_state(rep)
        except KubeletConfigError as exc:
            # Where kubelet's endpoint points does not depend on the backups: answer that
            # (removal scripts rely on it) and report the damaged manifest.
            rep.warnings.append(f"{exc} (`disable` cannot restore from it)")
        self._warn(rep, scan)
        for s in rep.found:
            if (
                s.read
                and not s.effective
                and not same_endpoint(s.value, self.endpoint)
                and rep.points_at_relay
            ):
                rep.notes.append(
                    f"{s.path}:{s.line} still names {s.value}; it is overridden now, but would "
                    "take effect if the setting in effect were removed (`enable` changes it too)"
                )
        return rep

    # enable

    def enable(self, dry_run: bool = False) -> Report:
        """Point kubelet at the relay, saving what is changed; a no-op when it already does."""
        scan = _Scan(self.root)
        rep = self._report("enable", scan, dry_run)
        self._fill_state(rep, scan)
        self._warn(rep, scan)
        targets = [s for s in rep.found if s.read]
        to_change = [s for s in targets if not same_endpoint(s.value, self.endpoint)]
        edits: List[_Edit] = []
        for s in to_change:
            text = scan.text(s.path) or ""
            if s.layer != "flag" and s.start == s.end and text[s.start - 1 : s.start] == ":":
                # `containerRuntimeEndpoint:` with no value: add one after the colon.
                edits.append(_Edit(s.path, FORMAT_YAML, s.start, s.end, " " + self.endpoint))
            else:
                fmt = FORMAT_FLAGS if s.layer == "flag" else FORMAT_YAML
                edits.append(
                    _Edit(s.path, fmt, s.start, s.end, self.endpoint, text[s.start : s.end])
                )
        if not targets:
            edits.append(self._plan_insertion(scan))
        if not edits:
            rep.notes.append("every place kubelet reads already names the relay; nothing to do")
            self._saved_state(rep)
            return rep
        changes = self._changes_from_edits(scan, edits)
        self._note_changes(rep, changes, enabling=True)
        if dry_run:
            rep.previous_endpoints = sorted({s.value for s in to_change if s.value})
            rep.diff = _diff(changes)
            return rep
        self._commit(scan, changes)
        self._fill_state(rep, _Scan(self.root))
        self._saved_state(rep)
        if not rep.points_at_relay:
            eff = rep.effective
            rep.problems.append(
                "after the change kubelet would still use "
                + (f"{eff.value} from {eff.path}:{eff.line}" if eff else "its built-in default")
                + "; set the endpoint there by hand, or report this layout as a bug"
            )
        else:
            rep.notes.append(
                "restart kubelet to use the relay (start cri-resmgr first): "
                "systemctl restart kubelet"
            )
        return rep

    def _plan_insertion(self, scan: _Scan) -> _Edit:
        """Where to add the endpoint when kubelet reads it from nowhere (see docs)."""
        flag = f"{ENDPOINT_FLAG}={self.endpoint}"
        # 1. a drop-in of our own in kubelet's --config-dir: nothing else is edited.
        if scan.config_dir and os.path.isdir(scan.host(scan.config_dir)):
            path = posixpath.join(scan.config_dir, DROPIN_NAME)
            if scan.exists(path):
                raise KubeletConfigError(
                    f"{path} exists but does not set {ENDPOINT_KEY}; remove it or add "
                    f"'{ENDPOINT_KEY}: {self.endpoint}' to it by hand"
                )
            line = f"{ENDPOINT_KEY}: {self.endpoint}\n"
            content = (
                "# Written by `cri-resmgr kubelet enable`; `cri-resmgr kubelet disable` "
                "removes it.\n" + KUBELET_CONFIG_HEADER + line
            )
            # If someone adds to this file, `disable` takes out only the endpoint line and
            # keeps a valid drop-in (apiVersion and kind stay).
            return _Edit(path, FORMAT_YAML, 0, 0, content, record=line)
        # 2. KUBELET_EXTRA_ARGS, the variable kubeadm leaves to the user.
        edit = self._plan_extra_args(scan, flag)
        if edit is not None:
            return edit
        # 3. the --config file.
        if scan.config_file and scan.exists(scan.config_file):
            text = scan.text(scan.config_file) or ""
            pos, ins = _yaml_insertion(
                text, scan.mapping(scan.config_file), self.endpoint, scan.config_file
            )
            return _Edit(scan.config_file, FORMAT_YAML, pos, pos, ins)
        raise KubeletConfigError(
            f"found no place under {self.root} where kubelet reads its runtime endpoint (looked "
            f"for {UNIT_NAME} and its drop-ins in {', '.join(UNIT_DIRS)}; for "
            f"{', '.join(DEFAULT_ENV_FILES)}; for {DEFAULT_CONFIG_FILE}); is kubelet installed? "
            f"Give the right --root, or add {flag} to kubelet's arguments by hand"
        )

    def _plan_extra_args(self, scan: _Scan, flag: str) -> Optional[_Edit]:
        if scan.exec_vars is not None:
            if EXTRA_ARGS_VAR not in scan.exec_vars:
                return None
            files = [p for p in scan.env_files if p != KUBEADM_FLAGS_ENV]
        else:
            files = [p for p in USER_ENV_FILES if scan.exists(p)]
        existing = [p for p in files if scan.exists(p)]
        if existing:
            path = existing[-1]  # systemd: the last file wins
        else:
            parents = [p for p in files if os.path.isdir(scan.host(posixpath.dirname(p)))]
            if not parents:
                return None
            path = parents[0]
        text = scan.text(path) or ""
        assigns = [a for a in scan.assigns if a.path == path and a.var == EXTRA_ARGS_VAR]
        if assigns:
            a = assigns[-1]
            raw = text[a.start : a.end]
            pos = a.end - 1 if len(raw) >= 2 and raw[0] in "\"'" and raw[-1] == raw[0] else a.end
            empty = text[a.start : pos].strip(" \t\"'") == ""
            return _Edit(path, FORMAT_FLAGS, pos, pos, ("" if empty else " ") + flag)
        nl = _newline(text)
        prefix = "" if not text or text.endswith("\n") else nl
        return _Edit(
            path, FORMAT_FLAGS, len(text), len(text), f"{prefix}{EXTRA_ARGS_VAR}={flag}{nl}"
        )

    def _changes_from_edits(self, scan: _Scan, edits: List[_Edit]) -> List[_FileChange]:
        changes: List[_FileChange] = []
        for path in dict.fromkeys(e.path for e in edits):
            mine = [e for e in edits if e.path == path]
            old = scan.text(path)
            ch = _FileChange(path, mine[0].fmt, old, _apply_edits(old or "", mine))
            ch.previous_values = [e.old_raw for e in mine if e.old_raw is not None]
            ch.inserted = [e.record or e.text for e in mine if e.old_raw is None]
            changes.append(ch)
        return changes

    @staticmethod
    def _note_changes(rep: Report, changes: List[_FileChange], enabling: bool) -> None:
        for ch in changes:
            if ch.old is None:
                rep.created.append(ch.path)
            elif ch.new is None:
                rep.removed.append(ch.path)
            else:
                rep.changed.append(ch.path)
        paths = [ch.path for ch in changes]
        if any(p.endswith(".service") or ".service.d/" in p for p in paths):
            rep.notes.append(
                "a systemd unit file changed: run systemctl daemon-reload before restarting kubelet"
            )
        kubeadm_owned = [p for p in paths if p.startswith("/var/lib/kubelet/")]
        if kubeadm_owned and enabling:
            rep.warnings.append(
                f"kubeadm rewrites {', '.join(kubeadm_owned)} on kubeadm init/join/upgrade; "
                "run `cri-resmgr kubelet enable` again after those (`status` shows whether it "
                "is needed)"
            )

    def _commit(self, scan: _Scan, changes: List[_FileChange]) -> None:
        """Save originals and the manifest, then write the changed files."""
        manifest = self._load_manifest() or {
            "version": MANIFEST_VERSION,
            "endpoints": [],
            "previous_endpoints": [],
            "files": [],
        }
        if self.endpoint not in manifest["endpoints"]:
            manifest["endpoints"].append(self.endpoint)
        records = {r["path"]: r for r in manifest["files"]}
        for ch in changes:
            old_bytes = ch.old.encode("utf-8") if ch.old is not None else None
            new_bytes = (ch.new or "").encode("utf-8")
            rec = records.get(ch.path)
            if rec is not None and old_bytes is not None and _sha256(old_bytes) == rec["after"]:
                # Unchanged since our last write: the saved original still holds.
                rec["inserted"] = rec["inserted"] + ch.inserted
            else:
                base = old_bytes
                prev, ins = list(ch.previous_values), list(ch.inserted)
                if rec is not None and ch.old is not None:
                    # Changed by someone since our last write: save their version,
                    # without what we had put in, as the new original.
                    undone, problems = _undo_text(ch.old, rec, manifest["endpoints"])
                    if not problems:
                        base = undone.encode("utf-8")
                    prev = rec.get("previous_values", []) + prev
                    ins = rec.get("inserted", []) + ins
                rec = {
                    "path": ch.path,
                    "format": ch.fmt,
                    "existed": base is not None,
                    "mode": _file_mode(scan.host(ch.path), ch.path) if ch.old is not None else None,
                    "backup": posixpath.join("files", ch.path.lstrip("/"))
                    if base is not None
                    else None,
                    "before": _sha256(base) if base is not None else None,
                    "previous_values": prev,
                    "inserted": ins,
                }
                if base is not None:
                    _write_atomic(self._backup_host(rec["backup"]), base, 0o600, rec["backup"])
                records[ch.path] = rec
            rec["after"] = _sha256(new_bytes)
            for v in ch.previous_values:
                ours = any(same_endpoint(v, e) for e in manifest["endpoints"])
                if v and not ours and v not in manifest["previous_endpoints"]:
                    manifest["previous_endpoints"].append(v)
        manifest["files"] = list(records.values())
        self._save_manifest(manifest)
        for ch in changes:
            mode = None
            if ch.old is not None:
                mode = _file_mode(scan.host(ch.path), ch.path)
            _write_atomic(self._host(ch.path), (ch.new or "").encode("utf-8"), mode, ch.path)
            log.info("kubelet: wrote %s", ch.path)

    # disable

    def disable(self, dry_run: bool = False, force: bool = False) -> Report:
        """Restore what ``enable`` changed: saved bytes exactly, or, for files changed
        since, only the endpoint values (``force``: the saved bytes anyway)."""
        scan = _Scan(self.root)
        rep = self._report("disable", scan, dry_run)
        manifest = self._load_manifest()
        if manifest is None or not manifest["files"]:
            self._fill_state(rep, scan)
            rep.notes.append(
                f"nothing saved under {self.backup_dir}: enable did not change anything here, "
                "or disable already restored it; nothing to do"
            )
            if rep.points_at_relay and rep.effective is not None:
                rep.notes.append(
                    f"kubelet points at the relay through {rep.effective.path}:"
                    f"{rep.effective.line}, set outside `cri-resmgr kubelet enable`: change it "
                    "there by hand"
                )
            return rep
        rep.previous_endpoints = list(manifest.get("previous_endpoints", []))
        endpoints = list(manifest.get("endpoints", [])) or [self.endpoint]
        changes: List[_FileChange] = []
        kept: List[Dict[str, Any]] = []
        for rec in manifest["files"]:
            ch, problem, note = self._restore_plan(scan, rec, endpoints, force)
            if problem:
                rep.problems.append(problem)
                kept.append(rec)
            if note:
                rep.notes.append(note)
            if ch is not None:
                changes.append(ch)
        self._note_changes(rep, changes, enabling=False)
        if dry_run:
            rep.diff = _diff(changes)
            self._fill_state(rep, scan)
            return rep
        self._restore(scan, manifest, changes, kept)
        self._fill_state(rep, _Scan(self.root))
        self._saved_state(rep)
        if kept:
            rep.notes.append(
                "files listed as errors keep their saved copy under "
                f"{posixpath.join(self.backup_dir, 'files')}; merge by hand, or run "
                "`disable --force` to put the saved copy back (edits made after enable are "
                "then lost)"
            )
        if rep.points_at_relay and rep.effective is not None and not kept:
            rep.warnings.append(
                f"kubelet still points at the relay through {rep.effective.path}:"
                f"{rep.effective.line}; change it there by hand"
            )
        elif changes:
            rep.notes.append("restart kubelet to stop using the relay: systemctl restart kubelet")
        return rep

    def _restore(
        self,
        scan: _Scan,
        manifest: Dict[str, Any],
        changes: List[_FileChange],
        kept: List[Dict[str, Any]],
    ) -> None:
        """Write the restored files, then forget the records that are done."""
        records = {r["path"]: r for r in manifest["files"]}
        for ch in changes:
            target = self._host(ch.path)
            if ch.new is None:
                _remove(target, ch.path)
                log.info("kubelet: removed %s", ch.path)
                continue
            if ch.old is not None:
                mode = _file_mode(scan.host(ch.path), ch.path)
            else:
                mode = records[ch.path].get("mode")
            _write_atomic(target, ch.new.encode("utf-8"), mode, ch.path)
            log.info("kubelet: restored %s", ch.path)
        for rec in manifest["files"]:
            if rec not in kept and rec.get("backup"):
                _remove(
                    self._backup_host(rec["backup"]), posixpath.join(self.backup_dir, rec["backup"])
                )
        manifest["files"] = kept
        self._save_manifest(manifest)

    def _restore_plan(
        self, scan: _Scan, rec: Dict[str, Any], endpoints: List[str], force: bool
    ) -> Tuple[Optional[_FileChange], Optional[str], Optional[str]]:
        """How to restore one saved file: (change, problem, note), each possibly None."""
        path, fmt = rec["path"], rec["format"]
        current = scan.text(path)
        saved: Optional[str] = None
        if rec.get("backup"):
            shown = posixpath.join(self.backup_dir, rec["backup"])
            saved = _read_text(self._backup_host(rec["backup"]), shown)
            if saved is None:
                return None, f"{path}: its saved copy {shown} is missing; restore it by hand", None
        if current is None:
            if not rec["existed"]:
                return None, None, f"{path} (created by enable) is gone already"
            if not force:
                return (
                    None,
                    (
                        f"{path} was removed after enable; not recreated (run `disable --force` "
                        "to put the saved copy back from "
                        f"{posixpath.join(self.backup_dir, rec['backup'])})"
                    ),
                    None,
                )
            return _FileChange(path, fmt, None, saved), None, None
        if force or _sha256(current.encode("utf-8")) == rec["after"]:
            return _FileChange(path, fmt, current, saved if rec["existed"] else None), None, None
        new, problems = _undo_text(current, rec, endpoints)
        if problems:
            return (
                None,
                (
                    f"{path} changed after enable and cannot be restored safely: "
                    + "; ".join(problems)
                ),
                None,
            )
        if new == current:
            return (
                None,
                None,
                f"{path} changed after enable and no longer names the relay; left as is",
            )
        note = (
            f"{path} changed after enable: restored only what enable changed in it, kept the "
            "other edits"
        )
        return _FileChange(path, fmt, current, new), None, note


def _yaml_insertion(
    text: str, node: Optional[yaml.MappingNode], endpoint: str, path: str
) -> Tuple[int, str]:
    """Where and what to insert to add the endpoint key to a KubeletConfiguration file:
    on the line after ``kind:`` (block style) or before the first key (flow style/JSON)."""
    if node is None or not node.value:
        raise KubeletConfigError(
            f"{path}: empty KubeletConfiguration; add '{ENDPOINT_KEY}: {endpoint}' by hand"
        )
    if node.flow_style:
        first = node.value[0][0]
        return first.start_mark.index, f'"{ENDPOINT_KEY}": "{endpoint}", '
    nl = _newline(text)
    kind = next(
        (k for k, _ in node.value if isinstance(k, yaml.ScalarNode) and k.value == "kind"), None
    )
    anchor = kind if kind is not None else node.value[0][0]
    indent = " " * anchor.start_mark.column
    line = f"{indent}{ENDPOINT_KEY}: {endpoint}{nl}"
    if kind is not None:
        vnode = next(v for k, v in node.value if k is kind)
        eol = text.find("\n", vnode.end_mark.index)
        if eol == -1:
            return len(text), nl + line.rstrip("\r\n")
        return eol + 1, line
    line_start = text.rfind("\n", 0, anchor.start_mark.index) + 1
    if text[line_start : anchor.start_mark.index].strip():
        raise KubeletConfigError(
            f"{path}:{anchor.start_mark.line + 1}: cannot tell where to add {ENDPOINT_KEY}; "
            f"add '{ENDPOINT_KEY}: {endpoint}' by hand"
        )
    return line_start, line


def _write_atomic(host_path: str, data: bytes, mode: Optional[int], shown: str) -> None:
    """Write a file by renaming a complete temporary copy over it."""
    directory = os.path.dirname(host_path)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".cri-resmgr.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode if mode is not None else 0o644)
            if os.path.exists(host_path):
                st = os.stat(host_path)
                try:
                    os.chown(tmp, st.st_uid, st.st_gid)
                except PermissionError:
                    pass
            os.replace(tmp, host_path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise KubeletConfigError(
            f"cannot write {shown}: {exc.strerror}; run as root, or use --root for a directory tree"
        ) from exc


# --- command line ----------------------------------------------------------------------


EndpointResolver = Callable[[str, Optional[str]], str]
"""``(root, config_dir) -> endpoint``: the relay endpoint when ``--endpoint`` is not
given; ``config_dir`` is the ``--config-dir`` value or None (the caller decides the
default, normally ``/etc/cri-resmgr`` under the root)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cri-resmgr kubelet",
        description=(
            "Point kubelet at the cri-resmgr relay (enable), restore what enable changed "
            "(disable), show where kubelet's runtime endpoint is set (status), or print the "
            "relay endpoint the other actions use (endpoint)."
        ),
        epilog=(
            "Exit status: 0 done (status: kubelet points at the relay), 1 error or not all "
            "restored, 2 usage, 3 status: kubelet does not point at the relay."
        ),
    )
    p.add_argument("action", choices=("enable", "disable", "status", "endpoint"))
    p.add_argument(
        "--root", default="/", metavar="DIR", help="directory that is / for kubelet (default: /)"
    )
    p.add_argument(
        "--endpoint",
        default=None,
        metavar="URL",
        help="relay endpoint (default: unix:// and [relay] socket of the cri-resmgr "
        f"configuration, {RELAY_ENDPOINT} unless configured otherwise)",
    )
    p.add_argument(
        "--config-dir",
        default=None,
        metavar="DIR",
        help="the cri-resmgr configuration that names the relay socket when --endpoint is "
        "not given (default: /etc/cri-resmgr under --root)",
    )
    p.add_argument(
        "--backup-dir",
        default=DEFAULT_BACKUP_DIR,
        metavar="DIR",
        help=f"where enable saves originals, under --root (default: {DEFAULT_BACKUP_DIR})",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="enable/disable: show a diff, change nothing"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="disable: put saved copies back even over files changed after enable",
    )
    return p


def main(
    argv: Optional[Sequence[str]] = None, default_endpoint: Optional[EndpointResolver] = None
) -> int:
    """``cri-resmgr kubelet ACTION [options]``; argv excludes the ``kubelet`` word.

    ``default_endpoint`` gives the relay endpoint when ``--endpoint`` is not given
    (``cli`` passes one that reads the cri-resmgr configuration); without it,
    `RELAY_ENDPOINT`."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.force and args.action != "disable":
        parser.error("--force applies to disable only")
    if args.dry_run and args.action not in ("enable", "disable"):
        parser.error("--dry-run applies to enable and disable only")
    try:
        endpoint = args.endpoint
        if endpoint is None:
            if default_endpoint is not None:
                endpoint = default_endpoint(args.root, args.config_dir)
            else:
                endpoint = RELAY_ENDPOINT
        wiring = KubeletWiring(root=args.root, endpoint=endpoint, backup_dir=args.backup_dir)
        if args.action == "endpoint":
            print(wiring.endpoint)
            return 0
        if args.action == "enable":
            rep = wiring.enable(dry_run=args.dry_run)
        elif args.action == "disable":
            rep = wiring.disable(dry_run=args.dry_run, force=args.force)
        else:
            rep = wiring.status()
    except KubeletUsageError as exc:
        parser.error(str(exc))  # exits 2
    except Error as exc:
        print(f"cri-resmgr kubelet: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # Every file operation above is meant to raise KubeletConfigError; this is the
        # last resort, so that a user still learns which path and what to do.
        where = f"{exc.filename}: " if exc.filename else ""
        print(
            f"cri-resmgr kubelet: error: {where}{exc.strerror or exc}; run as root, or use "
            "--root for a directory tree",
            file=sys.stderr,
        )
        return 1
    print(rep)
    if not rep.ok:
        return 1
    if args.action == "status" and not rep.points_at_relay:
        return 3
    return 0
