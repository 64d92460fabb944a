"""Tool calls in model output: the parsers by name, and which one a chat template implies.

| name | models | format |
| --- | --- | --- |
| `llama3` | Llama 3.1 / 3.2 / 3.3 (JSON) | `<|python_tag|>{"name": "f", "parameters": {...}}`, `;`-separated |
| `hermes` (`qwen`, `qwen25`) | Hermes 2 Pro/3, Qwen 2.5, Qwen 3 | `<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>` |
| `mistral` | Mistral 7B v0.3, Nemo, Small | `[TOOL_CALLS] [{"name": ..., "arguments": ...}]`, `[TOOL_CALLS]f[ARGS]{...}` |
| `pythonic` | Llama 3.2 / 4 with a pythonic template | `[f(a=1, b="x"), g()]` |

`parser.parse(text)` reads a whole output; `parser.streamer()` reads one as it is generated
(`feed(delta)` per fragment, then `finish()`), giving the content to send now and `ToolCallDelta`s:
a call's name as soon as it is known, then its arguments in fragments whose concatenation equals
the `arguments` that `parse` gives. Model output never raises: what is not a valid call is content.

The markers of llama3 (`<|python_tag|>`) and mistral (`[TOOL_CALLS]`, `[ARGS]`) are special tokens:
the text given to these parsers must be detokenized with them kept.
"""

from __future__ import annotations

from radixserve.parsers._json_formats import (
    HermesToolCallParser,
    Llama3ToolCallParser,
    MistralToolCallParser,
)
from radixserve.parsers._pythonic import PythonicToolCallParser
from radixserve.parsers._types import (
    ToolCall,
    ToolCallDelta,
    ToolCallParse,
    ToolCallParser,
    ToolCallStreamer,
)

__all__ = [
    "TOOL_CALL_PARSERS",
    "HermesToolCallParser",
    "Llama3ToolCallParser",
    "MistralToolCallParser",
    "PythonicToolCallParser",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallParse",
    "ToolCallParser",
    "ToolCallStreamer",
    "detect_tool_call_parser",
    "get_tool_call_parser",
]

TOOL_CALL_PARSERS: dict[str, type[ToolCallParser]] = {
    "llama3": Llama3ToolCallParser,
    "hermes": HermesToolCallParser,
    "qwen": HermesToolCallParser,
    "qwen25": HermesToolCallParser,
    "mistral": MistralToolCallParser,
    "pythonic": PythonicToolCallParser,
}


def get_tool_call_parser(name: str) -> ToolCallParser:
    """The parser registered as `name` (case does not matter); ValueError names the known ones."""
    cls = TOOL_CALL_PARSERS.get(name.strip().lower())
    if cls is None:
        raise ValueError(f"unknown tool call parser {name!r}; known: {', '.join(sorted(TOOL_CALL_PARSERS))}")
    return cls()


# What a chat template's text says about the format its model calls tools in, checked in order.
_PYTHONIC_HINTS = (
    "[func_name1(",  # "Respond in the format [func_name1(params_name1=params_value1, ...), func_name2(params)]"
    "[func_name(",
)
_LLAMA3_HINTS = (
    "<|python_tag|>",
    '{"name": function name, "parameters": dictionary of argument name and its value}',
    "Environment: ipython",
    "<|start_header_id|>ipython<|end_header_id|>",
)


def detect_tool_call_parser(chat_template: str | None) -> str | None:
    """The parser a chat template implies, from markers in its text; None when it is not known.

    `<tool_call>` is hermes/qwen (unless the template wants XML inside the tags, as Qwen3-Coder's
    and GLM-4.5's do, which no parser here reads), `[TOOL_CALLS]` mistral, a pythonic call list in the
    instructions pythonic, `<|python_tag|>`/ipython llama3."""
    if not chat_template:
        return None
    t = chat_template
    if "<tool_call>" in t:
        # Qwen3-Coder (`<function=f>`) and GLM-4.5 (`<arg_key>`) put XML inside the tags
        return None if "<function=" in t or "<arg_key>" in t else "hermes"
    if "[TOOL_CALLS]" in t:
        return "mistral"
    if any(h in t for h in _PYTHONIC_HINTS):
        return "pythonic"
    if any(h in t for h in _LLAMA3_HINTS) or ("ipython" in t and "<|start_header_id|>" in t):
        return "llama3"
    return None
