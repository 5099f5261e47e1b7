"""Imports flow one way (docs/design.md): a module imports only from its layer or below.

Every `import` in the package is read with `ast` (also those inside functions), so a
shortcut through a lazy import is caught too. A new module must be given a layer here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, Set, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "cri_resmgr"

# Lower layers never import higher ones.
LAYERS: Dict[str, int] = {
    # 0: no project imports (or only errors)
    "errors": 0,
    "version": 0,
    "http2": 0,
    "sockets": 0,
    "logs": 0,
    # 1: hardware, schema, configuration
    "resources": 1,
    "cri": 1,
    "config": 1,
    # 2: policies and what they are fed with; kubelet wiring
    "policy": 2,
    "podspec": 2,
    "kubelet": 2,
    # 3: persistence, the transport, pictures
    "state": 3,
    "state_format": 3,
    "relay": 3,
    "cpumap": 3,
    # 4: what plugs into the relay
    "hooks": 4,
    "dump": 4,
    "dumpproc": 4,
    "metrics": 4,
    "control": 4,
    # 5: composition and the tools built on it
    "service": 5,
    "simulate": 5,
    "status": 5,
    # 6: the command line
    "cli": 6,
}

# Only these may import grpc (or the generated gRPC stubs) directly.
GRPC_USERS = {"relay", "hooks", "cri"}
# Policies see plain records only.
POLICY_FORBIDDEN = ("grpc", "google.protobuf", "cri_resmgr.cri", "cri_resmgr.relay")


def _modules() -> Iterator[Tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        if parts and parts[0] == "cri" and parts[-1].endswith("_pb2") or rel.name.endswith("_grpc"):
            continue  # generated code
        yield ".".join(parts), path


def _imports(path: Path) -> Set[str]:
    names: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "cri_resmgr":  # from cri_resmgr import relay
                names.update(f"cri_resmgr.{alias.name}" for alias in node.names)
    return names


def _top(module: str) -> str:
    return module.split(".", maxsplit=1)[0]


def _layer(name: str) -> int:
    top = _top(name)
    assert top in LAYERS, f"module cri_resmgr.{name} has no layer in test_imports.LAYERS"
    return LAYERS[top]


MODULES = [m for m in _modules() if m[0]]


@pytest.mark.parametrize("module,path", MODULES, ids=[m[0] for m in MODULES])
def test_imports_flow_one_way(module: str, path: Path) -> None:
    own = _layer(module)
    for name in _imports(path):
        if not name.startswith("cri_resmgr.") or name == "cri_resmgr":
            continue
        target = name[len("cri_resmgr.") :]
        if _top(target) == _top(module):
            continue
        assert _layer(target) <= own, f"cri_resmgr.{module} (layer {own}) imports {name}"


@pytest.mark.parametrize("module,path", MODULES, ids=[m[0] for m in MODULES])
def test_only_the_transport_imports_grpc(module: str, path: Path) -> None:
    if _top(module) in GRPC_USERS:
        return
    for name in _imports(path):
        assert _top(name) not in ("grpc", "grpc_tools"), f"cri_resmgr.{module} imports {name}"


@pytest.mark.parametrize("module,path", [m for m in MODULES if _top(m[0]) == "policy"], ids=str)
def test_policies_never_see_protobuf(module: str, path: Path) -> None:
    for name in _imports(path):
        assert not name.startswith(POLICY_FORBIDDEN), f"cri_resmgr.{module} imports {name}"


def test_nothing_touches_the_host_at_import() -> None:
    """Importing every module opens no /sys, /proc or /etc file (roots are configurable).

    Runs in a fresh interpreter with an audit hook on `open`, after the standard
    library and third-party modules are loaded (their own start-up reads don't count).
    """
    modules = [f"cri_resmgr.{m}" for m, _ in MODULES]
    script = f"""
import sys, grpc, google.protobuf, yaml, hpack, prometheus_client, json, logging
opened = []
def hook(event, args):
    if event == "open" and str(args[0]).startswith(("/sys", "/proc", "/etc")):
        opened.append(str(args[0]))
sys.addaudithook(hook)
import importlib
for name in {modules!r}:
    importlib.import_module(name)
print("\\n".join(opened))
"""
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent,
    )
    assert out.stdout.strip() == "", f"opened at import: {out.stdout}"
