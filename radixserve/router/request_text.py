"""The text a request is routed by: what a replica's prefix cache would see first.

For chat requests the messages are rendered in a fixed, simple form rather than with the
model's chat template: the router only needs equal conversations to map to equal strings
and shared leading messages to map to shared prefixes, which any deterministic rendering
gives. Token-id prompts become strings of code points so the same character tree serves
them; a marker keeps them from matching text prompts.
"""

from __future__ import annotations

from typing import Any

_IDS_MARKER = "\x00ids\x00"
_MAX_CODE_POINT = 0x10FFFF


def _ids_text(ids: list[Any]) -> str | None:
    try:
        return _IDS_MARKER + "".join(chr(i) for i in ids if 0 <= i <= _MAX_CODE_POINT)
    except TypeError:
        return None


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict))
    return ""


def _chat_text(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return None
    parts = []
    for msg in messages:
        if isinstance(msg, dict):
            parts.append(f"<|{msg.get('role', '')}|>{_content_text(msg.get('content'))}\n")
    return "".join(parts)


def _prompt_text(prompt: Any) -> str | None:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if isinstance(first, int):
            return _ids_text(prompt)
        # A batch: route by its first prompt (the whole batch goes to one worker).
        return _prompt_text(first)
    return None


def routing_text(path: str, body: dict[str, Any]) -> str | None:
    """Routing key for a request body of `path`; None when it has no usable prompt."""
    if path == "/v1/chat/completions":
        return _chat_text(body.get("messages"))
    if path == "/v1/completions":
        return _prompt_text(body.get("prompt"))
    if path == "/generate":
        if body.get("text") is not None:
            return _prompt_text(body["text"])
        ids = body.get("input_ids")
        if isinstance(ids, list) and ids and isinstance(ids[0], list):
            ids = ids[0]
        return _ids_text(ids) if isinstance(ids, list) else None
    return None
