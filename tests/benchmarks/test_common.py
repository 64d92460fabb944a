"""benchmarks/_common.py: the commit a result records."""

from __future__ import annotations

import pytest

from benchmarks import _common


def test_a_written_commit_unknown_to_the_local_git_is_the_trees(monkeypatch: pytest.MonkeyPatch) -> None:
    # The device copy's .git is the session's base: a commit written for the run that it has never
    # seen names the tree that travelled, and whether it is dirty is unknown.
    newer = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv(_common.GIT_COMMIT_ENV, newer)
    assert _common.git_state() == (newer, None)


def test_a_written_commit_the_local_git_knows_yields_to_head(monkeypatch: pytest.MonkeyPatch) -> None:
    head, dirty = _common.git_state()
    if head is None:
        pytest.skip("not a git checkout: no HEAD to prefer")
    # A stale file (an older commit of this history) or HEAD itself: git's own answer stands.
    monkeypatch.setenv(_common.GIT_COMMIT_ENV, head)
    assert _common.git_state() == (head, dirty)
