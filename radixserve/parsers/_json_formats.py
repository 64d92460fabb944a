"""The tool-call formats whose calls are JSON: hermes/qwen, llama3 and mistral.

A call is a JSON object `{"name": "f", "arguments": {...}}` ("parameters" is taken for "arguments",
other keys are ignored, and no arguments at all means `{}` — except for llama3, whose calls are bare
JSON and must have them), or, in mistral's newer `f[ARGS]{...}` form, the arguments object alone.
It is read with the incremental scanner of `_json_stream`: once its name is known and its arguments
object has begun, the call is *committed* — its name goes out and the arguments follow as they are
read, re-serialized (`json.dumps(args, ensure_ascii=False)`). Until then the text is held; if it
turns out not to be a call (not JSON, no name, a name that is not a non-empty string, arguments that
are not an object) it is released as content, marker included.

Committing is only done with all the text received so far read. Fed the whole output at once (as
`parse` is), a call whose JSON breaks is therefore content. Fed in fragments, a call can be
committed and break afterwards (`{"name": "f", "arguments": {"a": 1, oops`): the streamer cannot
take back what it sent, so it closes the arguments it sent into valid JSON and the rest becomes
content. Output cut off inside a committed call (max_tokens) is closed the same way.
"""

from __future__ import annotations

import re
from typing import Any

from radixserve.parsers._json_stream import ArgsSerializer, JsonScanner
from radixserve.parsers._types import StreamerBase, ToolCallParser
from radixserve.utils.detokenize import held_stop_prefix as held_prefix

_WS = " \t\r\n"
ARGS_KEYS = ("arguments", "parameters")


class _NotACall(Exception):
    pass


class _CallReader:
    """The events of one call object; `name` given means the object is the arguments alone."""

    def __init__(self, name: str | None = None) -> None:
        self.args_only = name is not None
        self.name = name
        self.scanner = JsonScanner(self)
        self.args = ArgsSerializer()
        self.args_state = 0  # 0: not seen, 1: being read, 2: read
        self._routing = False
        self._top_key: str | None = None

    def begin(self, kind: str) -> None:
        if self._routing:
            self.args.begin(kind)
            return
        depth = self.scanner.depth
        if depth == 1:
            if kind != "{":
                raise _NotACall
            if self.args_only:
                self._route(kind)
            return
        if depth == 2 and self._top_key is not None:
            key, self._top_key = self._top_key, None
            if key == "name" or kind != "{":
                raise _NotACall
            self._route(kind)

    def _route(self, kind: str) -> None:
        self._routing = True
        self.args_state = 1
        self.args.begin(kind)

    def end(self, kind: str) -> None:
        if self._routing:
            self.args.end(kind)
            if self.args.complete:
                self._routing = False
                self.args_state = 2

    def key(self, key: str) -> None:
        if self._routing:
            self.args.key(key)
        elif self.scanner.depth == 1:
            taken = (key == "name" and self.name is not None) or (key in ARGS_KEYS and self.args_state)
            self._top_key = None if taken or key not in ("name", *ARGS_KEYS) else key

    def string_start(self) -> None:
        if self._routing:
            self.args.string_start()

    def string_chunk(self, text: str) -> None:
        if self._routing:
            self.args.string_chunk(text)

    def string_end(self, value: str) -> None:
        if self._routing:
            self.args.string_end(value)
        elif self.scanner.depth == 1 and self._top_key is not None:
            key, self._top_key = self._top_key, None
            if key != "name" or not value:
                raise _NotACall
            self.name = value

    def scalar(self, text: str, value: Any) -> None:
        if self._routing:
            self.args.scalar(text, value)
        elif self.scanner.depth == 1 and self._top_key is not None:
            raise _NotACall


class _JsonToolStreamer(StreamerBase):
    """Content, markers, and the reading of calls; the formats add their own modes around them.

    `_mode` names the method that handles the start of `_buf`; it returns True when it made
    progress (call it again), False when it needs more text. `_marker` and `_raw` are what goes back
    to content if the region being read turns out not to be a call: the marker that opened it and
    the text read since (both reset when a call is committed, so only text after the last committed
    call can go back)."""

    MARKERS: tuple[str, ...] = ()
    REQUIRE_ARGS = False  # a call object without "arguments"/"parameters" is not a call

    def __init__(self) -> None:
        super().__init__()
        self._mode = "_m_start"
        self._marker = ""
        self._raw = ""
        self._reader: _CallReader | None = None
        self._index = -1  # the committed call being read, or -1
        self._after = "_m_content"  # the mode after the call being read

    def _step(self, final: bool) -> None:
        while getattr(self, self._mode)(final):
            pass

    # -- helpers for the modes -------------------------------------------------------------------

    def _take(self, n: int) -> str:
        """Consume n characters of the region being read."""
        piece, self._buf = self._buf[:n], self._buf[n:]
        self._raw += piece
        return piece

    def _skip_ws(self) -> bool:
        """Consume leading whitespace; False when nothing else is in the buffer."""
        n = len(self._buf) - len(self._buf.lstrip(_WS))
        if n:
            self._take(n)
        return bool(self._buf)

    def _open_region(self, marker: str, mode: str) -> bool:
        self._marker, self._raw = marker, ""
        self._mode = mode
        return True

    def _revert(self) -> bool:
        """What was read since the marker (or the last committed call) is content after all."""
        self._content_out(self._marker)
        self._buf = self._raw + self._buf
        self._marker, self._raw = "", ""
        self._reader, self._index = None, -1
        self._mode = "_m_content"
        return True

    def _wait_or_revert(self, final: bool) -> bool:
        return self._revert() if final else False

    def _begin_call(self, after: str, name: str | None = None) -> bool:
        self._reader = _CallReader(name)
        self._index = -1
        self._after = after
        self._mode = "_m_call"
        return True

    # -- modes -----------------------------------------------------------------------------------

    def _m_start(self, final: bool) -> bool:
        self._mode = "_m_content"
        return True

    def _m_content(self, final: bool) -> bool:
        buf = self._buf
        hits = [(i, m) for m in self.MARKERS if (i := buf.find(m)) >= 0]
        if hits:
            i, marker = min(hits)
            self._content_out(buf[:i])
            self._buf = buf[i + len(marker) :]
            return self._on_marker(marker)
        keep = 0 if final else held_prefix(buf, self.MARKERS)
        self._content_out(buf[: len(buf) - keep])
        self._buf = buf[len(buf) - keep :]
        return False

    AFTER_CALL = "_m_content"  # the mode once a call's JSON is read

    def _on_marker(self, marker: str) -> bool:
        return self._open_region(marker, "_m_open")

    def _m_open(self, final: bool) -> bool:
        """After a marker: the call's JSON object, or (anything else) the marker was content."""
        if not self._skip_ws():
            return self._wait_or_revert(final)
        return self._begin_call(self.AFTER_CALL) if self._buf[0] == "{" else self._revert()

    def _m_call(self, final: bool) -> bool:
        r = self._reader
        assert r is not None
        if self._buf:
            try:
                stop = r.scanner.feed(self._buf)
            except _NotACall:
                return self._cut(r) if self._index >= 0 else self._revert()
            self._take(stop)
            if self._index >= 0:
                self._raw = ""
            if r.scanner.failed:
                return self._cut(r) if self._index >= 0 else self._revert()
            if r.scanner.done:
                if r.name is None or (self.REQUIRE_ARGS and not r.args_state):
                    return self._revert()
                if self._index < 0:
                    self._commit(r)
                self._args_out(self._index, r.args.take() if r.args_state else "{}")
                return self._call_done()
        if self._index < 0 and r.name is not None and r.args_state:
            self._commit(r)
        elif self._index >= 0:
            self._args_out(self._index, r.args.take())
        if final:
            return self._cut(r) if self._index >= 0 else self._revert()
        return False

    def _commit(self, r: _CallReader) -> None:
        assert r.name is not None
        self._index = self._new_call(r.name, r.args.take())
        self._marker, self._raw = "", ""

    def _cut(self, r: _CallReader) -> bool:
        """A committed call that broke or was cut off: close what was sent of its arguments."""
        self._args_out(self._index, r.args.take() + (r.args.closing() if r.args_state else "{}"))
        self._reader, self._index = None, -1
        self._mode = "_m_content"
        return True

    def _call_done(self) -> bool:
        self._reader, self._index = None, -1
        self._mode = self._after
        return True


class HermesStreamer(_JsonToolStreamer):
    """`<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>`, any number, content around them."""

    OPEN, CLOSE = "<tool_call>", "</tool_call>"
    MARKERS = (OPEN,)
    AFTER_CALL = "_m_close"

    def _m_close(self, final: bool) -> bool:
        """After a call: its closing tag (whitespace before it is dropped)."""
        rest = self._buf.lstrip(_WS)
        self._buf = rest
        if rest.startswith(self.CLOSE):
            self._buf = rest[len(self.CLOSE) :]
        elif (not rest or self.CLOSE.startswith(rest)) and not final:
            return False
        self._mode = "_m_content"
        return True


class Llama3Streamer(_JsonToolStreamer):
    """Llama 3.1/3.2/3.3 JSON calls: `{"name": "f", "parameters": {...}}`, at the very start of the
    output or after `<|python_tag|>` (Llama 4's `<|python_start|>` too), several separated by `;`
    or newlines. A `{` anywhere else is content."""

    TAGS = ("<|python_tag|>", "<|python_start|>")
    REQUIRE_ARGS = True  # `{"name": "Bob", "age": 3}` is an answer, not a call
    END_TAGS = ("<|python_end|>",)
    MARKERS = TAGS
    AFTER_CALL = "_m_between"

    def _m_start(self, final: bool) -> bool:
        rest = self._buf.lstrip(_WS)
        if not rest and not final:
            return False
        if rest.startswith("{"):
            self._content_out(self._buf[: len(self._buf) - len(rest)])
            self._buf = rest
            self._marker, self._raw = "", ""
            return self._begin_call("_m_between")
        self._mode = "_m_content"
        return True


    def _m_between(self, final: bool) -> bool:
        """After a call: separators are dropped; another call, a tag, or content follows."""
        rest, before = self._buf, ""
        while rest != before:
            before, rest = rest, rest.lstrip(_WS + ";")
            for tag in self.END_TAGS:
                rest = rest.removeprefix(tag)
        self._buf = rest
        if not rest:
            return False
        if rest[0] == "{":
            self._marker, self._raw = "", ""
            return self._begin_call("_m_between")
        for tag in self.TAGS:
            if rest.startswith(tag):
                self._buf = rest[len(tag) :]
                return self._open_region(tag, "_m_open")
        if not final and any(t.startswith(rest) for t in self.TAGS + self.END_TAGS):
            return False
        self._mode = "_m_content"
        return True


_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_CALL_ID = re.compile(r"[A-Za-z0-9_\-]*")


class MistralStreamer(_JsonToolStreamer):
    """`[TOOL_CALLS] [{"name": "f", "arguments": {...}}, ...]` (v0.3 tokenizers) and
    `[TOOL_CALLS]f[ARGS]{...}` (newer ones; `f[CALL_ID]id[ARGS]{...}` too), content before them.
    Output that starts with `[{` is read as calls even without the marker."""

    MARKER, ARGS, CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"
    MARKERS = (MARKER,)

    def _m_start(self, final: bool) -> bool:
        """`[{"name": ...` at the very start is taken as calls too: what v0.3 output looks like when
        `[TOOL_CALLS]` was detokenized as a special token and left out."""
        rest = self._buf.lstrip(_WS)
        if rest.startswith("["):
            after = rest[1:].lstrip(_WS)
            if not after and not final:
                return False
            if after.startswith("{"):
                self._content_out(self._buf[: len(self._buf) - len(rest)])
                self._buf = rest
                self._marker, self._raw = "", ""
                self._take(1)
                self._mode = "_m_element"
                return True
        elif not rest and not final:
            return False
        self._mode = "_m_content"
        return True

    def _m_open(self, final: bool) -> bool:
        if not self._skip_ws():
            return self._wait_or_revert(final)
        c = self._buf[0]
        if c == "[":
            self._take(1)
            self._mode = "_m_element"
            return True
        if c == "{":
            return self._begin_call("_m_content")
        if _NAME.match(c):
            self._mode = "_m_header"
            return True
        return self._revert()

    def _m_element(self, final: bool) -> bool:
        if not self._skip_ws():
            return self._wait_or_revert(final)
        if self._buf[0] == "{":
            return self._begin_call("_m_separator")
        if self._buf[0] == "]" and self._marker == "":  # `[{...}, ]`: a trailing comma
            self._buf = self._buf[1:]
            self._raw = ""
            self._mode = "_m_content"
            return True
        return self._revert()

    def _m_separator(self, final: bool) -> bool:
        if not self._skip_ws():
            return self._wait_or_revert(final)
        if self._buf[0] == ",":
            self._take(1)
            self._mode = "_m_element"
            return True
        if self._buf[0] == "]":
            self._buf = self._buf[1:]
        self._mode = "_m_content"
        return True

    def _m_header(self, final: bool) -> bool:
        """`name[ARGS]` or `name[CALL_ID]id[ARGS]`, then the arguments object."""
        buf = self._buf
        m = _NAME.match(buf)
        assert m is not None
        name, rest = m.group(), buf[m.end() :]
        if rest.startswith(self.CALL_ID):
            rest = rest[len(self.CALL_ID) :]
            call_id = _CALL_ID.match(rest)
            assert call_id is not None  # the pattern matches the empty string
            rest = rest[call_id.end() :]
        elif self.CALL_ID.startswith(rest) and not rest.startswith(self.ARGS):
            return self._wait_or_revert(final)
        if rest.startswith(self.ARGS):
            self._take(len(buf) - len(rest) + len(self.ARGS))
            return self._begin_call("_m_content", name=name)
        if self.ARGS.startswith(rest):
            return self._wait_or_revert(final)
        return self._revert()


class HermesToolCallParser(ToolCallParser):
    name = "hermes"

    def streamer(self) -> HermesStreamer:
        return HermesStreamer()


class Llama3ToolCallParser(ToolCallParser):
    name = "llama3"
    needs_special_tokens = True

    def streamer(self) -> Llama3Streamer:
        return Llama3Streamer()


class MistralToolCallParser(ToolCallParser):
    name = "mistral"
    needs_special_tokens = True

    def streamer(self) -> MistralStreamer:
        return MistralStreamer()
