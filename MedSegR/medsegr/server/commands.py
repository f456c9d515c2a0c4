"""``medsegr serve``: run the engine server (FastAPI + uvicorn).

Imports nothing heavy at module level; the model and the web stack load only when
the command runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import stat
import sys
from pathlib import Path

from medsegr.errors import InputError
from medsegr.io.limits import add_limit_options
from medsegr.cli.model_options import add_model_options, chosen_checkpoint
from medsegr.option_types import device_name, positive_int, positive_number
from medsegr.server.settings import DEFAULT_PORT, MIB

log = logging.getLogger("medsegr.server")


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve", help="run the engine as an HTTP server for 3D Slicer and other clients",
        description="Serve one model on one device behind the versioned /v1 HTTP API. "
        "Listens on 127.0.0.1 by default; any other address needs a token.")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT,
                       help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one)")
    token = serve.add_mutually_exclusive_group()
    token.add_argument("--token", default=None,
                       help="bearer token clients must send (visible in the process list: "
                       "prefer --token-file or $MEDSEGR_TOKEN)")
    token.add_argument("--token-file", default=None, metavar="FILE",
                       help="file holding the bearer token (first line)")
    serve.add_argument("--device", type=device_name, default="auto",
                       help="auto, cpu, cuda or cuda:N")
    add_model_options(serve, "serve the untrained base parts (no fine-tuned checkpoint)")
    serve.add_argument("--max-queue", type=positive_int, default=16,
                       help="requests that may wait for the model; more get 503 (default 16)")
    serve.add_argument("--request-timeout", type=positive_number, default=600.0, metavar="S",
                       help="a request not finished this long after it was queued fails "
                       "with 504 (default 600)")
    serve.add_argument("--session-idle", type=positive_number, default=1800.0, metavar="S",
                       help="delete sessions unused for this long (default 1800)")
    serve.add_argument("--max-session-memory", type=positive_number, default=4096, metavar="MIB",
                       help="memory all sessions may hold together; least recently used "
                       "ones are evicted (default 4096 MiB)")
    serve.add_argument("--max-sessions", type=positive_int, default=64, help="most sessions at once")
    serve.add_argument("--max-upload", type=positive_number, default=1024, metavar="MIB",
                       help="largest uploaded image file (default 1024 MiB)")
    add_limit_options(serve, "an uploaded image")
    serve.add_argument("--log-level", default="info",
                       choices=["debug", "info", "warning", "error"],
                       help="server log level (question text is logged at debug only)")
    serve.add_argument("--export-openapi", default=None, metavar="FILE",
                       help="write the API's OpenAPI document to FILE and exit (no model)")
    serve.set_defaults(handler=cmd_serve)


def read_token(args: argparse.Namespace) -> str | None:
    """The token from --token, --token-file or $MEDSEGR_TOKEN (in that order), checked
    (:mod:`medsegr.cli.preflight`: a readable UTF-8 text file, a visible-ASCII token)."""
    from medsegr.cli.preflight import check_token_text, read_token_file

    if args.token is not None:
        token = args.token.strip()
        return check_token_text(token, "--token") if token else None
    if args.token_file is not None:
        path = Path(args.token_file)
        token = read_token_file(path)
        if os.name == "posix" and path.is_file() and \
                path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("the token file %s is readable by other users; chmod 600 it", path)
        return token
    token = os.environ.get("MEDSEGR_TOKEN", "").strip()
    return check_token_text(token, "$MEDSEGR_TOKEN") if token else None


def write_openapi(path: str | Path) -> Path:
    """Write the OpenAPI document (JSON, 2-space indent, trailing newline) atomically."""
    from medsegr.io.images import atomic_output
    from medsegr.server.app import openapi_document

    target = Path(path)
    with atomic_output(target) as tmp:
        tmp.write_text(json.dumps(openapi_document(), indent=2) + "\n", encoding="utf-8")
    return target


def cmd_serve(args: argparse.Namespace) -> int:
    if args.export_openapi:
        print(f"wrote {write_openapi(args.export_openapi)}")
        return 0
    from medsegr.server.security import check_bind_address
    from medsegr.server.settings import ServerSettings

    token = read_token(args)
    check_bind_address(args.host, token)
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be between 0 and 65535, got {args.port}")
    checkpoint = chosen_checkpoint(args)
    settings = ServerSettings(
        token=token, max_queue=args.max_queue, request_timeout_s=args.request_timeout,
        session_idle_s=args.session_idle, max_session_bytes=int(args.max_session_memory * MIB),
        max_sessions=args.max_sessions, max_upload_bytes=int(args.max_upload * MIB),
        max_voxels=args.max_voxels, max_bytes=args.max_bytes, max_side=args.max_side)
    sock = _bind(args.host, args.port)  # fail fast on a busy port, before loading the model
    print("medsegr serve: loading the model...", file=sys.stderr, flush=True)

    import uvicorn

    from medsegr.config import MedSegRConfig
    from medsegr.pipeline import MedSegRPipeline
    from medsegr.server.app import create_app

    level = getattr(logging, args.log_level.upper())
    logging.getLogger("medsegr").setLevel(level)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    config = MedSegRConfig.from_file(args.config) if args.config else None
    from medsegr.modeling.load_status import listening, print_to_stdout

    with listening(print_to_stdout):
        pipe = MedSegRPipeline.load(checkpoint, config=config, device=args.device)
    if not pipe.fine_tuned:
        log.warning("no fine-tuned MedSegR checkpoint is loaded: answers are not grounded in "
                    "the image and masks are not meaningful")
    app = create_app(pipe, settings)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"medsegr serve: listening on http://{shown}:{port} (API v1, device "
          f"{pipe.info()['device']}, {'token required' if token else 'no token'})", flush=True)
    from medsegr.server.protocol import uvicorn_config
    from medsegr.server.redaction import install_redaction

    config = uvicorn_config(app, settings, log_level=args.log_level, access_log=True)
    install_redaction(token)  # uvicorn's handlers exist now; the app adds it again at start
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    return 0


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (IPv4 or IPv6)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InputError(f"cannot resolve --host {host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    return sock
