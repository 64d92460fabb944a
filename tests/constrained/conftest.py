"""A tiny random Llama for the grammar tests (made once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import _save_tiny, tokenizer_source


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("constrained"), "llama", tokenizer_source())
