"""The command line: Go-style flags, quoting, overrides, config check, dispatch."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from cri_resmgr import cli
from cri_resmgr import config as cfg

SEED = "-dump='reset,full:.*' -dump-file=/tmp/cri.dump"


def test_go_style_single_dash_becomes_double() -> None:
    assert cli.normalize_argv(["-relay-socket=/x", "-policy", "static", "--debug=a"]) == [
        "--relay-socket=/x",
        "--policy",
        "static",
        "--debug=a",
    ]


def test_short_help_and_positional_are_left_alone() -> None:
    assert cli.normalize_argv(["-h", "x", "-", "--", "-policy"]) == [
        "-h",
        "x",
        "-",
        "--",
        "-policy",
    ]


@pytest.mark.parametrize(
    "argv",
    [
        shlex.split(SEED),  # a shell removed the quotes
        SEED.split(),  # systemd's $VAR expansion keeps them
    ],
    ids=["shell", "systemd"],
)
def test_seed_option_string_works_from_shell_and_systemd(argv, tmp_path: Path) -> None:
    config, _, overrides = cli.load_config(["-config-dir", str(tmp_path), *argv])
    assert overrides[("dump", "rules")] == "reset,full:.*"
    assert config.get("dump", "file") == "/tmp/cri.dump"
    assert config.dump_rules == (cfg.DumpRule("full", ".*", False),)
    assert config.source("dump", "rules") == "flag -dump"


def test_space_separated_quoted_value_is_unquoted(tmp_path: Path) -> None:
    config, _, _ = cli.load_config(["-config-dir", str(tmp_path), "-dump", "'full:Version'"])
    assert config.dump_rules[-1] == cfg.DumpRule("full", "Version", True)


def test_flags_override_files(tmp_path: Path) -> None:
    (tmp_path / "10-a.conf").write_text("[policy]\nname = static\nreserved-cpus = 2\n")
    config, _, _ = cli.load_config(["--config-dir", str(tmp_path), "-reserved-cpus=cpuset:3"])
    assert config.policy_name == "static"
    assert str(config.get("policy", "reserved-cpus")) == "cpuset:3"
    assert config.source("policy", "reserved-cpus") == "flag -reserved-cpus"
    assert config.source("policy", "name") == f"{tmp_path}/10-a.conf:2"


def test_bool_flag_without_value_means_true(tmp_path: Path) -> None:
    config, _, _ = cli.load_config(["-config-dir", str(tmp_path), "-disable-policy-switch"])
    assert config.get("policy", "disable-policy-switch") is True
    config, _, _ = cli.load_config(["-config-dir", str(tmp_path), "-disable-policy-switch=false"])
    assert config.get("policy", "disable-policy-switch") is False


def test_unix_prefix_on_socket_flags(tmp_path: Path) -> None:
    config, _, _ = cli.load_config(
        ["-config-dir", str(tmp_path), "-runtime-socket=unix:///run/x.sock"]
    )
    assert config.get("runtime", "runtime-socket") == "/run/x.sock"
    assert config.get("runtime", "image-socket") == "/run/x.sock"


def test_every_config_flag_is_accepted(tmp_path: Path) -> None:
    parser = cli._service_parser()
    for flag in cfg.FLAGS:
        assert any(a.option_strings == ["--" + flag] for a in parser._actions), flag


def test_config_check_reports_every_problem(tmp_path: Path, capsys) -> None:
    (tmp_path / "10.conf").write_text("[policy]\nname = statik\nreserved-cpus = abc\n[x]\n")
    assert cli.main(["config", "check", "-config-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "3 problems" in err
    assert f"{tmp_path}/10.conf:2: [policy] name" in err
    assert f"{tmp_path}/10.conf:3: [policy] reserved-cpus" in err
    assert f"{tmp_path}/10.conf:4: [x]" in err


def test_config_check_ok(tmp_path: Path, capsys) -> None:
    (tmp_path / "10.conf").write_text("[policy]\nname = static\n")
    assert cli.main(["config", "check", "-config-dir", str(tmp_path)]) == 0
    assert "configuration OK" in capsys.readouterr().out


def test_bad_flag_value_refuses_to_start(tmp_path: Path, capsys) -> None:
    assert cli.main(["-config-dir", str(tmp_path), "-policy=nope"]) == 1
    assert "flag -policy" in capsys.readouterr().err


def test_print_config_names_sources(tmp_path: Path, capsys) -> None:
    (tmp_path / "50.conf").write_text("[log]\nlevel = debug\n")
    assert cli.main(["-config-dir", str(tmp_path), "-print-config", "-policy=static"]) == 0
    out = capsys.readouterr().out
    assert f"# from {tmp_path}/50.conf:2\nlevel = debug" in out
    assert "# from flag -policy\nname = static" in out


def test_version(capsys) -> None:
    assert cli.main(["-version"]) == 0
    assert capsys.readouterr().out.startswith("cri-resmgr ")


def test_subcommands_are_dispatched(monkeypatch) -> None:
    seen = []
    monkeypatch.setitem(cli.SUBCOMMANDS, "kubelet", lambda argv: seen.append(list(argv)) or 7)
    assert cli.main(["kubelet", "status", "--root", "/x"]) == 7
    assert seen == [["status", "--root", "/x"]]


def test_list_policies_prints_every_policy_and_its_manual(capsys) -> None:
    from cri_resmgr import policy  # noqa: PLC0415

    assert cli.main(["-list-policies"]) == 0
    out = capsys.readouterr().out
    for name in policy.names():
        assert name in out
    assert "null" in out and "memtier" in out  # aliases
    assert "cpuManagerPolicy" in out or "exclusive" in out  # the manuals, not just names
