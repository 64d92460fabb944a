"""Output parsers for the agent-facing API: tool calls and reasoning, whole or streamed.

Pure text processing (no engine dependency): `tool_calls` for the tool-call formats, `reasoning`
for think blocks. See each module for the formats."""

from radixserve.parsers.reasoning import (
    REASONING_PARSERS,
    ReasoningParser,
    ReasoningSplit,
    ReasoningStreamer,
    get_reasoning_parser,
)
from radixserve.parsers.tool_calls import (
    TOOL_CALL_PARSERS,
    ToolCall,
    ToolCallDelta,
    ToolCallParse,
    ToolCallParser,
    ToolCallStreamer,
    detect_tool_call_parser,
    get_tool_call_parser,
)

__all__ = [
    "REASONING_PARSERS",
    "TOOL_CALL_PARSERS",
    "ReasoningParser",
    "ReasoningSplit",
    "ReasoningStreamer",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallParse",
    "ToolCallParser",
    "ToolCallStreamer",
    "detect_tool_call_parser",
    "get_reasoning_parser",
    "get_tool_call_parser",
]
