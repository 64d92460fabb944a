"""Generate the Python modules of radixserve.proto with grpcio-tools (protoc).

One implementation for both places the stubs are made: setup.py's build step (a wheel, or
`pip install -e .`, which generates them into the source tree) and `stubs.load()`, which
generates them on first use when they are missing or older than the .proto (a checkout used
without reinstalling). Nothing generated is committed; .gitignore lists the outputs.

Only the standard library and grpc_tools here: setup.py runs this file by path, in pip's
isolated build environment, where radixserve's dependencies are not installed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PROTO = "radixserve.proto"
PACKAGE_DIR = ("radixserve", "grpc")
# What protoc writes next to the .proto: messages, their type stubs, and the service stubs.
OUTPUTS = ("radixserve_pb2.py", "radixserve_pb2.pyi", "radixserve_pb2_grpc.py")


def generate(source_root: Path, out_root: Path) -> list[Path]:
    """Compile `source_root`/radixserve/grpc/radixserve.proto into `out_root`/radixserve/grpc/.

    The .proto is compiled by its path from the root, so the service module imports the messages
    as `radixserve.grpc.radixserve_pb2`. Files are written to a temporary directory and moved into
    place, so a process importing them meanwhile sees the old or the new version, never half."""
    from grpc_tools import protoc  # type: ignore[import-untyped]  # here: only building needs it

    rel = Path(*PACKAGE_DIR, PROTO)
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    out_dir = out_root.joinpath(*PACKAGE_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".protoc-", dir=out_dir) as tmp:
        args = ["grpc_tools.protoc", f"-I{source_root}", f"-I{include}", f"--python_out={tmp}",
                f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", str(source_root / rel)]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {source_root / rel}")
        written = []
        for name in OUTPUTS:
            target = out_dir / name
            os.replace(Path(tmp, *PACKAGE_DIR, name), target)
            written.append(target)
    return written


def is_stale(package_dir: Path) -> bool:
    """True when an output is missing or older than the .proto."""
    proto = package_dir / PROTO
    outputs = [package_dir / name for name in OUTPUTS]
    if not all(p.exists() for p in outputs):
        return True
    return min(p.stat().st_mtime for p in outputs) < proto.stat().st_mtime

