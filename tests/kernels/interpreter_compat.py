"""Make Triton 3.6's CPU interpreter work with NumPy >= 2.4.

The interpreter holds scalars as 1-element arrays and converts them with int(array), which
NumPy 2.4 refuses for arrays of ndim > 0. Wrap its tensor patching so scalars convert via .item().
Only used by the CPU interpreter run of the kernel checks, never by the GPU path.
"""

from __future__ import annotations

from typing import Any


def install() -> None:
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patched(tensor: Any, scope: Any) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched


def run_in_interpreter(script: str, *args: str) -> str:
    """Run `script` in a fresh Python with TRITON_INTERPRET=1 (read when kernels are defined); returns stdout."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent), *args],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout
