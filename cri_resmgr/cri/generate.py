"""Regenerates the Python modules of the CRI schema from `api.proto`.

`python -m cri_resmgr.cri.generate` writes `api_pb2.py`, `api_pb2_grpc.py` and
`api_pb2.pyi` next to `api.proto` with grpc_tools.protoc. protoc runs with the repository
root as its include path, so the generated gRPC module imports
`from cri_resmgr.cri import api_pb2` and the descriptor is registered as
`cri_resmgr/cri/api.proto`. For a given grpcio-tools version the output is
byte-for-byte deterministic.

`--check` generates into a temporary directory and exits 1, naming the files that
differ, when the committed modules are not what the generator produces.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

#: The package directory (cri_resmgr/cri) and the repository root above it.
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent.parent
#: The schema, relative to the include root; protoc derives module names from it.
PROTO_RELPATH = Path("cri_resmgr") / "cri" / "api.proto"
#: The generated files, relative to the include root.
GENERATED = (
    Path("cri_resmgr") / "cri" / "api_pb2.py",
    Path("cri_resmgr") / "cri" / "api_pb2_grpc.py",
    Path("cri_resmgr") / "cri" / "api_pb2.pyi",
)


class GenerateError(RuntimeError):
    """protoc failed or is not installed."""


def _protoc_include() -> str:
    """The directory of the well-known .proto files shipped with grpcio-tools."""
    import grpc_tools  # noqa: PLC0415 - a development dependency, imported on use

    return str(Path(grpc_tools.__file__).resolve().parent / "_proto")


def generate(root: Path) -> list[Path]:
    """Run protoc on `root`/cri_resmgr/cri/api.proto, writing the modules under `root`.

    `root` plays the role of the repository root: it must contain the proto at
    PROTO_RELPATH. Returns the paths of the generated files.
    """
    try:
        from grpc_tools import protoc  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise GenerateError(
            f"grpc_tools is not installed ({exc}); install grpcio-tools "
            "(requirements/dev.lock) to regenerate the CRI modules"
        ) from exc
    root = root.resolve()
    proto = root / PROTO_RELPATH
    if not proto.is_file():
        raise GenerateError(f"{proto}: no such file; expected the CRI schema there")
    args = [
        "grpc_tools.protoc",
        f"--proto_path={root}",
        f"--proto_path={_protoc_include()}",
        f"--python_out={root}",
        f"--pyi_out={root}",
        f"--grpc_python_out={root}",
        # An absolute path inside the first proto_path: protoc names it
        # cri_resmgr/cri/api.proto whatever the working directory is.
        str(proto),
    ]
    log.debug("running %s", " ".join(args))
    rc = protoc.main(args)
    if rc != 0:
        raise GenerateError(f"protoc exited with {rc} on {proto}")
    return [root / rel for rel in GENERATED]


def regenerate() -> list[Path]:
    """Regenerate the modules in place in the source tree."""
    return generate(REPO_ROOT)


def stale_files(root: Path = REPO_ROOT) -> list[str]:
    """Names of the generated files under `root` that differ from a fresh generation.

    The proto under `root` is copied into a temporary tree, generated there and each
    output is compared byte for byte with the file under `root` (a missing file counts
    as differing). An empty list means the committed modules are up to date.
    """
    with tempfile.TemporaryDirectory(prefix="cri-generate-") as tmp:
        tmp_root = Path(tmp)
        (tmp_root / PROTO_RELPATH).parent.mkdir(parents=True)
        shutil.copyfile(root / PROTO_RELPATH, tmp_root / PROTO_RELPATH)
        generate(tmp_root)
        differing = []
        for rel in GENERATED:
            fresh = (tmp_root / rel).read_bytes()
            current = root / rel
            if not current.is_file() or current.read_bytes() != fresh:
                differing.append(str(rel))
        return differing


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m cri_resmgr.cri.generate",
        description="Regenerate api_pb2.py, api_pb2_grpc.py and api_pb2.pyi from api.proto.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if regenerating would change any generated file",
    )
    opts = parser.parse_args(argv)
    try:
        if opts.check:
            differing = stale_files()
            if differing:
                print(
                    "generated CRI modules are out of date: "
                    + ", ".join(differing)
                    + "; run `make generate` and commit the result",
                    file=sys.stderr,
                )
                return 1
            print("generated CRI modules are up to date")
            return 0
        for path in regenerate():
            print(f"wrote {path.relative_to(REPO_ROOT)}")
        return 0
    except GenerateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
