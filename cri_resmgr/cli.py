"""The `cri-resmgr` command line: flags, sub-commands, and the hand-off to the service.

Ownership: turning argv into either a service run (a validated `Config` plus the flag
overrides it came from) or a sub-command call. Flag names follow the original Go
tool and accept its single-dash spelling (`-relay-socket=/x`, `-relay-socket /x`) as
well as `--relay-socket`. Every configuration flag is generated from the key table in
`config.py`, so `--help`, the config file and the docs cannot disagree.

Quoting: systemd expands `$POLICY_OPTIONS` from an environment file without removing
quotes, so `-dump='reset,full:.*'` reaches us with the single quotes. A value wholly
enclosed in one pair of matching quotes is unquoted, as a shell would have done.

Sub-commands: `config check`, `simulate`, `kubelet`, `status` (each has `--help`).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from cri_resmgr import config as cfg
from cri_resmgr.errors import ConfigError, Error, Problem
from cri_resmgr.version import __version__

PROG = "cri-resmgr"

# Flags that are not configuration keys.
_CLI_FLAGS = ("config-dir", "list-policies", "print-config", "version", "daemon")


unquote = cfg.unquote  # the service's rule, shared with `cri-resmgr status`


def normalize_argv(argv: Sequence[str]) -> List[str]:
    """Go-style `-name[=value]` -> `--name[=value]`; unquote `=`-attached values."""
    out: List[str] = []
    rest = False
    for original in argv:
        arg = original
        if rest:
            out.append(arg)
            continue
        if arg == "--":
            rest = True
        elif len(arg) > 2 and arg[0] == "-" and arg[1] != "-" and arg[1].isalpha():
            arg = "-" + arg
        if arg.startswith("--") and "=" in arg:
            name, value = arg.split("=", 1)
            arg = f"{name}={unquote(value)}"
        out.append(arg)
    return out


def _config_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser with ``--config-dir`` and every configuration flag (`config.FLAGS`)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    parser.add_argument(
        "--config-dir",
        metavar="DIR",
        default=cfg.DEFAULT_CONFIG_DIR,
        type=unquote,
        help="read DIR/*.conf in lexical order (default %(default)s)",
    )
    cfg.add_config_flags(parser)
    return parser


def _service_parser() -> argparse.ArgumentParser:
    parser = _config_parser(
        PROG,
        "CRI relay between kubelet and the container runtime that places containers "
        "on CPUs and memory nodes according to a resource policy. Flags override "
        "the configuration files; both single-dash (Go-style) and double-dash "
        "spellings work. Sub-commands: config check, simulate, kubelet, status "
        f"({PROG} SUBCOMMAND --help).",
    )
    parser.add_argument(
        "--list-policies", action="store_true", help="list the policies and their manuals"
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration and where each value came from",
    )
    parser.add_argument("--version", action="store_true", help="print the version")
    parser.add_argument(
        "--daemon",
        action="store_true",
        help="detach from the terminal (for hosts without systemd); see [daemon]",
    )
    return parser


def load_config(argv: Sequence[str]) -> Tuple[cfg.Config, argparse.Namespace, Dict]:
    """Parse service flags and load the configuration they point at."""
    args = _service_parser().parse_args(normalize_argv(argv))
    overrides = cfg.flag_overrides(args)
    return cfg.load(args.config_dir, overrides), args, overrides


def _print_problems(exc: ConfigError) -> None:
    n = len(exc.problems)
    print(f"{PROG}: invalid configuration ({n} problem{'s' if n != 1 else ''}):", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


def _check_parser() -> argparse.ArgumentParser:
    parser = _config_parser(
        f"{PROG} config check",
        "Check the configuration the service would run with (the files in the "
        "configuration directory and these flags): every problem is reported with its "
        "file, line, key and value. Then, unless --files-only, check it against this "
        "machine as the service does at start (reserved CPUs that exist, balloon types "
        "that fit, a CPU left for shared containers). Exit 0 when valid, 1 when not.",
    )
    parser.add_argument(
        "--files-only",
        action="store_true",
        help="do not check against this machine (for a configuration made for another)",
    )
    return parser


def cmd_config(argv: Sequence[str]) -> int:
    """`cri-resmgr config check [flags]`: report every configuration problem."""
    argv = list(argv)
    if not argv or argv[0] != "check":
        what = f"unknown sub-command {argv[0]!r}" if argv else "missing sub-command"
        print(
            f"{PROG} config: {what}; usage: {PROG} config check [-config-dir DIR] "
            "[-files-only] [flags]",
            file=sys.stderr,
        )
        return 2
    args = _check_parser().parse_args(normalize_argv(argv[1:]))
    try:
        config = cfg.load(args.config_dir, cfg.flag_overrides(args))
        machine = "" if args.files_only else _check_machine(config)
    except ConfigError as exc:
        _print_problems(exc)
        return 1
    except Error as exc:  # sysfs unreadable: the service could not start either
        print(f"{PROG} config check: {exc}", file=sys.stderr)
        return 1
    files = ", ".join(config.files) or "no files (defaults and flags only)"
    print(f"configuration OK: {files}{machine}")
    return 0


def _check_machine(config: cfg.Config) -> str:
    """Check ``config`` against this machine as the service does at start: the socket
    paths (`sockets.check_path`) and the policy (`policy.checked`); what was checked,
    for the OK line."""
    _check_socket_paths(config)
    if config.policy_name == "none":
        return ""
    from cri_resmgr import policy  # noqa: PLC0415 - only with a policy
    from cri_resmgr.resources import topology as topo  # noqa: PLC0415

    sysfs = config.get("host", "sysfs-root")
    topology = topo.load(sysfs)
    _cls, reserved = policy.checked(topology, config)
    return (
        f"; policy {config.policy_name} fits this machine ({sysfs}: "
        f"{len(topology.online)} online CPUs, reserved {reserved or 'none'})"
    )


def _check_socket_paths(config: cfg.Config) -> None:
    """ConfigError for socket paths no service could listen on (too long, a directory,
    a file that is not a socket in the way)."""
    from cri_resmgr import sockets  # noqa: PLC0415

    paths = [("relay", "socket"), ("relay", "control-socket")]
    if config.get("metrics", "listen").startswith("unix:"):
        paths.append(("metrics", "listen"))
    problems = []
    for section, key in paths:
        setting = config.setting(section, key)
        try:
            sockets.check_path(setting.value)
        except sockets.SocketError as exc:
            file = setting.file or setting.source
            raw = setting.raw or str(setting.value)
            problems.append(Problem(file, setting.line, section, key, raw, str(exc)))
    if problems:
        raise ConfigError(problems)


def cmd_simulate(argv: Sequence[str]) -> int:
    from cri_resmgr import simulate  # noqa: PLC0415 - sub-command loads what it needs

    return simulate.main(normalize_argv(argv))


def relay_endpoint(root: str, config_dir: Optional[str]) -> str:
    """The relay endpoint the service serves: ``unix://`` + ``[relay] socket`` of the
    configuration in ``config_dir`` (default: /etc/cri-resmgr under ``root``).

    An invalid configuration is not an error here (`cri-resmgr kubelet disable` and
    `status` must work while it is broken): a warning, and the default socket."""
    from cri_resmgr import kubelet  # noqa: PLC0415

    if config_dir is None:
        config_dir = kubelet.host_path(root, cfg.DEFAULT_CONFIG_DIR)
    try:
        socket = cfg.load(config_dir).get("relay", "socket")
    except (ConfigError, OSError) as exc:
        default = cfg.default_config().get("relay", "socket")
        if isinstance(exc, ConfigError):
            why = (
                f"it is not valid ({len(exc.problems)} problems; `{PROG} config check "
                f"-config-dir {config_dir}` lists them)"
            )
        else:
            why = f"{exc.filename or config_dir}: {exc.strerror or exc}"
        print(
            f"{PROG} kubelet: warning: cannot take the relay socket from the configuration "
            f"in {config_dir}: {why}; using the default unix://{default}",
            file=sys.stderr,
        )
        socket = default
    return "unix://" + socket


def cmd_kubelet(argv: Sequence[str]) -> int:
    """`cri-resmgr kubelet ...`; without `--endpoint`, the configured relay socket."""
    from cri_resmgr import kubelet  # noqa: PLC0415

    return kubelet.main(normalize_argv(argv), default_endpoint=relay_endpoint)


def cmd_status(argv: Sequence[str]) -> int:
    from cri_resmgr import status  # noqa: PLC0415

    return status.main(normalize_argv(argv))


SUBCOMMANDS: Dict[str, Callable[[Sequence[str]], int]] = {
    "config": cmd_config,
    "simulate": cmd_simulate,
    "kubelet": cmd_kubelet,
    "status": cmd_status,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `cri-resmgr` console script."""
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:
        # `cri-resmgr -list-policies | head`: the reader is gone, which is no error of
        # ours; stdout is pointed at /dev/null so that the exit flush does not fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # as a shell reports a process killed by SIGPIPE


def _main(argv: List[str]) -> int:
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    try:
        config, args, overrides = load_config(argv)
    except ConfigError as exc:
        if "--version" in normalize_argv(argv):
            print(f"{PROG} {__version__}")
            return 0
        _print_problems(exc)
        return 1
    if args.version:
        print(f"{PROG} {__version__}")
        return 0
    if args.list_policies:
        from cri_resmgr import policy  # noqa: PLC0415

        print(policy.describe_all())
        return 0
    if args.print_config:
        print(config.describe())
        return 0
    from cri_resmgr import service  # noqa: PLC0415 - grpc is imported only to serve

    try:
        return service.run(config, overrides, daemon=args.daemon)
    except Error as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
