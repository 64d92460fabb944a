"""Tool calling on /v1/chat/completions: which tools the template sees, how calls are forced with a
JSON schema (tool_choice required / named) or parsed from free text (auto), and streaming forced calls."""

from __future__ import annotations

import functools
import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from radixserve.server.errors import APIError
from radixserve.server.protocol import (
    ChatCompletionRequest,
    ChatTool,
    NamedToolChoice,
)
from radixserve.server.structured_output import schema_problem

if TYPE_CHECKING:  # the manager imports the engine's modules (torch): the router loads this file
    from radixserve.managers.tokenizer_manager import TokenizerManager

# Tool-call parsers whose markers are special tokens (`<|python_tag|>`, `[TOOL_CALLS]`): their
# requests are detokenized with special tokens kept.
KEEP_SPECIAL_TOKENS = frozenset(("llama3", "mistral"))
NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


def tool_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolPlan:
    """How a chat request's tools are served. mode: "off" (no tools, or tool_choice none: not shown
    to the model, output is content), "parser" (auto: free output parsed by the tool-call parser),
    "constrained" (required / a named function: output forced to a JSON array of calls)."""

    mode: str = "off"
    tools: list[dict[str, Any]] | None = None  # for the chat template's `tools`
    parser: str | None = None
    schema: dict[str, Any] | None = None  # constrained: the calls' JSON schema


def call_item_schema(tool: ChatTool) -> dict[str, Any]:
    params = tool.function.parameters if tool.function.parameters is not None else NO_ARGUMENTS
    return {"type": "object", "properties": {"name": {"type": "string", "enum": [tool.function.name]},
                                             "parameters": params},
            "required": ["name", "parameters"], "additionalProperties": False}


def forced_calls_schema(tools: list[ChatTool], one: bool) -> dict[str, Any]:
    """vLLM's: a JSON array of {"name", "parameters"} (anyOf over the tools, so each call's arguments
    follow its own function's schema); at least one call, exactly one when `one`."""
    items = [call_item_schema(t) for t in tools]
    schema: dict[str, Any] = {"type": "array", "minItems": 1,
                              "items": items[0] if len(items) == 1 else {"anyOf": items}}
    if one:
        schema["maxItems"] = 1
    return schema


@functools.lru_cache(maxsize=16)
def _detected_parser(chat_template: str) -> str | None:
    from radixserve.parsers.tool_calls import detect_tool_call_parser

    return detect_tool_call_parser(chat_template)


def chat_template_of(tm: TokenizerManager) -> str:
    t = getattr(tm.tokenizer, "chat_template", None)
    if isinstance(t, dict):  # named templates: the default one
        t = t.get("default") or next(iter(t.values()), "")
    return t if isinstance(t, str) else ""


def plan_tools(tm: TokenizerManager, req: ChatCompletionRequest) -> ToolPlan:
    tools = req.tools or []
    choice = req.tool_choice if req.tool_choice is not None else ("auto" if tools else "none")
    for i, t in enumerate(tools):
        if t.function.parameters is not None:
            problem = schema_problem(t.function.parameters, f"tools.{i}.function.parameters")
            if not problem and t.function.parameters.get("type", "object") != "object":
                problem = f"tools.{i}.function.parameters must be an object schema (type: object)"
            if problem:
                raise APIError(400, f"invalid tool: {problem}", param="tools", code="invalid_value")
    if choice == "none":
        return ToolPlan()
    rendered = [t.model_dump(exclude_none=True) for t in tools]
    if choice == "auto":
        parser = getattr(tm.server_args, "tool_call_parser", None) or _detected_parser(chat_template_of(tm))
        parser = parser.strip().lower() if parser else None
        return ToolPlan(mode="parser" if parser else "off", tools=rendered, parser=parser)
    if not tools:
        raise APIError(400, f"tool_choice {choice if isinstance(choice, str) else 'naming a function'} needs tools",
                       param="tool_choice", code="invalid_value")
    if isinstance(choice, NamedToolChoice):
        chosen = [t for t in tools if t.function.name == choice.function.name]
        if not chosen:
            raise APIError(400, f"tool_choice names the function {choice.function.name!r}, which is not among the "
                           f"tools ({', '.join(sorted({t.function.name for t in tools}))})", param="tool_choice",
                           code="invalid_value")
        return ToolPlan(mode="constrained", tools=rendered, schema=forced_calls_schema(chosen[:1], one=True))
    return ToolPlan(mode="constrained", tools=rendered,
                    schema=forced_calls_schema(tools, one=not req.parallel_tool_calls))


def _arguments_value(arguments: str) -> Any:
    """A history call's arguments for the template: templates expect an object (`| tojson`)."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    return value if isinstance(value, dict) else arguments


def template_messages(req: ChatCompletionRequest, plan: ToolPlan, template: str) -> list[dict[str, Any]]:
    """The request's messages as the chat template takes them. A template that does not render tool
    calls (no `tool_calls` in it) sees an assistant call as its content, in the forced-call JSON form;
    a forced call under a template that does not render `tools` gets the tools in a system message."""
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(req.messages):
        content = m.content
        if isinstance(content, list):
            if any(p.type != "text" for p in content):
                raise APIError(400, "only text content parts are supported", param=f"messages.{i}.content",
                               code="unsupported")
            content = "".join(p.text or "" for p in content)
        msg: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": content or ""}
        if m.name is not None:
            msg["name"] = m.name
        if m.tool_calls:
            msg["tool_calls"] = [{"id": c.id, "type": "function", "function": {
                "name": c.function.name, "arguments": _arguments_value(c.function.arguments)}} for c in m.tool_calls]
            if "tool_calls" not in template and not msg["content"]:
                msg["content"] = json.dumps([{"name": c.function.name, "parameters": _arguments_value(
                    c.function.arguments)} for c in m.tool_calls], ensure_ascii=False)
        if m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
        messages.append(msg)
    if plan.mode == "constrained" and plan.tools and "tools" not in template:
        note = ("You can call these functions:\n" + json.dumps([t["function"] for t in plan.tools], ensure_ascii=False)
                + '\nAnswer with a JSON array of calls: [{"name": <function name>, "parameters": <its arguments>}].')
        if messages and messages[0]["role"] == "system":
            messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{note}".lstrip()}
        else:
            messages.insert(0, {"role": "system", "content": note})
    return messages


@dataclass
class CallDelta:
    """New output of the index-th call: its name (first delta only) and more of its arguments."""

    index: int
    name: str | None
    arguments: str


@dataclass
class _ScannedCall:
    name: str | None = None
    args_start: int | None = None
    args_end: int | None = None


class _CallScanner:
    """Reads a forced-call output (`[{"name": "f", "parameters": {...}}, ...]`) character by character:
    depth 1 is the array, 2 a call object, 3 and more inside its arguments."""

    def __init__(self, buf: str) -> None:
        self.buf = buf
        self.calls: list[_ScannedCall] = []
        self.depth, self.in_str, self.esc, self.str_start = 0, False, False, 0
        self.last_str: str | None = None  # the last string read at depth 2 (a key, once ':' follows)
        self.key: str | None = None  # the call's key whose value is being read
        for i, ch in enumerate(buf):
            if self.in_str:
                self._string(i, ch)
            elif not ch.isspace():
                self._structural(i, ch)

    @property
    def cur(self) -> _ScannedCall | None:
        return self.calls[-1] if self.calls and self.depth >= 2 else None

    def _in_arguments(self) -> bool:
        cur = self.cur
        return self.key == "parameters" and cur is not None and cur.args_start is not None

    def _string(self, i: int, ch: str) -> None:
        if self.esc:
            self.esc = False
        elif ch == "\\":
            self.esc = True
        elif ch == '"':
            self.in_str = False
            cur = self.cur
            if self.depth == 2 and cur is not None and not self._in_arguments():
                text = json.loads(self.buf[self.str_start:i + 1])
                if self.key == "name":
                    cur.name, self.key = text, None
                elif self.key is None:
                    self.last_str = text

    def _structural(self, i: int, ch: str) -> None:
        cur = self.cur
        if self.depth == 2 and self.key == "parameters" and cur is not None and cur.args_start is None:
            cur.args_start = i
        if ch == '"':
            self.in_str, self.str_start = True, i
        elif ch in "[{":
            self.depth += 1
            if self.depth == 2 and ch == "{":
                self.calls.append(_ScannedCall())
                self.key = None
        elif ch in "]}":
            self.depth -= 1
            if self.depth == 2 and self._in_arguments() and cur is not None:
                cur.args_end, self.key = i + 1, None
        elif self.depth == 2 and ch == ":":
            self.key, self.last_str = self.last_str, None
        elif self.depth == 2 and ch == ",":
            if self._in_arguments() and cur is not None and cur.args_end is None:
                cur.args_end = i  # a scalar value
            self.key = None


def scan_forced_calls(buf: str) -> list[_ScannedCall]:
    """The calls of a forced-call output as far as it has arrived: each call's name once complete, and
    where its arguments' JSON text starts and ends."""
    return _CallScanner(buf).calls


class ForcedCallStreamer:
    """The tool-call parser's streaming interface over a forced-call output (tool_choice required or
    named): call headers once their names are complete, then their arguments' JSON text as it comes."""

    def __init__(self) -> None:
        self.buf = ""
        self.sent: dict[int, int] = {}  # call index -> argument characters sent

    def _deltas(self, final: bool) -> list[CallDelta]:
        out: list[CallDelta] = []
        for i, c in enumerate(scan_forced_calls(self.buf)):
            if c.name is None:
                continue
            if i not in self.sent:
                self.sent[i] = 0
                out.append(CallDelta(i, c.name, ""))
            if c.args_start is not None:
                end = c.args_end if c.args_end is not None else len(self.buf)
                args = self.buf[c.args_start:end]
                if not final and c.args_end is None:
                    args = args.rstrip()
                if len(args) > self.sent[i]:
                    out.append(CallDelta(i, None, args[self.sent[i]:]))
                    self.sent[i] = len(args)
        return out

    def feed(self, text: str) -> tuple[str, list[CallDelta]]:
        self.buf += text
        return "", self._deltas(final=False)

    def finish(self) -> tuple[str, list[CallDelta]]:
        deltas = self._deltas(final=True)
        # No call at all (the output was cut short before a name): what came is content.
        return ("" if self.sent else self.buf), deltas


def parse_forced_calls(text: str) -> list[tuple[str, str]] | None:
    """(name, arguments JSON text) of each call of a complete forced-call output; None if it is not one."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not (isinstance(value, list) and value and all(
            isinstance(c, dict) and isinstance(c.get("name"), str) for c in value)):
        return None
    return [(c["name"], json.dumps(c.get("parameters", {}), ensure_ascii=False)) for c in value]


