"""The tool-call result types and the machinery every format's streamer shares.

Every parser is a streamer first: `parse(text)` is the streamer fed the whole text at once and then
finished. A streamer decides about a piece of text only when what follows can no longer change the
decision, so feeding the same text in any fragments gives the same result as one `parse` — the one
exception is a call whose JSON breaks after its name went out (see `_JsonToolStreamer`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object serialized as a string (OpenAI's format), e.g. '{"city": "Paris"}'


@dataclass
class ToolCallParse:
    content: str  # the text that is not part of any call (may be "")
    calls: list[ToolCall] = field(default_factory=list)


@dataclass
class ToolCallDelta:
    """One streaming event for one call."""

    index: int  # the call's index within the message (0, 1, ...)
    name: str | None = None  # set on the first delta of a call only
    arguments: str = ""  # the next fragment of the arguments JSON string


def collect(events: Iterable[tuple[str, list[ToolCallDelta]]]) -> ToolCallParse:
    """Join streamed (content, deltas) pairs into the message they make."""
    content: list[str] = []
    names: dict[int, str] = {}
    args: dict[int, list[str]] = {}
    for text, deltas in events:
        content.append(text)
        for d in deltas:
            if d.name is not None:
                names[d.index] = d.name
            args.setdefault(d.index, []).append(d.arguments)
    calls = [ToolCall(names[i], "".join(args[i])) for i in sorted(names)]
    return ToolCallParse("".join(content), calls)


class ToolCallStreamer(ABC):
    @abstractmethod
    def feed(self, delta_text: str) -> tuple[str, list[ToolCallDelta]]:
        """Read the next fragment of output: (plain content to emit now, call deltas)."""

    @abstractmethod
    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """The end of the output: flush what was held back."""


class ToolCallParser(ABC):
    name: str = ""
    # The format's markers are special tokens (llama3's <|python_tag|>, mistral's [TOOL_CALLS]): the
    # output should be detokenized with skip_special_tokens=False for them to reach the parser.
    needs_special_tokens: bool = False

    @abstractmethod
    def streamer(self) -> ToolCallStreamer: ...

    def parse(self, text: str) -> ToolCallParse:
        """The whole output at once; never raises on model output (what is not a call is content)."""
        s = self.streamer()
        return collect([s.feed(text), s.finish()])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class StreamerBase(ToolCallStreamer):
    """Output buffers and the whitespace rule shared by the formats.

    Content is written through `_content_out`, which holds back trailing whitespace: whitespace just
    before a call is dropped when the call is committed, and at the end of a message that had calls
    the trailing whitespace is dropped too. A message without calls comes back exactly as it was."""

    def __init__(self) -> None:
        self._buf = ""  # text received and not decided yet
        self._content: list[str] = []
        self._deltas: list[ToolCallDelta] = []
        self._ws = ""  # trailing whitespace of the content, held
        self._ncalls = 0
        self._finished = False

    def _content_out(self, text: str) -> None:
        if not text:
            return
        body = text.rstrip()
        if body:
            self._content.append(self._ws + body)
            self._ws = text[len(body) :]
        else:
            self._ws += text

    def _new_call(self, name: str, arguments: str) -> int:
        """Commit a call: its first delta; returns its index."""
        self._ws = ""
        index = self._ncalls
        self._ncalls += 1
        self._deltas.append(ToolCallDelta(index=index, name=name, arguments=arguments))
        return index

    def _args_out(self, index: int, fragment: str) -> None:
        if fragment:
            self._deltas.append(ToolCallDelta(index=index, arguments=fragment))

    def _drain(self) -> tuple[str, list[ToolCallDelta]]:
        content = "".join(self._content)
        deltas = self._deltas
        self._content, self._deltas = [], []
        return content, deltas

    @abstractmethod
    def _step(self, final: bool) -> None:
        """Decide as much of `self._buf` as can be decided (everything, when `final`)."""

    def feed(self, delta_text: str) -> tuple[str, list[ToolCallDelta]]:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        self._buf += delta_text
        self._step(final=False)
        return self._drain()

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        if not self._finished:
            self._finished = True
            self._step(final=True)
            if self._ncalls == 0:
                self._content.append(self._ws)
            self._ws = ""
        return self._drain()
