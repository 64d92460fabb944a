"""Prompt (input) token logprobs: which rows of a prefill step score which prompt tokens, and the scoring.

The logits at prompt position q predict token q + 1, so scoring the prompt from position s
needs the forward to recompute from position s - 1 (the scheduler caps the cached prefix there).
Only the wanted rows go through the LM head and log-softmax, a bounded number at a time, so a
long prompt never materializes [prompt length, vocab] logits at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# Rows per LM-head call: at most ROWS_PER_CHUNK x vocab float32 logits live at once (~25 MB for a 49k vocab).
ROWS_PER_CHUNK = 128


@dataclass
class InputLogprobPlan:
    """What one prefill step scores: `rows` index the step's flattened tokens, `targets` are the
    prompt tokens those rows predict, and `counts[i]` of them belong to the step's request i."""

    rows: torch.Tensor  # [k] int64 on the model's device
    targets: torch.Tensor  # [k] int64
    counts: list[int]

    @classmethod
    def build(cls, spans: list[tuple[int, list[int]]], device: torch.device) -> InputLogprobPlan | None:
        """`spans[i]`: (the request's first scored row in the step, the tokens its rows predict)."""
        rows = [start + j for start, targets in spans for j in range(len(targets))]
        if not rows:
            return None
        targets = [t for _, ts in spans for t in ts]
        return cls(torch.tensor(rows, dtype=torch.int64, device=device),
                   torch.tensor(targets, dtype=torch.int64, device=device), [len(ts) for _, ts in spans])


def compute_input_logprobs(hidden: torch.Tensor, plan: InputLogprobPlan,
                           lm_head: Callable[[torch.Tensor], torch.Tensor]) -> list[float]:
    """log p(target | prefix) of each planned row, as float32 log-softmax over the full vocabulary
    (the same arithmetic as the output logprobs in sampler.sample)."""
    out: list[float] = []
    for lo in range(0, plan.rows.numel(), ROWS_PER_CHUNK):
        rows, targets = plan.rows[lo : lo + ROWS_PER_CHUNK], plan.targets[lo : lo + ROWS_PER_CHUNK]
        logits = lm_head(hidden[rows]).float()
        lp = torch.log_softmax(logits, dim=-1)
        out += lp.gather(1, targets[:, None]).squeeze(1).tolist()
    return out


def format_input_token_logprobs(input_ids: list[int], start: int,
                                logprobs: list[float]) -> list[tuple[float | None, int]]:
    """SGLang's `input_token_logprobs`: (logprob, token id) per prompt position from `start`; the
    first token has no logprob (nothing predicts it), so position 0 is (None, id)."""
    head: list[tuple[float | None, int]] = [(None, input_ids[0])] if start == 0 else []
    return head + list(zip(logprobs, input_ids[max(start, 1) :], strict=False))
