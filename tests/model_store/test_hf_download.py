"""hf:// downloads through huggingface_hub against the loopback Hub stand-in: in process and via
`radixserve download` (a subprocess, as the operator's init container runs it)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest
from huggingface_hub import constants as hf_constants

from radixserve.model_store.base import (
    AccessDeniedError,
    AuthenticationError,
    NotFoundError,
    SourceError,
)
from radixserve.model_store.hf import INCOMPLETE_SUFFIX, HFSource
from radixserve.model_store.store import MANIFEST_NAME, download, read_manifest, staging_dir
from radixserve.model_store.uri import HFModel, parse_model_uri
from tests.model_store.conftest import DEFAULT_SELECTION, HubRepo

BIG = "model-00001-of-00002.safetensors"
DEADLINE_S = 30.0


def wait_for(condition: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "radixserve", "download", *args]


def run_cli(repo: HubRepo, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), env=repo.env(**env), capture_output=True, text=True, timeout=120)


def json_events(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def published(dest: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in dest.iterdir() if p.name != MANIFEST_NAME}


# ---- in process --------------------------------------------------------------------------------
def test_download_matches_the_source(hub_repo: HubRepo, tmp_path: Path) -> None:
    dest = tmp_path / "m"
    result = download(HFSource(HFModel(hub_repo.repo_id), endpoint=hub_repo.hub.url), dest)
    assert published(dest) == {p: hub_repo.files[p] for p in DEFAULT_SELECTION}
    assert result.revision == hub_repo.commit and not result.cache_hit
    manifest = read_manifest(dest)
    assert manifest is not None and manifest.uri == "hf://org/tiny" and manifest.revision == hub_repo.commit
    kinds = {f.path: f.checksum.kind for f in manifest.files if f.checksum}
    assert kinds[BIG] == "sha256" and kinds["config.json"] == "git-sha1"
    # Every file was fetched at the commit, not at the moving branch name.
    resolves = [r.path for r in hub_repo.hub.file_requests() if "/resolve/" in r.path]
    assert len(resolves) == len(DEFAULT_SELECTION) and all(f"/resolve/{hub_repo.commit}/" in p for p in resolves)
    # LFS files went through the redirect to the CDN, as on the Hub.
    assert {r.path.split("/")[-1] for r in hub_repo.hub.content_requests() if r.path.startswith("/cdn/")} == {
        p for p in DEFAULT_SELECTION if p.endswith(".safetensors")}


def test_a_new_commit_replaces_the_old_one_and_reuses_unchanged_files(hub_repo: HubRepo, tmp_path: Path) -> None:
    dest = tmp_path / "m"
    source = HFSource(HFModel(hub_repo.repo_id))  # endpoint from HF_ENDPOINT
    download(source, dest)
    newer = {**hub_repo.files, "config.json": b'{"model_type": "llama", "v": 2}'}
    commit = hub_repo.hub.publish(hub_repo.repo_id, newer)
    hub_repo.hub.clear_log()
    download(source, dest)
    assert read_manifest(dest).revision == commit  # type: ignore[union-attr]
    assert [r.path.rsplit("/", 1)[-1] for r in hub_repo.hub.content_requests()] == ["config.json"]
    assert published(dest) == {p: newer[p] for p in DEFAULT_SELECTION}


@pytest.mark.parametrize(("setup", "uri", "error", "words"), [
    ("token", "hf://org/tiny", AuthenticationError, ["401 Unauthorized for hf://org/tiny", "no token was sent",
                                                     "set HF_TOKEN", "credentialsSecretRef"]),
    ("forbidden", "hf://org/tiny", AccessDeniedError, ["403 Forbidden for hf://org/tiny", "gated", "HF_TOKEN"]),
    ("", "hf://org/missing", NotFoundError, ["404 Not Found for hf://org/missing", "no such repository",
                                             "check the name"]),
    ("", "hf://org/tiny@v9", NotFoundError, ["404 Not Found for hf://org/tiny@v9", "no revision 'v9'"]),
])
def test_http_errors_are_clear(hub_repo: HubRepo, tmp_path: Path, setup: str, uri: str,
                               error: type[SourceError], words: list[str]) -> None:
    if setup == "token":
        hub_repo.hub.token = "hf_secret"
    elif setup == "forbidden":
        hub_repo.hub.forbidden.add(hub_repo.repo_id)
    uri_model = parse_model_uri(uri)
    assert isinstance(uri_model, HFModel)
    with pytest.raises(error) as info:
        download(HFSource(uri_model), tmp_path / "m")
    for w in words:
        assert w in str(info.value)
    assert not (tmp_path / "m").exists()


def test_a_wrong_token_is_named_and_the_right_one_works(hub_repo: HubRepo, tmp_path: Path) -> None:
    hub_repo.hub.token = "hf_secret"
    with pytest.raises(AuthenticationError, match="the token was refused"):
        download(HFSource(HFModel(hub_repo.repo_id), token="hf_wrong"), tmp_path / "m")
    download(HFSource(HFModel(hub_repo.repo_id), token="hf_secret"), tmp_path / "m")
    assert published(tmp_path / "m") == {p: hub_repo.files[p] for p in DEFAULT_SELECTION}


# ---- the CLI --------------------------------------------------------------------------------------
def test_cli_downloads_then_hits_the_cache_without_file_requests(hub_repo: HubRepo, tmp_path: Path) -> None:
    dest = tmp_path / "models" / "tiny"
    first = run_cli(hub_repo, "hf://org/tiny@main", str(dest), "--progress", "json")
    assert first.returncode == 0, first.stderr
    events = json_events(first.stdout)
    assert events[0]["event"] == "progress" and events[0]["files_total"] == len(DEFAULT_SELECTION)
    done = events[-1]
    total = sum(len(hub_repo.files[p]) for p in DEFAULT_SELECTION)
    assert done == {"event": "done", "uri": "hf://org/tiny@main", "revision": hub_repo.commit, "path": str(dest),
                    "bytes_total": total, "bytes_downloaded": total, "cache_hit": False,
                    "seconds": done["seconds"]}
    assert published(dest) == {p: hub_repo.files[p] for p in DEFAULT_SELECTION}

    hub_repo.hub.clear_log()
    second = run_cli(hub_repo, "hf://org/tiny@main", str(dest), "--progress", "json")
    assert second.returncode == 0, second.stderr
    assert json_events(second.stdout) == [{**done, "bytes_downloaded": 0, "cache_hit": True,
                                           "seconds": json_events(second.stdout)[-1]["seconds"]}]
    assert hub_repo.hub.file_requests() == []  # only the one metadata call
    assert [r.path for r in hub_repo.hub.requests] == ["/api/models/org/tiny/revision/main"]


def _stalled_download(hub_repo: HubRepo, dest: Path, stall_at: int, out: IO[str]) -> subprocess.Popen[str]:
    """`radixserve download` whose GET of BIG stalls after `stall_at` bytes (until hub.release)."""
    hub_repo.hub.stall_after[BIG] = stall_at
    proc = subprocess.Popen(cli("hf://org/tiny", str(dest), "--progress", "json", "--max-workers", "2"),
                            env=hub_repo.env(), stdout=out, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: hub_repo.hub.bytes_served(BIG) >= stall_at or proc.poll() is not None,
             "the download to reach the stall point")
    assert proc.poll() is None, Path(out.name).read_text()
    return proc


def test_resume_after_a_killed_download(hub_repo: HubRepo, tmp_path: Path) -> None:
    # huggingface_hub writes in DOWNLOAD_CHUNK_SIZE (10 MiB) pieces: a shard larger than that
    # has a piece on disk when the connection stalls, as a multi-GB shard would.
    chunk = hf_constants.DOWNLOAD_CHUNK_SIZE
    files = {**hub_repo.files, BIG: random.Random(1).randbytes(chunk + 700_000)}
    hub_repo.hub.publish(hub_repo.repo_id, files)
    dest = tmp_path / "m"
    partial = staging_dir(dest) / (BIG + INCOMPLETE_SUFFIX)
    with open(tmp_path / "first.log", "w") as log:
        proc = _stalled_download(hub_repo, dest, chunk + 200_000, log)
        wait_for(lambda: partial.exists() and partial.stat().st_size >= chunk, "a piece of the shard on disk")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    kept = partial.stat().st_size
    assert kept >= chunk and not dest.exists()

    del hub_repo.hub.stall_after[BIG]
    hub_repo.hub.clear_log()
    second = run_cli(hub_repo, "hf://org/tiny", str(dest), "--progress", "json")
    assert second.returncode == 0, second.stderr
    gets = [r for r in hub_repo.hub.content_requests() if r.path.endswith("/" + BIG)]
    assert [(r.range, r.status, r.bytes_sent) for r in gets] == [(f"bytes={kept}-", 206, len(files[BIG]) - kept)]
    assert published(dest) == {p: files[p] for p in DEFAULT_SELECTION}
    done = json_events(second.stdout)[-1]
    # Only the rest of the shard (and whatever small files the kill had cut) came over the wire.
    assert done["bytes_downloaded"] == sum(r.bytes_sent for r in hub_repo.hub.content_requests())
    assert done["bytes_downloaded"] <= done["bytes_total"] - kept  # type: ignore[operator]


def test_concurrent_downloads_into_one_dest_download_once(hub_repo: HubRepo, tmp_path: Path) -> None:
    dest = tmp_path / "m"
    with open(tmp_path / "a.log", "w") as log_a, open(tmp_path / "b.log", "w") as log_b:
        a = _stalled_download(hub_repo, dest, 100_000, log_a)  # holds DEST.lock, stalled mid-file
        b = subprocess.Popen(cli("hf://org/tiny", str(dest), "--progress", "json"), env=hub_repo.env(),
                             stdout=log_b, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: "waiting for another download" in (tmp_path / "b.log").read_text() or b.poll() is not None,
                 "the second download to wait for the lock")
        assert b.poll() is None and not dest.exists()
        hub_repo.hub.release.set()
        assert a.wait(60) == 0 and b.wait(60) == 0, (tmp_path / "a.log").read_text()
    done_b = json_events((tmp_path / "b.log").read_text())[-1]
    assert done_b["cache_hit"] is True and done_b["bytes_downloaded"] == 0
    fetched = [r.path.rsplit("/", 1)[-1] for r in hub_repo.hub.content_requests()]
    assert sorted(fetched) == sorted(DEFAULT_SELECTION)  # each file once, by the first process


def test_checksum_mismatch_fails_with_a_termination_message(hub_repo: HubRepo, tmp_path: Path) -> None:
    bad = "model-00002-of-00002.safetensors"
    hub_repo.hub.corrupt.add(bad)
    dest, term = tmp_path / "m", tmp_path / "termination-log"
    result = run_cli(hub_repo, "hf://org/tiny", str(dest), "--progress", "none", "--termination-log", str(term))
    assert result.returncode == 1
    import hashlib

    expected = hashlib.sha256(hub_repo.files[bad]).hexdigest()
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: ChecksumMismatch: hf://org/tiny: {bad} does not match the source: "
                           f"expected sha256 {expected}, got sha256 "), line
    assert term.read_text() == line.removeprefix("error: ")
    assert not dest.exists() and not (staging_dir(dest) / bad).exists()

    hub_repo.hub.corrupt.clear()  # the source is healthy again: the next run completes
    assert run_cli(hub_repo, "hf://org/tiny", str(dest)).returncode == 0
    assert published(dest) == {p: hub_repo.files[p] for p in DEFAULT_SELECTION}


def test_cli_401_and_404_exit_1_with_the_reason(hub_repo: HubRepo, tmp_path: Path) -> None:
    hub_repo.hub.token = "hf_secret"
    term = tmp_path / "term"
    denied = run_cli(hub_repo, "hf://org/tiny", str(tmp_path / "m"), "--termination-log", str(term))
    assert denied.returncode == 1
    assert "error: Unauthorized: 401 Unauthorized for hf://org/tiny" in denied.stderr
    assert term.read_text().startswith("Unauthorized: 401 Unauthorized for hf://org/tiny")
    assert "Traceback" not in denied.stderr
    missing = run_cli(hub_repo, "hf://org/nope", str(tmp_path / "m"), HF_TOKEN="hf_secret")
    assert missing.returncode == 1 and "error: NotFound: 404 Not Found for hf://org/nope" in missing.stderr
    ok = run_cli(hub_repo, "hf://org/tiny", str(tmp_path / "m"), HF_TOKEN="hf_secret")
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize(("uri", "words"), [
    ("pvc://models/qwen", "mounted into the pod"),
    ("oci://ghcr.io/org/model:v1", "image volume"),
    ("/models/qwen", "local path"),
    ("hf://bad/na--me", "expected hf://org/name"),
])
def test_cli_usage_errors_exit_2(uri: str, words: str, tmp_path: Path) -> None:
    result = subprocess.run(cli(uri, str(tmp_path / "m")), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and words in result.stderr


def test_cli_help_documents_the_contract() -> None:
    result = subprocess.run(cli("--help"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for flag in ("--include", "--exclude", "--max-workers", "--progress", "--hf-endpoint", "--s3-endpoint",
                 "--s3-region", "--lock-timeout", "--termination-log", "HF_TOKEN", "Exit status"):
        assert flag in result.stdout


def test_hf_endpoint_flag_overrides_the_environment(hub_repo: HubRepo, tmp_path: Path) -> None:
    env = hub_repo.env(HF_ENDPOINT="http://127.0.0.1:9")  # nothing listens there
    result = subprocess.run(cli("hf://org/tiny", str(tmp_path / "m"), "--hf-endpoint", hub_repo.hub.url),
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    unreachable = subprocess.run(cli("hf://org/tiny", str(tmp_path / "n")), env=env, capture_output=True,
                                 text=True, timeout=120)
    assert unreachable.returncode == 1 and "error: DownloadFailed: cannot reach http://127.0.0.1:9" in \
        unreachable.stderr
    assert os.path.isdir(tmp_path / "m") and not os.path.exists(tmp_path / "n")
