"""Splitting a reasoning model's output into its reasoning and its answer.

- `deepseek-r1`: the chat template opens `<think>`, so the output starts inside the think block:
  everything up to `</think>` is reasoning, and without `</think>` all of it is. A `<think>` the
  model writes itself at the start is dropped. (Also right for other templates that open the block,
  e.g. Qwen3 "Thinking-2507" models.)
- `qwen3`: a `<think>...</think>` block at the start is reasoning; without `<think>` at the start
  there is no reasoning and all is content. `enable_thinking=False` makes the template put an empty
  block in front of the answer, which gives no reasoning.

Whitespace around the tags is dropped: at the start of the reasoning, just before `</think>`, and
at the start of the content after it. `reasoning` is None when there is none (no block, or an empty
one). The streamer holds back only what could be the start of a tag (or trailing whitespace), and
`split` is the streamer fed the whole text, so both always agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from radixserve.utils.detokenize import held_stop_prefix as held_prefix

_WS = " \t\r\n"


@dataclass
class ReasoningSplit:
    reasoning: str | None  # None when the output had no reasoning part
    content: str


class ReasoningStreamer:
    def __init__(self, starts_inside: bool, start_tag: str = "<think>", end_tag: str = "</think>") -> None:
        self._starts_inside = starts_inside
        self._start_tag, self._end_tag = start_tag, end_tag
        self._buf = ""
        self._mode = "start"  # start -> think -> after -> content
        self._ws = ""  # trailing whitespace of the reasoning, held
        self._any = False  # some reasoning went out
        self._reasoning: list[str] = []
        self._content: list[str] = []
        self._finished = False

    def feed(self, delta_text: str) -> tuple[str, str]:
        """The next fragment of output: (reasoning fragment, content fragment)."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        self._buf += delta_text
        self._step(final=False)
        return self._drain()

    def finish(self) -> tuple[str, str]:
        if not self._finished:
            self._finished = True
            self._step(final=True)
            if self._mode == "think":
                self._reasoning.append(self._ws)
                self._ws = ""
        return self._drain()

    def _drain(self) -> tuple[str, str]:
        out = "".join(self._reasoning), "".join(self._content)
        self._reasoning, self._content = [], []
        return out

    def _reasoning_out(self, text: str) -> None:
        if not self._any:
            text = text.lstrip(_WS)
        body = text.rstrip(_WS)
        if body:
            self._any = True
            self._reasoning.append(self._ws + body)
            self._ws = text[len(body) :]
        else:
            self._ws += text

    def _step(self, final: bool) -> None:
        if self._mode == "start":
            rest = self._buf.lstrip(_WS)
            if rest.startswith(self._start_tag):
                self._buf, self._mode = rest[len(self._start_tag) :], "think"
            elif not final and self._start_tag.startswith(rest):
                return  # empty, or a start of the tag
            elif self._starts_inside:
                self._buf, self._mode = rest, "think"
            else:
                self._mode = "content"
        if self._mode == "think":
            i = self._buf.find(self._end_tag)
            if i < 0:
                keep = 0 if final else held_prefix(self._buf, (self._end_tag,))
                self._reasoning_out(self._buf[: len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep :]
                return
            self._reasoning_out(self._buf[:i])
            self._ws = ""
            self._buf, self._mode = self._buf[i + len(self._end_tag) :], "after"
        if self._mode == "after":
            self._buf = self._buf.lstrip(_WS)
            if not self._buf:
                return
            self._mode = "content"
        self._content.append(self._buf)
        self._buf = ""


class ReasoningParser:
    name = ""
    starts_inside = False

    def streamer(self) -> ReasoningStreamer:
        return ReasoningStreamer(self.starts_inside)

    def split(self, text: str) -> ReasoningSplit:
        s = self.streamer()
        r1, c1 = s.feed(text)
        r2, c2 = s.finish()
        return ReasoningSplit(reasoning=(r1 + r2) or None, content=c1 + c2)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class DeepSeekR1ReasoningParser(ReasoningParser):
    name = "deepseek-r1"
    starts_inside = True


class Qwen3ReasoningParser(ReasoningParser):
    name = "qwen3"
    starts_inside = False


REASONING_PARSERS: dict[str, type[ReasoningParser]] = {
    "deepseek-r1": DeepSeekR1ReasoningParser,
    "qwen3": Qwen3ReasoningParser,
}


def get_reasoning_parser(name: str) -> ReasoningParser:
    """The parser registered as `name` (case and `_`/`-` do not matter); ValueError names the known ones."""
    cls = REASONING_PARSERS.get(name.strip().lower().replace("_", "-"))
    if cls is None:
        raise ValueError(f"unknown reasoning parser {name!r}; known: {', '.join(sorted(REASONING_PARSERS))}")
    return cls()
