"""Which text a request is routed by."""

from __future__ import annotations

from radixserve.router.request_text import routing_text


def test_completion_prompts() -> None:
    assert routing_text("/v1/completions", {"prompt": "hello"}) == "hello"
    assert routing_text("/v1/completions", {"prompt": ["first", "second"]}) == "first"
    ids = routing_text("/v1/completions", {"prompt": [1, 2, 3]})
    assert ids is not None and ids.endswith("\x01\x02\x03")
    assert routing_text("/v1/completions", {"prompt": [[5, 6]]}) == routing_text("/v1/completions", {"prompt": [5, 6]})
    assert routing_text("/v1/completions", {}) is None


def test_chat_messages_share_prefixes_when_leading_messages_are_equal() -> None:
    system = {"role": "system", "content": "You are terse."}
    a = routing_text("/v1/chat/completions", {"messages": [system, {"role": "user", "content": "hi"}]})
    b = routing_text("/v1/chat/completions", {"messages": [system, {"role": "user", "content": "bye"}]})
    assert a is not None and b is not None
    assert a.startswith("<|system|>You are terse.\n<|user|>") and b.startswith("<|system|>You are terse.\n<|user|>")
    parts = routing_text("/v1/chat/completions", {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {}}]}]})
    assert parts == "<|user|>look\n"
    assert routing_text("/v1/chat/completions", {"messages": "nope"}) is None


def test_native_generate() -> None:
    assert routing_text("/generate", {"text": "abc"}) == "abc"
    assert routing_text("/generate", {"text": ["abc", "def"]}) == "abc"
    from_ids = routing_text("/generate", {"input_ids": [65, 66]})
    assert from_ids is not None and from_ids.endswith("AB") and from_ids != "AB"  # marked apart from text
    assert routing_text("/generate", {"input_ids": [[65, 66]]}) == from_ids
    assert routing_text("/generate", {}) is None
