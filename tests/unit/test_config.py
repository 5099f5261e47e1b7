"""Tests of cri_resmgr.config: the key table, layered strict loading, Config, generators."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import pytest

from cri_resmgr import config as cfg
from cri_resmgr import logs
from cri_resmgr.config import (
    CPUReservation,
    DumpRule,
    load,
    parse_dump_rules,
    split_dump_rules,
)
from cri_resmgr.errors import ConfigError, Error, Problem
from cri_resmgr.resources.cpuset import CPUSet

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONF = ROOT / "etc" / "cri-resmgr" / "cri-resmgr.conf"
DOCS = ROOT / "docs" / "configuration.md"


def write(directory: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def problems_of(
    directory: Path,
    files: Mapping[str, str],
    overrides: Optional[Mapping[Tuple[str, str], str]] = None,
) -> List[Problem]:
    write(directory, files)
    with pytest.raises(ConfigError) as info:
        load(str(directory), overrides)
    return list(info.value.problems)


def one_problem(
    directory: Path, text: str, overrides: Optional[Mapping[Tuple[str, str], str]] = None
) -> Problem:
    problems = problems_of(directory, {"10-test.conf": text}, overrides)
    assert len(problems) == 1, problems
    return problems[0]


# --- the table -------------------------------------------------------------


def test_table_is_consistent() -> None:
    seen = set()
    for key in cfg.KEYS:
        assert key.section in cfg.SECTIONS, key
        assert (key.section, key.name) not in seen, key
        seen.add((key.section, key.name))
        assert re.fullmatch(r"[a-z][a-z0-9-]*", key.name), key
        assert key.help.strip() and key.type.describe_allowed()
        # every default parses and formats back to text that parses to the same value
        value = key.type.parse(key.default)
        assert key.type.parse(key.type.format(value)) == value, key
        assert (key.derive is not None) == bool(key.derived_from), key
    for section in cfg.SECTIONS:
        assert cfg.keys_of(section.replace("NAME", "x")), section
    flags = [k.flag for k in cfg.KEYS if k.flag]
    assert len(flags) == len(set(flags)) == len(cfg.FLAGS)
    assert set(cfg.FLAGS) == {
        "runtime-socket",
        "image-socket",
        "relay-socket",
        "relay-dir",
        "sysfs-root",
        "policy",
        "reserved-cpus",
        "disable-policy-switch",
        "dump",
        "dump-file",
        "log-level",
        "debug",
        "runner",
        "pid-file",
        "log-file",
    }


def test_live_keys() -> None:
    live = {(k.section, k.name) for k in cfg.KEYS if k.live}
    assert live == {
        ("relay", "grace-period"),
        ("policy.static", "on-error"),
        ("policy.static", "strict-reservation"),
        ("policy.static", "full-pcpus-only"),
        ("policy.topology-aware", "on-error"),
        ("policy.topology-aware", "pin-cpu"),
        ("policy.topology-aware", "pin-memory"),
        ("policy.topology-aware", "prefer-isolated-cpus"),
        ("policy.topology-aware", "prefer-shared-cpus"),
        ("policy.topology-aware", "reserved-pool-namespaces"),
        ("policy.topology-aware", "colocate-pods"),
        ("policy.balloons", "on-error"),
        ("dump", "rules"),
        ("dump", "file"),
        ("log", "level"),
        ("log", "debug"),
    }


# --- defaults ----------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    config = load(str(tmp_path / "missing"))
    assert config.files == ()
    assert config.get("runtime", "runner") == "containerd"
    assert config.get("runtime", "runtime-socket") == "/run/containerd/containerd.sock"
    assert config.get("runtime", "image-socket") == "/run/containerd/containerd.sock"
    assert config.get("relay", "socket") == "/var/run/cri-resmgr/cri-resmgr.sock"
    assert config.get("relay", "state-dir") == "/var/lib/cri-resmgr"
    assert config.get("relay", "grace-period") == 10.0
    assert config.get("relay", "control-socket") == "/var/run/cri-resmgr/cri-resmgr-control.sock"
    assert config.get("host", "sysfs-root") == "/"
    assert config.get("policy", "name") == "none"
    assert config.policy_name == "none"
    assert config.get("policy", "reserved-cpus") == CPUReservation(milli_cpus=1000)
    assert config.get("policy", "disable-policy-switch") is False
    assert config.get("policy.topology-aware", "reserved-pool-namespaces") == ("kube-system",)
    assert config.get("dump", "file") is None
    assert config.get("log", "level") == "info"
    assert config.get("log", "debug") == ()
    assert config.get("metrics", "listen") == ""
    assert config.get("daemon", "pid-file") == "/var/run/cri-resmgr/cri-resmgr.pid"
    assert config.source("relay", "socket") == "default"
    assert config.source("runtime", "runtime-socket") == "default (derived from [runtime] runner)"
    assert config.balloon_types() == []
    assert config.dump_rules == (
        DumpRule("off", ".*", False),
        DumpRule("name", "(Create|Start|Run|Update|Stop|Remove).*", False),
    )
    assert config.settings == cfg.default_config().settings
    assert cfg.default_config() == load("")


def test_empty_dir_and_ignored_files(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "README": "not ini at all",
            "x.conf.bak": "junk",
            ".hidden.conf": "junk",
            "10-ok.conf": "[log]\nlevel = debug\n",
        },
    )
    config = load(str(tmp_path))
    assert config.files == (str(tmp_path / "10-ok.conf"),)
    assert config.get("log", "level") == "debug"


# --- layering --------------------------------------------------------------------


def test_layering_lexical_key_by_key(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "10-base.conf": "[relay]\nsocket = /run/a.sock\nstate-dir = /var/lib/a\n",
            "20-site.conf": "# site\n[relay]\n\nsocket = /run/b.sock\n",
            # "9" sorts after "20": lexical, not numeric
            "9-last.conf": "[log]\nlevel = error\n[relay]\nstate-dir = /var/lib/c\n",
        },
    )
    config = load(str(tmp_path))
    assert [os.path.basename(f) for f in config.files] == [
        "10-base.conf",
        "20-site.conf",
        "9-last.conf",
    ]
    assert config.get("relay", "socket") == "/run/b.sock"
    assert config.source("relay", "socket") == f"{tmp_path}/20-site.conf:4"
    assert config.get("relay", "state-dir") == "/var/lib/c"
    assert config.source("relay", "state-dir") == f"{tmp_path}/9-last.conf:4"
    assert config.get("log", "level") == "error"
    assert config.source("relay", "grace-period") == "default"
    # the derived control socket follows the effective relay socket
    assert config.get("relay", "control-socket") == "/run/cri-resmgr-control.sock"


def test_overrides_beat_files(tmp_path: Path) -> None:
    write(tmp_path, {"10.conf": "[relay]\nsocket = /run/a.sock\n[log]\nlevel = error\n"})
    config = load(
        str(tmp_path),
        {
            ("relay", "socket"): "unix:///run/flag.sock",
            ("metrics", "listen"): ":8891",
            ("policy", "disable-policy-switch"): "true",
        },
    )
    assert config.get("relay", "socket") == "/run/flag.sock"
    assert config.source("relay", "socket") == "flag -relay-socket"
    assert config.get("metrics", "listen") == ":8891"
    assert config.source("metrics", "listen") == "command line"
    assert config.source("policy", "disable-policy-switch") == "flag -disable-policy-switch"
    assert config.get("log", "level") == "error"
    other = load(str(tmp_path), {("log", "level"): "debug"}, override_source="environment")
    assert other.source("log", "level") == "environment"


def test_bad_override_names_flag(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        {},
        {("policy", "name"): "fancy", ("nope", "x"): "1", ("policy", "bogus"): "2"},
    )
    assert [str(p) for p in problems] == [
        'flag -policy: [policy] name = "fancy": unknown value (allowed: one of none, static, '
        "topology-aware, balloons; aliases null = none, memtier = topology-aware)",
        "command line: [nope]: unknown section (allowed: " + ", ".join(cfg.SECTIONS) + ")",
        'command line: [policy] bogus = "2": unknown key (allowed: name, reserved-cpus, '
        "disable-policy-switch)",
    ]


# --- strictness: values ------------------------------------------------------------

DEBUG_ALLOWED = (
    "a list of module names of cri_resmgr (policy.static means cri_resmgr.policy.static; a "
    "module includes its submodules), separated by commas or spaces; * or all for all; or "
    "empty"
)


@pytest.mark.parametrize(
    "section, line, message, allowed",
    [
        (
            "runtime",
            "runner = docker",
            "unknown value",
            "one of containerd, crio, custom",
        ),
        (
            "runtime",
            "runner = Containerd",
            "unknown value; did you mean 'containerd'?",
            "one of containerd, crio, custom",
        ),
        (
            "runtime",
            "runtime-socket = run/x.sock",
            "not an absolute path",
            "an absolute path, optionally prefixed by unix://; or empty (derived from runner)",
        ),
        (
            "runtime",
            "image-socket = unix://",
            "no path after unix://",
            "an absolute path, optionally prefixed by unix://; or empty (same as runtime-socket)",
        ),
        ("relay", "state-dir =", "a path is required", "an absolute path"),
        (
            "relay",
            "grace-period = -1",
            "not a number of seconds",
            "a number of seconds from 0 to 3600, e.g. 10 or 2.5",
        ),
        (
            "relay",
            "grace-period = 7200",
            "more than 3600 seconds",
            "a number of seconds from 0 to 3600, e.g. 10 or 2.5",
        ),
        (
            "policy",
            "disable-policy-switch = maybe",
            "not a boolean",
            "true or false (also yes/no, on/off, 1/0)",
        ),
        ("policy.static", "on-error = ignore", "unknown value", "one of fail, pass"),
        (
            "policy.topology-aware",
            "reserved-pool-namespaces = kube-system, Bad_NS",
            "bad item 'Bad_NS'",
            "a list of namespace names or globs (*, ?, [...]), separated by commas or spaces; "
            "or empty",
        ),
        ("policy.balloons.type.x", "min-cpus = -1", "less than 0", "an integer >= 0"),
        ("policy.balloons.type.x", "max-cpus = two", "not an integer", "an integer >= 0"),
        (
            "policy.balloons.type.x",
            "share-idle-cpus-in-same = socket",
            "unknown value",
            "one of system, package, die, numa, core; or empty (idle CPUs are not shared)",
        ),
        (
            "log",
            "level = verbose",
            "unknown value",
            "one of debug, info, warning, error; aliases warn = warning",
        ),
        (
            "log",
            "debug = policy, 9lives",
            "unknown module '9lives'",
            DEBUG_ALLOWED,
        ),
        (
            "log",
            "debug = polcy, nosuchmodule, relay",
            "unknown modules 'polcy' (did you mean 'policy'?), 'nosuchmodule'",
            DEBUG_ALLOWED,
        ),
        (
            "log",
            "debug = static",
            "unknown module 'static'; did you mean 'policy.static'?",
            DEBUG_ALLOWED,
        ),
        (
            "log",
            "debug = cri_resmgr.polcy",
            "unknown module 'cri_resmgr.polcy'; did you mean 'cri_resmgr.policy'?",
            DEBUG_ALLOWED,
        ),
        (
            "log",
            "debug = topology-aware",
            "unknown module 'topology-aware'; did you mean 'policy.topology_aware'?",
            DEBUG_ALLOWED,
        ),
        (
            "metrics",
            "listen = localhost",
            "not HOST:PORT or unix:PATH",
            "HOST:PORT (e.g. 127.0.0.1:8891, :8891 for all addresses, [::1]:8891), "
            "unix:/ABSOLUTE/PATH, or empty (off)",
        ),
        (
            "metrics",
            "listen = :99999",
            "port out of range",
            "HOST:PORT (e.g. 127.0.0.1:8891, :8891 for all addresses, [::1]:8891), "
            "unix:/ABSOLUTE/PATH, or empty (off)",
        ),
        ("daemon", "pid-file = cri.pid", "not an absolute path", "an absolute path"),
        (
            "dump",
            "file = dump.log",
            "not an absolute path",
            "an absolute path; or empty (dump to the log)",
        ),
    ],
)
def test_bad_values(tmp_path: Path, section: str, line: str, message: str, allowed: str) -> None:
    problem = one_problem(tmp_path, f"# comment\n[{section}]\n{line}\n")
    key, _, value = (part.strip() for part in line.partition("="))
    assert problem == Problem(
        str(tmp_path / "10-test.conf"), 3, section, key, value, message, allowed
    )
    assert str(problem) == (
        f'{tmp_path}/10-test.conf:3: [{section}] {key} = "{value}": {message} (allowed: {allowed})'
    )


def test_bad_value_reported_even_if_overridden_later(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        {"10.conf": "[log]\nlevel = loud\n", "20.conf": "[log]\nlevel = debug\n"},
    )
    assert [(os.path.basename(p.file), p.line, p.key) for p in problems] == [
        ("10.conf", 2, "level")
    ]


def test_multiline_value_for_scalar(tmp_path: Path) -> None:
    problem = one_problem(tmp_path, "[log]\nlevel = info\n  debug\n")
    assert problem.message == "must be on one line"
    assert problem.value == "info\ndebug"
    assert problem.line == 2


# --- strictness: names and syntax -----------------------------------------------------


def test_unknown_section_and_key(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        {
            "10.conf": "[Runtime]\nrunner = crio\n[relay]\nsockets = /x\n[DEFAULT]\nx = 1\n",
        },
    )
    path = str(tmp_path / "10.conf")
    sections = ", ".join(cfg.SECTIONS)
    assert problems == [
        Problem(
            path, 1, "Runtime", None, None, "unknown section; did you mean 'runtime'?", sections
        ),
        Problem(
            path,
            4,
            "relay",
            "sockets",
            "/x",
            "unknown key; did you mean 'socket'?",
            "socket, state-dir, grace-period, control-socket",
        ),
        Problem(path, 5, "DEFAULT", None, None, "unknown section", sections),
    ]


def test_keys_are_case_insensitive_and_reported_as_written(tmp_path: Path) -> None:
    write(tmp_path, {"10.conf": "[relay]\nState-Dir = /srv/state\n"})
    assert load(str(tmp_path)).get("relay", "state-dir") == "/srv/state"
    problem = one_problem(tmp_path, "[relay]\nGrace-Period = soon\n")
    assert (problem.key, problem.value) == ("Grace-Period", "soon")


def test_syntax_errors(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        {
            "10-noheader.conf": "level = info\n[log]\n",
            "20-lines.conf": (
                "[log]\n"
                "level = info\n"
                "junk line\n"
                "level = debug\n"
                "[policy] name = static\n"
                "[log]\n"
                "[metrics\n"
                "listen: :9000\n"
            ),
        },
    )
    noheader = str(tmp_path / "10-noheader.conf")
    lines = str(tmp_path / "20-lines.conf")
    not_a_line = (
        "is not a [section] header, a `key = value` line, an indented continuation of a "
        "value or a comment"
    )
    assert [str(p) for p in problems] == [
        f"{noheader}:1: 'level = info' comes before any [section] header",
        f"{lines}:3: 'junk line' {not_a_line}",
        f'{lines}:4: [log] level = "debug": key appears twice in this section (first at line 2)',
        f"{lines}:5: text after section header",
        f"{lines}:6: [log]: section appears twice in this file (first at line 1)",
        f"{lines}:7: '[metrics' {not_a_line}",
        f"{lines}:8: 'listen: :9000' {not_a_line}",
    ]


def test_log_debug_modules(tmp_path: Path) -> None:
    config = load(
        str(tmp_path),
        {("log", "debug"): "policy.static relay, cri_resmgr.hooks,cri_resmgr,resources.topology"},
    )
    assert config.get("log", "debug") == (
        "cri_resmgr.policy.static",
        "cri_resmgr.relay",
        "cri_resmgr.hooks",
        "cri_resmgr",
        "cri_resmgr.resources.topology",
    )
    assert load(str(tmp_path), {("log", "debug"): "all, relay"}).get("log", "debug") == (
        "*",
        "cri_resmgr.relay",
    )
    # the flag is checked the same way (third-party loggers would get the prefix too)
    problem = problems_of(tmp_path, {}, {("log", "debug"): "hpack"})[0]
    assert str(problem) == (
        f"flag -debug: [log] debug = \"hpack\": unknown module 'hpack' (allowed: {DEBUG_ALLOWED})"
    )


def test_module_names_are_the_package_files() -> None:
    package = ROOT / "cri_resmgr"
    expected = {"cri_resmgr"}
    for path in package.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        expected.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    assert set(logs.module_names()) == expected
    assert "cri_resmgr.policy.topology_aware" in expected


def test_same_section_in_two_files_is_fine(tmp_path: Path) -> None:
    write(tmp_path, {"a.conf": "[log]\nlevel = debug\n", "b.conf": "[log]\ndebug = all\n"})
    config = load(str(tmp_path))
    assert config.get("log", "level") == "debug"
    assert config.get("log", "debug") == ("*",)


def test_unreadable_inputs(tmp_path: Path) -> None:
    (tmp_path / "10-dir.conf").mkdir()
    (tmp_path / "20-latin1.conf").write_bytes(b"[log]\nlevel = info\n# caf\xe9\n")
    problems = problems_of(tmp_path, {})
    assert [str(p) for p in problems] == [
        f"{tmp_path}/10-dir.conf: a directory, not a regular file",
        f"{tmp_path}/20-latin1.conf:3: not valid UTF-8",
    ]


def test_symlinks_that_lead_nowhere(tmp_path: Path) -> None:
    os.symlink("missing.txt", tmp_path / "10-dangling.conf")
    os.symlink("/nonexistent/dir/x.conf", tmp_path / "11-dangling.conf")
    os.symlink("13-chain.conf", tmp_path / "12-chain.conf")  # -> a dangling one
    os.symlink("gone.txt", tmp_path / "13-chain.conf")
    os.symlink("20-self.conf", tmp_path / "20-self.conf")
    os.symlink("22-loop.conf", tmp_path / "21-loop.conf")
    os.symlink("21-loop.conf", tmp_path / "22-loop.conf")
    os.mkdir(tmp_path / "sub")
    os.symlink("sub", tmp_path / "30-dir.conf")
    os.mkfifo(tmp_path / "pipe")
    os.symlink("pipe", tmp_path / "31-pipe.conf")
    os.mkfifo(tmp_path / "32-pipe.conf")
    (tmp_path / "file").write_text("")
    os.symlink(f"{tmp_path}/file/x", tmp_path / "33-notdir.conf")
    problems = problems_of(tmp_path, {})
    assert [str(p)[len(str(tmp_path)) + 1 :] for p in problems] == [
        "10-dangling.conf: a dangling symlink to missing.txt, which does not exist",
        "11-dangling.conf: a dangling symlink to /nonexistent/dir/x.conf, which does not exist",
        f"12-chain.conf: a dangling symlink to 13-chain.conf ({os.path.realpath(tmp_path)}"
        "/gone.txt does not exist)",
        "13-chain.conf: a dangling symlink to gone.txt, which does not exist",
        "20-self.conf: a symlink loop (-> 20-self.conf)",
        "21-loop.conf: a symlink loop (-> 22-loop.conf)",
        "22-loop.conf: a symlink loop (-> 21-loop.conf)",
        "30-dir.conf: a symlink to sub, which is a directory, not a regular file",
        "31-pipe.conf: a symlink to pipe, which is not a regular file",
        "32-pipe.conf: not a regular file",
        f"33-notdir.conf: a symlink to {tmp_path}/file/x, which cannot be followed: "
        "Not a directory",
    ]
    # a symlink to a regular file is read like the file
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "target").write_text("[log]\nlevel = debug\n")
    os.symlink("target", tmp_path / "good" / "10.conf")
    assert load(str(tmp_path / "good")).source("log", "level") == f"{tmp_path}/good/10.conf:2"


def test_utf8_byte_order_mark(tmp_path: Path) -> None:
    # editors on other systems start a UTF-8 file with a BOM; it is not part of line 1
    (tmp_path / "10.conf").write_bytes(b"\xef\xbb\xbf[policy]\nname = static\n")
    config = load(str(tmp_path))
    assert (config.policy_name, config.source("policy", "name")) == (
        "static",
        f"{tmp_path}/10.conf:2",
    )
    # only at the start: elsewhere it is a character like any other
    (tmp_path / "10.conf").write_bytes(b"[policy]\n\xef\xbb\xbf[log]\n")
    assert r"10.conf:2: '\ufeff[log]' is not a [section] header" in str(
        problems_of(tmp_path, {})[0]
    )
    # UTF-16 (with its BOM) is named as such
    (tmp_path / "10.conf").write_bytes("[policy]\n".encode("utf-16"))
    assert [str(p) for p in problems_of(tmp_path, {})] == [
        f"{tmp_path}/10.conf:1: not valid UTF-8 (UTF-16, by its byte order mark)"
    ]


def test_config_dir_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert str(info.value).startswith(f"{path}: cannot list: ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "10.conf"
    path.write_text("[log]\n")
    path.chmod(0)
    problem = problems_of(tmp_path, {})[0]
    assert str(problem) == f"{path}: cannot read: Permission denied"


def test_all_problems_collected(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        {
            "10.conf": "[relay]\nsocket = x\ngrace-period = y\n[nope]\nz = 1\n",
            "20.conf": "[log]\nlevel = loud\nfoo = bar\n",
        },
        {("policy", "reserved-cpus"): "lots"},
    )
    assert [(os.path.basename(p.file), p.line, p.key) for p in problems] == [
        ("10.conf", 2, "socket"),
        ("10.conf", 3, "grace-period"),
        ("10.conf", 4, None),
        ("20.conf", 2, "level"),
        ("20.conf", 3, "foo"),
        ("flag -reserved-cpus", None, "reserved-cpus"),
    ]
    with pytest.raises(Error):
        load(str(tmp_path))


def test_interpolation_off_and_hash_in_value(tmp_path: Path) -> None:
    write(tmp_path, {"10.conf": "[dump]\nrules = full:Create%s.*, count:#x\n"})
    config = load(str(tmp_path))
    assert config.dump_rules[-2:] == (
        DumpRule("full", "Create%s.*", False),
        DumpRule("count", "#x", False),
    )


# --- aliases and derived values ---------------------------------------------------------


def test_aliases(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "10.conf": (
                "[policy]\nname = memtier\n[policy.memtier]\npin-cpu = false\n[log]\nlevel = warn\n"
            )
        },
    )
    config = load(str(tmp_path))
    assert config.policy_name == "topology-aware"
    assert config.get("policy.topology-aware", "pin-cpu") is False
    assert config.get("policy.memtier", "pin-cpu") is False
    assert config.policy_options("memtier")["pin-cpu"] is False
    assert config.get("log", "level") == "warning"
    assert load(str(tmp_path), {("policy", "name"): "null"}).policy_name == "none"


def test_alias_sections_in_one_file_share_their_keys(tmp_path: Path) -> None:
    # a key set under both names of a section in one file is a duplicate key
    problems = problems_of(
        tmp_path,
        {
            "10.conf": (
                "[policy.memtier]\npin-cpu = false\n"
                "[policy.topology-aware]\nPin-CPU = true\npin-memory = false\n"
            )
        },
    )
    assert [str(p) for p in problems] == [
        f'{tmp_path}/10.conf:4: [policy.topology-aware] Pin-CPU = "true": key appears twice '
        "in this section (first at line 2, in [policy.memtier]; [policy.memtier] is another "
        "name of [policy.topology-aware])"
    ]
    problems = problems_of(
        tmp_path,
        {"10.conf": "[policy.topology-aware]\npin-cpu = false\n[policy.memtier]\npin-cpu = 1\n"},
    )
    assert [(p.line, p.section, p.message) for p in problems] == [
        (
            4,
            "policy.memtier",
            "key appears twice in this section (first at line 2, in [policy.topology-aware]; "
            "[policy.memtier] is another name of [policy.topology-aware])",
        )
    ]
    # different keys under the two names, and the same key in a later file, are fine
    write(
        tmp_path,
        {
            "10.conf": "[policy.memtier]\npin-cpu = false\n[policy.topology-aware]\n"
            "pin-memory = false\n",
            "20.conf": "[policy.topology-aware]\npin-cpu = true\n",
        },
    )
    config = load(str(tmp_path))
    assert config.get("policy.topology-aware", "pin-memory") is False
    assert config.source("policy.memtier", "pin-cpu") == f"{tmp_path}/20.conf:2"


def test_runtime_sockets(tmp_path: Path) -> None:
    crio = load(str(tmp_path), {("runtime", "runner"): "crio"})
    assert crio.get("runtime", "runtime-socket") == "/var/run/crio/crio.sock"
    assert crio.get("runtime", "image-socket") == "/var/run/crio/crio.sock"
    given = load(str(tmp_path), {("runtime", "runtime-socket"): "unix:///run/rt.sock"})
    assert given.get("runtime", "runtime-socket") == "/run/rt.sock"
    assert given.get("runtime", "image-socket") == "/run/rt.sock"
    assert given.source("runtime", "image-socket") == (
        "default (derived from [runtime] runtime-socket)"
    )
    both = load(
        str(tmp_path),
        {("runtime", "runtime-socket"): "/run/rt.sock", ("runtime", "image-socket"): "/run/im"},
    )
    assert both.get("runtime", "image-socket") == "/run/im"
    custom = load(
        str(tmp_path), {("runtime", "runner"): "custom", ("runtime", "runtime-socket"): "/run/c"}
    )
    assert custom.get("runtime", "image-socket") == "/run/c"


def test_empty_socket_means_derived(tmp_path: Path) -> None:
    write(tmp_path, {"10.conf": "[runtime]\nrunner = crio\nruntime-socket =\n"})
    config = load(str(tmp_path))
    assert config.get("runtime", "runtime-socket") == "/var/run/crio/crio.sock"
    assert config.source("runtime", "runtime-socket") == f"{tmp_path}/10.conf:3"


def test_custom_runner_needs_socket(tmp_path: Path) -> None:
    problem = one_problem(tmp_path, "[runtime]\nrunner = custom\n")
    assert str(problem) == (
        f'{tmp_path}/10-test.conf:2: [runtime] runner = "custom": '
        "runner custom needs runtime-socket to be set"
    )


def test_relay_socket_must_differ(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        {"10.conf": "[relay]\nsocket = /run/containerd/containerd.sock\n"},
    )
    assert [(p.line, p.section, p.key, p.message) for p in problems] == [
        (
            2,
            "relay",
            "socket",
            "[relay] socket and [runtime] runtime-socket are the same socket (the relay "
            "would call itself)",
        ),
        (
            2,
            "relay",
            "socket",
            "[relay] socket and [runtime] image-socket are the same socket (the relay "
            "would call itself)",
        ),
    ]
    (tmp_path / "10.conf").unlink()
    problem = one_problem(
        tmp_path, "[relay]\ncontrol-socket = /var/run/cri-resmgr/cri-resmgr.sock\n"
    )
    assert (problem.key, problem.message) == (
        "control-socket",
        "[relay] socket and control-socket are the same socket",
    )


def test_cross_check_skipped_for_bad_values(tmp_path: Path) -> None:
    problem = one_problem(tmp_path, "[runtime]\nrunner = custom\nruntime-socket = relative\n")
    assert problem.key == "runtime-socket"


# --- reserved-cpus -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, milli, cpus, formatted",
    [
        ("0,1", 2000, "0-1", "0-1"),
        ("0-1", 2000, "0-1", "0-1"),
        ("0-3, 8", 5000, "0-3,8", "0-3,8"),
        ("cpuset:2", 1000, "2", "cpuset:2"),
        ("0", 1000, "0", "cpuset:0"),  # zero CPUs would be no reservation: CPU 0
        ("00", 1000, "0", "cpuset:0"),  # so would any lone zero, as in kubelet's list
        ("00-03", 4000, "0-3", "0-3"),
        ("cpuset:007", 1000, "7", "cpuset:7"),
        ("1.5000", 1500, None, "1500m"),
        ("65536", 65536000, None, "65536"),
        ("2", 2000, None, "2"),
        ("1500m", 1500, None, "1500m"),
        ("1.5", 1500, None, "1500m"),
        ("0.25", 250, None, "250m"),
    ],
)
def test_reserved_cpus(
    tmp_path: Path, text: str, milli: int, cpus: Optional[str], formatted: str
) -> None:
    config = load(str(tmp_path), {("policy", "reserved-cpus"): text})
    value = config.get("policy", "reserved-cpus")
    assert value.milli_cpus == milli
    assert value.cpus == (CPUSet.parse(cpus) if cpus is not None else None)
    assert str(value) == formatted
    kind = cfg.ReservedCPUs()
    assert kind.format(value) == formatted
    assert kind.parse(formatted) == value


NO_CPU = "reserves no CPU: an amount of 0 (CPU 0 is written 0 or cpuset:0)"
TOO_MANY = "more CPUs than any machine has (at most 65536)"
TOO_HIGH = "is more than any machine has (CPU ids are 0 to 65535)"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "a value is required"),
        ("0m", NO_CPU),
        ("0.0", NO_CPU),
        ("000m", NO_CPU),
        ("two", "neither a CPU list nor an amount of CPUs"),
        ("1.5m", "milli-CPUs (m) are a whole number"),
        ("1.2345", "finer than a milli-CPU (at most 3 decimals)"),
        ("0-", "not a CPU list"),
        ("0,,1", "not a CPU list"),
        ("3-1", None),
        ("cpuset:", "not a CPU list"),
        ("cpuset:x", "not a CPU list"),
        # too large: the same words for an amount and a CPU id, whatever the digits
        ("65537", TOO_MANY),
        ("65536.001", TOO_MANY),
        ("99999999", TOO_MANY),
        ("1000000", TOO_MANY),
        ("9999999999999999999999", TOO_MANY),
        ("99999999999999999999m", TOO_MANY),
        ("0-70000", "CPU 70000 " + TOO_HIGH),
        ("cpuset:65536", "CPU 65536 " + TOO_HIGH),
        ("0-9999999999999999999999", "CPU 999999...999999 " + TOO_HIGH),
    ],
)
def test_bad_reserved_cpus(tmp_path: Path, text: str, message: Optional[str]) -> None:
    problem = one_problem(tmp_path, f"[policy]\nreserved-cpus = {text}\n")
    assert problem.key == "reserved-cpus"
    assert problem.allowed == cfg.ReservedCPUs().describe_allowed()
    if message is not None:
        assert problem.message == message
    else:
        assert problem.message.startswith("invalid CPU list")


def test_reserved_cpus_with_thousands_of_digits() -> None:
    # no bignum and no ValueError from Python's limit on int() of long digit strings
    kind = cfg.ReservedCPUs()
    for text, message in (
        ("9" * 5000, TOO_MANY),
        ("9" * 5000 + "m", TOO_MANY),
        ("0-" + "9" * 5000, "CPU 999999...999999 " + TOO_HIGH),
        ("1." + "0" * 5000, None),
    ):
        if message is None:
            assert kind.parse(text).milli_cpus == 1000
            continue
        with pytest.raises(cfg.BadValue) as info:
            kind.parse(text)
        assert str(info.value) == message


# --- dump rules --------------------------------------------------------------------------


def test_split_dump_rules() -> None:
    assert split_dump_rules("a, b ,c") == ["a", "b", "c"]
    assert split_dump_rules("full:(a,b)|c{1,2},d") == ["full:(a,b)|c{1,2}", "d"]
    assert split_dump_rules("x[,]y,z") == ["x[,]y", "z"]
    assert split_dump_rules("x[],]y,z") == ["x[],]y", "z"]
    assert split_dump_rules("x[^],]y,z") == ["x[^],]y", "z"]
    assert split_dump_rules(r"a\,b,c") == [r"a\,b", "c"]
    assert split_dump_rules("a,\n  b,,\n") == ["a", "b"]
    assert split_dump_rules("a\nb") == ["a", "b"]
    assert split_dump_rules("") == []


def test_parse_dump_rules() -> None:
    assert parse_dump_rules("", base="") == ()
    assert parse_dump_rules("CreateContainer,off:List.*,Version,short:x", base="") == (
        DumpRule("full", "CreateContainer", True),
        DumpRule("off", "List.*", False),
        DumpRule("off", "Version", True),
        DumpRule("name", "x", True),
    )
    defaults = parse_dump_rules("")
    assert len(defaults) == 2
    assert parse_dump_rules("count:Version") == defaults + (DumpRule("count", "Version", True),)
    # reset drops everything before it, the defaults included, and the level
    assert parse_dump_rules("name:A,reset,B,off:C,D") == (
        DumpRule("full", "B", True),
        DumpRule("off", "C", True),
        DumpRule("off", "D", True),
    )
    assert parse_dump_rules("reset") == ()
    assert parse_dump_rules("full:(?:Create|Remove)Container") == defaults + (
        DumpRule("full", "(?:Create|Remove)Container", False),
    )
    assert parse_dump_rules("full:/runtime.v1.RuntimeService/Version")[-1].is_exact is False


@pytest.mark.parametrize(
    "rules, message",
    [
        ("loud:Create", "rule 'loud:Create': unknown level 'loud'"),
        ("Full:Create", "rule 'Full:Create': unknown level 'Full'"),
        ("full:", "rule 'full:': no method name or pattern"),
        (
            "full:Create(",
            "rule 'full:Create(': bad regular expression: missing ), unterminated subpattern "
            "at position 6",
        ),
        ("x,*Bad", "rule '*Bad': bad regular expression: nothing to repeat at position 0"),
        # not re.error: OverflowError, which used to escape as a traceback
        (
            "full:a{99999999999}",
            "rule 'full:a{99999999999}': bad regular expression: the repetition number is "
            "too large (at most 4294967294)",
        ),
        (
            "List.*,Create{1,4294967295}",
            "rule 'Create{1,4294967295}': bad regular expression: the repetition number is "
            "too large (at most 4294967294)",
        ),
    ],
)
def test_bad_dump_rules(tmp_path: Path, rules: str, message: str) -> None:
    problem = one_problem(tmp_path, f"[dump]\nrules = {rules}\n")
    assert (problem.line, problem.key, problem.value, problem.message) == (
        2,
        "rules",
        rules,
        message,
    )
    assert problem.allowed.startswith("comma-separated rules [LEVEL:]PATTERN")


def test_dump_rule_repetition_limit_is_the_one_of_re() -> None:
    assert parse_dump_rules("a{4294967294}", base="") == (DumpRule("full", "a{4294967294}", False),)


def test_deeply_nested_dump_rule(tmp_path: Path) -> None:
    # 1000 nested groups made re's parser raise RecursionError (a traceback)
    deep = "full:" + "(" * 1000 + "a" + ")" * 1000
    problem = one_problem(tmp_path, f"[dump]\nrules = {deep}\n")
    assert problem.value == deep
    shortened = deep[:40] + "..." + deep[-40:]  # the value is quoted in full already
    assert problem.message == (
        f"rule {shortened!r}: bad regular expression: groups nested 1000 deep (at most 100)"
    )
    # the flag, which -print-config and the service check the same way
    problem = problems_of(tmp_path / "missing", {}, {("dump", "rules"): deep})[0]
    assert (problem.file, problem.message.endswith("groups nested 1000 deep (at most 100)")) == (
        "flag -dump",
        True,
    )
    # the limit, and what is not a group: escaped parentheses, ones in a class
    ok = "(" * 100 + "a" + ")" * 100 + r"\(" * 200 + "[(]" * 200
    assert parse_dump_rules(ok, base="")[0].pattern == ok
    assert "nested 101 deep" in cfg.regex_problem("(" * 101 + "a" + ")" * 101)


def test_dump_rule_recursion_error_is_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    # however deep the stack is when re recurses, it is a problem, never a traceback
    monkeypatch.setattr(cfg, "MAX_REGEX_NESTING", 100000)
    message = cfg.regex_problem("(" * 5000 + "a" + ")" * 5000)
    assert message == "nested too deeply (at most 100000 levels of groups)"


def test_dump_rules_multiline_and_format(tmp_path: Path) -> None:
    write(tmp_path, {"10.conf": "[dump]\nrules = reset,\n  full:Create.*,\n  off:CreateFoo\n"})
    config = load(str(tmp_path))
    rules = config.dump_rules
    assert rules == (DumpRule("full", "Create.*", False), DumpRule("off", "CreateFoo", True))
    kind = cfg.DumpRules()
    assert kind.format(rules) == "reset,full:Create.*,off:CreateFoo"
    assert kind.parse(kind.format(rules)) == rules


# --- balloon types ---------------------------------------------------------------------


def test_balloon_types(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "10.conf": (
                "[policy]\nname = balloons\n"
                "[policy.balloons.type.web]\nnamespaces = web-*, frontend\nmax-cpus = 4\n"
                "[policy.balloons.type.batch]\nmin-cpus = 2\nshare-idle-cpus-in-same = numa\n"
            ),
            "20.conf": (
                "[policy.balloons.type.db]\nnamespaces = db\n"
                "[policy.balloons.type.web]\nmin-cpus = 1\n"
                "[policy.balloons.type.reserved]\nnamespaces = kube-*\n"
            ),
        },
    )
    config = load(str(tmp_path))
    types = config.balloon_types()
    assert [name for name, _ in types] == ["web", "batch", "db", "reserved"]
    web = dict(types[0][1])
    assert web == {
        "namespaces": ("web-*", "frontend"),
        "min-cpus": 1,
        "max-cpus": 4,
        "min-balloons": 0,
        "max-balloons": 0,
        "prefer-new-balloons": False,
        "prefer-spreading-pods": False,
        "share-idle-cpus-in-same": "",
    }
    assert types[1][1]["share-idle-cpus-in-same"] == "numa"
    assert config.source("policy.balloons.type.web", "min-cpus") == f"{tmp_path}/20.conf:4"
    assert config.policy_options("balloons") == {"on-error": "fail", "types": tuple(types)}
    with pytest.raises(KeyError):
        config.get("policy.balloons.type.nope", "min-cpus")


def test_balloon_type_from_override(tmp_path: Path) -> None:
    config = load(str(tmp_path), {("policy.balloons.type.x", "max-balloons"): "2"})
    assert config.balloon_types() == [("x", config.section_values("policy.balloons.type.x"))]
    assert config.get("policy.balloons.type.x", "max-balloons") == 2


def test_balloon_checks(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        {
            "10.conf": (
                "[policy.balloons.type.a]\nmin-cpus = 4\nmax-cpus = 2\n"
                "[policy.balloons.type.b]\nmax-balloons = 1\nmin-balloons = 3\n"
                "[policy.balloons.type.c]\nmin-cpus = 8\n"
                "[policy.balloons.type.default]\nmin-balloons = 1\n"
                "[policy.balloons.type.Big_One]\nmin-cpus = 1\n"
                "[policy.balloons.type.]\n"
            ),
        },
    )
    path = str(tmp_path / "10.conf")
    assert [str(p) for p in problems] == [
        f"{path}:11: [policy.balloons.type.Big_One]: bad balloon type name 'Big_One' "
        "(allowed: lowercase letters, digits and -)",
        f"{path}:13: [policy.balloons.type.]: bad balloon type name '' "
        "(allowed: lowercase letters, digits and -)",
        f'{path}:2: [policy.balloons.type.a] min-cpus = "4": min-cpus (4) is more than '
        "max-cpus (2)",
        f'{path}:6: [policy.balloons.type.b] min-balloons = "3": min-balloons (3) is more '
        "than max-balloons (1)",
        f'{path}:10: [policy.balloons.type.default] min-balloons = "1": cannot be set for '
        "the built-in default balloon type, which always has exactly one balloon",
    ]


# --- Config API ---------------------------------------------------------------------------


def test_config_api(tmp_path: Path) -> None:
    write(tmp_path, {"10.conf": "[policy]\nname = static\n[policy.static]\non-error = pass\n"})
    config = load(str(tmp_path))
    assert config.policy_options("static") == {
        "on-error": "pass",
        "strict-reservation": False,
        "full-pcpus-only": False,
    }
    assert config.policy_options("none") == {}
    assert list(config.section_values("relay")) == [
        "socket",
        "state-dir",
        "grace-period",
        "control-socket",
    ]
    with pytest.raises(KeyError, match=r"no configuration key \[relay\] nope"):
        config.get("relay", "nope")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.files = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.settings[("log", "level")] = None  # type: ignore[index]
    with pytest.raises(TypeError):
        config.section_values("log")["level"] = "x"  # type: ignore[index]


def test_describe_round_trips(tmp_path: Path) -> None:
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    write(
        conf_dir,
        {
            "10.conf": (
                "[runtime]\nrunner = crio\n[policy]\nname = balloons\nreserved-cpus = 0-1,4\n"
                "[policy.balloons.type.web]\nnamespaces = web\nmax-cpus = 4\n"
                "[dump]\nrules = count:.*,reset,full:Create(Container|PodSandbox)\n"
                "[log]\ndebug = policy, relay\n"
            )
        },
    )
    config = load(str(conf_dir), {("relay", "grace-period"): "2.5"})
    text = config.describe()
    assert f"# from {conf_dir}/10.conf:2\nrunner = crio\n" in text
    assert "# from flag" not in text
    assert "# from command line\ngrace-period = 2.5\n" in text
    assert "# from default (derived from [runtime] runner)\n" in text
    assert "debug = cri_resmgr.policy, cri_resmgr.relay\n" in text
    out = tmp_path / "out"
    out.mkdir()
    (out / "all.conf").write_text(text)
    again = load(str(out))
    assert {k: s.value for k, s in again.settings.items()} == {
        k: s.value for k, s in config.settings.items()
    }
    assert again.balloon_type_names == ("web",)


def test_diff_live(tmp_path: Path) -> None:
    old = load(str(tmp_path))
    new = load(
        str(tmp_path),
        {
            ("log", "level"): "debug",
            ("dump", "rules"): "full:.*",
            ("relay", "socket"): "/run/other.sock",
            ("policy.static", "on-error"): "pass",
            ("policy.balloons.type.web", "min-cpus"): "1",
        },
    )
    live, restart = cfg.diff_live(old, new)
    assert [(c.section, c.key) for c in live] == [
        ("policy.static", "on-error"),
        ("dump", "rules"),
        ("log", "level"),
    ]
    assert live[2] == cfg.Change("log", "level", "info", "debug")
    restart_keys = [(c.section, c.key) for c in restart]
    assert restart_keys[:2] == [("relay", "socket"), ("relay", "control-socket")]
    assert ("policy.balloons.type.web", "min-cpus") in restart_keys
    assert all(c.old is None for c in restart if c.section.startswith("policy.balloons.type"))
    assert cfg.diff_live(new, new) == ([], [])
    back_live, back_restart = cfg.diff_live(new, old)
    assert len(back_live) == 3 and len(back_restart) == len(restart)


def test_after_reload_keeps_restart_keys_running(tmp_path: Path) -> None:
    """A reload that switches the policy (restart-only) while changing the new policy's
    options (live keys): the effective config keeps the running policy, and its options."""
    old = load(str(tmp_path), {("policy", "name"): "static"})
    new = load(
        str(tmp_path),
        {
            ("policy", "name"): "topology-aware",
            ("policy.topology-aware", "pin-memory"): "false",
            ("policy.static", "on-error"): "pass",
            ("relay", "socket"): "/run/other.sock",
            ("log", "level"): "debug",
            ("policy.balloons.type.web", "min-cpus"): "1",
        },
    )
    effective, live, restart = cfg.after_reload(old, new)
    assert effective.policy_name == "static"
    assert effective.get("relay", "socket") == old.get("relay", "socket")
    assert effective.get("relay", "control-socket") == old.get("relay", "control-socket")
    assert effective.get("log", "level") == "debug"  # live: applied
    assert effective.get("policy.static", "on-error") == "pass"  # the running policy's
    assert effective.balloon_type_names == ()  # new types wait for the restart
    assert {(c.section, c.key) for c in restart} >= {("policy", "name"), ("relay", "socket")}
    assert ("policy.topology-aware", "pin-memory") in {(c.section, c.key) for c in live}
    again, live2, restart2 = cfg.after_reload(effective, new)  # the next reload
    assert again.policy_name == "static" and ("policy", "name") in {
        (c.section, c.key) for c in restart2
    }
    assert cfg.after_reload(old, old)[0] is old


def test_diff_live_balloon_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    write(a, {"1.conf": "[policy.balloons.type.x]\n[policy.balloons.type.y]\n"})
    write(b, {"1.conf": "[policy.balloons.type.y]\n[policy.balloons.type.x]\n"})
    live, restart = cfg.diff_live(load(str(a)), load(str(b)))
    assert live == []
    assert restart == [cfg.Change(cfg.BALLOON_TYPE_SECTION, "order", ("x", "y"), ("y", "x"))]


# --- generated files ------------------------------------------------------------------


def test_shipped_conf_is_generated() -> None:
    assert SHIPPED_CONF.read_text() == cfg.render_conf(), (
        "run: python -m cri_resmgr.config --write-conf etc/cri-resmgr/cri-resmgr.conf"
    )


def test_shipped_conf_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "cri-resmgr.conf").write_text(cfg.render_conf())
    assert load(str(tmp_path)).settings == cfg.default_config().settings


def test_shipped_conf_documents_every_key_and_defaults_are_valid(tmp_path: Path) -> None:
    text = cfg.render_conf()
    # uncomment every value line outside the balloon type example: same values as defaults
    lines: List[str] = []
    in_template = False
    for line in text.splitlines():
        if line.startswith("#["):
            in_template = True
        elif line.startswith("["):
            in_template = False
        uncomment = not in_template and re.match(r"#[a-z-]+ =", line)
        lines.append(line[1:] if uncomment else line)
    (tmp_path / "cri-resmgr.conf").write_text("\n".join(lines) + "\n")
    config = load(str(tmp_path))
    defaults = cfg.default_config()
    for key, setting in config.settings.items():
        assert setting.value == defaults.settings[key].value, key
        assert setting.source.startswith(str(tmp_path)), key
    documented: Dict[str, List[str]] = {}
    section = ""
    for line in text.splitlines():
        m = re.match(r"#?\[(.+)\]$", line)
        if m:
            section = m.group(1)
        m = re.match(r"#([a-z-]+) =", line)
        if m:
            documented.setdefault(section, []).append(m.group(1))
    assert documented == {
        s: [k.name for k in cfg.KEYS if k.section == s] for s in cfg.SECTIONS if s in documented
    }
    assert set(documented) == {k.section for k in cfg.KEYS}
    for key in cfg.KEYS:
        assert f"# {key.name}: " in text


def test_docs_reference_is_generated() -> None:
    text = DOCS.read_text()
    assert cfg.render_markdown() in text, (
        "run: python -m cri_resmgr.config --write-docs docs/configuration.md"
    )
    for key in cfg.KEYS:
        assert f"`{key.name}`" in text
        if key.flag:
            assert f"`-{key.flag}`" in text
    for section in cfg.SECTIONS:
        assert f"`[{section}]`" in text


def test_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "etc" / "x.conf"
    assert cfg.main(["--check-conf", str(conf)]) == 1
    assert cfg.main(["--write-conf", str(conf)]) == 0
    assert conf.read_text() == cfg.render_conf()
    assert cfg.main(["--check-conf", str(conf)]) == 0
    docs = tmp_path / "doc.md"
    docs.write_text("intro\n" + cfg._GENERATED_BEGIN + "\nstale\n" + cfg._GENERATED_END + "\nend\n")
    assert cfg.main(["--check-docs", str(docs)]) == 1
    assert cfg.main(["--write-docs", str(docs)]) == 0
    assert docs.read_text() == "intro\n" + cfg.render_markdown() + "end\n"
    assert cfg.main(["--check-docs", str(docs)]) == 0
    (tmp_path / "etc" / "y.conf").write_text("[log]\nlevel = loud\n")
    capsys.readouterr()
    assert cfg.main(["--check-dir", str(tmp_path / "etc")]) == 1
    assert "y.conf:2: [log] level" in capsys.readouterr().err
    assert cfg.main(["--print", str(tmp_path / "missing")]) == 0
    assert "[relay]" in capsys.readouterr().out
