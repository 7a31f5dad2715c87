"""A small stand-in for the engine's HTTP API v1 (stdlib http.server), for the add-on's tests.

It keeps to api-contract.md closely enough for the add-on: priors are decoded and kept, jobs advance one
step per status request, and a finished job's avatar.glb is the uploaded prior itself (engine canonical
frame, with UVs and a texture), optionally scaled, so a test can check where the add-on placed it; or
a given avatar.glb (a real engine's tiny run) for every generate job.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

FLAME = (5023, (9976, 10034))


def png_bytes(size: int = 32, colour=(200, 40, 40)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def glb_bytes(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    """A textured glTF binary of the mesh (Y up, as the engine writes results)."""
    import trimesh
    from PIL import Image

    span = np.ptp(vertices[:, :2], axis=0) + 1e-9
    uv = (vertices[:, :2] - vertices[:, :2].min(axis=0)) / span
    texture = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    mesh = trimesh.Trimesh(vertices, faces, process=False,
                           visual=trimesh.visual.TextureVisuals(uv=uv, image=texture))
    return mesh.export(file_type="glb")


class FakeEngine:
    def __init__(self, api_version: int = 1, token: str = "secret", steps: int = 3,
                 landmarks_found: bool = True, edit_scale: float = 1.1, fail_at: int = 0,
                 result_glb: bytes | None = None, lora_limit: int | None = None,
                 states_lora_limit: bool = True) -> None:
        self.api_version, self.token, self.steps, self.fail_at = api_version, token, steps, fail_at
        self.result_glb = result_glb  # served as every generate job's avatar.glb instead of the prior
        self.landmarks_found, self.edit_scale = landmarks_found, edit_scale
        self.priors: dict[str, tuple[np.ndarray, np.ndarray, dict]] = {}
        self.jobs: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.landmark_uploads: list[list[int] | None] = []  # landmark_indices of each prior upload
        self.upload_bodies: list[dict] = []  # each prior upload without its arrays
        self.images: dict[str, bytes] = {}  # image prompts uploaded (POST /v1/images), by image_id
        self.loras: dict[str, bytes] = {}  # LoRA files uploaded (POST /v1/loras, the raw bytes), by lora_id
        self.lora_limit = lora_limit  # larger LoRA uploads: 413 before reading them, as the engine's body limit
        self.states_lora_limit = states_lora_limit  # the health answer names the limit (older engines do not)
        self.lock = threading.Lock()
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                engine.handle(self, "GET")

            def do_POST(self):
                engine.handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeEngine":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- request handling ------------------------------------------------------------------------
    def handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        path = handler.path
        self.requests.append((method, path))
        body = None
        if method == "POST":
            length = int(handler.headers.get("Content-Length", 0))
            if path == "/v1/loras" and self.lora_limit is not None and length > self.lora_limit:
                return self.send(handler, 413, {"detail": "The LoRA file is larger than this engine's limit."})
            raw = handler.rfile.read(length)
            body = raw if path == "/v1/loras" else json.loads(raw or b"{}")
        if path == "/v1/health":
            health = {"status": "ok", "engine_version": "0.1.0", "api_version": self.api_version, "device": "cpu",
                      "models": "tiny"}
            if self.states_lora_limit and self.lora_limit is not None:
                health["lora_max_bytes"] = self.lora_limit
            return self.send(handler, 200, health)
        if handler.headers.get("Authorization") != f"Bearer {self.token}":
            return self.send(handler, 401, {"detail": "Missing or wrong token."})
        with self.lock:
            parts = path.strip("/").split("/")[1:]
            if method == "POST" and parts == ["priors"]:
                return self.upload(handler, body)
            if method == "GET" and len(parts) == 3 and parts[0] == "priors" and parts[2] == "landmark-preview":
                return self.send_bytes(handler, png_bytes(), "image/png")
            if method == "POST" and parts == ["images"]:
                data = base64.b64decode(body["data_b64"])
                self.images[hashlib.sha256(data).hexdigest()] = data
                return self.send(handler, 201, {"image_id": hashlib.sha256(data).hexdigest(), "width": 1, "height": 1})
            if method == "POST" and parts == ["loras"]:
                lora_id = f"upload:{hashlib.sha256(body).hexdigest()}"
                self.loras[lora_id] = body
                return self.send(handler, 201, {"lora_id": lora_id, "size": len(body)})
            if method == "POST" and parts == ["jobs"]:
                return self.submit(handler, body)
            if parts[:1] == ["jobs"] and len(parts) >= 2 and parts[1] in self.jobs:
                job = self.jobs[parts[1]]
                if method == "GET" and len(parts) == 2:
                    self.advance(job)
                    return self.send(handler, 200, self.public(job))
                if method == "POST" and parts[2:] == ["cancel"]:
                    job["state"] = "cancelled"
                    return self.send(handler, 200, self.public(job))
                if method == "GET" and parts[2:] == ["preview"] and job["iteration"] > 0:
                    return self.send_bytes(handler, png_bytes(colour=(40, 40, 200)), "image/png")
                if method == "GET" and parts[2:] == ["result", "avatar.glb"] and job["state"] == "done":
                    return self.send_bytes(handler, job["glb"], "model/gltf-binary")
            return self.send(handler, 404, {"detail": "Not found."})

    def upload(self, handler, body: dict) -> None:
        vertices = np.frombuffer(base64.b64decode(body["vertices_b64"]), "<f4").reshape(-1, 3)
        faces = np.frombuffer(base64.b64decode(body["faces_b64"]), "<i4").reshape(-1, 3)
        if len(vertices) != body["vertex_count"] or len(faces) != body["face_count"]:
            return self.send(handler, 422, {"detail": "The arrays do not match the counts."})
        self.landmark_uploads.append(body.get("landmark_indices"))
        self.upload_bodies.append({key: value for key, value in body.items() if not key.endswith("_b64")})
        prior_id = hashlib.sha256(vertices.tobytes() + faces.tobytes() + json.dumps(
            [body.get("keypoints"), body.get("detect_landmarks", True)]).encode()).hexdigest()[:16]
        # As the engine: keypoints always place the landmarks, no detection places none.
        found = body.get("keypoints") is not None or (self.landmarks_found and body.get("detect_landmarks", True))
        info = {"prior_id": prior_id, "name": body["name"], "vertex_count": len(vertices),
                "face_count": len(faces), "is_flame": len(vertices) == FLAME[0] and len(faces) in FLAME[1],
                "landmarks": {"status": "found" if found else "missing", "count": 478 if found else 0,
                              "message": "" if found else "MediaPipe found no face in the renders."}}
        self.priors[prior_id] = (vertices.copy(), faces.copy(), info)
        return self.send(handler, 201, info)

    def submit(self, handler, body: dict) -> None:
        from pydantic import TypeAdapter, ValidationError

        from headsculpt_engine.server.schemas import JobRequest

        try:  # the engine's own request schema: what the add-on sends must be what the engine takes
            TypeAdapter(JobRequest).validate_python(body)
        except ValidationError as error:
            return self.send(handler, 422, {"detail": str(error)})
        job_id = f"job{len(self.jobs) + 1}"
        if body["kind"] == "generate":
            if body["prior_id"] not in self.priors:
                return self.send(handler, 404, {"detail": "Unknown prior."})
            vertices, faces, _ = self.priors[body["prior_id"]]
            prior_id, parent = body["prior_id"], None
        else:
            parent_job = self.jobs.get(body["parent_job_id"])
            if parent_job is None or parent_job["state"] != "done":
                return self.send(handler, 409, {"detail": "The parent job is not done."})
            vertices, faces = parent_job["vertices"] * self.edit_scale, parent_job["faces"]
            prior_id, parent = parent_job["prior_id"], parent_job["job_id"]
        now = time.time()
        self.jobs[job_id] = {"job_id": job_id, "kind": body["kind"], "state": "queued", "stage": "",
                             "iteration": 0, "total": self.steps, "eta_s": None, "loss": None, "message": "",
                             "prompt": body.get("prompt", ""), "instruction": body.get("instruction"),
                             "seed": body.get("seed", 0), "preset": body.get("preset", "standard"),
                             "prior_id": prior_id, "parent_job_id": parent, "created_at": now,
                             "updated_at": now, "vertices": vertices, "faces": faces, "body": body}
        return self.send(handler, 202, self.public(self.jobs[job_id]))

    def advance(self, job: dict) -> None:
        if job["state"] in ("done", "failed", "cancelled"):
            return
        job["state"], job["stage"] = "running", "coarse"
        job["iteration"] += 1
        job["eta_s"] = float(self.steps - job["iteration"])
        job["updated_at"] = time.time()
        if job["iteration"] == self.fail_at:
            job["state"], job["message"] = "failed", "CUDA ran out of memory; try the draft preset."
        elif job["iteration"] >= self.steps:
            job["state"], job["stage"], job["eta_s"] = "done", "export", 0.0
            given = self.result_glb if job["kind"] == "generate" else None
            job["glb"] = given if given is not None else glb_bytes(job["vertices"], job["faces"])

    @staticmethod
    def public(job: dict) -> dict:
        info = {k: v for k, v in job.items() if k not in ("vertices", "faces", "body", "glb")}
        info["has_preview"] = job["iteration"] > 0
        info["result_files"] = ["avatar.glb"] if job["state"] == "done" else []
        return info

    @staticmethod
    def send(handler, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    @staticmethod
    def send_bytes(handler, data: bytes, content_type: str) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
