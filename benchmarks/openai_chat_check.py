"""Chat completions through the unmodified `openai` client against a running server, plain and streamed.

Issue 22 asks that `radixserve serve --tp 8` answer the openai client's chat requests, streaming and
not. This sends --requests distinct user messages, each once plain and once streamed (greedy,
`max_tokens`, `ignore_eos` through `extra_body` so that every answer has the same length whatever the
weights), and records for each: the text, the finish reason, the usage, the time to the first streamed
content, and whether the streamed text equals the plain one.

It is a check, not a benchmark: the exit status is 1 when a request fails or answers out of shape
(no choice, a finish reason other than "length", usage that does not add up or is missing from the
stream's last chunk, a stream whose first chunk does not carry the assistant role). With
--require-equal a streamed text that differs from its plain twin fails too. That holds for float32
weights; with random bf16 weights the streamed request reuses the plain one's cached prompt, and its
prefill over the cache may flip a near-tie, so the device scripts record equality without requiring it.

    python benchmarks/openai_chat_check.py --base-url http://127.0.0.1:30000 --output chat.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._common import command_line, machine_info, write_results  # noqa: E402

TOPICS = ("the tides", "a violin's strings", "bread rising", "a compass needle", "frost on glass",
          "a bicycle's gears", "a lighthouse", "honey bees", "a kettle's whistle", "autumn leaves")


def messages(i: int) -> list[dict[str, str]]:
    """The i-th request's conversation: distinct user messages (the system prompt is shared)."""
    return [{"role": "system", "content": "You answer in one short paragraph."},
            {"role": "user", "content": f"Question {i}: explain {TOPICS[i % len(TOPICS)]} to a child."}]


def _plain(client: Any, model: str, msgs: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    r = client.chat.completions.create(model=model, messages=msgs, max_tokens=max_tokens, temperature=0,
                                       extra_body={"ignore_eos": True})
    problems = []
    if len(r.choices) != 1:
        problems.append(f"{len(r.choices)} choices")
    choice = r.choices[0] if r.choices else None
    usage = r.usage
    if choice is not None and choice.finish_reason != "length":
        problems.append(f"finish_reason {choice.finish_reason!r}")
    if choice is not None and choice.message.role != "assistant":
        problems.append(f"role {choice.message.role!r}")
    if usage is None or usage.completion_tokens != max_tokens or \
            usage.total_tokens != usage.prompt_tokens + usage.completion_tokens:
        problems.append(f"usage {usage}")
    return {"text": choice.message.content if choice else None,
            "finish_reason": choice.finish_reason if choice else None,
            "usage": usage.model_dump() if usage else None, "problems": problems}


def _streamed(client: Any, model: str, msgs: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    started = time.perf_counter()
    first_content_s = None
    chunks = []
    for chunk in client.chat.completions.create(model=model, messages=msgs, max_tokens=max_tokens, temperature=0,
                                                stream=True, stream_options={"include_usage": True},
                                                extra_body={"ignore_eos": True}):
        if first_content_s is None and chunk.choices and chunk.choices[0].delta.content:
            first_content_s = time.perf_counter() - started
        chunks.append(chunk)
    problems = []
    with_choices = [c for c in chunks if c.choices]
    if not with_choices or with_choices[0].choices[0].delta.role != "assistant":
        problems.append("the first chunk does not carry the assistant role")
    finish = [c.choices[0].finish_reason for c in with_choices if c.choices[0].finish_reason]
    if finish != ["length"]:
        problems.append(f"finish reasons {finish}")
    usage = chunks[-1].usage if chunks else None
    if usage is None or usage.completion_tokens != max_tokens:
        problems.append(f"last chunk's usage {usage}")
    return {"text": "".join(c.choices[0].delta.content or "" for c in with_choices),
            "finish_reason": finish[-1] if finish else None, "usage": usage.model_dump() if usage else None,
            "chunks": len(chunks), "first_content_s": round(first_content_s, 4) if first_content_s else None,
            "seconds": round(time.perf_counter() - started, 4), "problems": problems}


def run_checks(base_url: str, requests: int, max_tokens: int, api_key: str = "none",
               timeout: float = 300.0) -> dict[str, Any]:
    """Send the requests one after another; a request that raises is recorded as a problem."""
    import openai

    client = openai.OpenAI(base_url=base_url.rstrip("/") + "/v1", api_key=api_key, max_retries=0, timeout=timeout)
    model = client.models.list().data[0].id
    rows = []
    for i in range(requests):
        row: dict[str, Any] = {"request": i}
        for name, call in (("plain", _plain), ("stream", _streamed)):
            try:
                row[name] = call(client, model, messages(i), max_tokens)
            except openai.OpenAIError as e:
                row[name] = {"text": None, "problems": [f"{type(e).__name__}: {e}"[:300]]}
        row["stream_equals_plain"] = row["plain"]["text"] is not None and row["plain"]["text"] == row["stream"]["text"]
        rows.append(row)
    return {"model": model, "max_tokens": max_tokens, "requests": rows,
            "problems": sum(len(r["plain"]["problems"]) + len(r["stream"]["problems"]) for r in rows),
            "stream_equals_plain": sum(r["stream_equals_plain"] for r in rows)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", required=True, help="the server, e.g. http://127.0.0.1:30000 (/v1 is added)")
    p.add_argument("--requests", type=int, default=4, help="distinct conversations, each sent plain and streamed")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per answer (ignore_eos: exactly these)")
    p.add_argument("--api-key", default="none")
    p.add_argument("--require-equal", action="store_true",
                   help="fail when a streamed answer differs from its plain twin (float32 weights)")
    p.add_argument("--output", default=None, help="JSON path (default benchmarks/results/openai_chat_<time>.json)")
    args = p.parse_args(argv)
    if args.requests < 1 or args.max_tokens < 1:
        p.error("--requests and --max-tokens must be at least 1")
    result = run_checks(args.base_url, args.requests, args.max_tokens, args.api_key)
    path = write_results("openai_chat", {"benchmark": "openai_chat_check", "command": command_line(),
                                          "machine": machine_info(("openai", "radixserve")), **result}, args.output)
    equal = result["stream_equals_plain"]
    print(f"{args.requests} conversations, plain and streamed: {result['problems']} problems, "
          f"{equal}/{args.requests} streamed texts equal to the plain ones -> {path}")
    for row in result["requests"]:
        for name in ("plain", "stream"):
            for problem in row[name]["problems"]:
                print(f"request {row['request']} ({name}): {problem}")
    failed = result["problems"] > 0 or (args.require_equal and equal != args.requests)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
