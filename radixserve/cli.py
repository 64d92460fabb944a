"""`radixserve` console script: one entry point, one subcommand per component.

Each subcommand lives in its own module and is imported only when chosen, so that
`radixserve router` does not pay for importing torch and `radixserve operator` does not
need the model code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module with `main(argv) -> int`, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("radixserve.server.launch", "Serve a model over an OpenAI-compatible HTTP API."),
    "generate": ("radixserve.entrypoints.generate_cli", "Run an offline generation with the Engine."),
    "router": ("radixserve.router.cli", "Run the cache-aware router in front of replicas."),
    "operator": ("radixserve.operator.cli", "Run the Kubernetes operator for InferenceServer resources."),
    "download": ("radixserve.model_store.download_cli", "Download a model (hf://, s3://) into a directory."),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radixserve",
        description="radixserve: LLM inference engine, server, router and Kubernetes operator.",
        epilog="Run `radixserve COMMAND --help` for the options of a command.",
    )
    parser.add_argument("command", choices=sorted(SUBCOMMANDS), help="; ".join(
        f"{name}: {text}" for name, (_, text) in sorted(SUBCOMMANDS.items())
    ))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        _top_parser().print_help()
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in SUBCOMMANDS:
        _top_parser().parse_args([command])  # exits with argparse's "invalid choice" message
        return 2
    module = importlib.import_module(SUBCOMMANDS[command][0])
    result: int = module.main(rest)
    return result


if __name__ == "__main__":
    sys.exit(main())
