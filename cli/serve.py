"""`emafusion serve`: the router as an OpenAI-compatible HTTP server."""

from __future__ import annotations

import argparse
from pathlib import Path

from emafusion.cli.sources import add_store_url_arg, deployment_from_args
from emafusion.serve.settings import ServeSettings, check_bind, load_api_keys
from emafusion.stores.recordings import DATASETS


def cmd_serve(args: argparse.Namespace) -> int:
    keys = load_api_keys(args.api_keys_file, args.api_keys_env)
    check_bind(args.host, keys)  # before loading anything: a refused start is instant
    settings = ServeSettings(
        api_keys=keys,
        max_body_bytes=args.max_body_bytes,
        max_messages=args.max_messages,
        max_concurrency=args.max_concurrency,
        record_outcomes=True if args.record_outcomes else None,
    )
    # What serving needs (the graph, FastAPI, uvicorn) is imported when it runs.
    from emafusion.nodes.resources import RouterDirectory
    from emafusion.serve.server import run_server

    source = RouterDirectory(deployment_from_args(args, persist_outcomes=args.persist_outcomes))
    run_server(source, settings, args.host, args.port, args.log_level)
    return 0


def add_serve_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="serve the router as an OpenAI-compatible API")
    serve.add_argument("--router-dir", type=Path, required=True, metavar="DIR")
    source = serve.add_mutually_exclusive_group()
    source.add_argument("--dataset", choices=DATASETS, help="published recordings to replay")
    source.add_argument("--recordings", type=Path, metavar="FILE.jsonl")
    serve.add_argument("--pool", type=Path, metavar="FILE", help="default: the dataset's")
    serve.add_argument("--data-dir", type=Path, help="recordings directory")
    serve.add_argument("--host", default="127.0.0.1", help="beyond loopback needs API keys")
    serve.add_argument("--port", type=int, default=8000)
    keys = serve.add_mutually_exclusive_group()
    keys.add_argument("--api-keys-file", type=Path, metavar="FILE", help="one key a line")
    keys.add_argument("--api-keys-env", metavar="VAR", help="variable holding the key(s)")
    defaults = ServeSettings()
    serve.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes)
    serve.add_argument("--max-messages", type=int, default=defaults.max_messages)
    serve.add_argument(
        "--max-concurrency",
        type=int,
        default=defaults.max_concurrency,
        help="requests routed at once; past it: 429",
    )
    serve.add_argument(
        "--record-outcomes", action="store_true", help="learn from judged live answers"
    )
    serve.add_argument(
        "--persist-outcomes",
        action="store_true",
        help="write what is learned (and the run ledger, for feedback) to the router dir",
    )
    add_store_url_arg(serve)
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))
    serve.set_defaults(handler=cmd_serve)
