"""Build step on top of pyproject.toml: generate radixserve's gRPC modules from radixserve.proto.

build_py runs for `pip install .`, wheels and `pip install -e .` (scripts/setup.sh). In a normal
build the modules go into the build directory, next to the copied sources; in an editable
install (setuptools' `editable_mode`) they go into the source tree, which the install points at.
Everything else about the package is in pyproject.toml.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _codegen() -> ModuleType:
    # By path: importing the radixserve package would need its dependencies, which pip's isolated
    # build environment does not have.
    spec = importlib.util.spec_from_file_location("_radixserve_codegen", ROOT / "radixserve" / "grpc" / "codegen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithGrpc(build_py):
    def run(self) -> None:
        super().run()
        out_root = ROOT if self.editable_mode else Path(self.build_lib)
        for path in _codegen().generate(ROOT, out_root):
            self.announce(f"generated {path}", level=2)


setup(cmdclass={"build_py": BuildPyWithGrpc})
