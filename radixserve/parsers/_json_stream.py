"""Incremental JSON reading for tool calls: a resumable scanner and a re-serializer.

`JsonScanner` reads one JSON object (or array) a fragment at a time and reports what it reads to a
handler as events (containers opened and closed, object keys, strings in decoded pieces, other
scalars). It never needs to see the text again, so a call that arrives a token at a time costs
linear time. It stops on the character that closes the top-level value, or on the first character
that no JSON text could continue with.

`ArgsSerializer` turns the events of an arguments object back into text: exactly
`json.dumps(value, ensure_ascii=False)` of the value that `loads_first_wins` makes of the same text,
produced left to right, so every prefix it has produced is a prefix of the final string. That is
what lets a streaming parser send the arguments of a call before the call has been read whole.
Two rules make the prefix property hold: separators and keys are written only together with the
value that follows them, and a key seen twice in one object keeps its first value (later ones are
skipped), which `loads_first_wins` does as well.

The scanner is a little more lenient than `json.loads`: raw control characters inside strings (a
model writing code with literal newlines) are accepted and come out escaped.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Protocol

_WS = " \t\r\n"
_PLAIN_RUN = re.compile(r'[^"\\]+')
_NUMBER_CHARS = frozenset("0123456789+-.eE")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_LITERALS = ("true", "false", "null")
_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

# What the scanner expects next.
_VALUE = 0  # any value
_KEY_OR_END = 1  # right after "{"
_KEY = 2  # after "," in an object
_COLON = 3
_COMMA_OR_END = 4  # after a value inside a container
_VALUE_OR_END = 5  # right after "["
_DONE = 6
_ERROR = 7


class JsonEvents(Protocol):
    def begin(self, kind: str) -> None: ...  # kind is "{" or "["
    def end(self, kind: str) -> None: ...
    def key(self, key: str) -> None: ...
    def string_start(self) -> None: ...
    def string_chunk(self, text: str) -> None: ...
    def string_end(self, value: str) -> None: ...
    def scalar(self, text: str, value: Any) -> None: ...  # a number, true, false or null


def escape_fragment(text: str) -> str:
    """The JSON string body of `text`, as `json.dumps(..., ensure_ascii=False)` writes it.

    The escaping is per character, so escaping pieces and joining them equals escaping the whole.
    A lone surrogate (from a `\\ud83d` escape with no partner) is written as an escape, so that the
    result can always be encoded as UTF-8."""
    out = json.dumps(text, ensure_ascii=False)[1:-1]
    if _LONE_SURROGATE.search(out):
        out = _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", out)
    return out


def dumps(value: Any) -> str:
    """Serialize the way `ArgsSerializer` does (for values that did not come from the scanner)."""
    out = json.dumps(value, ensure_ascii=False)
    if _LONE_SURROGATE.search(out):
        out = _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", out)
    return out


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        out.setdefault(k, v)
    return out


def loads_first_wins(text: str) -> Any:
    """`json.loads` where a key repeated in one object keeps its first value (as the scanner does)."""
    return json.loads(text, object_pairs_hook=_first_wins, strict=False)


def _normalize_number(text: str) -> tuple[str, Any]:
    if any(c in text for c in ".eE"):
        f = float(text)
        if math.isfinite(f):
            return json.dumps(f), f
        return text, f  # out of range for a float: keep the model's spelling (valid JSON)
    i = int(text)
    return str(i), i


class JsonScanner:
    """Reads one JSON container incrementally; see the module docstring."""

    def __init__(self, events: JsonEvents) -> None:
        self._ev = events
        self._stack: list[str] = []
        self._expect = _VALUE
        # the token being read, if any: "s" string, "n" number, "l" literal
        self._token = ""
        self._is_key = False
        self._parts: list[str] = []  # decoded pieces of the current string
        self._escape: str | None = None  # "\\" after a backslash, "u" + hex digits inside \uXXXX
        self._high: int | None = None  # a high surrogate waiting for its low half
        self._chars = ""  # the number or literal read so far

    @property
    def done(self) -> bool:
        return self._expect == _DONE

    @property
    def failed(self) -> bool:
        return self._expect == _ERROR

    @property
    def depth(self) -> int:
        return len(self._stack)

    def feed(self, text: str, start: int = 0) -> int:
        """Read `text[start:]`; return the index where reading stopped.

        That is `len(text)` when everything was read and the value is not complete yet, the index
        just after the closing character when the value completed, or the index of the offending
        character when the text cannot be JSON (then `failed` is true)."""
        i, n = start, len(text)
        while i < n and self._expect < _DONE:
            if self._token == "s":
                i = self._string(text, i)
                continue
            c = text[i]
            if self._token:  # number or literal: ends at the first character that is not part of it
                if self._token == "n" and c in _NUMBER_CHARS:
                    self._chars += c
                    i += 1
                    continue
                if self._token == "l" and c.isalpha():
                    self._chars += c
                    if not any(lit.startswith(self._chars) for lit in _LITERALS):
                        self._expect = _ERROR
                        return i
                    i += 1
                    continue
                if not self._end_scalar():
                    return i
                continue  # the delimiter is read as structure below, on the next round
            if c in _WS:
                i += 1
                continue
            if not self._structure(c):
                self._expect = _ERROR
                return i
            i += 1
        return i

    # -- structure -------------------------------------------------------------------------------

    def _structure(self, c: str) -> bool:
        e = self._expect
        if e in (_VALUE, _VALUE_OR_END):
            if e == _VALUE_OR_END and c == "]":
                return self._close("[")
            return self._value(c)
        if e in (_KEY_OR_END, _KEY):
            if c == '"':
                self._start_string(is_key=True)
                return True
            if e == _KEY_OR_END and c == "}":
                return self._close("{")
            return False
        if e == _COLON:
            if c == ":":
                self._expect = _VALUE
                return True
            return False
        if e == _COMMA_OR_END:
            top = self._stack[-1]
            if c == ",":
                self._expect = _KEY if top == "{" else _VALUE
                return True
            if (c == "}" and top == "{") or (c == "]" and top == "["):
                return self._close(top)
            return False
        return False

    def _value(self, c: str) -> bool:
        if c in "{[":
            self._stack.append(c)
            self._expect = _KEY_OR_END if c == "{" else _VALUE_OR_END
            self._ev.begin(c)
            return True
        if not self._stack:
            return False  # the top-level value must be a container
        if c == '"':
            self._start_string(is_key=False)
            return True
        if c == "-" or c.isdigit():
            self._token, self._chars = "n", c
            return True
        if c in "tfn":
            self._token, self._chars = "l", c
            return True
        return False

    def _close(self, kind: str) -> bool:
        self._stack.pop()
        self._ev.end(kind)
        self._after_value()
        return True

    def _after_value(self) -> None:
        self._expect = _COMMA_OR_END if self._stack else _DONE

    def _end_scalar(self) -> bool:
        text, kind = self._chars, self._token
        self._token, self._chars = "", ""
        if kind == "n":
            if not _NUMBER.fullmatch(text):
                self._expect = _ERROR
                return False
            norm, value = _normalize_number(text)
            self._ev.scalar(norm, value)
        else:
            if text not in _LITERALS:
                self._expect = _ERROR
                return False
            self._ev.scalar(text, {"true": True, "false": False, "null": None}[text])
        self._after_value()
        return True

    # -- strings ---------------------------------------------------------------------------------

    def _start_string(self, is_key: bool) -> None:
        self._token, self._is_key, self._parts = "s", is_key, []
        self._escape, self._high = None, None
        if not is_key:
            self._ev.string_start()

    def _emit(self, piece: str) -> None:
        if self._high is not None:
            high, self._high = self._high, None
            self._emit(chr(high))
        self._parts.append(piece)
        if not self._is_key:
            self._ev.string_chunk(piece)

    def _string(self, text: str, i: int) -> int:
        n = len(text)
        while i < n:
            if self._escape is not None:
                i = self._escape_char(text[i], i)
                if self._expect == _ERROR:
                    return i
                continue
            m = _PLAIN_RUN.match(text, i)
            if m:
                self._emit(m.group())
                i = m.end()
                continue
            c = text[i]
            i += 1
            if c == "\\":
                self._escape = "\\"
                continue
            # c == '"': the string ends
            if self._high is not None:
                self._emit("")
            value = "".join(self._parts)
            self._token, self._parts = "", []
            if self._is_key:
                self._ev.key(value)
                self._expect = _COLON
            else:
                self._ev.string_end(value)
                self._after_value()
            return i
        return i

    def _escape_char(self, c: str, i: int) -> int:
        esc = self._escape
        assert esc is not None
        if esc == "\\":
            if c == "u":
                self._escape = "u"
            elif c in _SIMPLE_ESCAPES:
                self._escape = None
                self._emit(_SIMPLE_ESCAPES[c])
            else:
                self._expect = _ERROR
                return i
            return i + 1
        if c not in "0123456789abcdefABCDEF":
            self._expect = _ERROR
            return i
        esc += c
        if len(esc) < 5:
            self._escape = esc
            return i + 1
        self._escape = None
        code = int(esc[1:], 16)
        if self._high is not None and 0xDC00 <= code <= 0xDFFF:
            high, self._high = self._high, None
            self._emit(chr(0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00)))
        elif 0xD800 <= code <= 0xDBFF:
            if self._high is not None:
                self._emit("")
            self._high = code
        else:
            self._emit(chr(code))
        return i + 1


class _Ctx:
    __slots__ = ("count", "keys", "kind")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.count = 0
        self.keys: set[str] = set()


class ArgsSerializer:
    """Re-serializes the events of one JSON value (the arguments object); see the module docstring."""

    def __init__(self) -> None:
        self._out: list[str] = []
        self._stack: list[_Ctx] = []
        self._pending = ""  # separator and key, written with the next value
        self._skip = -1  # >= 0 while skipping the value of a repeated key: the nesting inside it
        self._in_string = False
        self.complete = False

    def take(self) -> str:
        """The text produced since the last call."""
        out = "".join(self._out)
        self._out.clear()
        return out

    def closing(self) -> str:
        """What closes the text produced so far into valid JSON (for a call cut short)."""
        tail = '"' if self._in_string else ""
        return tail + "".join("}" if c.kind == "{" else "]" for c in reversed(self._stack))

    def _value_start(self) -> str:
        """The separator to write before a value starting now (keys set it in objects)."""
        if self._stack and self._stack[-1].kind == "[":
            ctx = self._stack[-1]
            sep = ", " if ctx.count else ""
            ctx.count += 1
            return sep
        pending, self._pending = self._pending, ""
        return pending

    def _skipping(self, opens: int = 0, closes: int = 0, scalar: bool = False) -> bool:
        if self._skip < 0:
            return False
        self._skip += opens - closes
        if self._skip == 0 and (closes or scalar):
            self._skip = -1
        return True

    def begin(self, kind: str) -> None:
        if self._skipping(opens=1):
            return
        self._out.append(self._value_start() + kind)
        self._stack.append(_Ctx(kind))

    def end(self, kind: str) -> None:
        if self._skipping(closes=1):
            return
        self._stack.pop()
        self._out.append("}" if kind == "{" else "]")
        if not self._stack:
            self.complete = True

    def key(self, key: str) -> None:
        if self._skip >= 0:
            return
        ctx = self._stack[-1]
        if key in ctx.keys:
            self._skip = 0
            return
        ctx.keys.add(key)
        self._pending = (", " if ctx.count else "") + json.dumps(key, ensure_ascii=False) + ": "
        if _LONE_SURROGATE.search(self._pending):
            self._pending = _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", self._pending)
        ctx.count += 1

    def string_start(self) -> None:
        if self._skip >= 0:
            return
        self._out.append(self._value_start() + '"')
        self._in_string = True

    def string_chunk(self, text: str) -> None:
        if self._skip >= 0 or not text:
            return
        self._out.append(escape_fragment(text))

    def string_end(self, value: str) -> None:
        if self._skipping(scalar=True):
            return
        self._out.append('"')
        self._in_string = False

    def scalar(self, text: str, value: Any) -> None:
        if self._skipping(scalar=True):
            return
        self._out.append(self._value_start() + text)
