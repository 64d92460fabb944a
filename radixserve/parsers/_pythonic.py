"""Pythonic tool calls (Llama 3.2/3.3 and Llama 4 with a pythonic template): `[f(a=1, b="x"), g()]`.

The whole output (after whitespace, and Llama 4's optional `<|python_start|>`) must begin with the
list; text after it (and `<|python_end|>`) is content. The list is parsed with `ast` and only read,
never evaluated: a call is a name (dotted names too) with keyword arguments whose values are
literals (strings, numbers, booleans, None, and lists, tuples and dicts of them; JSON's `true`,
`false` and `null` are taken as well). Anything else, including one call in the list that does not
fit, makes the list content.

Streaming holds the list until it is complete (it cannot be known to be calls before that), then
sends each call's name and arguments in one delta. A list that cannot start with a call
(`[1] Introduction`, `[link](...)`) is released as content at once.
"""

from __future__ import annotations

import ast
import math
import re
from typing import Any

from radixserve.parsers._json_stream import dumps
from radixserve.parsers._types import StreamerBase, ToolCall, ToolCallParser

_WS = " \t\r\n"
START_TAG, END_TAG = "<|python_start|>", "<|python_end|>"
_MAY_BE_CALLS = re.compile(r"\[\s*(?:[A-Za-z_][\w.]*\s*(?:\(.*)?)?", re.DOTALL)
_JSON_NAMES = {"true": True, "false": False, "null": None}


class _NotLiteral(Exception):
    pass


def _literal(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, float) and not math.isfinite(v):
            raise _NotLiteral
        if v is None or isinstance(v, str | int | float):  # bool is an int
            return v
        raise _NotLiteral
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        v = _literal(node.operand)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise _NotLiteral
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.List | ast.Tuple):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        out: dict[str, Any] = {}
        for k, value in zip(node.keys, node.values, strict=True):
            if not (isinstance(k, ast.Constant) and isinstance(k.value, str)):
                raise _NotLiteral
            out[k.value] = _literal(value)
        return out
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    raise _NotLiteral


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise _NotLiteral


def _list_expr(text: str) -> ast.expr | None:
    """`text` parsed as one Python expression, or None (not an expression, or not complete yet)."""
    try:
        return ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _calls_of(body: ast.expr) -> list[ToolCall] | None:
    if not isinstance(body, ast.List) or not body.elts:
        return None
    calls = []
    try:
        for call in body.elts:
            if not isinstance(call, ast.Call) or call.args:
                return None
            args: dict[str, Any] = {}
            for kw in call.keywords:
                if kw.arg is None:  # **kwargs
                    return None
                args[kw.arg] = _literal(kw.value)
            calls.append(ToolCall(_dotted(call.func), dumps(args)))
    except (_NotLiteral, RecursionError):
        return None
    return calls


def parse_call_list(text: str) -> list[ToolCall] | None:
    """The calls of a complete list `[f(a=1), ...]`; None when it is not a (non-empty) list of calls."""
    body = _list_expr(text)
    return None if body is None else _calls_of(body)


class PythonicStreamer(StreamerBase):
    def __init__(self) -> None:
        super().__init__()
        self._mode = "start"
        self._lead = ""  # what came before the list (whitespace, the start tag): content if no calls
        self._tried = 0  # the list text up to here has no "]" that completes it

    def _step(self, final: bool) -> None:
        if self._mode == "start":
            self._start(final)
        if self._mode == "list":
            self._list(final)
        if self._mode == "after":
            rest = self._buf.lstrip(_WS)
            if rest.startswith(END_TAG):
                rest = rest[len(END_TAG) :]
            elif not final and (not rest or END_TAG.startswith(rest)):
                return
            self._buf, self._mode = rest, "content"
        if self._mode == "content":
            self._content_out(self._buf)
            self._buf = ""

    def _start(self, final: bool) -> None:
        rest = self._buf.lstrip(_WS)
        if rest.startswith(START_TAG):
            rest = rest[len(START_TAG) :].lstrip(_WS)
        elif not final and START_TAG.startswith(rest):
            return  # empty, or a start of the tag
        if not rest and not final:
            return
        self._mode = "content"
        if rest.startswith("["):
            self._lead = self._buf[: len(self._buf) - len(rest)]
            self._buf, self._mode = rest, "list"

    def _list(self, final: bool) -> None:
        buf = self._buf
        m = _MAY_BE_CALLS.match(buf)
        if m is None or (m.end() < len(buf) and "(" not in m.group()):
            return self._not_calls()
        j = buf.find("]", self._tried)
        while j >= 0:
            body = _list_expr(buf[: j + 1])
            if body is not None:
                calls = _calls_of(body)
                if calls is None:
                    return self._not_calls()
                for c in calls:
                    self._new_call(c.name, c.arguments)
                self._buf, self._mode = buf[j + 1 :], "after"
                return None
            j = buf.find("]", j + 1)
        self._tried = len(buf)
        if final:
            self._not_calls()
        return None

    def _not_calls(self) -> None:
        self._buf = self._lead + self._buf
        self._mode = "content"


class PythonicToolCallParser(ToolCallParser):
    name = "pythonic"

    def streamer(self) -> PythonicStreamer:
        return PythonicStreamer()
