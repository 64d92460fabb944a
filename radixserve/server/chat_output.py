"""A chat choice's text split into reasoning, content and tool calls, whole (message) or as it streams (deltas)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from radixserve.server.protocol import (
    ChatCompletionChunk,
    ChatMessageOut,
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    FunctionCallOut,
    ToolCallOut,
)
from radixserve.server.tool_calls import ForcedCallStreamer, ToolPlan, parse_forced_calls, tool_call_id


@dataclass
class OutputPlan:
    """What a chat choice's text is split into: reasoning (with --reasoning-parser, unless the output
    is constrained), content, tool calls (per the ToolPlan)."""

    reasoning_parser: str | None = None
    tools: ToolPlan = field(default_factory=ToolPlan)


def _finish(reason: str | None, called: bool) -> str | None:
    return "tool_calls" if called and reason == "stop" else reason


def chat_message(text: str, reason: str | None, plan: OutputPlan) -> tuple[ChatMessageOut, str | None]:
    """A finished choice's message and finish_reason."""
    reasoning: str | None = None
    content: str | None = text
    if plan.reasoning_parser:
        from radixserve.parsers.reasoning import get_reasoning_parser

        split = get_reasoning_parser(plan.reasoning_parser).split(text)
        reasoning, content = split.reasoning, split.content
    calls: list[tuple[str, str]] = []
    if plan.tools.mode == "constrained":
        calls = parse_forced_calls(content or "") or []
        if calls:
            content = None
    elif plan.tools.mode == "parser" and plan.tools.parser:
        from radixserve.parsers.tool_calls import get_tool_call_parser

        parsed = get_tool_call_parser(plan.tools.parser).parse(content or "")
        calls = [(c.name, c.arguments) for c in parsed.calls]
        content = parsed.content
    if calls and not (content or "").strip():
        content = None
    tool_calls = [ToolCallOut(id=tool_call_id(), function=FunctionCallOut(name=n, arguments=a)) for n, a in calls]
    return (ChatMessageOut(content=content, reasoning_content=reasoning or None, tool_calls=tool_calls or None),
            _finish(reason, bool(calls)))


def chunk_body(chunk: ChatCompletionChunk) -> dict[str, Any]:
    """A chunk as JSON, leaving out the delta fields that are not set: reasoning_content and
    tool_calls when absent, and a tool call's id, type and name after its first delta (clients merge
    deltas key by key; OpenAI's `type: null` would overwrite the call's type)."""
    body = chunk.model_dump()
    for choice in body["choices"]:
        delta = choice["delta"]
        for key in ("reasoning_content", "tool_calls"):
            if delta.get(key) is None:
                delta.pop(key, None)
        for call in delta.get("tool_calls") or []:
            for key in ("id", "type"):
                if call[key] is None:
                    del call[key]
            call["function"] = {k: v for k, v in call["function"].items() if v is not None}
    return body


class ChatDeltas:
    """A streamed choice's text as deltas: reasoning_content, content, and tool calls (OpenAI's shape:
    a call's first delta has its index, id, type, name and empty arguments; the rest add arguments)."""

    def __init__(self, plan: OutputPlan) -> None:
        self.reasoning: Any = None
        self.tools: Any = None
        if plan.reasoning_parser:
            from radixserve.parsers.reasoning import get_reasoning_parser

            self.reasoning = get_reasoning_parser(plan.reasoning_parser).streamer()
        if plan.tools.mode == "constrained":
            self.tools = ForcedCallStreamer()
        elif plan.tools.mode == "parser" and plan.tools.parser:
            from radixserve.parsers.tool_calls import get_tool_call_parser

            self.tools = get_tool_call_parser(plan.tools.parser).streamer()
        self.called = False

    def _content(self, reasoning: str | None, content: str, calls: list[Any]) -> list[DeltaMessage]:
        out = []
        if reasoning:
            out.append(DeltaMessage(reasoning_content=reasoning))
        if content:
            out.append(DeltaMessage(content=content))
        for d in calls:
            if d.name is not None:
                self.called = True
                out.append(DeltaMessage(tool_calls=[DeltaToolCall(
                    index=d.index, id=tool_call_id(), type="function",
                    function=DeltaFunctionCall(name=d.name, arguments=""))]))
            if d.arguments:
                out.append(DeltaMessage(tool_calls=[DeltaToolCall(
                    index=d.index, function=DeltaFunctionCall(arguments=d.arguments))]))
        return out

    def _tools(self, content: str, final: bool) -> tuple[str, list[Any]]:
        if self.tools is None:
            return content, []
        text, calls = self.tools.feed(content) if content else ("", [])
        if final:
            more_text, more_calls = self.tools.finish()
            text, calls = (text or "") + (more_text or ""), [*calls, *more_calls]
        return text or "", calls

    def feed(self, text: str) -> list[DeltaMessage]:
        reasoning, content = self.reasoning.feed(text) if self.reasoning is not None else (None, text)
        return self._content(reasoning, *self._tools(content or "", final=False))

    def finish(self) -> list[DeltaMessage]:
        reasoning, content = self.reasoning.finish() if self.reasoning is not None else (None, "")
        return self._content(reasoning, *self._tools(content or "", final=True))

    def finish_reason(self, reason: str | None) -> str | None:
        return _finish(reason, self.called)


