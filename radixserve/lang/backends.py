"""Where a program's requests go: a running server over HTTP, or an Engine in this process.

Both backends take the same calls (text prompts with SGLang's native sampling parameters and
`logprob_start_len`) and return the same results, so a program gives the same greedy output on
either. Each also supplies the model's chat template, which renders the program's messages.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0


class BackendError(RuntimeError):
    """A request the backend refused or failed (the server's message, or the Engine's error)."""


@dataclass(frozen=True)
class GenerateCall:
    text: str
    sampling_params: dict[str, Any]
    logprob_start_len: int = -1


@dataclass(frozen=True)
class GenerateResult:
    text: str
    output_ids: list[int]
    meta_info: dict[str, Any]  # prompt_tokens, completion_tokens, cached_tokens, finish_reason, ...

    @property
    def input_token_logprobs(self) -> list[tuple[float | None, int]]:
        return [(None if lp is None else float(lp), int(t)) for lp, t in self.meta_info.get("input_token_logprobs", [])]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GenerateResult:
        return cls(d["text"], list(d["output_ids"]), dict(d["meta_info"]))


class Backend(Protocol):
    def generate(self, calls: list[GenerateCall]) -> list[GenerateResult]:
        """Run the calls (concurrently where the backend can); results in order."""
        ...

    def chat_template(self) -> Any:
        """A tokenizer with the model's chat template (`apply_chat_template`)."""
        ...


class RuntimeEndpoint:
    """A `radixserve serve` (or SGLang-compatible) server, over its native `/generate`.

    The chat template is the served model's: from `tokenizer` when given, else loaded from the
    model path the server reports in `/get_server_info` (the same machine or a shared path).
    httpx.Client is thread-safe, so forked states call it concurrently."""

    def __init__(self, base_url: str, api_key: str | None = None, tokenizer: Any = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)
        self._tokenizer = tokenizer
        self._lock = threading.Lock()

    def generate(self, calls: list[GenerateCall]) -> list[GenerateResult]:
        if len({c.logprob_start_len for c in calls}) > 1:
            return [r for c in calls for r in self.generate([c])]
        body: dict[str, Any] = {"text": [c.text for c in calls], "logprob_start_len": calls[0].logprob_start_len}
        # The native route takes one sampling_params object per request: split calls that differ.
        if any(c.sampling_params != calls[0].sampling_params for c in calls):
            return [r for c in calls for r in self.generate([c])]
        body["sampling_params"] = calls[0].sampling_params
        resp = self.client.post("/generate", json=body)
        if resp.status_code != 200:
            raise BackendError(f"{self.base_url}/generate answered {resp.status_code}: {_error_message(resp)}")
        out = resp.json()
        return [GenerateResult.from_json(d) for d in (out if isinstance(out, list) else [out])]

    def server_info(self) -> dict[str, Any]:
        resp = self.client.get("/get_server_info")
        resp.raise_for_status()
        info: dict[str, Any] = resp.json()
        return info

    def chat_template(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = self._load_tokenizer()
            return self._tokenizer

    def _load_tokenizer(self) -> Any:
        from radixserve.model_loader.source import resolve_model_source
        from radixserve.model_loader.tokenizer import load_tokenizer

        info = self.server_info()
        try:
            source = resolve_model_source(info.get("model_path"), info.get("load_format", "auto"),
                                          info.get("tokenizer_path"))
            return load_tokenizer(source.tokenizer_source)
        except Exception as e:
            raise BackendError(f"cannot load the chat template of the model served at {self.base_url} "
                               f"({info.get('model_path')!r}: {e}); pass RuntimeEndpoint(..., tokenizer=...)") from e

    def close(self) -> None:
        self.client.close()


def _error_message(resp: httpx.Response) -> str:
    try:
        err = resp.json()["error"]
        return f"{err.get('message')} (param {err.get('param')!r}, code {err.get('code')!r})"
    except Exception:
        return resp.text[:500]


class EngineBackend:
    """An in-process `radixserve.Engine`. The Engine runs one call at a time, so a worker thread
    takes whatever calls are waiting and runs them as one batch: forked states that generate at
    the same time share the engine's batches and its RadixCache."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._inbox: queue.Queue[tuple[list[GenerateCall], Future[list[GenerateResult]]]] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()

    def generate(self, calls: list[GenerateCall]) -> list[GenerateResult]:
        done: Future[list[GenerateResult]] = Future()
        self._inbox.put((calls, done))
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="radixserve-lang-engine", daemon=True)
                self._worker.start()
        return done.result()

    def chat_template(self) -> Any:
        return self.engine.tokenizer

    def _run(self) -> None:
        while True:
            try:
                batch = [self._inbox.get(timeout=1.0)]
            except queue.Empty:
                return  # idle: the next call starts a new worker
            while True:
                try:
                    batch.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            try:
                self._run_batch(batch)
            except BaseException as e:  # never leave a caller waiting on a future nobody resolves
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                raise

    def _run_batch(self, batch: list[tuple[list[GenerateCall], Future[list[GenerateResult]]]]) -> None:
        """One engine call per distinct logprob_start_len, over every waiting caller's calls."""
        by_start: dict[int, list[tuple[GenerateCall, int, int]]] = {}
        results: list[list[GenerateResult | None]] = [[None] * len(calls) for calls, _ in batch]
        for j, (calls, _) in enumerate(batch):
            for k, c in enumerate(calls):
                by_start.setdefault(c.logprob_start_len, []).append((c, j, k))
        errors: dict[int, BaseException] = {}
        for start, group in by_start.items():
            for (_, j, k), res in zip(group, self._run_group([c for c, _, _ in group], start), strict=True):
                if isinstance(res, BaseException):
                    errors.setdefault(j, res)
                else:
                    results[j][k] = res
        for j, (_, fut) in enumerate(batch):
            if j in errors:
                fut.set_exception(errors[j])
            else:
                fut.set_result([r for r in results[j] if r is not None])

    def _run_group(self, calls: list[GenerateCall], start: int) -> list[GenerateResult | BaseException]:
        try:
            outs = self.engine.generate([c.text for c in calls], [c.sampling_params for c in calls],
                                        logprob_start_len=start)
            return [GenerateResult.from_json(dict(o)) for o in outs]
        except Exception as e:
            if len(calls) == 1:
                return [BackendError(str(e))]
            # One bad call fails the batch: run them one by one so each gets its own outcome.
            return [r for c in calls for r in self._run_group([c], start)]
