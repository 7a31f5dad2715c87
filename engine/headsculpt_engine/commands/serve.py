"""`headsculpt serve`: the engine's HTTP server for the Blender add-on (API v1, api-contract.md).

It binds to loopback unless told otherwise, writes `DATA/server.json` (the real port and the token
file) for the add-on to find it, and on SIGINT/SIGTERM lets the running job checkpoint; that job
resumes at the next start on the same data folder.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import socket
from pathlib import Path

from .. import API_VERSION, __version__
from ..config import PRESETS
from ..errors import InputError

HANDSHAKE_FILE = "server.json"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the HTTP engine server for the Blender add-on",
        description="Serve API v1 over HTTP. Jobs, priors, the token and server.json live in --data.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; another address needs --allow-remote)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    parser.add_argument("--data", type=Path, default=None,
                        help="data folder for jobs, priors, token and server.json "
                             "(default: <engine cache>/server)")
    parser.add_argument("--models", default=None,
                        help="'tiny' (random test models), 'default' (the papers' models from the local "
                             "cache) or a local folder / model id for the base model, for every job; when "
                             "not given, what each job's preset implies (tiny for tiny, else default)")
    parser.add_argument("--preset-limit", choices=PRESETS, default="paper",
                        help="the heaviest preset this server accepts (paper > standard > draft > tiny)")
    parser.add_argument("--back-view-token", default="", metavar="FILE",
                        help="learned <back-view> embedding (see `headsculpt learn-token`)")
    parser.add_argument("--cpu-offload", action="store_true",
                        help="offload model parts to the CPU between uses (less GPU memory, slower)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow binding an address other machines can reach (the token still applies)")
    parser.add_argument("--prior-cache-mb", type=int, default=2048,
                        help="disk space for uploaded priors in the data folder; the least recently used "
                             "go first beyond it (default 2048)")
    parser.add_argument("--upload-timeout", type=float, default=600.0, metavar="S",
                        help="seconds a prior upload may take to be checked and prepared (default 600)")
    parser.add_argument("--lora-max-mb", type=int, default=512,
                        help="the largest style LoRA file a client may upload (default 512; SD 1.5 LoRAs are "
                             "usually 10-150 MB)")
    parser.add_argument("--lora-cache-mb", type=int, default=4096,
                        help="disk space for uploaded style LoRAs in the data folder; the least recently used "
                             "go first beyond it, never one a queued or running job names (default 4096)")
    parser.add_argument("--ray", default="", metavar="ADDRESS",
                        help="run jobs on the Ray cluster at ADDRESS (HOST:PORT of its head node, or 'auto'), "
                             "one job per GPU; --data must be a folder every node sees at the same path "
                             "(needs the engine's ray extra; see docs/server.md)")
    parser.set_defaults(run=run)


def is_loopback(host: str) -> bool:
    """True when every address `host` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        raise InputError(f"Cannot resolve the host {host!r}; use an IP address such as 127.0.0.1.") from None
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def bind_socket(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise InputError(f"Cannot listen on {host}:{port} ({error.strerror}); choose another --port.") from None
    sock.listen(128)
    return sock


def write_handshake(data_dir: Path, host: str, port: int, token_file: Path) -> Path:
    shown_host = f"[{host}]" if ":" in host else host
    info = {"host": host, "port": port, "url": f"http://{shown_host}:{port}", "token_file": str(token_file),
            "pid": os.getpid(), "engine_version": __version__, "api_version": API_VERSION}
    path = data_dir / HANDSHAKE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, path)  # readers never see half a file
    return path


class _NoQueryStrings:
    """Logging filter for uvicorn's access log: the path without its query string, which may carry
    secrets (a token sent as `?token=`); uvicorn passes the path as the third argument."""

    def filter(self, record) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 3 and isinstance(record.args[2], str):
            record.args = (*record.args[:2], record.args[2].split("?", 1)[0], *record.args[3:])
        return True


def run(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from ..paths import cache_dir
    from ..server.app import create_app
    from ..server.auth import ensure_token, read_token
    from ..server.datalock import lock_data_folder
    from ..server.hosts import LOOPBACK_NAMES
    from ..server.runner import ServerOptions

    loopback = is_loopback(args.host)
    if not args.allow_remote and not loopback:
        raise InputError(f"{args.host} is reachable from other machines; pass --allow-remote to serve "
                         "there anyway (keep the token secret), or use 127.0.0.1.")
    if args.back_view_token and not Path(args.back_view_token).is_file():
        raise InputError(f"--back-view-token {args.back_view_token}: no such file.")
    if min(args.prior_cache_mb, args.lora_max_mb, args.lora_cache_mb) < 1 or args.upload_timeout <= 0:
        raise InputError("--prior-cache-mb, --upload-timeout, --lora-max-mb and --lora-cache-mb must be positive.")
    # Everything the server writes (jobs, priors, results, token, handshake) is its owner's alone.
    os.umask(0o077)
    data_dir = (args.data or cache_dir() / "server").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    # Before anything reads the job queue: a second server on this folder stops here.
    folder_lock = lock_data_folder(data_dir, HANDSHAKE_FILE)
    token_file = ensure_token(data_dir)
    options = ServerOptions(data_dir=data_dir, models=args.models, preset_limit=args.preset_limit,
                            back_view_token_file=args.back_view_token, cpu_offload=args.cpu_offload,
                            allowed_hosts=(*LOOPBACK_NAMES, args.host) if loopback else (),
                            prior_cache_bytes=args.prior_cache_mb * 1024 * 1024,
                            upload_timeout_s=args.upload_timeout, lora_max_bytes=args.lora_max_mb * 1024 * 1024,
                            lora_cache_bytes=args.lora_cache_mb * 1024 * 1024,
                            ray_address=args.ray)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(options, read_token(token_file))

    sock = bind_socket(args.host, args.port)
    port = sock.getsockname()[1]
    handshake = write_handshake(data_dir, args.host, port, token_file)
    print(f"headsculpt engine {__version__} (API v{API_VERSION}) serving at http://{args.host}:{port}", flush=True)
    print(f"token file: {token_file}", flush=True)
    print(f"handshake: {handshake}", flush=True)
    # uvicorn turns SIGINT/SIGTERM into a graceful shutdown (the app's lifespan end lets the running
    # job checkpoint), then raises the signal again under the handler it found. For SIGTERM that
    # handler is this no-op, so the shutdown ends here normally, with exit code 0; SIGINT still
    # ends as KeyboardInterrupt (exit code 130).
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        config = uvicorn.Config(app, log_level="info", lifespan="on")
        logging.getLogger("uvicorn.access").addFilter(_NoQueryStrings())  # after uvicorn's logging setup
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
        try:
            if json.loads(handshake.read_text()).get("pid") == os.getpid():
                handshake.unlink()
        except (OSError, ValueError):
            pass
        folder_lock.release()
    return 0
