"""`radixserve generate`: one offline generation (or chat turn) through the Engine."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from radixserve.server_args import ServerArgs
from radixserve.utils.log import configure_logging


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="radixserve generate",
        description="Generate text offline with the Engine (no HTTP server). "
                    "With no --model-path, uses the embedded SmolLM2-135M-Instruct.",
    )
    parser.add_argument("--prompt", default="What is the capital of France?", help="Prompt text.")
    parser.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True,
                        help="Wrap the prompt as a user message in the model's chat template.")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="Tokens to generate.")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 means greedy.")
    parser.add_argument("--json", action="store_true", help="Print the full result as JSON.")
    ServerArgs.add_cli_args(parser, offline=True)
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    from radixserve.entrypoints.engine import Engine
    from radixserve.model_store.base import SourceError
    from radixserve.model_store.local import ModelPathError, materialize_model_path

    engine_args = {k: v for k, v in vars(ServerArgs.from_cli_args(args)).items()}
    try:  # an hf:// or s3:// download that fails is a message, not a traceback
        engine_args["model_path"], name = materialize_model_path(engine_args["model_path"])
    except (ModelPathError, SourceError) as e:
        print(f"radixserve generate: error: {e}", file=sys.stderr)
        return 1
    engine_args["served_model_name"] = engine_args.get("served_model_name") or name
    with Engine(**engine_args) as engine:
        params = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
        if args.chat:
            out = engine.chat([{"role": "user", "content": args.prompt}], sampling_params=params)
        else:
            out = engine.generate(args.prompt, sampling_params=params)
    assert isinstance(out, dict)
    if args.json:
        json.dump(out, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    else:
        print(out["text"])
    return 0
