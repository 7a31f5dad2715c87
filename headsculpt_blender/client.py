"""HTTP client for the engine's API v1 (see api-contract.md): standard library only, short timeouts.

Every call either returns decoded JSON / bytes or raises `EngineError` with one plain sentence that the
panel can show as it is. Nothing here touches bpy, so worker threads can use it freely.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

API_VERSION = 1

# Every request runs in a worker thread, so these limits never hold Blender's UI; they only bound how
# long a stuck engine goes unreported. A freshly started engine answers its first requests slowly (it
# loads PyTorch), and uploading a prior runs the engine's landmark detection before it answers.
QUICK_TIMEOUT_S = 30.0
TRANSFER_TIMEOUT_S = 300.0


class EngineError(Exception):
    """A problem talking to the engine, phrased for the artist."""


class EngineUnreachable(EngineError):
    """The connection failed: no engine there, or it closed the connection mid-request."""


@dataclass
class EngineClient:
    url: str
    token: str = ""
    timeout_s: float = QUICK_TIMEOUT_S

    # -- plumbing -------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: dict | BinaryIO | None = None, timeout: float | None = None,
                 auth: bool = True) -> tuple[int, bytes, str]:
        """`body`: JSON, or an open file sent as it is (streamed, not read into memory first)."""
        data = json.dumps(body).encode("utf-8") if isinstance(body, dict) else body
        request = urllib.request.Request(self.url.rstrip("/") + path, data=data, method=method)
        if isinstance(body, dict):
            request.add_header("Content-Type", "application/json")
        elif body is not None:
            request.add_header("Content-Type", "application/octet-stream")
            request.add_header("Content-Length", str(os.fstat(body.fileno()).st_size))
        if auth and self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout_s) as response:
                return response.status, response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as error:
            raise EngineError(_http_error_sentence(error)) from None
        except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise EngineUnreachable(f"The engine at {self.url} cannot be reached ({reason}); start it, or check "
                                    "the engine settings in the add-on preferences.") from None

    def _json(self, method: str, path: str, body: dict | BinaryIO | None = None, timeout: float | None = None,
              auth: bool = True) -> dict:
        _, payload, _ = self._request(method, path, body, timeout, auth)
        try:
            return json.loads(payload.decode("utf-8")) if payload else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise EngineError(f"The server at {self.url} did not answer like a HeadSculpt engine.") from None

    # -- API ------------------------------------------------------------------------------------
    def health(self) -> dict:
        """`GET /v1/health`, refusing an engine that speaks another API version."""
        info = self._json("GET", "/v1/health", auth=False)
        version = info.get("api_version")
        if version != API_VERSION:
            raise EngineError(
                f"The engine at {self.url} speaks API version {version} but this add-on needs version "
                f"{API_VERSION}; install matching versions of the add-on and the engine.")
        return info

    def upload_prior(self, name: str, vertices: np.ndarray, faces: np.ndarray,
                     landmark_indices: list[int] | None = None, keypoints: dict | None = None,
                     detect_landmarks: bool = True) -> dict:
        vertices = np.ascontiguousarray(vertices, dtype="<f4").reshape(-1, 3)
        faces = np.ascontiguousarray(faces, dtype="<i4").reshape(-1, 3)
        body = {"name": name, "vertex_count": int(len(vertices)), "face_count": int(len(faces)),
                "vertices_b64": base64.b64encode(vertices.tobytes()).decode("ascii"),
                "faces_b64": base64.b64encode(faces.tobytes()).decode("ascii")}
        if landmark_indices is not None:
            body["landmark_indices"] = [int(index) for index in landmark_indices]
        if keypoints is not None:
            body["keypoints"] = keypoints
        if not detect_landmarks:
            body["detect_landmarks"] = False
        return self._json("POST", "/v1/priors", body, timeout=TRANSFER_TIMEOUT_S)

    def upload_image(self, data: bytes) -> dict:
        """An image prompt's file bytes; the engine answers its image_id."""
        body = {"data_b64": base64.b64encode(data).decode("ascii")}
        return self._json("POST", "/v1/images", body, timeout=TRANSFER_TIMEOUT_S)

    def upload_lora(self, path: Path) -> dict:
        """A LoRA .safetensors file, streamed; the engine answers its lora_id (upload:<sha256>). A file
        over the size limit the engine states in its health answer is refused here, before sending.
        An engine refuses such a file before reading it and closes the connection, which urllib sees
        as a reset rather than the engine's answer: said as such (an engine that states no limit)."""
        try:
            size = path.stat().st_size
        except OSError as error:
            raise EngineError(f"The style LoRA {path} cannot be read ({error.strerror or error}).") from None
        limit = self.health().get("lora_max_bytes")
        if limit and size > limit:
            raise EngineError(f"The style LoRA {path.name} ({size / 2**20:.0f} MB) is larger than the engine's "
                              f"size limit ({limit / 2**20:.0f} MB); pick a smaller LoRA, or start the engine "
                              "with a larger --lora-max-mb.")
        try:
            with path.open("rb") as handle:
                return self._json("POST", "/v1/loras", handle, timeout=TRANSFER_TIMEOUT_S)
        except OSError as error:
            raise EngineError(f"The style LoRA {path} cannot be read ({error.strerror or error}).") from None
        except EngineUnreachable:
            self.health()  # still there? Then it stopped taking the file.
            raise EngineError(f"The engine stopped taking the style LoRA {path.name} ({size / 2**20:.0f} MB) "
                              "while it was being sent: it is likely over the engine's size limit (512 MB "
                              "unless the engine was started with --lora-max-mb); pick a smaller LoRA.") from None

    def prior(self, prior_id: str) -> dict:
        return self._json("GET", f"/v1/priors/{_segment(prior_id)}")

    def landmark_preview(self, prior_id: str) -> bytes:
        return self._request("GET", f"/v1/priors/{_segment(prior_id)}/landmark-preview",
                             timeout=TRANSFER_TIMEOUT_S)[1]

    def submit(self, job: dict) -> dict:
        return self._json("POST", "/v1/jobs", job)

    def job(self, job_id: str) -> dict:
        return self._json("GET", f"/v1/jobs/{_segment(job_id)}")

    def cancel(self, job_id: str) -> dict:
        return self._json("POST", f"/v1/jobs/{_segment(job_id)}/cancel")

    def preview(self, job_id: str) -> bytes:
        return self._request("GET", f"/v1/jobs/{_segment(job_id)}/preview")[1]

    def result_file(self, job_id: str, name: str) -> bytes:
        return self._request("GET", f"/v1/jobs/{_segment(job_id)}/result/{_segment(name)}",
                             timeout=TRANSFER_TIMEOUT_S)[1]


def _segment(value: str) -> str:
    return urllib.parse.quote(str(value), safe="")


def _http_error_sentence(error: urllib.error.HTTPError) -> str:
    detail = ""
    try:
        detail = str(json.loads(error.read().decode("utf-8")).get("detail", ""))
    except Exception:  # a body that is not the contract's JSON: fall back on the status line
        detail = ""
    if error.code == 401:
        return "The engine refused the access token; check the token in the add-on preferences."
    if detail:
        return f"The engine refused the request: {detail}"
    return f"The engine answered {error.code} {error.reason}."
