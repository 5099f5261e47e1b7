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


def test_config_check_ok(tmp_path: Path, topology_root, capsys) -> None:
    (tmp_path / "10.conf").write_text("[policy]\nname = static\n")
    root = topology_root("desktop")
    assert cli.main(["config", "check", "-config-dir", str(tmp_path), f"-sysfs-root={root}"]) == 0
    out = capsys.readouterr().out
    assert "configuration OK" in out and f"policy static fits this machine ({root}: 20" in out


def test_config_check_one_problem(tmp_path: Path, capsys) -> None:
    (tmp_path / "10.conf").write_text("[policy]\nname = statik\n")
    assert cli.main(["config", "check", "-config-dir", str(tmp_path)]) == 1
    assert "invalid configuration (1 problem):" in capsys.readouterr().err


@pytest.mark.parametrize(
    "conf, problem",
    [
        (
            "[policy]\nname = static\nreserved-cpus = cpuset:40\n",
            '10.conf:3: [policy] reserved-cpus = "cpuset:40": CPUs 40 do not exist',
        ),
        (
            "[policy]\nname = balloons\n[policy.balloons.type.big]\nmin-cpus = 21\n",
            '10.conf:4: [policy.balloons.type.big] min-cpus = "21": a balloon of this type',
        ),
        (
            "[policy]\nname = static\nreserved-cpus = 20\n"
            "[policy.static]\nstrict-reservation = true\n",
            "no CPU is left",
        ),
    ],
)
def test_config_check_checks_the_machine_as_the_service_does(
    tmp_path: Path, topology_root, capsys, conf: str, problem: str
) -> None:
    """What the service would refuse at start on this machine (the 20-CPU desktop)
    fails the check; --files-only skips that part (a configuration for another one)."""
    (tmp_path / "10.conf").write_text(conf)
    args = ["config", "check", "-config-dir", str(tmp_path)]
    args.append(f"-sysfs-root={topology_root('desktop')}")
    assert cli.main(args) == 1
    assert problem in capsys.readouterr().err
    assert cli.main([*args, "-files-only"]) == 0
    assert "fits this machine" not in capsys.readouterr().out


def test_config_check_with_an_unreadable_machine(tmp_path: Path, capsys) -> None:
    (tmp_path / "10.conf").write_text("[policy]\nname = static\n")
    bad = tmp_path / "nosys"
    assert cli.main(["config", "check", "-config-dir", str(tmp_path), f"-sysfs-root={bad}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cri-resmgr config check: ") and str(bad) in err


def test_config_usage(tmp_path: Path, capsys) -> None:
    assert cli.main(["config"]) == 2
    assert "missing sub-command; usage: cri-resmgr config check" in capsys.readouterr().err
    assert cli.main(["config", "chek"]) == 2
    assert "unknown sub-command 'chek'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["config", "check", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: cri-resmgr config check") and "--files-only" in out


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


# --- `cri-resmgr kubelet`: the relay endpoint comes from the configuration ---------------

KUBEADM_FLAGS = (
    'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///run/containerd/containerd.sock"\n'
)


def _kubelet_tree(root: Path) -> None:
    env = root / "var/lib/kubelet/kubeadm-flags.env"
    env.parent.mkdir(parents=True)
    env.write_text(KUBEADM_FLAGS)


def test_kubelet_uses_the_configured_relay_socket(tmp_path: Path, capsys) -> None:
    """Without --endpoint, `kubelet enable/status/endpoint` use [relay] socket of
    /etc/cri-resmgr under --root; the default socket is then "not the relay"."""
    _kubelet_tree(tmp_path)
    conf = tmp_path / "etc/cri-resmgr"
    conf.mkdir(parents=True)
    (conf / "local.conf").write_text("[relay]\nsocket = /run/cri-resmgr/other.sock\n")
    root = ["--root", str(tmp_path)]
    assert cli.main(["kubelet", "endpoint", *root]) == 0
    assert capsys.readouterr().out == "unix:///run/cri-resmgr/other.sock\n"
    assert cli.main(["kubelet", "enable", *root]) == 0
    flags = (tmp_path / "var/lib/kubelet/kubeadm-flags.env").read_text()
    assert "=unix:///run/cri-resmgr/other.sock" in flags
    assert cli.main(["kubelet", "status", *root]) == 0
    assert (
        cli.main(
            ["kubelet", "status", *root, "-endpoint=unix:///var/run/cri-resmgr/cri-resmgr.sock"]
        )
        == 3
    )
    assert cli.main(["kubelet", "disable", *root]) == 0
    assert (tmp_path / "var/lib/kubelet/kubeadm-flags.env").read_text() == KUBEADM_FLAGS


def test_kubelet_config_dir_flag(tmp_path: Path, capsys) -> None:
    """-config-dir (Go-style spelling too) names the configuration to read."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "a.conf").write_text("[relay]\nsocket = unix:///srv/relay.sock\n")
    assert cli.main(["kubelet", "endpoint", "-config-dir", str(conf)]) == 0
    assert capsys.readouterr().out == "unix:///srv/relay.sock\n"
    assert cli.main(["kubelet", "endpoint", f"--config-dir={conf}", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "unix:///srv/relay.sock\n"


def test_kubelet_defaults_without_configuration(tmp_path: Path, capsys) -> None:
    assert cli.main(["kubelet", "endpoint", "--root", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "unix:///var/run/cri-resmgr/cri-resmgr.sock\n"
    assert captured.err == ""


def test_kubelet_invalid_configuration_warns_and_uses_the_default(tmp_path: Path, capsys) -> None:
    """A broken configuration must not stop `kubelet disable/status` (package removal
    depends on them): a warning, then the default socket."""
    _kubelet_tree(tmp_path)
    conf = tmp_path / "etc/cri-resmgr"
    conf.mkdir(parents=True)
    (conf / "local.conf").write_text("[relay]\nsocket = relative.sock\n[nonsense\n")
    assert cli.main(["kubelet", "endpoint", "--root", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "unix:///var/run/cri-resmgr/cri-resmgr.sock\n"
    assert "warning: cannot take the relay socket from the configuration in" in captured.err
    assert f"config check -config-dir {conf}" in captured.err
    assert cli.main(["kubelet", "status", "--root", str(tmp_path)]) == 3


def test_the_man_page_names_every_command() -> None:
    """debian/cri-resmgr.8 (installed by both packages) keeps up with the commands."""
    man = (Path(__file__).resolve().parents[2] / "debian" / "cri-resmgr.8").read_text()
    for name in cli.SUBCOMMANDS:
        assert f".B cri-resmgr {name}" in man, name
    for action in ("enable", "disable", "status", "endpoint"):
        assert action in man.split(".B kubelet ", 1)[1].split("\n", 1)[0], action
    assert "files\\-only" in man


def test_a_closed_pipe_is_no_traceback() -> None:
    """`cri-resmgr -list-policies | head -1`: the reader leaves early."""
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first write
    try:
        out = subprocess.run(
            [sys.executable, "-m", "cri_resmgr.cli", "-list-policies"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert out.returncode == 141
    assert out.stderr == ""


def test_config_check_checks_the_socket_paths(tmp_path: Path, capsys) -> None:
    """A relay socket no service could listen on is a problem for config check, with
    the file and line; -files-only does not look at this machine's files."""
    (tmp_path / "passwd").write_text("root:x:0:0\n")
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "10.conf").write_text(f"[relay]\nsocket = {tmp_path / 'passwd'}\n")
    args = ["config", "check", "-config-dir", str(conf)]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert f"{conf}/10.conf:2: [relay] socket" in err and "exists and is not a socket" in err
    long = "/tmp/" + "d" * 100 + "/r.sock"
    assert cli.main([*args, f"-relay-socket={long}"]) == 1
    err = capsys.readouterr().err
    assert "flag -relay-socket: [relay] socket" in err and "is too long" in err
    assert "[relay] control-socket" in err  # derived from it: too long as well
    assert cli.main([*args, "-files-only"]) == 0
