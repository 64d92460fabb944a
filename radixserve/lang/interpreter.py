"""ProgramState: a program's text so far, its chat messages and its variables.

`s += expr` queues the expression on the state's own worker thread and returns at once (as in
SGLang), so the branches of `s.fork(n)` run concurrently and their requests meet in the
server's batches; reading a variable, the text or the messages waits for what is queued.

Text is rendered with the model's chat template: the closed messages, then the open role's
prefix (what the template puts before a message's content) and what that role holds so far.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from radixserve.lang.backends import Backend, GenerateCall, GenerateResult
from radixserve.lang.ir import ROLES, Expr, Gen, Role, Select

# Stands in for a message's content while the template renders it: its index is where the
# role's prefix ends. A private-use character no tokenizer or template produces on its own.
_CONTENT_MARK = "\ue000"
# select: how many tokens before the prefix's end are scored, to see where the choice's own
# tokens start when the prefix's last tokens merge with the choice's first characters.
BOUNDARY_WINDOW = 2


@dataclass
class ChoiceScores:
    """What select() saw: per choice, its tokens' logprobs, their sum and mean."""

    choices: tuple[str, ...]
    token_logprobs: list[list[float]]
    sums: list[float]
    means: list[float]


class ProgramState:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.variables: dict[str, Any] = {}
        self.meta_info: dict[str, dict[str, Any]] = {}
        self.ret_value: Any = None  # what the program function returned (its forks, say)
        self._head = ""  # text before any chat message
        self._messages: list[dict[str, str]] = []
        self._open_role: str | None = None
        self._open_text = ""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="radixserve-lang")
        self._tail: Future[None] | None = None
        self._error: BaseException | None = None
        self._children: list[ProgramState] = []

    # ---- the program's side ------------------------------------------------------------------
    def __iadd__(self, expr: Expr) -> ProgramState:
        self._tail = self._executor.submit(self._run_guarded, expr)
        return self

    def __getitem__(self, name: str) -> Any:
        self.sync()
        return self.variables[name]

    def get_meta_info(self, name: str) -> dict[str, Any]:
        """The request behind variable `name`: prompt_tokens, cached_tokens, completion_tokens, ..."""
        self.sync()
        return self.meta_info[name]

    def text(self) -> str:
        self.sync()
        return self._render()

    def messages(self) -> list[dict[str, str]]:
        self.sync()
        return copy.deepcopy(self._messages)

    def sync(self) -> None:
        """Wait for every queued expression; re-raise the first error one of them hit."""
        tail = self._tail
        if tail is not None:
            tail.result()
        if self._error is not None:
            raise self._error

    def fork(self, n: int) -> ForkGroup:
        """`n` copies of this state. With n > 1 the shared text is sent first (no output tokens),
        so every branch finds it in the server's RadixCache instead of prefilling it again."""
        if n < 1:
            raise ValueError(f"fork(n) needs n >= 1, got {n}")
        self.sync()
        if n > 1 and self._render():
            self.backend.generate([GenerateCall(self._render(), {"max_new_tokens": 0})])
        branches = []
        for _ in range(n):
            b = ProgramState(self.backend)
            b.variables = dict(self.variables)
            b.meta_info = dict(self.meta_info)
            b._head, b._messages = self._head, copy.deepcopy(self._messages)
            b._open_role, b._open_text = self._open_role, self._open_text
            branches.append(b)
        self._children.extend(branches)
        return ForkGroup(branches)

    def close(self) -> None:
        """Wait for this state and its forks, then stop their worker threads."""
        try:
            self.sync()
        finally:
            for child in self._children:
                child.close()
            self._executor.shutdown(wait=True)

    # ---- the worker's side -------------------------------------------------------------------
    def _run_guarded(self, expr: Expr) -> None:
        if self._error is not None:
            return  # an earlier expression failed: the rest of the program is skipped
        try:
            self._run(expr)
        except BaseException as e:
            self._error = e

    def _run(self, expr: Expr) -> None:
        if isinstance(expr, str):
            self._add_text(expr)
        elif isinstance(expr, Role):
            self._run_role(expr)
        elif isinstance(expr, Gen):
            self._run_gen(expr)
        elif isinstance(expr, Select):
            self._run_select(expr)
        else:
            raise TypeError(f"cannot add {type(expr).__name__} to a program state: use text, a role, gen or select")

    def _add_text(self, text: str) -> None:
        if self._open_role is not None:
            self._open_text += text
        elif self._messages:
            raise ValueError("text after a chat message must be inside a role: system(...), user(...) or "
                             "assistant(...)")
        else:
            self._head += text

    def _run_role(self, role: Role) -> None:
        if role.role not in ROLES:
            raise ValueError(f"unknown role {role.role!r}; roles: {', '.join(ROLES)}")
        if self._open_role is not None:
            raise ValueError(f"role {role.role!r} inside role {self._open_role!r}: roles do not nest")
        if self._head:
            raise ValueError("a program mixes plain text and chat roles: put the text inside a role")
        self._open_role, self._open_text = role.role, ""
        try:
            for expr in role.contents:
                self._run(expr)
            self._messages.append({"role": role.role, "content": self._open_text})
        finally:
            self._open_role, self._open_text = None, ""

    def _render(self) -> str:
        if not self._messages and self._open_role is None:
            return self._head
        tok = self.backend.chat_template()
        if self._open_role is None:
            text: str = tok.apply_chat_template(self._messages, tokenize=False, add_generation_prompt=False)
            return text
        opened = [*self._messages, {"role": self._open_role, "content": _CONTENT_MARK}]
        rendered: str = tok.apply_chat_template(opened, tokenize=False, add_generation_prompt=False)
        if _CONTENT_MARK not in rendered:
            raise ValueError(f"the chat template dropped the {self._open_role!r} message's content")
        return rendered[: rendered.index(_CONTENT_MARK)] + self._open_text

    def _run_gen(self, g: Gen) -> None:
        [out] = self.backend.generate([GenerateCall(self._render(), g.sampling_params())])
        self.variables[g.name] = out.text
        self.meta_info[g.name] = out.meta_info
        self._add_text(out.text)

    def _run_select(self, sel: Select) -> None:
        prefix = self._render()
        scores = score_choices(self.backend, prefix, sel.choices)
        ranking = scores.sums if sel.method == "sum" else scores.means
        best = max(range(len(sel.choices)), key=lambda i: ranking[i])  # ties: the first
        self.variables[sel.name] = sel.choices[best]
        self.meta_info[sel.name] = {"choices": list(sel.choices), "method": sel.method,
                                    "logprob_sums": scores.sums, "logprob_means": scores.means,
                                    "token_logprobs": scores.token_logprobs}
        self._add_text(sel.choices[best])


class ForkGroup:
    """The branches of one fork: `group += expr` adds to each (they run concurrently)."""

    def __init__(self, states: list[ProgramState]) -> None:
        self.states = states

    def __iter__(self) -> Iterator[ProgramState]:
        return iter(self.states)

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, i: int) -> ProgramState:
        return self.states[i]

    def __iadd__(self, expr: Expr) -> ForkGroup:
        for s in self.states:
            s += expr
        return self

    def join(self) -> list[ProgramState]:
        """Wait for every branch; their variables stay readable."""
        for s in self.states:
            s.sync()
        return self.states


def score_choices(backend: Backend, prefix: str, choices: tuple[str, ...]) -> ChoiceScores:
    """Each choice's log-probability as a continuation of `prefix`.

    One prefill of the prefix (cached, no output tokens), then one request per choice with the
    text prefix + choice and max_new_tokens 0, scoring the prompt from a little before the
    prefix's end. prefix + choice is tokenized as one text: where its tokens first differ from
    the prefix's own tokens is where the choice's tokens start (the prefix's last token may
    merge with the choice's first characters), and the choice's score sums those tokens' logprobs.
    """
    [warm] = backend.generate([GenerateCall(prefix, {"max_new_tokens": 0})])
    prefix_len = int(warm.meta_info["prompt_tokens"])
    start = max(prefix_len - BOUNDARY_WINDOW, 0)
    token_lps = _score_from(backend, prefix, choices, start)
    if token_lps is None and start > 0:
        token_lps = _score_from(backend, prefix, choices, 0)  # the tokenizations differ further back
    assert token_lps is not None
    sums = [sum(lps) for lps in token_lps]
    means = [s / len(lps) if lps else 0.0 for s, lps in zip(sums, token_lps, strict=True)]
    return ChoiceScores(choices, token_lps, sums, means)


def _score_from(backend: Backend, prefix: str, choices: tuple[str, ...], start: int) -> list[list[float]] | None:
    """The logprobs of each choice's own tokens, scoring from prompt position `start`; None when
    some choice's tokens already differ from the prefix's at `start`."""
    calls = [GenerateCall(text, {"max_new_tokens": 0, "temperature": 0.0}, logprob_start_len=start)
             for text in (prefix, *(prefix + c for c in choices))]
    results: list[GenerateResult] = backend.generate(calls)
    base = [t for _, t in results[0].input_token_logprobs]
    out = []
    for res in results[1:]:
        scored = res.input_token_logprobs
        common = 0
        while common < min(len(base), len(scored)) and base[common] == scored[common][1]:
            common += 1
        if common == 0 and start > 0:
            return None
        out.append([lp for lp, _ in scored[common:] if lp is not None])
    return out
