"""A local HTTP server that answers as the Hugging Face Hub does, for the routes huggingface_hub uses
to list and download files, so that downloads are tested without the internet.

Routes (as huggingface.co serves them; header names from huggingface_hub's constants.py and
file_download.py):
- GET  /api/models/{owner}/{name}/revision/{rev}   model info: id, sha, siblings (rfilename, size,
  blobId, and lfs {size, sha256, pointerSize} for large files); 404 RepoNotFound for unknown ids.
- HEAD|GET /{owner}/{name}/resolve/{rev}/{path}    small files: 200 with ETag (git blob sha1),
  X-Repo-Commit, Content-Length. Large ("LFS") files: 302 to a second server standing for the CDN,
  with X-Linked-Etag (sha256), X-Linked-Size, X-Repo-Commit and Location.
- HEAD|GET /blobs/{sha256} on the CDN server: the bytes, with Range support (206, Content-Range).

Faults for tests: `gated` repos answer 401 (X-Error-Code GatedRepo) on resolve without the right
bearer token; `drop_once` paths lose the connection halfway through the first GET; `drop_always`
paths then lose it before any byte on every later GET; `stall` paths send half, then hang.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin", ".ckpt")


@dataclass
class ServedFile:
    data: bytes
    lfs: bool  # stored with Git LFS (weights, checkpoints), as the Hub's .gitattributes has it

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_sha1(self) -> str:
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()


@dataclass
class Request:
    server: str  # "hub" or "cdn"
    method: str
    path: str
    headers: dict[str, str]  # names in lower case


@dataclass
class FakeHub:
    repos: dict[str, Path]  # repo id -> the folder served as the repository's root
    gated: dict[str, str] = field(default_factory=dict)  # repo id -> the token it requires
    drop_once: set[str] = field(default_factory=set)  # "repo/path": drop halfway through the first GET
    drop_always: set[str] = field(default_factory=set)  # "repo/path": every GET after the first drops at once
    stall: set[str] = field(default_factory=set)  # "repo/path": send half, then wait until `release` is set
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.files: dict[str, dict[str, ServedFile]] = {
            repo: {p.relative_to(root).as_posix(): ServedFile(p.read_bytes(), p.name.endswith(LFS_SUFFIXES))
                   for p in sorted(root.rglob("*")) if p.is_file()}
            for repo, root in self.repos.items()}
        self.blobs = {f.sha256: (repo, path) for repo, files in self.files.items() for path, f in files.items()}
        self._dropped: set[str] = set()
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._servers = [ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, name)) for name in ("hub", "cdn")]
        for server in self._servers:
            server.daemon_threads = True

    @staticmethod
    def commit(repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def start(self) -> "FakeHub":
        for server in self._servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def gets(self) -> list[Request]:
        """The file downloads (GETs of bytes), not the listings or HEADs."""
        return [r for r in self.requests if r.method == "GET" and not r.path.startswith("/api/")]

    def log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def should_drop(self, key: str) -> str:
        """"" (serve), "half" (send half, then drop) or "now" (drop before any byte)."""
        with self._lock:
            if key in self.drop_once and key not in self._dropped:
                self._dropped.add(key)
                return "half"
            if key in self.drop_always and key in self._dropped:
                return "now"
            return ""


def _handler(hub: FakeHub, server_name: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_HEAD(self) -> None:
            self._route(body=False)

        def do_GET(self) -> None:
            self._route(body=True)

        def _route(self, body: bool) -> None:
            hub.log(Request(server_name, self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
            if server_name == "cdn":
                match = re.fullmatch(r"/blobs/([0-9a-f]{64})", self.path)
                if not match or match.group(1) not in hub.blobs:
                    return self._error(404, "EntryNotFound")
                repo, path = hub.blobs[match.group(1)]
                return self._bytes(hub.files[repo][path], f"{repo}/{path}", body)
            match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/?]+)(\?.*)?", self.path)
            if match:
                return self._model_info(match.group(1))
            match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path.split("?")[0])
            if match:
                return self._resolve(match.group(1), match.group(3), body)
            self._error(404, "")

        def _model_info(self, repo: str) -> None:
            if repo not in hub.files:
                return self._error(404, "RepoNotFound")
            siblings = []
            for path, f in hub.files[repo].items():
                sibling = {"rfilename": path, "size": len(f.data), "blobId": f.git_sha1}
                if f.lfs:
                    sibling["lfs"] = {"size": len(f.data), "sha256": f.sha256, "pointerSize": 134}
                siblings.append(sibling)
            self._json({"id": repo, "modelId": repo, "sha": hub.commit(repo), "private": False,
                        "gated": "manual" if repo in hub.gated else False, "siblings": siblings})

        def _resolve(self, repo: str, path: str, body: bool) -> None:
            if repo not in hub.files:
                return self._error(404, "RepoNotFound")
            if repo in hub.gated and self.headers.get("Authorization") != f"Bearer {hub.gated[repo]}":
                return self._error(401, "GatedRepo", {"X-Repo-Commit": hub.commit(repo)})
            served = hub.files[repo].get(path)
            if served is None:
                return self._error(404, "EntryNotFound", {"X-Repo-Commit": hub.commit(repo)})
            common = {"X-Repo-Commit": hub.commit(repo)}
            if served.lfs:
                self.send_response(302)
                for name, value in {**common, "X-Linked-Etag": f'"{served.sha256}"', "X-Linked-Size": len(served.data),
                                    "ETag": f'"{served.git_sha1}"', "Location": f"{hub.cdn}/blobs/{served.sha256}",
                                    "Content-Length": 0}.items():
                    self.send_header(name, str(value))
                self.end_headers()
                return
            self._bytes(served, f"{repo}/{path}", body, {**common, "ETag": f'"{served.git_sha1}"'})

        def _bytes(self, served: ServedFile, key: str, body: bool, headers: dict | None = None) -> None:
            data = served.data
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if match:
                start = int(match.group(1))
            drop = hub.should_drop(key) if body else ""
            if drop == "now":
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.send_response(206 if start else 200)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if not body:
                return
            if drop == "half" or key in hub.stall:
                self.wfile.write(data[start:start + (len(data) - start) // 2])
                self.wfile.flush()
                if key in hub.stall:
                    hub.release.wait(timeout=60)
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(data[start:])

        def _json(self, value: dict) -> None:
            data = json.dumps(value).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, code: str, headers: dict | None = None) -> None:
            data = json.dumps({"error": code or "Not found"}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

    return Handler


def _half_copy(weights: Path, target: Path) -> None:
    from safetensors.torch import load_file, save_file

    save_file({k: v.half() for k, v in load_file(weights).items()}, target)


def tiny_default_repos(root: Path) -> dict[str, Path]:
    """The project's tiny models laid out as the three default repositories (with fp16 copies where the
    real ones have them, and decoy files the engine must never fetch), by repository id."""
    import os
    import shutil

    from headsculpt_engine.config import DEFAULT_BASE_MODEL, DEFAULT_FACE_CONTROLNET, DEFAULT_IP2P_CONTROLNET
    from headsculpt_engine.models.loading import tiny_models_dir

    tiny = tiny_models_dir()
    sd, face, ip2p = root / "sd", root / "face", root / "ip2p"
    shutil.copytree(tiny, sd, ignore=shutil.ignore_patterns("face-controlnet", "ip2p-controlnet", "clip"))
    shutil.copytree(tiny / "face-controlnet", face)
    shutil.copytree(tiny / "ip2p-controlnet", ip2p)
    for folder in ("unet", "vae"):
        _half_copy(sd / folder / "diffusion_pytorch_model.safetensors",
                   sd / folder / "diffusion_pytorch_model.fp16.safetensors")
    _half_copy(sd / "text_encoder" / "model.safetensors", sd / "text_encoder" / "model.fp16.safetensors")
    _half_copy(ip2p / "diffusion_pytorch_model.safetensors", ip2p / "diffusion_pytorch_model.fp16.safetensors")
    decoys = {sd: ["v1-5-pruned-emaonly.ckpt", "unet/diffusion_pytorch_model.bin", "text_encoder/pytorch_model.bin",
                   "unet/diffusion_pytorch_model.non_ema.safetensors", "safety_checker/model.safetensors",
                   "safety_checker/config.json", "feature_extractor/preprocessor_config.json", "README.md"],
              face: ["control_v2p_sd15_mediapipe_face.safetensors", "control_v2p_sd15_mediapipe_face.ckpt",
                     "config.json", "diffusion_pytorch_model.safetensors", "diffusion_sd15/diffusion_pytorch_model.bin"],
              ip2p: ["diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin", "images/input.png"]}
    for repo, names in decoys.items():
        for name in names:
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            (repo / name).write_bytes(os.urandom(3000))
    return {DEFAULT_BASE_MODEL: sd, DEFAULT_FACE_CONTROLNET: face, DEFAULT_IP2P_CONTROLNET: ip2p}
