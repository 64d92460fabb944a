"""A loopback stand-in for the Hugging Face Hub: just what huggingface_hub 2.4 calls to list a
model (`model_info(files_metadata=True)`) and fetch its files (/resolve, HEAD and GET with
Range), on a real HTTP server (uvicorn in a thread), with switches for failures.

    GET  /api/models/{repo}[/revision/{rev}]   id, sha, siblings (size, blobId, lfs.sha256)
    HEAD /{repo}/resolve/{rev}/{path}          X-Repo-Commit, ETag / X-Linked-Etag, X-Linked-Size
    GET  /{repo}/resolve/{rev}/{path}          the bytes; Range: bytes=N- gives 206
    GET  /cdn/{sha256}/{path}                   where LFS files redirect to (as the Hub's CDN)

As on the Hub, *.safetensors (and *.gguf, *.bin) are LFS files (sha256 checksums) whose
/resolve answers 302 to the CDN; the rest are git blobs (git sha1) served directly. Every
request is logged with the bytes its response sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")
_API = re.compile(r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)??)(?:/revision/(?P<rev>[^/]+))?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+(?:/[^/]+)??)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_CDN = re.compile(r"^/cdn/(?P<sha256>[0-9a-f]{64})/(?P<path>.+)$")
_CHUNK = 64 * 1024


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def files_from_dir(root: Path) -> dict[str, bytes]:
    """Every file under `root`, keyed by its relative POSIX path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]


@dataclass
class Repo:
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # name -> sha

    def resolve(self, rev: str) -> Commit | None:
        sha = self.branches.get(rev, rev)
        return self.commits.get(sha)


@dataclass
class RequestRecord:
    method: str
    path: str
    range: str | None
    status: int = 0
    bytes_sent: int = 0  # body bytes, updated while the response streams


class HubStandIn:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.token: str | None = None  # when set, requests without "Bearer <token>" get 401
        self.forbidden: set[str] = set()  # repo ids answering 403 (a gated repo)
        self.corrupt: set[str] = set()  # file paths served with one byte flipped (metadata unchanged)
        self.stall_after: dict[str, int] = {}  # file path -> body bytes after which GETs wait for `release`
        self.release = threading.Event()
        self.requests: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # ---- content ----------------------------------------------------------------------------
    def publish(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> str:
        """A new commit of `repo_id` holding `files`, at the head of `branch`; returns its sha."""
        repo = self.repos.setdefault(repo_id, Repo())
        digest = hashlib.sha1(repr(sorted((p, git_sha1(d)) for p, d in files.items())).encode())
        digest.update(str(len(repo.commits)).encode())
        sha = digest.hexdigest()
        repo.commits[sha] = Commit(sha, dict(files))
        repo.branches[branch] = sha
        return sha

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def file_requests(self) -> list[RequestRecord]:
        """Every request about a file (/resolve, /cdn), redirects included."""
        with self._lock:
            return [r for r in self.requests if "/resolve/" in r.path or r.path.startswith("/cdn/")]

    def content_requests(self) -> list[RequestRecord]:
        """The GETs that sent file bytes (200 or 206), wherever they were redirected to."""
        return [r for r in self.file_requests() if r.method == "GET" and r.status in (200, 206)]

    def bytes_served(self, path_suffix: str) -> int:
        return sum(r.bytes_sent for r in self.content_requests() if r.path.endswith("/" + path_suffix))

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    # ---- server ----------------------------------------------------------------------------
    def start(self) -> HubStandIn:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", interface="asgi3",
                                timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the Hub stand-in did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.release.set()
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)

    # ---- ASGI ------------------------------------------------------------------------------
    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        record = RequestRecord(scope["method"], scope["path"], headers.get("range"))
        with self._lock:
            self.requests.append(record)
        status, out_headers, body = self._route(record, headers)
        record.status = status
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.lower().encode(), str(v).encode()) for k, v in out_headers.items()]})
        if record.method == "HEAD" or body is None:
            await send({"type": "http.response.body", "body": b""})
            return
        await self._stream(record, body, receive, send)

    async def _stream(self, record: RequestRecord, body: bytes, receive: Receive, send: Send) -> None:
        if "/resolve/" in record.path:
            name: str | None = record.path.split("/resolve/", 1)[1].split("/", 1)[1]
        elif record.path.startswith("/cdn/"):
            name = record.path.split("/", 3)[3]  # /cdn/<sha256>/<name>
        else:
            name = None  # API answers and error bodies: never stalled
        stall = self.stall_after.get(name) if name is not None else None
        offset = 0
        while offset < len(body):
            end = min(len(body), offset + _CHUNK)
            if stall is not None and offset < stall <= end:
                end = stall
            await send({"type": "http.response.body", "body": body[offset:end], "more_body": True})
            record.bytes_sent += end - offset
            offset = end
            if stall is not None and offset == stall and not await self._wait_release(receive):
                return  # the client went away (was killed) while the response stalled
        await send({"type": "http.response.body", "body": b""})

    async def _wait_release(self, receive: Receive) -> bool:
        """Hold the response until `release` is set (True) or the client disconnects (False)."""
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            while not self.release.is_set():
                if gone.done():
                    return False
                await asyncio.sleep(0.02)
            return True
        finally:
            gone.cancel()

    def _route(self, record: RequestRecord, headers: dict[str, str]) -> tuple[int, dict[str, Any], bytes | None]:
        path = record.path
        cdn = _CDN.match(path)
        if cdn is not None:  # signed URLs on the Hub: no token needed
            return self._cdn(cdn.group("sha256"), cdn.group("path"), headers.get("range"))
        api, resolve = _API.match(path), _RESOLVE.match(path)
        match = api or resolve
        if match is None:
            return _error(404, "not a Hub route")
        if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
            message = "Invalid credentials in Authorization header" if "authorization" in headers else ""
            return 401, {"X-Error-Message": message, "Content-Length": 0}, b""
        repo_id = match.group("repo")
        repo = self.repos.get(repo_id)
        if repo is None:
            return _error(404, "Repository not found", "RepoNotFound")
        if repo_id in self.forbidden:
            return _error(403, f"Access to model {repo_id} is restricted and you are not in the authorized list",
                          "GatedRepo")
        commit = repo.resolve(match.group("rev") or "main")
        if commit is None:
            return _error(404, "Invalid rev id", "RevisionNotFound")
        if api is not None:
            return _json(self._model_info(repo_id, commit))
        assert resolve is not None
        return self._file(commit, resolve.group("path"), headers.get("range"))

    @staticmethod
    def _model_info(repo_id: str, commit: Commit) -> dict[str, Any]:
        siblings = []
        for name, data in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": name, "size": len(data), "blobId": git_sha1(data)}
            if name.endswith(LFS_SUFFIXES):
                sibling["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            siblings.append(sibling)
        return {"id": repo_id, "modelId": repo_id, "sha": commit.sha, "private": False, "siblings": siblings}

    def _file(self, commit: Commit, name: str, range_header: str | None) -> tuple[int, dict[str, Any], bytes]:
        data = commit.files.get(name)
        if data is None:
            return _error(404, "Entry not found", "EntryNotFound")
        headers: dict[str, Any] = {"X-Repo-Commit": commit.sha, "ETag": f'"{git_sha1(data)}"'}
        if name.endswith(LFS_SUFFIXES):
            sha256 = hashlib.sha256(data).hexdigest()
            headers.update({"X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": len(data),
                            "Location": f"/cdn/{sha256}/{name}", "Content-Length": 0})
            return 302, headers, b""
        return self._bytes(name, data, range_header, headers)

    def _cdn(self, sha256: str, name: str, range_header: str | None) -> tuple[int, dict[str, Any], bytes]:
        for repo in self.repos.values():
            for commit in repo.commits.values():
                data = commit.files.get(name)
                if data is not None and hashlib.sha256(data).hexdigest() == sha256:
                    return self._bytes(name, data, range_header, {"ETag": f'"{sha256}"'})
        return _error(404, "no such blob")

    def _bytes(self, name: str, data: bytes, range_header: str | None,
               headers: dict[str, Any]) -> tuple[int, dict[str, Any], bytes]:
        headers = {**headers, "Accept-Ranges": "bytes"}
        if name in self.corrupt:
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
        start = 0
        if range_header:
            m = re.fullmatch(r"bytes=(\d+)-", range_header.strip())
            if m is None or int(m.group(1)) >= len(data):
                return 416, {"Content-Range": f"bytes */{len(data)}", "Content-Length": 0}, b""
            start = int(m.group(1))
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        headers["Content-Length"] = len(data) - start
        return (206 if range_header else 200), headers, data[start:]


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass  # the (empty) request body


def _error(status: int, message: str, code: str | None = None) -> tuple[int, dict[str, Any], bytes]:
    body = json.dumps({"error": message}).encode()
    headers: dict[str, Any] = {"Content-Type": "application/json", "Content-Length": len(body),
                               "X-Error-Message": message}
    if code:
        headers["X-Error-Code"] = code
    return status, headers, body


def _json(data: dict[str, Any]) -> tuple[int, dict[str, Any], bytes]:
    body = json.dumps(data).encode()
    return 200, {"Content-Type": "application/json", "Content-Length": len(body)}, body
