"""`@function` programs: run one with arguments, or many with `run_batch` and a progress bar."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from tqdm.auto import tqdm

from radixserve.lang.backends import Backend
from radixserve.lang.interpreter import ProgramState

_default_backend: Backend | None = None


def set_default_backend(backend: Backend | None) -> None:
    global _default_backend
    _default_backend = backend


def _resolve(backend: Backend | None) -> Backend:
    chosen = backend if backend is not None else _default_backend
    if chosen is None:
        raise ValueError("no backend: pass backend=RuntimeEndpoint(url) or EngineBackend(engine), "
                         "or call set_default_backend(...) first")
    return chosen


class Program:
    """A function `f(s, **kwargs)` that adds expressions to the state `s`."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.name: str = getattr(fn, "__name__", "program")
        self.__doc__ = fn.__doc__

    def run(self, *args: Any, backend: Backend | None = None, **kwargs: Any) -> ProgramState:
        """Run the program to its end; its variables (and its forks') are readable afterwards.
        An error of any expression is raised here."""
        state = ProgramState(_resolve(backend))
        try:
            state.ret_value = self.fn(state, *args, **kwargs)
        finally:
            state.close()
        return state

    def run_batch(self, batch_kwargs: list[dict[str, Any]], *, backend: Backend | None = None,
                  num_threads: int | None = None, progress_bar: bool = True) -> list[ProgramState]:
        """Run the program once per kwargs dict, at most `num_threads` at a time (default: 2 x CPUs,
        at least 4, at most 64); results in input order."""
        chosen = _resolve(backend)
        workers = num_threads or min(64, max(4, 2 * (os.cpu_count() or 1)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="radixserve-lang-batch") as pool:
            futures = [pool.submit(self.run, backend=chosen, **kw) for kw in batch_kwargs]
            with tqdm(total=len(futures), desc=self.name, unit="run", disable=not progress_bar) as bar:
                for _ in as_completed(futures):
                    bar.update(1)
            return [f.result() for f in futures]


def function(fn: Callable[..., Any]) -> Program:
    """Decorator: `@function def qa(s, question): s += user(question); s += assistant(gen("answer"))`."""
    return Program(fn)
