"""The expressions a program adds to its state: text, chat roles, `gen` and `select`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ROLES = ("system", "user", "assistant")
SelectMethod = Literal["sum", "normalized"]


@dataclass(frozen=True)
class Gen:
    """Generate text into the variable `name` (the model continues the state's text)."""

    name: str
    max_tokens: int = 128
    stop: str | list[str] | None = None
    temperature: float | None = None  # None: the server's default (the model's own, see docs/server.md)
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    ignore_eos: bool | None = None
    regex: str | None = None  # constrained decoding (docs/structured-output.md)
    json_schema: str | dict[str, Any] | None = None

    def sampling_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"max_new_tokens": self.max_tokens}
        for key in ("stop", "temperature", "top_p", "top_k", "seed", "ignore_eos", "regex", "json_schema"):
            value = getattr(self, key)
            if value is not None:
                params[key] = value
        return params


@dataclass(frozen=True)
class Select:
    """Pick one of `choices` into the variable `name` by the log-probability the model gives each
    continuation of the state's text: the sum over the choice's tokens, or their mean
    (`method="normalized"`)."""

    name: str
    choices: tuple[str, ...]
    method: SelectMethod = "sum"


@dataclass(frozen=True)
class Role:
    """A chat message: its contents (text, gen, select) become the message's content."""

    role: str
    contents: tuple[Expr, ...] = field(default_factory=tuple)


Expr = str | Gen | Select | Role


def gen(name: str, max_tokens: int = 128, stop: str | list[str] | None = None, *, temperature: float | None = None,
        top_p: float | None = None, top_k: int | None = None, seed: int | None = None,
        ignore_eos: bool | None = None, regex: str | None = None,
        json_schema: str | dict[str, Any] | None = None) -> Gen:
    return Gen(name, max_tokens, stop, temperature, top_p, top_k, seed, ignore_eos, regex, json_schema)


def select(name: str, choices: list[str] | tuple[str, ...], method: SelectMethod = "sum") -> Select:
    if not choices:
        raise ValueError("select() needs at least one choice")
    if method not in ("sum", "normalized"):
        raise ValueError(f"select(method=...) must be 'sum' or 'normalized', got {method!r}")
    return Select(name, tuple(choices), method)


def system(*contents: Expr) -> Role:
    return Role("system", contents)


def user(*contents: Expr) -> Role:
    return Role("user", contents)


def assistant(*contents: Expr) -> Role:
    return Role("assistant", contents)
