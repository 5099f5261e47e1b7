"""Tests of cri_resmgr.cri.generate: the committed modules are what protoc produces."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cri_resmgr.cri import generate


def _copy_tree(dest: Path) -> Path:
    """Copy api.proto and the committed generated modules under `dest` (a fake root)."""
    for rel in (generate.PROTO_RELPATH, *generate.GENERATED):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(generate.REPO_ROOT / rel, target)
    return dest


def test_committed_modules_are_up_to_date() -> None:
    # A real regeneration into a temporary tree, compared byte for byte.
    assert generate.stale_files() == []


def test_check_command_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert generate.main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_stale_generated_file_is_named(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    assert generate.stale_files(root) == []
    grpc_module = root / "cri_resmgr" / "cri" / "api_pb2_grpc.py"
    grpc_module.write_text(grpc_module.read_text() + "\n# edited by hand\n")
    assert generate.stale_files(root) == [str(Path("cri_resmgr/cri/api_pb2_grpc.py"))]


def test_missing_generated_file_is_named(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    (root / "cri_resmgr" / "cri" / "api_pb2.pyi").unlink()
    assert generate.stale_files(root) == [str(Path("cri_resmgr/cri/api_pb2.pyi"))]


def test_changed_proto_makes_modules_stale(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path)
    proto = root / generate.PROTO_RELPATH
    text = proto.read_text()
    # A new message changes the message modules but not the service module.
    proto.write_text(text + "\nmessage ExtraForTest {\n    string x = 1;\n}\n")
    assert generate.stale_files(root) == [
        str(Path("cri_resmgr/cri/api_pb2.py")),
        str(Path("cri_resmgr/cri/api_pb2.pyi")),
    ]
    # A changed field number changes the descriptor serialized in api_pb2.py only.
    edited = text.replace("string cpuset_cpus = 6;", "string cpuset_cpus = 66;")
    assert edited != text
    proto.write_text(edited)
    assert generate.stale_files(root) == [str(Path("cri_resmgr/cri/api_pb2.py"))]


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = _copy_tree(tmp_path / "a")
    second = _copy_tree(tmp_path / "b")
    generate.generate(first)
    generate.generate(second)
    for rel in generate.GENERATED:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
        assert (first / rel).read_bytes() == (generate.REPO_ROOT / rel).read_bytes(), rel


def test_grpc_module_imports_package_path() -> None:
    text = (generate.REPO_ROOT / "cri_resmgr" / "cri" / "api_pb2_grpc.py").read_text()
    assert "from cri_resmgr.cri import api_pb2 as " in text


def test_missing_proto_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(generate.GenerateError, match="api.proto"):
        generate.generate(tmp_path)
