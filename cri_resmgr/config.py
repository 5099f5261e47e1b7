"""Configuration: the one table of keys, the layered strict reader and the frozen Config.

This module owns:

* `KEYS`, the table of every configuration key (section, name, type, default, help,
  Go-style flag, whether a reload applies it live). Everything else is derived from
  it: validation, defaults, ``-print-config`` output, the shipped
  ``etc/cri-resmgr/cri-resmgr.conf`` (`render_conf`) and the key reference in
  ``docs/configuration.md`` (`render_markdown`).
* `load`: reads every ``*.conf`` in the configuration directory in lexical order (a
  later file overrides an earlier one key by key), applies command-line overrides
  on top, derives defaults that depend on other keys, checks everything and returns
  a frozen `Config`, or raises `ConfigError` listing *all* problems found, each with
  file, line, section, key, value, message and what is allowed.
* `diff_live`: which differences between two configs a reload (SIGHUP) can apply
  live and which need a restart.

File syntax is Python's configparser INI dialect with: no interpolation (``%`` is
literal, regexps need it), ``=`` as the only key/value delimiter, full-line comments
only (``#`` or ``;``; a ``#`` inside a value is part of the value), values continued
on indented lines, a blank line ending a value, no special ``[DEFAULT]`` section.
Key names are case-insensitive (configparser lowercases them; problems quote them
as written); section names and values are case-sensitive.

Run ``python -m cri_resmgr.config --help`` for the generator/checker used by make.
"""

from __future__ import annotations

import _sre  # MAXREPEAT: the largest repetition count re accepts, plus one
import argparse
import configparser
import difflib
import errno
import logging
import os
import re
import stat
import sys
import textwrap
from dataclasses import dataclass
from types import MappingProxyType
from typing import (
    Any,
    Callable,
    Collection,
    Dict,
    Iterator,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
)

from cri_resmgr import logs
from cri_resmgr.errors import ConfigError, Problem, shorten
from cri_resmgr.resources.cpuset import MAX_CPU_ID, CPUSet

__all__ = [
    "BALLOON_TYPE_SECTION",
    "CPUReservation",
    "Change",
    "Config",
    "ConfigError",
    "DEFAULT_CONFIG_DIR",
    "DEFAULT_DUMP_RULES",
    "DumpRule",
    "FLAGS",
    "KEYS",
    "Key",
    "Problem",
    "SECTIONS",
    "Setting",
    "add_config_flags",
    "after_reload",
    "default_config",
    "default_control_socket",
    "diff_live",
    "flag_overrides",
    "load",
    "render_conf",
    "render_markdown",
    "unquote",
]

log = logging.getLogger(__name__)

DEFAULT_CONFIG_DIR = "/etc/cri-resmgr"

#: Section template of the per-balloon-type sections ``[policy.balloons.type.NAME]``.
BALLOON_TYPE_SECTION = "policy.balloons.type.NAME"
_BALLOON_TYPE_PREFIX = "policy.balloons.type."
_BALLOON_NAME_RE = re.compile(r"[a-z0-9-]+\Z")
#: Built-in balloon types a ``[policy.balloons.type.NAME]`` section may re-configure.
BUILTIN_BALLOON_TYPES = ("reserved", "default")

#: Section names accepted as another spelling of a section (policy name aliases).
SECTION_ALIASES: Mapping[str, str] = MappingProxyType({"policy.memtier": "policy.topology-aware"})

#: Dump rules in effect before the configured ``[dump] rules`` are applied.
DEFAULT_DUMP_RULES = "off:.*,name:(Create|Start|Run|Update|Stop|Remove).*"
DUMP_LEVELS = ("off", "name", "full", "count")
DUMP_LEVEL_ALIASES: Mapping[str, str] = MappingProxyType({"short": "name"})

RUNTIME_SOCKETS: Mapping[str, str] = MappingProxyType(
    {"containerd": "/run/containerd/containerd.sock", "crio": "/var/run/crio/crio.sock"}
)
CONTROL_SOCKET_NAME = "cri-resmgr-control.sock"

_GENERATED_BEGIN = "<!-- BEGIN GENERATED KEY REFERENCE (python -m cri_resmgr.config) -->"
_GENERATED_END = "<!-- END GENERATED KEY REFERENCE -->"


# --- value types -------------------------------------------------------------


class BadValue(ValueError):
    """Raised by `ValueType.parse`: says what is wrong (the type says what is allowed)."""


class ValueType:
    """A key's type: parses raw text, formats values back, describes what is allowed.

    ``format(parse(text))`` is canonical text that parses to the same value.
    """

    def parse(self, raw: str) -> Any:
        raise NotImplementedError

    def describe_allowed(self) -> str:
        raise NotImplementedError

    def format(self, value: Any) -> str:
        return "" if value is None else str(value)


def _one_line(raw: str) -> str:
    text = raw.strip()
    if "\n" in text:
        raise BadValue("must be on one line")
    return text


def _suggest(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


class Choice(ValueType):
    """One of fixed words (case-sensitive), with optional aliases; "" if ``empty``."""

    def __init__(
        self,
        choices: Sequence[str],
        aliases: Optional[Mapping[str, str]] = None,
        empty: Optional[str] = None,
    ) -> None:
        self.choices = tuple(choices)
        self.aliases: Mapping[str, str] = MappingProxyType(dict(aliases or {}))
        self.empty = empty  # meaning of the empty value, None if not allowed

    def parse(self, raw: str) -> str:
        text = _one_line(raw)
        if text == "" and self.empty is not None:
            return ""
        if text in self.choices:
            return text
        if text in self.aliases:
            return self.aliases[text]
        if text == "":
            raise BadValue("a value is required")
        raise BadValue("unknown value" + _suggest(text, list(self.choices) + list(self.aliases)))

    def describe_allowed(self) -> str:
        text = "one of " + ", ".join(self.choices)
        if self.aliases:
            text += "; aliases " + ", ".join(f"{a} = {c}" for a, c in self.aliases.items())
        if self.empty is not None:
            text += f"; or empty ({self.empty})"
        return text


class Bool(ValueType):
    """A boolean; configparser's words, case-insensitive."""

    WORDS: Mapping[str, bool] = MappingProxyType(
        {
            "true": True,
            "yes": True,
            "on": True,
            "1": True,
            "false": False,
            "no": False,
            "off": False,
            "0": False,
        }
    )

    def parse(self, raw: str) -> bool:
        text = _one_line(raw).lower()
        if text not in self.WORDS:
            raise BadValue("not a boolean")
        return self.WORDS[text]

    def describe_allowed(self) -> str:
        return "true or false (also yes/no, on/off, 1/0)"

    def format(self, value: Any) -> str:
        return "true" if value else "false"


class Int(ValueType):
    """A decimal integer within bounds."""

    def __init__(self, minimum: Optional[int] = None, maximum: Optional[int] = None) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def parse(self, raw: str) -> int:
        text = _one_line(raw)
        if not re.fullmatch(r"[+-]?[0-9]{1,18}", text):
            raise BadValue("not an integer")
        value = int(text)
        if self.minimum is not None and value < self.minimum:
            raise BadValue(f"less than {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise BadValue(f"more than {self.maximum}")
        return value

    def describe_allowed(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f"an integer from {self.minimum} to {self.maximum}"
        if self.minimum is not None:
            return f"an integer >= {self.minimum}"
        if self.maximum is not None:
            return f"an integer <= {self.maximum}"
        return "an integer"


class Seconds(ValueType):
    """A non-negative duration in seconds (float)."""

    def __init__(self, maximum: float = 3600.0) -> None:
        self.maximum = maximum

    def parse(self, raw: str) -> float:
        text = _one_line(raw)
        if not re.fullmatch(r"[0-9]{1,9}(\.[0-9]{1,9})?|\.[0-9]{1,9}", text):
            raise BadValue("not a number of seconds")
        value = float(text)
        if value > self.maximum:
            raise BadValue(f"more than {self.maximum:g} seconds")
        return value

    def describe_allowed(self) -> str:
        return f"a number of seconds from 0 to {self.maximum:g}, e.g. 10 or 2.5"

    def format(self, value: Any) -> str:
        return f"{value:g}"


class AbsPath(ValueType):
    """An absolute path; ``unix_prefix`` also accepts (and drops) ``unix://``.

    ``empty`` is what the empty value means (it parses to None), None if not allowed.
    """

    def __init__(self, unix_prefix: bool = False, empty: Optional[str] = None) -> None:
        self.unix_prefix = unix_prefix
        self.empty = empty

    def parse(self, raw: str) -> Optional[str]:
        text = _one_line(raw)
        if self.unix_prefix and text.startswith("unix://"):
            text = text[len("unix://") :]
            if text == "":
                raise BadValue("no path after unix://")
        if text == "":
            if self.empty is not None:
                return None
            raise BadValue("a path is required")
        if "\0" in text:
            raise BadValue("contains a NUL character")
        if not text.startswith("/"):
            raise BadValue("not an absolute path")
        return text

    def describe_allowed(self) -> str:
        text = "an absolute path"
        if self.unix_prefix:
            text += ", optionally prefixed by unix://"
        if self.empty is not None:
            text += f"; or empty ({self.empty})"
        return text


class Words(ValueType):
    """A list of words separated by commas and/or whitespace, parsed to a tuple.

    ``item_re`` is what each word must match, ``item_desc`` says so in words;
    ``star_words`` are spellings of "all" that become the single item ``"*"``;
    ``prefix`` is prepended to each word that does not already start with it.
    """

    def __init__(
        self,
        item_re: str,
        item_desc: str,
        star_words: Sequence[str] = (),
        prefix: str = "",
    ) -> None:
        self.item_re = re.compile(item_re + r"\Z")
        self.item_desc = item_desc
        self.star_words = tuple(star_words)
        self.prefix = prefix

    def parse(self, raw: str) -> Tuple[str, ...]:
        items: List[str] = []
        for word in re.split(r"[\s,]+", raw.strip()):
            if word == "":
                continue
            item = word
            if word in self.star_words:
                item = "*"
            elif not self.item_re.match(word):
                raise BadValue(f"bad item {word!r}")
            elif self.prefix and not (word + ".").startswith(self.prefix):
                item = self.prefix + word
            if item not in items:
                items.append(item)
        return tuple(items)

    def describe_allowed(self) -> str:
        text = f"a list of {self.item_desc}, separated by commas or spaces"
        if self.star_words:
            text += "; " + " or ".join(self.star_words) + " for all"
        return text + "; or empty"

    def format(self, value: Any) -> str:
        return ", ".join(value)


class ModuleNames(Words):
    """``[log] debug``: names of modules of this package (`logs.module_names`).

    A name without the ``cri_resmgr.`` prefix gets it. Every logger of the program is
    named after its module and no other logger can be selected (the prefix is added),
    so a name that is not a module would select nothing: it is an error, with a "did
    you mean" like the other keys (a module's last part, ``static``, suggests its full
    name, ``policy.static``).
    """

    def __init__(self) -> None:
        super().__init__(
            r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*",
            "module names of cri_resmgr (policy.static means cri_resmgr.policy.static; a "
            "module includes its submodules)",
            star_words=("*", "all"),
            prefix=logs.ROOT + ".",
        )

    def parse(self, raw: str) -> Tuple[str, ...]:
        items: List[str] = []
        unknown: List[str] = []
        known = logs.module_names()
        for word in re.split(r"[\s,]+", raw.strip()):
            if word == "":
                continue
            if word in self.star_words:
                item = "*"
            else:
                item = word if (word + ".").startswith(self.prefix) else self.prefix + word
                if not self.item_re.match(word) or (len(known) > 1 and item not in known):
                    if word not in unknown:
                        unknown.append(word)
                    continue
            if item not in items:
                items.append(item)
        if len(unknown) == 1:
            raise BadValue(f"unknown module {unknown[0]!r}{self._suggest(unknown[0], known)}")
        if unknown:
            described = []
            for word in unknown:
                hint = self._suggest(word, known)
                described.append(f"{word!r} ({hint[2:]})" if hint else repr(word))
            raise BadValue("unknown modules " + ", ".join(described))
        return tuple(items)

    def _suggest(self, word: str, known: Sequence[str]) -> str:
        """``; did you mean 'X'?`` in the spelling of `word` (with or without prefix)."""
        full = (word + ".").startswith(self.prefix)
        names = [n if full else n[len(self.prefix) :] for n in known if n != logs.ROOT]
        last = [n for n in names if n.rsplit(".", 1)[-1] == word.replace("-", "_")]
        if len(last) == 1:
            return f"; did you mean {last[0]!r}?"
        return _suggest(word, names)


@dataclass(frozen=True)
class CPUReservation:
    """CPUs set aside for system and kube tasks: exact CPUs, or an amount.

    ``milli_cpus`` is always set (1000 per CPU of a list); ``cpus`` only when exact
    CPUs were given.
    """

    milli_cpus: int
    cpus: Optional[CPUSet] = None

    def __str__(self) -> str:
        if self.cpus is not None:
            text = str(self.cpus)
            # a lone id would read as an amount
            return text if ("," in text or "-" in text) else f"cpuset:{text}"
        if self.milli_cpus % 1000 == 0:
            return str(self.milli_cpus // 1000)
        return f"{self.milli_cpus}m"


class ReservedCPUs(ValueType):
    """``0,1``/``0-1``/``cpuset:2`` (exact CPUs) or ``2``/``1.5``/``1500m`` (amount).

    A lone number is an amount, except a lone zero (``0``, ``00``): zero CPUs would
    be no reservation, so it can only mean CPU 0, as in kubelet's ``--reserved-cpus``.
    Numbers are bounded by what a machine can have (`MAX_CPU_ID`), whatever their
    number of digits, and said so in the same words for amounts and CPU lists.
    """

    MAX_MILLI = (MAX_CPU_ID + 1) * 1000
    _TOO_MANY = f"more CPUs than any machine has (at most {MAX_CPU_ID + 1})"
    _NO_CPU = "reserves no CPU: an amount of 0 (CPU 0 is written 0 or cpuset:0)"

    def parse(self, raw: str) -> CPUReservation:
        text = _one_line(raw)
        if text == "":
            raise BadValue("a value is required")
        if text.startswith("cpuset:"):
            return self._cpus(text[len("cpuset:") :])
        whole = re.fullmatch(r"([0-9]+)(?:\.([0-9]+))?", text)
        if whole and whole.group(2) is None and _bounded_int(whole.group(1)) == 0:
            return self._cpus(text)  # a lone zero can only mean CPU 0
        if whole:
            fraction = (whole.group(2) or "").rstrip("0")
            if len(fraction) > 3:
                raise BadValue("finer than a milli-CPU (at most 3 decimals)")
            return self._amount(whole.group(1), 1000, int(fraction.ljust(3, "0")))
        milli = re.fullmatch(r"([0-9]+)m", text)
        if milli:
            return self._amount(milli.group(1), 1, 0)
        if re.fullmatch(r"[0-9]*\.[0-9]*m", text):
            raise BadValue("milli-CPUs (m) are a whole number")
        if re.fullmatch(r"[0-9,\-\s]+", text):
            return self._cpus(text)
        raise BadValue("neither a CPU list nor an amount of CPUs")

    def _amount(self, digits: str, scale: int, extra: int) -> CPUReservation:
        number = _bounded_int(digits)
        if number is None or number * scale + extra > self.MAX_MILLI:
            raise BadValue(self._TOO_MANY)
        milli = number * scale + extra
        if milli == 0:
            raise BadValue(self._NO_CPU)
        return CPUReservation(milli_cpus=milli)

    @staticmethod
    def _cpus(listing: str) -> CPUReservation:
        listing = re.sub(r"\s*([,-])\s*", r"\1", listing.strip())
        if not re.fullmatch(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*", listing):
            raise BadValue("not a CPU list")
        for digits in re.findall(r"[0-9]+", listing):
            number = _bounded_int(digits)
            if number is None or number > MAX_CPU_ID:
                shown = shorten(digits.lstrip("0"), 12)
                raise BadValue(
                    f"CPU {shown} is more than any machine has (CPU ids are 0 to {MAX_CPU_ID})"
                )
        # ids without leading zeros: CPUSet.parse bounds their digits
        listing = re.sub(r"[0-9]+", lambda m: str(int(m.group(0))), listing)
        try:
            cpus = CPUSet.parse(listing)
        except ValueError as exc:
            raise BadValue(str(exc).split("; ")[0]) from None
        return CPUReservation(milli_cpus=1000 * len(cpus), cpus=cpus)

    def describe_allowed(self) -> str:
        return (
            "a CPU list such as 0,1 or 0-1 (a lone 0 is CPU 0; cpuset:N for another single "
            "CPU N), or an amount of CPUs such as 2, 1.5 or 1500m (milli-CPUs), more than 0"
        )


def _bounded_int(digits: str, max_digits: int = 12) -> Optional[int]:
    """int() of decimal digits; None when there are more than `max_digits` significant
    ones (never a bignum, nor Python's int-from-string digit limit)."""
    significant = digits.lstrip("0")
    if len(significant) > max_digits:
        return None
    return int(significant or "0")


class DumpRule(NamedTuple):
    """One dump rule: level (off/name/full/count), pattern, whether it is an exact name."""

    level: str
    pattern: str
    is_exact: bool


_EXACT_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
#: Largest repetition count ({n}, {m,n}) Python's re accepts.
_MAX_REPEAT = _sre.MAXREPEAT - 1
_LEVEL_SPEC_RE = re.compile(r"([A-Za-z]+):(.*)\Z", re.S)


def split_dump_rules(text: str) -> List[str]:
    """Split a rule string on commas and newlines outside (), [] and {} and escapes.

    Items are stripped; empty items are dropped.
    """
    items: List[str] = []
    current: List[str] = []
    depth = 0
    in_class = False
    class_len = 0
    escape = False
    for ch in text:
        if escape:
            escape = False
        elif ch == "\\":
            escape = True
        elif in_class:
            # "]" right after "[" or "[^" is a literal member of the class
            if ch == "]" and not (class_len == 0 or (class_len == 1 and current[-1] == "^")):
                in_class = False
            class_len += 1
        elif ch == "[":
            in_class, class_len = True, 0
        elif ch in "({":
            depth += 1
        elif ch in ")}":
            depth = max(0, depth - 1)
        elif ch == "\n" or (ch == "," and depth == 0):
            items.append("".join(current))
            current = []
            continue
        current.append(ch)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def parse_dump_rules(text: str, base: str = DEFAULT_DUMP_RULES) -> Tuple[DumpRule, ...]:
    """Parse ``base`` then ``text`` into rules, applying ``reset`` and level inheritance."""
    rules: List[DumpRule] = []
    for source in (base, text):
        level = "full"
        for spec in split_dump_rules(source):
            if spec == "reset":
                rules, level = [], "full"
                continue
            pattern = spec
            m = _LEVEL_SPEC_RE.match(spec)
            if m:
                name, pattern = m.group(1), m.group(2).strip()
                name = DUMP_LEVEL_ALIASES.get(name, name)
                if name not in DUMP_LEVELS:
                    raise BadValue(f"rule {spec!r}: unknown level {m.group(1)!r}")
                level = name
            if pattern == "":
                raise BadValue(f"rule {spec!r}: no method name or pattern")
            exact = bool(_EXACT_NAME_RE.match(pattern))
            if not exact:
                problem = regex_problem(pattern)
                if problem:
                    raise BadValue(f"rule {shorten(spec, 80)!r}: bad regular expression: {problem}")
            rules.append(DumpRule(level, pattern, exact))
    return tuple(rules)


#: Deepest nesting of groups a dump rule's regular expression may have. Python's re
#: parser recurses per level, so a deep pattern compiles or not depending on how deep
#: the stack already is; this bound keeps it far from the recursion limit anywhere.
MAX_REGEX_NESTING = 100


def _group_depth(pattern: str) -> int:
    """The deepest nesting of ``(`` groups, outside character classes and escapes."""
    depth = deepest = 0
    in_class = False
    class_len = 0
    escape = False
    previous = ""
    for ch in pattern:
        if escape:
            escape = False
        elif ch == "\\":
            escape = True
        elif in_class:
            if ch == "]" and not (class_len == 0 or (class_len == 1 and previous == "^")):
                in_class = False
            class_len += 1
        elif ch == "[":
            in_class, class_len = True, 0
        elif ch == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == ")":
            depth = max(0, depth - 1)
        previous = ch
    return deepest


def regex_problem(pattern: str) -> str:
    """What is wrong with a dump rule's regular expression, "" if it compiles.

    Everything ``re.compile`` can raise on a string is caught: `re.error`,
    OverflowError (``a{99999999999}``: the repetition number is too large) and
    RecursionError; groups nested deeper than `MAX_REGEX_NESTING` are refused before
    compiling, so a pattern that passes here compiles in the dump module too.
    """
    depth = _group_depth(pattern)
    if depth > MAX_REGEX_NESTING:
        return f"groups nested {depth} deep (at most {MAX_REGEX_NESTING})"
    try:
        re.compile(pattern)
    except re.error as exc:
        return str(exc)
    except OverflowError as exc:
        return f"{exc} (at most {_MAX_REPEAT})"
    except RecursionError:
        return f"nested too deeply (at most {MAX_REGEX_NESTING} levels of groups)"
    except (ValueError, MemoryError) as exc:  # not expected from re; never a traceback
        return str(exc) or type(exc).__name__
    return ""


class DumpRules(ValueType):
    """The dump rule string, parsed to the effective tuple of `DumpRule`."""

    def parse(self, raw: str) -> Tuple[DumpRule, ...]:
        return parse_dump_rules(raw)

    def describe_allowed(self) -> str:
        return (
            "comma-separated rules [LEVEL:]PATTERN, LEVEL one of "
            + ", ".join(DUMP_LEVELS)
            + " (short = name), PATTERN a method name or a regular expression; "
            "or reset"
        )

    def format(self, value: Any) -> str:
        return ",".join(["reset"] + [f"{r.level}:{r.pattern}" for r in value])


class ListenAddress(ValueType):
    """``HOST:PORT`` (HOST may be empty or a [bracketed] IPv6 address), ``unix:PATH``."""

    def parse(self, raw: str) -> str:
        text = _one_line(raw)
        if text == "":
            return ""
        if text.startswith("unix:"):
            path = text[len("unix:") :]
            if not path.startswith("/"):
                raise BadValue("unix: needs an absolute path")
            return text
        m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]*):([0-9]{1,5})", text)
        if not m:
            raise BadValue("not HOST:PORT or unix:PATH")
        if not 1 <= int(m.group(2)) <= 65535:
            raise BadValue("port out of range")
        return text

    def describe_allowed(self) -> str:
        return (
            "HOST:PORT (e.g. 127.0.0.1:8891, :8891 for all addresses, [::1]:8891), "
            "unix:/ABSOLUTE/PATH, or empty (off)"
        )


# --- the key table -------------------------------------------------------------


Getter = Callable[[str, str], Any]


@dataclass(frozen=True)
class Key:
    """One configuration key.

    ``default`` is raw text parsed by ``type`` like a value from a file (so defaults
    are validated the same way). A key with ``derive`` gets ``derive(get)`` when its
    value is None (empty); ``derived_from`` names what for docs and sources.
    ``flag`` is the Go-style command-line flag without the dash; ``live`` says a
    reload (SIGHUP) applies a change, otherwise it takes a restart.
    """

    section: str
    name: str
    type: ValueType
    default: str
    help: str
    flag: Optional[str] = None
    live: bool = False
    derive: Optional[Callable[[Getter], Any]] = None
    derived_from: str = ""
    default_doc: str = ""


def _derive_runtime_socket(get: Getter) -> Optional[str]:
    return RUNTIME_SOCKETS.get(get("runtime", "runner"))


def _derive_image_socket(get: Getter) -> Optional[str]:
    return get("runtime", "runtime-socket")


def _derive_control_socket(get: Getter) -> str:
    return default_control_socket(get("relay", "socket"))


_ON_ERROR_HELP = (
    "What to do when the policy fails on a request (e.g. not enough free CPUs): fail "
    "returns an error to kubelet, which retries; pass logs the error and forwards the "
    "request to the runtime unmodified."
)
_NAMESPACE_GLOBS = Words(r"[a-z0-9*?\[\]!-]+", "namespace names or globs (*, ?, [...])")
_ON_ERROR = Choice(("fail", "pass"))
_POLICY_NAMES = Choice(
    ("none", "static", "topology-aware", "balloons"),
    aliases={"null": "none", "memtier": "topology-aware"},
)
_SHARE_LEVELS = Choice(
    ("system", "package", "die", "numa", "core"), empty="idle CPUs are not shared"
)

#: Sections in order, with what each is about.
SECTIONS: Mapping[str, str] = MappingProxyType(
    {
        "runtime": "The container runtime cri-resmgr relays to.",
        "relay": "The CRI socket kubelet talks to, and the relay's own files.",
        "host": "Where the host's hardware description is read.",
        "policy": (
            "The resource policy that places containers. Options of each policy are in "
            "[policy.NAME]."
        ),
        "policy.static": "Options of the static policy (exclusive CPUs for Guaranteed pods).",
        "policy.topology-aware": (
            "Options of the topology-aware policy (alias memtier; the section may also be "
            "spelled [policy.memtier])."
        ),
        "policy.balloons": "Options of the balloons policy.",
        BALLOON_TYPE_SECTION: (
            "One section per balloon type of the balloons policy; NAME is [a-z0-9-]+. "
            "Types are matched in the order their sections first appear (files in "
            "lexical order): a pod goes to the first type whose namespaces match its "
            "namespace. The names reserved and default re-configure the built-in "
            "reserved and default balloons (which always exist exactly once, so "
            "min-balloons and max-balloons cannot be set for them)."
        ),
        "dump": "Logging of the CRI calls that pass through the relay.",
        "log": "Logging of cri-resmgr itself.",
        "metrics": "The Prometheus metrics endpoint.",
        "daemon": "Running as a self-daemonizing process (the -daemon flag).",
    }
)

KEYS: Tuple[Key, ...] = (
    # [runtime]
    Key(
        "runtime",
        "runner",
        Choice(("containerd", "crio", "custom")),
        "containerd",
        "Which container runtime is behind the relay. It selects the default "
        "runtime-socket; custom requires runtime-socket to be set.",
        flag="runner",
    ),
    Key(
        "runtime",
        "runtime-socket",
        AbsPath(unix_prefix=True, empty="derived from runner"),
        "",
        "The runtime's CRI socket (RuntimeService) that calls are forwarded to.",
        flag="runtime-socket",
        derive=_derive_runtime_socket,
        derived_from="[runtime] runner",
        default_doc="derived from runner: containerd "
        + RUNTIME_SOCKETS["containerd"]
        + ", crio "
        + RUNTIME_SOCKETS["crio"]
        + ", custom: must be set",
    ),
    Key(
        "runtime",
        "image-socket",
        AbsPath(unix_prefix=True, empty="same as runtime-socket"),
        "",
        "The runtime's CRI image socket (ImageService).",
        flag="image-socket",
        derive=_derive_image_socket,
        derived_from="[runtime] runtime-socket",
        default_doc="the runtime-socket",
    ),
    # [relay]
    Key(
        "relay",
        "socket",
        AbsPath(unix_prefix=True),
        "/var/run/cri-resmgr/cri-resmgr.sock",
        "The CRI socket cri-resmgr serves; point kubelet's --container-runtime-endpoint at it.",
        flag="relay-socket",
    ),
    Key(
        "relay",
        "state-dir",
        AbsPath(),
        "/var/lib/cri-resmgr",
        "Directory of the persisted state (pods, containers, CPU allocations).",
        flag="relay-dir",
    ),
    Key(
        "relay",
        "grace-period",
        Seconds(),
        "10",
        "On SIGTERM, how long calls in flight may take to finish before the relay stops (seconds).",
        live=True,
    ),
    Key(
        "relay",
        "control-socket",
        AbsPath(unix_prefix=True, empty="next to the relay socket"),
        "",
        "Socket of the local status endpoint (accessible to root only).",
        derive=_derive_control_socket,
        derived_from="[relay] socket",
        default_doc=CONTROL_SOCKET_NAME + " in the directory of the relay socket",
    ),
    # [host]
    Key(
        "host",
        "sysfs-root",
        AbsPath(),
        "/",
        "Directory that contains the sys/ tree the hardware topology is read from "
        "(for tests and containers that mount the host's /sys elsewhere).",
        flag="sysfs-root",
    ),
    # [policy]
    Key(
        "policy",
        "name",
        _POLICY_NAMES,
        "none",
        "The active resource policy. none forwards every request unmodified.",
        flag="policy",
    ),
    Key(
        "policy",
        "reserved-cpus",
        ReservedCPUs(),
        "1",
        "CPUs reserved for system and kube tasks (match kubelet's --reserved-cpus or "
        "--kube-reserved/--system-reserved cpu): exact CPUs, or an amount the policy "
        "picks the CPUs for. Containers in the reserved pool (kube-system by default) "
        "run there.",
        flag="reserved-cpus",
    ),
    Key(
        "policy",
        "disable-policy-switch",
        Bool(),
        "false",
        "Refuse to start when the state directory holds the state of another policy "
        "(instead of dropping that state and starting with the configured policy).",
        flag="disable-policy-switch",
    ),
    # [policy.static]
    Key("policy.static", "on-error", _ON_ERROR, "fail", _ON_ERROR_HELP, live=True),
    Key(
        "policy.static",
        "strict-reservation",
        Bool(),
        "false",
        "Keep the reserved CPUs out of the shared pool too (kubelet's strict CPU "
        "reservation): only what runs outside containers, and containers placed on the "
        "reserved CPUs, uses them.",
        live=True,
    ),
    Key(
        "policy.static",
        "full-pcpus-only",
        Bool(),
        "false",
        "Give exclusive CPUs only as whole physical cores (all hyperthreads); a request "
        "that is not a multiple of the threads per core fails.",
        live=True,
    ),
    # [policy.topology-aware]
    Key("policy.topology-aware", "on-error", _ON_ERROR, "fail", _ON_ERROR_HELP, live=True),
    Key(
        "policy.topology-aware",
        "pin-cpu",
        Bool(),
        "true",
        "Set the containers' cpuset.cpus to the CPUs of their pool.",
        live=True,
    ),
    Key(
        "policy.topology-aware",
        "pin-memory",
        Bool(),
        "true",
        "Set the containers' cpuset.mems to the memory nodes of their pool.",
        live=True,
    ),
    Key(
        "policy.topology-aware",
        "prefer-isolated-cpus",
        Bool(),
        "true",
        "Give single-CPU exclusive requests kernel-isolated CPUs (isolcpus) when there are any.",
        live=True,
    ),
    Key(
        "policy.topology-aware",
        "prefer-shared-cpus",
        Bool(),
        "false",
        "Run Guaranteed containers on shared CPUs instead of exclusive ones.",
        live=True,
    ),
    Key(
        "policy.topology-aware",
        "reserved-pool-namespaces",
        _NAMESPACE_GLOBS,
        "kube-system",
        "Pods in these namespaces (globs) run on the reserved CPUs; kube-system always does.",
        live=True,
    ),
    Key(
        "policy.topology-aware",
        "colocate-pods",
        Bool(),
        "true",
        "Prefer placing the containers of a pod in the same pool (topology node).",
        live=True,
    ),
    # [policy.balloons]
    Key("policy.balloons", "on-error", _ON_ERROR, "fail", _ON_ERROR_HELP, live=True),
    # [policy.balloons.type.NAME]
    Key(
        BALLOON_TYPE_SECTION,
        "namespaces",
        _NAMESPACE_GLOBS,
        "",
        "Pods in these namespaces go to balloons of this type.",
    ),
    Key(
        BALLOON_TYPE_SECTION,
        "min-cpus",
        Int(minimum=0),
        "0",
        "CPUs a balloon of this type has at least.",
    ),
    Key(
        BALLOON_TYPE_SECTION,
        "max-cpus",
        Int(minimum=0),
        "0",
        "CPUs a balloon of this type may grow to; 0 = unlimited. Not less than min-cpus.",
    ),
    Key(
        BALLOON_TYPE_SECTION,
        "min-balloons",
        Int(minimum=0),
        "0",
        "Balloons of this type created at start-up and kept even when empty.",
    ),
    Key(
        BALLOON_TYPE_SECTION,
        "max-balloons",
        Int(minimum=0),
        "0",
        "Most balloons of this type at a time; 0 = unlimited. Not less than min-balloons.",
    ),
    Key(
        BALLOON_TYPE_SECTION,
        "prefer-new-balloons",
        Bool(),
        "false",
        "Put a new pod into a new balloon rather than into an existing one.",
    ),
    Key(
        BALLOON_TYPE_SECTION,
        "prefer-spreading-pods",
        Bool(),
        "false",
        "Put each container of a pod into a different balloon when possible.",
    ),
    Key(
        BALLOON_TYPE_SECTION,
        "share-idle-cpus-in-same",
        _SHARE_LEVELS,
        "",
        "Let the containers of a balloon also use the idle CPUs in the same topology "
        "level (system, package, die, numa node or core).",
    ),
    # [dump]
    Key(
        "dump",
        "rules",
        DumpRules(),
        "",
        "Which CRI calls are logged and how. Comma-separated rules [LEVEL:]PATTERN, "
        "applied after the built-in rules " + DEFAULT_DUMP_RULES + " (one line per "
        "Create/Start/Run/Update/Stop/Remove call). LEVEL is off, name (alias short: "
        "one line with the method name), full (request and reply) or count (counted "
        "only); a rule without a level has the level of the rule before it (the first: "
        "full). PATTERN is a method name such as CreateContainer (letters, digits, _) "
        "or a regular expression that must match the whole method name. For a call the "
        "exact-name rule wins, otherwise the last matching regular expression. reset "
        "drops all rules before it, the built-in ones included. Commas inside (), [] "
        "or {} or after a backslash are part of the pattern; a newline separates rules "
        "too.",
        flag="dump",
        live=True,
        default_doc="empty (only the built-in rules)",
    ),
    Key(
        "dump",
        "file",
        AbsPath(empty="dump to the log"),
        "",
        "File the dump is appended to; empty: the dump goes to the log (logger "
        "cri_resmgr.dump, level info), as the Go cri-resmgr did.",
        flag="dump-file",
        live=True,
    ),
    # [log]
    Key(
        "log",
        "level",
        Choice(("debug", "info", "warning", "error"), aliases={"warn": "warning"}),
        "info",
        "Lowest level of messages logged.",
        flag="log-level",
        live=True,
    ),
    Key(
        "log",
        "debug",
        ModuleNames(),
        "",
        "Modules logged at debug level whatever the level. Names without the "
        "cri_resmgr. prefix get it; * or all means every module. A name that is not a "
        "module of cri_resmgr is an error (it would select no logger).",
        flag="debug",
        live=True,
    ),
    # [metrics]
    Key(
        "metrics",
        "listen",
        ListenAddress(),
        "",
        "Where the Prometheus metrics are served over HTTP; empty: no metrics endpoint.",
    ),
    # [daemon]
    Key(
        "daemon",
        "pid-file",
        AbsPath(),
        "/var/run/cri-resmgr/cri-resmgr.pid",
        "PID file written when started with -daemon.",
        flag="pid-file",
    ),
    Key(
        "daemon",
        "log-file",
        AbsPath(),
        "/var/log/cri-resmgr.log",
        "Where the log goes when started with -daemon (there is no terminal or journal "
        "then). The file is appended to and created with mode 0600.",
        flag="log-file",
    ),
)

#: Keys by (section, name); balloon type keys under `BALLOON_TYPE_SECTION`.
_KEY_INDEX: Mapping[Tuple[str, str], Key] = MappingProxyType({(k.section, k.name): k for k in KEYS})

#: Keys by flag name (without the dash), for the command line.
FLAGS: Mapping[str, Key] = MappingProxyType({k.flag: k for k in KEYS if k.flag})


def unquote(value: str) -> str:
    """Strip one pair of matching quotes around a whole flag value.

    systemd expands ``$POLICY_OPTIONS`` from an environment file without removing
    quotes, so ``-dump='reset,full:.*'`` reaches the program with them; a shell would
    have removed them.
    """
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _flag_dest(flag: str) -> str:
    return "flag_" + flag.replace("-", "_")


def add_config_flags(
    parser: argparse.ArgumentParser, show: Optional[Collection[str]] = None
) -> None:
    """Add every configuration flag (``--relay-socket`` ...) to `parser`; the help of
    those not in `show` is hidden (default: all shown). See `flag_overrides`."""
    for flag, key in FLAGS.items():
        kwargs: Dict[str, Any] = {
            "dest": _flag_dest(flag),
            "metavar": "VALUE",
            "type": unquote,
            "help": f"[{key.section}] {key.name}: {key.help} Allowed: "
            f"{key.type.describe_allowed()}.",
        }
        if isinstance(key.type, Bool):
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        if show is not None and flag not in show:
            kwargs["help"] = argparse.SUPPRESS
        parser.add_argument("--" + flag, **kwargs)


def flag_overrides(args: argparse.Namespace) -> Dict[Tuple[str, str], str]:
    """The `load` overrides of the configuration flags given on a parsed command line."""
    out: Dict[Tuple[str, str], str] = {}
    for flag, key in FLAGS.items():
        value = getattr(args, _flag_dest(flag), None)
        if value is not None:
            out[(key.section, key.name)] = value
    return out


def default_control_socket(relay_socket: str) -> str:
    """The control socket next to `relay_socket` (``[relay] control-socket``'s default)."""
    path = relay_socket[len("unix://") :] if relay_socket.startswith("unix://") else relay_socket
    return os.path.join(os.path.dirname(path), CONTROL_SOCKET_NAME)


def _template_of(section: str) -> Optional[str]:
    """The table section of a canonical section name, None if unknown."""
    if section in SECTIONS and section != BALLOON_TYPE_SECTION:
        return section
    if section.startswith(_BALLOON_TYPE_PREFIX):
        return BALLOON_TYPE_SECTION
    return None


def _keys_of(template: str) -> List[Key]:
    return [k for k in KEYS if k.section == template]


def keys_of(section: str) -> List[Key]:
    """The keys of a section (a ``policy.balloons.type.X`` gives the type's keys)."""
    template = _template_of(SECTION_ALIASES.get(section, section))
    return _keys_of(template) if template else []


# --- the frozen Config ---------------------------------------------------------


class Setting(NamedTuple):
    """The effective value of one key and where it came from.

    ``source`` is ``"FILE:LINE"``, ``"flag -NAME"`` (or the override source), or
    ``"default"`` / ``"default (derived from [section] key)"``. ``raw`` is the text
    the value was parsed from. ``file``/``line`` locate it for problems.
    """

    value: Any
    source: str
    raw: str
    file: Optional[str] = None
    line: Optional[int] = None


class Change(NamedTuple):
    """A difference between two configs: section, key, old and new value."""

    section: str
    key: str
    old: Any
    new: Any


@dataclass(frozen=True)
class Config:
    """A validated configuration; read-only. Build it with `load`."""

    config_dir: str
    files: Tuple[str, ...]
    settings: Mapping[Tuple[str, str], Setting]
    balloon_type_names: Tuple[str, ...]

    def setting(self, section: str, key: str) -> Setting:
        section = SECTION_ALIASES.get(section, section)
        try:
            return self.settings[(section, key)]
        except KeyError:
            raise KeyError(f"no configuration key [{section}] {key}") from None

    def get(self, section: str, key: str) -> Any:
        """The typed value of ``[section] key`` (KeyError if there is no such key)."""
        return self.setting(section, key).value

    def source(self, section: str, key: str) -> str:
        """Where the value came from: ``FILE:LINE``, ``flag -NAME`` or ``default``."""
        return self.setting(section, key).source

    def section_values(self, section: str) -> Mapping[str, Any]:
        """All keys of a section with their values (defaults included), table order."""
        section = SECTION_ALIASES.get(section, section)
        return MappingProxyType(
            {k: s.value for (sec, k), s in self.settings.items() if sec == section}
        )

    @property
    def policy_name(self) -> str:
        """The canonical name of the active policy."""
        return self.get("policy", "name")

    def policy_options(self, policy_name: str) -> Mapping[str, Any]:
        """The options of ``[policy.<name>]`` (aliases accepted); empty for none.

        For balloons also ``"types"``: `balloon_types` as a tuple, in matching order,
        so that the policy gets everything it is configured with in one mapping.
        """
        name = _POLICY_NAMES.aliases.get(policy_name, policy_name)
        values = self.section_values("policy." + name)
        if name == "balloons":
            return MappingProxyType({**values, "types": tuple(self.balloon_types())})
        return values

    def balloon_types(self) -> List[Tuple[str, Mapping[str, Any]]]:
        """``(name, options)`` of each ``[policy.balloons.type.NAME]``, in file order."""
        return [
            (name, self.section_values(_BALLOON_TYPE_PREFIX + name))
            for name in self.balloon_type_names
        ]

    @property
    def dump_rules(self) -> Tuple[DumpRule, ...]:
        """The effective dump rules, built-in defaults and ``reset`` applied."""
        return self.get("dump", "rules")

    def describe(self) -> str:
        """Every key, its value and its source, as a loadable configuration file."""
        lines = [
            "# Effective configuration of cri-resmgr; config dir " + (self.config_dir or "(none)")
        ]
        if self.files:
            lines.append("# Files read, in order:")
            lines.extend(f"#   {f}" for f in self.files)
        else:
            lines.append("# No configuration files were read.")
        current = None
        for (section, key), setting in self.settings.items():
            if section != current:
                lines += ["", f"[{section}]"]
                current = section
            template = _template_of(section)
            assert template is not None
            ktype = _KEY_INDEX[(template, key)].type
            lines.append(f"# from {setting.source}")
            lines.append(f"{key} = {ktype.format(setting.value)}".rstrip())
        return "\n".join(lines) + "\n"


def after_reload(old: Config, new: Config) -> Tuple[Config, List[Change], List[Change]]:
    """What a reload puts in force: (effective config, live changes, restart changes).

    The effective configuration is ``new`` with every key that needs a restart kept at
    its running (``old``) value, so what the service reports and applies is what is in
    effect; the restart changes are what the next start will pick up. A change to the
    balloon types that needs a restart keeps all the running types.
    """
    live, restart = diff_live(old, new)
    if not restart:
        return new, live, restart
    settings = dict(new.settings)
    names = new.balloon_type_names
    if any(
        c.section.startswith(_BALLOON_TYPE_PREFIX) or c.section == BALLOON_TYPE_SECTION
        for c in restart
    ):
        settings = {k: v for k, v in settings.items() if not k[0].startswith(_BALLOON_TYPE_PREFIX)}
        settings.update(
            (k, v) for k, v in old.settings.items() if k[0].startswith(_BALLOON_TYPE_PREFIX)
        )
        names = old.balloon_type_names
    for change in restart:
        key = (change.section, change.key)
        if key in old.settings:
            settings[key] = old.settings[key]
        else:
            settings.pop(key, None)
    effective = Config(
        config_dir=new.config_dir,
        files=new.files,
        settings=MappingProxyType(settings),
        balloon_type_names=names,
    )
    return effective, live, restart


def diff_live(old: Config, new: Config) -> Tuple[List[Change], List[Change]]:
    """Split the differences from ``old`` to ``new`` into (live, restart-needed).

    A key missing on one side (a balloon type added or removed) is None there. A
    change in the order of the balloon types (which decides matching) is the restart
    change ``Change("policy.balloons.type.NAME", "order", old names, new names)``.
    """
    live: List[Change] = []
    restart: List[Change] = []
    names = list(old.settings) + [n for n in new.settings if n not in old.settings]
    for section, key in names:
        before = old.settings.get((section, key))
        after = new.settings.get((section, key))
        old_value = before.value if before else None
        new_value = after.value if after else None
        if old_value == new_value and (before is None) == (after is None):
            continue
        template = _template_of(section)
        assert template is not None
        change = Change(section, key, old_value, new_value)
        (live if _KEY_INDEX[(template, key)].live else restart).append(change)
    common = set(old.balloon_type_names) & set(new.balloon_type_names)
    old_order = [n for n in old.balloon_type_names if n in common]
    new_order = [n for n in new.balloon_type_names if n in common]
    if old_order != new_order:
        restart.append(
            Change(BALLOON_TYPE_SECTION, "order", old.balloon_type_names, new.balloon_type_names)
        )
    return live, restart


# --- reading -----------------------------------------------------------------


class _Entry(NamedTuple):
    section: str  # as written
    key: str  # as written
    line: int
    value: List[str]  # configparser's value lines, joined after reading


class _Recorder:
    """Notes the line of every header and key configparser reads (duplicates too)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lineno = 0
        self.reading = True
        self.last_key = ""
        self.headers: List[Tuple[str, int]] = []
        self.entries: List[_Entry] = []
        self.problems: List[Problem] = []
        self._first_header: Dict[str, int] = {}
        self._first_key: Dict[Tuple[str, str], int] = {}

    def lines(self, text: str) -> Iterator[str]:
        parts = text.split("\n")
        if parts and parts[-1] == "":
            parts.pop()
        for number, line in enumerate(parts, start=1):
            self.lineno = number
            stripped = line.strip()
            if re.match(r"\[[^\]]*\]\s*[^\s#;]", stripped) and not line[:1].isspace():
                self.problems.append(
                    Problem(self.path, number, None, None, None, "text after section header")
                )
            yield line + "\n"
        self.reading = False

    def header(self, name: str) -> None:
        first = self._first_header.get(name)
        if first is not None:
            self.problems.append(
                Problem(
                    self.path,
                    self.lineno,
                    name,
                    None,
                    None,
                    f"section appears twice in this file (first at line {first})",
                )
            )
        else:
            self._first_header[name] = self.lineno
        self.headers.append((name, self.lineno))

    def option(self, section: str, value: Any) -> None:
        written = self.last_key.strip()
        first = self._first_key.get((section, written.lower()))
        if first is not None:
            self.problems.append(
                Problem(
                    self.path,
                    self.lineno,
                    section,
                    written,
                    value[0] if isinstance(value, list) and value else None,
                    f"key appears twice in this section (first at line {first})",
                )
            )
        else:
            self._first_key[(section, written.lower())] = self.lineno
        if isinstance(value, list):
            self.entries.append(_Entry(section, written, self.lineno, value))


class _RecordingDict(Dict[str, Any]):
    """configparser's dict_type: its sections dict and every section's dict.

    The sections dict is the one that gets dicts as values; configparser looks a
    section up in it while reading only for a repeated header.
    """

    def __init__(self, recorder: _Recorder) -> None:
        super().__init__()
        self.recorder = recorder
        self.section: Optional[str] = None  # set on a section's dict
        self.is_sections = False

    def __setitem__(self, key: str, value: Any) -> None:
        if self.recorder.reading:
            if isinstance(value, _RecordingDict):
                self.is_sections = True
                value.section = key
                self.recorder.header(key)
            elif self.section is not None:
                self.recorder.option(self.section, value)
        super().__setitem__(key, value)

    def __getitem__(self, key: str) -> Any:
        if self.recorder.reading and self.is_sections:
            self.recorder.header(key)
        return super().__getitem__(key)


class _Parser(configparser.ConfigParser):
    def __init__(self, recorder: _Recorder) -> None:
        self._recorder = recorder
        super().__init__(
            dict_type=lambda: _RecordingDict(recorder),  # type: ignore[arg-type,return-value]
            interpolation=None,
            delimiters=("=",),
            comment_prefixes=("#", ";"),
            inline_comment_prefixes=None,
            strict=False,
            empty_lines_in_values=False,
            default_section="\x00no default section",
        )

    def optionxform(self, optionstr: str) -> str:
        self._recorder.last_key = optionstr
        return optionstr.lower()


def _read_file(path: str) -> _Recorder:
    """Parse one file into headers and entries with lines; syntax errors as problems."""
    recorder = _Recorder(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        recorder.problems.append(
            Problem(path, None, None, None, None, f"cannot read: {exc.strerror or exc}")
        )
        return recorder
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        recorder.problems.append(
            Problem(path, 1, None, None, None, "not valid UTF-8 (UTF-16, by its byte order mark)")
        )
        return recorder
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        recorder.problems.append(Problem(path, line, None, None, None, "not valid UTF-8"))
        return recorder
    if text.startswith("\ufeff"):  # a UTF-8 byte order mark, as some editors write
        text = text[1:]
    lines = text.split("\n")
    parser = _Parser(recorder)
    try:
        parser.read_file(recorder.lines(text), source=path)
    except configparser.MissingSectionHeaderError as exc:
        recorder.problems.append(
            Problem(
                path,
                exc.lineno,
                None,
                None,
                None,
                f"{lines[exc.lineno - 1].strip()!r} comes before any [section] header",
            )
        )
    except configparser.ParsingError as exc:
        for lineno, _ in exc.errors:
            recorder.problems.append(
                Problem(
                    path,
                    lineno,
                    None,
                    None,
                    None,
                    f"{lines[lineno - 1].strip()!r} is not a [section] header, a "
                    "`key = value` line, an indented continuation of a value or a comment",
                )
            )
    except configparser.Error as exc:  # not expected with strict=False; be safe
        recorder.problems.append(Problem(path, None, None, None, None, str(exc)))
    return recorder


def _list_files(config_dir: str, problems: List[Problem]) -> List[str]:
    try:
        names = os.listdir(config_dir)
    except FileNotFoundError:
        log.debug("configuration directory %s does not exist; using defaults", config_dir)
        return []
    except OSError as exc:
        problems.append(
            Problem(config_dir, None, None, None, None, f"cannot list: {exc.strerror or exc}")
        )
        return []
    files = []
    for name in sorted(names):
        if not name.endswith(".conf") or name.startswith("."):
            continue
        path = os.path.join(config_dir, name)
        if not os.path.isfile(path):
            problems.append(Problem(path, None, None, None, None, _not_a_file(path)))
            continue
        files.append(path)
    return files


def _not_a_file(path: str) -> str:
    """Why `path`, listed but not a regular file that can be opened, is not read."""
    try:
        target: Optional[str] = os.readlink(path)
    except OSError:
        target = None  # not a symlink
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if target is None:
            return f"cannot read: {reason}"
        if exc.errno == errno.ELOOP:
            return f"a symlink loop (-> {target})"
        if exc.errno == errno.ENOENT:
            if os.path.lexists(os.path.join(os.path.dirname(path), target)):
                # the target is a symlink too, dangling further on
                return f"a dangling symlink to {target} ({os.path.realpath(path)} does not exist)"
            return f"a dangling symlink to {target}, which does not exist"
        return f"a symlink to {target}, which cannot be followed: {reason}"
    what = "a directory, not a regular file" if stat.S_ISDIR(mode) else "not a regular file"
    if target is not None:
        return f"a symlink to {target}, which is {what}"
    return what


def _override_label(key: Optional[Key], override_source: str) -> str:
    if key is not None and key.flag and override_source == "command line":
        return f"flag -{key.flag}"
    return override_source


class _Loader:
    """Collects values (later ones win) and problems, file by file."""

    def __init__(self) -> None:
        self.problems: List[Problem] = []
        self.values: Dict[Tuple[str, str], Setting] = {}
        self.failed: set = set()  # (section, key) whose last value was bad
        self.balloon_types: List[str] = []

    def section(
        self, written: str, file: str, line: Optional[int], problems: List[Problem]
    ) -> Optional[str]:
        """Canonical name of a section header, None (and a problem) if unknown."""
        section = SECTION_ALIASES.get(written, written)
        if section.startswith(_BALLOON_TYPE_PREFIX):
            name = section[len(_BALLOON_TYPE_PREFIX) :]
            if not _BALLOON_NAME_RE.match(name):
                problems.append(
                    Problem(
                        file,
                        line,
                        written,
                        None,
                        None,
                        f"bad balloon type name {name!r}",
                        "lowercase letters, digits and -",
                    )
                )
                return None
            if name not in self.balloon_types:
                self.balloon_types.append(name)
            return section
        if _template_of(section) is None:
            known = list(SECTIONS)
            problems.append(
                Problem(
                    file,
                    line,
                    written,
                    None,
                    None,
                    "unknown section" + _suggest(written, known),
                    ", ".join(known),
                )
            )
            return None
        return section

    def value(  # noqa: PLR0917
        self,
        section: str,
        written_section: str,
        written_key: str,
        raw: str,
        where: Tuple[str, Optional[int]],
        problems: List[Problem],
        override_source: Optional[str] = None,
    ) -> None:
        """Parse one value; ``where`` is (file, line), or (label, None) for overrides."""
        template = _template_of(section)
        assert template is not None
        file, line = where
        name = written_key.strip().lower()
        key = _KEY_INDEX.get((template, name))
        if override_source is not None:
            file = _override_label(key, override_source)
        if key is None:
            names = [k.name for k in _keys_of(template)]
            problems.append(
                Problem(
                    file,
                    line,
                    written_section,
                    written_key,
                    raw,
                    "unknown key" + _suggest(name, names),
                    ", ".join(names),
                )
            )
            return
        try:
            value = key.type.parse(raw)
        except BadValue as exc:
            problems.append(
                Problem(
                    file,
                    line,
                    written_section,
                    written_key,
                    raw,
                    str(exc),
                    key.type.describe_allowed(),
                )
            )
            self.failed.add((section, key.name))
            return
        source = file if line is None else f"{file}:{line}"
        self.values[(section, key.name)] = Setting(value, source, raw, file, line)
        self.failed.discard((section, key.name))

    def read(self, path: str) -> None:
        recorder = _read_file(path)
        problems = list(recorder.problems)
        sections: Dict[str, Optional[str]] = {}
        for written, line in recorder.headers:
            if written not in sections:
                sections[written] = self.section(written, path, line, problems)
        first: Dict[Tuple[str, str], _Entry] = {}  # (section, key) -> first entry
        for entry in recorder.entries:
            section = sections.get(entry.section)
            if section is None:
                continue  # an unknown section is reported once, at its header
            raw = "\n".join(entry.value).rstrip()
            earlier = first.setdefault((section, entry.key.lower()), entry)
            if earlier.section != entry.section:
                # the same section under two names ([policy.memtier] and
                # [policy.topology-aware]); under one name the recorder reported it
                alias = entry.section if entry.section != section else earlier.section
                problems.append(
                    Problem(
                        path,
                        entry.line,
                        entry.section,
                        entry.key,
                        raw,
                        f"key appears twice in this section (first at line {earlier.line}, "
                        f"in [{earlier.section}]; [{alias}] is another name of [{section}])",
                    )
                )
            self.value(section, entry.section, entry.key, raw, (path, entry.line), problems)
        problems.sort(key=lambda p: p.line or 0)
        self.problems += problems

    def override(self, written_section: str, written_key: str, raw: str, source: str) -> None:
        section = self.section(written_section, source, None, self.problems)
        if section is not None:
            self.value(
                section, written_section, written_key, raw, (source, None), self.problems, source
            )


def _sections_in_order(balloon_types: Sequence[str]) -> List[Tuple[str, str]]:
    """(section, template) of every section of a config, in output order."""
    result = []
    for section in SECTIONS:
        if section == BALLOON_TYPE_SECTION:
            result += [(_BALLOON_TYPE_PREFIX + n, section) for n in balloon_types]
        else:
            result.append((section, section))
    return result


def _is_set(setting: Setting) -> bool:
    return not setting.source.startswith("default")


def _cross_check(
    settings: Mapping[Tuple[str, str], Setting],
    balloon_types: Sequence[str],
    failed: Collection[Tuple[str, str]],
) -> List[Problem]:
    """Checks between keys; a check that involves a key whose value was bad is skipped."""
    problems: List[Problem] = []

    def check(keys: Sequence[Tuple[str, str]], bad: bool, message: str) -> None:
        """Report at the first of ``keys`` that was set (not a default)."""
        if not bad or any(k in failed for k in keys):
            return
        located = [k for k in keys if _is_set(settings[k])] or list(keys)
        section, key = located[0]
        setting = settings[(section, key)]
        problems.append(
            Problem(
                setting.file or setting.source,
                setting.line,
                section,
                key,
                setting.raw,
                message,
            )
        )

    runner = settings[("runtime", "runner")].value
    runtime_socket = settings[("runtime", "runtime-socket")].value
    check(
        [("runtime", "runner"), ("runtime", "runtime-socket")],
        runner == "custom" and runtime_socket is None,
        "runner custom needs runtime-socket to be set",
    )
    relay = settings[("relay", "socket")].value
    for key in ("runtime-socket", "image-socket"):
        check(
            [("runtime", key), ("relay", "socket")],
            settings[("runtime", key)].value == relay,
            f"[relay] socket and [runtime] {key} are the same socket (the relay would call itself)",
        )
    check(
        [("relay", "control-socket"), ("relay", "socket")],
        settings[("relay", "control-socket")].value == relay,
        "[relay] socket and control-socket are the same socket",
    )
    for name in balloon_types:
        section = _BALLOON_TYPE_PREFIX + name
        for low, high in (("min-cpus", "max-cpus"), ("min-balloons", "max-balloons")):
            lo, hi = settings[(section, low)].value, settings[(section, high)].value
            check(
                [(section, low), (section, high)],
                hi > 0 and lo > hi,
                f"{low} ({lo}) is more than {high} ({hi})",
            )
        if name in BUILTIN_BALLOON_TYPES:
            for key in ("min-balloons", "max-balloons"):
                check(
                    [(section, key)],
                    _is_set(settings[(section, key)]),
                    f"cannot be set for the built-in {name} balloon type, which always "
                    "has exactly one balloon",
                )
    return problems


def load(
    config_dir: str = DEFAULT_CONFIG_DIR,
    overrides: Optional[Mapping[Tuple[str, str], str]] = None,
    override_source: str = "command line",
) -> Config:
    """Read ``config_dir/*.conf`` in lexical order, apply ``overrides``, validate.

    ``overrides`` maps ``(section, key)`` to raw text (as in a file) and beats every
    file; their source is ``flag -NAME`` when ``override_source`` is "command line"
    and the key has a flag, else ``override_source``. A missing directory (or "")
    means no files: defaults and overrides only. Raises `ConfigError` with every
    problem found.
    """
    loader = _Loader()
    files = _list_files(config_dir, loader.problems) if config_dir else []
    for path in files:
        loader.read(path)
    for (section, key), raw in (overrides or {}).items():
        loader.override(section, key, raw, override_source)

    settings: Dict[Tuple[str, str], Setting] = {}

    def get(section: str, key: str) -> Any:
        return settings[(section, key)].value

    for section, template in _sections_in_order(loader.balloon_types):
        for key in _keys_of(template):
            setting = loader.values.get((section, key.name))
            if setting is None:
                setting = Setting(key.type.parse(key.default), "default", key.default)
            if setting.value is None and key.derive is not None:
                source = setting.source
                if source == "default":
                    source = f"default (derived from {key.derived_from})"
                setting = setting._replace(value=key.derive(get), source=source)
            settings[(section, key.name)] = setting
    loader.problems += _cross_check(settings, loader.balloon_types, loader.failed)
    if loader.problems:
        raise ConfigError(loader.problems)
    return Config(
        config_dir=config_dir,
        files=tuple(files),
        settings=MappingProxyType(settings),
        balloon_type_names=tuple(loader.balloon_types),
    )


def default_config() -> Config:
    """The configuration with every key at its default (no files read)."""
    return load("")


# --- generated documentation -----------------------------------------------------


def _default_text(key: Key) -> str:
    if key.default_doc:
        return key.default_doc
    if key.default != "":
        return key.default
    meaning = getattr(key.type, "empty", None)
    return f"empty ({meaning})" if meaning else "empty"


def _reload_text(key: Key) -> str:
    return "a change is applied on reload (SIGHUP)" if key.live else "a change needs a restart"


def render_conf() -> str:
    """The shipped etc/cri-resmgr/cri-resmgr.conf: every key documented, commented out."""
    width = 88
    out: List[str] = []

    def comment(text: str, indent: str = "") -> None:
        for line in textwrap.wrap(
            text,
            width=width,
            initial_indent="# " + indent,
            subsequent_indent="# " + indent,
            break_on_hyphens=False,
            break_long_words=False,
        ):
            out.append(line)

    comment(
        "cri-resmgr configuration. Generated from the key table in cri_resmgr/config.py "
        "(python -m cri_resmgr.config --write-conf); every key is listed with its "
        "meaning, allowed values and default, and every value is commented out, so "
        "this file changes nothing."
    )
    out.append("#")
    comment(
        "Every *.conf file in the configuration directory (default /etc/cri-resmgr, "
        "flag -config-dir) is read in lexical order of the file names; a later file "
        "overrides an earlier one key by key, and command-line flags override the "
        "files. Uncomment a value here or, better, put local settings in a file that "
        "sorts after this one (e.g. local.conf). Key names are case-insensitive; "
        "values are not quoted, '#' and '%' in a value are part of it, and a long value "
        "continues on indented lines. Check with: cri-resmgr config check; see the "
        "effective configuration with: cri-resmgr -print-config."
    )
    for section, description in SECTIONS.items():
        template = section == BALLOON_TYPE_SECTION
        out += ["", ""]
        comment(f"[{section}] {description}")
        if template:
            comment("For example:")
            out.append(f"#[{section}]")
        else:
            out.append(f"[{section}]")
        for key in _keys_of(section):
            out.append("")
            comment(f"{key.name}: {key.help}")
            comment(f"Allowed: {key.type.describe_allowed()}.", indent="  ")
            comment(f"Default: {_default_text(key)}.", indent="  ")
            flag = f"Flag: -{key.flag}; " if key.flag else ""
            reload = f"{flag}{_reload_text(key)}."
            comment(reload[0].upper() + reload[1:], indent="  ")
            out.append(f"#{key.name} = {key.default}".rstrip())
    return "\n".join(out) + "\n"


def _md_text(text: str) -> str:
    """Plain text for markdown: no tables broken, no emphasis, no HTML tags."""
    for char in "\\|*<>_[":
        text = text.replace(char, "\\" + char)
    return text


def render_markdown() -> str:
    """The key reference part of docs/configuration.md."""
    out: List[str] = [
        _GENERATED_BEGIN,
        "",
        "<!-- Generated from the key table in cri_resmgr/config.py; do not edit here. -->",
        "",
    ]
    for section, description in SECTIONS.items():
        out += [f"### `[{section}]`", "", _md_text(description), ""]
        out += ["| key | allowed | default | flag | on reload |", "| --- | --- | --- | --- | --- |"]
        for key in _keys_of(section):
            flag = f"`-{key.flag}`" if key.flag else ""
            reload = "live" if key.live else "restart"
            allowed = _md_text(key.type.describe_allowed())
            default = _md_text(_default_text(key))
            out.append(f"| `{key.name}` | {allowed} | {default} | {flag} | {reload} |")
        out.append("")
        for key in _keys_of(section):
            out += [f"- **`{key.name}`**: {_md_text(key.help)}"]
        out.append("")
    out.append(_GENERATED_END)
    return "\n".join(out) + "\n"


# --- command line: generate and check the shipped files ----------------------


def _replace_generated(text: str) -> str:
    """``text`` (a markdown page) with the generated key reference updated."""
    try:
        head, rest = text.split(_GENERATED_BEGIN, 1)
        _, tail = rest.split(_GENERATED_END + "\n", 1)
    except ValueError:
        raise ValueError(f"markers {_GENERATED_BEGIN!r} ... {_GENERATED_END!r} not found") from None
    return head + render_markdown() + tail


def _write_or_check(path: str, wanted: str, write: bool) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            current: Optional[str] = f.read()
    except FileNotFoundError:
        current = None
    if current == wanted:
        return True
    if write:
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(wanted)
        print(f"wrote {path}")
        return True
    print(f"{path} is out of date; run: python -m cri_resmgr.config --write-conf/--write-docs")
    return False


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m cri_resmgr.config``: regenerate/check the shipped files, check a dir."""
    parser = argparse.ArgumentParser(prog="python -m cri_resmgr.config", description=main.__doc__)
    parser.add_argument("--write-conf", metavar="PATH", help="write render_conf() to PATH")
    parser.add_argument("--check-conf", metavar="PATH", help="fail if PATH != render_conf()")
    parser.add_argument(
        "--write-docs", metavar="PATH", help="update the generated key reference in PATH"
    )
    parser.add_argument(
        "--check-docs", metavar="PATH", help="fail if the key reference in PATH is stale"
    )
    parser.add_argument(
        "--check-dir", metavar="DIR", help="load DIR/*.conf and report every problem"
    )
    parser.add_argument(
        "--print", metavar="DIR", dest="print_dir", help="print the effective config of DIR"
    )
    args = parser.parse_args(argv)
    ok = True
    try:
        if args.write_conf or args.check_conf:
            path = args.write_conf or args.check_conf
            ok &= _write_or_check(path, render_conf(), bool(args.write_conf))
        if args.write_docs or args.check_docs:
            path = args.write_docs or args.check_docs
            with open(path, encoding="utf-8") as f:
                wanted = _replace_generated(f.read())
            ok &= _write_or_check(path, wanted, bool(args.write_docs))
        for directory in (args.check_dir, args.print_dir):
            if directory:
                config = load(directory)
                if directory == args.print_dir:
                    sys.stdout.write(config.describe())
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
