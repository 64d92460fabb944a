"""A request's prompt as the worker's engine will see it: token ids, for exact cache matching.

Blocks only match the engine's if the router tokenizes exactly as the server does
(radixserve/server/openai_serving.py and http_server.py):
  - /v1/completions and /generate text: the model tokenizer with special tokens (BOS) added;
  - /v1/chat/completions: the messages normalised by the server's own code (`template_messages`:
    text parts joined, `developer` as `system`, tool calls), rendered with the model's chat
    template and the generation prompt, then tokenized without special tokens;
  - token ids (`input_ids`, a completions prompt of ints) as given.
A batch is routed by its first prompt, as `request_text.routing_text` does. Anything the server
would reject gives None: such a request is routed by the approximate tree (and fails at the
worker with the server's own error).

The server modules are imported only when a tokenizer is configured, so a router without one
does not load FastAPI and the engine's request classes.

Tokenizing costs about a millisecond per thousand tokens: the proxy hands long prompts
(`LONG_PROMPT_BYTES`) to the tokenizer's own thread (`RoutedPrompt.prepare`) so the event loop
keeps relaying other requests meanwhile; short ones are cheaper inline than a thread hop. One
lock serialises the two paths (a fast tokenizer must not be used by two threads at once).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from radixserve.cache_events.protocol import BLOCK_TOKENS, prefix_block_hashes

log = logging.getLogger(__name__)

LONG_PROMPT_BYTES = 4096  # request bodies above this are tokenized off the event loop


class PromptTokenizer:
    """Tokenizes request bodies like `radixserve serve` does, with the model's tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        from radixserve.server.protocol import ChatCompletionRequest
        from radixserve.server.tool_calls import chat_template_of, plan_tools, template_messages

        self.tokenizer = tokenizer
        self._chat_request = ChatCompletionRequest
        self._template_messages = template_messages
        self._plan_tools = plan_tools
        # plan_tools reads the template and the server's --tool-call-parser; the parser only picks
        # how output is parsed, not what the template renders, so none is assumed here.
        self._tm = SimpleNamespace(tokenizer=tokenizer, server_args=SimpleNamespace(tool_call_parser=None))
        self._template = chat_template_of(self._tm)  # type: ignore[arg-type]
        self._lock = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="router-tokenize")
        self.offloaded = 0  # prompts tokenized on the executor

    @classmethod
    def load(cls, source: str) -> PromptTokenizer:
        """From a GGUF file, an HF directory, or a Hugging Face model id."""
        path = Path(source).expanduser()
        if path.exists():
            from radixserve.model_loader.tokenizer import load_tokenizer

            return cls(load_tokenizer(path))
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(source))

    def text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True).input_ids)

    def chat(self, body: dict[str, Any]) -> list[int]:
        req = self._chat_request(**body)
        plan = self._plan_tools(self._tm, req)  # type: ignore[arg-type]
        messages = self._template_messages(req, plan, self._template)
        kwargs = dict(req.chat_template_kwargs or {})
        if plan.tools is not None:
            kwargs["tools"] = plan.tools
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
        return list(self.tokenizer(rendered, add_special_tokens=False).input_ids)

    def __call__(self, path: str, body: dict[str, Any]) -> list[int] | None:
        with self._lock:
            return self._tokens(path, body)

    def _tokens(self, path: str, body: dict[str, Any]) -> list[int] | None:
        try:
            if path == "/v1/chat/completions":
                return self.chat(body) if isinstance(body.get("messages"), list) else None
            prompt = body.get("prompt") if path == "/v1/completions" else body.get("text")
            if path == "/generate" and prompt is None:
                return token_ids(body.get("input_ids"))
            if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
                prompt = prompt[0]
            if isinstance(prompt, str):
                return self.text(prompt)
            return token_ids(prompt)
        except Exception as exc:  # the server will refuse the request with its own error
            log.debug("cannot tokenize a %s request for routing: %s", path, exc)
            return None


def token_ids(value: Any) -> list[int] | None:
    """A prompt given as token ids (or a batch of them: its first), else None."""
    if isinstance(value, list) and value and isinstance(value[0], list):
        value = value[0]
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return value
    return None


def ids_only(path: str, body: dict[str, Any]) -> list[int] | None:
    """Without a tokenizer only token-id prompts can be matched exactly."""
    if path == "/generate":
        return token_ids(body.get("input_ids"))
    if path == "/v1/completions":
        return token_ids(body.get("prompt"))
    return None


def tokenizer_source_of(server_info: dict[str, Any]) -> str | None:
    """Where a `radixserve serve` worker's tokenizer can be loaded from on this machine, read from
    its /get_server_info: its --tokenizer-path or --model-path when that path exists here (one
    machine, or a shared volume), the embedded default model when it serves that; else None."""
    if "model_path" not in server_info:
        return None  # not a radixserve server
    source = server_info.get("tokenizer_path") or server_info.get("model_path")
    if not source:
        from radixserve.model_loader.default_model import default_model_path

        try:
            return str(default_model_path())
        except Exception:  # the embedded model's package is not installed with this router
            return None
    return str(source) if Path(str(source)).exists() else None


class RoutedPrompt:
    """One request's prompt, tokenized and hashed at most once (retries reuse it)."""

    __slots__ = ("_body", "_hashes", "_path", "_tokenize", "_tokens")

    def __init__(self, path: str, body: dict[str, Any], tokenize: PromptTokenizer | None) -> None:
        self._path = path
        self._body = body
        self._tokenize = tokenize
        self._tokens: list[int] | bool | None = False  # False: not computed yet
        self._hashes: dict[int, list[int]] = {}

    @property
    def tokens(self) -> list[int] | None:
        if self._tokens is False:
            tokenize = self._tokenize
            self._tokens = tokenize(self._path, self._body) if tokenize is not None else ids_only(self._path, self._body)
        return self._tokens  # type: ignore[return-value]

    async def prepare(self) -> None:
        """Tokenize and hash on the tokenizer's thread (for long prompts), before the policy asks."""
        tokenize = self._tokenize
        if self._tokens is not False or not isinstance(tokenize, PromptTokenizer):
            return
        tokenize.offloaded += 1

        def work() -> tuple[list[int] | None, list[int]]:
            tokens = tokenize(self._path, self._body)
            return tokens, prefix_block_hashes(tokens or [], BLOCK_TOKENS)

        self._tokens, self._hashes[BLOCK_TOKENS] = await asyncio.get_running_loop().run_in_executor(
            tokenize.executor, work)

    def block_hashes(self, block_tokens: int) -> list[int]:
        hashes = self._hashes.get(block_tokens)
        if hashes is None:
            hashes = self._hashes[block_tokens] = prefix_block_hashes(self.tokens or [], block_tokens)
        return hashes
